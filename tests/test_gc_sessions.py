"""``agentflow gc`` closes the tmux sessions of runs that are over, and never one that is
driven, has a step running, or has a live process in it (issue 17: sessions piled up).
Real runs on the test's own tmux server."""

from __future__ import annotations

import re
import signal
import subprocess

from agentflow.store import RunDir
from agentflow.tmux import Tmux, socket_path_for

from conftest import Env

QUICK = """\
version: 1
name: quick
sandbox: {backend: local}
steps:
  - id: hello
    run: echo hello
"""

LONG = """\
version: 1
name: long
sandbox: {backend: local}
steps:
  - id: wait
    run: |
      echo started; while [ ! -e release ]; do sleep 0.1; done; echo released
"""


def sessions(af: Env) -> set[str]:
    return set(Tmux(socket_path_for(af.home)).sessions())


def gc(af: Env) -> str:
    res = af.cli("gc")
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def running(af: Env, run_id: str) -> bool:
    """The step runs: recorded so, and its command has begun (the checkpoint says
    `running` just before its window is made; a kill in between would leave no step)."""
    log = af.run_dir(run_id) / "steps" / "wait" / "output.log"
    return bool(
        af.state(run_id)["steps"]["wait"]["status"] == "running"
        and log.exists()
        and "started" in log.read_text()
    )


def test_gc_closes_the_session_of_a_finished_run_and_keeps_the_others(af: Env) -> None:
    done = af.cli("run", str(af.write(QUICK)), "--run-id", "done", "--ci")
    assert done.returncode == 0, done.stdout + done.stderr
    # Driven: a detached run, its orchestrator alive and a step running.
    wf = af.write(LONG)
    detached = af.cli("run", str(wf), "--run-id", "driven", "--detach")
    assert detached.returncode == 0, detached.stdout + detached.stderr
    af.wait_for(lambda: running(af, "driven"), message="driven's step running")
    # Orphaned: its orchestrator killed, its step still running in its window.
    proc = af.start("run", str(wf), "--run-id", "orphan")
    af.wait_for(lambda: running(af, "orphan"), message="orphan's step running")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert sessions(af) == {"done", "driven", "orphan"}

    out = gc(af)
    assert re.search(r"^closed 1 tmux session\(s\): done$", out, re.M), out
    assert sessions(af) == {"driven", "orphan"}
    assert running(af, "driven")
    assert running(af, "orphan")

    # Both go on. Once the driven run has ended and its orchestrator is gone, gc closes
    # its session; the orphan's step has ended too, unwatched, but its state still says
    # running (`resume` records how it ended): kept.
    (af.workspace / "release").touch()
    driven = RunDir(af.run_dir("driven"))
    af.wait_for(
        lambda: af.state("driven")["status"] == "succeeded" and driven.lock_holder() is None,
        message="driven ends",
    )
    af.wait_for(lambda: (af.run_dir("orphan") / "steps" / "wait" / "exit_code").exists())
    out = gc(af)
    assert re.search(r"^closed 1 tmux session\(s\): driven$", out, re.M), out
    assert sessions(af) == {"orphan"}


def test_gc_keeps_a_finished_runs_session_while_something_lives_in_it(af: Env) -> None:
    done = af.cli("run", str(af.write(QUICK)), "--run-id", "done", "--ci")
    assert done.returncode == 0, done.stdout + done.stderr
    socket = str(socket_path_for(af.home))
    tmux = Tmux(socket_path_for(af.home)).binary
    # Someone started a process in the run's session after it ended.
    subprocess.run(
        [tmux, "-S", socket, "new-window", "-d", "-t", "=done:", "-n", "mine", "sleep 300"],
        check=True,
    )
    assert "closed 0 tmux session(s)" in gc(af)
    assert sessions(af) == {"done"}
    subprocess.run([tmux, "-S", socket, "kill-window", "-t", "=done:mine"], check=True)
    assert "closed 1 tmux session(s): done" in gc(af)
    assert sessions(af) == set()
