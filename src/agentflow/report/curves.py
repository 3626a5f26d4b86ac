"""Metric curves as inline SVG: a chart per metric of a step (``expect.metrics``) in
report.html, and the same with one curve per run in ``compare --html``. No script, no URL:
a polyline per curve on a scaled grid, styled by attributes (the page's CSS is not needed),
with hover titles for the last values."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from agentflow.report.model import StepReport
from agentflow.series import Series
from agentflow.sparkline import short

WIDTH, HEIGHT = 520, 220
LEFT, RIGHT, TOP, BOTTOM = 62, 14, 12, 34
RUN_COLOURS = ("#1c7ed6", "#e8590c", "#2f9e44", "#ae3ec9", "#f08c00", "#0b7285", "#c2255c")
"""One colour per run of a comparison (the first is the single run's colour)."""
TICKS = 5
"""The most intervals between ticks on an axis."""


@dataclass(frozen=True)
class Curve:
    """One line of a chart: a run's (or step's) series of a metric."""

    label: str
    series: Series
    colour: str = RUN_COLOURS[0]


def nice_ticks(low: float, high: float, count: int = TICKS) -> list[float]:
    """Round numbers (1, 2 or 5 times a power of ten apart) from ``low`` to ``high``: at
    most ``count`` intervals."""
    span = high - low
    if span <= 0 or not math.isfinite(span):
        return [low]
    raw = span / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _range(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if high == low:
        pad = abs(low) * 0.1 or 1.0
        return low - pad, high + pad
    pad = (high - low) * 0.05
    return low - pad, high + pad


def chart_svg(title: str, curves: Sequence[Curve]) -> str:
    """A chart of ``curves`` (value against step number) titled ``title``."""
    drawn = [c for c in curves if c.series.points]
    if not drawn:
        return ""
    xs = [p.step for c in drawn for p in c.series.points]
    ys = [p.v for c in drawn for p in c.series.points]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = _range(ys)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(v: float) -> float:
        return LEFT + (v - x0) / (x1 - x0) * plot_w

    def y(v: float) -> float:
        return TOP + (1 - (v - y0) / (y1 - y0)) * plot_h

    parts = [
        f'<svg class="curve-chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
        f'height="{HEIGHT}" role="img" aria-label="{escape(title)}" '
        'style="max-width:100%;height:auto;font-family:system-ui,sans-serif">',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fbfcfd" '
        'stroke="#d8dee4"/>',
    ]
    for t in nice_ticks(y0, y1):
        parts.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(t):.1f}" y2="{y(t):.1f}" '
            f'stroke="#e9ecef"/><text x="{LEFT - 6}" y="{y(t) + 4:.1f}" text-anchor="end" '
            f'font-size="11" fill="#656d76">{escape(short(t))}</text>'
        )
    for t in nice_ticks(x0, x1):
        parts.append(
            f'<text x="{x(t):.1f}" y="{TOP + plot_h + 16}" text-anchor="middle" '
            f'font-size="11" fill="#656d76">{escape(short(t))}</text>'
        )
    parts.append(
        f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 3}" text-anchor="middle" '
        'font-size="11" fill="#656d76">step</text>'
    )
    for c in drawn:
        points = " ".join(f"{x(p.step):.1f},{y(p.v):.1f}" for p in c.series.points)
        last = c.series.points[-1]
        hover = f"{c.label}: {short(last.v)} at step {short(last.step)}"
        parts.append(
            f'<polyline class="curve" data-label="{escape(c.label)}" points="{points}" '
            f'fill="none" stroke="{c.colour}" stroke-width="2" stroke-linejoin="round">'
            f"<title>{escape(hover)}</title></polyline>"
            f'<circle cx="{x(last.step):.1f}" cy="{y(last.v):.1f}" r="3" fill="{c.colour}">'
            f"<title>{escape(hover)}</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _figure(title: str, curves: Sequence[Curve], caption: str) -> str:
    svg = chart_svg(title, curves)
    if not svg:
        return ""
    return (
        '<figure style="margin:0">'
        f'<figcaption style="font-weight:600;margin-bottom:4px">{escape(title)}</figcaption>'
        f'{svg}<div style="color:#656d76;font-size:12px">{escape(caption)}</div></figure>'
    )


def _about(s: Series) -> str:
    last = s.points[-1]
    kept = "" if len(s.points) == s.count else f", {len(s.points)} kept"
    return f"last {short(last.v)} at step {short(last.step)}; {s.count} values{kept}"


GRID = 'style="display:flex;flex-wrap:wrap;gap:18px 28px"'


def curves_section(steps: Sequence[StepReport]) -> str:
    """report.html's "Curves": a chart per metric of each step that follows metrics."""
    figures = [
        _figure(f"{step.id} · {s.name}", [Curve(s.name, s)], _about(s))
        for step in steps
        for s in step.series
        if s.points
    ]
    if not figures:
        return ""
    return f'<section class="curves"><h2>Curves</h2><div {GRID}>{"".join(figures)}</div></section>'


def overlay_page(runs: Sequence[tuple[str, Sequence[StepReport]]]) -> str:
    """``compare --html``: one chart per step and metric, a curve per run (in its colour)."""
    colours = {rid: RUN_COLOURS[i % len(RUN_COLOURS)] for i, (rid, _) in enumerate(runs)}
    keys: list[tuple[str, str]] = []
    for _, steps in runs:
        for step in steps:
            keys += [(step.id, s.name) for s in step.series if (step.id, s.name) not in keys]
    figures = []
    for step_id, name in keys:
        curves = [
            Curve(rid, s, colours[rid])
            for rid, steps in runs
            for step in steps
            if step.id == step_id
            for s in step.series
            if s.name == name
        ]
        lasts = "; ".join(
            f"{c.label}: {short(c.series.points[-1].v)}" for c in curves if c.series.points
        )
        figures.append(_figure(f"{step_id} · {name}", curves, f"last {lasts}"))
    legend = "".join(
        f'<span style="margin-right:16px"><i style="display:inline-block;width:22px;height:3px;'
        f'background:{c};vertical-align:middle;margin-right:6px"></i>{escape(rid)}</span>'
        for rid, c in colours.items()
    )
    body = "".join(f for f in figures if f) or "<p>None of these runs followed a metric.</p>"
    ids = ", ".join(rid for rid, _ in runs)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(f'curves: {ids} · agentflow compare')}</title></head>"
        '<body style="margin:24px;font:14px/1.5 system-ui,sans-serif;color:#1f2328">'
        f'<h1 style="font-size:22px">Curves of {escape(ids)}</h1>'
        f'<div style="margin-bottom:16px">{legend}</div><div {GRID}>{body}</div></body></html>'
    )
