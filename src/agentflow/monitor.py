"""Sleep-and-check: when the runner next looks at its steps, and how it sleeps until then.

The runner sleeps in ``select`` on three things: the run's wake FIFO (each step's wrapper
writes a line to it right after its exit code, from inside any sandbox, since the FIFO
lives in the mounted steps folder), the pipe of a ``tmux wait-for`` process (which exits
when any window of the run dies, however it dies: the backstop for a wrapper that was
killed), and a self-pipe that signal handlers write to (Ctrl-C, SIGTERM). While nothing
changes, the periodic liveness check backs off, so an idle run costs nothing.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import select
import signal
import stat
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType

from agentflow import history, safefs
from agentflow.state import now
from agentflow.tmux_control import Waiter

# tqdm's bars, recognised without a pattern: "  45/100 [00:12<00:15" and " 45%|####".
# Bounded digits, not after a digit: a step that prints a long run of digits costs a
# linear scan, not a quadratic one (a 64 KiB run took 84 s with `(\d+)/(\d+)`).
_TQDM = (
    re.compile(r"(?<!\d)(\d{1,18})/(\d{1,18}) \["),
    re.compile(r"(?<![\d.])(\d{1,18}(?:\.\d{1,9})?)%\|"),
)
PROGRESS_LINE_BYTES = 1024
"""How much of the end of each line is searched: a pattern only ever sees bounded text."""
READ_LIMIT = 64 * 1024
"""The most new output one check reads (the end of it): a check stays cheap however
much a step prints."""


def parse_progress(text: str, pattern: str | None) -> tuple[float, float | None] | None:
    """The last progress in ``text``: (done, total), or (percent, None) for a percentage.
    Lines (and progress-bar redraws) are searched from the latest, each only in its last
    ``PROGRESS_LINE_BYTES``, so a step's output costs a bounded search whatever it prints."""
    patterns = (re.compile(pattern),) if pattern else _TQDM
    lines = [x for x in re.split(r"[\r\n]", text) if x]
    for line in reversed(lines):
        found = _progress_in(line[-PROGRESS_LINE_BYTES:], patterns)
        if found is not None:
            return found
    return None


def _progress_in(
    line: str, patterns: tuple[re.Pattern[str], ...]
) -> tuple[float, float | None] | None:
    best: tuple[int, tuple[float, float | None]] | None = None
    for regex in patterns:
        for m in regex.finditer(line):
            try:
                groups = [float(g) for g in m.groups()[:2]]
            except (TypeError, ValueError):
                continue
            if not all(math.isfinite(g) for g in groups):
                continue  # "nan", "inf", or more digits than a float holds: no progress
            value = (groups[0], groups[1]) if len(groups) == 2 else (groups[0], None)
            if best is None or m.end() >= best[0]:
                best = (m.end(), value)
    return best[1] if best else None


def eta_seconds(fraction: float | None, elapsed: float) -> float | None:
    """Seconds left at the pace so far."""
    if not fraction or fraction <= 0 or elapsed <= 0:
        return None
    eta = max(0.0, elapsed * (1 - fraction) / fraction)
    return eta if math.isfinite(eta) else None  # 1/10^308 done: no ETA, not infinity


def learned_durations(runs_dir: Path, workflow: str, exclude: str) -> dict[str, float]:
    """The median duration of each step over its latest successful attempts in earlier
    runs of the same workflow under this home (``runs_dir``'s parent): the expected
    duration when the step gives none. Read from the run history (``history.db``); from
    the runs' ``state.json`` files only when the history knows no run of the workflow
    (runs from before it, or a history that cannot be read)."""
    try:
        samples = history.step_durations(runs_dir.parent, workflow, exclude)
    except history.HistoryError:
        samples = None
    if samples is None:
        samples = _durations_from_run_dirs(runs_dir, workflow, exclude)
    return {k: statistics.median(v) for k, v in samples.items() if v}


def _durations_from_run_dirs(runs_dir: Path, workflow: str, exclude: str) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {}
    if not runs_dir.is_dir():
        return {}
    for state_file in runs_dir.glob("*/state.json"):
        if state_file.parent.name == exclude:
            continue
        try:
            data = json.loads(state_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if data.get("workflow") != workflow:
            continue
        for step_id, st in (data.get("steps") or {}).items():
            if st.get("status") != "succeeded" or not st.get("started_at"):
                continue
            try:
                start = datetime.fromisoformat(st["started_at"])
                end = datetime.fromisoformat(st["finished_at"])
            except (KeyError, TypeError, ValueError):
                continue
            samples.setdefault(step_id, []).append((end - start).total_seconds())
    return samples


class StepClock:
    """When to look at one running step next: often while it is young or changing,
    sparser while it is quiet (up to ``longest``). Its end wakes the runner anyway."""

    def __init__(self, expected: float | None, longest: float = 300.0) -> None:
        self.base = 2.0 if expected is None else min(30.0, max(2.0, expected / 100))
        self.longest = max(self.base, longest)
        self.interval = 1.0
        self.next = now() + timedelta(seconds=self.interval)

    def due(self) -> bool:
        return now() >= self.next

    def looked(self, changed: bool) -> None:
        self.interval = self.base if changed else min(self.longest, self.interval * 2)
        self.next = now() + timedelta(seconds=self.interval)


class CheckSchedule:
    """The periodic check of the run as a whole: soon after a change, sparser while
    nothing changes (a backstop: step ends and signals wake the runner directly)."""

    def __init__(self, first: float = 1.0, factor: float = 2.0, longest: float = 30.0) -> None:
        self.first = first
        self.factor = factor
        self.longest = longest
        self.interval = first
        self.last = now()

    def changed(self) -> None:
        """Something happened: check again soon."""
        self.interval = self.first
        self.last = now()

    def next_check(self) -> datetime:
        return self.last + timedelta(seconds=self.interval)

    def checked(self) -> None:
        """A check found nothing new: back off."""
        self.last = now()
        self.interval = min(self.longest, self.interval * self.factor)


def _open_fifo(folder: int, name: str) -> tuple[int, int]:
    """The wake FIFO, read-write (it never reports end-of-file between two writers), and
    -1; or, when something else was swapped in at its name meanwhile, a pipe nobody writes
    to and its write end (no wake-ups by FIFO; the tmux channel still wakes the runner)."""
    flags = os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
    with contextlib.suppress(OSError):
        fd = os.open(name, flags, dir_fd=folder)
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            return fd, -1
        os.close(fd)
    read, write = os.pipe()
    os.set_blocking(read, False)
    return read, write


FIFO_GAP = 0.005
"""The shortest time between two wake-ups by the steps' FIFO (at most 200 a second)."""
NAME_MAX = 256
"""The longest line of the FIFO taken for a step id."""


class Waker:
    """Sleeps until a deadline, a step's end (tmux channel) or a signal, whichever is first."""

    def __init__(self, start_waiter: Callable[[], Waiter], wake_fifo: Path) -> None:
        self._start_waiter = start_waiter
        self._waiter = start_waiter()
        # The steps folder is writable from the sandbox: whatever stands at this name that
        # is not our FIFO (a planted symlink, a folder) is removed, never followed.
        with safefs.open_dir(wake_fifo.parent, []) as folder:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(wake_fifo.name, dir_fd=folder, follow_symlinks=False)
                if not stat.S_ISFIFO(st.st_mode):
                    safefs.remove(folder, wake_fifo.name)
            with contextlib.suppress(FileExistsError):
                os.mkfifo(wake_fifo.name, 0o600, dir_fd=folder)
            self._fifo, self._spare = _open_fifo(folder, wake_fifo.name)
        self._fifo_path = wake_fifo
        self._fifo_woke = 0.0
        self._signal_r, self._signal_w = os.pipe()
        os.set_blocking(self._signal_r, False)
        os.set_blocking(self._signal_w, False)
        self.channel_woke = True
        """Whether the tmux channel rang since the runner last cleared this (a window died
        that had not reported its end: time to look at the windows)."""
        self.interrupted = False
        self.by_ctrl_c = False
        """Whether the last interruption was SIGINT (a person) rather than SIGTERM."""
        self.by_fifo_only = False
        self.by_replies_only = False
        """Whether the last sleep ended by ``replies`` alone (tmux answered the runner)."""
        self.ended: set[str] = set()
        """The step ids the wrappers wrote to the FIFO during the last sleep: a hint of
        which steps ended (written by the steps' side, so only ever a hint)."""
        self._partial = b""
        """Whether the last sleep ended by a step's wrapper alone (it recorded its end):
        nothing else can have happened to a window, which the runner need not look at."""

    def sleep(self, seconds: float, replies: int | None = None) -> None:
        """Sleep; ``replies``: a descriptor that ends the sleep when readable (tmux's
        answers the runner waits for), which, as a wrapper's wake-up, needs no look at
        the windows."""
        deadline = time.monotonic() + max(0, seconds)
        self.ended = set()
        self.by_replies_only = False
        fifo = other = False
        while True:
            channel = self._waiter.fileno()
            fds = [self._fifo, channel, self._signal_r, *([] if replies is None else [replies])]
            ready, _, _ = select.select(fds, [], [], max(0, deadline - time.monotonic()))
            if replies is not None and replies in ready:
                fifo = True  # (as by_fifo_only: nothing else happened)
                if ready == [replies]:
                    self.by_replies_only = True
                    break
            if self._fifo in ready:
                fifo = True
                # Drained a bounded amount, and acted on at most every FIFO_GAP seconds: a
                # step writing to the FIFO without end neither holds nor spins the runner.
                with contextlib.suppress(BlockingIOError):
                    for _ in range(16):
                        chunk = os.read(self._fifo, 65536)
                        if not chunk:
                            break
                        self._names(chunk)
                gap = self._fifo_woke + FIFO_GAP - time.monotonic()
                if gap > 0:
                    time.sleep(gap)
                self._fifo_woke = time.monotonic()
            woke = channel in ready and self._waiter.woke()
            self.channel_woke = self.channel_woke or woke
            if self._signal_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._signal_r, 1024)
            other = other or woke or self._signal_r in ready or not ready
            if woke or self._fifo in ready or self._signal_r in ready or not ready:
                break
            if time.monotonic() >= deadline:
                other = True
                break
        self.by_fifo_only = fifo and not other

    def _names(self, chunk: bytes) -> None:
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        self._partial = self._partial[-NAME_MAX:]  # (a line without end is not kept whole)
        for line in lines:
            if 0 < len(line) <= NAME_MAX:
                self.ended.add(line.decode("utf-8", "replace").strip())

    def wake(self) -> None:
        """End the current sleep at once (from any thread)."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._signal_w, b"\0")

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """While inside, Ctrl-C and SIGTERM set ``interrupted`` and wake the sleeper; the
        runner acts on it between two steps of its loop, never halfway through one."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            self.interrupted = True
            self.by_ctrl_c = signum == signal.SIGINT

        old_fd = signal.set_wakeup_fd(self._signal_w)
        old_term = signal.signal(signal.SIGTERM, handler)
        old_int = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, old_term)
            signal.signal(signal.SIGINT, old_int)
            signal.set_wakeup_fd(old_fd)

    def close(self) -> None:
        self._waiter.close()
        os.close(self._signal_r)
        os.close(self._signal_w)
        os.close(self._fifo)
        if self._spare >= 0:
            os.close(self._spare)
        # Nobody listens any more: wrappers that end from now on skip the wake-up.
        with contextlib.suppress(OSError), safefs.open_dir(self._fifo_path.parent, []) as folder:
            safefs.remove(folder, self._fifo_path.name)
