"""What of a step's log goes to the model: its head, its tail, and the lines that look like
errors, of a log of any size in bounded memory.

A long log is mostly repetition: the same warning ten thousand times, the same symptom
after every retry inside the program. So error lines are grouped by their shape (numbers,
hex and paths blanked), and each shape is kept once, with its first and last occurrence,
its line numbers and a count: in a 200,000-line log the one line that says what went wrong
is not crowded out by the 14 copies of what followed it. The head is the log's start and
the tail its end; where they meet (a short log), nothing is sent twice.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from agentflow import safefs, stepfiles

ERROR = re.compile(
    r"error|exception|traceback|fatal|failed|failure|killed|denied|refused|no such|not found|"
    r"out of memory|oom\b|nan\b|panic|segmentation|timed? ?out|unavailable|no space",
    re.IGNORECASE,
)
"""What makes a line look like an error (the diagnosis and ``learn`` use it)."""

SCAN_BYTES = 64 * 1024 * 1024
"""How far back from the end of a log the error scan reads (streamed, a line at a time)."""
HEAD_BYTES = 4096
TAIL_LINES = 150
LINE_CHARS = 500
"""The longest line kept; a longer one is cut (a progress bar without newlines)."""
CONTEXT_LINES = 2
"""Lines kept before and after the first line of each shape (a traceback's frames)."""
MAX_SHAPES = 400
"""The most distinct error shapes remembered; later new shapes only count."""
_SHAPE = re.compile(r"0x[0-9a-f]+|\d+(?:\.\d+)?|(?:/[\w.-]+)+", re.IGNORECASE)


@dataclass
class _Seen:
    first: int
    first_text: str
    before: list[str]
    after: list[str] = field(default_factory=list)
    last: int = 0
    last_text: str = ""
    count: int = 1


@dataclass(frozen=True)
class LogView:
    """The parts of a log that go to the model."""

    size: int
    head: str = ""
    """The start of the log, up to where the tail begins (empty when the tail is all)."""
    tail: str = ""
    errors: list[str] = field(default_factory=list)
    """One entry per shape of error line, in order of first appearance."""
    more_shapes: int = 0
    """Shapes of error lines seen beyond ``MAX_SHAPES``."""


def read(path: Path) -> LogView:
    """Scan a step's log (``steps/<id>/[attempt-N/]output.log``) through the guarded path."""
    try:
        with safefs.open_read(path, stepfiles.steps_root(path)) as f:
            return _scan(f)
    except OSError:
        return LogView(size=0)


def _scan(f: BinaryIO) -> LogView:
    f.seek(0, 2)
    size = f.tell()
    start = max(0, size - SCAN_BYTES)
    f.seek(0)
    head_bytes = f.read(HEAD_BYTES) or b""
    lineno = 0
    if start:
        f.seek(0)
        left = start
        while left > 0:  # the line number where the scan starts: newlines before it
            chunk = f.read(min(left, 1 << 20)) or b""
            if not chunk:
                break
            lineno += chunk.count(b"\n")
            left -= len(chunk)
        f.seek(start)
        f.readline()  # most likely a fragment of a line
        lineno += 1
    else:
        f.seek(0)
    seen: dict[str, _Seen] = {}
    extra: set[str] = set()
    tail: deque[tuple[int, int, str]] = deque(maxlen=TAIL_LINES)  # (number, offset, text)
    before: deque[str] = deque(maxlen=CONTEXT_LINES)
    waiting: list[_Seen] = []  # first lines of shapes still taking their after-lines
    offset = f.tell()
    while raw := f.readline():
        lineno += 1
        text = raw.decode("utf-8", errors="replace").rstrip("\r\n")[:LINE_CHARS]
        tail.append((lineno, offset, text))
        offset += len(raw)
        for s in waiting:
            s.after.append(text)
        waiting = [s for s in waiting if len(s.after) < CONTEXT_LINES]
        if ERROR.search(text):
            new = _remember(seen, extra, lineno, text, list(before))
            if new is not None:
                waiting.append(new)
        before.append(text)
    tail_start = tail[0][1] if tail else size
    tail_first = tail[0][0] if tail else lineno + 1
    errors = [_describe(s) for s in seen.values() if s.first < tail_first]
    head = head_bytes[: max(0, tail_start)].decode("utf-8", errors="replace")
    return LogView(
        size=size,
        head=head,
        tail="\n".join(t for _, _, t in tail),
        errors=errors,
        more_shapes=len(extra),
    )


def _remember(
    seen: dict[str, _Seen], extra: set[str], lineno: int, text: str, before: list[str]
) -> _Seen | None:
    """Count the line under its shape; the new entry when the shape is new."""
    shape = _SHAPE.sub("#", text.strip())
    known = seen.get(shape)
    if known is not None:
        known.last, known.last_text, known.count = lineno, text, known.count + 1
        return None
    if len(seen) < MAX_SHAPES:
        seen[shape] = _Seen(lineno, text, before)
        return seen[shape]
    if len(extra) < 10_000:
        extra.add(shape)
    return None


def _describe(s: _Seen) -> str:
    lines = [*s.before, f"line {s.first}: {s.first_text}", *s.after]
    if s.count > 1:
        lines.append(
            f"  [{s.count} lines of this shape in all; the last, line {s.last}: {s.last_text}]"
        )
    return "\n".join(lines)
