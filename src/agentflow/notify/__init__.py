"""Notifications: telling someone that a run ended, failed, or waits for a person.

The runner's events are watched (``Notifying`` wraps the run's observer, on the runner's
thread); a notification worth sending is queued and delivered by a thread of its own, with
retries, so that a slow or dead receiver never holds the runner up. At the end of the run
``Notifier.close`` waits a bounded time for what is still queued. A notification that
cannot be delivered never fails the run: it is an event (``notification_failed``) and a
warning line.

Where: the workflow's ``notify:`` (a webhook, a command) and ``--notify URL``, which is
kept in the run directory (``notify.json``) so that ``resume`` and a detached run's own
orchestrator send to it too. What is sent is masked with the run's redactor; what a step
wrote (messages quoting its log) is made printable and bounded.
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agentflow.errors import first_line
from agentflow.notify.deliver import (
    COMMAND_TIMEOUT,
    DeliveryError,
    Notification,
    post,
    run_command,
    site,
)
from agentflow.notify.targets import Targets, checked_url, remember, remembered, targets_for
from agentflow.redact import Redactor
from agentflow.state import UNSUCCESSFUL, RunState
from agentflow.store import Event, RunDir
from agentflow.textsafe import one_line, printable
from agentflow.verify import tail
from agentflow.workflow.notify import NotifyEvent

if TYPE_CHECKING:
    from agentflow.runner import Observer, Runner
    from agentflow.workflow.model import Workflow

__all__ = [
    "Notification",
    "Notifier",
    "Notifying",
    "Targets",
    "attach",
    "checked_url",
    "finish",
    "remember",
    "remembered",
]

Approve = Callable[[str, str, str], bool]

DELAYS = (1.0, 2.0, 4.0)
"""Seconds before each retry of a delivery that failed: four tries at most."""
CLOSE_WAIT = 20.0
"""Seconds the end of a run waits for notifications still being delivered."""
LOG_LINES = 2
"""How many of a failed step's last log lines a failure notification quotes."""
ASK_NOTICE = 60.0
"""Seconds a question at the terminal (approve a changed command?) waits for an answer
before it is a ``blocked`` notification."""
ASKING = "the model changed a command: a question waits for an answer at the terminal"
MESSAGE_CHARS = 600
"""The longest ``message`` sent (it may quote what a step printed)."""


def attach(runner: Runner, workflow: Workflow) -> tuple[Notifier | None, list[str]]:
    """Have ``runner``'s events notify the run's targets (its observer is wrapped)."""
    run = runner.s.run
    targets, warnings = targets_for(workflow, run, runner.s.workspace)
    if targets is None:
        return None, warnings
    notifier = Notifier(targets, run, runner.redactor)
    runner.observer = Notifying(runner.observer, notifier)
    if runner.s.approve is not None:
        approve = notifier.watching(runner.s.approve, lambda: runner.state)
        runner.s = dataclasses.replace(runner.s, approve=approve)
    return notifier, warnings


@dataclass
class Notifier:
    """Turns the runner's events into notifications and delivers them off its thread."""

    targets: Targets
    run: RunDir
    redactor: Redactor
    delays: tuple[float, ...] = DELAYS
    failures: queue.SimpleQueue[Event] = field(default_factory=queue.SimpleQueue)
    """Failed deliveries not yet shown (the runner's thread shows them)."""
    _queue: queue.Queue[Notification | None] = field(default_factory=queue.Queue)
    ask_notice: float = ASK_NOTICE
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _blocked: set[str] = field(default_factory=set)

    def event(self, event: Event, state: RunState) -> None:
        """On the runner's thread: queue what ``event`` means to the people told."""
        note = self.notification(event, state)
        if note is not None:
            self._send(note)

    def _send(self, note: Notification) -> None:
        if note.event not in self.targets.on:
            return
        with self._lock:  # (the runner's thread, or a question's timer)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="notify", daemon=True)
                self._thread.start()
            self._queue.put(note)

    def watching(self, approve: Approve, state: Callable[[], RunState]) -> Approve:
        """``approve`` (a question to the person at the terminal), with a ``blocked``
        notification when it has waited ``ask_notice`` seconds for an answer: the person
        who started the run may have walked away. An answer at once (``--yes``) sends
        nothing."""

        def asking(step: str, old: str, new: str) -> bool:
            run = state()
            note = Notification(
                text=_text("blocked", run, step, ASKING),
                event="blocked",
                run_id=run.run_id,
                workflow=run.workflow,
                status="running",
                step=step,
                message=ASKING,
                report=str(self.run.path / "report.md"),
            )
            timer = threading.Timer(self.ask_notice, self._send, [note])
            timer.daemon = True
            timer.start()
            try:
                return approve(step, old, new)
            finally:
                timer.cancel()

        return asking

    def notification(self, event: Event, state: RunState) -> Notification | None:
        kind: NotifyEvent
        step = event.step
        message = event.message
        if event.kind == "escalated" and step:
            kind = "blocked"
            self._blocked.add(step)
        elif event.kind == "stall" and step:
            kind = "stall"
        elif event.kind == "run_finished" and event.status == "succeeded":
            kind = "end"
        elif event.kind == "run_finished" and event.status == "failed":
            kind = "failure"
            failed = [
                (k, _with_log_end(s.message, self.run.step_dir(k)))
                for k, s in state.steps.items()
                if s.status in UNSUCCESSFUL
            ]
            message = _joined(failed) or message
            step = failed[0][0] if failed else None
        elif event.kind == "run_finished" and event.status == "blocked":
            blocked = [(k, s.message) for k, s in state.steps.items() if s.status == "blocked"]
            if {k for k, _ in blocked} <= self._blocked:
                return None  # each was told when it blocked
            kind, message = "blocked", _joined(blocked) or message
        else:
            return None
        message = printable(self.redactor(message or ""), MESSAGE_CHARS).strip() or None
        status = event.status if event.kind == "run_finished" else "running"
        return Notification(
            text=_text(kind, state, step, message),
            event=kind,
            run_id=state.run_id,
            workflow=state.workflow,
            status=status or "running",
            step=step,
            message=message,
            report=str(self.run.path / "report.md"),
        )

    def _work(self) -> None:
        while True:
            note = self._queue.get()
            try:
                if note is None:
                    return
                self._deliver(note)
            except Exception as e:  # the thread must live on for the next one
                self.failed(f"warning: the {note.event if note else ''} notification: {e!r}")
            finally:
                self._queue.task_done()

    def _deliver(self, note: Notification) -> None:
        body = note.model_dump_json().encode()
        sends: list[tuple[str, Callable[[], None]]] = [
            (f"webhook {site(url)}", functools.partial(post, url, body))
            for url in self.targets.webhooks
        ]
        if self.targets.command is not None:
            run = functools.partial(
                run_command, self.targets.command, note, self.targets.cwd, COMMAND_TIMEOUT
            )
            sends.append(("command", run))
        for where, send in sends:
            for tries in range(1, len(self.delays) + 2):
                try:
                    send()
                except DeliveryError as e:
                    if e.final or tries > len(self.delays):
                        times = f"{tries} tr{'y' if tries == 1 else 'ies'}"
                        self._failed(note, where, f"{e} (after {times})")
                        break
                    time.sleep(self.delays[tries - 1])
                else:
                    self._record(Event(kind="notified", message=f"{note.event} → {where}"))
                    break

    def _failed(self, note: Notification, where: str, why: str) -> None:
        self.failed(f"warning: the {note.event} notification to {where} failed: {why}", note.step)

    def failed(self, message: str, step: str | None = None) -> None:
        """Record a notification that did not go out, to be shown on the runner's thread."""
        event = Event(kind="notification_failed", step=step, message=self.redactor(message))
        self._record(event)
        self.failures.put(event)

    def _record(self, event: Event) -> None:
        try:
            self.run.append_event(event)
        except Exception:  # (a full disk must not end the delivery thread)
            return

    def close(self, wait: float = CLOSE_WAIT, waiting: Callable[[], None] | None = None) -> None:
        """At the run's end: wait up to ``wait`` seconds for what is queued (``waiting``
        is told when that takes more than a second; Ctrl-C stops waiting). What is still
        undelivered then is recorded as failed (the thread dies with the process)."""
        if self._thread is None:
            return
        self._queue.put(None)
        try:
            self._thread.join(min(1.0, wait))
            if self._thread.is_alive() and waiting is not None:
                waiting()
            self._thread.join(max(0.0, wait - 1.0))
        except KeyboardInterrupt:
            pass
        if self._thread.is_alive():
            self.failed("warning: notifications not delivered yet: agentflow exits without them")


def _joined(items: list[tuple[str, str | None]]) -> str:
    return "; ".join(f"{k}: {one_line(m, 300)}" if m else k for k, m in items)


def _with_log_end(message: str | None, step_dir: Path) -> str | None:
    """A failed step's message and the last lines of its log (the cause, most often):
    ``exit code 2 | python3: can't open file 'trian.py'``."""
    lines = [x.strip() for x in printable(tail(step_dir / "output.log", 4096)).splitlines()]
    end = " | ".join([x for x in lines if x][-LOG_LINES:])
    return " | ".join(x for x in (message, end) if x) or None


def _text(kind: NotifyEvent, state: RunState, step: str | None, message: str | None) -> str:
    """Slack's ``text``: its ``&``, ``<`` and ``>`` escaped, so that what a step wrote
    cannot become a link or a mention (``<!channel>``)."""
    what = f"run {state.run_id} ({state.workflow})"
    said = f": {one_line(message, 300)}" if message else ""
    if kind == "end":
        line = f"✅ agentflow {what} succeeded"
    elif kind == "failure":
        line = f"❌ agentflow {what} failed{said}"
    elif kind == "blocked":
        where = f" at step {step}" if step else ""
        then = f"when sorted out: agentflow resume {state.run_id}"
        line = f"✋ agentflow {what} waits for a person{where}{said}; {then}"
    else:
        line = f"⏳ agentflow {what}: step {step} stalled{said}"
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Notifying:
    """The run's observer, with its events also handed to a ``Notifier``; a failed
    delivery is shown through the observer, on the runner's thread."""

    def __init__(self, inner: Observer, notifier: Notifier) -> None:
        self.inner = inner
        self.notifier = notifier

    def event(self, event: Event, state: RunState) -> None:
        self.inner.event(event, state)
        try:
            self.notifier.event(event, state)
        except Exception as e:  # a notification must never cost the run
            self.notifier.failed(f"warning: no notification of {event.kind}: {first_line(e)}")
        self.show_failures(state)

    def update(self, state: RunState) -> None:
        self.inner.update(state)
        self.show_failures(state)

    def show_failures(self, state: RunState) -> None:
        while True:
            try:
                failed = self.notifier.failures.get_nowait()
            except queue.Empty:
                return
            self.inner.event(failed, state)


def finish(notifier: Notifier | None, observer: object, state: RunState) -> None:
    """The end of a run: wait for the notifications, then show what failed."""
    if notifier is None or not isinstance(observer, Notifying):
        return
    said = f"waiting up to {CLOSE_WAIT:.0f}s for notifications to be delivered (Ctrl-C: skip)"
    notifier.close(
        waiting=lambda: observer.inner.event(Event(kind="notifying", message=said), state)
    )
    observer.show_failures(state)
