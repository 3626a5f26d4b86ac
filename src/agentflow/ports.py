"""Loopback ports for the steps that ask for them (``ports: [http]``).

A port is chosen free on this machine (nothing is bound to it: a bind test) and not given
to another live run of the same home: the home's ledger, ``ports.json``, says which run
holds which port, and is only read and changed under the ``flock`` of ``ports.lock``. A run
records its ports in its checkpoint (``StepState.ports``), so they are the same after a
resume, which holds them in the ledger again. The ledger forgets a run's ports when the run
ends, and when it finds the run dead (nobody holds its lock: its orchestrator is gone).

Ports come from below Linux's ephemeral range (``ip_local_port_range``, 32768-60999 by
default), where the kernel never puts the far end of an outgoing connection, so a port
chosen now is still free when the step starts later.
"""

from __future__ import annotations

import contextlib
import errno
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from agentflow.ledgerfile import SharedFile
from agentflow.store import lock_holder

LEDGER = "ports.json"
LOCK = "ports.lock"
LOWEST = 20000
"""The lowest port handed out (well above the ports services usually take by default)."""
TRIES = 500
"""Ports tried at random before giving up (the range has thousands)."""


class Holding(BaseModel):
    """Who holds a port of the ledger."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: str
    step: str
    name: str


class Ledger(BaseModel):
    """The content of ``ports.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ports: dict[int, Holding] = {}


class NoFreePort(Exception):
    """Every port tried was taken."""


@dataclass(frozen=True)
class Held:
    """What ``hold`` gave a run."""

    ports: dict[str, dict[str, int]]
    """Each step's ports by name."""
    new: dict[str, dict[str, int]]
    """The ports chosen now (the others came from the checkpoint)."""
    shared: list[str]
    """Ports from the checkpoint that another live run got meanwhile (while this run was
    dead): said as warnings; the readiness check tells whose server answers."""


def hold(
    home: Path,
    run_id: str,
    wanted: Mapping[str, list[str]],
    recorded: Mapping[str, Mapping[str, int]],
) -> Held:
    """Ports for a run: every step in ``wanted`` (step id: port names) gets the port
    ``recorded`` (the checkpoint) has for a name, else a new free one. The ledger then
    holds exactly these for the run. NoFreePort when no free port is found."""
    with _ledger(home).locked():
        ledger = _forget_dead(_read(home), run_id, home)
        others = {p: h for p, h in ledger.items() if h.run != run_id}
        mine: dict[int, Holding] = {}
        ports: dict[str, dict[str, int]] = {}
        new: dict[str, dict[str, int]] = {}
        shared: list[str] = []
        for step, names in wanted.items():
            ports[step] = {}
            for name in names:
                port = recorded.get(step, {}).get(name)
                if port is None:
                    port = _free_port(set(others) | set(mine))
                    new.setdefault(step, {})[name] = port
                elif port in others:
                    h = others[port]
                    shared.append(
                        f"port {port} ({step}.{name}) was given to run {h.run} "
                        f"({h.step}.{h.name}) while this run was not driven"
                    )
                ports[step][name] = port
                mine[port] = Holding(run=run_id, step=step, name=name)
        _ledger(home).write(Ledger(ports={**others, **mine}))
    return Held(ports, new, shared)


def release(home: Path, run_id: str) -> None:
    """The run's ports go back to the ledger (the run is over)."""
    with _ledger(home).locked():
        ledger = _read(home)
        kept = {p: h for p, h in ledger.items() if h.run != run_id}
        if len(kept) != len(ledger):
            _ledger(home).write(Ledger(ports=kept))


def held(home: Path) -> dict[int, Holding]:
    """The ledger as it is (for tests and tools)."""
    with _ledger(home).locked():
        return _read(home)


def is_free(port: int) -> bool:
    """Whether nothing on this machine is bound to ``port`` (TCP, IPv4 or IPv6), as a
    server that sets ``SO_REUSEADDR`` (most do) would find it."""
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 on this machine
            continue
        with s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                if e.errno == errno.EADDRNOTAVAIL:  # IPv6 switched off
                    continue
                return False
    return True


def port_range() -> tuple[int, int]:
    """The ports to choose from, ``[low, high)``: below the ephemeral range, or above it
    where it starts too low to leave room."""
    low, high = 32768, 61000
    with contextlib.suppress(OSError, ValueError):
        first, last = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        low, high = int(first), int(last) + 1
    if low - LOWEST >= 1000:
        return LOWEST, low
    if 65536 - high >= 1000:
        return high, 65536
    return 1024, 65536  # the whole range is ephemeral: the bind test is all there is


def _free_port(taken: set[int]) -> int:
    low, high = port_range()
    for _ in range(TRIES):
        port = low + secrets.randbelow(high - low)
        if port not in taken and is_free(port):
            return port
    raise NoFreePort(f"no free port found in {low}-{high - 1} after {TRIES} tries")


def _forget_dead(ledger: dict[int, Holding], run_id: str, home: Path) -> dict[int, Holding]:
    """The ledger without the ports of runs nobody drives (their lock is free)."""
    alive: dict[str, bool] = {run_id: True}
    kept: dict[int, Holding] = {}
    for port, h in ledger.items():
        if h.run not in alive:
            alive[h.run] = lock_holder(home / "runs" / h.run / "lock") is not None
        if alive[h.run]:
            kept[port] = h
    return kept


def _ledger(home: Path) -> SharedFile[Ledger]:
    return SharedFile(home, LEDGER, LOCK, Ledger)


def _read(home: Path) -> dict[int, Holding]:
    # A damaged ledger is started again: the bind test still keeps listening ports apart,
    # and each live run writes its own back at its next allocation or resume.
    return dict(_ledger(home).read().ports)
