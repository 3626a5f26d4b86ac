"""The local sandbox: steps run on this machine, in the workflow's folder, as this user.

It isolates nothing; it is for trusted workflows and for machines without Docker.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from agentflow.sandbox import Launch, bounded, run_bounded

# The caller's tmux variables would point the step at the wrong server.
_DROP = {"TMUX", "TMUX_PANE"}


class LocalSandbox:
    name = "local"

    def __init__(self, workspace: Path, secrets: Iterable[str] = ()) -> None:
        self.workspace = workspace
        self.secrets = frozenset(secrets)
        """Names kept out of probe and check commands (they do not need them)."""

    def start(self) -> None:
        return None

    def workdir(self, relative: str | None) -> str:
        return str((self.workspace / relative).resolve() if relative else self.workspace)

    def launch(
        self, step_dir: Path, workdir: str, env: dict[str, str], secrets: dict[str, str]
    ) -> Launch:
        # No boundary: the step runs on the host, as the user, with the environment of the
        # agentflow process that starts it (the tmux server's own holds nothing of it).
        full = {k: v for k, v in os.environ.items() if k not in _DROP}
        full.update(env)
        full.update(secrets)
        return Launch(["sh", str(step_dir / "wrapper.sh"), workdir], full)

    def signal(self, step_id: str, pgid: int | None, signum: int) -> bool:
        if pgid is None:
            return False
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            return False
        except PermissionError:
            return False
        return True

    def exec(
        self, script: str, workdir: str, timeout: float, env: dict[str, str] | None = None
    ) -> tuple[int, str]:
        env = {
            **{k: v for k, v in os.environ.items() if k not in self.secrets},
            **(env or {}),
        }
        # Past the command's own `timeout`: the group is killed a little later.
        return run_bounded(bounded(script, timeout), timeout + 5, env, cwd=workdir)

    def close(self) -> None:
        return None
