"""A sweep as a run of its own: its status and ranking in sweeps/<id>.json, Ctrl-C's
question, its follower killed, ``resume SWEEP`` (each combination runs once) and
``status SWEEP``. Real terminals (tmux panes), real detached orchestrators."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import libtmux

from agentflow.sweep import SweepRecord

from conftest import AGENTFLOW, Env, group_alive

# Each run notes that it started (one line per time its step runs), then waits for the
# test's `go` file: nothing depends on how fast anything is.
GATED = """\
version: 1
name: gated
inputs:
  a: {default: 1}
  scale: {default: 1}
objective: {metric: score, goal: maximize}
max_parallel_runs: 2
matrix: {a: [1, 2, 3]}
steps:
  - id: train
    run: |
      echo started >> ran-${{ inputs.a }}.log
      while [ ! -f go ]; do sleep 0.1; done
  - id: score
    needs: [train]
    run: |
      echo "{\\"score\\": $(( ${{ inputs.a }} * ${{ inputs.scale }} ))}" > s-${{ inputs.a }}.json
    outputs:
      score: {json: "s-${{ inputs.a }}.json", key: score}
"""


def sweep_id(af: Env) -> str:
    (path,) = (af.home / "sweeps").glob("*.json")
    return path.stem


def record(af: Env) -> SweepRecord:
    return SweepRecord.model_validate_json(
        (af.home / "sweeps" / f"{sweep_id(af)}.json").read_text()
    )


def started(af: Env, a: int) -> bool:
    return (af.workspace / f"ran-{a}.log").is_file()


def assert_each_ran_once(af: Env) -> None:
    for a in (1, 2, 3):
        assert (af.workspace / f"ran-{a}.log").read_text() == "started\n", a
    assert len(list((af.home / "runs").iterdir())) == 3  # one run per combination


def assert_ranked(out: str, sid: str) -> None:
    rows = [line.split()[:3] for line in out.splitlines() if re.match(r"\d +a=", line)]
    assert rows == [["1", "a=3", "30"], ["2", "a=2", "20"], ["3", "a=1", "10"]], out
    assert f"best: a=3 (score 30, run {sid}-3)" in out
    # The ready command repeats the --set of the command line, then the combination.
    assert re.search(r"agentflow run \S+wf\.yaml --set scale=10 --set a=3\n", out), out


def assert_final_record(af: Env) -> None:
    rec = record(af)
    assert rec.status == "succeeded"
    assert rec.finished_at is not None
    assert rec.ranking == [3, 2, 1]
    assert rec.best_command is not None
    assert rec.best_command.endswith("wf.yaml --set scale=10 --set a=3")
    assert [m.status for m in rec.members] == ["succeeded"] * 3


@contextmanager
def terminal(af: Env, tmp_path: Path, *args: str) -> Iterator[libtmux.Pane]:
    """``agentflow ARGS`` in a 100-column terminal of the test's own; ``EXIT=N`` at its end."""
    command = shlex.join(["env", "-u", "CI", "-u", "GITHUB_ACTIONS", f"AGENTFLOW_HOME={af.home}",
                          AGENTFLOW, *args])  # fmt: skip
    server = libtmux.Server(socket_path=str(tmp_path / "term.sock"))
    try:
        session = server.new_session(
            session_name="t",
            window_command=f"cd {shlex.quote(str(af.workspace))} && {command}; "
            "echo EXIT=$?; sleep 600",
            x=100,
            y=30,
        )
        pane = session.active_window.active_pane
        assert pane is not None
        yield pane
    finally:
        server.kill()


def screen(pane: libtmux.Pane) -> str:
    return "\n".join(pane.capture_pane())


def test_ctrl_c_detaches_a_sweep_and_resume_runs_each_combination_once(
    af: Env, tmp_path: Path
) -> None:
    af.write(GATED)
    with terminal(af, tmp_path, "run", "wf.yaml", "--sandbox", "local", "--set", "scale=10") as t:
        af.wait_for(lambda: started(af, 1) and started(af, 2), message="two runs going")
        # The live view: a table of the runs, with the step each is at.
        af.wait_for(lambda: re.search(r"a=1 +▶ running +0/2 +train", screen(t)) is not None,
                    message="the members' table")  # fmt: skip
        assert re.search(r"a=3 +· pending", screen(t)), screen(t)
        assert "Ctrl-C: stop, detach or continue" in screen(t)
        t.cmd("send-keys", "C-c")
        af.wait_for(lambda: "What now" in screen(t), message="the question")
        assert "s: stop every run of the sweep" in screen(t)
        t.cmd("send-keys", "d", "Enter")
        af.wait_for(lambda: "EXIT=" in screen(t), message="detached")
        shown = screen(t)
    assert "EXIT=130" in shown
    sid = sweep_id(af)
    assert f"detached from sweep {sid}: 2 run(s) go on in tmux, 1 not started" in shown
    assert f"agentflow resume {sid}" in shown
    rec = record(af)
    assert rec.status == "interrupted"
    assert [m.status for m in rec.members] == ["running", "running", "pending"]
    assert not started(af, 3)

    (af.workspace / "go").touch()
    res = af.cli("resume", sid, "--ci", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"[1/3] a=1  following run {sid}-1" in res.stdout
    assert f"[3/3] a=3  started run {sid}-3" in res.stdout
    assert_ranked(res.stdout, sid)
    assert_each_ran_once(af)
    assert_final_record(af)
    again = af.cli("resume", sid, "--ci")
    assert again.returncode == 0
    assert f"sweep {sid} already ended (succeeded): nothing to do" in again.stdout
    assert_each_ran_once(af)


def test_a_killed_follower_leaves_an_orphaned_sweep_that_resume_finishes(af: Env) -> None:
    af.write(GATED)
    follower = af.start("run", "wf.yaml", "--sandbox", "local", "--ci", "--no-cache",
                        "--set", "scale=10")  # fmt: skip
    try:
        af.wait_for(lambda: started(af, 1) and started(af, 2), message="two runs going")
        af.wait_for(lambda: record(af).members[1].status == "running", message="recorded")
    finally:
        follower.kill()  # SIGKILL: no chance to record anything
        follower.communicate()
    sid = sweep_id(af)
    status = af.cli("status", sid)
    assert status.returncode == 0, status.stderr
    assert re.search(rf"sweep {sid} +0/3 done, 2 running +orphaned", status.stdout), status.stdout
    assert re.search(r"2 +a=2 +▶ running +0/2 +train", status.stdout), status.stdout
    assert f"agentflow resume {sid}" in status.stdout
    on_disk = json.loads(af.cli("status", sid, "--json").stdout)
    assert on_disk["status"] == "running"
    # The orchestrator of a run of the sweep dies too: resume drives that run again.
    orchestrator = int((af.run_dir(f"{sid}-1") / "lock").read_text())
    os.kill(orchestrator, signal.SIGKILL)
    (af.workspace / "go").touch()

    res = af.cli("resume", sid, "--ci", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"a=1  run {sid}-1 goes on (its orchestrator started again)" in res.stdout
    assert_ranked(res.stdout, sid)
    assert_each_ran_once(af)
    assert_final_record(af)
    # --no-cache reached every run of the sweep, the one started by resume too.
    assert all(af.state(f"{sid}-{i}")["no_cache"] for i in (1, 2, 3))
    on_disk = json.loads(af.cli("status", sid, "--json").stdout)
    assert on_disk["status"] == "succeeded"
    assert on_disk["ranking"] == [3, 2, 1]


def test_a_sweep_id_is_not_taken_for_a_prefix_of_its_run(af: Env) -> None:
    af.write(GATED.replace("a: [1, 2, 3]", "a: [4]"))
    (af.workspace / "go").touch()
    res = af.cli("run", "wf.yaml", "--sandbox", "local", "--ci", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    sid = sweep_id(af)
    assert f"record: {af.home / 'sweeps' / sid}.json" in res.stdout
    # Its only run's id starts with the sweep's: the sweep is meant, not the run.
    again = af.cli("resume", sid)
    assert again.returncode == 0, again.stderr
    assert f"sweep {sid} already ended (succeeded): nothing to do" in again.stdout
    assert "run " + sid not in again.stdout.split("\n")[0]
    status = af.cli("status", sid)
    assert status.stdout.startswith(f"sweep {sid}  1/1 done  succeeded"), status.stdout
    run = af.cli("status", f"{sid}-1")
    assert run.stdout.startswith(f"{sid}-1  gated  succeeded"), run.stdout
    assert (af.workspace / "ran-4.log").read_text() == "started\n"


def test_ctrl_c_stop_stops_every_run_and_resume_continues_the_same_runs(
    af: Env, tmp_path: Path
) -> None:
    af.write(GATED)
    with terminal(af, tmp_path, "run", "wf.yaml", "--sandbox", "local", "--set", "scale=10") as t:
        af.wait_for(lambda: started(af, 1) and started(af, 2), message="two runs going")
        t.cmd("send-keys", "C-c")
        af.wait_for(lambda: "What now" in screen(t), message="the question")
        t.cmd("send-keys", "c", "Enter")  # back to watching: nothing interrupted
        af.wait_for(lambda: "Ctrl-C: stop, detach" in screen(t).split("What now")[-1],
                    message="the table again")  # fmt: skip
        t.cmd("send-keys", "C-c")
        af.wait_for(lambda: screen(t).count("What now") == 2, message="asked again")
        t.cmd("send-keys", "s", "Enter")
        af.wait_for(lambda: "EXIT=" in screen(t), timeout=60, message="stopped")
        shown = screen(t)
    assert "EXIT=130" in shown
    sid = sweep_id(af)
    assert f"sweep {sid} stopped (1 run(s) not started)" in shown
    rec = record(af)
    assert rec.status == "interrupted"
    assert rec.message == "stopped: 2 run(s) stopped, 1 not started"
    assert [m.status for m in rec.members] == ["interrupted", "interrupted", "pending"]
    for i in (1, 2):
        state = af.state(f"{sid}-{i}")
        assert state["status"] == "interrupted"
        assert state["steps"]["train"]["status"] == "failed"  # stopped, not left running

    (af.workspace / "go").touch()
    res = af.cli("resume", sid, "--ci", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert_ranked(res.stdout, sid)
    assert_final_record(af)
    # The stopped runs were resumed, not made again: still one run per combination.
    assert sorted(p.name for p in (af.home / "runs").iterdir()) == [f"{sid}-{i}" for i in (1, 2, 3)]
    assert (af.workspace / "ran-3.log").read_text() == "started\n"


def test_stop_sweep_detaches_its_follower_and_stops_every_run(af: Env) -> None:
    af.write(GATED)
    follower = af.start("run", "wf.yaml", "--sandbox", "local", "--ci", "--set", "scale=10")
    try:
        af.wait_for(lambda: started(af, 1) and started(af, 2), message="two runs going")
        af.wait_for(lambda: record(af).members[1].status == "running", message="recorded")
        sid = sweep_id(af)
        steps = [int((af.run_dir(f"{sid}-{i}") / "steps" / "train" / "pid").read_text())
                 for i in (1, 2)]  # fmt: skip
        res = af.cli("stop", sid)
        out, _ = follower.communicate(timeout=60)
    finally:
        follower.kill()
        follower.communicate()
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"sweep {sid} stopped: 2 run(s) stopped, 1 not started" in res.stdout
    # The follower got SIGTERM first: it detached, and started nothing more.
    assert follower.returncode == 130, out
    assert f"detached from sweep {sid}" in out
    assert not any(group_alive(pid) for pid in steps)
    assert not started(af, 3)
    rec = record(af)
    assert (rec.status, rec.message) == ("interrupted", "stopped: 2 run(s) stopped, 1 not started")
    assert [m.status for m in rec.members] == ["interrupted", "interrupted", "pending"]
    assert all(af.state(f"{sid}-{i}")["status"] == "interrupted" for i in (1, 2))
