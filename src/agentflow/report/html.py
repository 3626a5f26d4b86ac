"""``report.html``: one self-contained page (inline CSS and SVG; no script, no URL) that a
person opens in a browser: the summary, the timeline chart, the steps, outputs, metrics,
decisions and the end of each failed step's log."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from html import escape

from agentflow.artifacts import human_size
from agentflow.pool.devices import held_by_attempt
from agentflow.report.curves import curves_section
from agentflow.report.gantt import gantt_parts
from agentflow.report.model import Diagnosis, Report, StepReport, ToolCall
from agentflow.report.palette import COLOURS, READY, colour
from agentflow.report.text import (
    HASH_SHOWN,
    INPUT_WIDTH,
    clock,
    diagnosis_facts,
    event_sentence,
    human_duration,
    spent,
    split_message,
    usd,
)
from agentflow.store import Event
from agentflow.textsafe import VALUE_LIMIT, one_line, printable

_SERVICE = ' <span class="muted">service</span>'
OPEN_FAILURES = 5
"""Failed steps whose log is shown unfolded; the rest are one click away."""

CSS = """
:root { --ink: #1f2328; --muted: #656d76; --line: #d8dee4; --bg: #f6f8fa; --card: #fff; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink); font: 14px/1.5 system-ui,
  -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 20px 48px; }
header.hero { display: flex; align-items: center; gap: 16px; flex-wrap: wrap; margin-bottom: 16px; }
header.hero h1 { margin: 0; font-size: 26px; font-weight: 650; }
.sub { color: var(--muted); margin: 2px 0 0; }
.badge { display: inline-block; padding: 4px 12px; border-radius: 999px; color: #fff;
  font-weight: 600; font-size: 15px; white-space: nowrap; }
.pill { display: inline-block; padding: 1px 9px; border-radius: 999px; color: #fff;
  font-size: 12px; font-weight: 600; white-space: nowrap; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 16px 20px; margin: 16px 0; }
h2 { font-size: 17px; margin: 0 0 12px; }
h3 { font-size: 15px; margin: 0; display: inline; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 12.5px; }
code { background: #eff1f3; padding: 1px 5px; border-radius: 4px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 6px 18px; margin: 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.counts { margin-top: 12px; display: flex; gap: 8px; flex-wrap: wrap; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); }
tbody tr:nth-child(even) { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.id { font-weight: 600; white-space: nowrap; }
td.note { color: var(--muted); overflow-wrap: anywhere; }
.legend { display: flex; gap: 16px; flex-wrap: wrap; color: var(--muted); font-size: 13px;
  margin-bottom: 10px; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 3px;
  vertical-align: -1px; margin-right: 5px; }
.swatch.diamond { transform: rotate(45deg) scale(.8); }
.swatch.dashed { height: 2px; border-radius: 0; border-top: 2px dashed #9aa4ae;
  vertical-align: 3px; }
.chart { overflow-x: auto; }
.chart .caption { color: var(--muted); font-size: 12px; margin-top: 4px; }
svg.gantt { display: block; font-family: inherit; min-width: 760px; }
svg.gantt .row-even { fill: #ffffff; }
svg.gantt .row-odd { fill: #f6f8fa; }
svg.gantt .grid { stroke: #e4e8ec; stroke-width: 1; }
svg.gantt .axis { stroke: #9aa4ae; stroke-width: 1; }
svg.gantt .tick { fill: var(--muted); font-size: 11px; }
svg.gantt .label { fill: var(--ink); font-size: 13px; }
svg.gantt .idle { fill: #9aa4ae; font-size: 12px; font-style: italic; }
svg.gantt .num { fill: #fff; font-size: 11px; font-weight: 600; pointer-events: none; }
svg.gantt .wait { stroke: #9aa4ae; stroke-width: 1.5; stroke-dasharray: 3 3; }
ol.decisions { list-style: none; margin: 0; padding: 0; }
ol.decisions li { padding: 8px 0; border-bottom: 1px solid var(--line); }
ol.decisions li:last-child { border-bottom: 0; }
.when { color: var(--muted); font-variant-numeric: tabular-nums; margin-right: 8px; }
.kind { font-weight: 600; margin-right: 6px; }
pre { background: #16191d; color: #e6edf3; padding: 12px 14px; border-radius: 8px;
  overflow: auto; max-height: 420px; white-space: pre; margin: 10px 0 0; }
pre.diff { background: #f6f8fa; color: var(--ink); border: 1px solid var(--line); }
pre.diff .add { color: #1a7f37; background: #e6ffec; }
pre.diff .del { color: #cf222e; background: #ffebe9; }
table.diagnoses { margin-top: 12px; }
ol.transcript { margin: 8px 0 0; padding-left: 24px; }
ol.transcript li { margin: 6px 0; }
ol.transcript pre { max-height: 240px; margin-top: 4px; }
.error { color: #cf222e; }
div.diagnosis { border-top: 1px solid var(--line); padding: 10px 0; margin-top: 10px; }
div.diagnosis h3 { display: block; margin-bottom: 6px; }
details.failure { border-top: 1px solid var(--line); padding: 10px 0; }
details.failure:first-of-type { border-top: 0; }
details summary { cursor: pointer; }
.why { margin: 6px 0 0; }
.muted { color: var(--muted); }
footer { color: var(--muted); font-size: 12px; text-align: center; }
"""


def html_page(report: Report) -> str:
    return "".join(html_parts(report))


def html_parts(report: Report) -> Iterator[str]:
    """The page in pieces to be written one after the other (``write_reports`` writes
    each as it comes: the page of a 10,000-step run is never held whole)."""
    title = f"{report.workflow}: {report.status} · agentflow report"
    head = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
        _hero(report),
    ]
    yield "\n".join(head)
    yield "\n"
    yield _summary(report)
    yield "\n"
    yield from _timeline_parts(report)
    sections: list[Callable[[Report], str]] = [
        lambda r: curves_section(r.steps),
        _steps,
        _outputs,
        _metrics,
        _artifacts,
        _decisions,
        _model,
        _failures,
        _events,
    ]
    for section in sections:
        if text := section(report):
            yield text
            yield "\n"
    made = escape(clock(report.generated_at, True))
    yield "\n".join(
        [f"<footer>agentflow report · made {made}</footer>", "</main>", "</body>", "</html>"]
    )


def _text(text: str | None) -> str:
    """What a step or the model wrote, printable and escaped."""
    return escape(printable(text, VALUE_LIMIT))


def _pill(status: str, cls: str = "pill", text: str | None = None) -> str:
    label = text or status  # no marks: fonts without the symbols draw boxes
    return f'<span class="{cls}" style="background:{colour(status)}">{escape(label)}</span>'


def _hero(report: Report) -> str:
    return (
        '<header class="hero">'
        f"{_pill(report.status, 'badge')}"
        f"<div><h1>{escape(report.workflow)}</h1>"
        f'<p class="sub">run <code>{escape(report.run_id)}</code></p></div>'
        "</header>"
    )


def _summary(report: Report) -> str:
    took = human_duration(report.duration_s)
    ended = (
        f"{clock(report.finished_at, True)} (took {took})"
        if report.finished_at
        else f"not yet ({took} so far, as of {clock(report.generated_at)})"
    )
    facts: list[tuple[str, str]] = [
        ("status", _pill(report.status) + (f" {_text(report.reason)}" if report.reason else "")),
        (
            "workflow",
            escape(report.workflow)
            + (f" <code>{escape(report.workflow_file)}</code>" if report.workflow_file else ""),
        ),
        ("started", escape(clock(report.created_at, True))),
        ("ended", escape(ended)),
        ("steps", str(len(report.steps))),
    ]
    if report.inputs:
        shown = " ".join(f"<code>{_text(f'{k}={v}')}</code>" for k, v in report.inputs.items())
        facts.append(("inputs", shown))
    if report.status == "orphaned":
        facts.append(("note", "its orchestrator is gone: the steps may still be running in tmux"))
    if report.resume:
        facts.append(("resume", f"<code>{escape(report.resume)}</code>"))
    rows = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    counts = "".join(_pill(s, text=f"{n} {s}") for s, n in report.counts.items())
    return (
        f'<section class="summary"><dl class="facts">{rows}</dl>'
        f'<div class="counts">{counts}</div></section>'
    )


def _timeline_parts(report: Report) -> Iterator[str]:
    """The timeline section, its chart a row at a time."""
    seen = {a.status for s in report.steps for a in s.history}
    legend = [
        f'<span><i class="swatch" style="background:{c}"></i>{escape(status)}</span>'
        for status, c in COLOURS.items()
        if status in seen
    ]
    if any(a.ready_at for s in report.steps for a in s.history):
        legend.append(
            f'<span><i class="swatch diamond" style="background:{READY}"></i>service ready</span>'
        )
    if any(len(s.history) > 1 for s in report.steps):
        legend.append('<span><i class="swatch dashed"></i>waiting to retry</span>')
    caption = f"0 = {escape(clock(report.created_at, True))}; hover a bar for its details"
    yield (
        '<section class="timeline"><h2>Timeline</h2>'
        f'<div class="legend">{"".join(legend)}</div><div class="chart">'
    )
    for i, line in enumerate(gantt_parts(report)):
        yield f"\n{line}" if i else line
    yield f'<div class="caption">{caption}</div></div></section>\n'


def _table(headers: Sequence[str], rows: Iterable[str], cls: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return (
        f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _steps(report: Report) -> str:
    rows = [
        "<tr>"
        f'<td class="id">{escape(s.id)}{_SERVICE if s.service else ""}</td>'
        f"<td>{_pill(s.status)}</td>"
        f'<td class="num">{s.attempts}</td>'
        f'<td class="num">{escape(human_duration(s.time_s))}</td>'
        f'<td class="num">{"" if s.exit_code is None else s.exit_code}</td>'
        f'<td class="note">{escape(_note(s))}</td>'
        "</tr>"
        for s in report.steps
    ]
    headers = ["step", "status", "attempts", "time", "exit", "note"]
    return f"<section><h2>Steps</h2>{_table(headers, rows, 'steps')}</section>"


def _note(s: StepReport) -> str:
    note = one_line(s.message)
    if s.ready_after_s is not None:
        note = f"ready after {human_duration(s.ready_after_s)}" + (f"; {note}" if note else "")
    if s.ports:
        ports = "ports " + ", ".join(f"{k}={v}" for k, v in s.ports.items())
        note = ports + (f"; {note}" if note else "")
    if held := held_by_attempt(s.history):  # the pool's devices each attempt had
        note = held + (f"; {note}" if note else "")
    return note


def _since(report: Report, e: Event) -> str:
    return human_duration((e.ts - report.created_at).total_seconds())


def _outputs(report: Report) -> str:
    rows = [
        f'<tr><td class="id">{escape(s.id)}</td><td>{escape(name)}</td>'
        f"<td><code>{_text(value)}</code></td></tr>"
        for s in report.steps
        for name, value in s.outputs.items()
    ]
    if not rows:
        return ""
    return f"<section><h2>Outputs</h2>{_table(['step', 'output', 'value'], rows)}</section>"


def _metrics(report: Report) -> str:
    rows = []
    for s in report.steps:
        for m in s.metrics:
            status = {"passed": "succeeded", "failed": "failed"}.get(m.result, "pending")
            detail = f" {_text(m.detail)}" if m.detail else ""
            rows.append(
                f'<tr><td class="id">{escape(s.id)}</td><td>{escape(m.name)}</td>'
                f"<td><code>{escape(m.file)}</code>: {escape(m.key)}</td>"
                f"<td>{escape(m.bounds)}</td><td>{_pill(status, text=m.result)}{detail}</td></tr>"
            )
    if not rows:
        return ""
    headers = ["step", "metric", "read from", "must be", "result"]
    return f"<section><h2>Metrics</h2>{_table(headers, rows)}</section>"


def _artifacts(report: Report) -> str:
    rows = []
    for step, a in report.artifacts:
        kept = (
            f"<code>{_text(a.stored)}</code>"
            if a.stored
            else '<span class="muted">recorded only (over the copy limit)</span>'
        )
        rows.append(
            f'<tr><td class="id">{escape(step)}</td><td><code>{_text(a.path)}</code></td>'
            f'<td class="num">{escape(human_size(a.size))}</td>'
            f'<td><code title="{escape(a.sha256)}">{escape(a.sha256[:HASH_SHOWN])}</code></td>'
            f"<td>{kept}</td></tr>"
        )
    if not rows:
        return ""
    headers = ["step", "file", "size", "sha256", "kept as"]
    return (
        f"<section><h2>Artifacts</h2>{_table(headers, rows)}"
        '<p class="muted">Copies are relative to the run\'s folder.</p></section>'
    )


def _decisions(report: Report) -> str:
    items = [_decision(e) for e in report.decisions]
    if not items:
        return ""
    return (
        '<section><h2>Retries and decisions</h2><ol class="decisions">'
        f"{''.join(items)}</ol></section>"
    )


def _decision(e: Event) -> str:
    head, block = split_message(e.message)
    attempt = f" (attempt {e.attempt})" if e.attempt else ""
    text = (
        f'<li><span class="when">{clock(e.ts)}</span>'
        f"<strong>{escape(e.step or 'run')}</strong>{attempt} "
        f'<span class="kind">{escape(e.kind.replace("_", " "))}</span>{escape(head)}'
    )
    if block:
        text += f'<pre class="diff">{_diff_lines(block)}</pre>'
    return text + "</li>"


def _diff_lines(block: str) -> str:
    """A unified diff with its added and removed lines marked (other text as it is)."""
    if "\n@@" not in block:
        return escape(block)
    lines = []
    for line in block.split("\n"):
        kind = ""
        if line.startswith("+") and not line.startswith("+++"):
            kind = "add"
        elif line.startswith("-") and not line.startswith("---"):
            kind = "del"
        lines.append(f'<span class="{kind}">{escape(line)}</span>' if kind else escape(line))
    return "\n".join(lines)


def _model(report: Report) -> str:
    """What the model did and cost: the run's figures, a row per diagnosis, and each
    diagnosis with its transcript (folded)."""
    llm = report.llm
    if not llm.used:
        return ""
    u = llm.usage
    if u.calls or u.tokens:
        facts = [
            ("calls", str(u.calls)),
            ("tokens", escape(spent(u))),
            ("cost", f"{escape(usd(u.cost_usd))} (estimated from list prices)"),
        ]
    else:
        facts = [("tokens", f"{llm.tokens_used:,} (not recorded by kind)")]
    parts = [
        '<section class="model"><h2>Model</h2><dl class="facts">',
        "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts),
        "</dl>",
    ]
    if llm.diagnoses:
        headers = ["step", "attempt", "decision", "calls", "input", "output", "cache read"]
        headers += ["cache write", "cost"]
        parts.append(_table(headers, [_diagnosis_row(d) for d in llm.diagnoses], "diagnoses"))
        parts += [_diagnosis(d) for d in llm.diagnoses]
    parts.append("</section>")
    return "".join(parts)


def _diagnosis_row(d: Diagnosis) -> str:
    u = d.usage
    if u:
        counts = (u.calls, u.input_tokens, u.output_tokens, u.cache_read_tokens)
        cells = [f"{n:,}" for n in (*counts, u.cache_write_tokens)] + [usd(u.cost_usd)]
    else:
        cells = ["", "", "", "", "", "not recorded"]
    attempt = "" if d.attempt is None else str(d.attempt)
    return (
        f'<tr><td class="id">{escape(d.step or "run")}</td><td class="num">{attempt}</td>'
        f"<td>{escape(one_line(d.outcome, 40))}</td>"
        + "".join(f'<td class="num">{escape(c)}</td>' for c in cells)
        + "</tr>"
    )


def _diagnosis(d: Diagnosis) -> str:
    attempt = f" (attempt {d.attempt})" if d.attempt is not None else ""
    shown = "".join(f"<dt>{k}</dt><dd>{escape(v)}</dd>" for k, v in diagnosis_facts(d))
    calls = len(d.transcript)
    transcript = (
        f"<details><summary>transcript: {calls} tool call{'s' if calls != 1 else ''}</summary>"
        f'<ol class="transcript">{"".join(_tool_call(c) for c in d.transcript)}</ol></details>'
        if calls
        else '<p class="muted">(no tool calls recorded)</p>'
    )
    return (
        f'<div class="diagnosis"><h3>{escape(d.step or "run")}{attempt}: '
        f"{escape(one_line(d.outcome, 60))}</h3>"
        f'<dl class="facts">{shown}</dl>{transcript}</div>'
    )


def _tool_call(c: ToolCall) -> str:
    given = one_line(json.dumps(c.input, ensure_ascii=False), INPUT_WIDTH) if c.input else ""
    error = ' <span class="error">error</span>' if c.error else ""
    result = f"<pre>{_text(c.result.rstrip())}</pre>" if c.result.strip() else ""
    shown = f" <code>{escape(given)}</code>" if given else ""
    return f"<li><code>{escape(one_line(c.tool, 80))}</code>{error}{shown}{result}</li>"


def _failures(report: Report) -> str:
    troubled = report.troubled
    if not troubled:
        return ""
    parts = []
    for i, s in enumerate(troubled):
        opened = " open" if i < OPEN_FAILURES else ""
        code = s.exit_code
        said = code is None or f"exit code {code}" in (s.message or "")
        exit_code = "" if said else f" · exit code {code}"
        tail = (
            f"<pre>{escape(s.log_tail)}</pre>"
            if s.log_tail
            else '<p class="muted">(the log is empty)</p>'
        )
        parts.append(
            f'<details class="failure"{opened}><summary><h3>{escape(s.id)}</h3> '
            f"{_pill(s.status)}{escape(exit_code)}</summary>"
            f'<p class="why">{_text(s.message) or escape(s.status)}</p>'
            f'<p class="muted">log: <code>{escape(s.log)}</code> (its last lines)</p>'
            f"{tail}</details>"
        )
    return f"<section><h2>Failed steps</h2>{''.join(parts)}</section>"


def _events(report: Report) -> str:
    if not report.events:
        return ""
    rows = [
        f'<tr><td class="num">{clock(e.ts)}</td>'
        f'<td class="num">+{escape(_since(report, e))}</td>'
        f'<td class="id">{escape(e.step or "run")}</td>'
        f"<td>{escape(event_sentence(e))}</td></tr>"
        for e in report.events
    ]
    table = _table(["time", "since start", "step", "event"], rows)
    return (
        f"<section><h2>Events</h2><details><summary>all {len(rows)} events</summary>"
        f"{table}</details></section>"
    )
