"""``report.md``: the run for a person, readable rendered or as plain text in a terminal
(aligned tables, times in the reader's zone, long text in code blocks).

Text a step or the model wrote is printable (``textsafe``) and, where it stands in
Markdown rather than in a code block, escaped (``inline``): it cannot add a link, an
image, HTML or a table cell of its own to the rendered page."""

from __future__ import annotations

import re
from collections.abc import Sequence

from agentflow.artifacts import human_size
from agentflow.display import STATUS_MARK
from agentflow.pool.devices import held_by_attempt
from agentflow.report.model import Diagnosis, Report, StepReport
from agentflow.report.text import (
    HASH_SHOWN,
    clock,
    diagnosis_facts,
    event_sentence,
    human_duration,
    last_lines,
    spent,
    split_message,
    transcript_text,
    usd,
)
from agentflow.store import Event
from agentflow.textsafe import VALUE_LIMIT, one_line, printable

NOTE_WIDTH = 70
"""Notes in tables are cut here; the whole text is in the sections below."""
FAILED_LOG_LINES = 20


def markdown(report: Report) -> str:
    parts = [
        _summary(report),
        _steps(report),
        _outputs(report),
        _metrics(report),
        _artifacts(report),
        _decisions(report),
        _model(report),
        _failures(report),
        _timeline(report),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def _summary(report: Report) -> str:
    mark = STATUS_MARK.get(report.status, "")
    lines = [
        f"# {report.workflow}: {report.status} {mark}".rstrip(),
        "",
        f"- run: `{report.run_id}`",
        f"- workflow: {report.workflow}"
        + (f" (`{report.workflow_file}`)" if report.workflow_file else ""),
        f"- status: **{report.status}**"
        + (f": {inline(one_line(report.reason))}" if report.reason else ""),
        f"- started: {clock(report.created_at, with_date=True)}",
    ]
    took = human_duration(report.duration_s)
    if report.finished_at is not None:
        lines.append(f"- ended: {clock(report.finished_at, with_date=True)} (took {took})")
    else:
        lines.append(f"- ended: not yet ({took} so far, as of {clock(report.generated_at)})")
    counts = ", ".join(f"{n} {status}" for status, n in report.counts.items())
    lines.append(f"- steps: {len(report.steps)}" + (f" ({counts})" if counts else ""))
    if report.inputs:
        lines.append("- inputs: " + ", ".join(code(f"{k}={v}") for k, v in report.inputs.items()))
    if report.status == "orphaned":
        lines.append("- its orchestrator is gone: the steps may still be running in tmux")
    if report.resume:
        lines.append(f"- resume: `{report.resume}`")
    return "\n".join(lines)


def _steps(report: Report) -> str:
    rows = [
        [
            s.id + (" (service)" if s.service else ""),
            f"{STATUS_MARK.get(s.status, ' ')} {s.status}",
            str(s.attempts),
            human_duration(s.time_s),
            "" if s.exit_code is None else str(s.exit_code),
            _note(s),
        ]
        for s in report.steps
    ]
    headers = ["step", "status", "attempts", "time", "exit", "note"]
    return "## Steps\n\n" + table(headers, rows, right={2, 3, 4})


def _note(s: StepReport) -> str:
    note = inline(one_line(s.message, NOTE_WIDTH))
    if s.ready_after_s is not None:
        note = f"ready after {human_duration(s.ready_after_s)}" + (f"; {note}" if note else "")
    if s.ports:
        ports = "ports " + ", ".join(f"{k}={v}" for k, v in s.ports.items())
        note = ports + (f"; {note}" if note else "")
    if held := held_by_attempt(s.history):  # the pool's devices each attempt had
        note = held + (f"; {note}" if note else "")
    return note


def _outputs(report: Report) -> str:
    rows = [
        [s.id, name, inline(one_line(value, NOTE_WIDTH))]
        for s in report.steps
        for name, value in s.outputs.items()
    ]
    if not rows:
        return ""
    return "## Outputs\n\n" + table(["step", "output", "value"], rows)


def _metrics(report: Report) -> str:
    rows = [
        [
            s.id,
            m.name,
            inline(one_line(f"{m.file}: {m.key}")),  # rendered: it may quote an output
            m.bounds,
            m.result + (f": {inline(printable(m.detail, VALUE_LIMIT))}" if m.detail else ""),
        ]
        for s in report.steps
        for m in s.metrics
    ]
    if not rows:
        return ""
    return "## Metrics\n\n" + table(["step", "metric", "read from", "must be", "result"], rows)


def _artifacts(report: Report) -> str:
    rows = [
        [
            step,
            inline(printable(a.path, VALUE_LIMIT)),
            human_size(a.size),
            a.sha256[:HASH_SHOWN],
            inline(printable(a.stored, VALUE_LIMIT)) or "recorded only (over the copy limit)",
        ]
        for step, a in report.artifacts
    ]
    if not rows:
        return ""
    headers = ["step", "file", "size", "sha256", "kept as"]
    note = "Copies are relative to the run's folder; report.json has each whole sha256."
    return "## Artifacts\n\n" + table(headers, rows, right={2}) + "\n\n" + note


def _decisions(report: Report) -> str:
    decisions = report.decisions
    if not decisions:
        return ""
    lines = ["## Retries and decisions", ""]
    for e in decisions:
        attempt = f" (attempt {e.attempt})" if e.attempt else ""
        head, block = split_message(e.message)
        words = e.kind.replace("_", " ")
        lines.append(
            f"- {clock(e.ts)} **{e.step or 'run'}**{attempt} {words}: {inline(head)}".rstrip(": ")
        )
        if block:
            lines += ["", *_indented(fenced(block, "diff" if "\n@@" in block else ""))]
    return "\n".join(lines)


def _model(report: Report) -> str:
    """What the model did and cost: the run's figures, a row per diagnosis, and what each
    diagnosis looked at (its transcript, folded)."""
    llm = report.llm
    if not llm.used:
        return ""
    u = llm.usage
    lines = ["## Model", ""]
    if u.calls or u.tokens:
        lines += [
            f"- calls: {u.calls}",
            f"- tokens: {spent(u)}",
            f"- cost: {usd(u.cost_usd)} (estimated from list prices)",
        ]
    else:  # a run from before the usage was kept
        lines.append(f"- tokens: {llm.tokens_used:,} (not recorded by kind)")
    if llm.diagnoses:
        rows = [_diagnosis_row(d) for d in llm.diagnoses]
        headers = ["step", "attempt", "decision", "calls", "input", "output", "cache read"]
        headers += ["cache write", "cost"]
        lines += ["", table(headers, rows, right={1, 3, 4, 5, 6, 7, 8})]
        for d in llm.diagnoses:
            lines += ["", *_diagnosis_text(d)]
    return "\n".join(lines)


def _diagnosis_row(d: Diagnosis) -> list[str]:
    u = d.usage
    figures = (
        [f"{n:,}" for n in (u.calls, u.input_tokens, u.output_tokens)]
        + [f"{n:,}" for n in (u.cache_read_tokens, u.cache_write_tokens)]
        + [usd(u.cost_usd)]
        if u
        else ["", "", "", "", "", "not recorded"]
    )
    attempt = "" if d.attempt is None else str(d.attempt)
    return [inline(d.step or "run"), attempt, inline(one_line(d.outcome, 40)), *figures]


def _diagnosis_text(d: Diagnosis) -> list[str]:
    attempt = f" (attempt {d.attempt})" if d.attempt is not None else ""
    head = f"### {inline(d.step or 'run')}{attempt}: {inline(one_line(d.outcome, 60))}"
    lines = [head]
    facts = diagnosis_facts(d)
    if facts:
        lines += ["", *(f"- {k}: {inline(v)}" for k, v in facts)]
    if not d.transcript:
        return [*lines, "", "(no tool calls recorded)"]
    calls = len(d.transcript)
    # A <details> block holds no Markdown on its summary line, only text we wrote; what
    # the calls say is in a code block whose fence no line of it can close.
    return [
        *lines,
        "",
        f"<details><summary>transcript: {calls} tool call{'s' if calls != 1 else ''}</summary>",
        "",
        fenced(transcript_text(d.transcript)),
        "",
        "</details>",
    ]


def _failures(report: Report) -> str:
    troubled = report.troubled
    if not troubled:
        return ""
    lines = ["## Failed steps"]
    for s in troubled:
        why = paragraph(one_line(s.message)) or s.status
        exit_code = f", exit code {s.exit_code}" if s.exit_code is not None else ""
        lines += ["", f"### {s.id}: {s.status}{exit_code}", "", why, "", f"log: `{s.log}`"]
        if s.log_tail:
            lines += [
                "",
                f"last {FAILED_LOG_LINES} lines:",
                "",
                fenced(last_lines(s.log_tail, FAILED_LOG_LINES)),
            ]
        else:
            lines += ["", "(the log is empty)"]
    return "\n".join(lines)


def _timeline(report: Report) -> str:
    if not report.events:
        return ""
    width = min(24, max(len(e.step or "run") for e in report.events))
    rows = [_event_line(e, report, width) for e in report.events]
    return "## Timeline\n\n" + fenced("\n".join(rows))


def _event_line(e: Event, report: Report, width: int) -> str:
    offset = human_duration((e.ts - report.created_at).total_seconds())
    who = (e.step or "run")[:width]
    return f"{clock(e.ts)}  {'+' + offset:>8}  {who:<{width}}  {event_sentence(e)}"


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int] | None = None
) -> str:
    """A Markdown table whose columns line up in plain text too."""
    right = right or set()
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [max(3, len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        padded = [
            v.rjust(w) if i in right else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w - 1) + ":" if i in right else "-" * w for i, w in enumerate(widths)]
    return "\n".join([line(headers), line(rule), *(line(r) for r in cells)])


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


_INLINE = re.compile(r"([\\\[\]<&])")
"""What starts a link, an image, HTML or an entity (or escapes one of those); ``|`` is
escaped by each table cell. A code span may stay: what is in one is shown as text."""
_BLOCK_START = re.compile(r"^(\s*\d*)([#>+*-]|(?<=\d)[.)])")
"""A heading, a quote, or a list item's marker (``-``, ``1.``) at the start of a line."""


def inline(text: str) -> str:
    """Printable text as Markdown that shows it as text: no link, image, HTML or entity."""
    return _INLINE.sub(r"\\\1", text)


def paragraph(text: str) -> str:
    """``inline``, and a first character that would make a heading, a quote or a list
    escaped too."""
    return _BLOCK_START.sub(r"\1\\\2", inline(text), count=1)


def code(text: str) -> str:
    """Printable text as a code span that no backtick in it can end."""
    shown = one_line(text)
    longest = max((len(run) for run in _backtick_runs(shown)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if shown.startswith("`") or shown.endswith("`") else ""
    return f"{ticks}{pad}{shown}{pad}{ticks}"


def fenced(text: str, info: str = "") -> str:
    """A code block whose fence no line of ``text`` can close."""
    longest = max((len(run) for run in _backtick_runs(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"


def _backtick_runs(text: str) -> list[str]:
    runs, current = [], ""
    for ch in text:
        if ch == "`":
            current += ch
        elif current:
            runs.append(current)
            current = ""
    return [*runs, current] if current else runs


def _indented(block: str) -> list[str]:
    return ["  " + line if line else "" for line in block.split("\n")]
