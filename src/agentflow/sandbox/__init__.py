"""Sandboxes: where a step's processes run.

The tmux session always lives on the host; a sandbox says what command a step's window
runs to start the step's wrapper inside it, and how to signal the step's process group
there. ``Sandbox`` is the seam; ``LocalSandbox`` runs steps on this machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Protocol

from agentflow.workflow.model import Sandbox as SandboxConfig


@dataclass(frozen=True)
class Launch:
    """What the step's tmux window runs, and the environment it gets."""

    command: list[str]
    env: dict[str, str] = field(default_factory=dict)


class Sandbox(Protocol):
    """Runs step wrappers and signals their process groups."""

    name: str

    def start(self) -> None:
        """Make the sandbox ready (start a container, …); idempotent, also on resume."""

    def launch(self, step_dir: Path, workdir: str, env: dict[str, str]) -> Launch:
        """The command that runs ``step_dir/wrapper.sh`` in ``workdir`` inside the sandbox."""

    def workdir(self, relative: str | None) -> str:
        """The path inside the sandbox of a folder given relative to the workspace."""

    def signal(self, pgid: int, signum: int) -> bool:
        """Send ``signum`` to a step's process group; False if it no longer exists."""

    def exec(
        self, script: str, workdir: str, timeout: float, env: dict[str, str] | None = None
    ) -> tuple[int, str]:
        """Run a short shell script inside the sandbox (probes, checks): exit code, output."""

    def close(self) -> None:
        """Release the sandbox at the end of a run."""


DEFAULT_PIDS = 4096
"""The process limit of a Docker sandbox when ``resources.pids`` gives none."""


def describe(config: SandboxConfig) -> tuple[list[str], list[str]]:
    """What the docker sandbox of ``config`` is: (facts, relaxations of the defaults)."""
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


def bounded(script: str, timeout: float) -> list[str]:
    """argv running ``script`` with sh, under coreutils/busybox ``timeout`` where present."""
    runner = (
        'if command -v timeout >/dev/null 2>&1; then exec timeout "$0" sh -c "$1"; fi; '
        'exec sh -c "$1"'
    )
    return ["sh", "-c", runner, str(max(1, int(timeout))), script]


def wrapper_script() -> str:
    """The POSIX sh wrapper every step runs through."""
    return resources.files(__package__).joinpath("wrapper.sh").read_text(encoding="utf-8")
