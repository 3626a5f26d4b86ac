"""How a run shows itself while it goes: a live table on a terminal, plain lines otherwise.

All are ``Observer``s of the runner. ``PlainLines`` writes one line per event with no colour
codes (CI, pipes, and the orchestrator's own log in the run directory); ``LiveTable``
redraws a table of steps in place.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from agentflow.pool.devices import held_in, label
from agentflow.sparkline import metric_table
from agentflow.state import UNSUCCESSFUL, RunState, StepState, now
from agentflow.store import Event
from agentflow.textsafe import MESSAGE_LIMIT, VALUE_LIMIT, one_line, printable
from agentflow.verify import tail
from agentflow.viewparts import ResizeSafeLive, cause_of, visible_steps
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
    "ended": "yellow",
    "pruned": "blue",
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
    "ended": "■",
    "pruned": "✂",
}


def shown_status(st: StepState) -> str:
    """The step's status; ``ended`` for a running one whose exit code is written but not
    yet recorded (``ondisk``: nobody watched it end)."""
    return "ended" if st.status == "running" and st.exit_code is not None else st.status


def elapsed(st: StepState, at: datetime | None = None) -> str:
    if st.started_at is None:
        return ""
    end = st.finished_at if shown_status(st) != "running" and st.finished_at else (at or now())
    return format_duration(max(0.0, round((end - st.started_at).total_seconds(), 1)))


def describe(event: Event) -> str:
    """An event as a short sentence (no time, no step id), printable: its message may
    quote what a step wrote (an output value, a line of its log, a file's content)."""
    kind = event.kind
    message = printable(event.message, MESSAGE_LIMIT).rstrip("\n")
    if kind == "step_started":
        held = label(*held_in(event.data))
        return f"started (attempt {event.attempt}{', ' + held if held else ''})"
    if kind == "step_finished":
        text = event.status or "finished"
        if event.status != "succeeded" and message:
            text += f": {message}"
        return text
    if kind == "run_finished":
        return f"{event.status}: {message}" if message else str(event.status)
    if kind == "step_cached":  # its message is the sentence: "cached from RUN"
        return message or "cached"
    words = kind.replace("_", " ").removeprefix("run ").removeprefix("step ")
    return f"{words}: {message}" if message else words


CONTINUED = " " * 10 + "│ "
"""Starts each further line of an event's message (a proposed diff, a value with line
breaks) in plain lines: no such line can pass for an event of its own."""


def plain_line(event: Event) -> str:
    """The event's line; under a failure, the last meaningful lines of its log."""
    stamp = event.ts.astimezone().strftime("%H:%M:%S")
    who = event.step or "run"
    first, *more = describe(event).split("\n")
    more += [f"  {x}" for x in cause_of(event.data)]
    return "\n".join([f"{stamp}  {who:<20} {first}", *(CONTINUED + x for x in more)])


class PlainLines:
    """One plain line per event, no colour codes. Under GitHub Actions (``github``), each
    finished attempt's output follows in a folded group, and when the run ends, each step
    that ended unsuccessful (after its retries) becomes an ``::error`` annotation on the
    job's summary (a blocked one a ``::warning``)."""

    def __init__(
        self, stream: IO[str], *, github: bool = False, steps_dir: Path | None = None
    ) -> None:
        self.stream = stream
        self.github = github
        self.steps_dir = steps_dir

    def event(self, event: Event, state: RunState) -> None:
        self.stream.write(_ci_inert(plain_line(event)) + "\n")
        if self.github and event.kind == "step_finished" and event.step:
            self._github_group(event, state)
        if self.github and event.kind in ("run_finished", "run_stopped"):
            self._github_annotations(state)
        self.stream.flush()

    def _github_group(self, event: Event, state: RunState) -> None:
        step = event.step or ""
        if self.steps_dir is None:
            return
        title = f"{step}: {event.status} (attempt {event.attempt}, {elapsed(state.steps[step])})"
        output = tail(self.steps_dir / step / "output.log", GITHUB_LOG_BYTES)
        lines = printable(output).split("\n")
        if lines and not lines[-1]:
            lines.pop()
        if len(output.encode()) >= GITHUB_LOG_BYTES:
            lines = [f"… (earlier output: agentflow logs {state.run_id} {step})", *lines[1:]]
        # The step's lines stay text, whatever they look like: GitHub ignores workflow
        # commands between stop-commands and its token, which the step cannot know.
        token = secrets.token_hex(16)
        body = [f"::stop-commands::{token}", *lines, f"::{token}::"]
        self.stream.write("\n".join([f"::group::{title}", *body, "::endgroup::"]) + "\n")

    def _github_annotations(self, state: RunState) -> None:
        for step, st in state.steps.items():
            title = _gh_escape(f"step {step}", True)
            note = printable(st.message, VALUE_LIMIT)
            if st.status in UNSUCCESSFUL:
                why = _gh_escape(f"{st.status}: {note}".strip(": "))
                self.stream.write(f"::error title={title}::{why}\n")
            elif st.status == "blocked":
                self.stream.write(f"::warning title={title}::{_gh_escape(note)}\n")

    def update(self, state: RunState) -> None:
        return None


GITHUB_LOG_BYTES = 64 * 1024
"""How much of a finished step's output goes into its folded group (the end of it)."""


def _gh_escape(text: str, in_property: bool = False) -> str:
    """GitHub's workflow-command escaping (a message may span lines)."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if in_property else text


def _ci_inert(lines: str) -> str:
    """Plain lines that CI systems read as text: GitHub Actions takes ``##[command]``
    anywhere in a line for a workflow command (its older form; ``::`` starts one only at
    a line's start, which ``plain_line`` never leaves to a message), Azure Pipelines
    ``##vso[command]``."""
    return _CI_COMMAND.sub("# #", lines)


_CI_COMMAND = re.compile(r"##(?=\[|vso\[)")


class LogFile:
    """The orchestrator's log in the run directory (shown in the run's first tmux window)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        """Opened at the first event and kept: an open and a close for every event cost
        the orchestrator more than the line (measured at 10,000 steps)."""

    def event(self, event: Event, state: RunState) -> None:
        if self._fd is None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            self._fd = os.open(self.path, flags, 0o600)
            weakref.finalize(self, os.close, self._fd)
        os.write(self._fd, (plain_line(event) + "\n").encode("utf-8", errors="replace"))

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


def steps_table(
    state: RunState,
    order: list[str] | None = None,
    *,
    last_lines: dict[str, str] | None = None,
    width: int | None = None,
) -> Table:
    """The steps of a run as a table (used live and by ``agentflow status``): status,
    attempt, elapsed time, a progress bar with ETA where progress is known, and the last
    line of output of running steps (else the step's note). ``width`` narrows it: below
    100 columns the bar is shorter and the attempt column goes (a retry shows in status)."""
    narrow = width is not None and width < 100
    table = Table(box=None, pad_edge=False, show_edge=False, expand=width is not None)
    table.add_column("step", no_wrap=True, max_width=20 if narrow else 32, overflow="ellipsis")
    table.add_column("status", no_wrap=True)
    if not narrow:
        table.add_column("try", justify="right")
    table.add_column("time", justify="right", no_wrap=True)
    steps = order or list(state.steps)
    # Where steps draw GPUs or CPUs from the pool: which ones each (latest) attempt had.
    pooled = any(state.steps[k].gpus or state.steps[k].cpus for k in steps)
    if pooled:
        table.add_column("devices", no_wrap=True)
    table.add_column("progress", no_wrap=True)
    table.add_column("output" if last_lines is not None else "note", no_wrap=True,
                     overflow="ellipsis", ratio=1, min_width=8)  # fmt: skip
    at = now()
    for step_id in steps:
        st = state.steps[step_id]
        shown = shown_status(st)
        style = STATUS_STYLE.get(shown, "")
        status = f"{STATUS_MARK.get(shown, ' ')} {shown}"
        if narrow and st.attempts > 1:
            status += f" #{st.attempts}"
        note = one_line(st.message) or ("" if st.exit_code in (None, 0) else f"exit {st.exit_code}")
        last = (last_lines or {}).get(step_id, "") if shown == "running" else ""
        cells: list[RenderableType] = [step_id, Text(status, style=style)]
        if not narrow:
            cells.append(str(st.attempts or ""))
        cells.append(elapsed(st, at))
        if pooled:
            cells.append(label(st.gpus, st.cpus) if shown != "pending" else "")
        cells += [
            progress_cell(st, 8 if narrow else 16, with_counts=not narrow),
            Text(last, style="dim") if last else Text(note),
        ]
        table.add_row(*cells)
    return table


def progress_cell(st: StepState, bar_width: int, *, with_counts: bool) -> RenderableType:
    """A bar and ``45% eta 2m`` for a running step whose output shows progress; where a
    step that did not succeed got to; nothing for one that did (its status says it)."""
    fraction = st.progress.fraction if st.progress is not None else None
    if st.status == "succeeded":
        return Text("")
    if shown_status(st) != "running" or fraction is None or st.ready_at is not None:
        return Text(progress_text(st, with_counts=with_counts))
    grid = Table.grid(padding=(0, 1))
    grid.add_row(
        ProgressBar(total=1.0, completed=fraction, width=bar_width),
        Text(progress_text(st, with_counts=False)),
    )
    return grid


def progress_text(st: StepState, *, with_counts: bool = True) -> str:
    """``45% 3/8 eta 2m`` for a step whose output shows progress; ``ready`` for a service."""
    if st.status == "running" and st.ready_at is not None:
        return "ready" + "".join(f" :{port}" for port in st.ports.values())
    p = st.progress
    if p is None:
        return ""
    fraction = p.fraction
    parts = [f"{fraction:.0%}" if fraction is not None else ""]
    if p.total and with_counts:
        parts.append(f"{p.done:g}/{p.total:g}")
    if st.status == "running" and p.eta_s is not None:
        parts.append(f"eta {format_duration(round(p.eta_s))}")
    return " ".join(x for x in parts if x)


def last_line(log: Path) -> str:
    """The last line a step printed, as a terminal would show it: after the last carriage
    return (progress bars redraw a line), without escape sequences or control characters."""
    for line in reversed(printable(tail(log, 2048)).split("\n")):
        shown = line.replace("\t", " ").strip()
        if shown:
            return shown
    return ""


class _LiveView:
    def __init__(self, owner: LiveTable) -> None:
        self.owner = owner

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        owner, state = self.owner, self.owner.state
        if state is None:
            return
        width = options.max_width
        done = state.count("succeeded")
        header = Text.assemble(
            ("agentflow ", "bold"), (state.run_id, "bold cyan"), f"  {done}/{len(state.steps)} done"
        )
        running = state.count("running")
        if running:
            header.append(f", {running} running")
        header.append(f"  {format_duration(round((now() - state.created_at).total_seconds()))}")
        if owner.sandbox:
            header.append(f"  {owner.sandbox}", style="dim")
        yield header
        metrics = metric_table(state, owner.order)  # sparklines of expect.metrics
        spark = metrics.row_count if metrics else 0
        rows = max(3, (options.height or console.height) - 4 - spark)
        order, more = visible_steps(state, owner.order, rows)
        lines = {k: owner.last_line(k) for k in order if state.steps[k].status == "running"}
        yield steps_table(state, order, last_lines=lines, width=width)
        if metrics:
            yield metrics
        if more:
            yield Text(more, style="dim")
        yield Text(owner.footer, style="dim", overflow="ellipsis")


class LiveTable:
    """A table of steps redrawn in place; events are printed above it. Rich redraws by
    moving the cursor over the previous frame (no clearing): no flicker."""

    def __init__(
        self,
        console: Console,
        order: list[str],
        attach_hint: str,
        steps_dir: Path | None = None,
        footer: str | None = None,
    ) -> None:
        self.console = console
        self.order = order
        self.attach_hint = attach_hint
        self.steps_dir = steps_dir
        self.footer = footer or f"{attach_hint} [STEP]   Ctrl-C: stop or detach"
        """What the keys do, under the table (a detached run's view says its own)."""
        self.sandbox = ""
        """Where the steps run (``docker (image …)``, ``local``), for the header."""
        self.state: RunState | None = None
        self.recent: deque[Text] = deque(maxlen=100)
        """The latest lines printed above the table (printed again after a resize)."""
        self.live = self._new_live()

    def _new_live(self) -> Live:
        return ResizeSafeLive(_LiveView(self), self.console, lambda: list(self.recent))

    def last_line(self, step_id: str) -> str:
        if self.steps_dir is None:
            return ""
        return last_line(self.steps_dir / step_id / "output.log")

    def __enter__(self) -> LiveTable:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)
        if self.state is not None:
            self.console.print(steps_table(self.state, self.order, width=self.console.width))
            if metrics := metric_table(self.state, self.order):
                self.console.print(metrics)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Stop redrawing while a question is asked below the table."""
        self.live.stop()
        try:
            yield
        finally:
            # A fresh Live: a restarted one would first move up over the old frame's
            # height, erasing the lines printed in between.
            self.live = self._new_live()
            self.live.start()

    def event(self, event: Event, state: RunState) -> None:
        self.state = state
        stamp = event.ts.astimezone().strftime("%H:%M:%S")
        style = STATUS_STYLE.get(event.status or "", "")
        line = Text.assemble((stamp, "dim"), "  ", (f"{event.step or 'run':<20}", "bold"), " ")
        line.append(describe(event), style=style)
        lines = [line, *(Text(f"{' ' * 10}│ {x}", style="dim") for x in cause_of(event.data))]
        self.recent.extend(lines)
        self.live.console.print(Group(*lines))

    def update(self, state: RunState) -> None:
        self.state = state
