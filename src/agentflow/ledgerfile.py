"""A small JSON file of a home that concurrent runs share (the ports' ledger, the pool's):
one pydantic model, read and written only under the ``flock`` of a lock file beside it.

The lock is waited for (unlike a run's lock): it is held for a read and a write, a few
milliseconds. The file is replaced whole (a rename), never written or read through a link.
A file that does not validate (damaged by hand or by a disk) is kept aside as
``NAME.damaged`` and read as empty: the runs of the home then take what they need again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class SharedFile(Generic[M]):
    """``folder/name`` holding a ``model``, locked by ``folder/lock``."""

    def __init__(self, folder: Path, name: str, lock: str, model: type[M]) -> None:
        self.folder = folder
        self.path = folder / name
        self._lock = folder / lock
        self._model = model

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def read(self) -> M:
        """The content (under ``locked``); an empty model when there is none."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return self._model()
        except OSError:
            return self._aside()  # a link or a folder in its place
        with os.fdopen(fd, "rb") as f:
            data = f.read()
        try:
            return self._model.model_validate_json(data)
        except (ValidationError, ValueError):
            return self._aside()

    def write(self, value: M) -> None:
        """Replace the content whole (under ``locked``)."""
        tmp = self.folder / f".{self.path.name}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        data = value.model_dump_json(indent=1).encode() + b"\n"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, self.path)

    def _aside(self) -> M:
        with contextlib.suppress(OSError):
            os.replace(self.path, self.path.with_name(self.path.name + ".damaged"))
        return self._model()
