"""The ``success.metrics`` checks of each step and how they went.

A check that fails leaves a ``check_failed`` event with the value it found; the checks of
an attempt that passed leave one ``metrics_checked`` event with every value measured.
"""

from __future__ import annotations

from agentflow.errors import AgentflowError
from agentflow.report.model import MetricResult
from agentflow.state import StepState
from agentflow.store import Event, RunDir
from agentflow.workflow import Workflow, parse_workflow
from agentflow.workflow.model import Step


def frozen_workflow(run: RunDir) -> Workflow | None:
    """The workflow as the run froze it (with the steps its plan added), or None when it
    cannot be read (the report goes on without what only the workflow knows)."""
    try:
        text = run.workflow_path.read_text(encoding="utf-8")
        workflow = parse_workflow(text, str(run.workflow_path), bare_seconds=True)
    except (AgentflowError, OSError, ValueError):
        return None
    try:
        return run.read_plan().workflow_for(workflow)
    except (AgentflowError, KeyError):
        return workflow


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
