"""Who listens on a loopback TCP port of this machine, from ``/proc`` (Linux).

A readiness probe that gets an answer only proves that *something* listens. In the local
sandbox two runs share the machine's ports, so a service's probe can be answered by
another run's server. ``foreign`` finds the listening socket of a port in
``/proc/net/tcp{,6}`` (its inode), the processes that hold it (``/proc/PID/fd`` links to
``socket:[INODE]``), and says whether one of them is the step's own: a descendant of the
step's process, in its process group, or carrying its marker in the environment (the
marker survives ``setsid`` and a daemon's double fork: see ``sandbox/wrapper.sh``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agentflow.textsafe import one_line

PROC = Path("/proc")
LISTEN = "0A"
"""The ``st`` column of a listening socket in ``/proc/net/tcp``."""
_WILDCARD4 = "00000000"
_WILDCARD6 = "0" * 32
_LOOPBACK6 = "0" * 24 + "01000000"
_MAPPED6 = "0" * 16 + "FFFF0000"


@dataclass(frozen=True)
class Step:
    """What identifies a step's processes."""

    id: str
    pid: int | None
    """The step's process (the leader of its group), from its ``pid`` file."""
    marker: bytes
    """``AGENTFLOW_PROC=...``, as an entry of its processes' environment."""


def available() -> bool:
    """Whether this machine has the ``/proc`` files to look in."""
    return (PROC / "net" / "tcp").exists()


def foreign(port: int, step: Step) -> str | None:
    """None when a process of ``step`` listens on loopback ``port`` (or ``/proc`` cannot
    say); else what holds it, for a person: ``port 41234 is held by pid 1234 (python3 -m
    http.server), not by step serve``."""
    if not available():
        return None
    inodes = _listening(port)
    if not inodes:
        return f"nothing listens on port {port} on loopback (the answer came from elsewhere)"
    holders = _holders(inodes)
    if any(_is_steps(pid, step) for pid in holders):
        return None
    if not holders:
        return (
            f"port {port} is held by a process agentflow cannot see (another user's), "
            f"not by step {step.id}"
        )
    pid = holders[0]
    return f"port {port} is held by pid {pid} ({command_of(pid)}), not by step {step.id}"


def command_of(pid: int) -> str:
    """The process's command line, cut short and made safe to show."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return "?"
    text = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", errors="replace")
    return one_line(text, 80) or "?"


def _listening(port: int) -> set[int]:
    """The inodes of the sockets listening on ``port`` where loopback reaches them."""
    found: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != LISTEN:
                continue
            address, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) == port and _reaches_loopback(address):
                found.add(int(fields[9]))
    found.discard(0)
    return found


def _reaches_loopback(address: str) -> bool:
    """Whether a connection to 127.0.0.1 or ::1 can arrive at a socket bound here (the
    address as ``/proc/net/tcp{,6}`` writes it: 32-bit words in host order)."""
    if len(address) == 8:
        return address == _WILDCARD4 or address[6:8] == "7F"
    if address in (_WILDCARD6, _LOOPBACK6):
        return True
    return address.startswith(_MAPPED6) and address[30:32] == "7F"


def _holders(inodes: set[int]) -> list[int]:
    """The processes (that this user may look at) with one of ``inodes`` open."""
    links = {f"socket:[{i}]" for i in inodes}
    pids: list[int] = []
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.scandir(f"{entry.path}/fd")
        except OSError:  # gone, or not ours to look at
            continue
        with fds:
            for fd in fds:
                try:
                    if os.readlink(fd.path) in links:
                        pids.append(int(entry.name))
                        break
                except OSError:
                    continue
    return sorted(pids)


def _is_steps(pid: int, step: Step) -> bool:
    try:
        with open(PROC / str(pid) / "environ", "rb") as f:
            if step.marker in f.read().split(b"\0"):
                return True
    except OSError:
        pass
    if step.pid is None:
        return False
    seen = 0
    cur = pid
    while cur > 1 and seen < 1000:  # (a cycle cannot happen; bounded all the same)
        if cur == step.pid:
            return True
        stat = _stat(cur)
        if stat is None:
            return False
        ppid, pgid = stat
        if pgid == step.pid:
            return True
        cur = ppid
        seen += 1
    return False


def _stat(pid: int) -> tuple[int, int] | None:
    """A process's parent and process group."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command, in (), may hold anything
    return int(fields[1]), int(fields[2])
