"""The model's regular expressions: checked, run by ``search`` (a child process killed at
its deadline), and what it found shown (for ``grep`` and ``read_log``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from agentflow.agent import search
from agentflow.agent.tools.scene import Scene, ToolError
from agentflow.agent.tools.text import human_size

GREP_LINE_CHARS = 300
"""The part of a matching line shown around the match."""
PATTERN_MAX = 1000


def compiled(pattern: str) -> re.Pattern[str]:
    """The model's pattern compiled; ToolError saying what is wrong with it."""
    if not pattern:
        raise ToolError("give a regular expression to look for")
    if len(pattern) > PATTERN_MAX:
        raise ToolError(f"the pattern is {len(pattern)} characters: at most {PATTERN_MAX}")
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ToolError(f"invalid regular expression {pattern!r}: {e}") from None
    except (OverflowError, RecursionError):
        raise ToolError(f"the regular expression {pattern[:80]!r} is too large") from None


def around(m: search.Match) -> str:
    """The matching line, cut to ``GREP_LINE_CHARS`` around the match."""
    text = m.text
    if len(text) <= GREP_LINE_CHARS:
        return text
    start = max(0, min(m.start - GREP_LINE_CHARS // 3, len(text) - GREP_LINE_CHARS))
    piece = text[start : start + GREP_LINE_CHARS]
    return ("…" if start else "") + piece + ("…" if start + GREP_LINE_CHARS < len(text) else "")


def searched(found: search.Found, files: bool = True) -> str:
    """What the search left out and why it stopped, in a line ('' when nothing)."""
    notes = []
    if files and found.skipped:
        notes.append(
            "left out: " + ", ".join(f"{n} {why}" for why, n in sorted(found.skipped.items()))
        )
    stopped = {
        "time": f"it stopped at its time limit ({search.SECONDS:g}s)",
        "killed": "it was stopped at its time limit: the pattern may be too slow (nested "
        "repetition like (a+)+), or the tree too large",
        "matches": f"it stopped at {search.MATCHES} matches",
        "files": f"it stopped after {search.FILES} files",
        "bytes": f"it stopped after reading {human_size(search.BYTES)}",
    }
    if found.stopped:
        notes.append(stopped.get(found.stopped, found.stopped))
    return f"[{'; '.join(notes)}]" if notes else ""


def request(scene: Scene, root: Path, names: list[str], pattern: str, **kw: Any) -> search.Request:
    """A search below ``root`` from ``names``, masking the scene's secrets in what it
    finds and never entering its hidden folders."""
    return search.Request(
        root=str(root),
        start=names,
        pattern=pattern,
        secrets=list(scene.redact.values),
        hidden=sorted(scene.hidden),
        **kw,
    )
