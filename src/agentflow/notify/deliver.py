"""Sending one notification: a JSON ``POST`` to a webhook, or the author's command with
the notification in its environment and on its standard input. One try each; the
``Notifier`` retries."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from agentflow.errors import first_line
from agentflow.textsafe import one_line, printable
from agentflow.workflow.notify import NotifyEvent

REQUEST_TIMEOUT = 5.0
"""Seconds a webhook may take to answer one request."""
COMMAND_TIMEOUT = 30.0
"""Seconds a notification command may run."""


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
    except (ValueError, http.client.HTTPException) as e:  # a URL or an answer it cannot read
        raise DeliveryError(first_line(e)) from None
    except (urllib.error.URLError, OSError) as e:
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        raise DeliveryError(str(getattr(reason, "strerror", None) or reason)) from None


def run_command(command: str, note: Notification, cwd: Path, timeout: float) -> None:
    """The author's command on this machine: the notification in its environment and on
    its standard input, never on its command line (a step's words are no shell code)."""
    env = {**os.environ, **{f"AGENTFLOW_{k.upper()}": v for k, v in _fields(note).items()}}
    # Its error output in a file, of which only the end is read: a command that writes
    # without end costs disk for 30 s at most, never the orchestrator's memory.
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", command],
                cwd=cwd,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,  # its own group: a timeout ends what it started too
            )
        except OSError as e:
            raise DeliveryError(f"cannot start: {e.strerror}") from None
        try:
            proc.communicate(note.model_dump_json().encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise DeliveryError(f"still running after {timeout:.0f}s: killed") from None
        if proc.returncode != 0:
            size = err.seek(0, os.SEEK_END)
            err.seek(max(0, size - 4096))
            last = printable(err.read().decode(errors="replace")).strip().splitlines()
            said = f": {one_line(last[-1], 200)}" if last else ""
            raise DeliveryError(f"exit code {proc.returncode}{said}")


def _fields(note: Notification) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in note.model_dump().items()}
