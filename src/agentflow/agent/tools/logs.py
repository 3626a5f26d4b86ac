"""``read_log``: a step's log of an attempt, by its end, its start, a line or a pattern;
bounded, masked, numbered, read through ``safefs`` (a planted link is not followed)."""

from __future__ import annotations

import os
import re
from itertools import islice
from pathlib import Path
from typing import BinaryIO

from agentflow import safefs
from agentflow.agent import search
from agentflow.agent.tools.files import LIST_SCAN
from agentflow.agent.tools.patterns import around, compiled, request, searched
from agentflow.agent.tools.scene import Scene, ToolError, known
from agentflow.agent.tools.schemas import ReadLogArgs
from agentflow.agent.tools.text import (
    RESULT_MAX,
    SEEK_MAX,
    WINDOW,
    fit,
    human_size,
    lines_of,
    listing,
    mask_edges,
    numbered,
    seek_line,
    short,
)
from agentflow.store import RunDir
from agentflow.textsafe import printable

LOG_TAIL = 60
"""Lines of a log shown by default."""
LOG_LINES_MAX = 2000
AROUND = 15
"""Lines shown before and after the line ``around`` names."""
LOG_GREP_BYTES = 32 << 20
"""How far back from a log's end ``read_log`` with ``grep`` searches."""


def read_log(scene: Scene, a: ReadLogArgs) -> str:
    """The lines of a step's log the model asked for (default: the last ``LOG_TAIL``)."""
    step = known(scene, a.step)
    if sum(x is not None for x in (a.grep, a.tail, a.head, a.around)) > 1:
        raise ToolError("give one of grep, tail, head, around (or none: the last 60 lines)")
    run = scene.run
    if run is None:
        raise ToolError("there is no run yet (planning): no step has a log")
    names, label = _log_names(scene, run, step, a.attempt)
    path = run.steps_path.joinpath(*names)
    if a.grep is not None:
        return _log_grep(scene, run.steps_path, names, label, a.grep)
    try:
        with safefs.open_read(path, run.steps_path) as f:
            return _log_lines(scene, f, label, a)
    except FileNotFoundError:
        raise ToolError(f"{label}: no log (the step has not written one)") from None
    except OSError as e:
        raise ToolError(f"{label}: output.log not read: it {e.strerror}") from None


def _log_names(scene: Scene, run: RunDir, step: str, attempt: int | None) -> tuple[list[str], str]:
    """The log's names below the run's ``steps/`` and how to call it: the latest
    attempt's in the step's folder, an earlier one's in ``attempt-N/``."""
    st = scene.state.steps.get(step) if scene.state else None
    latest = st.attempts if st else None
    status = f", {st.status}" if st else ""
    if latest == 0:
        raise ToolError(f"step {step!r} has not run yet{status}: no log")
    if attempt is None or attempt == latest:
        return [step, "output.log"], f"{step}, attempt {latest or 'latest'}{status}"
    if latest is not None and attempt > latest:
        raise ToolError(f"step {step!r} has had {latest} attempts: there is no attempt {attempt}")
    kept = _kept_attempts(run, step)
    if attempt not in kept:
        which = ", ".join(map(str, kept)) if kept else "none"
        raise ToolError(
            f"the log of {step!r} attempt {attempt} is not kept (earlier attempts kept: "
            f"{which}; the latest is read without `attempt`)"
        )
    return [step, f"attempt-{attempt}", "output.log"], f"{step}, attempt {attempt}"


def _kept_attempts(run: RunDir, step: str) -> list[int]:
    try:
        with safefs.open_dir(run.steps_path, [step]) as dfd, os.scandir(dfd) as it:
            names = [e.name for e in islice(it, LIST_SCAN) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []
    return sorted(int(n[8:]) for n in names if re.fullmatch(r"attempt-[0-9]{1,6}", n))


def _log_lines(scene: Scene, f: BinaryIO, label: str, a: ReadLogArgs) -> str:
    size = os.fstat(f.fileno()).st_size
    if a.head or a.around:
        first = 1 if a.head else max(1, (a.around or 1) - AROUND)
        count = min(a.head or 2 * AROUND + 1, LOG_LINES_MAX)
        if seek_line(f, first) < first - 1:
            raise ToolError(f"{label}: the log ends before line {first}")
        data = f.read(WINDOW)
        lines, partial = lines_of(data, f.tell() >= size)
        lines = lines[:count]
    else:
        count = min(a.tail or LOG_TAIL, LOG_LINES_MAX)
        f.seek(max(0, size - WINDOW))
        data = f.read(WINDOW)
        lines = data.decode("utf-8", errors="replace").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        # Beyond the window's start, its first line is a piece: left out.
        lines = lines[-count:] if size <= WINDOW else lines[1:][-count:]
        first = _line_count(f, size) - len(lines) + 1 if size <= SEEK_MAX else 0
        partial = False
    text = printable(mask_edges("\n".join(lines), scene.redact, partial))
    rows = text.split("\n") if lines else []
    tail = not (a.head or a.around)
    if first <= 0:  # a log too long to count its lines: shown without numbers
        kept = fit([short(r) for r in rows], RESULT_MAX - 200, from_end=True)
        head = f"{label} ({human_size(size)}, too long to number its lines): the last lines"
        return head + "\n" + "\n".join(kept)
    shown, n = numbered(first, rows, RESULT_MAX - 200, from_end=tail)
    if tail:
        first += len(rows) - n
    head = f"{label} ({human_size(size)}): lines {first}-{first + n - 1}"
    if n < len(rows):
        head += f" (the other {len(rows) - n} lines asked for do not fit: ask for fewer)"
    return head + "\n" + "\n".join(shown)


def _line_count(f: BinaryIO, size: int) -> int:
    """Lines in the whole log (read again, streamed; at most ``SEEK_MAX``)."""
    f.seek(0)
    lines = 0
    last = b"\n"
    while chunk := f.read(1 << 20):
        lines += chunk.count(b"\n")
        last = chunk[-1:]
    return lines + (0 if last == b"\n" or size == 0 else 1)


def _log_grep(scene: Scene, root: Path, names: list[str], label: str, pattern: str) -> str:
    rx = compiled(pattern)
    asked = request(scene, root, names, rx.pattern, tail=LOG_GREP_BYTES, binary=True)
    found = search.search(asked)
    if found.error:
        raise ToolError(f"{label}: output.log not read: it {found.error}")
    rows = [f"{m.line}: {printable(around(m))}" for m in found.matches]
    head = f"/{rx.pattern}/ in the log of {label}: {len(found.matches)} matching lines"
    if found.first_line > 1:
        head += f" (searched from line {found.first_line}, the last {human_size(LOG_GREP_BYTES)})"
    return listing(head, rows, searched(found, files=False))
