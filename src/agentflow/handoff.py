"""Handing a step's environment to its tmux window without a command line or a file.

A window is made with tmux's fixed, small environment (the server's ``SERVER_ENV``); what
the step's host-side process needs on top (the local sandbox: your environment and the
secrets; Docker: the client's variables and the secrets) is a shell script of ``export``
lines that the window's first shell sources. Values on ``new-window -e`` would be on a
tmux client's command line (``ps`` shows it to every user) and bounded by tmux's 16 KiB
message; in a file they would be on a disk.

The script is a ``0600`` file in agentflow's private folder (beside the tmux socket, never
in a workspace, hidden from sandboxes), removed once the step's wrapper has recorded its
pid (it has read it) or the attempt is over.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shlex
from pathlib import Path

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHELL_OWN = frozenset({"IFS", "PS1", "PS2", "PS4", "OPTIND", "PPID", "ENV", "SHLVL", "PWD"})
"""Variables a shell keeps for itself (a POSIX shell does not take them from the
environment either): sourcing them would change how the wrapper itself runs."""


def script(env: dict[str, str]) -> str:
    """``export NAME='value'`` lines for the variables a shell can hold (a name that is no
    shell identifier cannot be exported by one, and is left out)."""
    return "".join(_export(k, v) for k, v in env.items())


@functools.lru_cache(maxsize=4096)
def _export(name: str, value: str) -> str:
    """One variable's line, or '' (remembered: most of a step's environment is the same
    for every step of the run, the orchestrator's own)."""
    if not _NAME.fullmatch(name) or name in _SHELL_OWN or "\0" in value:
        return ""
    return f"export {name}={shlex.quote(value)}\n"


ARG_STRLEN = 131072
"""Linux's limit on one ``NAME=value`` string passed to a program (32 pages)."""


def too_big(env: dict[str, str]) -> str:
    """Why a program could not be started with ``env`` (Linux refuses it: E2BIG), or ''."""
    total = 0
    for k, v in env.items():
        size = len(k.encode()) + len(v.encode()) + 2
        if size > ARG_STRLEN:
            return (
                f"its variable {k} takes {size} bytes, more than Linux passes to a program "
                f"({ARG_STRLEN}): write the value to a file and pass its path"
            )
        total += size
    limit = os.sysconf("SC_ARG_MAX") // 2  # the other half for the wrapper's own
    if total > limit:
        return (
            f"its variables take {total} bytes, more than Linux passes to a program "
            f"({limit}): write the large values to files and pass their paths"
        )
    return ""


class Handoff:
    """The environment scripts of the steps being started, one per step: ``0600`` files
    in agentflow's private folder (``0700``, beside the tmux socket, hidden from every
    sandbox), named after the run's session and the step. Not a memory file of this
    process: a window must still find its script when the orchestrator that made it was
    killed the moment after (the next one, resuming, adopts and removes the scripts)."""

    def __init__(self, private: Path, session: str) -> None:
        self.private = private
        self.prefix = f"{session}."
        self._held: set[str] = set()
        with contextlib.suppress(OSError):  # left by an orchestrator of this run that died
            for name in os.listdir(private):
                if name.startswith(self.prefix):
                    self._held.add(name.removeprefix(self.prefix))

    def _path(self, key: str) -> Path:
        return self.private / f"{self.prefix}{key}"

    def put(self, key: str, env: dict[str, str]) -> str:
        """Hold ``env`` as a script for ``key`` (a step); the path a shell sources it from."""
        self.release(key)
        path = self._path(key)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except FileNotFoundError:  # the folder is made at the first script (or again)
            self.private.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, flags, 0o600)
        try:
            _write_all(fd, script(env).encode())
        finally:
            os.close(fd)
        self._held.add(key)
        return str(path)

    def holds(self, key: str) -> bool:
        return key in self._held

    def release(self, key: str) -> None:
        """Remove ``key``'s script (its window has read it, or will never)."""
        self._held.discard(key)
        with contextlib.suppress(OSError):
            self._path(key).unlink()

    def keys(self) -> list[str]:
        return sorted(self._held)

    def close(self) -> None:
        for key in self.keys():
            self.release(key)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
