"""The one guarded path for files a sandbox controls.

Everything a step can write (the workspace, the run's ``steps/`` folder, the sources of
mounts) is hostile input to the host. Every host-side read, write or removal there goes
through this module, relative to a trusted ``root`` (the workspace, the run's ``steps/``):

- the path is walked from ``root`` one component at a time, each opened relative to its
  parent's descriptor with ``O_NOFOLLOW``: a symbolic link anywhere below the root is
  refused, never followed, so a planted link cannot lead the host out of the tree (and a
  link swapped in between two checks does not count: the descriptors do);
- only regular files are opened for reading: a FIFO would block the orchestrator, a
  device could do anything; ``lstat`` before the open, ``fstat`` of what was opened after;
- reads are capped: a sparse 1 GB file costs what the cap allows, not its size;
- folders that must stay out of reach (agentflow's home, its tmux socket's folder, when they
  lie in a workspace) are refused by identity (device and inode), whatever path reaches
  them.

Errors are ``OSError``\\s (``UnsafePath`` for what this module refuses), so that callers
that already handle a missing file handle these too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

Identity = tuple[int, int]
"""A file's device and inode: what it is, whatever path leads to it."""

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class UnsafePath(OSError):
    """A path below a guarded root is a symlink, a special file, too large, or leads where
    the host must not go. ``str()`` is one line naming the path."""


class TooLarge(UnsafePath):
    """A file is larger than its reader takes."""


def identity(path: Path) -> Identity | None:
    """``path``'s device and inode (following links: the caller names a trusted path);
    None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def identities(paths: Iterable[Path]) -> frozenset[Identity]:
    return frozenset(i for i in map(identity, paths) if i is not None)


def locate(folder: Path, ancestor: Identity | None) -> tuple[Path, Path] | None:
    """When ``folder`` lies inside the folder whose identity is ``ancestor`` (or is it):
    that folder's real path and ``folder``'s path relative to it; None otherwise."""
    if ancestor is None:
        return None
    real = folder.resolve()
    for parent in [real, *real.parents]:
        if identity(parent) == ancestor:
            return parent, real.relative_to(parent)
    return None


def under_hidden(real: Path, root: Path, hidden: frozenset[Identity]) -> bool:
    """Whether the real path ``real`` (no links left in it) lies in a hidden folder, by
    the identity of each folder between it and ``root``."""
    if not hidden:
        return False
    for folder in [real, *real.parents]:
        if identity(folder) in hidden:
            return True
        if folder == root:
            break
    return False


def parts_below(path: Path | str, root: Path) -> list[str]:
    """``path`` (``root`` joined with names) as the names below ``root``, checked
    lexically: no ``..``, nothing outside ``root``."""
    p = Path(path)
    if not p.is_relative_to(root):
        raise UnsafePath(errno.EACCES, "leads outside its folder", str(path))
    names = [n for n in p.relative_to(root).parts if n != "."]
    if ".." in names:
        raise UnsafePath(errno.EACCES, "leads outside its folder", str(path))
    return names


def _refuse(e: OSError, where: str) -> OSError:
    if e.errno == errno.ELOOP:
        return UnsafePath(errno.ELOOP, "is a symbolic link, not followed", where)
    if e.errno == errno.ENOTDIR:
        return UnsafePath(errno.ENOTDIR, "is not a folder", where)
    return OSError(e.errno, e.strerror, where)


@contextlib.contextmanager
def open_dir(
    root: Path,
    names: list[str],
    hidden: frozenset[Identity] = frozenset(),
    *,
    create: bool = False,
) -> Iterator[int]:
    """A descriptor of the folder ``root/names...``, every component below ``root`` opened
    without following links. ``create``: missing folders are made, and whatever else stands
    at a folder's name (a planted link or file) is removed first, never followed."""
    fd = os.open(root, _DIR)
    try:
        for i, name in enumerate(names):
            where = str(root.joinpath(*names[: i + 1]))
            try:
                sub = _open_sub(fd, name, create)
            except OSError as e:
                if e.errno == errno.ENOTDIR and _is_link(fd, name):
                    e.errno = errno.ELOOP  # O_DIRECTORY says "not a folder" of a link
                raise _refuse(e, where) from None
            os.close(fd)
            fd = sub
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in hidden:
                raise UnsafePath(errno.EACCES, "is agentflow's own folder", where)
        yield fd
    finally:
        os.close(fd)


def _is_link(fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _open_sub(fd: int, name: str, create: bool) -> int:
    try:
        return os.open(name, _DIR | os.O_NOFOLLOW, dir_fd=fd)
    except OSError as e:
        if not create or e.errno not in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            raise
        missing = e.errno == errno.ENOENT
    if not missing:
        os.unlink(name, dir_fd=fd)  # a link or a file where the folder must be: it goes
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o755, dir_fd=fd)
    return os.open(name, _DIR | os.O_NOFOLLOW, dir_fd=fd)


@contextlib.contextmanager
def open_read(
    path: Path | str, root: Path, hidden: frozenset[Identity] = frozenset()
) -> Iterator[BinaryIO]:
    """Open a regular file below ``root`` for reading (see the module's rules)."""
    names = parts_below(path, root)
    if not names:
        raise UnsafePath(errno.EISDIR, "is not a file", str(path))
    with open_dir(root, names[:-1], hidden) as dfd:
        fd = open_file(dfd, names[-1], str(path))
    f = os.fdopen(fd, "rb")
    try:
        yield f
    finally:
        f.close()


def open_file(dfd: int, name: str, where: str) -> int:
    """A descriptor of the regular file ``name`` in the folder ``dfd`` (never a link, a
    FIFO, a device: checked before and after the open)."""
    try:
        before = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except OSError as e:
        raise _refuse(e, where) from None
    if stat.S_ISLNK(before.st_mode):
        raise UnsafePath(errno.ELOOP, "is a symbolic link, not followed", where)
    if not stat.S_ISREG(before.st_mode):
        raise UnsafePath(errno.EINVAL, "is not a regular file", where)
    try:
        fd = os.open(name, _FILE, dir_fd=dfd)
    except OSError as e:
        raise _refuse(e, where) from None
    after = os.fstat(fd)
    if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (
        before.st_dev,
        before.st_ino,
    ):
        os.close(fd)
        raise UnsafePath(errno.EINVAL, "changed while it was opened", where)
    return fd


def read_at(dfd: int, name: str, limit: int, where: str) -> tuple[bytes, os.stat_result]:
    """The regular file ``name`` of the folder ``dfd`` (opened by ``open_dir``): its bytes,
    at most ``limit`` (else ``TooLarge``), and its stat. One open: a step's small files
    are read on every wake-up of the runner."""
    fd = open_file(dfd, name, where)
    try:
        st = os.fstat(fd)
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise TooLarge(errno.EFBIG, f"is larger than {limit} bytes", where)
    return data, st


def lstat(
    path: Path | str, root: Path, hidden: frozenset[Identity] = frozenset()
) -> os.stat_result:
    """``lstat`` of a path below ``root``, no link followed on the way."""
    names = parts_below(path, root)
    if not names:
        return os.stat(root)
    with open_dir(root, names[:-1], hidden) as dfd:
        try:
            st = os.stat(names[-1], dir_fd=dfd, follow_symlinks=False)
        except OSError as e:
            raise _refuse(e, str(path)) from None
    if stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) in hidden:
        raise UnsafePath(errno.EACCES, "is agentflow's own folder", str(path))
    return st


def read_bytes(
    path: Path | str, root: Path, limit: int, hidden: frozenset[Identity] = frozenset()
) -> bytes:
    """The whole file, when it holds at most ``limit`` bytes; else ``TooLarge``."""
    with open_read(path, root, hidden) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(errno.EFBIG, f"is larger than {limit} bytes", str(path))
    return data


def read_text(
    path: Path | str, root: Path, limit: int, hidden: frozenset[Identity] = frozenset()
) -> str:
    return read_bytes(path, root, limit, hidden).decode("utf-8", errors="replace")


def tail(path: Path | str, root: Path, size: int) -> str:
    """The last ``size`` bytes of a file as text ('' when it cannot be read)."""
    try:
        with open_read(path, root) as f:
            end = os.fstat(f.fileno()).st_size
            f.seek(max(0, end - size))
            return f.read(size).decode("utf-8", errors="replace")
    except OSError:
        return ""


def write_text(path: Path | str, root: Path, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` (below ``root``) with a new regular file: whatever stands at its
    name (a planted link, a FIFO) is removed, never written through."""
    write_chunks(path, root, [text.encode("utf-8")], mode)


def write_chunks(
    path: Path | str,
    root: Path,
    chunks: Iterable[bytes],
    mode: int = 0o644,
    hidden: frozenset[Identity] = frozenset(),
) -> None:
    """``write_text`` for bytes that come in pieces (a file copied in chunks)."""
    names = parts_below(path, root)
    with open_dir(root, names[:-1], hidden, create=True) as dfd:
        write_at(dfd, names[-1], chunks, mode, str(path))


def write_at(
    dfd: int, name: str, chunks: Iterable[bytes], mode: int = 0o644, where: str = ""
) -> None:
    """``write_chunks`` into the folder ``dfd`` already opened (by ``open_dir``): whatever
    stands at ``name`` is removed, never written through. ``where`` names the file in an
    error."""
    remove(dfd, name)
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=dfd)
        try:
            # Plain writes: no buffered file object (its own stat and lseek) per file.
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    except OSError as e:  # a full disk: say which file, the error alone names none
        raise OSError(e.errno, e.strerror, where or name) from None


def remove(dfd: int, name: str) -> None:
    """Remove ``name`` from the folder ``dfd``, whatever it is (a folder with everything in
    it); links are removed, never followed. A folder too deep to remove (nested past the
    stack or the open-file limit, as a step can make it) is renamed out of the way."""
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dfd)
        return
    try:
        shutil.rmtree(name, dir_fd=dfd)  # fd-based on Linux: safe against link swaps
    except (RecursionError, OSError):
        with contextlib.suppress(FileNotFoundError):
            os.rename(name, f".removed-{secrets.token_hex(8)}", src_dir_fd=dfd, dst_dir_fd=dfd)


def entries(dfd: int) -> list[os.DirEntry[str]]:
    """The entries of the folder ``dfd``, by name (``is_dir()`` etc. need
    ``follow_symlinks=False``)."""
    with os.scandir(dfd) as it:
        return sorted(it, key=lambda e: e.name)
