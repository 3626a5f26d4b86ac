"""A closed stdout: ``agentflow resume RUN | head`` goes on driving the run.

Python ignores SIGPIPE, so a write to a pipe whose reader has gone raises
``BrokenPipeError``; raised out of an observer, it would end the orchestrator in the middle
of the run and leave the run with nobody driving it. Instead, stdout is pointed at
``/dev/null`` (nobody reads it any more), stderr says so once, and the run goes on to its
end and its exit code; every event is still in the run's ``orchestrator.log``.
"""

from __future__ import annotations

import contextlib
import os
import sys

from agentflow.runner import Observer
from agentflow.state import RunState
from agentflow.store import Event


def stdout_closed(run_id: str) -> None:
    """Nobody reads stdout any more: later writes (and the pending buffer) go nowhere."""
    with contextlib.suppress(OSError, ValueError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    with contextlib.suppress(OSError, ValueError):  # stderr may be the same closed pipe
        sys.stderr.write(
            f"agentflow: stdout was closed; run {run_id} goes on, driven by this process "
            f"(watch it: agentflow status {run_id})\n"
        )
        sys.stderr.flush()


class GoesOnWhenClosed:
    """An observer that prints to stdout, whose closed pipe does not stop the run."""

    def __init__(self, inner: Observer, run_id: str) -> None:
        self.inner = inner
        self.run_id = run_id

    def event(self, event: Event, state: RunState) -> None:
        try:
            self.inner.event(event, state)
        except BrokenPipeError:
            stdout_closed(self.run_id)

    def update(self, state: RunState) -> None:
        try:
            self.inner.update(state)
        except BrokenPipeError:
            stdout_closed(self.run_id)
