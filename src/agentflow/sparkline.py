"""Metric series as sparklines (``loss ▇▅▃▂▂▁ 0.2241``) for the live view and ``status``,
from the short form the checkpoint keeps of each series."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from rich.table import Table
from rich.text import Text

from agentflow.state import RunState

BARS = "▁▂▃▄▅▆▇█"
MAX_LINES = 6
"""The most metric lines shown under the table (a screen has other things to show)."""


def sparkline(values: Sequence[float]) -> str:
    """One bar per value, from the lowest (▁) to the highest (█) of them."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    low, high = min(finite), max(finite)
    span = high - low
    top = len(BARS) - 1
    return "".join(
        BARS[0 if span == 0 or not math.isfinite(v) else round((v - low) / span * top)]
        for v in values
    )


def short(value: float) -> str:
    """A value in a few characters: ``0.2241``, ``1.235e+06``."""
    return f"{value:.4g}"


def metric_table(state: RunState, order: Iterable[str] | None = None) -> Table | None:
    """A line per metric of the steps in ``order`` (all), at most ``MAX_LINES``: the step,
    the metric, its sparkline and last value; None when no step follows a metric."""
    table = Table.grid(padding=(0, 1))
    shown = 0
    for step_id in order or list(state.steps):
        for name, m in state.steps[step_id].metrics.items():
            if shown == MAX_LINES:
                return table
            table.add_row(
                Text(step_id, style="bold"),
                Text(name),
                Text(sparkline(m.shape), style="cyan"),
                Text(short(m.last)),
            )
            shown += 1
    return table if shown else None
