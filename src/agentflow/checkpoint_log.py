"""The checkpoint's log: the changes made since ``state.json`` was last written whole.

A run's checkpoint is a snapshot (``state.json``, written whole and atomically) plus
``state.log``: one line per saved change, ``<crc32 as 8 hex digits> <json>\\n``, the JSON a
``Record`` (a sequence number, the run's fields that changed, and each changed step's whole
``StepState``). Writing a step's change then costs one short append, whatever the
workflow's size, instead of the whole state.

Records hold whole values, never increments, so replaying a log onto a snapshot that
already includes it changes nothing: a crash between writing a snapshot and starting a
new log is harmless. When a snapshot is written the log is rotated: ``state.log`` becomes
``state.log.prev`` (the changes between ``state.json.prev`` and ``state.json``), so that
``state.json.prev`` + ``state.log.prev`` + ``state.log`` is the whole state again should
``state.json`` be damaged.

Reading: the records are replayed in order; a last line cut short (a crash mid-append)
is ignored; a damaged record with good ones after it stops the replay there, and the
problem is said (``LogReplay.problem``).
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import os
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from agentflow.state import RunState, StepState

LOG_NAME = "state.log"
PREV_LOG_NAME = "state.log.prev"
LOGS = (PREV_LOG_NAME, LOG_NAME)
"""Both logs, in order: what ``state.json.prev`` needs to be the whole state again."""
LOG_MAX = 1 << 30
"""A log longer than this (1 GiB) is read no further: no run saves that much between two
snapshots; such a file was not written by agentflow."""


class Record(BaseModel):
    """One line of ``state.log``: what one save changed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: int
    """Counts the records of one log from 1: a record out of order is damage."""
    run: dict[str, JsonValue] = Field(default_factory=dict)
    """The run's fields that changed (``steps`` aside), as ``state.json`` has them."""
    steps: dict[str, StepState] = Field(default_factory=dict)
    """Each changed step's whole state."""


def encode(
    seq: int, before: RunState | None, after: RunState, changed: Collection[str] | None = None
) -> bytes | None:
    """The line that takes ``before`` to ``after``, or None when nothing changed. The
    steps compare by identity: a state's unchanged steps are the same objects.
    ``changed``: the only steps that can differ, when the caller knows (no look at the
    others, whose number is the workflow's size)."""
    if before is None:
        raise ValueError("a log continues a snapshot")
    run_fields = [
        name
        for name in RunState.model_fields
        if name != "steps" and getattr(before, name) != getattr(after, name)
    ]
    ids = changed_steps(before, after) if changed is None else changed
    steps = {k: after.steps[k] for k in ids if before.steps.get(k) is not after.steps[k]}
    steps = {k: v for k, v in steps.items() if before.steps.get(k) != v}
    if not steps and set(run_fields) <= {"updated_at"}:
        return None
    run = after.model_dump(mode="json", include=set(run_fields)) if run_fields else {}
    body = Record(seq=seq, run=run, steps=steps).model_dump_json(exclude_defaults=True)
    data = body.encode()
    return b"%08x %s\n" % (zlib.crc32(data), data)


def same_steps(before: RunState, after: RunState) -> bool:
    """Whether the two states have the same step ids in the same order (compared in C:
    the ids are the same string objects, so this costs little at 10,000 steps)."""
    return list(before.steps) == list(after.steps)


def changed_steps(before: RunState, after: RunState) -> list[str]:
    """The ids of the steps that are not the same objects in both states (the others did
    not change), found without a Python loop over every step: a save of one step's
    change must not cost in proportion to the workflow's size."""
    if not same_steps(before, after):
        return [k for k, v in after.steps.items() if before.steps.get(k) is not v]
    differs = map(operator.is_not, before.steps.values(), after.steps.values())
    return list(itertools.compress(after.steps, differs))


@dataclass(frozen=True)
class LogReplay:
    """What replaying the logs gave."""

    state: RunState
    records: int
    """How many records were applied."""
    problem: str = ""
    """A damaged record that stopped the replay (a torn last line is no problem)."""


def replay(state: RunState, folder: Path, names: tuple[str, ...] = (LOG_NAME,)) -> LogReplay:
    """``state`` with the records of the logs ``names`` (in ``folder``, in that order)
    applied."""
    header = state.model_dump(mode="json", exclude={"steps"})
    steps = dict(state.steps)
    applied = 0
    problem = ""
    for name in names:
        # A damaged record stops its own log; the next one (newer, whole values) still holds.
        header, found, damage = _apply(header, steps, _read(folder / name), name)
        applied += found
        problem = problem or damage
    if not applied:
        return LogReplay(state, 0, problem)
    # The header was checked record by record: this cannot fail.
    replayed = RunState.model_validate({**header, "steps": {}})
    return LogReplay(replayed.model_copy(update={"steps": steps}), applied, problem)


def _read(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return b""  # none (or not a file agentflow wrote): nothing to replay
    try:
        with os.fdopen(fd, "rb") as f:
            return f.read(LOG_MAX)
    except OSError:
        return b""


def _apply(
    header: dict[str, object], steps: dict[str, StepState], data: bytes, name: str
) -> tuple[dict[str, object], int, str]:
    """Apply the records of one log's ``data`` to ``header`` and ``steps`` (``steps`` in
    place); returns the new header, how many records, and the problem that stopped it."""
    lines = data.split(b"\n")
    complete = lines[:-1]  # the last piece has no newline: cut short, or empty
    applied = 0
    seq = 0
    for number, line in enumerate(complete, 1):
        record, why = _parse(line)
        if record is not None:
            why = _fits(record, seq, header, steps)
        if record is None or why:
            if number == len(complete) and not lines[-1]:
                return header, applied, ""  # the last record, torn: as if never written
            return header, applied, f"{name}:{number}: {why}; the records after it are not used"
        header = {**header, **record.run}
        steps.update(record.steps)
        seq = record.seq
        applied += 1
    return header, applied, ""


def _parse(line: bytes) -> tuple[Record | None, str]:
    crc, _, body = line.partition(b" ")
    if len(crc) != 8 or not body:
        return None, "not a record"
    try:
        expected = int(crc, 16)
    except ValueError:
        return None, "not a record"
    if zlib.crc32(body) != expected:
        return None, "its checksum does not match"
    try:
        return Record.model_validate_json(body), ""
    except ValidationError as e:
        err = e.errors()[0] if e.errors() else None
        where = ".".join(str(x) for x in err["loc"]) if err else ""
        return None, f"{where or 'record'}: {err['msg'] if err else e}"


def _fits(record: Record, seq: int, header: dict[str, object], steps: dict[str, StepState]) -> str:
    """What makes ``record`` not a change of this run, or ''."""
    if record.seq <= seq:
        return f"sequence {record.seq} after {seq}"
    unknown = [k for k in record.steps if k not in steps]
    if unknown:
        return f"step {unknown[0][:40]!r} is not the run's"
    if record.run.get("run_id", header["run_id"]) != header["run_id"]:
        return "run_id is not this run's"
    try:
        RunState.model_validate({**header, **record.run, "steps": {}})
    except ValidationError as e:
        err = e.errors()[0]
        return f"run.{'.'.join(str(x) for x in err['loc'])}: {err['msg']}"
    return ""


def rotate(folder: Path) -> None:
    """After a snapshot: the log becomes the previous one, and the next record starts a
    new log (made by whoever appends)."""
    with contextlib.suppress(FileNotFoundError):
        os.replace(folder / LOG_NAME, folder / PREV_LOG_NAME)


def open_log(folder: Path) -> int:
    """The log, for appending (never through a link; private to the owner)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(folder / LOG_NAME, flags, 0o600)
