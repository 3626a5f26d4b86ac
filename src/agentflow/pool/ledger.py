"""The ledger: which devices of the pool each running attempt of each run of a home holds.

``home/pool/ledger.json``, read and written only under the ``flock`` of
``home/pool/ledger.lock`` (held for a read and a write, never while a step runs), so that
concurrent runs of one home, the members of a sweep among them, never hand out one device
twice. A holding goes when its run gives it back (the attempt ended, the run ended or
stopped) or when it is found dead: its run's lock is free (no orchestrator drives it) and
its attempt is over (an exit code written, or no process of the step left).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterator
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agentflow import stepfiles
from agentflow.ledgerfile import SharedFile
from agentflow.pool.devices import Pool
from agentflow.sandbox import PROC_VAR
from agentflow.state import now
from agentflow.store import lock_holder

LEDGER = "ledger.json"
LOCK = "ledger.lock"


class Holding(BaseModel):
    """The devices one attempt of one step holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: str
    """The run's id."""
    run_dir: str
    """The run's directory (its lock says whether an orchestrator drives it)."""
    step: str
    attempt: int
    gpus: list[str] = Field(default_factory=list)
    cpus: list[int] = Field(default_factory=list)
    marker: str | None = None
    """The step's process marker on this machine (local sandbox): a step that still runs
    after its orchestrator died keeps its devices."""
    since: datetime = Field(default_factory=now)

    @property
    def key(self) -> tuple[str, str, int]:
        return self.run, self.step, self.attempt


class LedgerFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    held: list[Holding] = Field(default_factory=list)


class Ledger:
    """The home's ledger: take, give back, reclaim."""

    def __init__(self, home: Path) -> None:
        self.dir = home / "pool"
        self.path = self.dir / LEDGER
        self._file = SharedFile(self.dir, LEDGER, LOCK, LedgerFile)

    @contextlib.contextmanager
    def _open(self) -> Iterator[LedgerFile]:
        """The ledger under its lock; written back when changed."""
        with self._file.locked():
            book = self._file.read()
            before = book.model_dump_json()
            yield book
            if book.model_dump_json() != before:
                self._file.write(book)

    def held(self) -> list[Holding]:
        """Every holding now (for a person: `status`, tests)."""
        with self._open() as book:
            return list(book.held)

    def take(self, holding: Holding, gpus: int, cpus: int, pool: Pool) -> Holding | None:
        """Record ``holding`` with ``gpus`` GPUs and ``cpus`` CPUs of ``pool`` that nobody
        holds (dead runs' first reclaimed); None, and nothing taken, when too few are free.
        An attempt that holds devices already keeps them (a resume)."""
        with self._open() as book:
            for h in book.held:
                if h.key == holding.key:
                    return h
            book.held = [h for h in book.held if h.run == holding.run or not _dead(h)]
            used_gpus = {g for h in book.held for g in h.gpus}
            used_cpus = {c for h in book.held for c in h.cpus}
            free_gpus = [g for g in pool.gpus if g not in used_gpus]
            free_cpus = [c for c in pool.cpus if c not in used_cpus]
            if len(free_gpus) < gpus or len(free_cpus) < cpus:
                return None
            taken = holding.model_copy(update={"gpus": free_gpus[:gpus], "cpus": free_cpus[:cpus]})
            book.held.append(taken)
            return taken

    def keep(self, holding: Holding) -> bool:
        """Record a holding a resumed run's running attempt has had all along; False when
        one of its devices is held by another attempt meanwhile (recorded all the same: the
        step runs on it, and nobody else gets it from now on)."""
        with self._open() as book:
            if any(h.key == holding.key for h in book.held):
                return True
            others = [h for h in book.held if h.run != holding.run]
            clash = any(set(h.gpus) & set(holding.gpus) or set(h.cpus) & set(holding.cpus)
                        for h in others)  # fmt: skip
            book.held.append(holding)
            return not clash

    def give(self, run: str, keep: Collection[tuple[str, int]] = ()) -> list[Holding]:
        """Give back what ``run`` holds, but for the attempts ``keep`` names (step,
        attempt): the holdings given back."""
        with self._open() as book:
            gone = [h for h in book.held if h.run == run and (h.step, h.attempt) not in keep]
            if gone:
                book.held = [h for h in book.held if h not in gone]
            return gone


def _dead(h: Holding) -> bool:
    """Whether a holding of another run is over: nobody drives its run and its attempt has
    ended (an exit code written, or none of the step's processes left on this machine)."""
    run_dir = Path(h.run_dir)
    if lock_holder(run_dir / "lock") is not None:
        return False
    if not run_dir.is_dir() or stepfiles.exit_code(run_dir / "steps" / h.step)[0] is not None:
        return True
    # No marker (Docker: the step's processes are the container's): its run is gone.
    return h.marker is None or not _marked_alive(h.marker)


def _marked_alive(marker: str) -> bool:
    """Whether a process of this user carries the step's marker (``AGENTFLOW_PROC``)."""
    entry = f"{PROC_VAR}={marker}".encode()
    try:
        names = os.listdir("/proc")
    except OSError:
        return False
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if entry in f.read().split(b"\0"):
                    return True
        except OSError:
            continue
    return False
