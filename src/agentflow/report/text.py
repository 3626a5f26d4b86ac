"""Small text helpers every report format shares: durations, clock times, log tails.

Whatever a step or the model wrote goes into a report through ``textsafe`` (``printable``,
``one_line``): no escape sequence or control character reaches a report, and so none
reaches a terminal that shows one (XML 1.0 forbids most of them too)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from agentflow import safefs, stepfiles
from agentflow.display import describe
from agentflow.report.model import DECISION_KINDS, Diagnosis, ToolCall
from agentflow.state import Usage
from agentflow.store import Event
from agentflow.textsafe import MESSAGE_LIMIT, VALUE_LIMIT, one_line, printable
from agentflow.verify import tail
from agentflow.viewparts import CAUSE_WIDTH
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


CAUSE_LINES = 5
"""Lines of a failed attempt's log shown under its failure (live view, ``--ci``)."""
_NOISE = re.compile(r"\d%\||^\W*$")
"""A progress bar (tqdm's ``45%|###``), or a line of no letter or digit (a rule)."""


def cause_lines(path: Path, redact: Callable[[str], str], count: int = CAUSE_LINES) -> list[str]:
    """The last meaningful lines of a failed attempt's log, which usually say why it
    failed (``can't open file 'trian.py'``): the log's tail as every report reads it
    (``log_tail``, the guarded path, cleaned), blank lines and noise left out, each line
    cut to ``CAUSE_WIDTH`` and masked with ``redact`` (the run's secrets)."""
    kept: list[str] = []
    for line in log_tail(path, 4 * count + 20, 8 * 1024).split("\n"):
        shown = printable(redact(line)).replace("\t", "    ").rstrip()
        if len(shown) > CAUSE_WIDTH:
            shown = shown[: CAUSE_WIDTH - 1] + "…"
        if shown and not _NOISE.search(shown):
            kept.append(shown)
    return kept[-count:]


def last_lines(text: str, count: int) -> str:
    return "\n".join(text.split("\n")[-count:])


def split_message(message: str | None) -> tuple[str, str]:
    """A message as (one line, block), printable: a message of several lines (a proposed
    diff) is all block, so it is shown whole and as written."""
    text = printable(message, MESSAGE_LIMIT).rstrip("\n")
    return ("", text) if "\n" in text else (text, "")


def event_sentence(e: Event) -> str:
    """An event in one line; a decision's message of several lines (a proposed diff) is
    left to the decisions, a tool call's input and result to the model's transcript."""
    if e.kind in DECISION_KINDS and e.message and "\n" in e.message.strip():
        return describe(e.model_copy(update={"message": None})) + " (see the decisions)"
    tool = (e.data or {}).get("tool")
    if e.kind == "agent_tool" and not e.message and isinstance(tool, str):
        return one_line(f"agent tool: {tool}", INPUT_WIDTH)
    return one_line(describe(e))


INPUT_WIDTH = 300
"""Characters of a tool call's input shown in its line (report.json has all of it)."""


def usd(cost: float, *, short: bool = False) -> str:
    """An estimated cost: ``$0.0123``; ``short`` to the cent (``$0.04``) unless it is less."""
    if short and (cost >= 0.01 or cost == 0):
        return f"${cost:.2f}"
    return f"${cost:.4f}"


def spent(u: Usage) -> str:
    """``12,345 tokens (input 1,000, output 500, cache read 10,000, cache write 845)``."""
    kinds = [
        ("input", u.input_tokens),
        ("output", u.output_tokens),
        ("cache read", u.cache_read_tokens),
        ("cache write", u.cache_write_tokens),
    ]
    return f"{u.tokens:,} tokens (" + ", ".join(f"{k} {n:,}" for k, n in kinds) + ")"


def diagnosis_facts(d: Diagnosis) -> list[tuple[str, str]]:
    """What a diagnosis found and cost, as (label, one line of text); the text is the
    model's (or a step's, quoted), printable but not escaped for any format."""
    said = [
        ("diagnosis", d.diagnosis),
        ("category", d.category),
        ("why it stopped", d.reason),
        # all a diagnosis recorded before events had data says
        ("recorded", None if d.diagnosis or d.reason else d.message),
    ]
    facts = [(k, one_line(v, VALUE_LIMIT)) for k, v in said if v]
    if d.usage:
        facts.append(("used", f"{d.usage.calls} calls, {spent(d.usage)}"))
        facts.append(("cost", f"{usd(d.usage.cost_usd)} (estimated)"))
    if d.turns is not None:
        facts.append(("turns", str(d.turns)))
    return facts


def transcript_text(calls: list[ToolCall]) -> str:
    """The agent's transcript as plain text: each call's tool and input in one line, then
    its result indented under it; printable (whatever a step wrote is hostile)."""
    lines: list[str] = []
    for i, c in enumerate(calls, 1):
        head = f"{i}. {c.tool}" + (" (error)" if c.error else "")
        if c.input:
            head += " " + json.dumps(c.input, ensure_ascii=False)
        lines.append(one_line(head, INPUT_WIDTH))
        result = printable(c.result, VALUE_LIMIT).rstrip("\n")
        lines += ["   " + line if line else "" for line in result.split("\n")] if result else []
    return "\n".join(lines)
