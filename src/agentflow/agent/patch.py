"""File edits the model proposes: a unified diff, confined to the workspace.

Checked before anyone is asked (paths relative and inside the workspace, text files of
bounded size before and after, every hunk applying in order), applied through ``safefs``
(no link followed, agentflow's home refused by identity, each file replaced by a rename,
only while it still holds the text the patch was checked against), all or nothing, and
reversible: the text before is kept so that a fix that did not work is taken back (but
not over what changed after it).
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from unidiff.errors import UnidiffParseError
from unidiff.patch import Hunk, PatchedFile, PatchSet

from agentflow import safefs

PATCH_MAX = 64 * 1024
"""Characters of one patch."""
FILES_MAX = 20
"""Files one patch may change."""
FILE_MAX = 1024 * 1024
"""Bytes of a file a patch may change (source code and configs, not data), before and
after."""
FUZZ = 200
"""Lines a hunk may have moved from where the diff says it starts."""


_Step = tuple[str, str | None, str | None]
"""A file's path, what it must hold to be replaced, and its new text (None: absent)."""


class PatchError(ValueError):
    """The patch cannot be applied: the message (one line) says why, for the model and a
    person."""


@dataclass(frozen=True)
class Change:
    """One file's edit: its path below the workspace, its text before (None: a new file)
    and after."""

    path: str
    before: str | None
    after: str


def _target(f: PatchedFile) -> str:
    """The file's path relative to the workspace (``a/``/``b/`` prefixes dropped)."""
    name = f.target_file if not f.is_removed_file else f.source_file
    if name.startswith(("a/", "b/")):
        name = name[2:]
    path = PurePosixPath(name)
    bad = not name or path.is_absolute() or ".." in path.parts or "\x00" in name
    if bad or not path.parts:  # (no parts: ".", the workspace itself)
        raise PatchError(f"{name!r} is not a path inside the workspace")
    return str(path)


def _reason(e: OSError) -> str:
    """An OSError in a few words (its own text names the host's full path)."""
    return str(e.strerror or type(e).__name__)


def prepare(
    patch: str, workspace: Path, hidden: frozenset[safefs.Identity] = frozenset()
) -> list[Change]:
    """The changes ``patch`` makes, worked out against the files as they are now;
    PatchError when it cannot apply (nothing is written)."""
    if len(patch) > PATCH_MAX:
        raise PatchError(f"the patch is {len(patch)} characters; at most {PATCH_MAX}")
    try:
        files = PatchSet(patch)
    except UnidiffParseError as e:
        raise PatchError(f"not a unified diff: {e}") from None
    if not files:
        raise PatchError("not a unified diff: no file in it (--- a/PATH, +++ b/PATH, @@ hunks)")
    if len(files) > FILES_MAX:
        raise PatchError(f"the patch changes {len(files)} files; at most {FILES_MAX}")
    changes: list[Change] = []
    seen: set[str] = set()
    for f in files:
        path = _target(f)
        if path in seen:
            raise PatchError(f"{path} is patched twice")
        seen.add(path)
        if f.is_removed_file:
            raise PatchError(f"{path}: a patch may change and add files, not delete them")
        if f.is_added_file:
            before = None
            _folder_exists(workspace, path, hidden)
        else:
            before = _read(workspace, path, hidden)
        changes.append(Change(path, before, _apply(f, path, before or "")))
    return changes


def _read(workspace: Path, path: str, hidden: frozenset[safefs.Identity]) -> str:
    try:
        data = safefs.read_bytes(workspace / path, workspace, FILE_MAX, hidden=hidden)
    except safefs.TooLarge:
        raise PatchError(f"{path} is larger than {FILE_MAX // 1024} KiB") from None
    except FileNotFoundError:
        raise PatchError(f"{path} does not exist (a new file's diff says --- /dev/null)") from None
    except OSError as e:
        raise PatchError(f"{path} cannot be read: {_reason(e)}") from None
    if b"\x00" in data:
        raise PatchError(f"{path} is not a text file")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise PatchError(f"{path} is not UTF-8 text") from None


def _folder_exists(workspace: Path, path: str, hidden: frozenset[safefs.Identity]) -> None:
    """A new file's folder is there (reached without a link, not agentflow's home) and the
    name is free."""
    try:
        names = safefs.parts_below(workspace / path, workspace)
        with safefs.open_dir(workspace, names[:-1], hidden):
            pass
    except OSError as e:  # missing, a link or a file on the way, the home, a name too long
        raise PatchError(f"{path}: its folder cannot be used ({_reason(e)})") from None
    try:
        safefs.lstat(workspace / path, workspace, hidden)
    except FileNotFoundError:
        return
    except OSError as e:
        raise PatchError(f"{path} cannot be created: {_reason(e)}") from None
    raise PatchError(f"{path} exists already: give a diff against it")


def _lines(text: str) -> list[str]:
    """The lines of ``text``, each with its newline (the last may have none). Split at
    ``\\n`` only, as the diff is: a form feed or a ``\\r`` is part of a line."""
    return io.StringIO(text, newline="\n").readlines()


def _apply(f: PatchedFile, path: str, text: str) -> str:
    """``text`` with the hunks of ``f`` applied one after the other, each below the end of
    the one before (as ``patch`` does: a hunk never matches what an earlier one consumed,
    so a patch of a few KiB cannot repeat a 1 MiB file)."""
    lines = _lines(text)
    out: list[str] = []
    at = 0  # lines of the original consumed
    for n, hunk in enumerate(f, 1):
        old = [line.value for line in hunk if line.line_type in (" ", "-")]
        new = [line.value for line in hunk if line.line_type in (" ", "+")]
        start = _find(lines, old, max(at, _start(hunk, old)), floor=at)
        if start is None:
            raise PatchError(_unmatched(path, n, hunk, old, at))
        out += lines[at:start]
        out += new
        at = start + len(old)
    out += lines[at:]
    after = "".join(out)
    if len(after.encode()) > FILE_MAX:
        raise PatchError(f"{path} would be larger than {FILE_MAX // 1024} KiB once patched")
    return after


def _start(hunk: Hunk, old: list[str]) -> int:
    """The index of the line the hunk's header says it starts at (a hunk with no old
    line, ``@@ -5,0 +6,2 @@``, inserts after line 5)."""
    return int(hunk.source_start) - (1 if old else 0)


def _unmatched(path: str, n: int, hunk: Hunk, old: list[str], at: int) -> str:
    where = f"{path}: hunk {n} (@@ -{hunk.source_start},{hunk.source_length})"
    if n > 1 and _start(hunk, old) < at:
        return (
            f"{where} starts above the end of hunk {n - 1} (line {at}): give the hunks "
            "in the order of the file, none overlapping"
        )
    return f"{where} does not match the file: read it again and give exact context lines"


def _find(lines: list[str], old: list[str], hint: int, floor: int) -> int | None:
    """Where ``old`` stands in ``lines`` at or below line ``floor``, nearest ``hint`` first
    (within FUZZ lines); a missing newline at the very end of either is not a difference.
    Each try compares ``len(old)`` lines, whatever the file's length."""
    if not old:
        return min(hint, len(lines))
    head, last = old[:-1], old[-1].rstrip("\n")
    for delta in range(FUZZ + 1):
        for i in (hint - delta, hint + delta) if delta else (hint,):
            end = i + len(old)
            if i < floor or end > len(lines):
                continue
            if lines[end - 1].rstrip("\n") == last and lines[i : end - 1] == head:
                return i
    return None


def write(
    changes: list[Change],
    workspace: Path,
    *,
    undo: bool = False,
    hidden: frozenset[safefs.Identity] = frozenset(),
) -> list[str]:
    """Write the changes (``undo``: put the text before back; a new file is removed), all
    or nothing: on an error the files already written are put back and PatchError says
    why. A file is replaced (by a rename, so that a reader never sees half of it) only
    while it holds what the patch expects: the text before (absent for a new file) when
    applying, else PatchError and nothing is written; the text after when undoing, else
    it is left as it is (something changed it after the patch). Returns the paths left."""
    steps: list[_Step] = [
        (c.path, c.after, c.before) if undo else (c.path, c.before, c.after) for c in changes
    ]
    if not undo:
        stale = _stale(steps, workspace, hidden)
        if stale:
            raise PatchError(
                f"{', '.join(stale)} changed since the patch was checked: nothing was written"
            )
    done: list[_Step] = []
    left: list[str] = []
    path = ""
    try:
        for path, expected, text in steps:
            if _replace(workspace, path, expected, text, hidden):
                done.append((path, expected, text))
            elif undo:
                left.append(path)
            else:
                raise _Changed(path)
    except (OSError, _Changed) as e:
        reason = "it changed meanwhile" if isinstance(e, _Changed) else _reason(e)
        kept = _put_back(done, workspace, hidden)
        what = "nothing was changed" if not kept else f"{', '.join(kept)} could not be put back"
        raise PatchError(f"{path} could not be written ({reason}): {what}") from None
    return left


class _Changed(Exception):
    """A file no longer holds what a write expected of it."""


def _stale(
    steps: list[_Step],
    workspace: Path,
    hidden: frozenset[safefs.Identity],
) -> list[str]:
    """The paths that no longer hold what is expected of them (checked all before any is
    written: a patch to a file that changed since the check is refused whole)."""
    out = []
    for path, expected, _ in steps:
        try:
            names = safefs.parts_below(workspace / path, workspace)
            with safefs.open_dir(workspace, names[:-1], hidden) as dfd:
                if not _holds(dfd, names[-1], expected, path):
                    out.append(path)
        except OSError as e:
            raise PatchError(f"{path} cannot be written: {_reason(e)}") from None
    return out


def _replace(
    workspace: Path,
    path: str,
    expected: str | None,
    text: str | None,
    hidden: frozenset[safefs.Identity],
) -> bool:
    """Put ``text`` (None: no file) at ``path`` if it holds ``expected``; False if not."""
    names = safefs.parts_below(workspace / path, workspace)
    with safefs.open_dir(workspace, names[:-1], hidden) as dfd:
        if not _holds(dfd, names[-1], expected, path):
            return False
        if text is None:
            os.unlink(names[-1], dir_fd=dfd)
            return True
        mode = 0o644
        if expected is not None:
            # (permission bits only: a set-uid bit would not survive the owner's change)
            mode = os.stat(names[-1], dir_fd=dfd, follow_symlinks=False).st_mode & 0o777
        _put(dfd, names[-1], text, mode)
    return True


def _holds(dfd: int, name: str, expected: str | None, where: str) -> bool:
    """Whether ``name`` in the folder ``dfd`` is a regular file holding ``expected``
    (None: nothing is there). Whatever else stands there (a link, a FIFO, a folder,
    other text) does not: it is read through the folder's descriptor, never followed."""
    try:
        fd = safefs.open_file(dfd, name, where)
    except FileNotFoundError:
        return expected is None
    except safefs.UnsafePath:
        return False
    with os.fdopen(fd, "rb") as f:
        if expected is None:
            return False
        want = expected.encode()
        return f.read(len(want) + 1) == want


def _put(dfd: int, name: str, text: str, mode: int) -> None:
    """Replace ``name`` with a new file holding ``text``, written under a short random name
    (no clash with a step's file, no name too long) and renamed into place."""
    temp = f".agentflow-patch-{secrets.token_hex(8)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(text.encode())
            os.fchmod(out.fileno(), mode)
        os.rename(temp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dfd)
        raise


def _put_back(
    done: list[_Step],
    workspace: Path,
    hidden: frozenset[safefs.Identity],
) -> list[str]:
    """Undo the writes in ``done``, the last first; the paths that could not be."""
    kept = []
    for path, expected, text in reversed(done):
        try:
            if not _replace(workspace, path, text, expected, hidden):
                kept.append(path)
        except OSError:
            kept.append(path)
    return kept


def files(changes: list[Change]) -> list[str]:
    return [c.path for c in changes]
