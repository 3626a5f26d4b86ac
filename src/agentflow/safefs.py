"""File access in folders a sandbox can write to (the run's ``steps/``): never through a
symlink a step may have planted there to make the host read or overwrite its own files."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


class UnsafePath(OSError):
    """A path in a sandbox-writable folder is a symlink (or not what it should be)."""


@contextlib.contextmanager
def open_read(path: Path) -> Iterator[BinaryIO]:
    """Open a file for reading, refusing a symlink in its last component."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == 40:  # ELOOP: a symlink
            raise UnsafePath(e.errno, "refusing to follow a symlink", str(path)) from None
        raise
    f = os.fdopen(fd, "rb")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePath(0, "not a regular file", str(path))
        yield f
    finally:
        f.close()


def read_text(path: Path) -> str:
    with open_read(path) as f:
        return f.read().decode("utf-8", errors="replace")


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` with a new regular file (a planted symlink is removed, not followed)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:  # a full disk: say which file, the error alone names none
        raise OSError(e.errno, e.strerror, str(path)) from None


def ensure_dir(path: Path) -> None:
    """Make ``path`` a real folder: a symlink (or file) in its place is removed first."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        path.mkdir(parents=True)
        return
    if stat.S_ISDIR(st.st_mode):
        return
    path.unlink()
    path.mkdir()
