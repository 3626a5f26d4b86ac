"""The symptom of a failure: the line of the failed attempt's log that shows it, and a
``match`` for it (escaped, with what changes from run to run made general)."""

from __future__ import annotations

import re
from pathlib import Path

from agentflow.agent import logscan
from agentflow.state import RunState
from agentflow.store import RunDir
from agentflow.textsafe import printable

MATCH_BYTES = 64 * 1024
"""How much of a failed attempt's log a ``recover:`` rule is matched against."""
LONGEST_MATCH = 100
"""A symptom line longer than this gives a ``match`` of its start only."""


def attempt_log(run: RunDir, state: RunState, step: str, attempt: int) -> Path:
    folder = run.step_dir(step)
    st = state.steps.get(step)
    if st is not None and attempt < st.attempts:
        folder = folder / f"attempt-{attempt}"
    return folder / "output.log"


def _clean(line: str) -> str:
    return printable(line).strip()


def symptom_line(
    failed: str, succeeded: str | None, pattern: str | None = None, volatile: tuple[str, ...] = ()
) -> str | None:
    """The line of a failed attempt's log that shows the failure: the last that ``pattern``
    matches; else, of its last 200 lines, the last that looks like an error and that the
    attempt that succeeded did not print (numbers aside), else the last it did not print,
    else the last that looks like an error."""
    lines = [c for c in (_clean(x) for x in failed.splitlines()) if c]
    if pattern is not None:
        hits = [x for x in lines if re.search(pattern, x)]
        if hits:
            return hits[-1]
        m = re.search(pattern, failed, re.MULTILINE)
        return _clean(m.group(0).splitlines()[0]) if m and m.group(0).strip() else None
    lines = lines[-200:]

    def new(line: str) -> bool:
        return not succeeded or not re.search(match_for(line, volatile), succeeded, re.MULTILINE)

    errors = [x for x in lines if logscan.ERROR.search(x)]
    for group in ([x for x in errors if new(x)], [x for x in lines if new(x)], errors):
        if group:
            return group[-1]
    return None


_TOKEN = re.compile(
    r"\x00|0x[0-9a-fA-F]+|\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b|\d+|.",
    re.DOTALL,
)


def match_for(line: str, volatile: tuple[str, ...] = ()) -> str:
    """A ``match`` for ``line``: its text escaped, with numbers, hex ids and the
    ``volatile`` parts (the run's own folder and id) made general, cut to its start when
    long."""
    text = line.replace("\x00", "")
    for v in sorted((v for v in volatile if v), key=len, reverse=True):
        text = text.replace(v, "\x00")
    if len(text) > LONGEST_MATCH:
        cut = text.rfind(" ", 0, LONGEST_MATCH)
        text = text[: cut if cut > LONGEST_MATCH // 2 else LONGEST_MATCH].rstrip()
    out: list[str] = []
    for m in _TOKEN.finditer(text):
        t = m.group(0)
        if t == "\x00":
            out.append(".*")
        elif t.startswith("0x") and len(t) > 2:
            out.append(r"0x[0-9a-fA-F]+")
        elif len(t) >= 8 and not t.isdigit():
            out.append(r"[0-9a-fA-F]+")
        elif t.isdigit():
            out.append(r"\d+")
        elif t in "\\.^$*+?{}[]|()":
            out.append("\\" + t)
        elif ord(t) < 0x20 or ord(t) == 0x7F:
            out.append(f"\\x{ord(t):02x}")
        else:
            out.append(t)
    return "".join(out)


def plain(line: str) -> str:
    return "".join("\\" + ch if ch in "\\.^$*+?{}[]|()" else ch for ch in line)
