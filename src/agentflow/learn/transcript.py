"""The recovery agent's transcript in a run's events: its decision (the data of a
``diagnosis`` event; for runs recorded before events had data, what the message says), the
look-around calls it made before it, and the patch it applied.

All of it is the model's text, written from a step's output: hostile. What reaches a
runbook is cut to a few lines and characters and stripped of control characters; nothing
here reads a file a step could write (the saved ``.diff`` in the step's folder is not read:
the patch comes from the event)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from agentflow.store import Event
from agentflow.textsafe import one_line, printable
from agentflow.workflow.model import Scalar

FIX_LINES = 24
"""Changed lines of a patch shown in a runbook entry."""
LINE_CHARS = 160
"""Characters of one of them."""
CITED = 4
"""Tool calls cited in an entry ("Found by reading `config.py`")."""

_MESSAGE = re.compile(
    r"(?P<action>\w+): (?P<diagnosis>.*) \[(?P<category>[^\[\]]*); \d+ tokens\]", re.DOTALL
)


class Decision(BaseModel):
    """The fields of ``submit_decision`` that a ``diagnosis`` event records (the contract
    in DESIGN.md, "The LLM"); what learning does not use is ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    action: str
    diagnosis: str = ""
    category: str | None = None
    run: str | None = None
    env: dict[str, str] | None = None
    scope: Literal["step", "downstream"] | None = None
    inputs: dict[str, Scalar] | None = None
    patch: str | None = None
    rerun: list[str] | None = None
    wait: str | None = None
    recorded: bool = True
    """False: read from the message of a run recorded before events had data (the action,
    diagnosis and category only; the changes come from ``command_proposed``)."""


def decision(e: Event) -> Decision | None:
    """The decision a ``diagnosis`` event records, or None when it cannot be read."""
    if e.data is not None:
        try:
            return Decision.model_validate(e.data)
        except ValidationError:
            return None
    m = _MESSAGE.fullmatch(e.message or "")
    if m is None:
        return None
    category = m["category"] if m["category"] != "uncategorised" else None
    return Decision(action=m["action"], diagnosis=m["diagnosis"], category=category, recorded=False)


def cited(tool: str, args: object, step: str, failed: int) -> str | None:
    """What a look-around call looked at, as a few words for a runbook (``reading
    `config.py```); None for what is not worth citing: the model's own words, a call that
    failed, and the failed attempt's own log (every diagnosis starts from it)."""
    a = args if isinstance(args, dict) else {}

    def arg(name: str) -> str:
        return md_code(one_line(str(a.get(name) or ""), 60))

    if tool == "read_log" and a.get("step") in (None, step):
        if a.get("attempt") in (None, failed):
            return None
        return f"reading the log of `{step}` (attempt {one_line(str(a['attempt']), 8)})"
    where = f" in {arg('path')}" if a.get("path") else ""
    phrases = {
        "read_file": f"reading {arg('path')}",
        "list_dir": f"listing {arg('path')}",
        "grep": f"searching for {arg('pattern')}{where}",
        "read_log": f"reading the log of {arg('step')}",
        "step_info": f"looking at step {arg('step')}",
        "sandbox_info": "looking at the sandbox",
        "http_get": f"fetching {arg('url')}",
        "command_help": f"reading {md_code(one_line(str(a.get('command') or ''), 50) + ' --help')}",
        "search_runbooks": "searching the runbooks",
    }
    return phrases.get(tool)


def found_by(phrases: list[str]) -> str | None:
    """``Found by reading `a` and the log of `b`.``: the first few, in the order they were
    made, a verb said once while it stays the same."""
    shown: list[str] = []
    last = ""
    for p in dict.fromkeys(phrases):
        if len(shown) == CITED:
            break
        verb, _, rest = p.partition(" ")
        shown.append(rest if verb == last else p)
        last = verb
    if not shown:
        return None
    said = shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]
    return f"Found by {said}."


def md_code(text: str) -> str:
    """``text`` as Markdown inline code."""
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def patched_files(patch: str) -> list[str]:
    """The files a unified diff changes, from its ``+++`` lines (``b/`` taken off)."""
    files = []
    for line in patch.splitlines():
        if line.startswith("+++ ") and not line.startswith("+++ /dev/null"):
            name = line[4:].split("\t", 1)[0].strip()
            files.append(name[2:] if name.startswith("b/") else name)
    return files


def changed_lines(patch: str) -> list[str]:
    """A patch's headers and its ``+``/``-`` lines (the context left out), at most
    ``FIX_LINES`` of them, each cut to ``LINE_CHARS`` and printable."""
    out: list[str] = []
    total = 0
    for line in patch.splitlines():
        if not line.startswith(("+", "-")):
            continue
        total += 1
        if len(out) < FIX_LINES:
            clean = printable(line).replace("\t", "    ")
            out.append(clean if len(clean) <= LINE_CHARS else clean[: LINE_CHARS - 1] + "…")
    if total > len(out):
        out.append(f"# [... {total - len(out)} more changed lines]")
    return out


def names(values: object, limit: int = 10) -> tuple[str, ...]:
    """Step ids or file names from an event's data, as one printable line each, bounded."""
    if not isinstance(values, list):
        return ()
    return tuple(one_line(str(v), 100) for v in values[:limit] if str(v).strip())
