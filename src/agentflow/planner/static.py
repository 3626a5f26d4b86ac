"""The static planner: every ``run:`` step runs as written; no model is asked anything."""

from __future__ import annotations

import heapq

from agentflow.errors import PlanError
from agentflow.plan import Plan, PlannedStep
from agentflow.template import Ref, scalar_text, substitute
from agentflow.workflow.load import WorkflowFile
from agentflow.workflow.model import Scalar, Step, Workflow


class StaticPlanner:
    """Plans without an LLM; a ``task:`` step is an error that says how to fix it."""

    name = "static"

    def plan(self, wf: WorkflowFile, inputs: dict[str, Scalar]) -> Plan:
        tasks = [s.id for s in wf.workflow.steps if s.run is None]
        if tasks:
            raise PlanError(
                f"{wf.path.name}: step '{tasks[0]}' is a `task:` (plain words), which the static "
                "planner cannot run: use `--planner anthropic` (or `planner: {type: anthropic}`) "
                "with ANTHROPIC_API_KEY, run a saved plan with --plan, or give the step a "
                "`run:` command"
            )
        steps = [
            PlannedStep(
                id=s.id,
                run=render_inputs(s.run or "", inputs),
                needs=list(s.needs),
                duration=s.expect.duration if s.expect else None,
            )
            for s in run_order(wf.workflow)
        ]
        return Plan(workflow=wf.workflow.name, planner=self.name, inputs=inputs, steps=steps)


def render_inputs(text: str, inputs: dict[str, Scalar]) -> str:
    """Substitute ``${{ inputs.NAME }}``; leave the other expressions for run time."""

    def lookup(ref: Ref) -> str | None:
        if ref.kind != "inputs":
            return None
        return scalar_text(inputs[ref.names[0]])

    return substitute(text, lookup)


def run_order(workflow: Workflow) -> list[Step]:
    """Steps in dependency order; among the steps ready at once, the file's order."""
    steps = workflow.steps
    index = {s.id: i for i, s in enumerate(steps)}
    waiting = [len(set(s.needs)) for s in steps]
    dependents: list[list[int]] = [[] for _ in steps]
    for i, s in enumerate(steps):
        for need in set(s.needs):
            dependents[index[need]].append(i)
    ready = [i for i, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order: list[Step] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(steps[i])
        for j in dependents[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(steps):  # the loader refuses cycles, so this is a bug
        raise PlanError("dependency cycle in the workflow")
    return order
