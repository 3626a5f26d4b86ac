"""``resume --reload``: a run's workflow file, edited, taken into the run.

The edited file is validated and planned with the run's inputs, then compared with the
run's frozen copy step by step. A step that did not succeed takes the new definition
(it runs again anyway); a succeeded step whose definition changed runs again, for real,
with everything downstream; an unchanged succeeded step is kept. The old frozen copies
stay in the run directory, numbered (``workflow.1.yaml``, ``plan.1.json``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agentflow.errors import StateError, UsageError
from agentflow.plan import Plan, PlannedStep
from agentflow.planner import check_plan
from agentflow.planner.static import StaticPlanner, render_inputs, run_order
from agentflow.state import RunState, StepState, reset_for_rerun, with_dependents
from agentflow.store import RunDir
from agentflow.workflow.load import WorkflowFile, load_workflow, parse_workflow
from agentflow.workflow.model import Scalar, Step, Workflow


@dataclass(frozen=True)
class Reload:
    """What reloading would do; nothing is written until ``apply``."""

    wf: WorkflowFile
    plan: Plan
    state: RunState
    """The run's state with the new steps and the resets (not yet written)."""
    changes: dict[str, list[str]]
    """Per step whose definition changed: what changed (``command``, ``timeout``, …)."""
    added: list[str]
    rerun: list[str]
    """Succeeded steps that will run again (changed, or downstream of a changed one)."""
    old_commands: dict[str, str]
    """The frozen plan's command of each step (to show what changed)."""


def frozen_text(run: RunDir) -> str:
    try:
        return run.workflow_path.read_text(encoding="utf-8")
    except OSError as e:
        raise StateError(f"{run.workflow_path}: cannot read the run's workflow ({e})") from None


def file_changed(run: RunDir, state: RunState) -> bool:
    """Whether the run's workflow file now differs from its frozen copy (False when the
    file is gone or unreadable: there is nothing to reload then)."""
    try:
        text = Path(state.workflow_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return text != frozen_text(run)


def prepare(run: RunDir, state: RunState) -> Reload:
    """Load, validate and plan the edited file and compare it with the frozen copy.
    Raises (WorkflowError, UsageError) before anything is written."""
    wf = load_workflow(state.workflow_file)
    old_plan = run.read_plan()
    text = frozen_text(run)
    old = old_plan.workflow_for(parse_workflow(text, str(run.workflow_path), bare_seconds=True))
    plan = _plan(wf, _inputs(wf, state), old_plan, old)
    check_plan(plan, wf, str(wf.path))
    new = plan.workflow_for(wf.workflow)
    removed = [s for s in state.steps if s not in {p.id for p in plan.steps}]
    if removed:
        raise UsageError(
            f"{wf.path.name} no longer has step{'s' if len(removed) > 1 else ''} "
            f"{', '.join(removed)} of run {state.run_id}: put it back to reload, or start a "
            "new run"
        )
    known = [p for p in plan.steps if p.id in state.steps]
    diffs = {p.id: _changed(old, old_plan.step(p.id), new, p) for p in known}
    changes = {step_id: what for step_id, what in diffs.items() if what}
    running = [s for s in changes if state.steps[s].status == "running"]
    if running:
        raise UsageError(
            f"step {', '.join(running)} of run {state.run_id} is running and changed: "
            f"wait for it or `agentflow stop {state.run_id}`, then reload"
        )
    added = [p.id for p in plan.steps if p.id not in state.steps]
    needs = {p.id: p.needs for p in plan.steps}
    changed_done = [s for s in changes if state.steps[s].status == "succeeded"]
    rerun = [
        s
        for s in with_dependents(needs, changed_done)
        if s in state.steps and state.steps[s].status == "succeeded"
    ]
    steps = {p.id: state.steps.get(p.id, StepState()) for p in plan.steps}
    new_state = reset_for_rerun(
        state.model_copy(update={"steps": steps, "workflow": wf.workflow.name}),
        rerun,
        "rerun: its definition (or one it needs) changed in the workflow file",
    )
    old_commands = {p.id: p.run for p in old_plan.steps}
    return Reload(wf, plan, new_state, changes, added, rerun, old_commands)


def apply(run: RunDir, reload: Reload) -> None:
    """Keep the old frozen copies (numbered), write the new ones and the state; under the
    run's lock."""
    n = 1
    while (run.path / f"workflow.{n}.yaml").exists() or (run.path / f"plan.{n}.json").exists():
        n += 1
    run.write_text(f"workflow.{n}.yaml", frozen_text(run))
    run.write_text(f"plan.{n}.json", run.plan_path.read_text(encoding="utf-8"))
    run.write_text("workflow.yaml", reload.wf.text)
    run.write_plan(reload.plan)
    run.write_state(reload.state)


def _inputs(wf: WorkflowFile, state: RunState) -> dict[str, Scalar]:
    """The run's input values (an input the file added: its default)."""
    values: dict[str, Scalar] = {}
    for name, spec in wf.workflow.inputs.items():
        if name in state.inputs:
            values[name] = state.inputs[name]
        elif spec.default is not None:
            values[name] = spec.default
        else:
            raise UsageError(
                f"{wf.path.name}: input '{name}' is new and has no default: give it a default "
                "to reload, or start a new run"
            )
    return values


def _plan(wf: WorkflowFile, inputs: dict[str, Scalar], old_plan: Plan, old: Workflow) -> Plan:
    """The static plan of the edited file; for a workflow with ``task:`` steps (the LLM
    planner), each unchanged task keeps the steps the frozen plan gave it (the model is not
    asked again), and a changed task is refused."""
    if all(s.run is not None for s in wf.workflow.steps):
        plan = StaticPlanner().plan(wf, inputs)
        kept = [_kept_or_new(wf.workflow.step(p.id), inputs, old_plan, old) for p in plan.steps]
        update = {"planner": old_plan.planner, "usage": old_plan.usage, "steps": kept}
        return plan.model_copy(update=update)
    steps: list[PlannedStep] = []
    for s in run_order(wf.workflow):
        if s.run is not None:
            steps.append(_kept_or_new(s, inputs, old_plan, old))
            continue
        if s.id not in {o.id for o in old.steps} or _task(old.step(s.id)) != _task(s):
            raise UsageError(
                f"{wf.path.name}: the task '{s.id}' is new or changed, and reloading does not "
                "ask the planner again: start a new run"
            )
        steps += [p for p in old_plan.steps if p.expands == s.id or p.id == s.id]
    return old_plan.model_copy(update={"steps": steps, "inputs": inputs})


def _kept_or_new(
    step: Step, inputs: dict[str, Scalar], old_plan: Plan, old: Workflow
) -> PlannedStep:
    """A ``run:`` step as planned: the command the model wrote for it (approved with the
    plan) while the file's command is unchanged, else the file's."""
    ids = {o.id for o in old.steps}
    if step.id in ids and old.step(step.id).run == step.run:
        was = old_plan.step(step.id)
        if was.source == "planner" and was.expands is None:
            return was.model_copy(update={"needs": list(step.needs)})
    return PlannedStep(id=step.id, run=render_inputs(step.run or "", inputs), needs=step.needs)


def _task(step: Step) -> dict[str, object]:
    return step.model_dump(exclude={"needs", "ready", "success"})


def _changed(old: Workflow, was: PlannedStep, new: Workflow, now: PlannedStep) -> list[str]:
    """What of a step's definition differs: the names of the parts that changed."""
    a, b = _definition(old, was), _definition(new, now)
    return [k for k in a if a[k] != b[k]]


def _definition(workflow: Workflow, planned: PlannedStep) -> dict[str, object]:
    """What a step does and how it is judged: a change to any of it reruns the step."""
    step = workflow.step(planned.id)
    return {
        "command": planned.run,
        "env": {**workflow.env, **step.env},
        "sandbox": (workflow.sandbox.model_dump(mode="json"), step.workdir, step.resources),
        "needs": sorted(planned.needs),
        "timeout": workflow.timeout_of(step),
        "success": step.success,
        "ready": step.ready,
        "outputs": step.outputs,
        "artifacts": step.artifacts,
        "service": step.service,
    }
