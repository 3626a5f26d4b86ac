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

import functools
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from agentflow.errors import UsageError
from agentflow.redact import Redactor
from agentflow.state import UNSUCCESSFUL, RunState
from agentflow.store import Event, RunDir
from agentflow.textsafe import one_line, printable
from agentflow.verify import tail
from agentflow.workflow.notify import DEFAULT_ON, ENV_REF, NotifyEvent

if TYPE_CHECKING:
    from agentflow.runner import Observer, Runner
    from agentflow.workflow.model import Workflow

NOTIFY_FILE = "notify.json"
"""In the run directory: the ``--notify`` URL given to ``run``, ``resume`` or ``rerun``."""

DELAYS = (1.0, 2.0, 4.0)
"""Seconds before each retry of a delivery that failed: four tries at most."""
REQUEST_TIMEOUT = 5.0
"""Seconds a webhook may take to answer one request."""
COMMAND_TIMEOUT = 30.0
"""Seconds a notification command may run."""
CLOSE_WAIT = 20.0
"""Seconds the end of a run waits for notifications still being delivered."""
LOG_LINES = 2
"""How many of a failed step's last log lines a failure notification quotes."""
MESSAGE_CHARS = 600
"""The longest ``message`` sent (it may quote what a step printed)."""


class Notification(BaseModel):
    """What is sent: the webhook's JSON body, the command's standard input."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str
    """One line for people (Slack's ``text``)."""
    event: NotifyEvent
    run_id: str
    workflow: str
    status: str
    """The run's status: ``succeeded``, ``failed``, ``blocked``, or ``running``."""
    step: str | None = None
    message: str | None = None
    report: str
    """The run's report (written when the run ends)."""


@dataclass(frozen=True)
class Targets:
    """Where notifications go, and which events are wanted."""

    webhooks: tuple[str, ...] = ()
    command: str | None = None
    on: frozenset[NotifyEvent] = frozenset(DEFAULT_ON)
    cwd: Path = Path()
    """Where the command runs: the workflow's folder."""


def checked_url(url: str | None) -> str | None:
    """``--notify``'s value, checked before anything is made."""
    if url is not None and not re.match(r"^https?://[^\s/]+", url):
        raise UsageError(f"{url!r} is not an http:// or https:// URL")
    return url


def remember(run: RunDir, url: str) -> None:
    """Keep a ``--notify`` URL with the run (private: a webhook's URL is a credential)."""
    checked_url(url)
    path = run.path / NOTIFY_FILE
    tmp = path.with_name(f".{NOTIFY_FILE}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"webhook": url}, f)
    tmp.replace(path)


def remembered(run: RunDir) -> str | None:
    try:
        data = json.loads((run.path / NOTIFY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    url = data.get("webhook") if isinstance(data, dict) else None
    return url if isinstance(url, str) else None


def targets_for(workflow: Workflow, run: RunDir, cwd: Path) -> tuple[Targets | None, list[str]]:
    """The run's targets (None: nobody to tell) and warnings about them."""
    cfg = workflow.notify
    warnings: list[str] = []
    hooks: list[str] = []
    if cfg is not None and cfg.webhook is not None:
        ref = ENV_REF.match(cfg.webhook)
        url = os.environ.get(ref.group(1), "") if ref else cfg.webhook
        if url.startswith(("http://", "https://")):
            hooks.append(url)
        else:
            name = ref.group(1) if ref else cfg.webhook
            warnings.append(f"notify.webhook: {name} is not set to an http(s) URL: not used")
    cli = remembered(run)
    if cli is not None and cli not in hooks:
        hooks.append(cli)
    command = cfg.command if cfg is not None else None
    if not hooks and command is None:
        return None, warnings
    on = frozenset(cfg.on) if cfg is not None else frozenset(DEFAULT_ON)
    return Targets(tuple(hooks), command, on, cwd), warnings


def attach(runner: Runner, workflow: Workflow) -> tuple[Notifier | None, list[str]]:
    """Have ``runner``'s events notify the run's targets (its observer is wrapped)."""
    run = runner.s.run
    targets, warnings = targets_for(workflow, run, runner.s.workspace)
    if targets is None:
        return None, warnings
    notifier = Notifier(targets, run, runner.redactor)
    runner.observer = Notifying(runner.observer, notifier)
    return notifier, warnings


def site(url: str) -> str:
    """A webhook named without its path and query (which may be its secret)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")


class DeliveryError(Exception):
    """One try failed; ``final``: trying again will not help (the receiver refused)."""

    def __init__(self, why: str, final: bool = False) -> None:
        super().__init__(why)
        self.final = final


def post(url: str, body: bytes, timeout: float = REQUEST_TIMEOUT) -> None:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "agentflow"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            answer.read(4096)
    except urllib.error.HTTPError as e:
        # A client error other than "too many" or "too slow" will not change on a retry.
        final = 400 <= e.code < 500 and e.code not in (408, 429)
        raise DeliveryError(f"HTTP {e.code}", final) from None
    except (urllib.error.URLError, OSError) as e:
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        raise DeliveryError(str(getattr(reason, "strerror", None) or reason)) from None


def run_command(command: str, note: Notification, cwd: Path, timeout: float) -> None:
    """The author's command on this machine: the notification in its environment and on
    its standard input, never on its command line (a step's words are no shell code)."""
    env = {**os.environ, **{f"AGENTFLOW_{k.upper()}": v for k, v in _fields(note).items()}}
    try:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own group: a timeout ends what it started too
        )
    except OSError as e:
        raise DeliveryError(f"cannot start: {e.strerror}") from None
    try:
        _, err = proc.communicate(note.model_dump_json().encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise DeliveryError(f"still running after {timeout:.0f}s: killed") from None
    if proc.returncode != 0:
        last = printable(err.decode(errors="replace")).strip().splitlines()
        raise DeliveryError(f"exit code {proc.returncode}" + (f": {last[-1]}" if last else ""))


def _fields(note: Notification) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in note.model_dump().items()}


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
    _thread: threading.Thread | None = None
    _blocked: set[str] = field(default_factory=set)

    def event(self, event: Event, state: RunState) -> None:
        """On the runner's thread: queue what ``event`` means to the people told."""
        note = self.notification(event, state)
        if note is None or note.event not in self.targets.on:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="notify", daemon=True)
            self._thread.start()
        self._queue.put(note)

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
        message = self.redactor(f"warning: the {note.event} notification to {where} failed: {why}")
        event = Event(kind="notification_failed", step=note.step, message=message)
        self._record(event)
        self.failures.put(event)

    def _record(self, event: Event) -> None:
        try:
            self.run.append_event(event)
        except Exception:  # (a full disk must not end the delivery thread)
            return

    def close(self, wait: float = CLOSE_WAIT) -> None:
        """At the run's end: wait up to ``wait`` seconds for what is queued. What is still
        undelivered then is recorded as failed (the thread dies with the process)."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(wait)
        if self._thread.is_alive():
            left = self._queue.qsize()
            message = (
                f"warning: notifications still undelivered after {wait:.0f}s "
                f"({left} more queued): agentflow exits without them"
            )
            event = Event(kind="notification_failed", message=message)
            self._record(event)
            self.failures.put(event)


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
        self.notifier.event(event, state)
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
    if notifier is None:
        return
    notifier.close()
    if isinstance(observer, Notifying):
        observer.show_failures(state)
