"""Runbooks (``docs:``) as context for the model, bounded: failure-mode sections first and
whole, the rest cut to what the budget leaves."""

from __future__ import annotations

import os
import re
from pathlib import Path

from agentflow import safefs

_HEADING = re.compile(r"^#{1,6}\s", re.MULTILINE)
_FAILURE = re.compile(r"fail|error|troubl|recover|problem|symptom|known issue", re.IGNORECASE)


def sections(text: str) -> list[str]:
    """Markdown split at its headings (the text before the first heading is one section)."""
    starts = [m.start() for m in _HEADING.finditer(text)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    return [text[a:b].strip() for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


def _level(section: str) -> int:
    head = section.split("\n", 1)[0]
    return len(head) - len(head.lstrip("#")) if head.startswith("#") else 0


def failure_flags(parts: list[str]) -> list[bool]:
    """For each section: whether it is about failures, by its own heading or by a heading
    above it (the entries under ``## Failure modes`` are failure modes too)."""
    flags: list[bool] = []
    stack: list[tuple[int, bool]] = []  # (level, about failures) of the enclosing headings
    for section in parts:
        level = _level(section)
        while stack and level and stack[-1][0] >= level:
            stack.pop()
        own = bool(_FAILURE.search(section.split("\n", 1)[0])) if level else False
        flag = own or any(f for _, f in stack)
        flags.append(flag)
        if level:
            stack.append((level, flag))
    return flags


RUNBOOK_MAX = 1 << 20
"""The largest runbook read (in a workspace, a step could have made it any size)."""


def read(path: Path, root: Path | None) -> str:
    """A runbook's text. One in the workspace (``root``) is read through the guarded path:
    a step could have replaced it with a link to a host file, whose text would go to the
    model."""
    normal = Path(os.path.normpath(path.absolute()))
    if root is not None and normal.is_relative_to(root.absolute()):
        return safefs.read_text(normal, root.absolute(), RUNBOOK_MAX)
    with normal.open("rb") as f:
        return f.read(RUNBOOK_MAX).decode("utf-8", errors="replace")


def bounded(
    paths: list[Path], budget_chars: int, failures_only: bool = False, root: Path | None = None
) -> str:
    """The runbooks as one text of at most ``budget_chars``; those under ``root`` (the
    workspace) are read without following links."""
    chosen: list[tuple[bool, str, str]] = []  # (is a failure mode, file, section)
    for path in paths:
        try:
            text = read(path, root)
        except OSError:
            continue
        parts = sections(text)
        for section, is_failure in zip(parts, failure_flags(parts), strict=True):
            if is_failure or not failures_only:
                chosen.append((is_failure, path.name, section))
    out: list[str] = []
    left = budget_chars
    # Failure modes first and whole while they fit; then the rest, each cut to what is left.
    for _, name, section in sorted(chosen, key=lambda c: not c[0]):
        if left <= 200:
            break
        piece = f"[{name}]\n{section}"
        if len(piece) > left:
            piece = piece[: left - 20] + "\n[... cut ...]"
        out.append(piece)
        left -= len(piece) + 2
    return "\n\n".join(out)
