"""The local sandbox: steps run on this machine, in the workflow's folder, as this user.

It isolates nothing; it is for trusted workflows and for machines without Docker.
"""

from __future__ import annotations

import functools
import os
import signal as signals
import time
from collections.abc import Iterable
from pathlib import Path

from agentflow.sandbox import (
    LOG_VAR,
    PROC_VAR,
    SWEEP_PASSES,
    Launch,
    bounded,
    marker,
    run_bounded,
)

# The caller's tmux variables would point the step at the wrong server; agentflow's own
# model key is its credential, not the step's (a workflow that needs it names it in
# `secrets:`, and then it is handed over and masked like any secret).
DROP_ENV = frozenset({"TMUX", "TMUX_PANE", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"})
WRAPPER_WAIT = 1.0
"""Seconds a sweep waits for the step's wrapper to end (its log drained) once the step's
processes are gone, before it kills the log's readers that hold it up."""


class LocalSandbox:
    name = "local"

    def __init__(
        self, workspace: Path, secrets: Iterable[str] = (), steps: Path | None = None
    ) -> None:
        self.workspace = workspace
        self.secrets = frozenset(secrets)
        """Names kept out of probe and check commands (they do not need them)."""
        self.steps = steps
        """The run's ``steps/`` folder: where the step markers a KILL sweeps for point."""

    def start(self) -> None:
        return None

    def workdir(self, relative: str | None) -> str:
        return str((self.workspace / relative).resolve() if relative else self.workspace)

    def launch(
        self, step_dir: Path, workdir: str, env: dict[str, str], secrets: dict[str, str]
    ) -> Launch:
        # No boundary: the step runs on the host, as the user, with the environment of the
        # agentflow process that starts it (the tmux server's own holds nothing of it).
        full = {k: v for k, v in os.environ.items() if k not in DROP_ENV}
        full.update(env)
        full.update(secrets)
        # /bin/sh: tmux runs the window's command as it is, without a PATH search.
        command = ["/bin/sh", str(step_dir / "wrapper.sh"), workdir, _marker(step_dir)]
        return Launch(command, full, sources_env=True)

    def signal(self, step_id: str, pgid: int | None, signum: int) -> bool:
        sent = False
        if pgid is not None:
            try:
                os.killpg(pgid, signum)
                sent = True
            except (ProcessLookupError, PermissionError):
                pass
        # KILL is the last word: what left the group goes too (the wrapper sweeps after
        # TERM itself, but it may be dead or stuck).
        if signum == signals.SIGKILL and self.steps is not None:
            step_dir = self.steps / step_id
            sweep(step_dir, _marker(step_dir))
        return sent

    def exec(
        self, script: str, workdir: str, timeout: float, env: dict[str, str] | None = None
    ) -> tuple[int, str]:
        env = {
            **{k: v for k, v in os.environ.items() if k not in self.secrets | DROP_ENV},
            **(env or {}),
        }
        # Past the command's own `timeout`: the group is killed a little later.
        return run_bounded(bounded(script, timeout), timeout + 5, env, cwd=workdir)

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        return None


def _marker(step_dir: Path) -> str:
    # The same string at launch and at a later KILL, also from another orchestrator (a
    # resume) that names the home another way.
    return marker(str(_resolved(step_dir.parent) / step_dir.name))


@functools.lru_cache(maxsize=16)
def _resolved(folder: Path) -> Path:
    """A run's steps folder, its links resolved (once: a lookup of every part of the path
    for every launch was a measurable part of one)."""
    return folder.resolve()


def sweep(step_dir: Path, mark: str) -> None:
    """KILL every process of this user that carries the step's marker (what left the
    step's group: setsid, a daemon), looking again for children forked meanwhile; then, if
    the step's wrapper does not end soon after, the log readers that hold it up."""
    for _ in range(SWEEP_PASSES):
        if not _kill_marked(f"{PROC_VAR}={mark}".encode()):
            break
    deadline = time.monotonic() + WRAPPER_WAIT
    while not os.path.lexists(step_dir / "exit_code"):
        if time.monotonic() >= deadline:
            _kill_marked(f"{LOG_VAR}={mark}".encode())
            return
        time.sleep(0.05)


def _kill_marked(entry: bytes) -> bool:
    """KILL the processes whose environment holds ``entry``; whether there were any. A
    process of another user, or one that made itself undumpable, cannot be read: skipped."""
    found = False
    try:
        names = os.listdir("/proc")
    except OSError:  # no /proc: nothing to sweep
        return False
    for name in names:
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if entry not in f.read().split(b"\0"):
                    continue
            os.kill(int(name), signals.SIGKILL)
        except OSError:  # gone meanwhile, or not ours to read
            continue
        found = True
    return found


def step_marker(step_dir: Path) -> str:
    """The marker the step's processes carry (``AGENTFLOW_PROC``): what the readiness
    check of its ports looks for."""
    return _marker(step_dir)
