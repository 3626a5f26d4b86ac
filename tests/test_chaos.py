"""Chaos: agentflow under faults it does not choose (issue 8). Real tmux, real Docker,
real processes; each fault is injected from outside, as it would happen on a machine.

Run them alone with ``pytest -m chaos``; they are part of the normal run too.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import libtmux
import pytest
from docker.models.containers import Container
from hypothesis import given, settings
from hypothesis import strategies as st

from agentflow.errors import Problem, StateError, WorkflowError
from agentflow.state import RunState
from agentflow.store import Event, RunDir
from agentflow.tmux import socket_path_for
from agentflow.workflow import load_workflow

from conftest import TEST_IMAGE, Env, fill

pytestmark = pytest.mark.chaos


class ChaosEnv(Env):
    """The test's agentflow home; every orchestrator it starts is gone when the test ends,
    however it ends (`af` then ends the steps and the tmux server)."""

    procs: list[subprocess.Popen[str]]

    def start(self, *args: str) -> subprocess.Popen[str]:
        proc = super().start(*args)
        self.procs.append(proc)
        return proc


@pytest.fixture
def af(af: Env) -> Iterator[ChaosEnv]:
    env = ChaosEnv(af.home, af.workspace, af.env)
    env.procs = []
    yield env
    for proc in env.procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


# --- SIGKILL the orchestrator at random moments ------------------------------------------------

STEP_LINES = 3
RUN_EVENTS = 45
"""About how many events a whole run of the chaos workflow records."""


def _step(step_id: str, needs: list[str], seconds: float) -> tuple[list[str], str]:
    """A step that marks its start and end (markers/<id>) and prints a known output over
    ``seconds``; its YAML lines and that output."""
    script = ["mkdir -p markers", f'echo "start $AGENTFLOW_ATTEMPT" >> markers/{step_id}']
    for i in range(1, STEP_LINES + 1):
        script += [f"echo '{step_id} {i}/{STEP_LINES}'", f"sleep {seconds / STEP_LINES:.3f}"]
    script += [f"echo '{step_id} end'", f'echo "done $AGENTFLOW_ATTEMPT" >> markers/{step_id}']
    yaml = [f"  - id: {step_id}"]
    yaml += [f"    needs: [{', '.join(needs)}]"] if needs else []
    yaml += ["    run: |", *(f"      {line}" for line in script)]
    output = [f"{step_id} {i}/{STEP_LINES}" for i in range(1, STEP_LINES + 1)] + [f"{step_id} end"]
    return yaml, "".join(f"{line}\n" for line in output)


@dataclass(frozen=True)
class ChaosWorkflow:
    text: str
    expected: dict[str, str]
    """Each step's complete output.log."""


def chaos_workflow(seed: int) -> ChaosWorkflow:
    """20 steps: a first one, a service, four parallel chains of four (two need the
    service), a join that needs them all, a last; steps of 0.1 to 0.3 s."""
    rng = random.Random(seed)
    lines = ["version: 1", "name: chaos", "max_parallel: 4", "steps:"]
    expected: dict[str, str] = {}

    def add(step_id: str, needs: list[str], seconds: float) -> None:
        yaml, expected[step_id] = _step(step_id, needs, seconds)
        lines.extend(yaml)

    add("prep", [], 0.1)
    lines += [
        "  - id: svc",
        "    needs: [prep]",
        "    service: true",
        "    run: |",
        "      mkdir -p markers",
        '      echo "start $AGENTFLOW_ATTEMPT" >> markers/svc',
        "      echo 'svc ready'",
        "      exec sleep 300",
        "    ready: {log: 'svc ready', interval: 100ms, timeout: 30s}",
    ]
    expected["svc"] = "svc ready\n"
    ends = []
    for b in range(4):
        prev = "svc" if b % 2 == 0 else "prep"
        for k in range(1, 5):
            add(f"b{b}-{k}", [prev], rng.uniform(0.1, 0.3))
            prev = f"b{b}-{k}"
        ends.append(prev)
    add("join", [*ends, "svc"], 0.1)
    add("last", ["join"], 0.1)
    assert len(expected) == 20
    return ChaosWorkflow("\n".join(lines) + "\n", expected)


def _events(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _kill_at_random(
    af: Env, args: list[str], events: Path, after: int, jitter: float
) -> subprocess.CompletedProcess[str]:
    """Start ``agentflow *args`` and SIGKILL it ``jitter`` seconds after the run has
    recorded ``after`` more events (a moment of the run's life, whatever the machine's
    speed), unless it ends first."""
    target = _events(events) + after
    proc = af.start(*args)
    while proc.poll() is None and _events(events) < target:
        time.sleep(0.005)
    time.sleep(jitter)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@dataclass
class Trial:
    """What one trial did, and what went wrong."""

    seed: int
    history: list[str] = field(default_factory=list)
    """What ran and how it ended (-9: killed)."""
    problems: list[str] = field(default_factory=list)

    def add(self, problem: str) -> None:
        self.problems.append(problem)

    def report(self) -> list[str]:
        return [f"seed {self.seed} ({', '.join(self.history)}): {p}" for p in self.problems]


def sigkill_trial(
    af: Env,
    seed: int,
    wf: ChaosWorkflow | None = None,
    kills: tuple[int, ...] = (1, 1, 2),
    run_events: int = RUN_EVENTS,
) -> Trial:
    """One trial: the orchestrator is killed once or twice (``kills``) at random moments,
    and each time resumed (or started again, when it died before its first checkpoint);
    then a last resume must finish the run, with no step that succeeded run again (its
    markers), as many starts as attempts, and every attempt's output.log whole; and
    state.json alone is then the whole state."""
    rng = random.Random(seed)
    trial = Trial(seed)
    prefix = "k" if wf is None else "c"
    ws = af.workspace / f"{prefix}{seed}"
    ws.mkdir()
    wf = wf or chaos_workflow(seed)
    path = ws / "wf.yaml"
    path.write_text(wf.text)
    rid = f"{prefix}{seed}"
    state_file = af.run_dir(rid) / "state.json"
    events = af.run_dir(rid) / "events.jsonl"

    def command() -> list[str]:
        return ["resume", rid] if state_file.exists() else ["run", str(path), "--run-id", rid]

    for _ in range(rng.choice(kills)):
        args = command()
        # Killed after a random number of the events still to come, then a little more.
        after = rng.randint(0, max(0, run_events - _events(events)))
        done = _kill_at_random(af, [*args, "--ci"], events, after, rng.uniform(0, 0.15))
        trial.history.append(f"{args[0]} {done.returncode}")
        if done.returncode not in (0, -signal.SIGKILL) or "Traceback" in done.stderr:
            trial.add(f"{args[0]} ended {done.returncode}:\n{done.stdout}{done.stderr}")
            return trial
        if done.returncode == 0:
            break  # it finished the run before its moment came
    else:
        args = command()
        final = af.cli(*args, "--ci", timeout=60)
        trial.history.append(f"{args[0]} {final.returncode}")
        if final.returncode != 0 or "Traceback" in final.stderr:
            trial.add(f"the last {args[0]}: {final.returncode}\n{final.stdout}{final.stderr}")
            return trial
    state = af.state(rid)
    if state["status"] != "succeeded":
        trial.add(f"run status {state['status']}")
    if af.snapshot(rid) != state or (af.run_dir(rid) / "state.log").exists():
        trial.add("state.json is not the whole state at the end")
    for step_id, expected in wf.expected.items():
        st = state["steps"][step_id]
        if st["status"] != "succeeded":
            trial.add(f"{step_id} is {st['status']}: {st['message']}")
        marker = ws / "markers" / step_id
        marks = marker.read_text().splitlines() if marker.exists() else []
        starts = [m for m in marks if m.startswith("start")]
        finished = [i for i, m in enumerate(marks) if m.startswith("done")]
        if finished and any(m.startswith("start") for m in marks[finished[0] :]):
            trial.add(f"{step_id} ran again after it succeeded: {marks}")
        if len(starts) != st["attempts"]:
            trial.add(f"{step_id}: {len(starts)} starts, {st['attempts']} attempts")
        folder = af.run_dir(rid) / "steps" / step_id
        logs = [folder / "output.log"] + [
            folder / f"attempt-{n}" / "output.log" for n in range(1, st["attempts"])
        ]
        for log in logs:
            text = log.read_text() if log.exists() else "(missing)"
            if text != expected:
                where = log.relative_to(af.home)
                trial.add(f"{where} is {text!r}, not {expected!r}")
    return trial


TRIALS = int(os.environ.get("AGENTFLOW_CHAOS_TRIALS", "20"))


def test_sigkill_at_random_moments_loses_nothing(af: Env) -> None:
    """20 trials with different seeds, three at a time: every resume completes, no step
    that succeeded runs again, and every attempt's log holds the step's whole output.
    One trial again: AGENTFLOW_CHAOS_SEED=7 AGENTFLOW_CHAOS_TRIALS=1 pytest -k sigkill."""
    first = int(os.environ.get("AGENTFLOW_CHAOS_SEED", "0"))
    with ThreadPoolExecutor(max_workers=3) as pool:
        trials = list(pool.map(lambda s: sigkill_trial(af, s), range(first, first + TRIALS)))
    problems = [p for t in trials for p in t.report()]
    assert not problems, "\n".join(problems)


def chain_workflow(seed: int) -> ChaosWorkflow:
    """30 quick steps in three chains of ten, three at a time: many saves a second, so that
    a kill lands with changes in state.log that state.json does not have yet, or while
    state.json is being compacted."""
    rng = random.Random(seed)
    lines = ["version: 1", "name: chain", "max_parallel: 3", "steps:"]
    expected: dict[str, str] = {}
    for c in range(3):
        for k in range(10):
            step_id = f"c{c}-{k}"
            seconds = rng.uniform(0.02, 0.1)
            yaml, expected[step_id] = _step(step_id, [f"c{c}-{k - 1}"] if k else [], seconds)
            lines.extend(yaml)
    return ChaosWorkflow("\n".join(lines) + "\n", expected)


def test_sigkill_with_the_checkpoint_in_its_log_loses_nothing(af: Env) -> None:
    """Issue 18's 20 seeded trials on a run that saves often: killed two to four times,
    each resume carries on from state.json and the changes logged since; none reruns a
    step that succeeded or loses one. One trial again: AGENTFLOW_CHAOS_SEED=7
    AGENTFLOW_CHAOS_TRIALS=1 pytest -k checkpoint_in_its_log."""
    first = int(os.environ.get("AGENTFLOW_CHAOS_SEED", "0"))

    def trial(seed: int) -> Trial:
        return sigkill_trial(af, seed, chain_workflow(seed), kills=(2, 3, 4), run_events=70)

    with ThreadPoolExecutor(max_workers=3) as pool:
        trials = list(pool.map(trial, range(first, first + TRIALS)))
    problems = [p for t in trials for p in t.report()]
    assert not problems, "\n".join(problems)
    assert len(trials) == TRIALS


RACE = """\
version: 1
name: race
steps:
  - id: first
    run: while [ ! -e release ]; do sleep 0.05; done
  - id: second
    needs: [first]
    run: |
      echo "start $AGENTFLOW_ATTEMPT" >> marks
      echo second-begins; sleep 0.5; echo second-ends
      echo "done $AGENTFLOW_ATTEMPT" >> marks
"""


def tmux_server(af: Env) -> libtmux.Server:
    return libtmux.Server(socket_path=str(socket_path_for(af.home)))


def test_a_launch_the_checkpoint_missed_is_not_started_twice(af: Env) -> None:
    """The moment the random trials hit by chance, made certain: a tmux hook (as a person's
    tmux.conf could have) kills the orchestrator as soon as it opens a window, before its
    checkpoint can say so. The step runs to its end while nobody watches; the resume must
    not run it again."""
    wf = af.write(RACE)
    proc = af.start("run", str(wf), "--run-id", "race1", "--ci")
    af.wait_for(lambda: (af.run_dir("race1") / "steps" / "first" / "pid").exists())
    server = tmux_server(af)
    server.cmd("set-hook", "-g", "after-new-window", f"run-shell 'kill -9 {proc.pid}'")
    (af.workspace / "release").touch()
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    server.cmd("set-hook", "-gu", "after-new-window")
    marks = af.workspace / "marks"
    af.wait_for(lambda: marks.read_text() == "start 1\ndone 1\n", message="second ran")
    res = af.cli("resume", "race1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert marks.read_text() == "start 1\ndone 1\n", "second ran again"
    st = af.state("race1")["steps"]["second"]
    assert (st["status"], st["attempts"]) == ("succeeded", 1)
    log = af.run_dir("race1") / "steps" / "second" / "output.log"
    assert log.read_text() == "second-begins\nsecond-ends\n"


def test_a_run_killed_before_its_first_checkpoint_can_be_started_again(af: Env) -> None:
    """Killed between making the run's folder and its first checkpoint: `resume` says what
    happened and what to do, and `run --run-id` with the same id starts it."""
    wf = af.write("version: 1\nname: early\nsteps:\n  - id: a\n    run: echo ran >> marks\n")
    for attempt in range(20):
        rid = f"early{attempt}"
        folder = af.run_dir(rid)
        proc = af.start("run", str(wf), "--run-id", rid, "--ci")
        while not folder.exists() and proc.poll() is None:
            time.sleep(0.0005)
        proc.send_signal(signal.SIGSTOP)  # hold it where it is, then look
        if not (folder / "state.json").exists():
            proc.send_signal(signal.SIGKILL)
            proc.send_signal(signal.SIGCONT)
            proc.communicate(timeout=30)
            break
        proc.send_signal(signal.SIGCONT)
        proc.communicate(timeout=30)
    else:
        pytest.fail("never caught the orchestrator before its first checkpoint")
    assert proc.returncode == -signal.SIGKILL
    res = af.cli("resume", rid)
    assert res.returncode == 2
    assert f"run {rid} never began" in res.stderr
    assert f"agentflow run WORKFLOW --run-id {rid}" in res.stderr
    res = af.cli("run", str(wf), "--run-id", rid)
    assert res.returncode == 0, res.stdout + res.stderr
    assert af.state(rid)["status"] == "succeeded"


def test_a_second_run_with_the_same_id_is_refused_while_the_first_is_starting(af: Env) -> None:
    """The folder of a run being made is not taken for an abandoned one."""
    wf = af.write("version: 1\nname: early\nsteps:\n  - id: a\n    run: 'true'\n")
    proc = af.start("run", str(wf), "--run-id", "busy1", "--ci")
    folder = af.run_dir("busy1")
    while not folder.exists() and proc.poll() is None:
        time.sleep(0.0005)
    proc.send_signal(signal.SIGSTOP)
    try:
        res = af.cli("run", str(wf), "--run-id", "busy1")
        assert res.returncode == 2
        assert "run busy1 exists already" in res.stderr
    finally:
        proc.send_signal(signal.SIGCONT)
    proc.communicate(timeout=30)
    assert proc.returncode == 0


# --- a damaged state.json --------------------------------------------------------------------

TWO = """\
version: 1
name: two
steps:
  - id: quick
    run: echo "quick $AGENTFLOW_ATTEMPT" >> marks
  - id: slow
    run: |
      echo "slow $AGENTFLOW_ATTEMPT" >> marks
      while [ ! -e release ]; do sleep 0.05; done
      echo slow done
  - id: after
    needs: [quick, slow]
    run: echo "after $AGENTFLOW_ATTEMPT" >> marks
"""


def killed_with_slow_running(af: Env, rid: str) -> Path:
    """A run whose orchestrator was SIGKILLed once quick had succeeded, slow running, and
    state.json itself says so (written whole again within a few seconds of a change: the
    one before it is state.json.prev)."""
    wf = af.write(TWO)
    proc = af.start("run", str(wf), "--run-id", rid, "--ci")
    af.wait_for(
        lambda: (
            af.snapshot(rid)["steps"]["quick"]["status"] == "succeeded"
            and af.snapshot(rid)["steps"]["slow"]["status"] == "running"
            and af.snapshot(rid)["steps"]["slow"]["window"] is not None
        ),
        message="quick done, slow running",
    )
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    return af.run_dir(rid)


def ran_once_each(af: Env) -> None:
    """Each step of TWO ran once: quick and slow (started together, so either may write
    its mark first), then after."""
    marks = (af.workspace / "marks").read_text().split("\n")
    assert sorted(marks[:2]) == ["quick 1", "slow 1"], marks
    assert marks[2:] == ["after 1", ""], marks


def statuses(state: RunState) -> dict[str, tuple[str, int]]:
    return {k: (v.status, v.attempts) for k, v in state.steps.items()}


DAMAGES = {
    "truncated": lambda data: data[: len(data) // 2],
    "cut at the end": lambda data: data[:-2],
    "empty": lambda data: b"",
    "garbage": lambda data: bytes(range(256)) * 4,
    "zeros": lambda data: b"\0" * len(data),
    "other JSON": lambda data: b'{"hello": "world"}',
    "a list": lambda data: b"[]",
}


def test_a_damaged_state_json_is_rebuilt_from_the_previous_copy_and_the_events(
    af: Env, tmp_path: Path
) -> None:
    run = killed_with_slow_running(af, "dmg1")
    good = RunDir(run).read_state()
    for name, damage in DAMAGES.items():
        copy = tmp_path / "copies" / name.replace(" ", "-") / "dmg1"
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("steps"))
        damaged = damage((copy / "state.json").read_bytes())
        (copy / "state.json").write_bytes(damaged)
        prev = (copy / "state.json.prev").read_bytes()
        rd = RunDir(copy)
        with pytest.raises(StateError, match=r"damaged checkpoint .*`agentflow resume dmg1`"):
            rd.read_state()
        note = rd.recover_state()
        assert note is not None
        assert "rebuilt from state.json.prev" in note, note
        assert "kept as state.json.damaged" in note
        recovered = rd.read_state()
        assert statuses(recovered) == statuses(good), name
        assert recovered.steps["slow"].window == good.steps["slow"].window, "re-attachable"
        assert (copy / "state.json.damaged").read_bytes() == damaged, "kept for a person"
        assert (copy / "state.json.prev").read_bytes() == prev
        assert rd.read_events()[-1].kind == "state_recovered"
        assert rd.recover_state() is None, "nothing more to do"


def test_without_a_good_previous_copy_the_events_rebuild_the_state(af: Env, tmp_path: Path) -> None:
    run = killed_with_slow_running(af, "dmg2")
    good = RunDir(run).read_state()
    rd = RunDir(run)
    data = rd.state_path.read_bytes()
    rd.state_path.write_bytes(data[: len(data) // 3])  # the run's identity is still there
    rd.prev_state_path.write_bytes(b"\0" * 100)
    with pytest.raises(StateError, match=r"rebuilds it from events.jsonl"):
        rd.read_state()
    note = rd.recover_state()
    assert note is not None
    assert "rebuilt from plan.json and" in note, note
    recovered = rd.read_state()
    assert statuses(recovered) == statuses(good)
    assert recovered.workspace == good.workspace
    assert recovered.sandbox == good.sandbox
    # Both copies gone: nothing says where the run's workspace is.
    rd.state_path.write_bytes(b"\0" * 100)
    with pytest.raises(StateError, match=r"workspace.* cannot be read anywhere"):
        rd.recover_state()


def test_a_damaged_state_json_is_a_clear_error_and_resume_rebuilds_it(af: Env) -> None:
    """status: a one-line error that says the way out; resume: rebuilt, said so, and the
    run goes on (slow re-attached, quick not run again)."""
    run = killed_with_slow_running(af, "dmg3")
    state_file = run / "state.json"
    state_file.write_bytes(state_file.read_bytes()[:100])
    res = af.cli("status", "dmg3")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    (line,) = res.stderr.splitlines()
    assert line.startswith(f"error: {state_file}: damaged checkpoint ("), line
    assert "`agentflow resume dmg3` rebuilds it from state.json.prev and events.jsonl" in line
    (af.workspace / "release").touch()
    res = af.cli("resume", "dmg3")
    assert res.returncode == 0, res.stdout + res.stderr
    shown = res.stdout + res.stderr
    assert "state.json was damaged" in shown
    assert "rebuilt from state.json.prev" in shown
    ran_once_each(af)
    assert (run / "steps" / "slow" / "output.log").read_text() == "slow done\n"
    assert (run / "state.json.damaged").stat().st_size == 100


def test_an_event_line_cut_short_costs_only_itself(tmp_path: Path) -> None:
    """A crash or a full disk mid-append leaves a partial last line: the next event still
    gets a line of its own."""
    run = RunDir(tmp_path / "r1")
    run.path.mkdir()
    run.append_event(Event(kind="run_started"))
    with run.events_path.open("ab") as f:
        f.write(b'{"ts":"2026-01-01T00:00:00Z","kind":"step_sta')
    run.append_event(Event(kind="step_started", step="a", attempt=1))
    assert [(e.kind, e.step) for e in run.read_events()] == [
        ("run_started", None),
        ("step_started", "a"),
    ]


def test_one_damaged_run_does_not_hide_the_others(af: Env) -> None:
    wf = af.write("version: 1\nname: fine\nsteps:\n  - id: a\n    run: 'true'\n")
    assert af.cli("run", str(wf), "--run-id", "fine2").returncode == 0
    shutil.copytree(
        af.run_dir("fine2"), af.run_dir("fine1"), ignore=shutil.ignore_patterns("*fifo", ".wake")
    )
    (af.run_dir("fine1") / "state.json").write_bytes(b"")
    res = af.cli("status")
    assert res.returncode == 0, res.stderr
    assert "fine2" in res.stdout
    assert "fine1" in res.stdout
    assert "damaged" in res.stdout


# --- a full disk -----------------------------------------------------------------------------


def fill_folder(folder: Path, leave: int = 0) -> Path:
    """A file that takes every free byte of ``folder``'s file system but ``leave``."""
    fill(folder / "ballast", leave)
    return folder / "ballast"


HOLD = """\
version: 1
name: hold
steps:
  - id: first
    run: echo first
  - id: hold
    needs: [first]
    run: |
      echo holding
      while [ ! -e release ]; do sleep 0.05; done
      echo released
  - id: after
    needs: [hold]
    run: echo after
"""


def test_a_full_disk_is_a_clear_error_and_the_checkpoint_stays_valid(
    small_disk: Path, af: Env
) -> None:
    """The disk fills while hold runs; the orchestrator's next checkpoint (here: it is told
    to let go, SIGTERM) cannot be written. A clear error; the last checkpoint stays whole;
    once there is space again the run is resumed and finished."""
    assert af.home == small_disk
    wf = af.write(HOLD)
    proc = af.start("run", str(wf), "--run-id", "full1", "--ci")
    af.wait_for(lambda: (af.run_dir("full1") / "steps" / "hold" / "pid").exists())
    ballast = fill_folder(small_disk)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: cannot save the checkpoint of run full1 in {af.run_dir('full1')} (No space "
        "left on device); the last one saved is kept: fix that, then `agentflow resume full1` "
        "(steps still running go on meanwhile)"
    ], err
    run = RunDir(af.run_dir("full1"))
    state = run.read_state()  # whole: the last checkpoint saved
    assert state.steps["first"].status == "succeeded"
    assert state.steps["hold"].status == "running"
    assert not list(run.path.glob(".*.tmp")), "no half-written file holds on to the space"
    assert [e.kind for e in run.read_events()][-1] == "step_started"
    ballast.unlink()
    (af.workspace / "release").touch()
    res = af.cli("resume", "full1")
    assert res.returncode == 0, res.stdout + res.stderr
    state = run.read_state()
    assert state.status == "succeeded"
    assert (state.steps["hold"].attempts, state.steps["hold"].exit_code) == (1, 0)


def test_a_step_ending_on_a_full_disk_keeps_its_exit_code(small_disk: Path, af: Env) -> None:
    """hold ends while the disk is full: its exit code is still recorded, and once there is
    space again the run goes on from it (hold is not run again)."""
    wf = af.write(HOLD)
    proc = af.start("run", str(wf), "--run-id", "full2", "--ci")
    af.wait_for(lambda: (af.run_dir("full2") / "steps" / "hold" / "pid").exists())
    ballast = fill_folder(small_disk)
    (af.workspace / "release").touch()
    af.wait_for(lambda: (af.run_dir("full2") / "steps" / "hold" / "exit_code").exists())
    assert (af.run_dir("full2") / "steps" / "hold" / "exit_code").read_text().strip() == "0"
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=3)  # its next checkpoint cannot be saved: it stops
    ballast.unlink()
    if proc.poll() is None:
        proc.communicate(timeout=60)
    else:
        res = af.cli("resume", "full2")
        assert res.returncode == 0, res.stdout + res.stderr
    hold = af.state("full2")["steps"]["hold"]
    assert (hold["status"], hold["attempts"], hold["exit_code"]) == ("succeeded", 1, 0)


def test_a_step_that_cannot_be_written_on_a_full_disk_is_a_clear_error(
    small_disk: Path, af: Env
) -> None:
    """Between two attempts (a retry's back-off) the disk fills, all but one page: the
    next attempt's files cannot be written. The error says which, or where."""
    wf = af.write(
        """\
        version: 1
        name: flaky
        steps:
          - id: flaky
            retry: {limit: 1, backoff: {initial: 4s}}
            run: |
              [ "$AGENTFLOW_ATTEMPT" -gt 1 ] || exit 1
              echo ok
        """
    )
    proc = af.start("run", str(wf), "--run-id", "full3", "--ci")
    events = af.run_dir("full3") / "events.jsonl"
    af.wait_for(lambda: "retry_scheduled" in events.read_text(), message="in the back-off")
    fill_folder(small_disk, leave=4096)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "No space left on device" in line, err
    assert f"{af.run_dir('full3')}/steps/flaky/" in line, err


# --- tmux server, container and Docker daemon killed mid-run ---------------------------------


def pair(extra: str = "") -> str:
    """A step done before the fault, two running through it, one after; a retry for
    crashed attempts only."""
    return (
        f"""\
version: 1
name: pair
{extra}defaults:
  retry: {{limit: 1, backoff: {{initial: 0s}}, on: [crashed]}}
steps:
  - id: before
    run: echo "before $AGENTFLOW_ATTEMPT" >> marks
"""
        + "".join(
            f"""\
  - id: {side}
    needs: [before]
    run: |
      echo "{side} $AGENTFLOW_ATTEMPT" >> marks
      echo "{side} attempt $AGENTFLOW_ATTEMPT"
      [ "$AGENTFLOW_ATTEMPT" -gt 1 ] || sleep 60
      echo "{side} finished"
"""
            for side in ("left", "right")
        )
        + """\
  - id: after
    needs: [left, right]
    run: echo "after $AGENTFLOW_ATTEMPT" >> marks
"""
    )


def both_running(af: Env, rid: str) -> bool:
    marks = (af.workspace / "marks").read_text().split("\n")
    return "left 1" in marks and "right 1" in marks


def assert_fault_survived(af: Env, rid: str, out: str, err: str, code: int | None) -> None:
    """left and right crashed and ran again; nothing else ran twice; every attempt's log
    is there; no traceback."""
    assert code == 0, out + err
    assert "Traceback" not in err
    marks = sorted((af.workspace / "marks").read_text().split("\n"))
    assert marks == ["", "after 1", "before 1", "left 1", "left 2", "right 1", "right 2"]
    state = af.state(rid)
    assert state["status"] == "succeeded"
    events = [json.loads(line) for line in (af.run_dir(rid) / "events.jsonl").open()]
    for side in ("left", "right"):
        ended = [e for e in events if e["kind"] == "step_finished" and e["step"] == side]
        assert [(e["attempt"], e["status"]) for e in ended] == [(1, "crashed"), (2, "succeeded")]
        folder = af.run_dir(rid) / "steps" / side
        assert (folder / "output.log").read_text() == f"{side} attempt 2\n{side} finished\n"
        assert (folder / "attempt-1" / "output.log").read_text().startswith(f"{side} attempt 1\n")


def test_tmux_server_killed_mid_run(af: Env) -> None:
    """The steps in its windows go with it (SIGHUP): crashed, and run again (retry.on:
    [crashed]); the orchestrator makes a new session; nothing else is lost."""
    wf = af.write(pair())
    proc = af.start("run", str(wf), "--run-id", "tk1", "--ci")
    af.wait_for(lambda: both_running(af, "tk1"), message="left and right running")
    tmux_server(af).kill()
    out, err = proc.communicate(timeout=60)
    assert_fault_survived(af, "tk1", out, err, proc.returncode)


IMAGE = TEST_IMAGE
BOXED = f"sandbox: {{backend: docker, image: {IMAGE}}}\n"


def container_of(client: docker.DockerClient, rid: str) -> Container:
    (found,) = client.containers.list(all=True, filters={"label": f"agentflow.run={rid}"})
    return found


@pytest.mark.docker
def test_sandbox_container_killed_mid_run(af: Env, docker_client: docker.DockerClient) -> None:
    wf = af.write(pair(BOXED))
    proc = af.start("run", str(wf), "--run-id", "ck1", "--ci")
    af.wait_for(lambda: both_running(af, "ck1"), message="left and right running")
    container_of(docker_client, "ck1").kill()
    out, err = proc.communicate(timeout=60)
    assert_fault_survived(af, "ck1", out, err, proc.returncode)


DOCKERD_LOG = Path(os.environ.get("AGENTFLOW_CI_STATE", "/var/tmp/agentflow-ci")) / "dockerd.log"


def running_dockerd() -> tuple[int, list[str]]:
    """The daemon's pid and command line (to start it again the same way)."""
    if os.geteuid() != 0:
        pytest.skip("restarting the Docker daemon needs root")
    try:
        pid = int(Path("/var/run/docker.pid").read_text())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    except (OSError, ValueError) as e:
        pytest.skip(f"no dockerd of this machine's to restart ({e})")
    return pid, [a.decode() for a in argv]


def daemon_answers() -> bool:
    with contextlib.suppress(docker.errors.DockerException):
        c = docker.from_env(version="auto", timeout=2)
        try:
            c.ping()
            return True
        finally:
            c.close()
    return False


def stop_dockerd(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def start_dockerd(argv: list[str]) -> None:
    """Start the daemon as scripts/docker-setup does (detached, logging to the CI log)."""
    if daemon_answers():
        return
    DOCKERD_LOG.parent.mkdir(parents=True, exist_ok=True)
    command = f"nohup {shlex.join(argv)} >>{shlex.quote(str(DOCKERD_LOG))} 2>&1 &"
    subprocess.run(["sh", "-c", command], check=True)
    deadline = time.monotonic() + 60
    while not daemon_answers():
        if time.monotonic() > deadline:  # not an AssertionError: no expected failure
            raise RuntimeError(f"dockerd did not come back: see {DOCKERD_LOG}")
        time.sleep(0.2)


@pytest.mark.docker
def test_docker_daemon_restarted_mid_run(af: Env, docker_client: docker.DockerClient) -> None:
    """Every container stops with the daemon: the running steps crash, and run again once
    it is back; the run goes on. The daemon is running again however the test ends."""
    pid, argv = running_dockerd()
    wf = af.write(pair(BOXED))
    proc = af.start("run", str(wf), "--run-id", "dd1", "--ci")
    try:
        af.wait_for(lambda: both_running(af, "dd1"), message="left and right running")
        stop_dockerd(pid)
    finally:
        start_dockerd(argv)
    out, err = proc.communicate(timeout=90)
    assert_fault_survived(af, "dd1", out, err, proc.returncode)


# --- two resumes at once ---------------------------------------------------------------------


def test_two_resumes_at_once_the_second_is_refused(af: Env) -> None:
    killed_with_slow_running(af, "two1")
    first = af.start("resume", "two1", "--ci")
    second = af.start("resume", "two1", "--ci")
    af.wait_for(lambda: first.poll() is not None or second.poll() is not None, message="one ends")
    loser, winner = (first, second) if first.poll() is not None else (second, first)
    out, err = loser.communicate(timeout=30)
    assert loser.returncode == 2, out + err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "run two1 is being driven by another agentflow process (pid " in line
    assert winner.poll() is None, "the other one drives the run"
    (af.workspace / "release").touch()
    out, err = winner.communicate(timeout=60)
    assert winner.returncode == 0, out + err
    ran_once_each(af)


# --- fuzzing the workflow loader -------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = {p.name: p.read_bytes() for p in sorted((ROOT / "workflows").glob("*.yaml"))}
YAML_BITS = [
    b"\n", b": ", b"- ", b"  ", b"\t", b"{", b"}", b"[", b"]", b",", b"'", b'"', b"#", b"&a ",
    b"*a", b"<<: *a\n", b"!!python/object:os.system ", b"!!binary ", b"|\n", b">-\n", b"? ",
    b"---\n", b"...\n", b"${{ ", b" }}", b"${{ steps.x.outputs.y }}", b"\xff", b"\xc3", b"\x00",
    b"\xef\xbb\xbf", b"1e999", b"-1", b"0x10", b"~", b"null", b"yes", b"needs: [", b"run: ",
]  # fmt: skip


@st.composite
def mutated_example(draw: st.DrawFn) -> tuple[str, bytes]:
    """An example workflow with a few random edits, down to bytes that are not UTF-8."""
    name = draw(st.sampled_from(sorted(EXAMPLES)))
    data = EXAMPLES[name]
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "cut", "move-line", "flip"]))
        if kind == "insert":
            data = data[:i] + draw(st.sampled_from(YAML_BITS)) + data[i:]
        elif kind == "delete":
            data = data[:i] + data[i + draw(st.integers(1, 40)) :]
        elif kind == "replace":
            data = data[:i] + draw(st.binary(min_size=1, max_size=8)) + data[i + 1 :]
        elif kind == "cut":
            data = data[:i]
        elif kind == "flip" and data:
            j = min(i, len(data) - 1)
            data = data[:j] + bytes([data[j] ^ (1 << draw(st.integers(0, 7)))]) + data[j + 1 :]
        else:
            lines = data.split(b"\n")
            a, b = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines.insert(b, lines.pop(a))
            data = b"\n".join(lines)
    return name, data


@pytest.fixture(scope="module")
def examples_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """workflows/ next to what its examples point at (docs, the Dockerfile), in a copy."""
    root = tmp_path_factory.mktemp("examples")
    shutil.copytree(ROOT / "workflows", root / "workflows", ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copytree(ROOT / "docs" / "runbooks", root / "docs" / "runbooks")
    shutil.copy(ROOT / "Dockerfile", root / "Dockerfile")
    return root / "workflows"


def test_the_examples_load_as_they_are(examples_copy: Path) -> None:
    for name in EXAMPLES:
        assert load_workflow(examples_copy / name).workflow.steps


@settings(max_examples=300, deadline=None, database=None)
@given(example=mutated_example())
def test_fuzz_mutated_examples_give_only_agentflows_errors(
    examples_copy: Path, example: tuple[str, bytes]
) -> None:
    name, data = example
    path = examples_copy / f"mutated-{name}"
    path.write_bytes(data)
    problems: list[Problem] = []
    try:
        load_workflow(path)
    except WorkflowError as e:
        problems = e.problems or [Problem("(none)", None, None, "a WorkflowError without problems")]
    for p in problems:
        assert p.message.strip()
        assert str(p).startswith(str(path))
        assert "\n" not in str(p)


# --- secrets ---------------------------------------------------------------------------------

SECRET = "s3cr3t-Chaos-Value-9731"


def assert_secret_nowhere(af: Env, rid: str, printed: str, steps: list[str]) -> None:
    """Not in any file of the run directory, nor in anything agentflow printed (the run,
    and the commands that show it: status, logs of ``steps``, report)."""
    leaks = [
        str(path.relative_to(af.run_dir(rid)))
        for path in sorted(af.run_dir(rid).rglob("*"))
        if path.is_file() and SECRET.encode() in path.read_bytes()
    ]
    assert not leaks, f"the secret is in {leaks}"
    for args in (["status", rid], ["report", rid], *[["logs", rid, s] for s in steps]):
        shown = af.cli(*args)
        printed += shown.stdout + shown.stderr
    assert SECRET not in printed


def test_a_secret_printed_written_and_failed_with_appears_nowhere(af: Env) -> None:
    wf = af.write(
        """\
        version: 1
        name: leaky
        secrets: [API_TOKEN]
        defaults: {on_failure: continue}
        steps:
          - id: prints
            run: |
              echo "the token is $API_TOKEN"
              echo "to stderr: $API_TOKEN" >&2
              printf '%s' "no newline $API_TOKEN"
          - id: writes
            run: |
              printf '%s\\n' "$API_TOKEN" > token.txt
              printf '{"token": "%s"}\\n' "$API_TOKEN" > token.json
              echo "written"
            outputs:
              token: {file: token.txt}
              json_token: {json: token.json, key: token}
          - id: uses-output
            needs: [writes]
            run: echo "got ${{ steps.writes.outputs.token }}"
          - id: fails
            run: |
              echo "failing with $API_TOKEN"
              echo "$API_TOKEN" >&2
              exit 3
          - id: retried
            retry: {limit: 1, backoff: {initial: 0s}}
            run: |
              echo "attempt $AGENTFLOW_ATTEMPT: $API_TOKEN"
              exit 1
        """
    )
    af.env["API_TOKEN"] = SECRET
    res = af.cli("run", str(wf), "--run-id", "sec1", "--ci")
    assert res.returncode == 1, res.stdout + res.stderr
    steps = af.state("sec1")["steps"]
    assert steps["fails"]["exit_code"] == 3
    assert steps["retried"]["attempts"] == 2
    log = af.run_dir("sec1") / "steps" / "prints" / "output.log"
    assert log.read_text() == "the token is ***\nto stderr: ***\nno newline ***\n"
    assert steps["writes"]["outputs"] == {"token": "***", "json_token": "***"}
    assert (af.workspace / "token.txt").read_text() == SECRET + "\n", "the step had it"
    assert_secret_nowhere(af, "sec1", res.stdout + res.stderr, ["prints"])


def test_a_secret_in_what_a_failed_check_found_appears_nowhere(af: Env) -> None:
    wf = af.write(
        """\
        version: 1
        name: leaky-checks
        secrets: [API_TOKEN]
        defaults: {on_failure: continue}
        steps:
          - id: write
            run: |
              printf '%s\\n' "$API_TOKEN" > token.txt
              printf '{"score": "%s"}\\n' "$API_TOKEN" > score.json
          - id: metric
            needs: [write]
            run: 'true'
            success: {metrics: {score: {file: score.json, key: score, min: 1}}}
          - id: command
            needs: [write]
            run: 'true'
            success: {command: 'cat token.txt; exit 1'}
          - id: service
            needs: [write]
            service: true
            run: sleep 30
            ready: {command: 'cat token.txt; exit 1', interval: 100ms, timeout: 1s}
          - id: client
            needs: [service]
            run: 'true'
        """
    )
    af.env["API_TOKEN"] = SECRET
    res = af.cli("run", str(wf), "--run-id", "sec2", "--ci")
    assert res.returncode == 1, res.stdout + res.stderr
    steps = af.state("sec2")["steps"]
    assert [steps[s]["status"] for s in ("metric", "command", "service")] == ["failed"] * 3
    assert_secret_nowhere(af, "sec2", res.stdout + res.stderr, [])


LAUNCH = """\
version: 1
name: launch
steps:
  - id: first
    run: while [ ! -e release1 ]; do sleep 0.05; done
  - id: second
    needs: [first]
    run: |
      echo "start $AGENTFLOW_ATTEMPT" >> marks
      echo second-begins
      while [ ! -e release ]; do sleep 0.05; done
      echo second-ends
      echo "done $AGENTFLOW_ATTEMPT" >> marks
"""


def launching(af: Env, rid: str) -> bool:
    """The checkpoint says second is being launched: running, no window yet."""
    second = af.state(rid)["steps"]["second"]
    return bool(second["status"] == "running" and second["window"] is None)


def window_names(af: Env) -> list[str]:
    return list(tmux_server(af).cmd("list-windows", "-a", "-F", "#{window_name}").stdout)


def resume_and_release(af: Env, rid: str) -> None:
    """Resume; once it has looked at the run, let second end; then second must have run
    once, as attempt 1, with its whole log."""
    resumed = af.start("resume", rid, "--ci")
    events = af.run_dir(rid) / "events.jsonl"
    af.wait_for(lambda: "run_resumed" in events.read_text(), message="resumed")
    (af.workspace / "release").touch()
    out, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, out + err
    assert (af.workspace / "marks").read_text() == "start 1\ndone 1\n"
    st = af.state(rid)["steps"]["second"]
    assert (st["status"], st["attempts"]) == ("succeeded", 1)
    log = af.run_dir(rid) / "steps" / "second" / "output.log"
    assert log.read_text() == "second-begins\nsecond-ends\n"


def test_a_window_opened_but_not_yet_saved_is_reattached(af: Env) -> None:
    """Stopped (then killed) between its launch checkpoint and saving the window's id,
    after tmux opened the window: the resume finds the step's window by its name."""
    for n in range(20):
        rid = f"open{n}"
        proc = af.start("run", str(af.write(LAUNCH)), "--run-id", rid, "--ci")
        first_pid = af.run_dir(rid) / "steps" / "first" / "pid"
        af.wait_for(first_pid.exists)
        (af.workspace / "release1").touch()
        while proc.poll() is None:
            with contextlib.suppress(OSError, ValueError, KeyError):
                if launching(af, rid):
                    proc.send_signal(signal.SIGSTOP)
                    break
                if af.state(rid)["steps"]["second"]["window"] is not None:
                    break
        time.sleep(0.2)  # a tmux command on its way has arrived
        if launching(af, rid) and "second" in window_names(af):
            break
        proc.send_signal(signal.SIGCONT)
        (af.workspace / "release").touch()
        proc.communicate(timeout=30)
        for name in ("release", "release1", "marks"):
            (af.workspace / name).unlink(missing_ok=True)
    else:
        pytest.fail("never caught the orchestrator between its two launch checkpoints")
    proc.send_signal(signal.SIGKILL)
    proc.send_signal(signal.SIGCONT)
    proc.communicate(timeout=30)
    resume_and_release(af, rid)


def test_a_window_that_never_opened_is_no_attempt(af: Env) -> None:
    """The tmux server stops answering (SIGSTOP) as second is launched; orchestrator and
    server are then killed: the checkpoint says "launching", no window ever opened."""
    wf = af.write(LAUNCH)
    proc = af.start("run", str(wf), "--run-id", "never1", "--ci")
    af.wait_for(lambda: (af.run_dir("never1") / "steps" / "first" / "pid").exists())
    server_pid = int(tmux_server(af).cmd("display-message", "-p", "#{pid}").stdout[0])
    os.kill(server_pid, signal.SIGSTOP)
    try:
        (af.workspace / "release1").touch()
        af.wait_for(lambda: launching(af, "never1"), message="second launching")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        os.kill(server_pid, signal.SIGKILL)
    resume_and_release(af, "never1")
