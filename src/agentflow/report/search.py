"""A search's HTML page: the ranked trials, the best ``--set`` command, each input's
importance (bars), the trials as parallel coordinates (an axis per input and one for the
objective, a line per trial), and the pruning metric's curves, a line per trial. Inline
SVG in the style of ``curves`` (no script, no URL)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from agentflow.report.curves import GRID, RUN_COLOURS, Curve, chart_svg
from agentflow.sparkline import short
from agentflow.sweep import Member, SweepRecord, label

PC_WIDTH, PC_HEIGHT = 640, 260
PC_TOP, PC_BOTTOM, PC_SIDE = 24, 30, 48
MUTED = "#adb5bd"


def importance_svg(importances: dict[str, float]) -> str:
    """A horizontal bar per input, longest first."""
    rows = sorted(importances.items(), key=lambda kv: -kv[1])
    height = 22 * len(rows) + 10
    bar_left, bar_w = 140, 300
    parts = [
        f'<svg class="importance" viewBox="0 0 {bar_left + bar_w + 60} {height}" '
        f'width="{bar_left + bar_w + 60}" height="{height}" role="img" '
        'aria-label="importance" style="max-width:100%;height:auto;'
        'font-family:system-ui,sans-serif">'
    ]
    for i, (name, share) in enumerate(rows):
        y = 6 + 22 * i
        parts.append(
            f'<text x="{bar_left - 8}" y="{y + 13}" text-anchor="end" font-size="12" '
            f'fill="#1f2328">{escape(name)}</text>'
            f'<rect class="bar" data-input="{escape(name)}" x="{bar_left}" y="{y}" '
            f'width="{max(1.0, share * bar_w):.1f}" height="16" fill="{RUN_COLOURS[0]}"/>'
            f'<text x="{bar_left + share * bar_w + 6:.1f}" y="{y + 13}" font-size="11" '
            f'fill="#656d76">{share:.2f}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


Ticks = list[tuple[float, str]]


def _axis(values: list[object]) -> tuple[list[float], Ticks]:
    """Positions in [0, 1] for one axis's values, and its ticks: numbers on a linear scale
    (the ends marked), anything else as evenly spaced categories."""
    try:
        numbers = [float(str(v)) for v in values]
    except ValueError:
        cats = sorted({str(v) for v in values})
        at = {c: (i + 0.5) / len(cats) for i, c in enumerate(cats)}
        return [at[str(v)] for v in values], [(at[c], c) for c in cats]
    low, high = min(numbers), max(numbers)
    span = (high - low) or 1.0
    return [(n - low) / span for n in numbers], [(0.0, short(low)), (1.0, short(high))]


def parallel_svg(record: SweepRecord, metric: str, better_high: bool) -> str:
    """A line per trial through an axis per input and the objective's axis (right): the
    scored trials coloured from the worst (light) to the best (dark), pruned ones dashed."""
    shown = [m for m in record.members if m.values and m.status in ("succeeded", "pruned")]
    if len(shown) < 2:
        return ""
    names = list(shown[0].values)
    scored = [m.score for m in shown if m.score is not None]
    columns: list[tuple[str, list[float], Ticks]] = []
    for name in names:
        pos, ticks = _axis([m.values.get(name) for m in shown])
        columns.append((name, pos, ticks))
    if scored:
        low, high = min(scored), max(scored)
        span = (high - low) or 1.0
        pos = [(m.score - low) / span if m.score is not None else -0.06 for m in shown]
        columns.append((metric, pos, [(0.0, short(low)), (1.0, short(high))]))
    plot_h = PC_HEIGHT - PC_TOP - PC_BOTTOM
    gap = (PC_WIDTH - 2 * PC_SIDE) / max(1, len(columns) - 1)

    def y(p: float) -> float:
        return PC_TOP + (1 - p) * plot_h

    parts = [
        f'<svg class="parallel" viewBox="0 0 {PC_WIDTH} {PC_HEIGHT}" width="{PC_WIDTH}" '
        f'height="{PC_HEIGHT}" role="img" aria-label="parallel coordinates" '
        'style="max-width:100%;height:auto;font-family:system-ui,sans-serif">'
    ]
    order = sorted(range(len(shown)), key=lambda i: _rank_key(shown[i], better_high))
    for i in order:  # the best drawn last, on top
        m = shown[i]
        points = " ".join(f"{PC_SIDE + j * gap:.1f},{y(col[1][i]):.1f}" for j, col in
                          enumerate(columns))  # fmt: skip
        if m.score is None:
            colour, extra = MUTED, ' stroke-dasharray="4 3"'
        else:
            share = (m.score - min(scored)) / ((max(scored) - min(scored)) or 1.0)
            share = share if better_high else 1 - share
            colour, extra = _shade(share), ""
        title = f"#{m.index} {label(m.values)}: " + (
            f"{metric} {m.score:g}" if m.score is not None else m.status
        )
        parts.append(
            f'<polyline class="trial" data-status="{escape(m.status)}" points="{points}" '
            f'fill="none" stroke="{colour}" stroke-width="1.6"{extra}>'
            f"<title>{escape(title)}</title></polyline>"
        )
    for j, (name, _, ticks) in enumerate(columns):
        x = PC_SIDE + j * gap
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{PC_TOP}" y2="{PC_TOP + plot_h}" '
            f'stroke="#656d76"/><text x="{x:.1f}" y="{PC_HEIGHT - 8}" text-anchor="middle" '
            f'font-size="12" fill="#1f2328">{escape(name)}</text>'
        )
        for p, tick in ticks:
            parts.append(
                f'<text x="{x + 4:.1f}" y="{y(p) + 4:.1f}" font-size="10" '
                f'fill="#656d76">{escape(tick)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _rank_key(m: Member, better_high: bool) -> float:
    if m.score is None:
        return float("-inf")
    return m.score if better_high else -m.score


def _shade(share: float) -> str:
    """From light (0, the worst) to the report's blue (1, the best)."""
    light, dark = (0xA5, 0xD8, 0xFF), (0x1C, 0x4E, 0xB6)
    rgb = [round(a + (b - a) * share) for a, b in zip(light, dark, strict=True)]
    return "#" + "".join(f"{c:02x}" for c in rgb)


def page(
    record: SweepRecord,
    importances: dict[str, float] | None,
    curves: Sequence[Curve],
    prune_metric: str | None,
) -> str:
    """The whole page."""
    objective = record.objective
    metric = objective.metric if objective else "score"
    better_high = objective is None or objective.goal == "maximize"
    by_index = {m.index: m for m in record.members}
    ranked = [by_index[i] for i in record.ranking if i in by_index] or record.ranked()
    rows = "".join(
        f"<tr><td>{rank}</td><td>{escape(label(m.values))}</td>"
        f"<td>{'' if m.score is None else escape(f'{m.score:g}')}</td>"
        f'<td class="status-{escape(m.status)}">{escape(m.status)}'
        f"{escape(f' ({m.message})') if m.status == 'pruned' and m.message else ''}</td>"
        f"<td>{escape(m.run_id or '')}</td></tr>"
        for rank, m in enumerate(ranked, 1)
    )
    best = record.best()
    best_html = (
        f"<p><b>best:</b> {escape(label(best.values))} ({escape(metric)} {best.score:g})</p>"
        f'<pre style="white-space:pre-wrap;background:#f6f8fa;padding:8px">'
        f"{escape(record.best_command or record.command_for(best))}</pre>"
        if best is not None and best.score is not None
        else "<p>No trial gave the objective.</p>"
    )
    if importances:
        imp = importance_svg(importances)
    else:
        imp = "<p>Too few finished trials to tell which input matters.</p>"
    parallel = parallel_svg(record, metric, better_high) or "<p>Too few trials to draw.</p>"
    curve_html = ""
    if prune_metric and curves:
        chart = chart_svg(f"{prune_metric} per trial", curves)
        curve_html = f"<h2>{escape(prune_metric)}, trial by trial</h2><div {GRID}>{chart}</div>"
    pruned = sum(m.status == "pruned" for m in record.members)
    sid = escape(record.sweep_id)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>search {sid} · agentflow</title>"
        "<style>th{text-align:left}td,th{padding:2px 14px 2px 0;vertical-align:top}</style></head>"
        '<body style="margin:24px;font:14px/1.5 system-ui,sans-serif;color:#1f2328">'
        f'<h1 style="font-size:22px">Search {sid}</h1>'
        f"<p>{len(record.members)} trials of {escape(record.workflow)}, {pruned} pruned; "
        f"status {escape(record.status)}</p>{best_html}"
        f'<h2>Trials</h2><table class="trials">'
        f"<tr><th>#</th><th>values</th>"
        f"<th>{escape(metric)}</th><th>status</th><th>run</th></tr>{rows}</table>"
        f"<h2>Importance</h2>{imp}<h2>Parallel coordinates</h2>{parallel}{curve_html}"
        "</body></html>"
    )
