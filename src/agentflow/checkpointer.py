"""Saving a run's checkpoint while an orchestrator drives it (issue 18).

Each save appends one record to ``state.log`` (see ``checkpoint_log``): a few hundred
bytes for a step's change, whatever the workflow's size. Records are written through at
once, so an orchestrator killed at any moment (SIGKILL) loses none of them; they are made
durable against a crash of the machine together, one ``fdatasync`` per wake-up of the
runner (``commit``), and before a launch pass opens the windows of the steps it starts
(``commit`` too: a launch is never done on a change that is not on disk).

The whole state is written to ``state.json`` (a snapshot: atomically, as always) when the
run starts or resumes, when it ends or is left, and in between

- once the log has grown as large as the snapshot (so what the snapshots write stays in
  proportion to what the steps change, not to the workflow's size);
- ``SNAPSHOT_LAG`` seconds after a change, on a timer, once the runner is quiet or the
  log has grown to a ``SHARE``-th of the snapshot: ``state.json`` stays current within a
  few seconds for the people and tools that read it directly, while a very busy run of a
  very large workflow is not made to rewrite it all every few seconds.

Every reader of the run (``RunDir.read_state``) replays the log onto ``state.json``, so
``status``, ``report`` and ``resume`` always see every change saved.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Collection

from agentflow import checkpoint_log
from agentflow.errors import AgentflowError
from agentflow.state import RunState
from agentflow.store import RunDir

SNAPSHOT_LAG = 2.0
"""Seconds after a change before ``state.json`` is written whole with it (when quiet)."""
QUIET = 0.5
"""Seconds without a change that make the runner quiet."""
SHARE = 16
"""A busy run's snapshot waits until the log is this fraction of it (1/SHARE)."""
LOG_MIN = 64 * 1024
"""The log may always grow this far before it forces a snapshot."""


class Checkpointer:
    """Saves one run's state: records appended to the log, snapshots now and then."""

    def __init__(self, run: RunDir, lag: float = SNAPSHOT_LAG) -> None:
        self.run = run
        self.lag = lag
        """``SNAPSHOT_LAG`` (tests that look at the log itself use a longer one)."""
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._saved: RunState | None = None
        """The state the files hold (snapshot and log): the last one saved."""
        self._seq = 0
        self._log_bytes = 0
        self._snapshot_bytes = 0
        self._unsynced = False
        """Records written and not yet synced."""
        self._uncommitted = False
        """Among them, one that is not ``soft``: the next ``commit`` syncs."""
        self._last_record = 0.0
        self.syncs = 0
        """fdatasyncs of the log so far (benchmarks count them)."""
        self._timer: threading.Timer | None = None

    def save(
        self,
        state: RunState,
        *,
        soft: bool = False,
        changed: Collection[str] | None = None,
    ) -> str:
        """Save ``state`` (on disk, against a crash of the machine, at the next ``commit``);
        ``soft``: a change the run can find again on its own (a window's id,
        what was read of the output), made durable by the next sync of a change that
        needs one rather than by a ``commit`` of its own; ``changed``: the only steps
        changed since the last save, when the caller knows (then the same steps, none
        added or removed): the save looks at no other. Returns what was wrong with the
        log found at the first save (to be told), or ''."""
        with self._lock:
            before = self._saved
            if before is None:
                problem = self._problem_found()
                self._snapshot(state)
                return problem
            if changed is None and not checkpoint_log.same_steps(before, state):
                self._snapshot(state)  # steps added or removed: no record says that
                return ""
            ending = state.status != "running"
            line = checkpoint_log.encode(self._seq + 1, before, state, changed)
            # Ending: the change goes to the log first (should the snapshot fail, a full
            # disk, it is kept), unless there is no log since the last snapshot.
            if line is not None and (self._fd is not None or not ending):
                self._append(line, soft)
                self._saved = state
            if ending:
                self._snapshot(state)
            elif line is not None:
                if self._log_bytes >= max(LOG_MIN, self._snapshot_bytes):
                    self._snapshot(state)
                else:
                    self._arm()
            return ""

    def commit(self) -> None:
        """Make the changes saved since the last commit durable (one fdatasync for all)."""
        with self._lock:
            if self._uncommitted:
                self._sync()

    def close(self) -> None:
        with self._lock:
            self._disarm()
            self._close_log()

    # --- inside the lock ---------------------------------------------------------------------

    def _problem_found(self) -> str:
        """What is damaged in the log this orchestrator takes over, or ''."""
        with contextlib.suppress(AgentflowError):
            return self.run.read_checkpoint().problem
        return ""

    def _append(self, line: bytes, soft: bool = False) -> None:
        try:
            if self._fd is None:
                self._fd = checkpoint_log.open_log(self.run.path)
                _fsync_dir(self.run)  # the new log's name, before records count on it
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(28, os.strerror(28))  # only a full disk writes less
        except OSError as e:
            # A record cut short must not stand before the next one: the log ends as it
            # did before.
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._log_bytes)
            raise self.run.save_error(e) from None
        self._seq += 1
        self._log_bytes += len(line)
        self._unsynced = True
        self._uncommitted = self._uncommitted or not soft
        self._last_record = time.monotonic()

    def _sync(self) -> None:
        if not self._unsynced or self._fd is None:
            return
        self._unsynced = self._uncommitted = False
        self.syncs += 1
        try:
            os.fdatasync(self._fd)
        except OSError as e:
            raise self.run.save_error(e) from None

    def _snapshot(self, state: RunState) -> None:
        self._disarm()
        self.run.write_state(state)  # atomically; rotates the log
        self._close_log()
        self._saved = state
        self._seq = 0
        self._log_bytes = 0
        self._unsynced = self._uncommitted = False
        with contextlib.suppress(OSError):
            self._snapshot_bytes = self.run.state_path.stat().st_size

    def _close_log(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = threading.Timer(self.lag, self._due)
            self._timer.daemon = True
            self._timer.start()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _due(self) -> None:
        """The timer: a snapshot of what is saved, if it is time for one."""
        with self._lock:
            self._timer = None
            if self._saved is None or not self._log_bytes:
                return
            quiet = time.monotonic() - self._last_record >= QUIET
            if quiet or self._log_bytes * SHARE >= self._snapshot_bytes:
                # The records keep every change meanwhile: a snapshot that fails (a full
                # disk) is tried again at the next one, and says so then.
                with contextlib.suppress(AgentflowError, OSError):
                    self._snapshot(self._saved)
                return
            self._timer = threading.Timer(QUIET, self._due)
            self._timer.daemon = True
            self._timer.start()


def _fsync_dir(run: RunDir) -> None:
    fd = os.open(run.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
