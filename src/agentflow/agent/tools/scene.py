"""What the tools look at (``Scene``), how they say no (``ToolError``), and the steps they
know by id."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agentflow.plan import Plan
from agentflow.redact import Redactor
from agentflow.sandbox import Sandbox
from agentflow.state import RunState
from agentflow.store import RunDir
from agentflow.workflow.model import Workflow

IDS_SHOWN = 40
"""Step ids listed in an error about an unknown step."""


class ToolError(Exception):
    """A tool was called wrongly (unknown step, a path outside the workspace…): the model
    gets the message as an error result and may try again."""


@dataclass(frozen=True, kw_only=True)
class Scene:
    """What the tools may look at, fixed when the model is asked (a snapshot: the runner
    goes on while the model thinks)."""

    workspace: Path
    workflow: Workflow
    redact: Redactor
    hidden: frozenset[tuple[int, int]] = frozenset()
    """Identities (device, inode) never shown: agentflow's home, the tmux socket folder."""
    runbooks: list[Path] = field(default_factory=list)
    sandbox: Sandbox | None = None
    """The sandbox commands run in (None: planning before it exists; then commands fail
    with a clear result)."""
    run: RunDir | None = None
    plan: Plan | None = None
    state: RunState | None = None
    step: str | None = None
    """The step the question is about: commands run with its workdir and environment."""
    workdir: str | None = None
    """That step's working directory inside the sandbox, rendered (``${{ }}`` filled in):
    commands run there. None: the step's ``workdir`` as written when it is a plain folder
    of the workspace, else the workspace."""
    env: dict[str, str] = field(default_factory=dict)
    """That step's rendered environment (secrets are not in it)."""


def step_ids(scene: Scene) -> list[str]:
    """The plan's steps (it may hold steps the planner added), then the workflow's others."""
    ids = [s.id for s in scene.plan.steps] if scene.plan else []
    return ids + [s.id for s in scene.workflow.steps if s.id not in ids]


def known(scene: Scene, step: str) -> str:
    """``step`` when it is a step of the run; ToolError naming the steps otherwise."""
    ids = step_ids(scene)
    if step in ids:
        return step
    shown = ", ".join(ids[:IDS_SHOWN]) + (
        f" and {len(ids) - IDS_SHOWN} more" if len(ids) > IDS_SHOWN else ""
    )
    raise ToolError(f"unknown step {step!r}: the steps are {shown}")
