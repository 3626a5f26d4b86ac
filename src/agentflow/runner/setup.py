"""What a runner is given for a run's life (``RunSetup``), who watches it (``Observer``),
and how it is asked to stop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from agentflow.agent.diagnose import Diagnoser
from agentflow.plan import Plan
from agentflow.pool import Demand
from agentflow.sandbox import Sandbox
from agentflow.state import RunState
from agentflow.store import Event, RunDir
from agentflow.tmux import Tmux
from agentflow.workflow.model import Workflow

InterruptChoice = Literal["stop", "detach", "continue"]
"""What a person wants after Ctrl-C: stop the run, leave it running, or go on watching."""

STOP_REQUEST = "stop-requested"
"""A file in the run directory: the orchestrator's SIGTERM means "stop", not "detach"."""
STOP_REASON_MAX = 300
"""The most characters of the reason a stop request may give (a search's prune)."""


class Observer(Protocol):
    """Someone who shows the run: the live table, plain lines, the orchestrator's log."""

    def event(self, event: Event, state: RunState) -> None: ...

    def update(self, state: RunState) -> None: ...


@dataclass(frozen=True)
class RunSetup:
    """Everything a runner needs, fixed for the run's life."""

    run: RunDir
    workflow: Workflow
    plan: Plan
    workspace: Path
    sandbox: Sandbox
    tmux: Tmux
    kill_grace: float = 10.0
    """Seconds between TERM and KILL when a step is stopped."""
    junit: Path | None = None
    """Where to write a copy of the JUnit report, besides the run directory."""
    secrets: dict[str, str] = field(default_factory=dict)
    """The workflow's secrets by name: handed to each step, masked everywhere."""
    diagnoser: Diagnoser | None = None
    """Asks the model about failures of ``on_failure: diagnose`` steps."""
    approve: Callable[[str, str, str], bool] | None = None
    """Asks a person to approve a command the model changed (step, old, new); None where
    nobody can be asked (then the step is escalated instead)."""
    on_interrupt: Callable[[], InterruptChoice] | None = None
    """Asks a person what Ctrl-C means; None where nobody can be asked (then: detach)."""
    pool: Demand | None = None
    """What the steps draw from the machine's GPUs and CPUs (None: nothing)."""

    @property
    def runbooks(self) -> list[Path]:
        """The workflow's ``docs:``, for diagnoses."""
        return [self.workspace / d for d in self.workflow.docs]
