"""The look-around tools: what the model may look at before it decides.

Read-only and bounded: every result is at most ``RESULT_MAX`` characters, secrets are
masked, paths are confined to the workspace (through ``safefs``: no link is followed,
agentflow's home is never shown), and commands run inside the step's sandbox. The tools'
names and fields are a contract (../shared/DESIGN.md, The LLM).
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import shlex
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, PositiveInt, ValidationError

from agentflow import runbook, safefs
from agentflow.agent import search
from agentflow.plan import Plan, PlannedStep
from agentflow.redact import MASK, Redactor
from agentflow.sandbox import Sandbox, describe
from agentflow.sandbox.docker import STEPS_MOUNT, DockerSandbox
from agentflow.sandbox.slurm import SlurmSandbox
from agentflow.state import RunState, StepState
from agentflow.store import RunDir
from agentflow.textsafe import printable, revealed
from agentflow.workflow.model import Step, Workflow

RESULT_MAX = 4000
"""Characters of one tool result (about 1,000 tokens)."""


class ToolError(Exception):
    """A tool was called wrongly (unknown step, a path outside the workspace…): the model
    gets the message as an error result and may try again."""


@dataclass(frozen=True, kw_only=True)
class Scene:
    """What the tools may look at, fixed when the model is asked (a snapshot: the runner
    goes on while the model thinks)."""

    workspace: Path
    workflow: Workflow
    redact: Redactor
    hidden: frozenset[tuple[int, int]] = frozenset()
    """Identities (device, inode) never shown: agentflow's home, the tmux socket folder."""
    runbooks: list[Path] = field(default_factory=list)
    sandbox: Sandbox | None = None
    """The sandbox commands run in (None: planning before it exists; then commands fail
    with a clear result)."""
    run: RunDir | None = None
    plan: Plan | None = None
    state: RunState | None = None
    step: str | None = None
    """The step the question is about: commands run with its workdir and environment."""
    env: dict[str, str] = field(default_factory=dict)
    """That step's rendered environment (secrets are not in it)."""


LOOK_TOOLS: list[dict[str, Any]] = [
    {
        "name": "read_file",
        "description": "Read a workspace file (a path relative to the workspace), optionally "
        "a range of lines (1-based, inclusive). The result is bounded.",
        "input_schema": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "start_line": {"type": "integer", "minimum": 1},
                "end_line": {"type": "integer", "minimum": 1},
            },
            "required": ["path"],
        },
    },
    {
        "name": "list_dir",
        "description": "List a workspace directory (relative path; '.' is the workspace): "
        "names, kinds and sizes.",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
        },
    },
    {
        "name": "grep",
        "description": "Search workspace files for a regular expression: matching lines as "
        "file:line: text, bounded. `path` limits the search to a file or directory.",
        "input_schema": {
            "type": "object",
            "properties": {"pattern": {"type": "string"}, "path": {"type": "string"}},
            "required": ["pattern"],
        },
    },
    {
        "name": "read_log",
        "description": "Read a step's log (output.log) of an attempt (default: the latest): "
        "its last `tail` lines (default 60), its first `head` lines, the lines `around` a line "
        "number, or the lines matching the regular expression `grep`, with line numbers.",
        "input_schema": {
            "type": "object",
            "properties": {
                "step": {"type": "string"},
                "attempt": {"type": "integer", "minimum": 1},
                "grep": {"type": "string"},
                "tail": {"type": "integer", "minimum": 1},
                "head": {"type": "integer", "minimum": 1},
                "around": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "a line number: the lines around it",
                },
            },
            "required": ["step"],
        },
    },
    {
        "name": "step_info",
        "description": "A step's facts: status, planned command and overrides, rendered env "
        "(secrets masked), ready probe, success checks, outputs, needs and dependents.",
        "input_schema": {
            "type": "object",
            "properties": {"step": {"type": "string"}},
            "required": ["step"],
        },
    },
    {
        "name": "sandbox_info",
        "description": "The sandbox: backend, image, read-only root, mounts, free disk and "
        "memory, GPUs, listening TCP ports.",
        "input_schema": {"type": "object", "properties": {}},
    },
    {
        "name": "http_get",
        "description": "GET a loopback URL (http://127.0.0.1, http://localhost or "
        "http://[::1], any port) from inside the sandbox: status, a few headers and the start "
        "of the body; redirects are reported, not followed.",
        "input_schema": {
            "type": "object",
            "properties": {"url": {"type": "string"}},
            "required": ["url"],
        },
    },
    {
        "name": "command_help",
        "description": "Run `COMMAND --help` inside the sandbox (e.g. `python3 -m pkg.train`): "
        "its bounded output.",
        "input_schema": {
            "type": "object",
            "properties": {"command": {"type": "string"}},
            "required": ["command"],
        },
    },
    {
        "name": "search_runbooks",
        "description": "Search the workflow's runbooks (docs:) for words: the sections that "
        "mention them most, bounded.",
        "input_schema": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    },
]


# --- bounds -----------------------------------------------------------------------------

LINE_CHARS = 500
"""The longest line shown of a file or a log; a longer one is cut, saying so."""
GREP_LINE_CHARS = 300
"""The part of a matching line shown around the match."""
WINDOW = 256 << 10
"""Bytes of a file or a log read for one answer (from the line asked for)."""
SEEK_MAX = 64 << 20
"""How far into a file or a log lines are counted to find a line asked for."""
BINARY_SNIFF = 8192
"""A file with a NUL byte in its first 8 KiB is binary (as git decides)."""
LIST_MAX = 200
"""Entries of a folder shown."""
LIST_SCAN = 10_000
"""Entries of a folder looked at (sorted, counted): a folder of millions costs this."""
LOG_TAIL = 60
"""Lines of a log shown by default."""
LOG_LINES_MAX = 2000
AROUND = 15
"""Lines shown before and after the line ``around`` names."""
LOG_GREP_BYTES = 32 << 20
"""How far back from a log's end ``read_log`` with ``grep`` searches."""
EXEC_TIMEOUT = 5.0
"""Seconds a fact-finding command in the sandbox may take."""
HELP_TIMEOUT = 10.0
HELP_BYTES = 24_000
"""Bytes of a ``--help`` output kept (its start, where the usage is)."""
COMMAND_MAX = 300
HTTP_TIMEOUT = 3.0
RESPONSE_BYTES = 32 << 10
"""Bytes of an HTTP response read (status, headers, the start of the body)."""
BODY_CHARS = 2000
PATTERN_MAX = 1000
IDS_SHOWN = 40
"""Step ids listed in an error about an unknown step."""

_Handler = Callable[[Any], str]


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


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


def _numbered(
    first: int, lines: list[str], room: int, from_end: bool = False
) -> tuple[list[str], int]:
    """Lines numbered from ``first`` (``  12| text``, each cut at ``LINE_CHARS``), as
    many as fit in ``room`` characters, the first ones (or the last: ``from_end``); and
    how many did."""
    rows = [f"{first + i:>5}| {_short(line)}" for i, line in enumerate(lines)]
    shown = _fit(rows, room, from_end)
    return shown, len(shown)


def _short(line: str) -> str:
    if len(line) <= LINE_CHARS:
        return line
    return f"{line[:LINE_CHARS]} [... line cut: {len(line)} characters]"


def _fit(rows: list[str], room: int, from_end: bool = False) -> list[str]:
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


# --- the tools' arguments ---------------------------------------------------------------


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReadFileArgs(_Args):
    path: str
    start_line: PositiveInt | None = None
    end_line: PositiveInt | None = None


class ListDirArgs(_Args):
    path: str = "."


class GrepArgs(_Args):
    pattern: str
    path: str = "."


class ReadLogArgs(_Args):
    step: str
    attempt: PositiveInt | None = None
    grep: str | None = None
    tail: PositiveInt | None = None
    head: PositiveInt | None = None
    around: PositiveInt | None = None


class StepArgs(_Args):
    step: str


class NoArgs(_Args):
    pass


class HttpGetArgs(_Args):
    url: str


class CommandArgs(_Args):
    command: str


class QueryArgs(_Args):
    query: str


def _problems(e: ValidationError, model: type[_Args]) -> str:
    fields = ", ".join(model.model_fields) or "none"
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'input'}: "
        + (
            f"not a field (the fields: {fields})"
            if err["type"] == "extra_forbidden"
            else err["msg"]
        )
        for err in e.errors()
    )


# --- the tools --------------------------------------------------------------------------


class Toolbox:
    """The look-around tools over one ``Scene``."""

    def __init__(self, scene: Scene) -> None:
        self.scene = scene
        self._tools: dict[str, tuple[type[_Args], _Handler]] = {
            "read_file": (ReadFileArgs, self.read_file),
            "list_dir": (ListDirArgs, self.list_dir),
            "grep": (GrepArgs, self.grep),
            "read_log": (ReadLogArgs, self.read_log),
            "step_info": (StepArgs, self.step_info),
            "sandbox_info": (NoArgs, self.sandbox_info),
            "http_get": (HttpGetArgs, self.http_get),
            "command_help": (CommandArgs, self.command_help),
            "search_runbooks": (QueryArgs, self.search_runbooks),
        }

    def schemas(self) -> list[dict[str, Any]]:
        return LOOK_TOOLS

    def call(self, name: str, args: dict[str, Any]) -> str:
        """The tool's result (bounded, masked); ToolError when it was called wrongly."""
        if name not in self._tools:
            raise ToolError(f"unknown tool {name!r}: the tools are {', '.join(self._tools)}")
        model, handler = self._tools[name]
        try:
            parsed = model.model_validate(args)
        except ValidationError as e:
            raise ToolError(cut(self.scene.redact(f"{name}: {_problems(e, model)}"))) from None
        try:
            result = handler(parsed)
        except ToolError as e:
            raise ToolError(cut(self.scene.redact(str(e)))) from None
        return cut(self.scene.redact(result))

    # --- workspace files ----------------------------------------------------------------

    def _names(self, path: str) -> list[str]:
        """``path`` as names below the workspace, checked lexically (the walk itself goes
        through ``safefs``: no link followed, agentflow's home refused)."""
        if "\0" in path or len(path) > 4096:
            raise ToolError("give a path relative to the workspace (no NUL, not that long)")
        p = PurePosixPath(path)
        if p.is_absolute():
            raise ToolError(f"{path}: give a path relative to the workspace{self._inside(p)}")
        names = [n for n in p.parts if n != "."]
        if ".." in names:
            raise ToolError(f"{path}: '..' is not allowed: paths stay inside the workspace")
        return names

    def _inside(self, p: PurePosixPath) -> str:
        """A hint for an absolute path that names a workspace file (as the sandbox or the
        host sees it)."""
        bases = [
            PurePosixPath(self.scene.workflow.sandbox.workdir),
            PurePosixPath(self.scene.workspace),
        ]
        for base in bases:
            if p.is_relative_to(base):
                return f": in the workspace that is {str(p.relative_to(base)) or '.'!r}"
        return ", not an absolute one (only the workspace can be read)"

    def _refused(self, e: OSError, path: str) -> ToolError:
        """One line saying why ``path`` cannot be shown, naming the component at fault."""
        at = self._relative(e.filename) if e.filename else path
        if isinstance(e, FileNotFoundError):
            return ToolError(f"{path}: no such file or folder in the workspace")
        if e.errno == errno.ELOOP:
            return ToolError(f"{path}: {at} is a symbolic link: links are not followed")
        if "agentflow's own folder" in (e.strerror or ""):
            return ToolError(f"{path}: {at} is agentflow's own folder: not shown")
        if e.errno == errno.ENOTDIR:
            return ToolError(f"{path}: {at} is not a folder")
        if e.errno == errno.EINVAL:
            return ToolError(f"{path}: not a regular file (a FIFO, socket or device): not read")
        return ToolError(f"{path}: {e.strerror or e}")

    def _relative(self, filename: str | bytes) -> str:
        name = Path(os.fsdecode(filename))
        root = self.scene.workspace
        return str(name.relative_to(root)) if name.is_relative_to(root) else name.name

    def read_file(self, a: ReadFileArgs) -> str:
        names = self._names(a.path)
        if not names:
            raise ToolError("read_file needs a file: '.' is the workspace (list_dir shows it)")
        if a.start_line and a.end_line and a.end_line < a.start_line:
            raise ToolError(f"end_line {a.end_line} is before start_line {a.start_line}")
        rel = "/".join(names)
        root = self.scene.workspace
        try:
            with safefs.open_read(root.joinpath(*names), root, self.scene.hidden) as f:
                return self._file_window(f, rel, a.start_line or 1, a.end_line)
        except IsADirectoryError:
            raise ToolError(f"{rel} is a folder: list_dir shows it") from None
        except OSError as e:
            if e.errno == errno.EINVAL and self._is_dir(names):
                raise ToolError(f"{rel} is a folder: list_dir shows it") from None
            raise self._refused(e, rel) from None

    def _is_dir(self, names: list[str]) -> bool:
        root = self.scene.workspace
        try:
            return stat.S_ISDIR(
                safefs.lstat(root.joinpath(*names), root, self.scene.hidden).st_mode
            )
        except OSError:
            return False

    def _file_window(self, f: BinaryIO, rel: str, start: int, end: int | None) -> str:
        size = os.fstat(f.fileno()).st_size
        if b"\0" in f.read(BINARY_SNIFF):
            return f"{rel}: binary, {size} bytes (not shown)"
        if size == 0:
            return f"{rel}: empty (0 bytes)"
        before = _seek_line(f, start)
        data = f.read(WINDOW)
        if before < start - 1 or not data:
            raise ToolError(f"{rel} ends before line {start}")
        whole = f.tell() >= size
        lines, partial = _lines_of(data, whole)
        masked = mask_edges("\n".join(lines), self.scene.redact, partial).split("\n")
        if end is not None:
            masked = masked[: end - start + 1]
        shown, n = _numbered(start, masked, RESULT_MAX - 200)
        last = start + n - 1
        complete = whole and n == len(lines)
        head = f"{rel} ({_size(size)}): lines {start}-{last}"
        head += " (the end of the file)" if complete else ""
        more = ""
        if not complete and (end is None or last < end):
            more = f"\n[... the file goes on: read_file with start_line={last + 1}]"
        return head + "\n" + "\n".join(shown) + more

    def list_dir(self, a: ListDirArgs) -> str:
        names = self._names(a.path)
        rel = "/".join(names) or "."
        root = self.scene.workspace
        try:
            with safefs.open_dir(root, names, self.scene.hidden) as dfd:
                entries, more = self._entries(dfd)
        except OSError as e:
            raise self._refused(e, rel) from None
        if not entries:
            return f"{rel}: an empty folder"
        # Names masked before they are cut (a name can hold a secret too).
        named = [(self.scene.redact(name), st) for name, st in entries[:LIST_MAX]]
        rows = _fit([_row(name, st) for name, st in named], RESULT_MAX - 200)
        total = f"more than {LIST_SCAN}" if more else str(len(entries))
        text = f"{rel}: {total} entries (kind, size, name; links are not followed)\n"
        text += "\n".join(rows)
        if len(rows) < len(entries) or more:
            left = f"more than {len(entries) - len(rows)}" if more else len(entries) - len(rows)
            text += f"\n[... and {left} more]"
        return text

    def _entries(self, dfd: int) -> tuple[list[tuple[str, os.stat_result]], int]:
        """The folder's entries by name (at most ``LIST_SCAN`` looked at: 1 when there are
        more); agentflow's own folders left out."""
        with os.scandir(dfd) as it:
            taken = list(islice(it, LIST_SCAN + 1))
        more = 1 if len(taken) > LIST_SCAN else 0
        entries = []
        for e in sorted(taken[:LIST_SCAN], key=lambda e: e.name):
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) in self.scene.hidden:
                continue
            entries.append((e.name, st))
        return entries, more

    def grep(self, a: GrepArgs) -> str:
        rx = _compiled(a.pattern)
        names = self._names(a.path)
        rel = "/".join(names) or "."
        root = self.scene.workspace
        try:
            st = safefs.lstat(root.joinpath(*names), root, self.scene.hidden)
        except OSError as e:
            raise self._refused(e, rel) from None
        found = search.search(self._request(root, names, rx.pattern))
        if found.error:
            raise ToolError(f"{rel}: {found.error}")
        if stat.S_ISREG(st.st_mode) and found.skipped.get("binary"):
            return f"{rel}: binary, {st.st_size} bytes (not searched)"
        rows = [f"{m.path}:{m.line}: {_around(m)}" for m in found.matches]
        count = f"{len(found.matches)} matching lines ({found.files} files read)"
        return _listing(f"/{rx.pattern}/ in {rel}: {count}", rows, _searched(found))

    def _request(self, root: Path, names: list[str], pattern: str, **kw: Any) -> search.Request:
        return search.Request(
            root=str(root),
            start=names,
            pattern=pattern,
            secrets=list(self.scene.redact.values),
            hidden=sorted(self.scene.hidden),
            **kw,
        )

    # --- logs ---------------------------------------------------------------------------

    def _step_ids(self) -> list[str]:
        ids = [s.id for s in self.scene.plan.steps] if self.scene.plan else []
        return ids + [s.id for s in self.scene.workflow.steps if s.id not in ids]

    def _known(self, step: str) -> str:
        ids = self._step_ids()
        if step in ids:
            return step
        shown = ", ".join(ids[:IDS_SHOWN]) + (
            f" and {len(ids) - IDS_SHOWN} more" if len(ids) > IDS_SHOWN else ""
        )
        raise ToolError(f"unknown step {step!r}: the steps are {shown}")

    def read_log(self, a: ReadLogArgs) -> str:
        step = self._known(a.step)
        if sum(x is not None for x in (a.grep, a.tail, a.head, a.around)) > 1:
            raise ToolError("give one of grep, tail, head, around (or none: the last 60 lines)")
        run = self.scene.run
        if run is None:
            raise ToolError("there is no run yet (planning): no step has a log")
        names, label = self._log_names(run, step, a.attempt)
        path = run.steps_path.joinpath(*names)
        if a.grep is not None:
            return self._log_grep(run.steps_path, names, label, a.grep)
        try:
            with safefs.open_read(path, run.steps_path) as f:
                return self._log_lines(f, label, a)
        except FileNotFoundError:
            raise ToolError(f"{label}: no log (the step has not written one)") from None
        except OSError as e:
            raise ToolError(f"{label}: output.log not read: it {e.strerror}") from None

    def _log_names(self, run: RunDir, step: str, attempt: int | None) -> tuple[list[str], str]:
        """The log's names below the run's ``steps/`` and how to call it: the latest
        attempt's in the step's folder, an earlier one's in ``attempt-N/``."""
        st = self.scene.state.steps.get(step) if self.scene.state else None
        latest = st.attempts if st else None
        status = f", {st.status}" if st else ""
        if latest == 0:
            raise ToolError(f"step {step!r} has not run yet{status}: no log")
        if attempt is None or attempt == latest:
            return [step, "output.log"], f"{step}, attempt {latest or 'latest'}{status}"
        if latest is not None and attempt > latest:
            raise ToolError(
                f"step {step!r} has had {latest} attempts: there is no attempt {attempt}"
            )
        kept = self._kept_attempts(run, step)
        if attempt not in kept:
            which = ", ".join(map(str, kept)) if kept else "none"
            raise ToolError(
                f"the log of {step!r} attempt {attempt} is not kept (earlier attempts kept: "
                f"{which}; the latest is read without `attempt`)"
            )
        return [step, f"attempt-{attempt}", "output.log"], f"{step}, attempt {attempt}"

    def _kept_attempts(self, run: RunDir, step: str) -> list[int]:
        try:
            with safefs.open_dir(run.steps_path, [step]) as dfd, os.scandir(dfd) as it:
                names = [e.name for e in islice(it, LIST_SCAN) if e.is_dir(follow_symlinks=False)]
        except OSError:
            return []
        return sorted(int(n[8:]) for n in names if re.fullmatch(r"attempt-[0-9]{1,6}", n))

    def _log_lines(self, f: BinaryIO, label: str, a: ReadLogArgs) -> str:
        size = os.fstat(f.fileno()).st_size
        if a.head or a.around:
            first = 1 if a.head else max(1, (a.around or 1) - AROUND)
            count = min(a.head or 2 * AROUND + 1, LOG_LINES_MAX)
            if _seek_line(f, first) < first - 1:
                raise ToolError(f"{label}: the log ends before line {first}")
            data = f.read(WINDOW)
            lines, partial = _lines_of(data, f.tell() >= size)
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
            first = self._line_count(f, size) - len(lines) + 1 if size <= SEEK_MAX else 0
            partial = False
        text = printable(mask_edges("\n".join(lines), self.scene.redact, partial))
        rows = text.split("\n") if lines else []
        tail = not (a.head or a.around)
        if first <= 0:  # a log too long to count its lines: shown without numbers
            kept = _fit([_short(r) for r in rows], RESULT_MAX - 200, from_end=True)
            head = f"{label} ({_size(size)}, too long to number its lines): the last lines"
            return head + "\n" + "\n".join(kept)
        shown, n = _numbered(first, rows, RESULT_MAX - 200, from_end=tail)
        if tail:
            first += len(rows) - n
        head = f"{label} ({_size(size)}): lines {first}-{first + n - 1}"
        if n < len(rows):
            head += f" (the other {len(rows) - n} lines asked for do not fit: ask for fewer)"
        return head + "\n" + "\n".join(shown)

    def _line_count(self, f: BinaryIO, size: int) -> int:
        """Lines in the whole log (read again, streamed; at most ``SEEK_MAX``)."""
        f.seek(0)
        lines = 0
        last = b"\n"
        while chunk := f.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
        return lines + (0 if last == b"\n" or size == 0 else 1)

    def _log_grep(self, root: Path, names: list[str], label: str, pattern: str) -> str:
        rx = _compiled(pattern)
        request = self._request(root, names, rx.pattern, tail=LOG_GREP_BYTES, binary=True)
        found = search.search(request)
        if found.error:
            raise ToolError(f"{label}: output.log not read: it {found.error}")
        rows = [f"{m.line}: {printable(_around(m))}" for m in found.matches]
        head = f"/{rx.pattern}/ in the log of {label}: {len(found.matches)} matching lines"
        if found.first_line > 1:
            head += f" (searched from line {found.first_line}, the last {_size(LOG_GREP_BYTES)})"
        return _listing(head, rows, _searched(found, files=False))

    # --- a step's facts -----------------------------------------------------------------

    def _graph(self) -> dict[str, list[str]]:
        """Each step's needs: the plan's (it may hold steps the planner added), else the
        workflow's."""
        graph = {s.id: list(s.needs) for s in self.scene.plan.steps} if self.scene.plan else {}
        for s in self.scene.workflow.steps:
            graph.setdefault(s.id, list(s.needs))
        return graph

    def step_info(self, a: StepArgs) -> str:
        step_id = self._known(a.step)
        wf = self.scene.workflow
        step = next((s for s in wf.steps if s.id == step_id), None)
        planned = _planned(self.scene.plan, step_id)
        st = self.scene.state.steps.get(step_id) if self.scene.state else None
        info: dict[str, Any] = {"step": step_id, "description": step.description if step else None}
        if st is not None:
            info |= _state_facts(st)
        info["command"] = planned.run if planned else (step.run if step else None)
        if planned is None and step is not None and step.task:
            info["task"] = step.task
        if planned is not None and planned.source == "planner":
            info |= {"written_by": "planner", "notes": planned.notes}
        if st is not None:
            info["run_override"] = st.run_override
            info["env_overrides"] = self._env(st.env_overrides) or None
        info |= self._env_facts(step_id, step)
        if step is not None:
            info |= _settings(wf, step)
        if st is not None and st.outputs:
            info["output_values"] = st.outputs
        graph = self._graph()
        info["needs"] = graph.get(step_id, [])
        direct = [s for s, needs in graph.items() if step_id in needs]
        info["dependents"] = direct
        info["downstream"] = _downstream(graph, step_id)
        shown = {k: v for k, v in info.items() if v not in (None, [], {})}
        return json.dumps(shown, indent=1, ensure_ascii=False, default=str)

    def _env(self, env: dict[str, str]) -> dict[str, str]:
        secret = set(self.scene.workflow.secrets)
        return {k: MASK if k in secret else v for k, v in env.items()}

    def _env_facts(self, step_id: str, step: Step | None) -> dict[str, Any]:
        if step_id == self.scene.step and self.scene.env:
            return {"env": self._env(self.scene.env), "env_is": "rendered, as the step gets it"}
        written = {**self.scene.workflow.env, **(step.env if step else {})}
        return {"env": self._env(written), "env_is": "as written (${{ }} not filled in)"}

    # --- the sandbox --------------------------------------------------------------------

    def sandbox_info(self, a: NoArgs) -> str:
        box = self.scene.sandbox
        # The sandbox's own settings where it has them (what it was started with).
        own = box.config if isinstance(box, DockerSandbox | SlurmSandbox) else None
        cfg = own or self.scene.workflow.sandbox
        backend = box.name if box is not None else cfg.backend
        lines = [f"backend: {backend}"]
        if backend in ("docker", "slurm"):
            facts, relaxed = describe(cfg)
            lines += facts + [f"relaxed: {r}" for r in relaxed]
        if backend == "docker":
            lines.append(
                f"mounted: the workspace at {cfg.workdir} and the run's steps/ at "
                f"{STEPS_MOUNT} (read-write); agentflow's home is hidden where it lies in one"
            )
        elif backend != "slurm":
            lines.append(
                "local: steps run on this machine as the user, in the workspace; nothing is "
                "isolated (the root is writable, the network is the host's)"
            )
        if box is None:
            lines.append("not measured: the sandbox is not started yet")
            return "\n".join(lines)
        return "\n".join(lines + self._measured(box))

    def _measured(self, box: Sandbox) -> list[str]:
        code, out = box.exec(_FACTS, self._workdir(), EXEC_TIMEOUT)
        out = self.scene.redact(out)  # before anything is cut from it
        parts = _sections(out)
        if not parts:
            return [f"not measured: exit {code}: {out.strip()[-300:]}"]
        measured = [
            _disk(parts.get("df", "")),
            _memory(parts.get("mem", ""), parts.get("cgroup", "")),
        ]
        ports = _ports(parts.get("tcp", ""))
        measured.append("listening TCP ports: " + (", ".join(ports) if ports else "none"))
        gpus = [line for line in parts.get("gpu", "").splitlines() if line.strip()]
        measured.append("GPUs: " + ("; ".join(gpus[:16]) if gpus else "none (no nvidia-smi)"))
        if parts.get("user", "").strip():
            measured.append("user: " + parts["user"].strip()[:300])
        if code == 124:
            measured.append(f"(the measurement stopped at its time limit, {EXEC_TIMEOUT:g}s)")
        return measured

    def _workdir(self) -> str:
        """Where commands run: the step's folder (when it is written plainly and there),
        else the workspace."""
        assert self.scene.sandbox is not None
        step = next((s for s in self.scene.workflow.steps if s.id == self.scene.step), None)
        rel = step.workdir if step is not None and step.workdir else None
        if rel is not None:
            try:
                names = self._names(rel)
            except ToolError:
                names = []
            rel = "/".join(names) if "${{" not in rel and names and self._is_dir(names) else None
        return self.scene.sandbox.workdir(rel)

    def http_get(self, a: HttpGetArgs) -> str:
        host, port, target = _loopback(a.url)
        request = (
            f"GET {target} HTTP/1.0\r\nHost: {_hostport(host, port)}\r\n"
            "User-Agent: agentflow\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        )
        box = self.scene.sandbox
        if box is None:
            # No sandbox: no service of the run to ask, and the host's own loopback (other
            # programs' services) is not the model's to look at.
            raise ToolError("there is no sandbox yet (planning before it starts): no service")
        if box.name == "docker":
            # The container has its own loopback (network none): ask from inside it.
            script = f"set -- {shlex.join([host, str(port), request])}\n{_HTTP_GET}"
            code, text = box.exec(script, self._workdir(), HTTP_TIMEOUT + 2)
            if not text.startswith("HTTP/"):
                why = text.strip().splitlines()[-1] if text.strip() else f"exit {code}"
                return f"GET {a.url}: no answer ({why[:300]})"
        else:
            text, why = _fetch(host, port, request)
            if not text:
                return f"GET {a.url}: no answer ({why})"
        return _response(a.url, self.scene.redact(text))  # masked before the body is cut

    def command_help(self, a: CommandArgs) -> str:
        box = self.scene.sandbox
        if box is None:
            raise ToolError("there is no sandbox yet (planning before it starts): nothing can run")
        command = _simple_command(a.command)
        asks = re.search(r"(^|\s)(--help|-h|help)$", command)
        script = command if asks else f"{command} --help"
        # On a line of its own (a `#` in it ends there); the start of the output is kept,
        # where the usage is.
        wrapped = f'{{ {script}\necho "@@exit $?"; }} </dev/null 2>&1 | head -c {HELP_BYTES}'
        code, out = box.exec(wrapped, self._workdir(), HELP_TIMEOUT, self.scene.env or None)
        m = re.search(r"@@exit (\d+)\s*$", out)
        if code == 124 and m is None:
            head = f"$ {script}\n(stopped at the time limit, {HELP_TIMEOUT:g}s)"
        elif m is not None:
            head = f"$ {script}\n(exit {m.group(1)})"
            out = out[: m.start()]
        else:
            head = f"$ {script}\n(output cut at {HELP_BYTES} bytes)"
        body = printable(mask_edges(out, self.scene.redact, m is None))
        return f"{head}\n{body.rstrip()}" if body.strip() else f"{head}\n(no output)"

    # --- runbooks -----------------------------------------------------------------------

    def search_runbooks(self, a: QueryArgs) -> str:
        words = sorted({w for w in re.findall(r"\w+", a.query.lower()) if len(w) > 1})[:20]
        if not words:
            raise ToolError("give words to look for in the runbooks")
        if not self.scene.runbooks:
            return "the workflow has no runbooks (docs:)"
        hits: list[tuple[int, int, str, str]] = []
        unread = []
        for path in self.scene.runbooks:
            try:
                text = self.scene.redact(runbook.read(path, self.scene.workspace))
            except OSError as e:
                unread.append(f"{path.name}: {e.strerror or e}")
                continue
            for section in runbook.sections(text):
                low = section.lower()
                present = [w for w in words if w in low]
                if present:
                    count = sum(low.count(w) for w in present)
                    hits.append((len(present), count, path.name, section))
        hits.sort(key=lambda h: (-h[0], -h[1]))
        rows = [f"[{name}]\n{cut(section, 1500)}" for _, _, name, section in hits]
        head = f"runbook sections mentioning {' '.join(words)}: {len(hits)}"
        if unread:
            head += " (not read: " + "; ".join(unread) + ")"
        return _listing(head, rows, "", sep="\n\n")


# --- reading lines ----------------------------------------------------------------------


def _seek_line(f: BinaryIO, line: int) -> int:
    """Seek ``f`` to the start of line ``line`` (1-based), streaming; the number of lines
    passed (``line - 1`` when it is there, fewer when the file ends first)."""
    f.seek(0)
    want, seen, pos = line - 1, 0, 0
    while seen < want:
        if pos >= SEEK_MAX:
            raise ToolError(
                f"line {line} lies beyond the first {_size(SEEK_MAX)}: not read (grep finds "
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


def _lines_of(data: bytes, whole: bool) -> tuple[list[str], bool]:
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


# --- grep -------------------------------------------------------------------------------


def _compiled(pattern: str) -> re.Pattern[str]:
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


def _around(m: search.Match) -> str:
    """The matching line, cut to ``GREP_LINE_CHARS`` around the match."""
    text = m.text
    if len(text) <= GREP_LINE_CHARS:
        return text
    start = max(0, min(m.start - GREP_LINE_CHARS // 3, len(text) - GREP_LINE_CHARS))
    piece = text[start : start + GREP_LINE_CHARS]
    return ("…" if start else "") + piece + ("…" if start + GREP_LINE_CHARS < len(text) else "")


def _listing(head: str, rows: list[str], tail: str, sep: str = "\n") -> str:
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


def _searched(found: search.Found, files: bool = True) -> str:
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
        "bytes": f"it stopped after reading {_size(search.BYTES)}",
    }
    if found.stopped:
        notes.append(stopped.get(found.stopped, found.stopped))
    return f"[{'; '.join(notes)}]" if notes else ""


# --- folders ----------------------------------------------------------------------------


def _row(name: str, st: os.stat_result) -> str:
    mode = st.st_mode
    kind = (
        "dir" if stat.S_ISDIR(mode)
        else "file" if stat.S_ISREG(mode)
        else "link" if stat.S_ISLNK(mode)
        else "fifo" if stat.S_ISFIFO(mode)
        else "socket" if stat.S_ISSOCK(mode)
        else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "other"
    )  # fmt: skip
    size = _size(st.st_size) if kind == "file" else "-"
    shown = revealed(name)[:200] + ("/" if kind == "dir" else "")
    return f"{kind:<6} {size:>10}  {shown}"


# --- steps ------------------------------------------------------------------------------


def _planned(plan: Plan | None, step_id: str) -> PlannedStep | None:
    if plan is None:
        return None
    return next((s for s in plan.steps if s.id == step_id), None)


def _state_facts(st: StepState) -> dict[str, Any]:
    return {
        "status": st.status,
        "attempts": st.attempts,
        "retries": st.retries,
        "exit_code": st.exit_code,
        "message": st.message,
        "kill_reason": st.kill_reason,
        "started_at": st.started_at,
        "finished_at": st.finished_at,
    }


def _settings(wf: Workflow, step: Step) -> dict[str, Any]:
    """What the workflow says of the step: where and how it runs, and how it is judged."""
    retry = wf.retry_of(step)
    return {
        "workdir": step.workdir,
        "service": step.service or None,
        "timeout_s": wf.timeout_of(step),
        "stall_timeout_s": wf.stall_timeout_of(step),
        "retry": {"limit": retry.limit, "on": retry.on} if retry.limit else None,
        "on_failure": wf.on_failure_of(step),
        "ready": step.ready.model_dump(mode="json", exclude_none=True) if step.ready else None,
        "success": (
            step.success.model_dump(mode="json", exclude_defaults=True) if step.success else None
        ),
        "outputs": {
            name: o.model_dump(mode="json", exclude_none=True, by_alias=True)
            for name, o in step.outputs.items()
        },
        "recover": [r.model_dump(mode="json", exclude_defaults=True) for r in step.recover],
    }


def _downstream(graph: dict[str, list[str]], step_id: str) -> list[str]:
    """Every step that needs ``step_id``, directly or through others, in the graph's order."""
    below = {step_id}
    changed = True
    while changed:
        changed = False
        for s, needs in graph.items():
            if s not in below and below.intersection(needs):
                below.add(s)
                changed = True
    return [s for s in graph if s in below and s != step_id]


# --- sandbox facts ----------------------------------------------------------------------

# Sections a line "@@NAME" each; the GPU last: a hung nvidia-smi loses nothing else.
_FACTS = """\
echo @@df; df -Pk . 2>&1 | tail -n 1
echo @@mem; grep -E '^(MemTotal|MemAvailable):' /proc/meminfo 2>&1
echo @@cgroup; cat /sys/fs/cgroup/memory.max 2>/dev/null \
  || cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null
echo @@tcp; cat /proc/net/tcp /proc/net/tcp6 2>/dev/null \
  | grep -E '^ *[0-9]+: [0-9A-Fa-f]+:[0-9A-Fa-f]+ [0-9A-Fa-f]+:[0-9A-Fa-f]+ 0A ' | head -n 200
echo @@user; id 2>&1 | head -c 300; echo
echo @@gpu; if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L 2>&1 | head -n 16; fi
"""


def _sections(out: str) -> dict[str, str]:
    parts: dict[str, str] = {}
    name = None
    for line in out.splitlines():
        m = re.fullmatch(r"@@(\w+)", line.strip())
        if m:
            name = m.group(1)
            parts[name] = ""
        elif name is not None:
            parts[name] += line + "\n"
    return parts


def _disk(df: str) -> str:
    fields = df.split()
    if len(fields) >= 6 and fields[1].isdigit() and fields[3].isdigit():
        free, total = int(fields[3]) << 10, int(fields[1]) << 10
        # Not the mount point: busybox names the first mount of the device (docker-init).
        return f"free disk in the workdir: {_size(free)} of {_size(total)}"
    return f"free disk in the workdir: unknown ({df.strip()[:200] or 'no df'})"


def _memory(meminfo: str, cgroup: str) -> str:
    kb = dict(re.findall(r"^(\w+):\s+(\d+) kB", meminfo, re.MULTILINE))
    text = "memory: " + (
        f"{_size(int(kb['MemAvailable']) << 10)} available of {_size(int(kb['MemTotal']) << 10)}"
        if "MemAvailable" in kb and "MemTotal" in kb
        else "unknown"
    )
    limit = cgroup.strip()
    if limit.isdigit() and int(limit) < 1 << 60:  # cgroup v1 writes "no limit" as ~2^63
        text += f"; the sandbox's limit (cgroup): {_size(int(limit))}"
    return text


def _ports(tcp: str) -> list[str]:
    """Listening sockets of /proc/net/tcp{,6} lines (state 0A) as address:port."""
    found: dict[tuple[int, str], None] = {}
    for line in tcp.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[3] != "0A":
            continue
        address, _, port = fields[1].partition(":")
        try:
            found[(int(port, 16), _address(address))] = None
        except ValueError:
            continue
    return [
        f"{addr}:{port}" if ":" not in addr else f"[{addr}]:{port}" for port, addr in sorted(found)
    ]


def _address(hex_address: str) -> str:
    """An address as /proc/net/tcp writes it: 32-bit words in the host's order (little
    endian on every machine Docker runs on)."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return str(ipaddress.IPv4Address(words))
    return str(ipaddress.IPv6Address(words))


# --- http -------------------------------------------------------------------------------

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_SHOWN_HEADERS = (
    "content-type", "content-length", "location", "server", "retry-after", "www-authenticate",
)  # fmt: skip
_PY_GET = """\
import socket, sys, time
end, data = time.monotonic() + 3, b""
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)
    s.sendall(sys.argv[3].encode())
    while len(data) < 32768 and time.monotonic() < end:
        s.settimeout(max(0.05, end - time.monotonic()))
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
except OSError as e:
    if not data:
        sys.exit(str(e.strerror or e))
sys.stdout.buffer.write(data[:32768])
"""
_HTTP_GET = f"""\
if command -v python3 >/dev/null 2>&1; then exec python3 -c {shlex.quote(_PY_GET)} "$@"
elif command -v nc >/dev/null 2>&1; then
  printf '%s' "$3" | nc -w 3 "$1" "$2" 2>&1 | head -c {RESPONSE_BYTES}
else echo "the sandbox has no python3 or nc for an HTTP GET" >&2; exit 127
fi"""


def _loopback(url: str) -> tuple[str, int, str]:
    """Host, port and request target of a loopback ``http://`` URL; ToolError for any
    other (a name, another address, user info, a scheme but http)."""
    if len(url) > 2000 or not url.isascii() or not url.isprintable() or " " in url:
        raise ToolError("give a URL of printable ASCII, no spaces, at most 2000 characters")
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.netloc:
        raise ToolError(
            f"{url}: only http:// URLs on loopback (http://127.0.0.1:PORT/…, "
            "http://localhost:PORT/…, http://[::1]:PORT/…)"
        )
    if "@" in parts.netloc or parts.hostname not in LOOPBACK:
        raise ToolError(
            f"{url}: only loopback is reachable (127.0.0.1, localhost, [::1]), not "
            f"{parts.hostname or parts.netloc!r}"
        )
    try:
        port = parts.port or 80
    except ValueError:
        raise ToolError(f"{url}: the port is not a number from 1 to 65535") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, port, target


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _fetch(host: str, port: int, request: str) -> tuple[str, str]:
    """The start of the response (at most ``RESPONSE_BYTES``, within ``HTTP_TIMEOUT``
    in all), from this machine; or '' and why there was none. HTTP/1.0, raw: no proxy,
    no redirect followed."""
    deadline = time.monotonic() + HTTP_TIMEOUT
    data = bytearray()
    try:
        with socket.create_connection((host, port), timeout=HTTP_TIMEOUT) as s:
            s.sendall(request.encode("ascii"))
            while len(data) < RESPONSE_BYTES and (left := deadline - time.monotonic()) > 0:
                s.settimeout(left)
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
    except TimeoutError:
        if not data:
            return "", f"no answer within {HTTP_TIMEOUT:g}s"
    except OSError as e:
        if not data:
            return "", str(e.strerror or e)
    return bytes(data[:RESPONSE_BYTES]).decode("utf-8", errors="replace"), ""


def _response(url: str, text: str) -> str:
    """Status, a few headers and the start of the body of a raw HTTP response."""
    head, sep, body = text.partition("\r\n\r\n")
    if not sep:
        head, sep, body = text.partition("\n\n")
    lines = head.splitlines()
    status = lines[0][:200] if lines else "(no status line)"
    shown, others = [], 0
    for line in lines[1:]:
        name = line.split(":", 1)[0].strip().lower()
        if name in _SHOWN_HEADERS:
            shown.append(line[:200])
        else:
            others += 1
    out = [f"GET {url}", status, *shown]
    if others:
        out.append(f"({others} more headers)")
    if re.match(r"HTTP/\S+ 3\d\d", status):
        out.append("(a redirect: not followed)")
    if "\0" in body[:BINARY_SNIFF]:
        out.append(f"\n(a binary body: {len(body)} bytes read)")
    elif body:
        more = (
            f"\n[... {len(body) - BODY_CHARS} more characters read]"
            if len(body) > BODY_CHARS
            else ""
        )
        out.append("\n" + body[:BODY_CHARS] + more)
    else:
        out.append("\n(an empty body)")
    return printable("\n".join(out))


# --- commands ---------------------------------------------------------------------------


def _simple_command(command: str) -> str:
    """``command`` when it is one command with its arguments (quoting and variables are
    the shell's): no list, pipe, redirection or command substitution, one line."""
    command = command.strip()
    if not command:
        raise ToolError("give a command, like `python3 -m pkg.train`")
    if len(command) > COMMAND_MAX:
        raise ToolError(f"the command is {len(command)} characters: at most {COMMAND_MAX}")
    if any(c in command for c in "\n\r\0"):
        raise ToolError("give the command on one line")
    if "`" in command or "$(" in command:
        raise ToolError("no command substitution (`…`, $(…)): give one command")
    try:
        tokens = list(shlex.shlex(command, posix=True, punctuation_chars=True))
    except ValueError as e:
        raise ToolError(f"the command cannot be read: {e}") from None
    ops = [t for t in tokens if t and all(c in "();<>|&" for c in t)]
    if ops:
        raise ToolError(
            f"one command with its arguments: {ops[0]!r} is not allowed (its --help is run)"
        )
    return command
