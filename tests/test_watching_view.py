"""What a person watching a run sees: the cause under a failure (plain lines and the live
view), a run that goes on when its stdout is closed (``| head``), the sandbox in the live
view's header, the Ctrl-C question taken back after ``c``, a detached run's own view
(its keys, a clean redraw when attaching resizes it), and the keys that leave a tmux
session attached from inside tmux."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import libtmux

from agentflow.store import RunDir
from agentflow.tmux import socket_path_for
from agentflow.viewparts import sandbox_label
from agentflow.workflow.model import Build, Sandbox
from test_experience import asking, exit_code, terminal

from conftest import AGENTFLOW, Env

FAILING = """\
version: 1
name: causes
secrets: [MY_TOKEN]
steps:
  - id: missing-file
    run: python3 trian.py
  - id: noisy
    run: |
      echo "connecting with $MY_TOKEN"
      echo
      echo "----------"
      printf ' 45%%|####      | 45/100 [00:01<00:01]\\n'
      echo "Traceback (most recent call last):"
      echo '  File "train.py", line 3, in <module>'
      echo "ValueError: learning rate must be positive"
      exit 3
"""


def test_ci_lines_carry_the_cause_of_a_failure(af: Env) -> None:
    af.env["MY_TOKEN"] = "tok-9f8e7d-secret"
    af.write(FAILING)
    res = af.cli("run", "wf.yaml", "--ci", "--run-id", "why")
    assert res.returncode == 1
    out = res.stdout.splitlines()
    at = next(i for i, line in enumerate(out) if "missing-file         failed: exit code 2" in line)
    assert "can't open file" in out[at + 1]
    assert "trian.py" in out[at + 1]
    at = next(i for i, line in enumerate(out) if "noisy                failed: exit code 3" in line)
    under = [line.split("│", 1)[1] for line in out[at + 1 : at + 6] if "│" in line]
    # The last meaningful lines (the blank line, the rule and the bar left out), masked,
    # indented as the step wrote them.
    assert under == [
        "   connecting with ***",
        "   Traceback (most recent call last):",
        '     File "train.py", line 3, in <module>',
        "   ValueError: learning rate must be positive",
    ]
    assert "tok-9f8e7d-secret" not in res.stdout
    assert "45%|" not in res.stdout
    events = [json.loads(x) for x in (af.run_dir("why") / "events.jsonl").read_text().splitlines()]
    finished = next(e for e in events if e["kind"] == "step_finished" and e["step"] == "noisy")
    assert finished["data"]["cause"][-1] == "ValueError: learning rate must be positive"
    assert len(finished["data"]["cause"]) <= 5


def test_a_closed_stdout_keeps_the_run_driven(af: Env) -> None:
    """``agentflow run … | head -1``: the reader goes after one line; the run still goes to
    its end, driven by the same process, with its exit code."""
    af.write(
        "version: 1\nname: piped\nsteps:\n"
        "  - id: a\n    run: for i in 1 2 3; do echo a$i; sleep 0.3; done\n"
        "  - id: b\n    needs: [a]\n    run: echo b-done\n"
    )
    proc = subprocess.Popen(
        [AGENTFLOW, "run", "wf.yaml", "--ci", "--run-id", "piped"],
        cwd=af.workspace,
        env=af.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("run piped")
    proc.stdout.close()  # what `head -1` does after its line
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stdout was closed; run piped goes on" in err
    assert "Traceback" not in err
    state = af.state("piped")
    assert state["status"] == "succeeded"
    assert state["steps"]["b"]["status"] == "succeeded"
    log = (af.run_dir("piped") / "agentflow.log").read_text()
    assert "b                    succeeded" in log  # every event is still in the orchestrator's log


LIVE = """\
version: 1
name: live
steps:
  - id: train
    run: for i in $(seq 1 {n}); do echo "epoch $i/{n}"; sleep 0.25; done
    expect: {{progress: 'epoch (\\d+)/(\\d+)'}}
  - id: missing-file
    run: python3 trian.py
"""


def test_the_live_view_names_the_sandbox_shows_the_cause_and_takes_back_the_question(
    af: Env, tmp_path: Path
) -> None:
    af.write(LIVE.format(n=40))
    with terminal(af, tmp_path, "run", "wf.yaml", "--run-id", "lq") as term:
        af.wait_for(lambda: "can't open file" in term.screen(), message="the cause shown")
        screen = term.screen()
        header = next(line for line in screen.splitlines() if line.startswith("agentflow lq"))
        assert header.rstrip().endswith("local")
        failure = screen.splitlines().index(
            next(line for line in screen.splitlines() if "missing-file         failed" in line)
        )
        assert "trian.py" in "".join(screen.splitlines()[failure + 1 : failure + 3])
        term.keys("C-c")
        af.wait_for(lambda: asking(term), message="the question")
        term.keys("c", "Enter")
        af.wait_for(
            lambda: "What now" not in term.screen() and "agentflow lq" in term.screen(),
            message="the question taken back, the table drawn again",
        )
        assert "s: stop the run" not in term.screen()
        af.wait_for(lambda: "EXIT=" in term.screen(), timeout=60, message="the run ends")
        assert exit_code(term) == 1


def test_a_detached_runs_view_says_its_keys_and_redraws_clean_on_resize(
    af: Env, tmp_path: Path
) -> None:
    af.write(LIVE.format(n=400))
    assert af.cli("run", "wf.yaml", "--detach", "--run-id", "dv").returncode == 0
    server = libtmux.Server(socket_path=str(socket_path_for(af.home)))

    def first_window() -> list[str]:
        return list(server.cmd("capture-pane", "-p", "-t", "=dv:^").stdout)

    af.wait_for(lambda: any("epoch" in x for x in first_window()), message="the live view")
    shown = "\n".join(first_window())
    assert "leave: Ctrl-b d" in shown
    assert "Ctrl-C: stop or detach" not in shown  # read-only, Ctrl-C does nothing there
    # Attaching resizes the window; each size change leaves one frame, at the bottom.
    for width, height in ((70, 20), (120, 30), (90, 24)):
        server.cmd("resize-window", "-t", "=dv:^", "-x", str(width), "-y", str(height))
        af.wait_for(
            lambda w=width: (
                any(  # type: ignore[misc]
                    x.startswith("agentflow dv") for x in first_window()
                )
                and all(len(x) <= w for x in first_window())
            ),
            message=f"redrawn at {width} columns",
        )
    af.wait_for(
        lambda: (
            sum(x.startswith("agentflow dv") for x in first_window()) == 1
            and sum(x.startswith("step ") for x in first_window()) == 1
        ),
        message="one frame: no stale one above it",
    )
    # Ctrl-C there (attached with --write: keys reach it) offers no detach: this
    # orchestrator is what drives the run.
    server.cmd("send-keys", "-t", "=dv:^", "C-c")
    af.wait_for(lambda: any(x.startswith("What now [s/c]") for x in first_window()))
    assert not any("d: detach" in x for x in first_window())
    server.cmd("send-keys", "-t", "=dv:^", "c", "Enter")
    af.wait_for(
        lambda: (
            not any("What now" in x for x in first_window())
            and any(x.startswith("agentflow dv") for x in first_window())
        ),
        message="back to the view",
    )
    assert RunDir(af.run_dir("dv")).lock_holder() is not None  # still driven
    # From inside tmux (the test's terminal is a tmux pane): the keys that leave it.
    with terminal(af, tmp_path, "attach", "dv") as term:
        af.wait_for(
            lambda: "Ctrl-b Ctrl-b d leaves" in term.screen(),
            message="the status line says how to leave the inner session",
        )
    af.cli("stop", "dv")


def test_the_header_says_where_steps_run() -> None:
    assert sandbox_label("docker", Sandbox(image="python:3.12-slim")) == (
        "docker (image python:3.12-slim)"
    )
    assert sandbox_label("docker", Sandbox(build=Build())) == (
        "docker (image built from ./Dockerfile)"
    )
    assert sandbox_label("local", Sandbox(image="python:3.12-slim")) == "local"
