"""From a run's checkpoint and events to a ``Report`` (whatever the run's state: ended,
running, or left behind by an orchestrator that died)."""

from __future__ import annotations

import os
from datetime import datetime

from agentflow import series
from agentflow.artifacts import StepArtifacts, read_manifest
from agentflow.redact import Redactor
from agentflow.report.agent import model_use
from agentflow.report.attempts import attempt_history
from agentflow.report.metrics import frozen_workflow, metric_results
from agentflow.report.model import Attempt, Report, StepReport
from agentflow.report.text import log_tail, seconds_between
from agentflow.state import RunState, StepState, now
from agentflow.store import Event, RunDir
from agentflow.workflow import Step, Workflow

STATUS_ORDER = (
    "failed",
    "crashed",
    "timeout",
    "stalled",
    "blocked",
    "running",
    "pending",
    "skipped",
    "succeeded",
)
"""The order step counts are told in: what needs attention first."""

TAIL_LINES = 80


def build_report(
    run: RunDir, state: RunState, at: datetime | None = None, workflow: Workflow | None = None
) -> Report:
    """The report of ``state`` (read from ``run``) as of ``at`` (now)."""
    at = at or now()
    workflow = frozen_workflow(run, state, workflow)
    events = _masked(run.read_events(), secrets_known(workflow))
    status = shown_status(run, state)
    end = _timeline_end(state, events, at)
    history = attempt_history(events, state)
    kept = read_manifest(run).steps
    # Each step's own events, and its definition, found once (not by a look through all
    # of them for every step: at 10,000 steps that was most of the report's time).
    defined = {s.id: s for s in workflow.steps} if workflow else {}
    by_step: dict[str, list[Event]] = {}
    for e in events:
        if e.step is not None:
            by_step.setdefault(e.step, []).append(e)
    steps = [
        _step(
            run,
            step_id,
            st,
            history[step_id],
            by_step.get(step_id, []),
            defined.get(step_id),
            end,
            kept.get(step_id),
        )
        for step_id, st in state.steps.items()
    ]
    counts = {s: n for s in STATUS_ORDER if (n := state.count(s))}
    return Report(
        run_id=state.run_id,
        workflow=state.workflow,
        workflow_file=state.workflow_file,
        status=status,
        message=state.message,
        inputs=state.inputs,
        created_at=state.created_at,
        finished_at=state.finished_at,
        duration_s=seconds_between(state.created_at, state.finished_at or end),
        timeline_end=end,
        generated_at=at,
        counts=counts,
        resume=None if status in ("succeeded", "running") else f"agentflow resume {state.run_id}",
        steps=steps,
        events=events,
        llm=model_use(state, events),
    )


def secrets_known(workflow: Workflow | None) -> Redactor:
    """The workflow's secrets whose values this process has (the orchestrator, which
    writes the reports when a run ends, always has them)."""
    names = workflow.secrets if workflow else []
    return Redactor(os.environ.get(name, "") for name in names)


def _masked(events: list[Event], redact: Redactor) -> list[Event]:
    """The events with every known secret masked once more: the runner masks what it
    records, and this holds for an event recorded another way (the model's transcript
    quotes what steps wrote, and reports are shared more widely than the run's folder)."""
    if not redact.values:
        return events
    return [
        e.model_copy(
            update={
                "message": redact(e.message) if e.message else e.message,
                "data": redact.deep(e.data) if e.data else e.data,
            }
        )
        for e in events
    ]


def shown_status(run: RunDir, state: RunState) -> str:
    """The recorded status, or ``orphaned`` when it says running and nobody drives it."""
    if state.status == "running" and run.lock_holder() is None:
        return "orphaned"
    return state.status


def _timeline_end(state: RunState, events: list[Event], at: datetime) -> datetime:
    """The run's end; now while a step may still be running."""
    times = [state.created_at, *(e.ts for e in events)]
    if state.finished_at is not None:
        times.append(state.finished_at)
    else:
        times.append(state.updated_at)  # the last sign of life of a run that did not end
    if any(st.status == "running" for st in state.steps.values()):
        times.append(at)
    return max(times)


def _step(
    run: RunDir,
    step_id: str,
    st: StepState,
    history: list[Attempt],
    events: list[Event],
    step: Step | None,
    end: datetime,
    kept: StepArtifacts | None,
) -> StepReport:
    """One step's report; ``events``: its own, ``step``: its definition, when known."""
    log = run.step_dir(step_id) / "output.log"
    spans = [seconds_between(a.started_at, a.finished_at or end) for a in history]
    report = StepReport(
        id=step_id,
        status=st.status,
        service=step.service if step else False,
        attempts=st.attempts,
        exit_code=st.exit_code,
        started_at=st.started_at,
        finished_at=st.finished_at,
        duration_s=seconds_between(st.started_at, st.finished_at),
        time_s=round(sum(s for s in spans if s is not None), 3) if history else None,
        outputs=st.outputs,
        message=st.message,
        log=str(log),
        history=history,
        metrics=metric_results(step, st, events),
        artifacts=kept.files if kept else [],
        series=list(series.load(run.path, step_id).series.values()),
        ports=st.ports,
    )
    if report.went_wrong:
        report = report.model_copy(update={"log_tail": log_tail(log, TAIL_LINES)})
    return report
