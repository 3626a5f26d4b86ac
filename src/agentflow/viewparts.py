"""Parts of what a run shows on a terminal that the live table and plain lines share: the
steps worth a row when not all fit, the log lines under a failure, the sandbox steps run
in, and the keys that leave a tmux session.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime

from pydantic import JsonValue
from rich.console import Console, Group, RenderableType
from rich.control import Control
from rich.live import Live
from rich.text import Text

from agentflow.state import RunState
from agentflow.textsafe import one_line, printable
from agentflow.workflow.model import Sandbox

CAUSE = "cause"
"""The key of a ``step_finished`` event's data that holds the last meaningful lines of a
failed attempt's log (masked, cleaned: ``report.text.cause_lines``)."""
CAUSE_WIDTH = 200


def cause_of(data: dict[str, JsonValue] | None) -> list[str]:
    """The lines under a failure, from its event's data; cleaned once more (an event may
    have been read back from events.jsonl)."""
    lines = (data or {}).get(CAUSE)
    if not isinstance(lines, list):
        return []
    shown = (printable(x, CAUSE_WIDTH).split("\n")[0] for x in lines[:10] if isinstance(x, str))
    return [x.rstrip() for x in shown]


def sandbox_label(backend: str, config: Sandbox) -> str:
    """Where the steps run, for the live view's header: ``docker (image python:3.12)``,
    ``local``, ``slurm``."""
    if backend == "docker":
        image = config.image or (
            f"built from {config.build.context}/{config.build.dockerfile}" if config.build else ""
        )
        return f"docker (image {one_line(image, 60)})" if image else "docker"
    if backend == "slurm" and config.slurm is not None and config.slurm.partition:
        return f"slurm (partition {one_line(config.slurm.partition, 40)})"
    return one_line(backend, 20)


def detach_keys() -> str:
    """The keys that leave an attached tmux session, as typed at this terminal: inside
    tmux the outer tmux takes the first Ctrl-b, and Ctrl-b Ctrl-b sends one to the inner
    session (a plain Ctrl-b d would detach the outer one)."""
    return "Ctrl-b Ctrl-b d" if os.environ.get("TMUX") else "Ctrl-b d"


def visible_steps(state: RunState, order: list[str], rows: int) -> tuple[list[str], str]:
    """At most ``rows`` steps for a live view, the ones worth seeing first (running, then
    failed or blocked, then the next pending, then the latest finished), in plan order;
    and a line that counts what is left out."""
    if len(order) <= rows:
        return order, ""
    rank = {"running": 0, "failed": 1, "crashed": 1, "timeout": 1, "stalled": 1, "blocked": 1}
    finished_order = sorted(
        (k for k in order if state.steps[k].finished_at is not None),
        key=lambda k: state.steps[k].finished_at or at_epoch,
        reverse=True,
    )
    recency = {k: i for i, k in enumerate(finished_order)}
    pending = [k for k in order if state.steps[k].status == "pending"]

    def priority(k: str) -> tuple[int, int]:
        status = state.steps[k].status
        if status in rank:
            return (rank[status], 0)
        if status == "pending":
            return (2, pending.index(k))
        return (3, recency.get(k, 0))

    chosen = set(sorted(order, key=priority)[:rows])
    hidden: dict[str, int] = {}
    for k in order:
        if k not in chosen:
            status = state.steps[k].status
            hidden[status] = hidden.get(status, 0) + 1
    more = ", ".join(f"{n} {status}" for status, n in hidden.items())
    return [k for k in order if k in chosen], f"… and {more}"


at_epoch = datetime.fromtimestamp(0).astimezone()


class ResizeSafeLive(Live):
    """A live display that starts over on a clean screen when the terminal's size
    changes (attaching to a detached run's tmux window resizes it). Rich redraws by moving
    up over its last frame, which the terminal has wrapped anew by then: the old frame's
    remains would stay above the new one. ``recent`` gives the lines printed above the
    frame, printed again after the screen is cleared."""

    def __init__(
        self, renderable: RenderableType, console: Console, recent: Callable[[], list[Text]]
    ) -> None:
        super().__init__(renderable, console=console, refresh_per_second=2, transient=True)
        self.recent = recent
        self.size = console.size

    def refresh(self) -> None:
        with self._lock:
            size = self.console.size
            if size == self.size or not self.is_started or not self.console.is_terminal:
                self.size = size
                super().refresh()
                return
            self.size = size
            self._live_render._shape = None  # the old frame is gone: move over nothing
            self._live_render.set_renderable(self.renderable)
            self.console.control(Control.clear(), Control.home())
            # Printed through the live display's hook: the lines, then the frame below.
            self.console.print(Group(*self.recent()))
