"""The machine's devices a run's steps draw from: its GPUs (``AGENTFLOW_GPUS``, else what
``nvidia-smi`` lists, else none) and its CPUs (this process's affinity)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import JsonValue

from agentflow.settings import settings

GPUS_VAR = "AGENTFLOW_GPUS"
"""The GPU ids steps may be given, comma-separated (``0,1,2,3``): declared, not found."""
GPU_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._-]{0,63}$")
"""What a GPU id may look like: an index (``3``), a UUID (``GPU-…``), a MIG name."""
SMI_TIMEOUT = 10.0
"""Seconds ``nvidia-smi`` may take to list the GPUs (a wedged driver must not hang a run)."""


class HasDevices(Protocol):
    """An attempt's record with the devices it held (the report's ``Attempt``)."""

    @property
    def gpus(self) -> list[str]: ...

    @property
    def cpus(self) -> list[int]: ...


class PoolError(ValueError):
    """The pool cannot be known (a malformed ``AGENTFLOW_GPUS``)."""


@dataclass(frozen=True)
class Pool:
    """The devices of this machine that steps share."""

    gpus: tuple[str, ...]
    """GPU ids, in the order they are handed out."""
    cpus: tuple[int, ...]
    """CPU ids this process may run on."""
    gpu_source: str
    """Where the GPU ids came from, for messages: ``AGENTFLOW_GPUS=0,1``, ``nvidia-smi``,
    or ``no nvidia-smi``."""

    def describe_gpus(self) -> str:
        """``the pool has 1 GPU (AGENTFLOW_GPUS=0)``'s ending: count and source."""
        n = len(self.gpus)
        return f"{n} GPU{'' if n == 1 else 's'} ({self.gpu_source})"


def label(gpus: list[str], cpus: list[int]) -> str:
    """``GPU 0,1``, ``CPU 2,3``, both, or ``""``: what a step's attempt held."""
    parts = []
    if gpus:
        parts.append("GPU " + ",".join(gpus))
    if cpus:
        parts.append("CPU " + ",".join(str(c) for c in cpus))
    return " ".join(parts)


def held_by_attempt(attempts: Sequence[HasDevices]) -> str:
    """``GPU 1`` (one attempt), ``GPU 0, then GPU 1`` (a retry elsewhere): the pool's
    devices of each attempt that had some."""
    return ", then ".join(h for a in attempts if (h := label(a.gpus, a.cpus)))


def held_in(data: Mapping[str, JsonValue] | None) -> tuple[list[str], list[int]]:
    """The GPUs and CPUs a ``step_started`` event's data names (what the attempt held)."""
    gpus = (data or {}).get("gpus")
    cpus = (data or {}).get("cpus")
    return (
        [str(g) for g in gpus] if isinstance(gpus, list) else [],
        [c for c in cpus if isinstance(c, int)] if isinstance(cpus, list) else [],
    )


def parse_gpus(text: str) -> tuple[str, ...]:
    """The ids of an ``AGENTFLOW_GPUS`` value, each once, in order; empty for ``""``."""
    ids: list[str] = []
    for part in text.split(","):
        gpu = part.strip()
        if not gpu:
            continue
        if not GPU_ID.match(gpu):
            raise PoolError(
                f"{GPUS_VAR}={text!r}: {gpu!r} is not a GPU id "
                "(give indices or UUIDs, comma-separated: AGENTFLOW_GPUS=0,1)"
            )
        if gpu not in ids:
            ids.append(gpu)
    return tuple(ids)


def smi_gpus() -> tuple[str, ...] | None:
    """The GPU indices ``nvidia-smi`` lists; None when there is no ``nvidia-smi`` (or it
    fails: no driver, no GPU)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=SMI_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return tuple(x.strip() for x in done.stdout.splitlines() if GPU_ID.match(x.strip()))


def cpus() -> tuple[int, ...]:
    """The CPUs this process may run on (its affinity: a container's or a job's share)."""
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return tuple(range(os.cpu_count() or 1))


def discover() -> Pool:
    """The machine's pool: ``AGENTFLOW_GPUS`` when set, else ``nvidia-smi``'s GPUs."""
    declared = settings().gpus
    if declared is not None:
        return Pool(parse_gpus(declared), cpus(), f"{GPUS_VAR}={declared.strip()}")
    found = smi_gpus()
    source = "nvidia-smi" if found is not None else f"no nvidia-smi and no {GPUS_VAR}"
    return Pool(found or (), cpus(), source)
