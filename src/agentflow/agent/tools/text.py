"""Bounded text: results cut to ``RESULT_MAX`` saying so, secrets masked also at a cut
edge, lines numbered and fitted, and a window of lines read from a file or a log."""

from __future__ import annotations

from typing import BinaryIO

from agentflow.agent.tools.scene import ToolError
from agentflow.redact import MASK, Redactor

RESULT_MAX = 4000
"""Characters of one tool result (about 1,000 tokens)."""
LINE_CHARS = 500
"""The longest line shown of a file or a log; a longer one is cut, saying so."""
WINDOW = 256 << 10
"""Bytes of a file or a log read for one answer (from the line asked for)."""
SEEK_MAX = 64 << 20
"""How far into a file or a log lines are counted to find a line asked for."""
BINARY_SNIFF = 8192
"""A file with a NUL byte in its first 8 KiB is binary (as git decides)."""


def cut(text: str, limit: int = RESULT_MAX) -> str:
    """``text`` in at most ``limit`` characters; a cut one ends saying how much is left out
    (at a line's end when one is near)."""
    if len(text) <= limit:
        return text
    room = limit - 60
    end = text.rfind("\n", room - 400, room)
    end = end if end > 0 else room
    return f"{text[:end]}\n[... {len(text) - end} more characters not shown]"


def mask_edges(text: str, redact: Redactor, cut_end: bool) -> str:
    """``text`` masked; when it was cut from a longer one at its end (``cut_end``), also
    a piece of a secret there: the window read may end inside one."""
    text = redact(text)
    for value in redact.values if cut_end else []:
        for k in range(min(len(value), len(text)) - 1, 3, -1):
            if text.endswith(value[:k]):
                return text[:-k] + MASK
    return text


def human_size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


def numbered(
    first: int, lines: list[str], room: int, from_end: bool = False
) -> tuple[list[str], int]:
    """Lines numbered from ``first`` (``  12| text``, each cut at ``LINE_CHARS``), as
    many as fit in ``room`` characters, the first ones (or the last: ``from_end``); and
    how many did."""
    rows = [f"{first + i:>5}| {short(line)}" for i, line in enumerate(lines)]
    shown = fit(rows, room, from_end)
    return shown, len(shown)


def short(line: str) -> str:
    if len(line) <= LINE_CHARS:
        return line
    return f"{line[:LINE_CHARS]} [... line cut: {len(line)} characters]"


def fit(rows: list[str], room: int, from_end: bool = False) -> list[str]:
    """As many of ``rows`` as fit in ``room`` characters (one at least), from the start
    or the end."""
    shown: list[str] = []
    used = 0
    for row in reversed(rows) if from_end else rows:
        if used + len(row) + 1 > room and shown:
            break
        shown.append(row)
        used += len(row) + 1
    return shown[::-1] if from_end else shown


def listing(head: str, rows: list[str], tail: str, sep: str = "\n") -> str:
    """``head``, as many ``rows`` as fit in a result, and ``tail``; says how many rows
    were left out."""
    room = RESULT_MAX - len(head) - len(tail) - 80
    shown: list[str] = []
    for row in rows:
        if sum(len(r) + len(sep) for r in shown) + len(row) > room:
            break
        shown.append(row)
    text = head + ("\n" + sep.join(shown) if shown else "")
    if len(shown) < len(rows):
        text += f"\n[... {len(rows) - len(shown)} more not shown: narrow the search]"
    return text + (f"\n{tail}" if tail else "")


# --- reading lines ----------------------------------------------------------------------


def seek_line(f: BinaryIO, line: int) -> int:
    """Seek ``f`` to the start of line ``line`` (1-based), streaming; the number of lines
    passed (``line - 1`` when it is there, fewer when the file ends first)."""
    f.seek(0)
    want, seen, pos = line - 1, 0, 0
    while seen < want:
        if pos >= SEEK_MAX:
            raise ToolError(
                f"line {line} lies beyond the first {human_size(SEEK_MAX)}: not read (grep finds "
                "lines further on)"
            )
        chunk = f.read(1 << 20)
        if not chunk:
            break
        n = chunk.count(b"\n")
        if seen + n >= want:
            at = -1
            for _ in range(want - seen):
                at = chunk.index(b"\n", at + 1)
            f.seek(pos + at + 1)
            return want
        seen, pos = seen + n, pos + len(chunk)
    return seen


def lines_of(data: bytes, whole: bool) -> tuple[list[str], bool]:
    """The lines of a window read from a line's start; a piece of a line at its end is
    left out (True when a single line is longer than the window: then it is the piece)."""
    partial = False
    if not whole:
        last = data.rfind(b"\n")
        if last >= 0:
            data = data[: last + 1]
        else:
            partial = True
    text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines], partial
