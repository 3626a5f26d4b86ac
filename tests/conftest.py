"""Shared fixtures: a private agentflow home (with its own tmux server) per test, and a
helper that runs the real ``agentflow`` console script."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libtmux
import pytest

from agentflow import checkpoint_log
from agentflow.state import RunState
from agentflow.tmux import socket_path_for

AGENTFLOW = str(Path(sys.executable).parent / "agentflow")

TEST_IMAGE = "agentflow-test/busybox:latest"
"""The image the Docker tests run steps in (scripts/docker-setup makes it)."""


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """The Docker daemon: the tests that need it are skipped without one, and say so; in
    CI (which starts one) they fail instead."""
    import docker
    import docker.errors

    try:
        c = docker.from_env(version="auto", timeout=10)
        c.ping()
    except docker.errors.DockerException as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Docker tests, but no daemon answers: {e}")
        pytest.skip(f"no Docker daemon answers here ({e}); scripts/docker-setup starts one")
    try:
        c.images.get(TEST_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{TEST_IMAGE} is missing: scripts/docker-setup makes it")
    yield c
    c.close()


def agentflow(*args: str, cwd: Path, columns: int = 200) -> subprocess.CompletedProcess[str]:
    """The console script in ``cwd`` (its home there), plain output ``columns`` wide."""
    env = {k: v for k, v in os.environ.items() if k not in {"FORCE_COLOR", "CLICOLOR_FORCE"}}
    env.update(COLUMNS=str(columns), NO_COLOR="1", AGENTFLOW_HOME=str(cwd / ".agentflow"))
    return subprocess.run(
        [AGENTFLOW, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def run_id_of(stdout: str) -> str:
    """The run id that ``agentflow run`` printed."""
    m = re.search(r"run (\S+)\s+watch:", stdout)
    assert m, stdout
    return m.group(1)


@dataclass
class Env:
    """A test's agentflow home, workspace and environment."""

    home: Path
    workspace: Path
    env: dict[str, str]

    def write(self, text: str, name: str = "wf.yaml") -> Path:
        path = self.workspace / name
        path.write_text(textwrap.dedent(text))
        return path

    def cli(self, *args: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [AGENTFLOW, *args],
            cwd=self.workspace,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **kw,
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        """Start ``agentflow`` in the background (to kill it, or race it)."""
        return subprocess.Popen(
            [AGENTFLOW, *args],
            cwd=self.workspace,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )

    def run_dir(self, run_id: str) -> Path:
        return self.home / "runs" / run_id

    def state(self, run_id: str) -> dict[str, Any]:
        """The run's state as every reader sees it: ``state.json`` with the changes
        logged since (``state.log``) replayed; ``snapshot`` has state.json alone."""
        data = self.snapshot(run_id)
        try:
            saved = RunState.model_validate(data)
        except ValueError:
            return data  # odd on purpose: as it is
        replayed = checkpoint_log.replay(saved, self.run_dir(run_id)).state
        return replayed.model_dump(mode="json") if replayed is not saved else data

    def snapshot(self, run_id: str) -> dict[str, Any]:
        """``state.json`` as it is on disk (current within a few seconds while running)."""
        data: dict[str, Any] = json.loads((self.run_dir(run_id) / "state.json").read_text())
        return data

    def wait_for(self, what: Callable[[], bool], timeout: float = 30, message: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if what():
                    return
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting: {message}")


def group_alive(pgid: int) -> bool:
    """Whether a process group has a live (not zombie) member."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


@pytest.fixture
def af(tmp_path: Path) -> Iterator[Env]:
    home = tmp_path / "home"
    workspace = tmp_path / "ws"
    workspace.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TMUX", "TMUX_PANE", "CI", "GITHUB_ACTIONS")
    }
    env["AGENTFLOW_HOME"] = str(home)
    the_env = Env(home, workspace, env)
    yield the_env
    home = the_env.home  # a test may have moved the home (one inside the workspace)
    for pid_file in home.glob("runs/*/steps/*/pid"):
        # A step's own process group (the wrapper puts it in one); gone if it ended.
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
    _remove_containers(home)
    socket = socket_path_for(home)
    if socket.exists():
        server = libtmux.Server(socket_path=str(socket))
        # Steps left running by a test die with their windows' process groups.
        for pane in _pane_pids(server):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pane, signal.SIGKILL)
        server.kill()
    socket.unlink(missing_ok=True)  # one per test's home: they would pile up in ~/.cache
    _kill_stray_servers(tmp_path)


def _kill_stray_servers(root: Path) -> None:
    """tmux servers of this test that the socket no longer reaches: an orchestrator killed
    (chaos) while its server started can leave one whose socket the next one replaced.
    They name the test's folder in their command line."""
    mark = str(root).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if argv and argv[0].endswith(b"tmux") and mark in b" ".join(argv):
                os.kill(int(entry.name), signal.SIGKILL)


def _remove_containers(home: Path) -> None:
    """Containers a test's runs left (kept, or the orchestrator was killed)."""
    try:
        import docker

        client = docker.from_env(version="auto", timeout=5)
        label = f"agentflow.home={home.resolve()}"  # agentflow labels by the real path
        for c in client.containers.list(all=True, filters={"label": label}):
            c.remove(force=True)
    except Exception:  # no daemon: nothing to clean
        return


def _pane_pids(server: libtmux.Server) -> list[int]:
    result = server.cmd("list-panes", "-a", "-F", "#{pane_pid}")
    return [int(x) for x in result.stdout if x.strip().isdigit()]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs where the `af` fixture puts the agentflow home (ask for it before `af`:
    it is unmounted after af's clean-up), unmounted at the end whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "home"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path, leave: int = 0) -> None:
    """A file at ``path`` that takes every free byte of its file system but ``leave``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
        os.ftruncate(fd, os.fstat(fd).st_size - leave)
    finally:
        os.close(fd)
