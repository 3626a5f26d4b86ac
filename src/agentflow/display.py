"""How a run shows itself while it goes: a live table on a terminal, plain lines otherwise.

All are ``Observer``s of the runner. ``PlainLines`` writes one line per event with no colour
codes (CI, pipes, and the orchestrator's own log in the run directory); ``LiveTable``
redraws a table of steps in place.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import IO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from agentflow.state import RunState, StepState, now
from agentflow.store import Event
from agentflow.workflow.types import format_duration

STATUS_STYLE = {
    "pending": "dim",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "crashed": "red",
    "timeout": "red",
    "stalled": "red",
    "skipped": "yellow",
    "blocked": "magenta",
    "interrupted": "yellow",
}
STATUS_MARK = {
    "pending": "·",
    "running": "▶",
    "succeeded": "✔",
    "failed": "✘",
    "crashed": "✘",
    "timeout": "✘",
    "stalled": "✘",
    "skipped": "↷",
    "blocked": "⏸",
}


def elapsed(st: StepState, at: datetime | None = None) -> str:
    if st.started_at is None:
        return ""
    end = st.finished_at if st.status != "running" and st.finished_at else (at or now())
    return format_duration(max(0.0, round((end - st.started_at).total_seconds(), 1)))


def describe(event: Event) -> str:
    """An event as a short sentence (no time, no step id)."""
    kind = event.kind
    if kind == "step_started":
        return f"started (attempt {event.attempt})"
    if kind == "step_finished":
        text = event.status or "finished"
        if event.status != "succeeded" and event.message:
            text += f": {event.message}"
        return text
    if kind == "run_finished":
        return f"{event.status}: {event.message}" if event.message else str(event.status)
    words = kind.replace("_", " ").removeprefix("run ").removeprefix("step ")
    return f"{words}: {event.message}" if event.message else words


def plain_line(event: Event) -> str:
    stamp = event.ts.astimezone().strftime("%H:%M:%S")
    who = event.step or "run"
    return f"{stamp}  {who:<20} {describe(event)}"


class PlainLines:
    """One plain line per event, no colour codes."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def event(self, event: Event, state: RunState) -> None:
        self.stream.write(plain_line(event) + "\n")
        self.stream.flush()

    def update(self, state: RunState) -> None:
        return None


class LogFile:
    """The orchestrator's log in the run directory (shown in the run's first tmux window)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def event(self, event: Event, state: RunState) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(plain_line(event) + "\n")

    def update(self, state: RunState) -> None:
        return None


class Observers:
    """Several observers as one."""

    def __init__(self, observers: Iterable[object]) -> None:
        self.observers = list(observers)

    def event(self, event: Event, state: RunState) -> None:
        for o in self.observers:
            o.event(event, state)  # type: ignore[attr-defined]

    def update(self, state: RunState) -> None:
        for o in self.observers:
            o.update(state)  # type: ignore[attr-defined]


def steps_table(state: RunState, order: list[str] | None = None) -> Table:
    """The steps of a run as a table (used live and by ``agentflow status``)."""
    table = Table(box=None, pad_edge=False, show_edge=False, expand=False)
    table.add_column("step", no_wrap=True, max_width=28)
    table.add_column("status", no_wrap=True)
    table.add_column("try", justify="right")
    table.add_column("time", justify="right", no_wrap=True)
    table.add_column("progress", no_wrap=True)
    table.add_column("note", overflow="ellipsis", no_wrap=True, max_width=36)
    at = now()
    for step_id in order or list(state.steps):
        st = state.steps[step_id]
        style = STATUS_STYLE.get(st.status, "")
        mark = STATUS_MARK.get(st.status, " ")
        note = st.message or ("" if st.exit_code in (None, 0) else f"exit {st.exit_code}")
        table.add_row(
            step_id,
            Text(f"{mark} {st.status}", style=style),
            str(st.attempts or ""),
            elapsed(st, at),
            progress_text(st),
            note,
        )
    return table


def progress_text(st: StepState) -> str:
    """``45% 3/8 eta 2m`` for a step whose output shows progress; ``ready`` for a service."""
    if st.status == "running" and st.ready_at is not None:
        return "ready"
    p = st.progress
    if p is None:
        return ""
    fraction = p.fraction
    parts = [f"{fraction:.0%}" if fraction is not None else ""]
    if p.total:
        parts.append(f"{p.done:g}/{p.total:g}")
    if st.status == "running" and p.eta_s is not None:
        parts.append(f"eta {format_duration(round(p.eta_s))}")
    return " ".join(x for x in parts if x)


class _LiveView:
    def __init__(self, owner: LiveTable) -> None:
        self.owner = owner

    def __rich__(self) -> RenderableType:
        state = self.owner.state
        if state is None:
            return Text("")
        header = Text.assemble(
            ("agentflow ", "bold"),
            (state.run_id, "bold cyan"),
            f"   {state.count('succeeded')}/{len(state.steps)} done",
        )
        footer = Text(f"watch: {self.owner.attach_hint}   Ctrl-C: detach", style="dim")
        return Group(header, steps_table(state, self.owner.order), footer)


class LiveTable:
    """A table of steps redrawn in place; events are printed above it."""

    def __init__(self, console: Console, order: list[str], attach_hint: str) -> None:
        self.console = console
        self.order = order
        self.attach_hint = attach_hint
        self.state: RunState | None = None
        self.live = Live(_LiveView(self), console=console, refresh_per_second=2, transient=True)

    def __enter__(self) -> LiveTable:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)
        if self.state is not None:
            self.console.print(steps_table(self.state, self.order))

    def event(self, event: Event, state: RunState) -> None:
        self.state = state
        stamp = event.ts.astimezone().strftime("%H:%M:%S")
        style = STATUS_STYLE.get(event.status or "", "")
        line = Text.assemble((stamp, "dim"), "  ", (f"{event.step or 'run':<20}", "bold"), " ")
        line.append(describe(event), style=style)
        self.live.console.print(line)

    def update(self, state: RunState) -> None:
        self.state = state
