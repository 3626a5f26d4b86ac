"""The run's timeline as an inline SVG Gantt chart: a row per step, a bar per attempt
coloured by how it ended, a marker where a service became ready, a time axis with ticks.

Drawn at a size that fits the page; it shrinks with a narrow window only down to a
legible minimum (then it scrolls), and rows keep their height for 1 step or 200. Hover
titles give each bar's details without any script.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from html import escape

from agentflow.pool.devices import label
from agentflow.report.model import Attempt, Report, StepReport
from agentflow.report.palette import READY, colour
from agentflow.report.text import clock, human_duration
from agentflow.textsafe import VALUE_LIMIT, printable
from agentflow.workflow.types import format_duration

LABEL_W = 230
CHART_W = 830
PAD_R = 24
ROW_H = 26
BAR_H = 16
AXIS_H = 28
WIDTH = LABEL_W + CHART_W + PAD_R
LABEL_CHARS = 24
MIN_BAR_W = 3.0
"""An attempt of a few milliseconds still shows as a bar."""
BOTTOM_AXIS_ROWS = 12
"""Charts taller than this get the axis at the bottom too."""
_TICK_STEPS = (
    [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30]
    + [60 * m for m in (1, 2, 5, 10, 15, 30)]
    + [3600 * h for h in (1, 2, 3, 6, 12)]
    + [86400 * d for d in (1, 2, 7, 14, 28)]
)
MAX_TICKS = 8


@dataclass(frozen=True)
class Scale:
    """Maps times to x positions."""

    start: datetime
    span_s: float

    def x(self, ts: datetime) -> float:
        offset = (ts - self.start).total_seconds()
        return LABEL_W + max(0.0, min(1.0, offset / self.span_s)) * CHART_W

    def ticks(self) -> list[float]:
        step = next((s for s in _TICK_STEPS if self.span_s / s <= MAX_TICKS), self.span_s)
        count = int(self.span_s / step + 1e-9)
        return [round(i * step, 3) for i in range(count + 1)]


def gantt_svg(report: Report) -> str:
    return "\n".join(gantt_parts(report))


def gantt_parts(report: Report) -> Iterator[str]:
    """The chart's lines (a step's row at a time: the chart of 10,000 steps is written as
    it is made, never held whole)."""
    span = max((report.timeline_end - report.created_at).total_seconds(), 1.0)
    scale = Scale(report.created_at, span)
    rows_h = len(report.steps) * ROW_H
    bottom = len(report.steps) > BOTTOM_AXIS_ROWS
    height = AXIS_H + rows_h + (AXIS_H if bottom else 8)
    live = report.finished_at is None and any(s.status == "running" for s in report.steps)
    # Inline in HTML, an svg element needs no namespace (and the page names no URL).
    yield (
        f'<svg class="gantt" viewBox="0 0 {WIDTH} {height}" '
        f'style="width:100%;max-width:{WIDTH}px;height:auto" role="img" '
        f'aria-label="timeline of {len(report.steps)} steps">'
    )
    yield from _grid(scale, AXIS_H, rows_h, bottom)
    for i, step in enumerate(report.steps):
        yield from _row(step, i, AXIS_H + i * ROW_H, scale, report.timeline_end)
    if live:
        x = scale.x(report.timeline_end)
        yield (
            f'<line class="now" x1="{x:.1f}" y1="{AXIS_H - 6}" x2="{x:.1f}" '
            f'y2="{AXIS_H + rows_h}" stroke="{colour("running")}" stroke-dasharray="3 3"/>'
            f'<text x="{x - 4:.1f}" y="{AXIS_H - 8}" text-anchor="end" class="tick">now</text>'
        )
    yield "</svg>"


def _grid(scale: Scale, top: int, rows_h: int, bottom: bool) -> list[str]:
    parts = []
    for t in scale.ticks():
        x = LABEL_W + t / scale.span_s * CHART_W
        label = "0" if t == 0 else format_duration(t)
        parts.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + rows_h}" class="grid"/>'
            f'<text x="{x:.1f}" y="{top - 9}" text-anchor="middle" class="tick">{label}</text>'
        )
        if bottom:
            parts.append(
                f'<text x="{x:.1f}" y="{top + rows_h + 18}" text-anchor="middle" '
                f'class="tick">{label}</text>'
            )
    parts.append(
        f'<line x1="{LABEL_W}" y1="{top}" x2="{LABEL_W + CHART_W}" y2="{top}" class="axis"/>'
    )
    return parts


def _row(step: StepReport, index: int, y: int, scale: Scale, end: datetime) -> list[str]:
    mid = y + ROW_H / 2
    shade = "row-even" if index % 2 == 0 else "row-odd"
    name = step.id if len(step.id) <= LABEL_CHARS else step.id[: LABEL_CHARS - 1] + "…"
    parts = [
        f'<g class="step" data-step="{escape(step.id)}">',
        f'<rect class="{shade}" x="0" y="{y}" width="{WIDTH}" height="{ROW_H}"/>',
        f'<circle cx="12" cy="{mid:.1f}" r="5" fill="{colour(step.status)}">'
        f"<title>{escape(step.status)}</title></circle>",
        f'<text x="24" y="{mid + 4:.1f}" class="label">'
        f"<title>{escape(step.id)}: {escape(step.status)}</title>{escape(name)}</text>",
    ]
    if not step.history:
        parts.append(
            f'<text x="{LABEL_W + 6}" y="{mid + 4:.1f}" class="idle">{escape(step.status)}</text>'
        )
    for before, after in zip(step.history, step.history[1:], strict=False):
        # The wait between two attempts (back-off, a decision, a resume).
        x1 = scale.x(before.finished_at or after.started_at)
        x2 = scale.x(after.started_at)
        if x2 - x1 > 1:
            parts.append(
                f'<line class="wait" x1="{x1:.1f}" y1="{mid:.1f}" x2="{x2:.1f}" y2="{mid:.1f}">'
                "<title>waiting to try again</title></line>"
            )
    for attempt in step.history:
        parts += _bar(step, attempt, mid, scale, end)
    parts.append("</g>")
    return parts


def _bar(step: StepReport, a: Attempt, mid: float, scale: Scale, end: datetime) -> list[str]:
    x1 = scale.x(a.started_at)
    x2 = scale.x(a.finished_at or end)
    width = max(MIN_BAR_W, x2 - x1)
    x1 = min(x1, LABEL_W + CHART_W - width)
    top = mid - BAR_H / 2
    took = human_duration(((a.finished_at or end) - a.started_at).total_seconds())
    detail = f"{step.id} attempt {a.number}: {a.status}"
    if a.exit_code is not None:
        detail += f", exit {a.exit_code}"
    if held := label(a.gpus, a.cpus):
        detail += f", {held}"
    detail += f"\n{clock(a.started_at)} – {clock(a.finished_at) or 'now'} ({took})"
    if a.message:
        detail += f"\n{printable(a.message, VALUE_LIMIT)}"
    parts = [
        f'<rect class="bar" data-step="{escape(step.id)}" data-attempt="{a.number}" '
        f'data-status="{escape(a.status)}" x="{x1:.1f}" y="{top:.1f}" width="{width:.1f}" '
        f'height="{BAR_H}" rx="3" fill="{colour(a.status)}"><title>{escape(detail)}</title></rect>'
    ]
    if width >= 26:
        parts.append(f'<text x="{x1 + 5:.1f}" y="{mid + 4:.1f}" class="num">#{a.number}</text>')
    if a.ready_at is not None:
        parts.append(_ready_marker(step, a, scale.x(a.ready_at), mid))
    return parts


def _ready_marker(step: StepReport, a: Attempt, x: float, mid: float) -> str:
    r = BAR_H / 2 + 2
    waited = (
        human_duration(max(0.0, (a.ready_at - a.started_at).total_seconds())) if a.ready_at else ""
    )
    points = (
        f"{x:.1f},{mid - r:.1f} {x + r:.1f},{mid:.1f} {x:.1f},{mid + r:.1f} {x - r:.1f},{mid:.1f}"
    )
    return (
        f'<polygon class="ready" points="{points}" fill="{READY}" stroke="#fff" stroke-width="1.5">'
        f"<title>{escape(step.id)} ready at {clock(a.ready_at)} (after {waited})</title></polygon>"
    )
