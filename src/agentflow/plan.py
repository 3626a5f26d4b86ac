"""The plan: the planner's output and the runner's input.

A plan names, for each step in run order, the exact command that will run. It is saved
with the run (``plan.json``) so that a resume never plans again, and ``agentflow run --plan``
can run a saved plan without calling any model.

The LLM planner may expand a ``task:`` step into several: the steps it adds are in the
plan (``expands`` names their task), and ``Plan.workflow_for`` gives the workflow as the
plan runs it, with them in it. The task keeps its id and runs last, after its added steps,
so that what needs the task (its dependents, its outputs) waits for all of its work.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import ConfigDict, Field, JsonValue, PrivateAttr

from agentflow.byid import ById
from agentflow.lean import LeanModel
from agentflow.state import Timestamp, Usage
from agentflow.workflow.model import Expect, Probe, Scalar, Step, Success, Workflow
from agentflow.workflow.types import Duration

TRANSCRIPT_MAX = 40
"""Tool calls of the planner kept in a plan (the first ones; the count says how many)."""

INHERITED = ("workdir", "env", "retry", "on_failure", "recover", "resources")
"""What a step the planner added takes from the task it is part of (and, unless it is a
service, ``timeout`` and ``stall_timeout``)."""


class PlanModel(LeanModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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
    expands: str | None = None
    """Set on a step the planner added (it is not in the workflow file): the ``task:`` step
    it is part of, which needs it (directly or through the task's other added steps)."""
    ready: Probe | None = None
    """A readiness probe the planner wrote (an added step with one is a service)."""
    success: Success | None = None
    """Success checks the planner wrote, for a step it added or a task without its own."""


class ToolUse(PlanModel):
    """A look-around call of the planner: what it asked and (the start of) what it got."""

    tool: str
    """The tool, or ``text`` for the model's own words."""
    input: dict[str, JsonValue] = Field(default_factory=dict)
    result: str = ""
    error: bool = False


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
    usage: Usage | None = None
    """What planning cost (the model's tokens by kind, an estimated price); None: no model."""
    transcript: list[ToolUse] = Field(default_factory=list, max_length=TRANSCRIPT_MAX)
    """The planner's look-around calls, in order (at most ``TRANSCRIPT_MAX``)."""
    transcript_total: int = 0
    """Entries of the whole transcript (the plan keeps the first ``TRANSCRIPT_MAX``)."""

    _by_id: ById[PlannedStep] = PrivateAttr(default_factory=ById)

    def step(self, step_id: str) -> PlannedStep:
        return self._by_id.find(self.steps, step_id)

    def workflow_for(self, workflow: Workflow) -> Workflow:
        """The workflow as this plan runs it: with the steps the planner added (each taking
        its task's settings) and the needs and checks it gave its tasks; ``workflow``
        itself when the planner changed none. KeyError for a step neither has (the plan
        was checked against the workflow first: ``planner.check_plan``)."""
        changed = [s for s in self.steps if s.expands or s.ready or s.success]
        changed += [s for s in self.steps if not s.expands and _more_needs(s, workflow)]
        if not changed:
            return workflow
        steps = [
            added_step(p, workflow.step(p.expands)) if p.expands else _given(p, workflow.step(p.id))
            for p in self.steps
        ]
        return workflow.model_copy(update={"steps": steps})


def _more_needs(planned: PlannedStep, workflow: Workflow) -> bool:
    return set(planned.needs) != set(workflow.step(planned.id).needs)


def _given(planned: PlannedStep, step: Step) -> Step:
    """A workflow step with the needs (its added steps) and checks the planner gave it."""
    changes: dict[str, object] = {}
    if set(planned.needs) != set(step.needs):
        changes["needs"] = list(planned.needs)
    if planned.ready is not None:
        changes["ready"] = planned.ready
    if planned.success is not None:
        changes["success"] = planned.success
    return step.model_copy(update=changes) if changes else step


def added_step(planned: PlannedStep, task: Step) -> Step:
    """A step the planner added, as the runner sees it: its command, needs and checks,
    and its task's settings (where it runs, its environment, retries, what a failure
    does); validated like a step of the file (a ValidationError otherwise)."""
    service = planned.ready is not None
    fields: dict[str, object] = {k: getattr(task, k) for k in INHERITED}
    if not service:
        fields |= {"timeout": task.timeout, "stall_timeout": task.stall_timeout}
    return Step.model_validate(
        {
            **fields,
            "id": planned.id,
            "description": f"part of the task {task.id} (added by the planner)",
            "needs": list(planned.needs),
            "run": planned.run,
            "service": service,
            "ready": planned.ready,
            "success": planned.success,
            "expect": Expect(duration=planned.duration) if planned.duration else None,
        }
    )
