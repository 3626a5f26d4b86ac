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

    def close(self) -> None:
        """Release the sandbox at the end of a run."""


def wrapper_script() -> str:
    """The POSIX sh wrapper every step runs through."""
    return resources.files(__package__).joinpath("wrapper.sh").read_text(encoding="utf-8")
