"""The machine's GPUs and CPUs as a pool that steps draw from (issue 19).

A step with ``resources: {gpus: N}`` (or ``cpus: N``) in the local or Docker sandbox is
given N devices of the machine for each attempt, none of which another step of any run of
the same home holds meanwhile: ``devices`` finds the pool, ``ledger`` records who holds
what (a file under the home, behind a lock), ``run`` is one run's side of it. Slurm
allocates devices itself: its steps draw nothing here.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field

from agentflow.errors import UsageError
from agentflow.pool.devices import Pool, PoolError, discover
from agentflow.workflow.model import Step, Workflow

POOLED_BACKENDS = frozenset({"local", "docker"})
"""Sandboxes whose steps draw from this machine's pool (Slurm's jobs get theirs from Slurm)."""


@dataclass(frozen=True)
class Ask:
    """What one attempt of a step draws from the pool."""

    gpus: int = 0
    cpus: int = 0

    def __bool__(self) -> bool:
        return bool(self.gpus or self.cpus)


@dataclass(frozen=True)
class Demand:
    """What a run's steps draw from the machine's pool, and the pool."""

    pool: Pool
    backend: str
    asks: dict[str, Ask] = field(default_factory=dict)

    @property
    def gpu_steps(self) -> bool:
        """Whether any step draws GPUs (a Docker container is then given the pool's)."""
        return any(a.gpus for a in self.asks.values())


def ask_of(step: Step, backend: str) -> Ask:
    """What the step draws: its own ``resources.gpus`` (a count; ``all`` is the whole
    machine, outside the pool) and, in the local sandbox, ``resources.cpus`` (rounded up)."""
    res = step.resources
    if res is None or backend not in POOLED_BACKENDS:
        return Ask()
    gpus = res.gpus if isinstance(res.gpus, int) else 0
    cpus = math.ceil(res.cpus) if res.cpus is not None and backend == "local" else 0
    return Ask(gpus, cpus)


def demand(workflow: Workflow, backend: str, source: str, check: bool = True) -> Demand | None:
    """The run's demand on the pool (None when no step draws from it). Raises UsageError,
    before anything starts, for a step that asks for more than the pool has at all: it
    would wait for ever. ``source``: the workflow file, for the message. ``check=False``:
    for a run that is only stopped (it gives back what it holds, whatever the pool now)."""
    if check and backend == "docker":
        for s in workflow.steps:
            if s.resources is not None and s.resources.cpus is not None:
                raise UsageError(
                    f"{source}: step {s.id}: resources.cpus pins a step only in the local "
                    "sandbox; the Docker sandbox's steps share one container: set "
                    "sandbox.resources.cpus"
                )
    asks = {s.id: a for s in workflow.steps if (a := ask_of(s, backend))}
    if not asks:
        return None
    try:
        pool = discover()
    except PoolError as e:
        if not check:
            return Demand(Pool((), (), str(e)), backend, asks)
        raise UsageError(str(e)) from None
    if not check:
        return Demand(pool, backend, asks)
    if any(a.cpus for a in asks.values()) and shutil.which("taskset") is None:
        raise UsageError(
            f"{source}: resources.cpus on a step pins it with `taskset`, which is not "
            "installed: install util-linux"
        )
    for step_id, a in asks.items():
        if a.gpus > len(pool.gpus):
            raise UsageError(
                f"{source}: step {step_id}: resources.gpus: {a.gpus} but the pool has "
                f"{pool.describe_gpus()}"
            )
        if a.cpus > len(pool.cpus):
            n = len(pool.cpus)
            raise UsageError(
                f"{source}: step {step_id}: resources.cpus: {a.cpus} but the pool has {n} "
                f"CPU{'' if n == 1 else 's'} (this process's affinity)"
            )
    return Demand(pool, backend, asks)


__all__ = ["Ask", "Demand", "Pool", "PoolError", "ask_of", "demand", "discover"]
