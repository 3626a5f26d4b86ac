"""A sandbox to look in before a run exists: where the planner's look-around commands
(``command_help``, ``sandbox_info``) run, so that the flags it writes are read, not guessed.

Docker: a throwaway container from the workflow's image, started on first use, with the
workspace and every mount read-only and no network; removed when planning ends (a
leftover is labelled like a run's, so ``gc`` reaps it). Local and Slurm: this machine, as
the steps would run there, where ``command_help`` takes plain commands only.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path

from docker.types import Mount

from agentflow.errors import AgentflowError, first_line
from agentflow.sandbox import Sandbox
from agentflow.sandbox.docker import STEPS_MOUNT, DockerSandbox
from agentflow.sandbox.local import LocalSandbox
from agentflow.workflow.model import Workflow


class DockerProbe(DockerSandbox):
    """The run's lock-down, and more: nothing in it can write the workspace or a mount,
    and it has no network whatever the workflow says."""

    def __init__(self, workflow: Workflow, workspace: Path, home: Path, socket_dir: Path) -> None:
        config = workflow.sandbox.model_copy(update={"network": "none"})
        super().__init__(
            config,
            run_id=f"probe-{secrets.token_hex(4)}",
            workflow=workflow.name,
            workspace=workspace,
            steps_dir=workspace,  # (not mounted: a probe has no steps)
            home=home,
            socket_dir=socket_dir,
        )

    def mounts(self) -> list[Mount]:
        return [
            Mount(target=m["Target"], source=m["Source"], type="bind", read_only=True)
            for m in super().mounts()
            if m["Target"] != STEPS_MOUNT
        ]

    def exec(
        self, script: str, workdir: str, timeout: float, env: dict[str, str] | None = None
    ) -> tuple[int, str]:
        if self._container is None:
            try:
                self.start()
            except AgentflowError as e:
                return 125, f"the sandbox to look in could not start: {first_line(e)}"
        return super().exec(script, workdir, timeout, env)


@contextlib.contextmanager
def probing(
    workflow: Workflow, workspace: Path, home: Path, socket_dir: Path, backend: str
) -> Iterator[Sandbox]:
    """The sandbox to look in while planning (``backend`` as the run will have it),
    removed afterwards."""
    box: Sandbox
    if backend == "docker":
        box = DockerProbe(workflow, workspace, home, socket_dir)
    else:
        box = LocalSandbox(workspace, workflow.secrets)
    try:
        yield box
    finally:
        with contextlib.suppress(AgentflowError, OSError):
            box.close()
