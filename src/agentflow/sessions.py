"""Which tmux sessions ``agentflow gc`` closes: those of runs that are over.

A run's session stays when the run ends (its step windows can still be looked at), so
sessions pile up. One is closed only when all of these hold, checked while ``gc`` holds
the run's lock (so that no ``resume`` can start driving it in between):

- no orchestrator drives the run (its lock was free);
- the run's status is not ``running`` and no step of it is ``running``;
- nothing lives in the session but the log viewer (``tail -F`` of the orchestrator's
  log, the first window of a run started in the foreground): no step's process, no
  detached orchestrator just starting.

A session with no run directory behind it is left alone: it is not known to be over.
"""

from __future__ import annotations

from agentflow.errors import AgentflowError
from agentflow.store import RunDir, Store, valid_run_id
from agentflow.tmux import Tmux, socket_path_for

LOG_VIEWER = ("agentflow", "tail")
"""The first window of a foreground run's session: its name and command (never ends)."""


def close_finished_sessions(store: Store) -> list[str]:
    """Close the sessions of this home's runs that are over; their names."""
    socket = socket_path_for(store.home)
    if not socket.exists():  # no server: no session (and tmux may not be installed)
        return []
    tmux = Tmux(socket)
    closed = []
    for name in tmux.sessions():
        if not valid_run_id(name):  # a session someone else made on our server
            continue
        run = RunDir(store.runs / name)
        if not run.state_path.is_file():
            continue
        try:
            with run.lock():
                if _over(run, tmux, name):
                    tmux.kill_session(name)
                    closed.append(name)
        except (AgentflowError, OSError):  # driven (locked), or a damaged run: keep it
            continue
    return closed


def _over(run: RunDir, tmux: Tmux, session: str) -> bool:
    state = run.read_state()
    if state.status == "running" or state.count("running"):
        return False
    return all(pane == LOG_VIEWER for pane in tmux.live_panes(session))
