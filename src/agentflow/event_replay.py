"""Replaying events onto a checkpoint: how ``RunDir.recover_state`` brings an older copy
of a run's state (``state.json.prev``, or one rebuilt from the plan) up to date with what
``events.jsonl`` recorded after it."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, get_args

from agentflow.state import FINAL, RunState, RunStatus, StepState

if TYPE_CHECKING:
    from agentflow.store import Event


def replay(state: RunState, events: list[Event]) -> tuple[RunState, list[str]]:
    """``state`` with ``events`` (recorded after it) applied: what each says about a step's
    status and attempt, and about the run's. Returns the new state and the steps changed.
    Events that ``state`` already reflects change nothing."""
    changed: list[str] = []
    for e in events:
        if e.step is None:
            run_status = e.status if e.kind == "run_finished" else _RUN_STATUS.get(e.kind)
            if run_status in _RUN_STATUSES:
                done = e.ts if e.kind in ("run_finished", "run_stopped") else None
                state = state.with_run(status=run_status, finished_at=done)
            continue
        if e.step not in state.steps:
            continue
        st = state.steps[e.step]
        update = _step_update(e, st)
        if update:
            state = state.with_step(e.step, **update)
            if e.step not in changed:
                changed.append(e.step)
    return state, changed


_RUN_STATUS = {
    "run_started": "running",
    "run_resumed": "running",
    "run_interrupted": "interrupted",
    "run_stopped": "interrupted",
}
_RUN_STATUSES = frozenset(get_args(RunStatus))
_KILL_REASON = {
    "timeout": "timeout",
    "stall": "stall",
    "not_ready": "not_ready",
    "dependency_lost": "dependency",
    "service_stopping": "end",
}
"""Events that say agentflow asked a running step to stop, and why."""


def _step_update(e: Event, st: StepState) -> dict[str, object]:
    """What one event says about its step, given what is known of it."""
    attempt = e.attempt or 0
    if attempt < st.attempts:
        return {}  # about an attempt the state has seen through
    if e.kind == "step_started":
        if attempt == st.attempts and st.status != "pending":
            return {}
        # Its window is not in the event: a resume judges the step from its exit code,
        # or reruns it when it has none.
        return {
            "status": "running", "attempts": attempt, "started_at": e.ts, "finished_at": None,
            "exit_code": None, "window": None, "message": None, "kill_reason": None,
            "kill_sent_at": None, "ready_at": None, "progress": None, "output_bytes": 0,
            "last_output_at": None, "not_before": None,
        }  # fmt: skip
    if e.kind == "step_finished" and e.status in FINAL:
        if st.status == e.status and st.finished_at is not None:
            return {}
        return {
            "status": e.status, "attempts": attempt, "exit_code": e.exit_code,
            "finished_at": e.ts, "message": e.message, "kill_reason": None,
            "kill_sent_at": None,
        }  # fmt: skip
    reason = _KILL_REASON.get(e.kind)
    if reason is not None and st.status == "running" and st.kill_reason is None:
        return {"kill_reason": reason, "kill_sent_at": e.ts, "message": e.message}
    if e.kind in ("step_requeued", "retry_scheduled") and st.status != "pending":
        return {"status": "pending", "message": e.message}
    if e.kind in ("step_skipped", "escalated") and st.status not in ("skipped", "blocked"):
        return {
            "status": "skipped" if e.kind == "step_skipped" else "blocked",
            "message": e.message,
        }
    if e.kind == "service_ready" and st.ready_at is None:
        return {"ready_at": e.ts}
    if e.kind == "ports_held" and e.data and isinstance(held := e.data.get("ports"), dict):
        return {"ports": {**st.ports, **held}}
    if e.kind == "outputs" and e.message and not st.outputs:
        return {"outputs": _outputs(e.message)}
    return {}


def _outputs(message: str) -> dict[str, str]:
    """The outputs shown in an ``outputs`` event (``a=1, b=x``)."""
    pairs = re.split(r", (?=[A-Za-z_][\w-]*=)", message)
    return dict(p.split("=", 1) for p in pairs if "=" in p)
