"""How a sweep shows itself: a table of its runs (combination, run, status, current step,
progress, score) redrawn in place on a terminal, one line per start, step and end
otherwise; the same table for ``agentflow status SWEEP``; and what Ctrl-C asks."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from datetime import datetime

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.live import Live
from rich.markup import escape
from rich.prompt import Prompt
from rich.table import Table
from rich.text import Text

from agentflow.cli.app import console
from agentflow.display import STATUS_MARK, STATUS_STYLE, progress_cell
from agentflow.errors import StateError
from agentflow.runner import InterruptChoice
from agentflow.state import RunState, now
from agentflow.store import RunDir, Store
from agentflow.sweep import Member, SweepRecord, follower, label
from agentflow.textsafe import one_line
from agentflow.workflow import format_duration

CHOICES: dict[str, InterruptChoice] = {"s": "stop", "d": "detach", "c": "continue"}


def members_table(record: SweepRecord, states: dict[int, RunState], width: int) -> Table:
    """One row per combination; a started run's current step and progress from its state."""
    objective = record.objective
    table = Table(box=None, pad_edge=False, show_edge=False, expand=False)
    table.add_column("#", justify="right", min_width=1)
    table.add_column("combination", no_wrap=True, max_width=max(12, width // 3))
    table.add_column("status", no_wrap=True, min_width=11)
    table.add_column("steps", justify="right", no_wrap=True, min_width=5)
    # The current step and its progress while a run goes (a finished sweep has none).
    live = any(st.status == "running" for rs in states.values() for st in rs.steps.values())
    if live:
        table.add_column("step", no_wrap=True, max_width=20, overflow="ellipsis")
        table.add_column("progress", no_wrap=True)
    if objective is not None:
        arrow = "↑" if objective.goal == "maximize" else "↓"
        metric = f"{objective.metric} {arrow}"
        table.add_column(metric, justify="right", no_wrap=True, min_width=len(metric))
    # Narrow: no room for ids; each run is <sweep-id>-<#> (see ``runs_note``).
    wide = width >= WIDE
    if wide:
        table.add_column("run", no_wrap=True)
    for m in record.members:
        state = states.get(m.index)
        # A run the record still calls running may have ended since (nobody followed it).
        # (or begun: a launch cut short by Ctrl-C).
        shown = state.status if m.status in ("pending", "running") and state else m.status
        style = STATUS_STYLE.get(shown, "")
        steps, step, progress = "", "", Text("")
        cell: RenderableType = progress
        if state is not None:
            steps = f"{state.count('succeeded')}/{len(state.steps)}"
            busy = [k for k, st in state.steps.items() if st.status == "running"]
            if busy:
                step = busy[0] + (f" +{len(busy) - 1}" if len(busy) > 1 else "")
                cell = progress_cell(state.steps[busy[0]], 12, with_counts=False)
        row: list[RenderableType] = [
            str(m.index),
            label(m.values),
            Text(f"{STATUS_MARK.get(shown, ' ')} {shown}", style=style),
            steps,
        ]
        if live:
            row += [step, cell]
        if objective is not None:
            row.append("" if m.score is None else f"{m.score:g}")
        if wide:
            row.append(m.run_id or "")
        table.add_row(*row)
    return table


WIDE = 120
"""Columns from which the members' table has its run ids."""


def runs_note(record: SweepRecord, width: int) -> Text | None:
    """Under a table without run ids, how they are made."""
    if width >= WIDE:
        return None
    return Text(f"run of #N: {record.sweep_id}-N", style="dim", overflow="ellipsis")


def run_states(store: Store, record: SweepRecord) -> dict[int, RunState]:
    """The started runs' states, read from their directories."""
    states: dict[int, RunState] = {}
    for m in record.members:
        # Exactly this run, never a prefix match: `<id>-1` must not find `<id>-10`.
        path = store.runs / m.run_id if m.run_id else None
        if path is None or not (path / "state.json").is_file():
            continue
        with contextlib.suppress(StateError, OSError):
            states[m.index] = RunDir(path).read_state()
    return states


def shown_status(store: Store, record: SweepRecord) -> str:
    """``orphaned`` for a sweep recorded as running that nobody follows."""
    if record.status == "running" and follower(store.home, record.sweep_id) is None:
        return "orphaned"
    return record.status


def header(record: SweepRecord, status: str | None = None) -> Text:
    done = sum(m.status in ("succeeded", "failed", "blocked", "pruned") for m in record.members)
    running = sum(m.status == "running" for m in record.members)
    text = Text.assemble(
        (f"{record.kind} ", "bold"), (record.sweep_id, "bold cyan"),
        f"  {done}/{record.planned()} done",
    )  # fmt: skip
    if running:
        text.append(f", {running} running")
    if status is not None:
        text.append("  ")
        text.append(status, style=STATUS_STYLE.get(status, "yellow"))
    if record.created_at is not None:
        end = record.finished_at or now()
        text.append(f"  {format_duration(round((end - record.created_at).total_seconds()))}")
    return text


class _Frame:
    def __init__(self, owner: SweepLive) -> None:
        self.owner = owner

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        record = self.owner.record
        yield header(record)
        yield members_table(record, self.owner.states, options.max_width)
        note = runs_note(record, options.max_width)
        if note is not None:
            yield note
        going = next((m.run_id for m in record.members if m.status == "running"), None)
        hint = f"   agentflow attach {going}" if going else ""
        yield Text(f"Ctrl-C: stop, detach or continue{hint}", style="dim", overflow="ellipsis")


class SweepLive:
    """The members' table redrawn in place; lines about the runs are printed above it."""

    def __init__(self, record: SweepRecord, live: bool) -> None:
        self.record = record
        self.states: dict[int, RunState] = {}
        self.live: Live | None = self._new_live() if live else None

    def _new_live(self) -> Live:
        return Live(_Frame(self), console=console, refresh_per_second=2, transient=True)

    def __enter__(self) -> SweepLive:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def update(self, states: dict[int, RunState]) -> None:
        self.states = dict(states)

    def say(self, member: Member, text: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        total = self.record.planned()
        shown = escape(f"{label(member.values)}  {one_line(text)}")
        out = self.live.console if self.live is not None else console
        out.print(f"{stamp}  [{member.index}/{total}] {shown}", highlight=False)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        if self.live is None:
            yield
            return
        self.live.stop()
        try:
            yield
        finally:
            # A fresh Live: a restarted one would move up over lines printed meanwhile.
            self.live = self._new_live()
            self.live.start()

    def ask(self) -> InterruptChoice:
        """Ctrl-C: stop every run, detach (the runs go on), or continue; a second Ctrl-C
        or the end of input detaches."""
        old = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            with self.paused():
                console.print(
                    "\n[bold]Ctrl-C[/]  s: stop every run of the sweep   "
                    "d: detach (the runs go on in tmux)   c: continue watching"
                )
                try:
                    answer = Prompt.ask("What now", choices=list(CHOICES), default="d")
                except (KeyboardInterrupt, EOFError):
                    console.print()
                    return "detach"
            return CHOICES[answer]
        finally:
            signal.signal(signal.SIGINT, old)
