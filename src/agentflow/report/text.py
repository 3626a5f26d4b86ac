"""Small text helpers every report format shares: durations, clock times, log tails."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from agentflow.display import describe
from agentflow.store import Event
from agentflow.verify import tail
from agentflow.workflow.types import format_duration

HASH_SHOWN = 16
"""Characters of an artifact's sha256 in the reports' tables (report.json has all 64)."""

# Colour codes and terminal control sequences (CSI, OSC, two-byte escapes).
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
# Characters XML 1.0 forbids (JUnit viewers reject the file) and nobody can read anyway.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")


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


def clean(text: str) -> str:
    """Text as a reader (and an XML parser) can take it: no colour codes, no control
    characters, and of a line redrawn with carriage returns (a progress bar) only what was
    shown last."""
    text = _ANSI.sub("", text).replace("\r\n", "\n")
    lines = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
    return _CONTROL.sub("", "\n".join(lines))


def log_tail(path: Path, max_lines: int, max_bytes: int = 16 * 1024) -> str:
    """The last lines of a log, cleaned; '' when there is no log."""
    raw = tail(path, max_bytes)
    if not raw:
        return ""
    try:
        cut = path.stat().st_size > max_bytes
    except OSError:
        cut = False
    lines = clean(raw).rstrip("\n").split("\n")
    if cut and len(lines) > 1:
        lines = lines[1:]  # the first line read is most likely a fragment
    return "\n".join(lines[-max_lines:])


def last_lines(text: str, count: int) -> str:
    return "\n".join(text.split("\n")[-count:])


def one_line(text: str | None, limit: int = 0) -> str:
    """The first line of ``text``, cut to ``limit`` characters (0: no cut)."""
    if not text:
        return ""
    lines = text.strip().split("\n")
    first = lines[0] + (" …" if len(lines) > 1 else "")
    if limit and len(first) > limit:
        first = first[: limit - 1].rstrip() + "…"
    return first


def split_message(message: str | None) -> tuple[str, str]:
    """A message as (one line, block): a message of several lines (a proposed diff) is
    all block, so it is shown whole and as written."""
    text = (message or "").rstrip("\n")
    return ("", text) if "\n" in text else (text, "")


def event_sentence(e: Event) -> str:
    """An event in one line; a message of several lines is left to the decisions."""
    if e.message and "\n" in e.message.strip():
        return describe(e.model_copy(update={"message": None})) + " (see the decisions)"
    return one_line(describe(e))
