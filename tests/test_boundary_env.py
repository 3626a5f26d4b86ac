"""The sandbox boundary and the environment: the home's tmux server, which outlives every
run, hands no run's variables to another's windows."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import libtmux

from agentflow.tmux import socket_path_for

from conftest import AGENTFLOW, Env

SERVER_ENV = {"HOME", "PATH", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "XDG_CONFIG_HOME"}
"""All that the home's tmux server may hold of the environment that started it (and PWD)."""


def tmux_of(af: Env) -> libtmux.Server:
    return libtmux.Server(socket_path=str(socket_path_for(af.home)))


def test_a_secret_of_one_run_reaches_no_later_run_of_the_home(af: Env) -> None:
    """Run A, with a secret in its environment, starts the home's tmux server; run B of
    another workflow, without it, gets none of A's variables in its local step, and the
    server's global environment holds nothing of either."""
    af.env.update(SECRET_X="x-value-of-run-a", A_ONLY="a-callers-variable")
    a = af.write(
        "version: 1\nname: first\nsecrets: [SECRET_X]\nsandbox: {backend: local}\n"
        "steps:\n  - id: a\n    run: echo a-ran\n",
        "a.yaml",
    )
    assert af.cli("run", str(a), "--ci", "--run-id", "ra").returncode == 0
    del af.env["SECRET_X"], af.env["A_ONLY"]
    b = af.write(
        "version: 1\nname: second\nsandbox: {backend: local}\nsteps:\n"
        '  - id: b\n    run: echo "X=${SECRET_X-unset} A=${A_ONLY-unset}"\n',
        "b.yaml",
    )
    res = af.cli("run", str(b), "--ci", "--run-id", "rb")
    assert res.returncode == 0, res.stdout + res.stderr
    shown = (af.run_dir("rb") / "steps" / "b" / "output.log").read_text()
    assert "X=unset A=unset" in shown
    server = tmux_of(af)
    names = {line.split("=", 1)[0] for line in server.cmd("show-environment", "-g").stdout}
    assert names <= {*SERVER_ENV, "PWD"}, names - {*SERVER_ENV, "PWD"}
    for session in ("ra", "rb"):
        assert server.cmd("show-environment", "-t", f"={session}").stdout == []


def test_a_server_that_holds_a_runs_variables_is_cleaned_before_the_next_run(
    af: Env,
) -> None:
    """A server started outside agentflow's own start (an older version, by hand) with a
    variable in its environment: the next run removes it, and its step does not see it."""
    socket = socket_path_for(af.home)
    socket.parent.mkdir(parents=True, exist_ok=True)
    tmux = shutil.which("tmux")
    assert tmux is not None
    env = {**af.env, "LEFT_BEHIND": "from-an-older-server"}
    subprocess.run(
        [tmux, "-S", str(socket), "new-session", "-d", "-s", "old", "true", ";",
         "set-option", "-g", "exit-empty", "off"],
        env=env, check=True,
    )  # fmt: skip
    af.write(
        "version: 1\nname: after\nsandbox: {backend: local}\nsteps:\n"
        '  - id: b\n    run: echo "L=${LEFT_BEHIND-unset}"\n'
    )
    res = af.cli("run", "wf.yaml", "--ci", "--run-id", "after")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "L=unset" in (af.run_dir("after") / "steps" / "b" / "output.log").read_text()
    shown = tmux_of(af).cmd("show-environment", "-g").stdout
    assert not [line for line in shown if line.startswith("LEFT_BEHIND=")]


@contextmanager
def terminal(tmp_path: Path, command: list[str], env: dict[str, str]) -> Iterator[None]:
    """``command`` in a terminal (a tmux server of the test's own), as a person runs it."""
    server = libtmux.Server(socket_path=str(tmp_path / "term.sock"))
    line = shlex.join(["env", "-i", *(f"{k}={v}" for k, v in env.items()), *command])
    try:
        server.new_session(session_name="t", window_command=f"{line}; sleep 600", x=80, y=24)
        yield
    finally:
        server.kill()


def test_a_person_attaching_hands_nothing_to_later_windows(af: Env, tmp_path: Path) -> None:
    """`agentflow attach` from a terminal with DISPLAY and SSH_AUTH_SOCK: the run's later
    windows do not get them (tmux's update-environment would copy them into the session)."""
    af.env.pop("DISPLAY", None)
    af.env.pop("SSH_AUTH_SOCK", None)
    af.write(
        "version: 1\nname: att\nsandbox: {backend: local}\nsteps:\n"
        "  - id: hold\n    run: while [ ! -f go ]; do sleep 0.1; done\n"
        "  - id: later\n    needs: [hold]\n"
        '    run: echo "D=${DISPLAY-unset} S=${SSH_AUTH_SOCK-unset}"\n'
    )
    proc = af.start("run", "wf.yaml", "--ci", "--run-id", "att")
    try:
        af.wait_for(lambda: af.state("att")["steps"]["hold"]["status"] == "running")
        server = tmux_of(af)
        person = {**af.env, "DISPLAY": ":99", "SSH_AUTH_SOCK": "/a/persons/agent", "TERM": "xterm"}
        with terminal(tmp_path, [AGENTFLOW, "attach", "att"], person):
            af.wait_for(lambda: len(server.cmd("list-clients").stdout) == 1, message="attached")
            server.cmd("detach-client", "-s", "=att")
        af.wait_for(lambda: not server.cmd("list-clients").stdout, message="detached")
    finally:
        (af.workspace / "go").touch()
        assert proc.wait(timeout=60) == 0, proc.communicate()
    shown = (af.run_dir("att") / "steps" / "later" / "output.log").read_text()
    assert "D=unset S=unset" in shown
