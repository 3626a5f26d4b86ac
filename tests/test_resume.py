"""Killing agentflow at any moment loses nothing: resume, re-attach, the lock, stop."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from pathlib import Path

import libtmux

from agentflow.tmux import socket_path_for

from conftest import AGENTFLOW, Env, group_alive

CHAIN = """\
version: 1
name: chain
steps:
  - id: first
    run: echo first >> starts.txt
  - id: middle
    needs: [first]
    run: |
      echo middle >> starts.txt
      while [ ! -e release ]; do sleep 0.05; done
      echo "middle done"
  - id: last
    needs: [middle]
    run: echo last >> starts.txt
"""


def start_and_wait_running(af: Env, step: str) -> tuple[subprocess.Popen[str], str]:
    wf = af.write(CHAIN)
    proc = af.start("run", str(wf), "--run-id", "r1")
    af.wait_for(
        lambda: (
            af.state("r1")["steps"][step]["status"] == "running"
            and (af.run_dir("r1") / "steps" / step / "pid").exists()
        ),
        message=f"{step} running",
    )
    return proc, "r1"


def test_resume_after_sigkill_reattaches_to_a_running_step(af: Env) -> None:
    proc, rid = start_and_wait_running(af, "middle")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert af.state(rid)["status"] == "running"  # as the dead orchestrator left it
    status = af.cli("status")
    assert "orphaned" in status.stdout
    resumed = af.start("resume", rid)
    af.wait_for(lambda: "run_resumed" in (af.run_dir(rid) / "events.jsonl").read_text())
    (af.workspace / "release").touch()
    out, err = resumed.communicate(timeout=30)
    assert resumed.returncode == 0, out + err
    assert (af.workspace / "starts.txt").read_text().split() == ["first", "middle", "last"]
    state = af.state(rid)
    assert state["status"] == "succeeded"
    assert state["steps"]["middle"]["attempts"] == 1


def test_resume_picks_up_a_step_that_ended_while_nobody_watched(af: Env) -> None:
    proc, rid = start_and_wait_running(af, "middle")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (af.workspace / "release").touch()
    af.wait_for(lambda: (af.run_dir(rid) / "steps" / "middle" / "exit_code").exists())
    res = af.cli("resume", rid)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (af.workspace / "starts.txt").read_text().split() == ["first", "middle", "last"]
    steps = af.state(rid)["steps"]
    assert steps["middle"]["attempts"] == 1
    assert steps["middle"]["exit_code"] == 0
    assert steps["last"]["status"] == "succeeded"


def test_resume_reruns_a_step_whose_window_vanished(af: Env) -> None:
    proc, rid = start_and_wait_running(af, "middle")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The wrapper dies too (as under the OOM killer): no exit code is ever written.
    server = libtmux.Server(socket_path=str(socket_path_for(af.home)))
    panes = server.cmd("list-panes", "-a", "-F", "#{window_name} #{pane_pid}").stdout
    wrapper = next(int(line.split()[1]) for line in panes if line.startswith("middle "))
    os.killpg(wrapper, signal.SIGKILL)
    os.killpg(int((af.run_dir(rid) / "steps" / "middle" / "pid").read_text()), signal.SIGKILL)
    (af.workspace / "release").touch()
    res = af.cli("resume", rid)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (af.workspace / "starts.txt").read_text().split() == [
        "first",
        "middle",
        "middle",
        "last",
    ]
    assert af.state(rid)["steps"]["middle"]["attempts"] == 2
    events = (af.run_dir(rid) / "events.jsonl").read_text()
    assert '"status":"crashed"' in events


def test_second_orchestrator_is_refused_and_stop_ends_the_run(af: Env) -> None:
    proc, rid = start_and_wait_running(af, "middle")
    second = af.cli("resume", rid)
    assert second.returncode == 2
    assert "being driven by another agentflow process" in second.stderr
    assert "Traceback" not in second.stderr
    pgid = int((af.run_dir(rid) / "steps" / "middle" / "pid").read_text())
    stopped = af.cli("stop", rid)
    assert stopped.returncode == 0, stopped.stderr
    proc.communicate(timeout=30)
    assert proc.returncode == 130
    state = af.state(rid)
    assert state["status"] == "interrupted"
    assert state["steps"]["middle"]["status"] == "failed"
    assert state["steps"]["last"]["status"] == "pending"
    af.wait_for(lambda: not group_alive(pgid), timeout=5, message="the step's processes end")


def test_ctrl_c_detaches_and_the_run_can_be_resumed(af: Env) -> None:
    proc, rid = start_and_wait_running(af, "middle")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert f"agentflow resume {rid}" in out
    assert af.state(rid)["status"] == "interrupted"
    pgid = int((af.run_dir(rid) / "steps" / "middle" / "pid").read_text())
    assert group_alive(pgid), "the step goes on after Ctrl-C"
    (af.workspace / "release").touch()
    res = af.cli("resume", rid)
    assert res.returncode == 0, res.stdout + res.stderr
    assert af.state(rid)["steps"]["middle"]["attempts"] == 1


def test_resuming_a_finished_run_says_so(af: Env) -> None:
    wf = af.write("version: 1\nname: quick\nsteps:\n  - id: a\n    run: 'true'\n")
    assert af.cli("run", str(wf), "--run-id", "done1").returncode == 0
    res = af.cli("resume", "done1")
    assert res.returncode == 0
    assert "already succeeded" in res.stdout


def test_resume_of_a_failed_run_redoes_the_failed_steps(af: Env) -> None:
    wf = af.write(
        """\
        version: 1
        name: fixable
        steps:
          - id: needs-file
            run: cat input.txt
          - id: after
            needs: [needs-file]
            run: echo after
        """
    )
    res = af.cli("run", str(wf), "--run-id", "fix1")
    assert res.returncode == 1
    (af.workspace / "input.txt").write_text("now here\n")
    res = af.cli("resume", "fix1")
    assert res.returncode == 0, res.stdout
    steps = af.state("fix1")["steps"]
    assert steps["needs-file"]["attempts"] == 2
    assert steps["after"]["status"] == "succeeded"


def test_logs_follow_prints_until_the_step_ends(af: Env) -> None:
    proc, rid = start_and_wait_running(af, "middle")
    follower = af.start("logs", rid, "middle", "-f")
    (af.workspace / "release").touch()
    out, _ = follower.communicate(timeout=30)
    assert follower.returncode == 0
    assert out == "middle done\n"
    proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_killing_the_tmux_server_mid_run_is_survived(af: Env) -> None:
    proc, rid = start_and_wait_running(af, "middle")
    libtmux.Server(socket_path=str(socket_path_for(af.home))).kill()
    out, err = proc.communicate(timeout=30)
    # The running step lost its window: it failed (no retries), and nothing else broke.
    assert proc.returncode == 1, out + err
    assert "Traceback" not in err
    state = af.state(rid)
    assert state["steps"]["middle"]["status"] in ("crashed", "failed")
    assert state["steps"]["last"]["status"] == "skipped"
    (af.workspace / "release").touch()
    res = af.cli("resume", rid)
    assert res.returncode == 0, res.stdout + res.stderr
    assert af.state(rid)["steps"]["last"]["status"] == "succeeded"


def test_attach_shows_the_steps_window_in_a_terminal(af: Env, tmp_path: Path) -> None:
    wf = af.write(
        """\
        version: 1
        name: watchme
        steps:
          - id: busy
            run: echo visible-marker; sleep 30
        """
    )
    proc = af.start("run", str(wf), "--run-id", "w1")
    af.wait_for(lambda: af.state("w1")["steps"]["busy"]["status"] == "running")
    # A terminal of the test's own: another tmux server, where a person would type.
    terminal = libtmux.Server(socket_path=str(tmp_path / "term.sock"))
    try:
        command = shlex.join(
            ["env", f"AGENTFLOW_HOME={af.home}", AGENTFLOW, "attach", "w1", "busy"]
        )
        session = terminal.new_session(session_name="t", window_command=command, x=120, y=30)
        pane = session.active_window.active_pane
        assert pane is not None
        af.wait_for(lambda: "visible-marker" in "\n".join(pane.capture_pane()), message="attached")
    finally:
        terminal.kill()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


def test_ctrl_c_in_a_steps_window_interrupts_the_step(af: Env) -> None:
    wf = af.write("version: 1\nname: cc\nsteps:\n  - id: long\n    run: echo go; sleep 60\n")
    proc = af.start("run", str(wf), "--run-id", "cc1")
    af.wait_for(lambda: (af.run_dir("cc1") / "steps" / "long" / "pid").exists())
    af.wait_for(lambda: "go" in (af.run_dir("cc1") / "steps" / "long" / "output.log").read_text())
    window = af.state("cc1")["steps"]["long"]["window"]
    server = libtmux.Server(socket_path=str(socket_path_for(af.home)))
    server.cmd("send-keys", "-t", window, "C-c")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, out + err
    st = af.state("cc1")["steps"]["long"]
    assert st["status"] == "failed"
    assert st["exit_code"] == 130
