"""Whether a plan's steps fit its workflow, steps the planner added included.

The rule of an expansion: a ``task:`` step may be carried out by steps the planner adds
(new ids, ``expands`` naming the task). The task keeps its id and runs last: it needs its
added steps, directly or through one another, so its dependents and its outputs wait for
all of its work. An added step runs after what its task needs. The workflow as the plan
runs it (``Plan.workflow_for``) must then be valid like a hand-written one: ids, needs
that exist, no cycle, probes and checks, expressions (``workflow.load.workflow_problems``).
"""

from __future__ import annotations

import re

from pydantic import ValidationError

from agentflow.plan import Plan, PlannedStep, added_step
from agentflow.workflow.load import workflow_problems
from agentflow.workflow.model import Workflow


def plan_problems(steps: list[PlannedStep], workflow: Workflow, ordered: bool = True) -> list[str]:
    """What is wrong with ``steps`` as the plan of ``workflow`` (empty: it fits).
    ``ordered``: each step must also come after the steps it needs."""
    problems = _shape_problems(steps, workflow)
    if problems:
        return problems
    problems = [p for s in steps for p in _step_problems(s, steps, workflow)]
    if problems:
        return problems
    plan = Plan(workflow=workflow.name, planner="check", inputs={}, steps=steps)
    derived = plan.workflow_for(workflow)
    ids = [s.id for s in derived.steps]
    problems = [_by_id(p.message, ids) for p in workflow_problems(derived, "plan")]
    if problems or not ordered:
        return problems
    seen: set[str] = set()
    for s in steps:
        if not set(s.needs) <= seen:
            return [f"step '{s.id}' comes before a step it needs"]
        seen.add(s.id)
    return []


def _shape_problems(steps: list[PlannedStep], workflow: Workflow) -> list[str]:
    """Every step of the workflow once; any other step one the planner added for a task."""
    declared = {s.id for s in workflow.steps}
    planned = [s.id for s in steps]
    twice = sorted({i for i in planned if planned.count(i) > 1})
    problems = [f"step '{i}' is given twice" for i in twice]
    problems += [f"missing step '{s.id}'" for s in workflow.steps if s.id not in planned]
    for s in steps:
        if s.expands is None and s.id not in declared:
            problems.append(f"step '{s.id}' is not in the workflow and expands no task")
        elif s.expands is not None and s.id in declared:
            problems.append(f"step '{s.id}' is in the workflow: it cannot be an added step")
        elif s.expands is not None and (
            s.expands not in declared or workflow.step(s.expands).task is None
        ):
            problems.append(f"step '{s.id}' expands '{s.expands}', which is no task step")
    return problems


def _step_problems(s: PlannedStep, steps: list[PlannedStep], workflow: Workflow) -> list[str]:
    added = {p.id: p for p in steps if p.expands is not None}
    if s.expands is not None:
        task = workflow.step(s.expands)
        lost = [n for n in task.needs if n not in s.needs]
        if lost:
            return [
                f"step '{s.id}' (part of {task.id}) must run after what {task.id} needs: "
                f"add {', '.join(lost)} to its needs"
            ]
        if s.id not in _added_for(task.id, steps):
            return [
                f"step '{s.id}' is part of {task.id} but neither {task.id} nor its other "
                "added steps need it: name it in the task's needs"
            ]
        try:
            added_step(s, task)
        except ValidationError as e:  # its id, or a probe without what it probes
            return [f"step '{s.id}': {_first_error(e)}"]
        return []
    step = workflow.step(s.id)
    problems = [
        f"step '{s.id}' needs '{n}' in the workflow: keep it in its needs"
        for n in step.needs
        if n not in s.needs
    ]
    for n in s.needs:
        if n in step.needs:
            continue
        if step.task is None:
            problems.append(
                f"step '{s.id}' needs '{n}', which it does not need in the workflow "
                "(only a task step may be expanded into steps of its own)"
            )
        elif n not in added or added[n].expands != s.id:
            problems.append(
                f"step '{s.id}' needs '{n}': a task may need only its own needs and the "
                "steps added for it"
            )
    for key in ("ready", "success"):
        if getattr(s, key) is None:
            continue
        if step.task is None:
            problems.append(f"step '{s.id}' is written in the workflow: give it no {key}")
        elif getattr(step, key) is not None:
            problems.append(f"step '{s.id}' has its own {key} in the workflow: leave it out")
    if s.ready is not None and not step.service:
        problems.append(f"step '{s.id}' is no service: a ready probe is for services")
    return problems


def _added_for(task: str, steps: list[PlannedStep]) -> set[str]:
    """The added steps of ``task`` that it needs, directly or through one another."""
    by_id = {s.id: s for s in steps}
    found: set[str] = set()
    todo = list(by_id[task].needs)
    while todo:
        cur = by_id.get(todo.pop())
        if cur is None or cur.expands != task or cur.id in found:
            continue
        found.add(cur.id)
        todo.extend(cur.needs)
    return found


def _by_id(message: str, ids: list[str]) -> str:
    """``steps[3].needs[0]: ...`` → ``step 'train-fit': needs[0]: ...``: the planner's
    steps have no place in a file, but they have ids."""

    def name(m: re.Match[str]) -> str:
        i = int(m.group(1))
        rest = m.group(2)
        return f"step '{ids[i]}'" + (f": {rest.lstrip('.')}" if rest else "")

    return re.sub(r"steps\[(\d+)\]((?:\.[A-Za-z_]+(?:\[\d+\])*)*)", name, message)


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(x) for x in err["loc"])
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
