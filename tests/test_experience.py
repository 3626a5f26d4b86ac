"""What a person at a terminal and a CI pipeline see: the live view in a real terminal (a
tmux pane of the test's own), what Ctrl-C asks, detached runs, read-only attach, GitHub
Actions output, and ``agentflow init``."""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import libtmux

from agentflow.tmux import socket_path_for

from conftest import AGENTFLOW, Env, group_alive

PROGRESS = """\
version: 1
name: live
steps:
  - id: train
    run: for i in $(seq 1 {n}); do echo "epoch $i/{n} loss 0.$i"; sleep 0.25; done
    expect: {{progress: 'epoch (\\d+)/(\\d+)'}}
  - id: side
    run: echo side-marker; sleep {side}
"""


class Terminal:
    """A pane of a tmux server of the test's own, where a person would type."""

    def __init__(self, pane: libtmux.Pane) -> None:
        self.pane = pane

    def screen(self) -> str:
        return "\n".join(self.pane.capture_pane())

    def keys(self, *keys: str) -> None:
        for key in keys:
            self.pane.cmd("send-keys", key)


@contextmanager
def terminal(af: Env, tmp_path: Path, *args: str, width: int = 80) -> Iterator[Terminal]:
    """``agentflow ARGS`` in an 80-column terminal; its exit code shows as ``EXIT=N``."""
    command = shlex.join(["env", "-u", "CI", "-u", "GITHUB_ACTIONS", f"AGENTFLOW_HOME={af.home}",
                          AGENTFLOW, *args])  # fmt: skip
    server = libtmux.Server(socket_path=str(tmp_path / "term.sock"))
    try:
        session = server.new_session(
            session_name="t",
            window_command=f"cd {shlex.quote(str(af.workspace))} && {command}; "
            "echo EXIT=$?; sleep 600",
            x=width,
            y=24,
        )
        pane = session.active_window.active_pane
        assert pane is not None
        yield Terminal(pane)
    finally:
        server.kill()


def people(server: libtmux.Server) -> list[str]:
    """The clients attached to agentflow's tmux server that are people (not the control-mode
    clients of a running orchestrator)."""
    shown = server.cmd("list-clients", "-F", "#{client_control_mode} #{client_name}").stdout
    return [line for line in shown if line.startswith("0 ")]


def asking(term: Terminal) -> bool:
    """The question is the last thing on the screen (whatever scrolled away above it)."""
    lines = [line for line in term.screen().splitlines() if line.strip()]
    return bool(lines) and lines[-1].startswith("What now")


def exit_code(term: Terminal) -> int:
    m = re.search(r"EXIT=(\d+)", term.screen())
    assert m, term.screen()
    return int(m.group(1))


def test_the_live_view_shows_progress_output_and_how_to_watch_in_80_columns(
    af: Env, tmp_path: Path
) -> None:
    af.write(PROGRESS.format(n=40, side=1))
    with terminal(af, tmp_path, "run", "wf.yaml", "--run-id", "lv") as term:
        af.wait_for(lambda: "epoch 1" in term.screen() and "━" in term.screen(), message="bar")
        screen = term.screen()
        row = next(line for line in screen.splitlines() if line.startswith("train"))
        assert "▶ running" in row
        assert re.search(r"\d+% eta", row), row  # a bar, the fraction and the ETA
        assert "epoch" in row  # the last line of output
        assert "agentflow attach lv" in screen
        assert "Ctrl-C: stop or detach" in screen
        assert all(len(line) <= 80 for line in screen.splitlines())
        af.wait_for(lambda: "EXIT=" in term.screen(), timeout=30, message="the run ends")
        assert exit_code(term) == 0
        assert "✔ run lv succeeded" in term.screen()


def test_ctrl_c_asks_and_detach_leaves_the_steps_running(af: Env, tmp_path: Path) -> None:
    af.write(PROGRESS.format(n=200, side=60))
    with terminal(af, tmp_path, "run", "wf.yaml", "--run-id", "cd") as term:
        af.wait_for(lambda: "side-marker" in term.screen(), message="live view")
        term.keys("C-c")
        af.wait_for(lambda: "What now" in term.screen(), message="the question")
        assert "s: stop the run" in term.screen()
        term.keys("d", "Enter")
        af.wait_for(lambda: "EXIT=" in term.screen(), message="detached")
        assert exit_code(term) == 130
        assert "detached from run cd" in term.screen()
    state = af.state("cd")
    assert state["status"] == "interrupted"
    pid = int((af.run_dir("cd") / "steps" / "side" / "pid").read_text())
    assert group_alive(pid)  # the step goes on in tmux
    assert af.cli("stop", "cd").returncode == 0
    assert not group_alive(pid)


def test_ctrl_c_then_continue_goes_on_watching(af: Env, tmp_path: Path) -> None:
    af.write(PROGRESS.format(n=12, side=4))
    with terminal(af, tmp_path, "run", "wf.yaml", "--run-id", "cc") as term:
        af.wait_for(lambda: "side-marker" in term.screen(), message="live view")
        term.keys("C-c")
        af.wait_for(lambda: asking(term), message="the question")
        term.keys("c", "Enter")  # go on watching
        af.wait_for(lambda: "EXIT=" in term.screen(), timeout=60, message="the run ends")
        assert exit_code(term) == 0
    steps = af.state("cc")["steps"]
    assert steps["train"]["status"] == "succeeded"
    assert steps["side"]["status"] == "succeeded"


def test_ctrl_c_then_stop_ends_the_steps(af: Env, tmp_path: Path) -> None:
    af.write(PROGRESS.format(n=12, side=60))
    with terminal(af, tmp_path, "run", "wf.yaml", "--run-id", "cs") as term:
        af.wait_for(lambda: af.state("cs")["steps"]["train"]["status"] == "succeeded")
        af.wait_for(lambda: "side-marker" in term.screen(), message="live view")
        term.keys("C-c")
        af.wait_for(lambda: asking(term), message="the question")
        term.keys("s", "Enter")
        af.wait_for(lambda: "EXIT=" in term.screen(), message="stopped")
        assert exit_code(term) == 130
    steps = af.state("cs")["steps"]
    assert steps["train"]["status"] == "succeeded"  # it had ended: not undone
    assert steps["side"]["status"] == "failed"
    assert steps["side"]["message"] == "stopped by Ctrl-C"
    assert not group_alive(int((af.run_dir("cs") / "steps" / "side" / "pid").read_text()))


def test_a_detached_run_goes_on_in_tmux_and_status_and_logs_follow_it(af: Env) -> None:
    # train ends only once the test says so: "running" below holds on a loaded machine too.
    gated = PROGRESS.format(n=12, side=1).replace(
        "sleep 0.25; done", "sleep 0.25; done; while [ ! -e go ]; do sleep 0.1; done"
    )
    af.write(gated)
    began = time.monotonic()
    res = af.cli("run", "wf.yaml", "--detach", "--run-id", "bg")
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - began < 15  # it did not wait for the run
    assert "agentflow attach bg" in res.stdout
    status = af.cli("status", "bg")
    assert "running" in status.stdout
    (af.workspace / "go").touch()
    # Its orchestrator is the first window of the run's session: it holds the run's lock.
    server = libtmux.Server(socket_path=str(socket_path_for(af.home)))
    first = server.cmd("display-message", "-p", "-t", "=bg:^", "#{window_name} #{pane_pid}")
    name, pid = first.stdout[0].split()
    assert name == "agentflow"
    assert (af.run_dir("bg") / "lock").read_text().strip() == pid
    follow = af.cli("logs", "-f", "bg", "train", timeout=30)  # returns when the step ends
    assert follow.stdout.splitlines()[-1] == "epoch 12/12 loss 0.12"
    af.wait_for(lambda: af.state("bg")["status"] == "succeeded", message="the run ends")
    assert (af.run_dir("bg") / "report.md").exists()
    shown = "\n".join(server.cmd("capture-pane", "-p", "-t", "=bg:^").stdout)
    assert "✔ run bg succeeded" in shown  # what a person attaching later sees


def test_a_detached_run_reports_problems_before_it_leaves(af: Env) -> None:
    af.write(
        "version: 1\nname: s\nsecrets: [NOT_SET_ANYWHERE]\nsteps:\n  - id: a\n    run: 'true'\n"
    )
    res = af.cli("run", "wf.yaml", "--detach")
    assert res.returncode == 4
    assert "NOT_SET_ANYWHERE" in res.stderr
    assert not (af.home / "runs").exists() or not any((af.home / "runs").iterdir())


def test_attach_is_read_only_unless_write(af: Env, tmp_path: Path) -> None:
    af.write("version: 1\nname: rw2\nsteps:\n  - id: shell\n    run: sleep 30\n", "wf2.yaml")
    proc = af.start("run", "wf2.yaml", "--run-id", "rw2")
    try:
        af.wait_for(lambda: af.state("rw2")["steps"]["shell"]["status"] == "running")
        server = libtmux.Server(socket_path=str(socket_path_for(af.home)))
        for args, typed in ((("attach", "rw2", "shell"), False),
                            (("attach", "--write", "rw2", "shell"), True)):  # fmt: skip
            with terminal(af, tmp_path, *args) as term:
                af.wait_for(lambda: len(people(server)) == 1, message="on")
                term.keys("x", "y", "z")
                time.sleep(0.5)
                window = af.state("rw2")["steps"]["shell"]["window"]
                shown = "\n".join(server.cmd("capture-pane", "-p", "-t", window).stdout)
                assert ("xyz" in shown) is typed, (args, shown)
            af.wait_for(lambda: not people(server), message="off")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        af.cli("stop", "rw2")


def test_github_actions_gets_a_folded_group_per_step_and_error_annotations(af: Env) -> None:
    af.write(
        """\
        version: 1
        name: gh
        steps:
          - id: ok
            run: echo fine; echo "::warning::not from agentflow"
          - id: bad
            run: echo "it broke, 100%"; exit 3
          - id: flaky
            run: '[ "$AGENTFLOW_ATTEMPT" = 2 ] || exit 1'
            retry: {limit: 1, backoff: {initial: 100ms}}
        """
    )
    af.env["GITHUB_ACTIONS"] = "true"
    res = af.cli("run", "wf.yaml", "--ci")
    del af.env["GITHUB_ACTIONS"]
    assert res.returncode == 1
    out = res.stdout
    assert "\x1b[" not in out
    ok = out[out.index("::group::ok: succeeded") :].splitlines()
    # The step's lines as it wrote them, between stop-commands and a token of agentflow's:
    # GitHub takes none of them for a workflow command (it trims white space before `::`).
    assert re.fullmatch(r"::stop-commands::[0-9a-f]{32}", ok[1]), ok
    assert ok[2:6] == ["fine", "::warning::not from agentflow", f"::{ok[1][17:]}::", "::endgroup::"]
    assert "::group::bad: failed (attempt 1," in out
    assert out.count("::error title=step bad::failed: exit code 3") == 1
    assert out.index("::error") > out.index("run                  failed")  # at the end
    assert "::group::flaky: failed (attempt 1," in out
    assert "step flaky::" not in out  # its retry succeeded: no annotation
    plain = af.cli("run", "wf.yaml", "--ci")
    assert "::group::" not in plain.stdout  # only under GitHub Actions


def test_init_writes_a_starter_that_validates_and_runs(af: Env) -> None:
    res = af.cli("init", "starter")
    assert res.returncode == 0, res.stderr
    wf = af.workspace / "starter" / "workflow.yaml"
    assert "agentflow run starter/workflow.yaml" in res.stdout
    assert af.cli("validate", str(wf)).returncode == 0
    run = af.cli("run", str(wf), "--ci", timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "score=0.95" in run.stdout
    again = af.cli("init", "starter")
    assert again.returncode == 2
    assert "already exists" in again.stderr
    assert "Traceback" not in again.stderr


def test_stop_ends_a_detached_run_with_its_reports(af: Env) -> None:
    af.write("version: 1\nname: bgs\nsteps:\n  - id: long\n    run: echo on; sleep 60\n")
    assert af.cli("run", "wf.yaml", "--detach", "--run-id", "bgs").returncode == 0
    af.wait_for(lambda: af.state("bgs")["steps"]["long"]["status"] == "running")
    res = af.cli("stop", "bgs")
    assert res.returncode == 0, res.stderr
    state = af.state("bgs")
    assert state["status"] == "interrupted"  # recorded before the session went
    assert state["steps"]["long"]["status"] == "failed"
    assert (af.run_dir("bgs") / "report.md").exists()
    assert not (af.run_dir("bgs") / "stop-requested").exists()
    assert "orphaned" not in af.cli("status").stdout


def test_a_detached_run_gets_the_callers_environment_but_not_on_a_command_line(
    af: Env,
) -> None:
    af.env["MY_TOKEN"] = "tok-123-secret"
    af.write(
        "version: 1\nname: envy\nsecrets: [MY_TOKEN]\nsteps:\n"
        '  - id: show\n    run: test -n "$MY_TOKEN" && echo token-seen; sleep 5\n'
    )
    assert af.cli("run", "wf.yaml", "--detach", "--run-id", "envy").returncode == 0
    af.wait_for(lambda: "token-seen" in (af.run_dir("envy") / "steps" / "show" / "output.log")
                .read_text(), message="the step saw the secret")  # fmt: skip
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert b"tok-123-secret" not in cmdline.read_bytes(), cmdline
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    assert not (af.run_dir("envy") / "drive-env.json").exists()  # read, then deleted
    af.cli("stop", "envy")
