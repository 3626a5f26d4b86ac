"""The run directory: ``$AGENTFLOW_HOME/runs/<run-id>/`` (layout in docs/architecture.md).

Writes are durable: ``state.json`` is replaced atomically (temporary file, fsync, rename)
and the previous good copy is kept as ``state.json.prev``; ``events.jsonl`` is append-only.
While a run is driven, its changes are appended to ``state.log`` between two snapshots
(``checkpointer``), and every reader gets ``state.json`` with that log replayed
(``checkpoint_log``).
A ``lock`` held with ``flock`` keeps two orchestrators from driving one run; the kernel
drops it when its holder dies, even by SIGKILL.

A damaged ``state.json`` (truncated, overwritten, not JSON) is an error that says so, never
read as something else; ``RunDir.recover_state`` (run under the lock, by ``resume``) rebuilds
it from ``state.json.prev`` and the events recorded after it, or from the plan and every
event, keeps the damaged file as ``state.json.damaged``, and says what it did.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pydantic_core
from pydantic import ConfigDict, Field, JsonValue, ValidationError

from agentflow import checkpoint_log, event_replay
from agentflow.checkpoint_log import LogReplay
from agentflow.errors import RunLockedError, StateError, UsageError
from agentflow.lean import LeanModel
from agentflow.plan import Plan
from agentflow.settings import settings
from agentflow.state import EARLIEST, RunState, StepState, Timestamp


class Event(LeanModel):
    """One line of ``events.jsonl``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ts: Timestamp = Field(default_factory=lambda: datetime.now(UTC))
    kind: str
    """``run_started``, ``step_started``, ``step_finished``, ``retry_scheduled``, …"""
    step: str | None = None
    attempt: int | None = None
    status: str | None = None
    exit_code: int | None = None
    message: str | None = None
    data: dict[str, JsonValue] | None = None
    """What the event says, for programs: a decision's fields, a tool call and its
    result, a call's token usage (``message`` says it for people)."""


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
        if not valid_run_id(run_id):
            raise UsageError(
                f"run id {run_id!r}: use letters, digits, '-' and '_' only (at most 100)"
            )
        path = self.runs / run_id
        # Made aside, then renamed into place: the folder appears with its claim (who is
        # making it) already inside, so a second `run --run-id` never takes it for one
        # that was abandoned.
        self.ensure_home()
        new = self.runs / f".{run_id}.{os.getpid()}.new"
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir(mode=0o700)
        (new / "steps").mkdir(mode=0o700)
        (new / "lock").write_text(f"{os.getpid()}\n")
        try:
            if _never_began(path):
                # Its orchestrator died before the run's first checkpoint: nothing ran, and
                # what it left (workflow.yaml, plan.json) is made again. Renamed away first:
                # of two processes doing this at once, one wins.
                gone = self.runs / f".{run_id}.{os.getpid()}.abandoned"
                with contextlib.suppress(FileNotFoundError):
                    path.rename(gone)
                    shutil.rmtree(gone, ignore_errors=True)
            try:
                new.rename(path)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                raise UsageError(
                    f"run {run_id} exists already: resume it with `agentflow resume {run_id}` "
                    "or choose another --run-id"
                ) from None
        finally:
            shutil.rmtree(new, ignore_errors=True)
        return RunDir(path)

    def ensure_home(self) -> None:
        """Make the home and its ``runs/`` private (0700): a run's logs, scripts and
        reports are for its owner, not for other users of a shared machine. A home made
        by an earlier version, with wider permissions, is narrowed."""
        for folder in (self.home, self.runs):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = folder.stat()
            if st.st_uid == os.getuid() and st.st_mode & 0o077:
                folder.chmod(0o700)

    def open(self, run_id: str) -> RunDir:
        path = self.runs / run_id
        if valid_run_id(run_id) and _never_began(path):
            raise UsageError(
                f"run {run_id} never began: its orchestrator stopped before the first "
                f"checkpoint, so no step ran; start it again with `agentflow run WORKFLOW "
                f"--run-id {run_id}`"
            )
        # With only the previous checkpoint left, the run is there: resume rebuilds it.
        if not valid_run_id(run_id) or not any(
            (path / name).is_file() for name in ("state.json", "state.json.prev")
        ):
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


def valid_run_id(run_id: str) -> bool:
    return 0 < len(run_id) <= 100 and all(c.isalnum() or c in "-_" for c in run_id)


def _never_began(path: Path) -> bool:
    """A run directory whose maker died before its first checkpoint: no state.json (nor a
    previous copy), no event, no step folder, and nobody alive holds or claims it."""
    if not path.is_dir() or path.is_symlink():
        return False
    if any((path / name).exists() for name in ("state.json", "state.json.prev", "events.jsonl")):
        return False
    steps = path / "steps"
    if steps.is_dir() and any(steps.iterdir()):
        return False
    run = RunDir(path)
    if run.lock_holder() is not None:
        return False
    claim = path / "lock"
    try:
        text = claim.read_text().strip()
    except OSError:
        return True
    return not (text.isdigit() and _alive(int(text)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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

    @property
    def steps_path(self) -> Path:
        """``steps/``: the one folder of the run the sandbox can write (mounted into a
        Docker sandbox); the host reads it only through ``safefs``."""
        return self.path / "steps"

    def step_dir(self, step_id: str) -> Path:
        return self.steps_path / step_id

    # --- checkpoint -------------------------------------------------------------------------

    @property
    def prev_state_path(self) -> Path:
        """The checkpoint before the latest one."""
        return self.path / "state.json.prev"

    @property
    def damaged_state_path(self) -> Path:
        """Where ``recover_state`` keeps a damaged checkpoint, for a person to look at."""
        return self.path / "state.json.damaged"

    def write_state(self, state: RunState) -> None:
        """Save the whole checkpoint (a snapshot); the log of changes since the last one
        becomes ``state.log.prev``. When it cannot be written (a full disk), the one
        before stays in place, whole, and the error says so."""
        data = state.model_dump_json(indent=2).encode()
        try:
            _atomic_write(self.state_path, data, keep_previous=True)
            checkpoint_log.rotate(self.path)
        except OSError as e:
            raise self.save_error(e) from None

    def settle(self) -> None:
        """Write ``state.json`` whole when changes are logged after it: an orchestrator
        killed between a run's last change and its last snapshot leaves them in the log.
        Under the run's lock; a run another orchestrator drives is left to it."""
        if not (self.path / checkpoint_log.LOG_NAME).exists():
            return
        with contextlib.suppress(RunLockedError), self.lock():
            self.write_state(self.read_state())

    def save_error(self, e: OSError) -> StateError:
        return StateError(
            f"cannot save the checkpoint of run {self.run_id} in {self.path} "
            f"({e.strerror or e}); the last one saved is kept: fix that, then "
            f"`agentflow resume {self.run_id}` (steps still running go on meanwhile)"
        )

    def read_state(self) -> RunState:
        """The checkpoint; StateError (one line, with the way out) when it is damaged."""
        return self.read_checkpoint().state

    def read_checkpoint(self) -> LogReplay:
        """``state.json`` with the changes logged since (``state.log``) replayed."""
        state, problem = self._checkpoint_of(self.state_path)
        if state is not None:
            return checkpoint_log.replay(state, self.path)
        if not self.state_path.exists() and not self.prev_state_path.exists():
            raise StateError(f"{self.state_path}: missing; is this a run directory?")
        raise StateError(
            f"{self.state_path}: damaged checkpoint ({problem}); `agentflow resume "
            f"{self.run_id}` rebuilds it from {self._recovery_sources()} and keeps the "
            f"damaged file as {self.damaged_state_path.name}"
        )

    def _checkpoint_of(self, path: Path) -> tuple[RunState | None, str]:
        """The state saved in ``path`` if it is this run's, or None and what is wrong.
        Valid JSON of the wrong shape is damage too: every reader (status, report, resume)
        may then trust that the state has the plan's steps."""
        state, problem = _read_checkpoint(path)
        if state is None:
            return None, problem
        if state.run_id != self.run_id:
            return None, f"run_id: {_short(state.run_id)} is not this run's"
        try:
            planned = [s.id for s in self.read_plan().steps]
        except StateError:
            return state, ""  # the plan is damaged: what needs it says so
        missing = [k for k in planned if k not in state.steps]
        unknown = [k for k in state.steps if k not in planned]
        if missing or unknown:
            what = [f"{_names(missing)} of the plan missing"] if missing else []
            what += [f"{_names(unknown)} not in the plan"] if unknown else []
            return None, f"steps: {'; '.join(what)}"
        return state, ""

    def _recovery_sources(self) -> str:
        prev, _ = self._checkpoint_of(self.prev_state_path)
        return "state.json.prev and events.jsonl" if prev is not None else "events.jsonl"

    def recover_state(self) -> str | None:
        """Make ``state.json`` whole again if it is damaged; hold the lock when calling this.
        Returns what was done, for a person (None: the checkpoint was fine).

        The base is ``state.json.prev`` (the checkpoint before the damaged one), else a
        state rebuilt from ``plan.json`` and what can still be read of the damaged files;
        the events recorded after the base are replayed onto it, so a step that succeeded
        stays succeeded and a step that was started is known to be running (its tmux window
        is not: unless it has ended, the resume reruns it). The damaged file is kept as
        ``state.json.damaged``. StateError when nothing usable is left."""
        state, problem = self._checkpoint_of(self.state_path)
        if state is not None:
            return None
        base, _ = self._checkpoint_of(self.prev_state_path)
        source = f"{self.prev_state_path.name} (saved {_clock(base.updated_at)})" if base else ""
        if base is None:
            base = self._rebuilt_from_plan()
            source = "plan.json"
        events = [e for e in self.read_events() if e.ts > base.updated_at]
        state, changed = event_replay.replay(base, events)
        # The logs hold every change since the previous snapshot, whole: they have the
        # last word (onto a base that already has them, they change nothing).
        logged = checkpoint_log.replay(state, self.path, checkpoint_log.LOGS)
        state = logged.state
        if self.state_path.exists():
            _atomic_write(self.damaged_state_path, self.state_path.read_bytes())
        # Replaces the damaged file in one step; state.json.prev (the good copy) stays.
        _atomic_write(self.state_path, state.model_dump_json(indent=2).encode())
        note = (
            f"run {self.run_id}: state.json was damaged ({problem}); rebuilt from {source}"
            f" and {len(events)} later event{'s' if len(events) != 1 else ''} of events.jsonl"
        )
        if logged.records:
            n = logged.records
            note += f", with {n} change{'s' if n != 1 else ''} logged in state.log"
        if changed:
            note += f" (steps brought up to date: {', '.join(changed)})"
        lost = [k for k, st in state.steps.items() if st.status == "running" and not st.window]
        if lost:
            note += (
                f"; {', '.join(lost)} started after that copy: agentflow cannot re-attach to "
                f"{'them' if len(lost) > 1 else 'it'}, so unless finished by now "
                f"{'they run' if len(lost) > 1 else 'it runs'} again"
            )
        note += f"; the damaged file is kept as {self.damaged_state_path.name}"
        self.append_event(Event(kind="state_recovered", message=note))
        return note

    def _rebuilt_from_plan(self) -> RunState:
        """Every step of the plan pending, and the run's identity from whatever part of the
        damaged checkpoints can still be read (a truncated file keeps its first fields)."""
        try:
            plan = self.read_plan()
        except StateError as e:
            raise StateError(
                f"{self.state_path} is damaged, with no good previous copy, and {e}"
            ) from None
        found: dict[str, object] = {}
        for path in (self.prev_state_path, self.state_path):
            found = _salvage(path) | found
        salvaged = {k: found[k] for k in _HEADER if k in found}
        header: dict[str, object] = {"created_at": plan.created_at, "run_id": self.run_id}
        header |= {"workflow": plan.workflow, "planner": plan.planner, "inputs": plan.inputs}
        header |= {"steps": {s.id: StepState() for s in plan.steps}}
        try:
            state = _with_salvaged(header, salvaged)
        except ValidationError as e:
            missing = sorted({str(err["loc"][0]) for err in e.errors() if err["loc"]})
            raise StateError(
                f"{self.state_path} is damaged, with no good previous copy, and the run's "
                f"{', '.join(missing)} cannot be read anywhere: start the workflow again "
                f"(the steps' logs stay in {self.path / 'steps'})"
            ) from None
        # Older than every event: all of them are replayed.
        return state.model_copy(update={"updated_at": EARLIEST})

    def write_plan(self, plan: Plan) -> None:
        _atomic_write(self.plan_path, plan.model_dump_json(indent=2).encode())

    def read_plan(self) -> Plan:
        try:
            return Plan.model_validate_json(self.plan_path.read_bytes())
        except (OSError, ValidationError) as e:
            raise StateError(f"{self.plan_path}: cannot read the run's plan ({e})") from None

    def write_text(self, name: str, text: str) -> None:
        _atomic_write(self.path / name, text.encode())

    def write_chunks(self, name: str, chunks: Iterable[str | bytes]) -> None:
        """``write_text`` of a text made piece by piece (a report of 10,000 steps), never
        held whole: each piece is written as it comes."""
        _atomic_write(self.path / name, chunks)

    # --- events -----------------------------------------------------------------------------

    def append_event(self, event: Event) -> None:
        line = (event.model_dump_json(exclude_none=True) + "\n").encode()
        try:
            # O_NOFOLLOW: never appended through a link, whoever made it.
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
            fd = os.open(self.events_path, flags, 0o600)
            try:
                # A line cut short (a full disk, a crash mid-write) is ended first, so that
                # it costs only itself, not the event after it.
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as e:
            raise StateError(
                f"cannot record an event of run {self.run_id} in {self.events_path} "
                f"({e.strerror or e}): fix that, then `agentflow resume {self.run_id}`"
            ) from None

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

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Hold the run's lock; raises RunLockedError when another process has it."""

        def busy(pid: int | None) -> RunLockedError:
            who = f" (pid {pid})" if pid else ""
            return RunLockedError(
                f"run {self.run_id} is being driven by another agentflow process{who}: "
                f"watch it with `agentflow status {self.run_id}` or stop it with "
                f"`agentflow stop {self.run_id}`"
            )

        return hold_lock(self.path / "lock", busy)

    def lock_holder(self) -> int | None:
        """The pid of the live process holding the lock, or None."""
        return lock_holder(self.path / "lock")


@contextlib.contextmanager
def hold_lock(path: Path, busy: Callable[[int | None], Exception]) -> Iterator[None]:
    """Hold the ``flock`` of ``path`` (its pid written in it, for ``lock_holder``); raises
    ``busy(pid of the holder)`` when another process has it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise busy(lock_holder(path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def lock_holder(path: Path) -> int | None:
    """The pid written in a lock file whose ``flock`` a live process holds (-1: held, no
    pid), or None: nobody holds it, or there is no such file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
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


def _atomic_write(
    path: Path, data: bytes | Iterable[str | bytes], keep_previous: bool = False
) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            for chunk in [data] if isinstance(data, bytes) else data:
                f.write(chunk.encode() if isinstance(chunk, str) else chunk)
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        # A half-written temporary file (a full disk) must not hold on to the space.
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
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


_HEADER = ("workflow_file", "workspace", "sandbox", "status", "created_at", "tokens_used")
"""Fields of a run's state that are not in its plan."""


def _read_checkpoint(path: Path) -> tuple[RunState | None, str]:
    """The state saved in ``path``, or None and what is wrong with it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, "missing"
    except OSError as e:
        return None, e.strerror or str(e)
    if not data.strip():
        return None, "empty"
    try:
        return RunState.model_validate_json(data), ""
    except ValidationError as e:
        err = e.errors()[0] if e.errors() else None
        if err is None:
            return None, str(e)
        where = ".".join(str(x) for x in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        return None, f"{where}: {msg}" if where else msg


def _short(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")


def _names(ids: list[str]) -> str:
    shown = ", ".join(_short(i) for i in ids[:3])
    return shown + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")


def _with_salvaged(header: dict[str, object], salvaged: dict[str, object]) -> RunState:
    """A state of ``header`` and each ``salvaged`` field of the right shape: a default (or
    the plan's time) is better than a created_at in the year 9999. ValidationError when a
    field without a default is missing."""
    try:
        return RunState.model_validate(header | salvaged)
    except ValidationError as e:
        wrong = {err["loc"][0] for err in e.errors() if err["loc"]}
    return RunState.model_validate(header | {k: v for k, v in salvaged.items() if k not in wrong})


def _salvage(path: Path) -> dict[str, object]:
    """The top-level fields that can still be read from a damaged (say, truncated)
    checkpoint; {} when nothing can."""
    try:
        found = pydantic_core.from_json(path.read_bytes(), allow_partial=True)
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _clock(ts: datetime) -> str:
    return ts.astimezone().strftime("%H:%M:%S")
