"""Searching files a step controls with the model's regular expression, within a deadline.

Python's ``re`` cannot be interrupted: ``(a+)+$`` on one line of a's runs for ever, holding
its thread. So the search runs in a child process of its own (``python -I -m
agentflow.agent.search``) that the caller kills at its deadline; the child stops by itself a
little earlier, and streams each match as it finds it, so that a killed search still gives
what it found. The child walks and reads through ``safefs`` (no link followed at any depth,
regular files only, agentflow's home skipped by identity), reads bounded lines, and masks
the secrets in each line *before* matching: a pattern cannot find out a secret's value a
character at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import stat
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

from agentflow import safefs
from agentflow.redact import Redactor

SECONDS = 1.5
"""How long the child searches before it stops by itself."""
GRACE = 1.0
"""How much longer the caller waits (the child's start) before it kills it."""
MATCHES = 200
FILES = 5000
"""The most files one search reads."""
BYTES = 32 << 20
"""The most bytes one search reads (a single file is read up to this much)."""
FILE_MAX = 2 << 20
"""Larger files are skipped by a search of a folder."""
LINE_READ = 64 << 10
"""The most bytes of one line read and masked; the rest of a longer line is skipped."""
LINE_SCAN = 2000
"""Characters of a line the pattern is run on (and sent back)."""
ENTRIES = 10_000
"""The most entries of one folder looked at."""
DEPTH = 40
SNIFF = 8192
"""A file with a NUL byte in its first ``SNIFF`` bytes is binary (as git decides)."""
SKIP_DIRS = frozenset(
    {".git", ".hg", ".svn", ".venv", "venv", "node_modules", "__pycache__", ".mypy_cache",
     ".pytest_cache", ".ruff_cache", ".tox"}
)  # fmt: skip
OUTPUT_MAX = 4 << 20
"""The most output of the child the caller reads (matches are capped well below it)."""


@dataclass(frozen=True)
class Request:
    root: str
    """The trusted folder walks start from (the workspace, the run's ``steps/``)."""
    start: list[str]
    """Names below ``root``: the file or folder searched."""
    pattern: str
    secrets: list[str] = field(default_factory=list)
    hidden: list[tuple[int, int]] = field(default_factory=list)
    tail: int = 0
    """A single file only: search its last ``tail`` bytes (0: from its start)."""
    binary: bool = False
    """Search a single file even when it looks binary (a log with a NUL in it)."""


@dataclass(frozen=True)
class Match:
    path: str
    """Relative to the searched folder's root (``root``)."""
    line: int
    text: str
    """The line, masked, at most ``LINE_SCAN`` characters."""
    start: int
    end: int


@dataclass
class Found:
    matches: list[Match] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    """Why files or folders were left out (``binary``, ``large``, ``link``…), how many."""
    stopped: str | None = None
    """Why the search ended early: ``time``, ``matches``, ``files``, ``bytes``, ``killed``."""
    first_line: int = 1
    """A tail search: the number of the first line searched."""
    error: str | None = None


# --- the caller's side ---------------------------------------------------------------------


def search(request: Request, seconds: float = SECONDS) -> Found:
    """Run ``request`` in a child process, killed ``GRACE`` after ``seconds``."""
    proc = subprocess.Popen(
        [sys.executable, "-I", "-m", "agentflow.agent.search", str(seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={},  # nothing of this process's environment: the child needs none
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        # The secrets go on stdin, never on a command line other users can read.
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(json.dumps(asdict(request)).encode())
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        out, complete = _read(proc.stdout.fileno(), time.monotonic() + seconds + GRACE)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    found, done = _parse(out)
    if not complete and found.stopped is None:
        found.stopped = "killed"
    elif complete and not done:
        found.error = "could not be searched (the search process failed)"
    return found


def _read(fd: int, deadline: float) -> tuple[bytes, bool]:
    """What the child writes until it ends (True) or the deadline passes (False)."""
    out = bytearray()
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], left)[0]:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return bytes(out), True
        out += chunk
        if len(out) > OUTPUT_MAX:
            break
    return bytes(out), False


def _parse(out: bytes) -> tuple[Found, bool]:
    """What the child found, and whether it said it was done."""
    found = Found()
    done_seen = False
    for raw in out.splitlines():
        try:
            record = json.loads(raw)
        except ValueError:
            continue  # the last line of a killed child, cut
        if "m" in record:
            found.matches.append(Match(*record["m"]))
        elif "done" in record:
            done = record["done"]
            matches = found.matches
            found = Found(**{k: v for k, v in done.items() if k != "matches"})
            found.matches = matches
            done_seen = True
    return found, done_seen


# --- the child's side ----------------------------------------------------------------------


class _Stop(Exception):
    def __init__(self, why: str) -> None:
        self.why = why


class _Search:
    def __init__(self, request: Request, seconds: float, emit: Callable[[Match], None]) -> None:
        self.r = request
        self.root = Path(request.root)
        self.rx = re.compile(request.pattern)
        self.redact = Redactor(request.secrets)
        self.hidden = frozenset((int(d), int(i)) for d, i in request.hidden)
        self.deadline = time.monotonic() + seconds
        self.emit = emit
        self.found = Found()

    def run(self) -> Found:
        try:
            st = safefs.lstat(self.root.joinpath(*self.r.start), self.root, self.hidden)
            if stat.S_ISDIR(st.st_mode):
                self._tree()
            else:
                names = self.r.start
                with safefs.open_dir(self.root, names[:-1], self.hidden) as dfd:
                    self._file(dfd, names[-1], "/".join(names), single=True)
        except _Stop as s:
            self.found.stopped = s.why
        except OSError as e:
            self.found.error = e.strerror or str(e)
        return self.found

    def _skip(self, why: str) -> None:
        self.found.skipped[why] = self.found.skipped.get(why, 0) + 1

    def _tree(self) -> None:
        """Breadth first (the files near the top first), each folder opened from the root
        again: no descriptor is held per level, however deep the tree."""
        queue: deque[list[str]] = deque([self.r.start])
        while queue:
            names = queue.popleft()
            try:
                with safefs.open_dir(self.root, names, self.hidden) as dfd:
                    for name, st in self._entries(dfd):
                        self._entry(dfd, names, name, st, queue)
            except OSError:
                self._skip("unreadable")

    def _entries(self, dfd: int) -> list[tuple[str, os.stat_result]]:
        with os.scandir(dfd) as it:
            taken = list(islice(it, ENTRIES + 1))
        if len(taken) > ENTRIES:
            self._skip("folders cut")
            taken = taken[:ENTRIES]
        entries = []
        for e in sorted(taken, key=lambda e: e.name):
            with contextlib.suppress(OSError):
                entries.append((e.name, e.stat(follow_symlinks=False)))
        return entries

    def _entry(
        self,
        dfd: int,
        names: list[str],
        name: str,
        st: os.stat_result,
        queue: deque[list[str]],
    ) -> None:
        rel = "/".join([*names, name])
        if stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) in self.hidden:
                return  # agentflow's own folder: not even counted
            if name in SKIP_DIRS or len(names) >= DEPTH:
                self._skip("folders")
            else:
                queue.append([*names, name])
        elif stat.S_ISLNK(st.st_mode):
            self._skip("links")
        elif not stat.S_ISREG(st.st_mode):
            self._skip("special files")
        elif st.st_size > FILE_MAX:
            self._skip("large")
        else:
            self._file(dfd, name, rel, single=False)

    def _file(self, dfd: int, name: str, rel: str, single: bool) -> None:
        if self.found.files >= FILES:
            raise _Stop("files")
        fd = safefs.open_file(dfd, name, rel)
        self.found.files += 1
        with os.fdopen(fd, "rb") as f:
            head = f.read(SNIFF)
            self.found.bytes += len(head)
            if b"\0" in head and not self.r.binary:
                self._skip("binary")
                return
            line = 1
            if single and self.r.tail:
                line = self._seek_tail(f)
            else:
                f.seek(0)
            for raw in self._lines(f):
                self._match(rel, line, raw)
                line += 1

    def _seek_tail(self, f: BinaryIO) -> int:
        """Seek to the first whole line of the last ``tail`` bytes; its number."""
        size = os.fstat(f.fileno()).st_size
        start = max(0, size - self.r.tail)
        f.seek(0)
        newlines = 0
        left = start
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            newlines += chunk.count(b"\n")
            left -= len(chunk)
            self._check_time()
        f.seek(start)
        if start and not _at_line_start(f, start):
            f.readline()  # the rest of a line that began before the window
            newlines += 1
        self.found.first_line = newlines + 1
        return newlines + 1

    def _lines(self, f: BinaryIO) -> Iterator[bytes]:
        """Lines of at most ``LINE_READ`` bytes (the rest of a longer one is skipped)."""
        while True:
            raw = f.readline(LINE_READ)
            if not raw:
                return
            self._count(len(raw))
            rest = raw
            while rest and not rest.endswith(b"\n"):  # skip the rest of a longer line
                rest = f.readline(LINE_READ)
                self._count(len(rest))
            yield raw

    def _count(self, n: int) -> None:
        self.found.bytes += n
        if self.found.bytes > BYTES:
            raise _Stop("bytes")
        self._check_time()

    def _match(self, rel: str, line: int, raw: bytes) -> None:
        # Masked first, then cut: a cut must not leave the start of a secret showing, and
        # the pattern must not see what the model may not.
        text = self.redact(raw.decode("utf-8", errors="replace")).rstrip("\r\n")[:LINE_SCAN]
        m = self.rx.search(text)
        if m is None:
            return
        self.found.matches.append(Match(rel, line, text, m.start(), m.end()))
        self.emit(self.found.matches[-1])
        if len(self.found.matches) >= MATCHES:
            raise _Stop("matches")

    def _check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise _Stop("time")


def _at_line_start(f: BinaryIO, offset: int) -> bool:
    f.seek(offset - 1)
    before = f.read(1)
    f.seek(offset)
    return before == b"\n"


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else SECONDS
    data: dict[str, Any] = json.loads(sys.stdin.buffer.read(1 << 20))
    request = Request(**data)
    out = sys.stdout.buffer

    def emit(m: Match) -> None:
        out.write(json.dumps({"m": [m.path, m.line, m.text, m.start, m.end]}).encode() + b"\n")
        out.flush()  # a search killed at its deadline still gives what it found

    found = _Search(request, seconds, emit).run()
    done = asdict(found)
    done.pop("matches")
    out.write(json.dumps({"done": done}).encode() + b"\n")
    out.flush()


if __name__ == "__main__":
    main()
