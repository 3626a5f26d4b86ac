"""The run directory: ``$AGENTFLOW_HOME/runs/<run-id>/`` (layout in docs/architecture.md).

Writes are durable: ``state.json`` is replaced atomically (temporary file, fsync, rename)
and the previous good copy is kept as ``state.json.prev``; ``events.jsonl`` is append-only.
A ``lock`` held with ``flock`` keeps two orchestrators from driving one run; the kernel
drops it when its holder dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentflow.errors import RunLockedError, StateError, UsageError
from agentflow.plan import Plan
from agentflow.settings import settings
from agentflow.state import RunState


class Event(BaseModel):
    """One line of ``events.jsonl``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ts: datetime = Field(default_factory=lambda: datetime.now(UTC))
    kind: str
    """``run_started``, ``step_started``, ``step_finished``, ``retry_scheduled``, …"""
    step: str | None = None
    attempt: int | None = None
    status: str | None = None
    exit_code: int | None = None
    message: str | None = None


def home_dir() -> Path:
    """``$AGENTFLOW_HOME``, default ``./.agentflow``."""
    return settings().home_dir


def new_run_id(workflow_name: str) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{workflow_name}-{stamp}-{secrets.token_hex(2)}"


class Store:
    """All runs under one home folder."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = home or home_dir()
        self.runs = self.home / "runs"

    def create(self, run_id: str) -> RunDir:
        if not _valid_run_id(run_id):
            raise UsageError(
                f"run id {run_id!r}: use letters, digits, '-' and '_' only (at most 100)"
            )
        path = self.runs / run_id
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            raise UsageError(
                f"run {run_id} exists already: resume it with `agentflow resume {run_id}` "
                "or choose another --run-id"
            ) from None
        (path / "steps").mkdir()
        return RunDir(path)

    def open(self, run_id: str) -> RunDir:
        path = self.runs / run_id
        if not _valid_run_id(run_id) or not (path / "state.json").is_file():
            ids = [r.run_id for r in self.list()]
            near = [i for i in ids if i.startswith(run_id)] if run_id else []
            if len(near) == 1:
                return RunDir(self.runs / near[0])
            hint = f" (did you mean {', '.join(near[:3])}?)" if near else ""
            raise UsageError(
                f"no run {run_id!r} in {self.runs}{hint}: `agentflow status` lists the runs"
            )
        return RunDir(path)

    def list(self) -> list[RunDir]:
        if not self.runs.is_dir():
            return []
        dirs = [RunDir(p) for p in self.runs.iterdir() if (p / "state.json").is_file()]
        return sorted(dirs, key=lambda d: d.state_path.stat().st_mtime)


def _valid_run_id(run_id: str) -> bool:
    return 0 < len(run_id) <= 100 and all(c.isalnum() or c in "-_" for c in run_id)


@dataclass(frozen=True)
class RunDir:
    """One run's folder."""

    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def state_path(self) -> Path:
        return self.path / "state.json"

    @property
    def events_path(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def workflow_path(self) -> Path:
        return self.path / "workflow.yaml"

    @property
    def plan_path(self) -> Path:
        return self.path / "plan.json"

    @property
    def log_path(self) -> Path:
        """The orchestrator's own log: one plain line per event."""
        return self.path / "agentflow.log"

    def step_dir(self, step_id: str) -> Path:
        return self.path / "steps" / step_id

    # --- checkpoint -------------------------------------------------------------------------

    def write_state(self, state: RunState) -> None:
        data = state.model_dump_json(indent=2).encode()
        _atomic_write(self.state_path, data, keep_previous=True)

    def read_state(self) -> RunState:
        try:
            return RunState.model_validate_json(self.state_path.read_bytes())
        except FileNotFoundError:
            raise StateError(f"{self.state_path}: missing; is this a run directory?") from None
        except ValidationError as e:
            prev = self.state_path.with_name("state.json.prev")
            hint = f"; the previous good copy is {prev}" if prev.exists() else ""
            first = e.errors()[0]["msg"] if e.errors() else str(e)
            raise StateError(f"{self.state_path}: damaged checkpoint ({first}){hint}") from None

    def write_plan(self, plan: Plan) -> None:
        _atomic_write(self.plan_path, plan.model_dump_json(indent=2).encode())

    def read_plan(self) -> Plan:
        try:
            return Plan.model_validate_json(self.plan_path.read_bytes())
        except (OSError, ValidationError) as e:
            raise StateError(f"{self.plan_path}: cannot read the run's plan ({e})") from None

    def write_text(self, name: str, text: str) -> None:
        _atomic_write(self.path / name, text.encode())

    # --- events -----------------------------------------------------------------------------

    def append_event(self, event: Event) -> None:
        line = event.model_dump_json(exclude_none=True) + "\n"
        with self.events_path.open("a", encoding="utf-8") as f:
            f.write(line)

    def read_events(self) -> list[Event]:
        events: list[Event] = []
        if not self.events_path.exists():
            return events
        for line in self.events_path.read_text(encoding="utf-8").splitlines():
            # A line cut short by a crash mid-write is skipped, not fatal.
            with contextlib.suppress(ValidationError, json.JSONDecodeError):
                events.append(Event.model_validate_json(line))
        return events

    # --- lock -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's lock; raises RunLockedError when another process has it."""
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                pid = self.lock_holder()
                who = f" (pid {pid})" if pid else ""
                raise RunLockedError(
                    f"run {self.run_id} is being driven by another agentflow process{who}: "
                    f"watch it with `agentflow status {self.run_id}` or stop it with "
                    f"`agentflow stop {self.run_id}`"
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            os.close(fd)

    def lock_holder(self) -> int | None:
        """The pid of the live process holding the lock, or None."""
        path = self.path / "lock"
        if not path.exists():
            return None
        fd = os.open(path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                text = path.read_text().strip()
                return int(text) if text.isdigit() else -1
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)


def _atomic_write(path: Path, data: bytes, keep_previous: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if keep_previous and path.exists():
        # Link, then rename: at no moment is there no state.json.
        prev_tmp = path.with_name(f".{path.name}.prev.tmp")
        with contextlib.suppress(FileNotFoundError):
            prev_tmp.unlink()
        os.link(path, prev_tmp)
        os.replace(prev_tmp, path.with_name(f"{path.name}.prev"))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
