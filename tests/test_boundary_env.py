"""The sandbox boundary and the environment: a workflow's `env`, `recover.set_env` and the
step's own variables reach the step, never a process on the host that a sandbox is meant
to keep apart (the window's sh, the `docker exec` or `srun` client); and the home's tmux
server, which outlives every run, hands no run's variables to another's windows."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import libtmux
import pytest

from agentflow.tmux import socket_path_for

from conftest import AGENTFLOW, TEST_IMAGE, Env

SERVER_ENV = {"HOME", "PATH", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "XDG_CONFIG_HOME"}
"""All that the home's tmux server may hold of the environment that started it (and PWD)."""
CLIENT_ENV = {"PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT",
              "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY"}  # fmt: skip
"""What the docker client of a step's window may get of the caller's environment."""
TMUX_OWN = {"TERM", "TERM_PROGRAM", "TERM_PROGRAM_VERSION", "TMUX", "TMUX_PANE", "SHELL", "PWD"}
"""What tmux itself puts in every window's environment."""
SHELL_OWN = {"SHLVL", "OLDPWD", "_"}

EVIL_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Runs in whatever process loads it: says which, and whether it is a Slurm job's. */
__attribute__((constructor)) static void evil(void) {
    char comm[64] = "?";
    FILE *f = fopen("/proc/self/comm", "r");
    if (f) {
        if (fgets(comm, sizeof comm, f)) comm[strcspn(comm, "\n")] = 0;
        fclose(f);
    }
    FILE *m = fopen(MARKER, "a");
    if (m) {
        fprintf(m, "%s %s\n", getenv("SLURM_JOB_ID") ? "job" : "host", comm);
        fclose(m);
    }
}
"""


def people(server: libtmux.Server) -> list[str]:
    """The clients attached to agentflow's tmux server that are people (not the control-mode
    clients of a running orchestrator)."""
    shown = server.cmd("list-clients", "-F", "#{client_control_mode} #{client_name}").stdout
    return [line for line in shown if line.startswith("0 ")]


def evil_library(tmp_path: Path, marker: Path) -> Path:
    """A shared library that appends a line to ``marker`` (a host path, outside the
    workspace) in every process that loads it: what a step could write into the workspace."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) here to build the shared library LD_PRELOAD would load")
    source = tmp_path / "evil.c"
    source.write_text(EVIL_C)
    out = tmp_path / "evil.so"
    define = f'-DMARKER="{marker}"'
    subprocess.run([cc, "-shared", "-fPIC", define, "-o", str(out), str(source)], check=True)
    return out


def tmux_of(af: Env) -> libtmux.Server:
    return libtmux.Server(socket_path=str(socket_path_for(af.home)))


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def docker_workflow(steps: str, top: str = "") -> str:
    return (
        f"version: 1\nname: boxed\n{top}sandbox:\n  backend: docker\n  image: {TEST_IMAGE}\n"
        f"steps:\n{textwrap.dedent(steps)}"
    )


@pytest.mark.docker
def test_the_workflows_env_and_set_env_reach_the_container_and_never_run_on_the_host(
    af: Env, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """A step writes evil.so and evil.sh into the workspace; the workflow's `env` names them
    in LD_PRELOAD and BASH_ENV, a `recover` rule in LD_AUDIT: the container sees them, the
    window's sh and the docker client on the host load nothing."""
    marker = tmp_path / "ran-on-host"
    shutil.copy(evil_library(tmp_path, marker), af.workspace / "payload.bin")
    af.write(
        docker_workflow(
            f"""\
            - id: plant
              run: cp payload.bin evil.so && echo 'echo bash-env >> {marker}' > evil.sh
            - id: show
              needs: [plant]
              run: |
                echo "seen LD_PRELOAD=$LD_PRELOAD BASH_ENV=$BASH_ENV FOO=$FOO AUDIT=$LD_AUDIT"
                test -n "$LD_AUDIT" || {{ echo flaky; exit 1; }}
              recover:
                - match: flaky
                  action: retry
                  set_env: {{LD_AUDIT: ./evil.so}}
            """,
            "env: {LD_PRELOAD: ./evil.so, BASH_ENV: ./evil.sh, FOO: bar}\n",
        )
    )
    res = af.cli("run", "wf.yaml", "--ci", "--run-id", "ldp")
    assert res.returncode == 0, res.stdout + res.stderr
    assert not marker.exists(), f"code ran on the host: {marker.read_text()}"
    steps = af.run_dir("ldp") / "steps" / "show"
    first = (steps / "attempt-1" / "output.log").read_text()
    assert "seen LD_PRELOAD=./evil.so BASH_ENV=./evil.sh FOO=bar AUDIT=\n" in first
    again = (steps / "output.log").read_text()
    assert "seen LD_PRELOAD=./evil.so BASH_ENV=./evil.sh FOO=bar AUDIT=./evil.so" in again


@pytest.mark.docker
def test_the_docker_client_gets_a_fixed_environment_and_the_secrets(
    af: Env, docker_client: docker.DockerClient
) -> None:
    """The host side of a Docker step (the window's processes) holds what the docker
    client needs, tmux's own variables and the secrets: no step variable, none of the
    caller's other variables."""
    af.env.update(MY_SECRET="s3cr3t-in-client", CALLERS_OWN="not-for-the-client")
    af.write(
        docker_workflow(
            """\
            - id: hold
              env: {STEP_VAR: step-value}
              run: |
                echo waiting
                while [ ! -f go ]; do sleep 0.1; done
                echo "inside STEP_VAR=$STEP_VAR FOO=$FOO step=$AGENTFLOW_STEP"
                test "$MY_SECRET" = s3cr3t-in-client && echo secret-inside
            """,
            # An env of a secret's name: the secret wins, and only it reaches docker.
            "secrets: [MY_SECRET]\nenv: {FOO: bar, MY_SECRET: decoy}\n",
        )
    )
    proc = af.start("run", "wf.yaml", "--ci", "--run-id", "client")
    try:
        log = af.run_dir("client") / "steps" / "hold" / "output.log"
        af.wait_for(lambda: "waiting" in log.read_text(), message="the step runs")
        window = af.state("client")["steps"]["hold"]["window"]
        pane = tmux_of(af).cmd("display-message", "-p", "-t", window, "#{pane_pid}").stdout[0]
        tree = process_tree(int(pane))
        envs = [environ_of(pid) for pid in tree]
        argv = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in tree]
        # The step's variables cross in a script its wrapper sources inside the container,
        # never on a command line (`ps` shows those to every user); the secret is not in it.
        assert not any(b"FOO" in a or b"decoy" in a for a in argv), argv
        script = (af.run_dir("client") / "steps" / "hold" / "env.sh").read_text()
        assert "export FOO=bar\n" in script, script
        assert "MY_SECRET" not in script.replace("AGENTFLOW_SECRETS=MY_SECRET", ""), script
        assert any(e.get("MY_SECRET") == "s3cr3t-in-client" for e in envs), "docker -e NAME"
        allowed = {*CLIENT_ENV, *SERVER_ENV, *TMUX_OWN, *SHELL_OWN, "MY_SECRET"}
        for env in envs:
            assert set(env) <= allowed, set(env) - allowed
    finally:
        (af.workspace / "go").touch()
        assert proc.wait(timeout=60) == 0, proc.communicate()
    shown = log.read_text()
    assert "inside STEP_VAR=step-value FOO=bar step=hold" in shown
    assert "secret-inside" in shown


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
            af.wait_for(lambda: len(people(server)) == 1, message="attached")
            server.cmd("detach-client", "-s", "=att")
        af.wait_for(lambda: not people(server), message="detached")
    finally:
        (af.workspace / "go").touch()
        assert proc.wait(timeout=60) == 0, proc.communicate()
    shown = (af.run_dir("att") / "steps" / "later" / "output.log").read_text()
    assert "D=unset S=unset" in shown


def slurm_answers() -> str | None:
    """Why no Slurm cluster can be used here, or None."""
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        return "Slurm is not installed"
    done = subprocess.run([sinfo, "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    return None if done.returncode == 0 and done.stdout.strip() else f"sinfo: {done.stderr}"


@pytest.mark.slurm
def test_the_step_env_reaches_the_slurm_job_not_the_srun_client(af: Env, tmp_path: Path) -> None:
    """The srun client on this host gets the caller's environment, not the step's: the
    step's LD_PRELOAD is loaded only in the job (here on this same machine: a one-node
    cluster), never by srun or the window's sh."""
    why = slurm_answers()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Slurm tests, but no cluster answers ({why})")
        pytest.skip(f"no Slurm cluster answers here ({why}); scripts/slurm-setup starts one")
    marker = tmp_path / "loaded-by"
    shutil.copy(evil_library(tmp_path, marker), af.workspace / "evil.so")
    af.write(
        "version: 1\nname: onslurm\nenv: {LD_PRELOAD: ./evil.so, FOO: bar}\n"
        "sandbox:\n  backend: slurm\n  slurm: {time: 5m}\nsteps:\n"
        '  - id: show\n    run: echo "FOO=$FOO"\n'
    )
    res = af.cli("run", "wf.yaml", "--ci", "--run-id", "sl")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "FOO=bar" in (af.run_dir("sl") / "steps" / "show" / "output.log").read_text()
    loaded = marker.read_text().splitlines()
    assert loaded, "the job's processes load it (the step asked for it)"
    assert all(line.startswith("job ") for line in loaded), loaded


def test_agentflows_model_key_reaches_no_local_step_unless_it_is_a_secret(af: Env) -> None:
    key = "sk-ant-test-0123456789abcdef"
    af.env["ANTHROPIC_API_KEY"] = key
    wf = af.write(
        """\
        version: 1
        name: key
        steps:
          - id: plain
            run: echo "key=[$ANTHROPIC_API_KEY]"
        """
    )
    res = af.cli("run", str(wf), "--ci")
    assert res.returncode == 0, res.stdout + res.stderr
    log = next((af.home / "runs").glob("key-*/steps/plain/output.log")).read_text()
    assert "key=[]" in log
    wf = af.write(
        """\
        version: 1
        name: asks
        secrets: [ANTHROPIC_API_KEY]
        steps:
          - id: named
            run: echo "key=[$ANTHROPIC_API_KEY]"
        """
    )
    res = af.cli("run", str(wf), "--ci")
    assert res.returncode == 0, res.stdout + res.stderr
    log = next((af.home / "runs").glob("asks-*/steps/named/output.log")).read_text()
    assert "key=[***]" in log  # handed over as a secret: there, and masked
    assert key not in log
