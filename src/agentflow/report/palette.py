"""The colours of statuses in the HTML report (chart bars, badges, legend)."""

from __future__ import annotations

COLOURS = {
    "succeeded": "#2f9e44",
    "failed": "#e03131",
    "crashed": "#862e9c",
    "timeout": "#f08c00",
    "stalled": "#d9480f",
    "blocked": "#c2255c",
    "running": "#1c7ed6",
    "interrupted": "#868e96",
    "orphaned": "#868e96",
    "unknown": "#868e96",
    "skipped": "#adb5bd",
    "pending": "#ced4da",
}
"""Green for success, warm colours for the ways an attempt goes wrong, blue while
running, greys for what did not run; distinct enough to tell apart side by side."""

READY = "#0b7285"
"""The marker where a service became ready."""


def colour(status: str) -> str:
    return COLOURS.get(status, COLOURS["unknown"])
