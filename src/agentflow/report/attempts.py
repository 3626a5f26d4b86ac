"""Each step's attempts, rebuilt from the events (``step_started`` … ``step_finished``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from agentflow.pool.devices import held_in
from agentflow.report.model import Attempt
from agentflow.state import RunState, StepState
from agentflow.store import Event


@dataclass
class _Open:
    """An attempt whose end has not been seen yet."""

    number: int
    started_at: datetime
    ready_at: datetime | None = None
    held: tuple[list[str], list[int]] = ([], [])
    """The GPUs and CPUs it held (its ``step_started`` event's data)."""


def attempt_history(events: list[Event], state: RunState) -> dict[str, list[Attempt]]:
    """Every attempt of every step of the run, oldest first."""
    found: dict[str, list[Attempt]] = {step_id: [] for step_id in state.steps}
    running: dict[str, _Open] = {}
    for e in events:
        if e.step is None or e.step not in found:
            continue
        if e.kind == "step_started":
            earlier = running.pop(e.step, None)
            if earlier is not None:  # its end was never recorded: it was over by now
                found[e.step].append(_attempt(earlier, e.ts, "unknown"))
            number = e.attempt if e.attempt is not None else len(found[e.step]) + 1
            running[e.step] = _Open(number, e.ts, held=held_in(e.data))
        elif e.kind == "step_finished" and e.step in running:
            ended = running.pop(e.step)
            found[e.step].append(
                _attempt(ended, e.ts, e.status or "unknown", e.exit_code, e.message)
            )
        elif e.kind == "service_ready" and e.step in running:
            running[e.step].ready_at = e.ts
    for step_id, still in running.items():
        st = state.steps[step_id]
        latest = still.number == st.attempts and st.status == "running"
        # Its exit code written while nobody watched (``ondisk``): it ended then.
        end = st.finished_at if latest and st.exit_code is not None else None
        code = st.exit_code if end else None
        found[step_id].append(_attempt(still, end, "running" if latest else "unknown", code))
    return {step_id: _with_checkpoint(found[step_id], st) for step_id, st in state.steps.items()}


def _attempt(
    o: _Open,
    end: datetime | None,
    status: str,
    exit_code: int | None = None,
    message: str | None = None,
) -> Attempt:
    return Attempt(
        number=o.number,
        started_at=o.started_at,
        finished_at=end,
        status=status,
        exit_code=exit_code,
        message=message,
        ready_at=o.ready_at,
        gpus=o.held[0],
        cpus=o.held[1],
    )


def _with_checkpoint(attempts: list[Attempt], st: StepState) -> list[Attempt]:
    """The latest attempt with the checkpoint's times, which are exact (an event is
    written when agentflow noticed; the checkpoint has when the exit code was written);
    rebuilt from the checkpoint alone when its events are missing."""
    if st.started_at is None or st.attempts == 0:
        return attempts
    if not attempts or attempts[-1].number != st.attempts:
        ended = st.status != "running" and st.finished_at is not None
        status = "unknown" if st.status == "pending" else st.status
        return [
            *attempts,
            Attempt(
                number=st.attempts,
                started_at=st.started_at,
                finished_at=st.finished_at if ended else None,
                status=status,
                exit_code=st.exit_code if ended else None,
                message=st.message if ended else None,
                ready_at=st.ready_at,
                gpus=st.gpus,
                cpus=st.cpus,
            ),
        ]
    latest = attempts[-1]
    changes: dict[str, object] = {"started_at": st.started_at}
    if latest.finished_at is not None and st.finished_at is not None:
        changes["finished_at"] = max(st.finished_at, st.started_at)
    if st.ready_at is not None:
        changes["ready_at"] = st.ready_at
    return [*attempts[:-1], latest.model_copy(update=changes)]
