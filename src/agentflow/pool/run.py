"""One run's side of the pool: drawing devices for an attempt, the step's environment
and CPU pinning, giving them back when attempts end, keeping them across a resume."""

from __future__ import annotations

import shutil
import time

from agentflow.pool import Demand
from agentflow.pool.ledger import Holding, Ledger
from agentflow.sandbox import marker
from agentflow.store import RunDir

WAIT_POLL = 2.0
"""Seconds between looks at the ledger while a step waits for a device another run holds
(a device this run gives back is seen at once)."""
NO_GPU = "no free GPU"
NO_CPU = "no free CPU"


def container_ordinals(pool: tuple[str, ...], ids: list[str]) -> list[str]:
    """How a container given the pool's GPUs by id numbers ``ids``: CUDA (with
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID``) counts a container's GPUs from 0 in bus order, which
    is the order of the host's indices."""
    order = sorted(pool, key=lambda g: (0, int(g), "") if g.isdigit() else (1, 0, g))
    return [str(order.index(g)) for g in ids]


class RunPool:
    """What one run draws from the home's ledger."""

    def __init__(self, demand: Demand, run: RunDir) -> None:
        self.demand = demand
        self.ledger = Ledger(run.path.parent.parent)
        self.run = run
        self.held: dict[str, int] = {}
        """Steps this run holds devices for, and the attempt."""
        self.waiting: dict[str, str] = {}
        """Steps ready to start that wait for a device, and what they lack."""
        self._next_look = 0.0
        self.taskset = shutil.which("taskset")

    def draw(self, step_id: str, attempt: int) -> Holding | None:
        """Devices for the step's attempt, recorded in the ledger; None when too few are
        free (the step is then in ``waiting``)."""
        ask = self.demand.asks[step_id]
        if step_id in self.waiting and time.monotonic() < self._next_look:
            return None  # looked a moment ago, and this run gave nothing back since
        want = Holding(
            run=self.run.run_id,
            run_dir=str(self.run.path),
            step=step_id,
            attempt=attempt,
            marker=self._marker(step_id),
        )
        got = self.ledger.take(want, ask.gpus, ask.cpus, self.demand.pool)
        if got is None:
            self.waiting[step_id] = NO_GPU if ask.gpus else NO_CPU
            self._next_look = time.monotonic() + WAIT_POLL
            return None
        self.waiting.pop(step_id, None)
        self.held[step_id] = attempt
        return got

    def _marker(self, step_id: str) -> str | None:
        if self.demand.backend != "local":
            return None  # a container's processes: its run's lock decides
        # As the local sandbox gives it to the step's processes.
        step_dir = self.run.step_dir(step_id)
        return marker(str(step_dir.parent.resolve() / step_dir.name))

    def env(self, holding: Holding) -> dict[str, str]:
        """The step's variables for its GPUs (none for CPUs alone: they are pinned)."""
        if not holding.gpus:
            return {}
        ids = holding.gpus
        if self.demand.backend == "docker":
            ids = container_ordinals(self.demand.pool.gpus, ids)
        return {"CUDA_VISIBLE_DEVICES": ",".join(ids), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}

    def pinned(self, command: list[str], holding: Holding) -> list[str]:
        """The window's command, pinned to the attempt's CPUs (local: ``taskset``, which
        every process of the step inherits)."""
        if not holding.cpus or self.taskset is None:
            return command
        return [self.taskset, "-c", ",".join(str(c) for c in holding.cpus), *command]

    def settle(self, running: dict[str, int]) -> None:
        """Give back what attempts no longer running held (``running``: step → attempt)."""
        over = {k for k, a in self.held.items() if running.get(k) != a}
        if not over:
            return
        keep = [(k, a) for k, a in self.held.items() if k not in over]
        self.ledger.give(self.run.run_id, keep)
        for k in over:
            del self.held[k]
        self._next_look = 0.0  # a step waiting for what was given back looks at once

    def restore(self, step_id: str, attempt: int, gpus: list[str], cpus: list[int]) -> bool:
        """A resumed run's running attempt keeps its devices; False when another attempt
        took one of them meanwhile."""
        self.held[step_id] = attempt
        holding = Holding(
            run=self.run.run_id, run_dir=str(self.run.path), step=step_id, attempt=attempt,
            gpus=gpus, cpus=cpus, marker=self._marker(step_id),
        )  # fmt: skip
        return self.ledger.keep(holding)

    def forget_others(self) -> None:
        """Give back what this run holds in the ledger for attempts other than those it
        restored (a previous orchestrator's, over by now)."""
        self.ledger.give(self.run.run_id, list(self.held.items()))

    def give_all(self) -> None:
        """The run is over (or stopped): everything it holds goes back."""
        self.ledger.give(self.run.run_id)
        self.held.clear()
        self.waiting.clear()
