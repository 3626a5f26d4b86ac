"""The checkpoint as a snapshot plus a log (issue 18): what is saved is what is read back,
whatever was cut short, damaged or left between a snapshot and its log; what a change
writes does not grow with the workflow; state.json catches up by itself."""

from __future__ import annotations

import os
import time
import zlib
from pathlib import Path

import pytest

from agentflow import checkpoint_log
from agentflow.checkpointer import Checkpointer
from agentflow.errors import StateError
from agentflow.state import RunState, StepState, now
from agentflow.store import RunDir

LONG = 3600.0
"""A snapshot lag no test reaches: the log stays as written."""


def run_dir(tmp_path: Path, name: str = "r1") -> RunDir:
    path = tmp_path / name
    path.mkdir()
    return RunDir(path)


def fresh(run: RunDir, n: int = 3) -> RunState:
    return RunState(
        run_id=run.run_id, workflow="w", workflow_file="w.yaml", workspace="/w",
        steps={f"s{i}": StepState() for i in range(n)},
    )  # fmt: skip


def changes(state: RunState) -> list[RunState]:
    """A run's life in saves: steps start, print, end; the run's fields change."""
    out = []
    for step_id in list(state.steps)[:3]:
        state = state.with_step(step_id, status="running", attempts=1, started_at=now())
        out.append(state)
        state = state.with_step(step_id, window="@1", output_bytes=12)
        out.append(state)
        state = state.with_step(step_id, status="succeeded", exit_code=0, finished_at=now())
        out.append(state)
        state = state.with_run(consecutive_failures=0, tokens_used=len(out))
        out.append(state)
    return out


def saved(run: RunDir, states: list[RunState]) -> Checkpointer:
    ckpt = Checkpointer(run, lag=LONG)
    for state in states:
        ckpt.save(state)
    return ckpt


def log_lines(run: RunDir) -> list[bytes]:
    return (run.path / "state.log").read_bytes().splitlines(keepends=True)


def test_what_is_saved_is_read_back_and_state_json_is_exact_at_the_end(tmp_path: Path) -> None:
    run = run_dir(tmp_path)
    first = fresh(run)
    later = changes(first)
    ckpt = saved(run, [first, *later])
    assert RunState.model_validate_json(run.state_path.read_bytes()) == first, "the snapshot"
    assert len(log_lines(run)) == len(later), "one record a save"
    assert run.read_state() == later[-1]
    ckpt.save(later[-1].with_run(status="succeeded", finished_at=now()))
    ended = RunState.model_validate_json(run.state_path.read_bytes())
    assert ended.status == "succeeded"
    assert ended.steps == later[-1].steps
    assert not (run.path / "state.log").exists(), "rotated into state.log.prev"
    assert run.read_state() == ended


def test_a_change_writes_as_much_whatever_the_workflows_size(tmp_path: Path) -> None:
    sizes = []
    for n in (5, 2000):
        run = run_dir(tmp_path, f"r{n}")
        first = fresh(run, n)
        later = changes(first)
        saved(run, [first, *later])
        sizes.append((run.path / "state.log").stat().st_size)
    assert sizes[0] == sizes[1], sizes


def test_a_torn_last_record_is_as_if_never_written(tmp_path: Path) -> None:
    run = run_dir(tmp_path)
    first = fresh(run)
    later = changes(first)
    saved(run, [first, *later])
    lines = log_lines(run)
    for cut in (1, len(lines[-1]) // 2, len(lines[-1]) - 1):
        (run.path / "state.log").write_bytes(b"".join(lines[:-1]) + lines[-1][:cut])
        got = run.read_checkpoint()
        assert (got.state, got.problem) == (later[-2], "")


def test_a_bad_record_with_good_ones_after_stops_the_replay_and_says_so(tmp_path: Path) -> None:
    run = run_dir(tmp_path)
    first = fresh(run)
    later = changes(first)
    saved(run, [first, *later])
    lines = log_lines(run)
    flipped = lines[2][:12] + bytes([lines[2][12] ^ 1]) + lines[2][13:]
    (run.path / "state.log").write_bytes(b"".join([*lines[:2], flipped, *lines[3:]]))
    got = run.read_checkpoint()
    assert got.state == later[1]
    assert got.problem == (
        "state.log:3: its checksum does not match; the records after it are not used"
    )


def record(body: bytes) -> bytes:
    return b"%08x %s\n" % (zlib.crc32(body), body)


ODD = {
    "garbage": bytes(range(256)) * 4 + b"\n" + record(b'{"seq":1}'),
    "a huge line": b"7" * (8 << 20) + b"\n" + record(b'{"seq":1}'),
    "zeros": b"\0" * 5000 + b"\n" + record(b'{"seq":1}'),
    "not JSON": record(b"{") + record(b'{"seq":1}'),
    "a list": record(b"[]") + record(b'{"seq":1}'),
    "a step not the run's": record(b'{"seq":1,"steps":{"zz":{}}}') + record(b'{"seq":2}'),
    "another run's": record(b'{"seq":1,"run":{"run_id":"r2"}}') + record(b'{"seq":2}'),
    "an odd status": record(b'{"seq":1,"run":{"status":"weird"}}') + record(b'{"seq":2}'),
    "a field not a run's": record(b'{"seq":1,"run":{"x":1}}') + record(b'{"seq":2}'),
    "NaN": record(b'{"seq":1,"steps":{"s0":{"progress":{"done":NaN}}}}') + record(b'{"seq":2}'),
    "out of order": record(b'{"seq":2}') + record(b'{"seq":1}') + record(b'{"seq":3}'),
    "nested deep": record(b'{"seq":1,"run":{"message":' + b"[" * 5000 + b"]" * 5000 + b"}}")
    + record(b'{"seq":2}'),
}  # fmt: skip


@pytest.mark.parametrize("odd", ODD.values(), ids=ODD.keys())
def test_an_odd_log_is_used_up_to_its_damage_never_more(tmp_path: Path, odd: bytes) -> None:
    run = run_dir(tmp_path)
    first = fresh(run)
    Checkpointer(run, lag=LONG).save(first)
    (run.path / "state.log").write_bytes(odd)
    got = run.read_checkpoint()
    assert got.state.steps == first.steps
    assert got.state.status == "running"
    assert got.state.run_id == "r1"
    assert got.problem.startswith("state.log:"), got.problem
    # The orchestrator that takes the run over tells it, and starts a log of its own.
    ckpt = Checkpointer(run, lag=LONG)
    assert ckpt.save(got.state) == got.problem
    later = changes(got.state)
    for state in later:
        ckpt.save(state)
    assert run.read_checkpoint().state == later[-1]


def test_a_log_already_in_the_snapshot_changes_nothing(tmp_path: Path) -> None:
    """Killed between writing state.json and starting a new log: the old log is replayed
    onto a snapshot that has it already."""
    run = run_dir(tmp_path)
    first = fresh(run)
    later = changes(first)
    saved(run, [first, *later])
    old_log = (run.path / "state.log").read_bytes()
    run.write_state(later[-1])
    (run.path / "state.log").write_bytes(old_log)
    assert run.read_state() == later[-1]


def test_a_damaged_state_json_is_rebuilt_exactly_from_the_previous_one_and_both_logs(
    tmp_path: Path,
) -> None:
    run = run_dir(tmp_path)
    first = fresh(run, 5)
    ckpt = Checkpointer(run, lag=LONG)
    ckpt.save(first)
    later = changes(first)
    for state in later[:5]:
        ckpt.save(state)
    ckpt._snapshot(later[4])  # what the timer does
    for state in later[5:]:
        ckpt.save(state)
    assert (run.path / "state.log.prev").exists()
    assert (run.path / "state.log").exists()
    run.state_path.write_bytes(b"{\x00")
    with pytest.raises(StateError, match="damaged checkpoint"):
        run.read_state()
    note = run.recover_state()
    assert note is not None
    assert "rebuilt from state.json.prev" in note, note
    assert f"with {len(later)} changes logged in state.log" in note, note  # both logs
    assert run.read_state() == later[-1]


def test_state_json_catches_up_by_itself(tmp_path: Path) -> None:
    """Within the lag, with no further save: for whoever reads state.json alone."""
    run = run_dir(tmp_path)
    first = fresh(run)
    later = changes(first)
    ckpt = Checkpointer(run, lag=0.2)
    for state in [first, *later]:
        ckpt.save(state)
    for _ in range(600):  # a wait, not a timing: the test fails only if it never happens
        if RunState.model_validate_json(run.state_path.read_bytes()) == later[-1]:
            break
        time.sleep(0.05)
    assert RunState.model_validate_json(run.state_path.read_bytes()) == later[-1]
    ckpt.close()


def test_a_log_that_is_a_link_is_neither_read_nor_written_through(tmp_path: Path) -> None:
    run = run_dir(tmp_path)
    first = fresh(run)
    ckpt = Checkpointer(run, lag=LONG)
    ckpt.save(first)
    target = tmp_path / "elsewhere"
    target.write_bytes(record(b'{"seq":1,"run":{"message":"planted"}}'))
    (run.path / "state.log").symlink_to(target)
    assert run.read_state() == first, "not read through the link"
    with pytest.raises(StateError, match="cannot save the checkpoint of run r1"):
        ckpt.save(first.with_step("s0", status="running"))
    assert target.read_bytes() == record(b'{"seq":1,"run":{"message":"planted"}}')


def test_the_log_is_the_owners_alone(tmp_path: Path) -> None:
    run = run_dir(tmp_path)
    first = fresh(run)
    saved(run, [first, *changes(first)])
    assert (run.path / "state.log").stat().st_mode & 0o777 == 0o600
    assert checkpoint_log.LOGS == ("state.log.prev", "state.log")


def test_a_run_that_ended_in_its_log_alone_is_settled_into_state_json(tmp_path: Path) -> None:
    """Killed after its last change was logged, before the last snapshot: `resume` of the
    succeeded run writes state.json whole (chaos seed 16 found this)."""
    run = run_dir(tmp_path)
    first = fresh(run)
    later = changes(first)
    ckpt = saved(run, [first, *later])
    ckpt.close()
    ended = later[-1].with_run(status="succeeded", finished_at=now())
    line = checkpoint_log.encode(len(later) + 1, later[-1], ended)
    assert line is not None
    fd = checkpoint_log.open_log(run.path)
    os.write(fd, line)
    os.close(fd)
    assert RunState.model_validate_json(run.state_path.read_bytes()) != ended
    run.settle()
    assert RunState.model_validate_json(run.state_path.read_bytes()) == ended
    assert not (run.path / "state.log").exists()
    assert run.read_state() == ended
    run.settle()  # nothing logged: nothing to do
    assert run.read_state() == ended


def test_a_change_the_run_finds_again_waits_for_the_next_sync(tmp_path: Path) -> None:
    """A chain's step costs one fdatasync: the start (committed before its window opens),
    not its window's id too."""
    run = run_dir(tmp_path)
    ckpt = Checkpointer(run, lag=LONG)
    state = fresh(run)
    ckpt.save(state)
    state = state.with_step("s0", status="running", attempts=1, started_at=now())
    ckpt.save(state)
    ckpt.commit()  # as a launch pass does before it opens the windows
    assert ckpt.syncs == 1
    state = state.with_step("s0", window="@7")
    ckpt.save(state, soft=True)
    ckpt.commit()
    assert ckpt.syncs == 1, "a soft change alone is not synced by a commit"
    assert run.read_state() == state, "but it is written through (a SIGKILL loses nothing)"
    state = state.with_step("s0", status="succeeded", exit_code=0, finished_at=now())
    ckpt.save(state)
    ckpt.commit()
    ckpt.commit()
    assert ckpt.syncs == 2, "one sync for what the commit holds, none for nothing"
    ckpt.close()
