"""Sandboxes: where a step's processes run.

The tmux session always lives on the host; a sandbox says what command a step's window
runs to start the step's wrapper inside it, and how to signal the step's process group
there. ``Sandbox`` is the seam; ``LocalSandbox`` runs steps on this machine, the Docker
sandbox in one container per run. A sandbox whose steps are jobs of a batch scheduler
(Slurm) is also a ``Scheduler``: the runner asks it about all running steps at once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from agentflow.verify import EXEC_OUTPUT_MAX, Executor
from agentflow.workflow.model import Sandbox as SandboxConfig


@dataclass(frozen=True)
class Launch:
    """What the step's tmux window runs, and the environment it gets."""

    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    """The environment of the window's process, on the host (over the tmux server's
    ``server_env``): in a sandbox that is a boundary, never the step's variables. Handed
    over as a script the window sources (``agentflow.handoff``), never on a command line."""
    sources_env: bool = False
    """Whether ``command`` is the wrapper itself, which sources the script of ``env``
    given as its last argument (no shell before it); else a shell sources it and then
    runs ``command``."""


class Sandbox(Protocol):
    """Runs step wrappers and signals their process groups."""

    name: str

    def start(self) -> None:
        """Make the sandbox ready (start a container, …); idempotent, also on resume."""

    def launch(
        self, step_dir: Path, workdir: str, env: dict[str, str], secrets: dict[str, str]
    ) -> Launch:
        """The command that runs ``step_dir/wrapper.sh`` in ``workdir`` inside the sandbox.

        ``env`` is the step's (the workflow's and step's ``env``, what ``recover`` rules
        and the model set, ``AGENTFLOW_*``): a sandbox that is a boundary hands it across
        it, never to a process on the host, where ``LD_PRELOAD`` or ``BASH_ENV`` naming a
        file a step wrote would run that file as the user. ``secrets`` (names disjoint from
        ``env``'s) hold values from this process's own environment: they may pass through
        the host-side client, and must stay off command lines."""

    def workdir(self, relative: str | None) -> str:
        """The path inside the sandbox of a folder given relative to the workspace."""

    def signal(self, step_id: str, pgid: int | None, signum: int) -> bool:
        """Send ``signum`` to a step's process group (``pgid``: None before the step's
        wrapper recorded it); False if there is nothing to signal."""

    def exec(
        self, script: str, workdir: str, timeout: float, env: dict[str, str] | None = None
    ) -> tuple[int, str]:
        """Run a short shell script inside the sandbox (probes, checks): exit code, output."""

    def healthy(self) -> bool:
        """Whether the sandbox itself is there (asked when an attempt crashed: one that went
        down with its sandbox, a Docker daemon restarting, is not the step's failure)."""

    def close(self) -> None:
        """Release the sandbox at the end of a run."""


Verdict = tuple[Literal["crashed", "timeout", "failed"], str]
"""How an attempt ended when the scheduler, not the step, ended it: status and why."""


@dataclass(frozen=True)
class Job:
    """What a batch scheduler says of a step's job."""

    id: str
    state: str
    """The scheduler's word: ``PENDING``, ``RUNNING``, ``NODE_FAIL``, …"""
    nodes: str = ""
    reason: str = ""
    """Why it waits, while pending."""
    pending: bool = False
    settling: bool = False
    """Ending, but not yet saying how (Slurm's COMPLETING): judge it once it has."""
    verdict: Verdict | None = None
    """Set when the scheduler ended the job (a node failure, preemption, a cancel from
    outside, its own time limit, memory): then this, not the exit code, is the outcome."""


@runtime_checkable
class Scheduler(Protocol):
    """A sandbox whose steps are jobs of a batch scheduler."""

    def jobs(self, step_ids: list[str]) -> dict[str, Job]:
        """The jobs of these steps' current attempts, in one query (absent: unknown)."""

    def executor(self, step_id: str) -> Executor:
        """Runs probe commands where the step's job runs (a service's node)."""

    def host(self, step_id: str) -> str:
        """The host a running step's job is on (what its dependents connect to)."""


PROC_VAR = "AGENTFLOW_PROC"
"""The variable every process of a step carries (the wrapper gives it to ``run.sh``), with
the step's marker as its value: it survives ``setsid`` and a daemon's double fork, which
a process group does not, so a step's leftovers are found in ``/proc/PID/environ``."""
LOG_VAR = "AGENTFLOW_LOG"
"""The same for the wrapper's log readers (tee, awk): killed last, when a process that
is not the step's (it cleared its environment) holds the step's output open."""
SWEEP_PASSES = 20
"""How often a sweep looks again for processes forked while it killed their parents."""


def marker(step_dir: str) -> str:
    """The marker of the step whose folder is ``step_dir`` as the sandbox sees it (one per
    home, run and step; what the wrapper uses when given none)."""
    return step_dir.rstrip("/") + "/"


DEFAULT_PIDS = 4096
"""The process limit of a Docker sandbox when ``resources.pids`` gives none."""


def describe(config: SandboxConfig) -> tuple[list[str], list[str]]:
    """What the sandbox of ``config`` is: (facts, relaxations of the defaults)."""
    if config.backend == "slurm":
        return _describe_slurm(config), []
    image = config.image or (
        f"built from {config.build.context}/{config.build.dockerfile}" if config.build else "none"
    )
    facts = [
        f"image {image}",
        f"workspace at {config.workdir}",
        "all capabilities dropped, no-new-privileges, your uid:gid, read-only root",
    ]
    relaxed = []
    if config.network == "none":
        facts.append("network: none (loopback only)")
    else:
        relaxed.append(f"network: {config.network}")
    res = config.resources
    pids = res.pids or DEFAULT_PIDS  # a fork bomb must not reach the host: always a limit
    limits = [
        f"{k} {v}"
        for k, v in (("cpus", res.cpus), ("memory", res.memory), ("pids", pids))
        if v is not None
    ]
    facts.append("limits: " + ", ".join(limits))
    if res.gpus is not None:
        relaxed.append(f"gpus: {res.gpus}")
    relaxed += [
        f"mount {m.source} → {m.target}{' (read-only)' if m.read_only else ''}"
        for m in config.mounts
    ]
    return facts, relaxed


def _describe_slurm(config: SandboxConfig) -> list[str]:
    slurm = config.slurm
    facts = ["each step a job (srun)"]
    if slurm and slurm.partition:
        facts.append(f"partition {slurm.partition}")
    if slurm and slurm.account:
        facts.append(f"account {slurm.account}")
    if slurm and slurm.time is not None:
        facts.append(f"time limit {slurm.time:g}s")
    res = config.resources
    asks = [f"{k} {v}" for k, v in res.model_dump().items() if v is not None and k != "pids"]
    facts.append("each job asks for " + (", ".join(asks) if asks else "the partition's defaults"))
    if slurm and slurm.container:
        facts.append(f"in image {config.image} ({slurm.container.runtime})")
    else:
        facts.append("no container: workspace and run directory on a shared filesystem")
    if slurm and slurm.options:
        facts.append("options " + " ".join(slurm.options))
    return facts


def keep_tail(kept: bytearray, chunk: bytes) -> None:
    """Append ``chunk``, keeping only the last ``EXEC_OUTPUT_MAX`` bytes."""
    kept += chunk
    if len(kept) > EXEC_OUTPUT_MAX:
        del kept[: len(kept) - EXEC_OUTPUT_MAX]


def run_bounded(
    argv: list[str], timeout: float, env: dict[str, str], cwd: str | None = None
) -> tuple[int, str]:
    """Run a short command on this machine: its exit code and the end of its output
    (stdout and stderr together), memory bounded whatever it prints; the whole process
    group is killed at ``timeout`` (124)."""
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as e:
        return 127, str(e)
    assert proc.stdout is not None
    kept = bytearray()
    deadline = time.monotonic() + timeout
    try:
        with proc.stdout:
            fd = proc.stdout.fileno()
            while (left := deadline - time.monotonic()) > 0:
                if select.select([fd], [], [], left)[0]:
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        break
                    keep_tail(kept, chunk)
        code = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        code = None
    if code is None or proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return 124, f"timed out after {timeout:g}s"
    return code, kept.decode("utf-8", errors="replace")


def bounded(script: str, timeout: float) -> list[str]:
    """argv running ``script`` with sh, under coreutils/busybox ``timeout`` where present:
    TERM at the time, KILL 5 s later for a script that ignores TERM (where ``timeout``
    knows ``-k``)."""
    runner = (
        'if timeout -k 5 "$0" true 2>/dev/null; then exec timeout -k 5 "$0" sh -c "$1"; fi; '
        'if command -v timeout >/dev/null 2>&1; then exec timeout "$0" sh -c "$1"; fi; '
        'exec sh -c "$1"'
    )
    return ["sh", "-c", runner, str(max(1, int(timeout))), script]


@functools.cache
def wrapper_script() -> str:
    """The POSIX sh wrapper every step runs through (read once: a run's steps all get the
    wrapper of the agentflow that drives it)."""
    return resources.files(__package__).joinpath("wrapper.sh").read_text(encoding="utf-8")
