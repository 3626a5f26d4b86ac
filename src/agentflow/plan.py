"""The plan: the planner's output and the runner's input.

A plan names, for each step in run order, the exact command that will run. It is saved
with the run (``plan.json``) so that a resume never plans again, and ``agentflow run --plan``
can run a saved plan without calling any model.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agentflow.state import Timestamp
from agentflow.workflow.model import Scalar
from agentflow.workflow.types import Duration


class PlanModel(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, allow_inf_nan=False
    )


class PlannedStep(PlanModel):
    """One step as it will run."""

    id: str
    """The workflow's step id."""
    run: str
    """The command, with ``${{ inputs.* }}`` substituted; other expressions are filled in
    just before the step starts."""
    needs: list[str] = Field(default_factory=list)
    """Steps that must be done first."""
    source: Literal["workflow", "planner"] = "workflow"
    """``workflow``: written in the file; ``planner``: written by the LLM planner."""
    duration: Duration | None = None
    """The expected duration, when known."""
    notes: str | None = None
    """The planner's remarks."""


class Plan(PlanModel):
    """Every step of a workflow, in an order that respects ``needs``."""

    version: Literal[1] = 1
    workflow: str
    """The workflow's name."""
    planner: str
    """Which planner made it (``static``, ``anthropic``)."""
    inputs: dict[str, Scalar]
    """The input values the plan was made with."""
    steps: list[PlannedStep]
    """The steps, in run order."""
    created_at: Timestamp = Field(default_factory=lambda: datetime.now(UTC))

    def step(self, step_id: str) -> PlannedStep:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)
