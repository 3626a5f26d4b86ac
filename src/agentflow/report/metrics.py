"""The ``success.metrics`` checks of each step and how they went.

A check that fails leaves a ``check_failed`` event with the value it found; the checks of
an attempt that passed leave one ``metrics_checked`` event with every value measured.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from agentflow.errors import AgentflowError
from agentflow.report.model import MetricResult
from agentflow.state import RunState, StepState
from agentflow.store import Event, RunDir
from agentflow.template import Ref, scalar_text, substitute
from agentflow.workflow import Workflow, parse_workflow
from agentflow.workflow.model import Step


def frozen_workflow(
    run: RunDir, state: RunState | None = None, loaded: Workflow | None = None
) -> Workflow | None:
    """The workflow as the run froze it (with the steps its plan added), or None when it
    cannot be read (the report goes on without what only the workflow knows); ``loaded``:
    that workflow, already read by the runner. Given the run's ``state``, each
    ``success.metrics`` file and key is rendered as the runner rendered it
    (``${{ run.id }}``, inputs, outputs), so that the report names the file the check
    read."""
    workflow = loaded or _read_frozen(run)
    if workflow is None:
        return None
    if state is None:
        return workflow
    steps = [_metrics_rendered(workflow, step, state) for step in workflow.steps]
    return workflow.model_copy(update={"steps": steps})


def _read_frozen(run: RunDir) -> Workflow | None:
    try:
        text = run.workflow_path.read_text(encoding="utf-8")
        workflow = parse_workflow(text, str(run.workflow_path), bare_seconds=True)
    except (AgentflowError, OSError, ValueError):
        return None
    with contextlib.suppress(AgentflowError, KeyError):  # no plan: the file's steps alone
        workflow = run.read_plan().workflow_for(workflow)
    return workflow


def _metrics_rendered(workflow: Workflow, step: Step, state: RunState) -> Step:
    if step.success is None or not step.success.metrics:
        return step
    render = _renderer(workflow, step, state)
    metrics = {
        name: m.model_copy(update={"file": render(m.file), "key": render(m.key)})
        for name, m in step.success.metrics.items()
    }
    return step.model_copy(update={"success": step.success.model_copy(update={"metrics": metrics})})


def _renderer(workflow: Workflow, step: Step, state: RunState) -> Callable[[str], str]:
    """The runner's rendering from what the run recorded. ``${{ env.X }}`` of the
    orchestrator's own environment was not recorded: it stays as written."""
    inputs = {**state.inputs, **state.input_overrides}
    env: dict[str, str] = {}

    def lookup(ref: Ref) -> str | None:
        if ref.kind == "inputs":
            value = inputs.get(ref.names[0])
            return None if value is None else scalar_text(value)
        if ref.kind == "env":
            return env.get(ref.names[0])
        if ref.kind == "run":
            return state.run_id
        if ref.kind == "ports":
            port = own.ports.get(ref.names[0]) if own else None
            return None if port is None else str(port)
        other = state.steps.get(ref.names[0])
        return other.outputs.get(ref.names[1]) if other else None

    own = state.steps.get(step.id)
    for key, value in [*workflow.env.items(), *step.env.items()]:
        env[key] = substitute(value, lookup)
    env.update(own.env_overrides if own else {})
    return lambda text: substitute(text, lookup)


def metric_results(step: Step | None, st: StepState, events: list[Event]) -> list[MetricResult]:
    """The step's metric checks as its latest attempt left them."""
    if step is None or step.success is None or not step.success.metrics:
        return []
    mine = [e for e in events if e.step == step.id and e.attempt == st.attempts and e.message]
    failures = [e.message or "" for e in mine if e.kind == "check_failed"]
    passed = [
        part for e in mine if e.kind == "metrics_checked" for part in (e.message or "").split("; ")
    ]
    results = []
    for name, check in step.success.metrics.items():
        prefix = f"success check metrics.{name}: "
        found = next((m.removeprefix(prefix) for m in failures if m.startswith(prefix)), None)
        mine_ok = f"metrics.{name}: "
        measured = next((m.removeprefix(mine_ok) for m in passed if m.startswith(mine_ok)), None)
        detail: str | None
        if found is not None:
            result, detail = "failed", found
        elif st.status == "succeeded":
            result, detail = "passed", measured
        else:
            result, detail = "not checked", None
        results.append(
            MetricResult(
                name=name,
                file=check.file,
                key=check.key,
                min=check.min,
                max=check.max,
                result=result,
                detail=detail,
            )
        )
    return results
