"""The files of a step's attempts in ``steps/<id>/``: what the host writes there (run.sh,
wrapper.sh) and reads back (exit_code, output.log, pid).

The run's ``steps/`` folder is writable from the sandbox, so every access goes through
``safefs`` rooted at it: no link is followed at any depth, only regular files are read,
and reads are capped (an ``exit_code`` is a few bytes, whatever size a step gave it)."""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from agentflow import safefs

SMALL = 64
"""The most bytes read of an ``exit_code`` or ``pid`` file (a number and a newline)."""

FIFO = "fifo"
"""The pipe between the step and the wrapper's ``tee``, in the step's folder."""

LEFT_FOR_HOST = (FIFO, "output_incomplete.tmp")
"""What the wrapper of an ended attempt leaves for the host to remove."""


def steps_root(path: Path) -> Path:
    """The run's ``steps/`` folder above a step's file (``steps/<id>/NAME`` or
    ``steps/<id>/attempt-N/NAME``): where guarded reads of it start. Worked out from the
    host's own path, never from the disk; when in doubt it is a folder higher, which only
    means more components are walked without following links."""
    folder = path.parent
    if re.fullmatch(r"attempt-\d+", folder.name):
        folder = folder.parent
    return folder.parent


@dataclass(frozen=True)
class NewOutput:
    """What a step printed since an offset: the end of it, the log's size, when written."""

    text: str
    size: int
    written: datetime


@dataclass(frozen=True)
class End:
    """An attempt's end as its wrapper recorded it."""

    code: int
    written: datetime
    hung_up: bool
    """Its window went away first (the wrapper got SIGHUP: ``hangup``, written before
    the exit code)."""


def _read(step_dir: Path, name: str) -> tuple[int | None, float] | None:
    """The integer in a small file of the step's folder (None when it is not a regular
    file, larger than a number, or not a number) and when it was written (now, when it
    cannot be read); None when it is missing."""
    try:
        with safefs.open_dir(step_dir.parent, [step_dir.name]) as dfd:
            return _read_at(dfd, step_dir, name)
    except FileNotFoundError:
        return None
    except OSError:  # a folder swapped for a link: no number
        return None, time.time()


def _read_at(dfd: int, step_dir: Path, name: str) -> tuple[int | None, float] | None:
    """``_read`` in the step's folder, open as ``dfd``."""
    try:
        data, st = safefs.read_at(dfd, name, SMALL, str(step_dir / name))
    except FileNotFoundError:
        return None
    except OSError:  # a planted link or folder, a file too large: no number
        return None, time.time()
    text = data.decode("utf-8", errors="replace").strip()
    # ASCII digits only: str.isdigit() takes "²", which int() refuses.
    return (int(text) if re.fullmatch(r"-?[0-9]{1,11}", text) else None), st.st_mtime


def _number(step_dir: Path, name: str) -> int | None:
    found = _read(step_dir, name)
    return None if found is None else found[0]


def exit_code(step_dir: Path) -> tuple[int | None, datetime | None]:
    """The attempt's exit code and when it was written; (None, None) while it runs."""
    found = end(step_dir)
    return (None, None) if found is None else (found.code, found.written)


def end(step_dir: Path) -> End | None:
    """The attempt's end (``exit_code``, and ``hangup`` beside it), read through one open
    of the folder: every wake-up reads it for the steps it was told of; None while the
    attempt runs."""
    try:
        with safefs.open_dir(step_dir.parent, [step_dir.name]) as dfd:
            found = _read_at(dfd, step_dir, "exit_code")
            if found is None:
                return None
            try:
                os.stat("hangup", dir_fd=dfd, follow_symlinks=False)
                hung_up = True
            except OSError:
                hung_up = False
    except FileNotFoundError:
        return None
    except OSError:  # a folder swapped for a link
        found, hung_up = (None, time.time()), False
    code, mtime = found
    return End(255 if code is None else code, _written(mtime), hung_up)


def pid(step_dir: Path) -> int | None:
    """The process group the wrapper started the step in (None before it has)."""
    value = _number(step_dir, "pid")
    return value if value is not None and value > 1 else None


def new_output(step_dir: Path, offset: int, limit: int) -> NewOutput | None:
    """Output after ``offset`` (at most its last ``limit`` bytes), or None if there is none."""
    try:
        with safefs.open_read(step_dir / "output.log", step_dir.parent) as f:
            st = os.fstat(f.fileno())
            if st.st_size <= offset:
                return None
            f.seek(max(offset, st.st_size - limit))
            text = f.read(min(limit, st.st_size - f.tell())).decode("utf-8", errors="replace")
    except OSError:
        return None
    return NewOutput(text, st.st_size, _written(st.st_mtime))


def _written(mtime: float) -> datetime:
    """When a step's file was written: its mtime, unless that is not in the past (a step
    can give its files any time, the year 9999 included): then now."""
    at = time.time()
    return datetime.fromtimestamp(mtime if 0 <= mtime <= at else at).astimezone()


def prepare(step_dir: Path, earlier_attempts: int, script: str, wrapper: str) -> None:
    """Make the folder ready for the next attempt: the earlier attempt's files go into
    ``attempt-N/`` (each attempt keeps its log), then run.sh and wrapper.sh are written.
    Before the first attempt, whatever stands in the folder was not made by agentflow (a
    sandbox can write there): it goes. A link or a file planted at the folder's own name is
    removed, never followed; everything is done through descriptors of the real folder."""
    root = step_dir.parent
    with safefs.open_dir(root, [step_dir.name], create=True) as dfd:
        if earlier_attempts == 0:
            for entry in safefs.entries(dfd):
                safefs.remove(dfd, entry.name)
        else:
            folder = f"attempt-{earlier_attempts}"
            files = [
                e.name
                for e in safefs.entries(dfd)
                if not e.is_dir(follow_symlinks=False) and e.name != folder
            ]
            if files:
                with safefs.open_dir(root, [step_dir.name, folder], create=True) as keep:
                    for name in files:
                        safefs.remove(keep, name)
                        os.rename(name, name, src_dir_fd=dfd, dst_dir_fd=keep)
        # The wrapper's FIFO, made here: an mkfifo process less for every step. (When
        # something stands at its name, the wrapper makes it.)
        with contextlib.suppress(OSError):
            os.mkfifo(FIFO, 0o600, dir_fd=dfd)
        for name, text in (("run.sh", script), ("wrapper.sh", wrapper)):
            safefs.write_at(dfd, name, [text.encode("utf-8")], where=str(step_dir / name))


def tidy(step_dir: Path) -> None:
    """Remove what the wrapper of an ended attempt leaves for the host to remove (no rm
    process for every step): its FIFO and its unused reserve for ``output_incomplete``."""
    try:
        with safefs.open_dir(step_dir.parent, [step_dir.name]) as dfd:
            for name in LEFT_FOR_HOST:
                safefs.remove(dfd, name)
    except OSError:
        pass  # (a folder that went or was swapped: nothing of ours to tidy)


def output_incomplete(step_dir: Path) -> int | None:
    """The wrapper's record that output.log lost output: the exit status of its writer
    (tee: 1 when a write failed, a full disk; above 128 when a signal ended it), or None
    when nothing was lost. A step can write the file: what is not a small number in a
    regular file still says that output was lost."""
    try:
        safefs.lstat(step_dir / "output_incomplete", step_dir.parent)
    except FileNotFoundError:
        return None
    except OSError:
        pass  # a planted link or folder: still a record of loss
    code = _number(step_dir, "output_incomplete")
    return 1 if code is None else code
