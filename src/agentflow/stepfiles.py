"""The files of a step's attempts in ``steps/<id>/``: what the host writes there (run.sh,
wrapper.sh) and reads back (exit_code, output.log, pid). The folder is writable from the
sandbox, so every access goes through ``safefs`` (no symlink is followed)."""

from __future__ import annotations

import os
import shutil
import time
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
    return code, _written(mtime)


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
