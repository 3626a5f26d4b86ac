"""A run nobody drives (its orchestrator detached, or killed) is shown from its steps' own
files: ``status`` (table and ``--json``), ``logs`` and ``report`` give the exit code a step
wrote since, and the progress its output shows now, never a frozen bar and a running
clock. Nothing of that is written into the checkpoint: ``resume`` records it."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from agentflow.store import RunDir

from conftest import Env

GATED = """\
version: 1
name: unw
steps:
  - id: train
    # One epoch per tick file the test makes: its progress moves only when the test says.
    run: |
      i=0
      while [ $i -lt 10 ]; do
        if [ -e tick$((i+1)) ]; then i=$((i+1)); echo "epoch $i/10 loss 0.$i"; fi
        sleep 0.05
      done
    expect: {progress: 'epoch (\\d+)/(\\d+)'}
  - id: short
    run: while [ ! -e go ]; do sleep 0.05; done; echo short-done
"""


def _status(af: Env, rid: str) -> dict[str, Any]:
    res = af.cli("status", rid, "--json")
    assert res.returncode == 0, res.stderr
    data: dict[str, Any] = json.loads(res.stdout)
    return data


def _log(af: Env, rid: str, step: str) -> str:
    return (af.run_dir(rid) / "steps" / step / "output.log").read_text()


def _ticks(af: Env, upto: int) -> None:
    for i in range(1, upto + 1):
        (af.workspace / f"tick{i}").touch()


@pytest.mark.parametrize(
    ("sig", "run_status"), [(signal.SIGTERM, "interrupted"), (signal.SIGKILL, "orphaned")]
)
def test_a_run_nobody_drives_shows_its_steps_files(
    af: Env, sig: signal.Signals, run_status: str
) -> None:
    """SIGTERM detaches (the run is left `interrupted`, its steps go on); SIGKILL leaves it
    orphaned. Either way the steps end while nobody watches."""
    af.write(GATED)
    rid = f"unw-{sig.name.lower()}"
    proc = af.start("run", "wf.yaml", "--ci", "--run-id", rid)
    try:
        _ticks(af, 2)
        af.wait_for(
            lambda: (
                (af.state(rid)["steps"]["train"]["progress"] or {}).get("done") == 2
                and af.state(rid)["steps"]["short"]["status"] == "running"
            ),
            message="both steps running, train's progress recorded at 2/10",
        )
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert RunDir(af.run_dir(rid)).lock_holder() is None  # nobody drives it now

    # While nobody watches: train moves on, short ends.
    _ticks(af, 7)
    (af.workspace / "go").touch()
    af.wait_for(lambda: "epoch 7/10" in _log(af, rid, "train"), message="train at 7/10")
    af.wait_for(lambda: (af.run_dir(rid) / "steps" / "short" / "exit_code").exists())

    checkpoint = af.state(rid)  # as the orchestrator left it
    assert checkpoint["steps"]["short"]["status"] == "running"
    assert checkpoint["steps"]["short"]["exit_code"] is None
    assert checkpoint["steps"]["train"]["progress"]["done"] == 2

    seen = _status(af, rid)
    assert seen["driven"] is False
    short, train = seen["steps"]["short"], seen["steps"]["train"]
    assert short["status"] == "running"  # not judged: its checks are resume's to run
    assert short["exit_code"] == 0
    assert short["finished_at"] is not None
    assert short["unwatched"] is True
    assert short["ended_unwatched"] is True
    assert short["message"] == "ended while unwatched: exit 0, resume to record it"
    assert train["exit_code"] is None
    assert train["unwatched"] is True
    assert train["ended_unwatched"] is False
    assert train["progress"]["done"] == 7
    assert train["progress"]["total"] == 10
    assert train["progress"]["eta_s"] is not None
    assert af.state(rid) == checkpoint  # shown, never written

    af.env["COLUMNS"] = "160"
    table = af.cli("status", rid).stdout
    assert run_status in table.splitlines()[0]
    short_row = next(line for line in table.splitlines() if line.startswith("short"))
    assert "■ ended" in short_row
    assert "ended while unwatched: exit 0, resume to record it" in short_row
    train_row = next(line for line in table.splitlines() if line.startswith("train"))
    assert "70%" in train_row
    assert "epoch 7/10" in train_row
    assert "nobody watches this run" in table

    logs = af.cli("logs", rid, "short")
    assert logs.stdout == "short-done\n"  # the log as the step wrote it
    assert "ended while unwatched: exit 0" in logs.stderr

    report = af.cli("report", rid).stdout
    assert "ended while unwatched: exit 0, resume to record it" in report

    # A resume records what happened meanwhile.
    _ticks(af, 10)
    res = af.cli("resume", rid, "--ci")
    assert res.returncode == 0, res.stdout + res.stderr
    done = af.state(rid)["steps"]
    assert done["short"]["status"] == "succeeded"
    assert done["short"]["exit_code"] == 0
    assert _status(af, rid)["steps"]["short"]["ended_unwatched"] is False


def test_status_json_gives_an_exit_code_before_the_orchestrator_records_it(af: Env) -> None:
    """Driven or not: the exit code is there as soon as the step's file says so. (The
    test holds the run's lock itself: a driver that has not caught up yet.)"""
    af.write(GATED)
    proc = af.start("run", "wf.yaml", "--ci", "--run-id", "drv")
    try:
        # Its wrapper started (a step recorded running may wait for its window a moment:
        # the launch pass opens the windows of all it started after one sync).
        pid = af.run_dir("drv") / "steps" / "short" / "pid"
        af.wait_for(pid.exists, message="short started")
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    (af.workspace / "go").touch()
    af.wait_for(lambda: (af.run_dir("drv") / "steps" / "short" / "exit_code").exists())
    with RunDir(af.run_dir("drv")).lock():
        seen = _status(af, "drv")
    assert seen["driven"] is True
    short = seen["steps"]["short"]
    assert short["exit_code"] == 0
    assert short["unwatched"] is False
    assert short["ended_unwatched"] is False
    assert short["message"] is None  # the driver judges it in a moment
    listed = json.loads(af.cli("status", "--json").stdout)
    assert listed[0]["steps"]["short"]["exit_code"] == 0  # every run's JSON says it too


def test_resume_detach_takes_an_orphaned_run_back_into_the_background(af: Env) -> None:
    """The orchestrator killed while a step runs; `resume --detach` starts a new one in the
    run's tmux session, which re-attaches to the step that went on and ends the run."""
    af.write(GATED)
    rid = "unw-redetach"
    proc = af.start("run", "wf.yaml", "--ci", "--run-id", rid)
    try:
        af.wait_for(
            lambda: af.state(rid)["steps"]["short"]["status"] == "running",
            message="short running",
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    res = af.cli("resume", rid, "--detach")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "goes on in the background" in res.stdout
    af.wait_for(lambda: _status(af, rid)["driven"], message="a new orchestrator drives it")
    _ticks(af, 10)
    (af.workspace / "go").touch()
    af.wait_for(lambda: af.state(rid)["status"] == "succeeded", timeout=60, message="run ends")
    steps = af.state(rid)["steps"]
    assert steps["short"]["attempts"] == 1  # re-attached, not started again
    assert steps["train"]["attempts"] == 1
    assert "short-done" in _log(af, rid, "short")
