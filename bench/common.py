"""What every benchmark shares: a private agentflow home per measurement (cleaned up after,
tmux server and containers included), workflow generators, timing the real CLI, and the
``Figure`` each benchmark reports."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

AGENTFLOW = str(Path(sys.executable).parent / "agentflow")
BUSYBOX = "agentflow-test/busybox"
"""The local test image (scripts/docker-setup makes it)."""


@dataclass
class Figure:
    """One measured figure: agentflow's median against a baseline from the same run.

    ``ratio`` is agentflow's median over the baseline's median (lower is better); ``target``
    bounds ``ratio`` (``target_on="ratio"``) or the value itself (``target_on="value"``).
    """

    key: str
    name: str
    unit: str
    value: float
    baseline: float | None = None
    baseline_name: str = ""
    target: float | None = None
    target_on: str = "ratio"
    rounds: int = 1
    samples: list[float] = field(default_factory=list)
    baseline_samples: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        measured = self.ratio if self.target_on == "ratio" else self.value
        return measured is not None and measured <= self.target

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = None if self.ratio is None else round(self.ratio, 3)
        out["passed"] = self.passed
        out["samples"] = [round(x, 4) for x in self.samples]
        out["baseline_samples"] = [round(x, 4) for x in self.baseline_samples]
        return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# --- a private agentflow home --------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """What one command cost: seconds of wall time and of CPU, peak RSS in MB."""

    wall: float
    cpu: float
    peak_mb: float


@dataclass(frozen=True)
class Home:
    """A workspace and an ``AGENTFLOW_HOME`` of their own, with the environment to use."""

    work: Path
    home: Path
    env: dict[str, str]

    def write(self, name: str, text: str) -> Path:
        path = self.work / name
        path.write_text(text)
        return path

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [AGENTFLOW, *args],
            cwd=self.work,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def timed(self, *args: str) -> float:
        """Wall time of one ``agentflow`` command, which must succeed."""
        return self.measured(*args).wall

    def measured(self, *args: str) -> Usage:
        """Wall time, CPU time and peak memory of one ``agentflow`` command (and of the
        children it waited for: tmux and docker clients), which must succeed."""
        t0 = time.perf_counter()
        proc = self.start(*args)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"agentflow {' '.join(args)} exited {proc.returncode}")
        return Usage(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)

    def run_dir(self, run_id: str) -> Path:
        return self.home / "runs" / run_id


@contextlib.contextmanager
def private_home() -> Iterator[Home]:
    """A temporary workspace and home; on exit, every step process, container and the tmux
    server of that home are gone, and so is the folder."""
    work = Path(tempfile.mkdtemp(prefix="agentflow-bench-"))
    home = work / ".agentflow"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TMUX", "TMUX_PANE", "CI", "GITHUB_ACTIONS", "AGENTFLOW_TMUX_SOCKET")
    }
    env.update(AGENTFLOW_HOME=str(home), NO_COLOR="1", COLUMNS="120")
    try:
        yield Home(work, home, env)
    finally:
        cleanup(home)
        shutil.rmtree(work, ignore_errors=True)


def cleanup(home: Path) -> None:
    """Kill what runs under ``home`` left: step process groups, containers, tmux server."""
    for pid_file in home.glob("runs/*/steps/*/pid"):
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError, OSError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
    remove_containers(f"label=agentflow.home={home}")
    socket = tmux_socket(home)
    if socket.exists():
        subprocess.run(["tmux", "-S", str(socket), "kill-server"], capture_output=True, check=False)
        socket.unlink(missing_ok=True)


def tmux_socket(home: Path) -> Path:
    from agentflow.tmux import socket_path_for

    return socket_path_for(home)


def remove_containers(filter_: str) -> None:
    if shutil.which("docker") is None:
        return
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", filter_], capture_output=True, text=True, check=False
    ).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)


def docker_ready() -> bool:
    """A daemon answers and the test image exists."""
    if shutil.which("docker") is None:
        return False
    probe = ["docker", "image", "inspect", BUSYBOX]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


# --- workflows -----------------------------------------------------------------------------

StepSpec = tuple[str, str, list[str]]
"""A step to write: (id, run, needs)."""


def workflow(
    name: str,
    steps: list[StepSpec],
    *,
    max_parallel: int = 4,
    docker: bool = False,
) -> str:
    """A version-1 workflow of ``(id, run, needs)`` steps."""
    lines = ["version: 1", f"name: {name}", f"max_parallel: {max_parallel}"]
    if docker:
        lines.append(f"sandbox: {{backend: docker, image: {BUSYBOX}}}")
    lines.append("steps:")
    for step_id, run, needs in steps:
        lines += [f"  - id: {step_id}", f"    run: {json.dumps(run)}"]
        if needs:
            lines.append(f"    needs: [{', '.join(needs)}]")
    return "\n".join(lines) + "\n"


def chain(n: int, run: str | Callable[[int], str] = "true") -> list[StepSpec]:
    """``n`` steps, each needing the one before."""
    cmd = run if callable(run) else (lambda i: run)
    return [(f"s{i}", cmd(i), [f"s{i - 1}"] if i else []) for i in range(n)]


def fan_out(n: int) -> list[StepSpec]:
    """One root, ``n - 2`` independent steps needing it, and one step needing them all."""
    middle: list[StepSpec] = [(f"s{i}", "true", ["root"]) for i in range(n - 2)]
    return [("root", "true", []), *middle, ("join", "true", [s[0] for s in middle])]


def wait_for(what: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
            if what():
                return
        time.sleep(0.005)
    raise TimeoutError(f"timed out waiting for {message}")
