"""Small text helpers every report format shares: durations, clock times, log tails.

Whatever a step or the model wrote goes into a report through ``textsafe`` (``printable``,
``one_line``): no escape sequence or control character reaches a report, and so none
reaches a terminal that shows one (XML 1.0 forbids most of them too)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from agentflow import safefs, stepfiles
from agentflow.display import describe
from agentflow.report.model import DECISION_KINDS
from agentflow.store import Event
from agentflow.textsafe import MESSAGE_LIMIT, one_line, printable
from agentflow.verify import tail
from agentflow.workflow.types import format_duration

HASH_SHOWN = 16
"""Characters of an artifact's sha256 in the reports' tables (report.json has all 64)."""


def human_duration(seconds: float | None) -> str:
    """``12ms``, ``1.3s``, ``45s``, ``2m5s``, ``1h30m``; '' when unknown."""
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 10:
        return f"{seconds:.1f}s"
    return format_duration(round(seconds))


def clock(ts: datetime | None, with_date: bool = False) -> str:
    """A time in the reader's time zone (the report is read where it is made)."""
    if ts is None:
        return ""
    local = ts.astimezone()
    if with_date:
        return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname() or ''}".rstrip()
    return f"{local:%H:%M:%S}"


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round(max(0.0, (end - start).total_seconds()), 3)


def log_tail(path: Path, max_lines: int, max_bytes: int = 16 * 1024) -> str:
    """The last lines of a log, cleaned; '' when there is no log."""
    raw = tail(path, max_bytes)
    if not raw:
        return ""
    try:
        cut = safefs.lstat(path, stepfiles.steps_root(path)).st_size > max_bytes
    except OSError:
        cut = False
    lines = printable(raw).rstrip("\n").split("\n")
    if cut and len(lines) > 1:
        lines = lines[1:]  # the first line read is most likely a fragment
    return "\n".join(lines[-max_lines:])


def last_lines(text: str, count: int) -> str:
    return "\n".join(text.split("\n")[-count:])


def split_message(message: str | None) -> tuple[str, str]:
    """A message as (one line, block), printable: a message of several lines (a proposed
    diff) is all block, so it is shown whole and as written."""
    text = printable(message, MESSAGE_LIMIT).rstrip("\n")
    return ("", text) if "\n" in text else (text, "")


def event_sentence(e: Event) -> str:
    """An event in one line; a decision's message of several lines (a proposed diff) is
    left to the decisions."""
    if e.kind in DECISION_KINDS and e.message and "\n" in e.message.strip():
        return describe(e.model_copy(update={"message": None})) + " (see the decisions)"
    return one_line(describe(e))
