"""Planners turn a workflow into a ``Plan``.

``Planner`` is the seam: ``static`` (no model, every step runs as written) here, an LLM
planner behind the same protocol.
"""

from __future__ import annotations

from typing import Protocol

from agentflow.errors import PlanError, UsageError
from agentflow.plan import Plan
from agentflow.planner.expansion import plan_problems
from agentflow.planner.inputs import resolve_inputs
from agentflow.planner.static import StaticPlanner
from agentflow.workflow.load import WorkflowFile
from agentflow.workflow.model import Scalar


class Planner(Protocol):
    """Makes a plan for a workflow with the given input values."""

    name: str

    def plan(self, wf: WorkflowFile, inputs: dict[str, Scalar]) -> Plan: ...


def planner_for(wf: WorkflowFile, choice: str | None = None) -> Planner:
    """The planner the workflow asks for (``planner.type``), or ``choice`` (``--planner``)."""
    kind = choice or wf.workflow.planner.type
    if kind == "static":
        return StaticPlanner()
    if kind != "anthropic":
        raise UsageError(f"--planner {kind}: use static or anthropic")
    from agentflow.agent.llm import LLM, check_record
    from agentflow.planner.anthropic import AnthropicPlanner

    LLM.check_key()  # no key: exit 4 with how to fix it, before anything else
    check_record(wf.workflow, wf.base_dir)
    from agentflow.agent.loop import Limits

    cfg = wf.workflow.planner
    limits = Limits(turns=cfg.turns, seconds=cfg.deadline)
    return AnthropicPlanner(LLM(cfg.model, cfg.max_tokens, cfg.budget), limits=limits)


def make_plan(wf: WorkflowFile, overrides: dict[str, str], planner: Planner | None = None) -> Plan:
    """Resolve inputs (``--set`` overrides on defaults) and plan with ``planner``."""
    inputs = resolve_inputs(wf, overrides)
    return (planner or StaticPlanner()).plan(wf, inputs)


def check_plan(plan: Plan, wf: WorkflowFile, source: str) -> None:
    """Refuse a saved plan that does not fit the workflow: other steps, other needs, an
    order that runs a step before what it needs, steps added for a task that break the
    workflow's rules (``expansion.plan_problems``), or inputs the workflow does not have."""
    workflow = wf.workflow
    if plan.workflow != workflow.name:
        raise PlanError(f"{source}: a plan for workflow '{plan.workflow}', not '{workflow.name}'")
    planned = [s.id for s in plan.steps]
    declared = [s.id for s in workflow.steps]
    missing = [i for i in declared if i not in planned]
    extra = [s.id for s in plan.steps if s.id not in declared and s.expands is None]
    if missing or extra or len(set(planned)) != len(planned):
        what = "; ".join(
            part
            for part in (
                f"missing steps: {', '.join(missing)}" if missing else "",
                f"steps the workflow does not have: {', '.join(extra)}" if extra else "",
                "a step listed twice" if len(set(planned)) != len(planned) else "",
            )
            if part
        )
        raise PlanError(f"{source} does not match {wf.path.name} ({what}): plan it again")
    problems = plan_problems(plan.steps, workflow)
    if problems:
        raise PlanError(f"{source}: {'; '.join(problems[:3])} ({wf.path.name}): plan it again")
    unknown = set(plan.inputs) - set(workflow.inputs)
    if unknown or set(workflow.inputs) - set(plan.inputs):
        raise PlanError(f"{source}: its inputs do not match {wf.path.name}'s: plan it again")


__all__ = [
    "Planner",
    "StaticPlanner",
    "check_plan",
    "make_plan",
    "planner_for",
    "resolve_inputs",
]
