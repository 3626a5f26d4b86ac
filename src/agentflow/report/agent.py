"""What the model did in a run, from its events: each diagnosis with the tool calls that led
to it (the agent's transcript), what it decided, and what it cost.

The events are a contract with the runner: ``agent_tool`` (one per tool call, in order,
before the decision), then ``diagnosis`` or ``agent_exhausted`` for the same step. They are
read leniently: a field missing or of the wrong kind (a run from before, a damaged line) is
left out, never an error; what the fields say is shown as text, never trusted as markup.
"""

from __future__ import annotations

import re

from pydantic import JsonValue, ValidationError

from agentflow.report.model import Diagnosis, ModelUse, ToolCall
from agentflow.state import RunState, Usage
from agentflow.store import Event

DECIDED = ("diagnosis", "agent_exhausted")
"""The events that end a diagnosis (and its transcript)."""
_ACTION = re.compile(r"([a-z_]{1,40}): ")
_NOT_DECISION = frozenset({"usage", "turns", "tools", "reason"})
"""The fields of a decision event that are about the asking, not the answer."""


def model_use(state: RunState, events: list[Event]) -> ModelUse:
    return ModelUse(usage=state.usage, tokens_used=state.tokens_used, diagnoses=diagnoses(events))


def diagnoses(events: list[Event]) -> list[Diagnosis]:
    """Each decision with the tool calls of its step since the step's decision before;
    tool calls that no decision followed come last, as ``unfinished``."""
    pending: dict[str | None, list[ToolCall]] = {}
    found: list[Diagnosis] = []
    for e in events:
        if e.kind == "agent_tool":
            pending.setdefault(e.step, []).append(_tool_call(e))
        elif e.kind in DECIDED:
            found.append(_decided(e, pending.pop(e.step, [])))
    for step, calls in pending.items():
        found.append(
            Diagnosis(
                kind="unfinished",
                step=step,
                at=calls[-1].at,
                tools=[c.tool for c in calls if c.tool != "text"],
                transcript=calls,
            )
        )
    return sorted(found, key=lambda d: d.at)


def _tool_call(e: Event) -> ToolCall:
    data = e.data or {}
    found = data.get("input")
    return ToolCall(
        at=e.ts,
        tool=_text(data.get("tool")) or "?",
        input=found if isinstance(found, dict) else {},
        result=_text(data.get("result")) or "",
        error=data.get("error") is True,
    )


def _decided(e: Event, transcript: list[ToolCall]) -> Diagnosis:
    data = e.data or {}
    tools = data.get("tools")
    turns = data.get("turns")
    return Diagnosis(
        kind="diagnosis" if e.kind == "diagnosis" else "agent_exhausted",
        step=e.step,
        attempt=e.attempt,
        at=e.ts,
        action=_text(data.get("action")) or _action_said(e),
        diagnosis=_text(data.get("diagnosis")),
        category=_text(data.get("category")),
        reason=_text(data.get("reason")),
        message=e.message,
        decision={k: v for k, v in data.items() if k not in _NOT_DECISION},
        turns=turns if isinstance(turns, int) and not isinstance(turns, bool) else None,
        tools=[t for t in tools if isinstance(t, str)] if isinstance(tools, list) else [],
        usage=usage_of(data.get("usage")),
        transcript=transcript,
    )


def _action_said(e: Event) -> str | None:
    """The action a diagnosis's message starts with (``retry: ...``): all a diagnosis
    recorded before events had data says of it."""
    found = _ACTION.match(e.message or "") if e.kind == "diagnosis" else None
    return found.group(1) if found else None


def usage_of(value: JsonValue) -> Usage | None:
    """A recorded usage, or None when there is none or it does not read as one (fields
    added later are left out)."""
    if not isinstance(value, dict):
        return None
    try:
        return Usage.model_validate({k: v for k, v in value.items() if k in Usage.model_fields})
    except ValidationError:
        return None


def _text(value: JsonValue) -> str | None:
    return value if isinstance(value, str) else None
