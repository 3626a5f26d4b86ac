"""The files of a step's attempts in ``steps/<id>/``: what the host writes there (run.sh,
wrapper.sh) and reads back (exit_code, output.log, pid). The folder is writable from the
sandbox, so every access goes through ``safefs`` (no symlink is followed)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from agentflow import safefs


@dataclass(frozen=True)
class NewOutput:
    """What a step printed since an offset: the end of it, the log's size, when written."""

    text: str
    size: int
    written: datetime


def exit_code(step_dir: Path) -> tuple[int | None, datetime | None]:
    """The attempt's exit code and when it was written; (None, None) while it runs."""
    path = step_dir / "exit_code"
    try:
        mtime = path.lstat().st_mtime
        text = safefs.read_text(path).strip()
    except FileNotFoundError:
        return None, None
    except OSError:
        text = "255"  # a symlink or a folder where the exit code should be: a failure
    try:
        code = int(text)
    except ValueError:
        code = 255
    return code, datetime.fromtimestamp(mtime).astimezone()


def hung_up(step_dir: Path) -> bool:
    """Whether the attempt ended because its window went away (the wrapper got SIGHUP)."""
    return (step_dir / "hangup").exists()


def pid(step_dir: Path) -> int | None:
    """The process group the wrapper started the step in (None before it has)."""
    try:
        return int(safefs.read_text(step_dir / "pid").strip())
    except (OSError, ValueError):
        return None


def new_output(step_dir: Path, offset: int, limit: int) -> NewOutput | None:
    """Output after ``offset`` (at most its last ``limit`` bytes), or None if there is none."""
    log = step_dir / "output.log"
    try:
        with safefs.open_read(log) as f:
            st = os.fstat(f.fileno())
            if st.st_size <= offset:
                return None
            f.seek(max(offset, st.st_size - limit))
            text = f.read(st.st_size - f.tell()).decode("utf-8", errors="replace")
    except OSError:
        return None
    return NewOutput(text, st.st_size, datetime.fromtimestamp(st.st_mtime).astimezone())


def prepare(step_dir: Path, earlier_attempts: int, script: str, wrapper: str) -> None:
    """Make the folder ready for the next attempt: the earlier attempt's files go into
    ``attempt-N/`` (each attempt keeps its log), then run.sh and wrapper.sh are written.
    Before the first attempt, whatever stands in the folder was not made by agentflow (a
    sandbox can write there): it goes."""
    if step_dir.exists():
        if earlier_attempts == 0:
            for p in step_dir.iterdir():
                if p.is_symlink() or not p.is_dir():
                    p.unlink()
        else:
            files = [p for p in step_dir.iterdir() if p.is_file() or p.is_symlink()]
            if files:
                target = step_dir / f"attempt-{earlier_attempts}"
                safefs.ensure_dir(target)
                for p in files:
                    shutil.move(p, target / p.name)
    safefs.ensure_dir(step_dir)
    safefs.write_text(step_dir / "run.sh", script)
    safefs.write_text(step_dir / "wrapper.sh", wrapper)


def output_incomplete(step_dir: Path) -> int | None:
    """The wrapper's record that output.log lost output: the exit status of its writer
    (tee: 1 when a write failed, a full disk; above 128 when a signal ended it), or None
    when nothing was lost. Whatever the file holds (a step can write it), a number is
    read from its first bytes; unreadable, it still says output was lost."""
    try:
        with safefs.open_read(step_dir / "output_incomplete") as f:
            head = f.read(16)
    except FileNotFoundError:
        return None
    except OSError:  # a symlink or a folder in its place
        return 1
    try:
        return int(head.strip() or b"1")
    except ValueError:
        return 1
