"""The workspace's files: ``read_file``, ``list_dir`` and ``grep``, and the checks every
path the model names goes through (relative, no ``..``; the walk itself is ``safefs``'s:
no link followed, agentflow's home refused by identity)."""

from __future__ import annotations

import errno
import os
import stat
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from agentflow import safefs
from agentflow.agent import search
from agentflow.agent.tools.patterns import around, compiled, request, searched
from agentflow.agent.tools.scene import Scene, ToolError
from agentflow.agent.tools.schemas import GrepArgs, ListDirArgs, ReadFileArgs
from agentflow.agent.tools.text import (
    BINARY_SNIFF,
    RESULT_MAX,
    WINDOW,
    fit,
    human_size,
    lines_of,
    listing,
    mask_edges,
    numbered,
    seek_line,
)
from agentflow.textsafe import revealed

LIST_MAX = 200
"""Entries of a folder shown."""
LIST_SCAN = 10_000
"""Entries of a folder looked at (sorted, counted): a folder of millions costs this."""


def names_of(scene: Scene, path: str) -> list[str]:
    """``path`` as names below the workspace, checked lexically (the walk itself goes
    through ``safefs``: no link followed, agentflow's home refused)."""
    if "\0" in path or len(path) > 4096:
        raise ToolError("give a path relative to the workspace (no NUL, not that long)")
    p = PurePosixPath(path)
    if p.is_absolute():
        raise ToolError(f"{path}: give a path relative to the workspace{_inside(scene, p)}")
    names = [n for n in p.parts if n != "."]
    if ".." in names:
        raise ToolError(f"{path}: '..' is not allowed: paths stay inside the workspace")
    return names


def _inside(scene: Scene, p: PurePosixPath) -> str:
    """A hint for an absolute path that names a workspace file (as the sandbox or the
    host sees it)."""
    bases = [
        PurePosixPath(scene.workflow.sandbox.workdir),
        PurePosixPath(scene.workspace),
    ]
    for base in bases:
        if p.is_relative_to(base):
            return f": in the workspace that is {str(p.relative_to(base)) or '.'!r}"
    return ", not an absolute one (only the workspace can be read)"


def refused(scene: Scene, e: OSError, path: str) -> ToolError:
    """One line saying why ``path`` cannot be shown, naming the component at fault."""
    at = _relative(scene, e.filename) if e.filename else path
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


def _relative(scene: Scene, filename: str | bytes) -> str:
    name = Path(os.fsdecode(filename))
    root = scene.workspace
    return str(name.relative_to(root)) if name.is_relative_to(root) else name.name


def read_file(scene: Scene, a: ReadFileArgs) -> str:
    """A workspace file's lines (a window from ``start_line``), numbered and masked."""
    names = names_of(scene, a.path)
    if not names:
        raise ToolError("read_file needs a file: '.' is the workspace (list_dir shows it)")
    if a.start_line and a.end_line and a.end_line < a.start_line:
        raise ToolError(f"end_line {a.end_line} is before start_line {a.start_line}")
    rel = "/".join(names)
    root = scene.workspace
    try:
        with safefs.open_read(root.joinpath(*names), root, scene.hidden) as f:
            return _file_window(scene, f, rel, a.start_line or 1, a.end_line)
    except IsADirectoryError:
        raise ToolError(f"{rel} is a folder: list_dir shows it") from None
    except OSError as e:
        if e.errno == errno.EINVAL and is_dir(scene, names):
            raise ToolError(f"{rel} is a folder: list_dir shows it") from None
        raise refused(scene, e, rel) from None


def is_dir(scene: Scene, names: list[str]) -> bool:
    """Whether ``names`` is a folder of the workspace (looked at through ``safefs``)."""
    root = scene.workspace
    try:
        return stat.S_ISDIR(safefs.lstat(root.joinpath(*names), root, scene.hidden).st_mode)
    except OSError:
        return False


def _file_window(scene: Scene, f: BinaryIO, rel: str, start: int, end: int | None) -> str:
    size = os.fstat(f.fileno()).st_size
    if b"\0" in f.read(BINARY_SNIFF):
        return f"{rel}: binary, {size} bytes (not shown)"
    if size == 0:
        return f"{rel}: empty (0 bytes)"
    before = seek_line(f, start)
    data = f.read(WINDOW)
    if before < start - 1 or not data:
        raise ToolError(f"{rel} ends before line {start}")
    whole = f.tell() >= size
    lines, partial = lines_of(data, whole)
    masked = mask_edges("\n".join(lines), scene.redact, partial).split("\n")
    if end is not None:
        masked = masked[: end - start + 1]
    shown, n = numbered(start, masked, RESULT_MAX - 200)
    last = start + n - 1
    complete = whole and n == len(lines)
    head = f"{rel} ({human_size(size)}): lines {start}-{last}"
    head += " (the end of the file)" if complete else ""
    more = ""
    if not complete and (end is None or last < end):
        more = f"\n[... the file goes on: read_file with start_line={last + 1}]"
    return head + "\n" + "\n".join(shown) + more


def list_dir(scene: Scene, a: ListDirArgs) -> str:
    """A workspace folder's entries: kind, size, name (links shown, not followed)."""
    names = names_of(scene, a.path)
    rel = "/".join(names) or "."
    root = scene.workspace
    try:
        with safefs.open_dir(root, names, scene.hidden) as dfd:
            entries, more = _entries(scene, dfd)
    except OSError as e:
        raise refused(scene, e, rel) from None
    if not entries:
        return f"{rel}: an empty folder"
    # Names masked before they are cut (a name can hold a secret too).
    named = [(scene.redact(name), st) for name, st in entries[:LIST_MAX]]
    rows = fit([_row(name, st) for name, st in named], RESULT_MAX - 200)
    total = f"more than {LIST_SCAN}" if more else str(len(entries))
    text = f"{rel}: {total} entries (kind, size, name; links are not followed)\n"
    text += "\n".join(rows)
    if len(rows) < len(entries) or more:
        left = f"more than {len(entries) - len(rows)}" if more else len(entries) - len(rows)
        text += f"\n[... and {left} more]"
    return text


def _entries(scene: Scene, dfd: int) -> tuple[list[tuple[str, os.stat_result]], int]:
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
        if stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) in scene.hidden:
            continue
        entries.append((e.name, st))
    return entries, more


def grep(scene: Scene, a: GrepArgs) -> str:
    """The workspace lines matching the model's pattern, searched in a child process."""
    rx = compiled(a.pattern)
    names = names_of(scene, a.path)
    rel = "/".join(names) or "."
    root = scene.workspace
    try:
        st = safefs.lstat(root.joinpath(*names), root, scene.hidden)
    except OSError as e:
        raise refused(scene, e, rel) from None
    found = search.search(request(scene, root, names, rx.pattern))
    if found.error:
        raise ToolError(f"{rel}: {found.error}")
    if stat.S_ISREG(st.st_mode) and found.skipped.get("binary"):
        return f"{rel}: binary, {st.st_size} bytes (not searched)"
    rows = [f"{m.path}:{m.line}: {around(m)}" for m in found.matches]
    count = f"{len(found.matches)} matching lines ({found.files} files read)"
    return listing(f"/{rx.pattern}/ in {rel}: {count}", rows, searched(found))


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
    size = human_size(st.st_size) if kind == "file" else "-"
    shown = revealed(name)[:200] + ("/" if kind == "dir" else "")
    return f"{kind:<6} {size:>10}  {shown}"
