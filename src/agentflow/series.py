"""Metric series: numbers a step prints (``expect.metrics``) or writes to a JSON-lines file,
kept with their wall time and step number, bounded, in ``metrics/<step>.json`` of the run.

A series holds at most ``MAX_POINTS`` points, evenly spread over everything the step
reported: when it is full, every other point goes and from then on only every second
(fourth, …) new value is kept, while the latest value always stays as the last point. The
first value stays too, so a curve always spans the whole run of the step.

The file is the runner's, in the run directory (not in ``steps/``, which a sandbox can write
and which is emptied before a step's first attempt), written whole and atomically when new
points came; the checkpoint only carries each metric's last value and a short shape for the
live view and ``status`` (it is rewritten often, and must stay small).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentflow import safefs

MAX_POINTS = 2000
"""The most points a series keeps."""
SHAPE_POINTS = 24
"""How many values of a series the checkpoint keeps for a sparkline."""
LINE_BYTES = 1024
"""How much of the end of each output line a metric's pattern sees (as progress's)."""
JSONL_LINE_BYTES = 64 * 1024
"""A longer line of a JSON-lines file is skipped, not parsed."""
READ_LIMIT = 256 * 1024
"""The most of a JSON-lines file one look reads (the rest is read at the next looks)."""


class Point(BaseModel):
    """One value of a metric."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    n: int
    """Its index among all the values the step reported (downsampling keeps every
    ``stride``-th)."""
    step: float
    """The step number: the record's ``step``, else the progress pattern's current step,
    else ``n + 1``."""
    t: float
    """Wall time (seconds since the epoch)."""
    v: float
    """The value."""


class Series(BaseModel):
    """One metric's values over a step's run, at most ``MAX_POINTS`` of them."""

    model_config = ConfigDict(extra="forbid")

    name: str
    count: int = 0
    """How many values the step reported (kept or not)."""
    stride: int = 1
    """Every how many values one is kept (doubles each time the series is full)."""
    points: list[Point] = Field(default_factory=list)

    def add(self, value: float, t: float, step: float | None = None) -> None:
        """Record a value; the series stays within ``MAX_POINTS``."""
        n = self.count
        self.count += 1
        point = Point(n=n, step=n + 1 if step is None else step, t=t, v=value)
        if self.points and self.points[-1].n % self.stride != 0:
            self.points[-1] = point  # the last point is only the latest: replaced by newer
        else:
            self.points.append(point)
        while len(self.points) > MAX_POINTS:
            self.stride *= 2
            latest = self.points[-1]
            self.points = [p for p in self.points if p.n % self.stride == 0]
            if self.points[-1] is not latest:
                self.points.append(latest)

    def shape(self, width: int = SHAPE_POINTS) -> list[float]:
        """At most ``width`` values spread evenly over the series, the last one included."""
        values = [p.v for p in self.points]
        if len(values) <= width:
            return values
        return [values[round(i * (len(values) - 1) / (width - 1))] for i in range(width)]


class StepSeries(BaseModel):
    """``metrics/<step>.json``: a step's series and where reading stopped."""

    model_config = ConfigDict(extra="forbid")

    series: dict[str, Series] = Field(default_factory=dict)
    jsonl_offsets: dict[str, int] = Field(default_factory=dict)
    """How far each metric's JSON-lines file has been read (by metric name)."""
    step: float | None = None
    """The progress pattern's latest step number."""
    attempt: int = 0
    """The attempt whose output.log was read last."""
    output_bytes: int = 0
    """How much of that output.log the series has taken in."""
    carry: str = ""
    """The unfinished last line read so far (its end comes at a later look)."""

    def add(self, name: str, value: float, t: float, step: float | None = None) -> None:
        self.series.setdefault(name, Series(name=name)).add(value, t, step)


def series_path(run_path: Path, step_id: str) -> Path:
    return run_path / "metrics" / f"{step_id}.json"


def load(run_path: Path, step_id: str) -> StepSeries:
    """A step's series as saved; empty when there are none (or the file is damaged: the
    curves are worth less than the run, which goes on)."""
    path = series_path(run_path, step_id)
    with contextlib.suppress(OSError, ValidationError, ValueError):
        return StepSeries.model_validate_json(path.read_bytes())
    return StepSeries()


def save(run_path: Path, step_id: str, data: StepSeries) -> None:
    """Replace the step's file in one step (a reader sees the old or the new one)."""
    path = series_path(run_path, step_id)
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        f.write(data.model_dump_json().encode())
    os.replace(tmp, path)


def number(text: object) -> float | None:
    """A finite float, or None (``nan``, ``inf``, text, a bool, too large)."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        return None
    try:
        value = float(text)
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Found:
    """A metric's value found in the output, and the progress step current on its line."""

    name: str
    value: float
    step: float | None


def parse_lines(
    lines: list[str],
    patterns: dict[str, re.Pattern[str]],
    progress: re.Pattern[str] | None,
    step: float | None = None,
) -> tuple[list[Found], float | None]:
    """Each metric's last value on each line (its last ``LINE_BYTES``), in order, with the
    progress step current on that line (the progress pattern's ``done``, from that line or
    an earlier one, starting from ``step``); and the progress step after the last line."""
    found: list[Found] = []
    for whole in lines:
        line = whole[-LINE_BYTES:]
        if progress is not None:
            for m in progress.finditer(line):
                step = number(m.group(1)) if m.group(1) is not None else step
        for name, regex in patterns.items():
            value = None
            for m in regex.finditer(line):
                value = number(m.group(1)) if m.group(1) is not None else value
            if value is not None:
                found.append(Found(name, value, step))
    return found, step


def split_complete(carry: str, text: str) -> tuple[list[str], str]:
    """The complete lines of ``carry + text`` (ended by a newline or a carriage return: a
    progress bar's redraw) and the unfinished rest, kept for the next look."""
    whole = carry + text
    parts = re.split(r"[\r\n]", whole)
    rest = parts.pop()
    if len(rest) > LINE_BYTES * 4:
        rest = rest[-LINE_BYTES * 4 :]  # a line without end: only its end can be searched
    return [p for p in parts if p], rest


@dataclass(frozen=True)
class Record:
    value: float
    step: float | None


def read_jsonl(
    path: Path, root: Path, key: str, offset: int, hidden: frozenset[safefs.Identity]
) -> tuple[list[Record], int]:
    """New records of a step's JSON-lines file from ``offset`` (at most ``READ_LIMIT``
    bytes, complete lines only), and the offset to read from next. Whatever is not a JSON
    object with a finite number at ``key`` (dots go into nested objects) is skipped. A
    file that shrank was written anew: read from its start."""
    try:
        with safefs.open_read(path, root, hidden) as f:
            size = os.fstat(f.fileno()).st_size
            if size < offset:
                offset = 0
            f.seek(offset)
            data = f.read(min(READ_LIMIT, size - offset))
    except OSError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        # No complete line: wait for its end, unless it can never fit in one read.
        return ([], offset + len(data)) if len(data) >= READ_LIMIT else ([], offset)
    records = []
    for raw in data[:end].split(b"\n"):
        record = _record(raw, key)
        if record is not None:
            records.append(record)
    return records, offset + end + 1


def _record(raw: bytes, key: str) -> Record | None:
    if not raw.strip() or len(raw) > JSONL_LINE_BYTES:
        return None
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    value: object = obj
    for part in key.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    found = number(value)
    if found is None:
        return None
    step = number(obj.get("step")) if isinstance(obj, dict) else None
    return Record(found, step)


def output_value(value: float) -> str:
    """A value as a step output: ``0.2241``, ``120`` (not ``120.0``)."""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)
