"""Commands that end runs and tidy up after them: stop, gc."""

from __future__ import annotations

from typing import Annotated

import typer

from agentflow import cache
from agentflow.artifacts import human_size
from agentflow.cli.app import command, console
from agentflow.cli.sweeping import stop_sweep
from agentflow.display import LogFile, Observers
from agentflow.orchestrator import reopen, request_stop
from agentflow.sessions import close_finished_sessions
from agentflow.settings import settings
from agentflow.store import Store
from agentflow.sweep import is_sweep


@command()
def stop(run_id: Annotated[str, typer.Argument(help="The run (or sweep) to stop.")]) -> None:
    """Stop a run: its steps' processes, its tmux session, its orchestrator. Or every
    running run of a sweep (its exact id)."""
    store = Store()
    if is_sweep(store.home, run_id):
        stop_sweep(run_id)
        return
    run_dir = store.open(run_id)
    if request_stop(run_dir):
        console.print(f"run {run_dir.run_id} stopped")
        return
    rid = run_dir.run_id
    with run_dir.lock():
        prepared = reopen(
            store, rid, lambda r, p, h: Observers([LogFile(str(r.log_path))]), secrets=False
        )
        runner = prepared.runner
        if runner.state.status in ("succeeded", "failed") and not runner.state.count("running"):
            runner.s.tmux.kill_session(rid)
            runner.s.sandbox.close()  # a container kept with --keep-sandbox goes too
            console.print(f"run {rid} had already {runner.state.status}; its session is closed")
            return
        runner.stop("stopped by `agentflow stop`")
    console.print(f"run {rid} stopped; resume it with `agentflow resume {rid}`")


@command()
def gc() -> None:
    """Remove sandbox containers of runs that are over or gone, close the tmux sessions of
    runs that are over, and prune the step cache: entries whose files are gone or
    changed, then the least recently used ones over AGENTFLOW_CACHE_MAX."""
    store = Store()
    pruned = cache.gc(store.home, settings().cache_max)
    console.print(
        f"cache: removed {len(pruned.removed)} entr{'y' if len(pruned.removed) == 1 else 'ies'}, "
        f"kept {pruned.kept} ({human_size(pruned.size)})"
    )
    closed = close_finished_sessions(store)  # before Docker, which may not answer
    console.print(
        f"closed {len(closed)} tmux session(s)" + (f": {', '.join(closed)}" if closed else "")
    )
    # Live: driven right now, or with steps still running (a detached run).
    live = {
        r.run_id
        for r in store.list()
        if r.lock_holder() is not None or r.read_state().count("running")
    }
    from agentflow.sandbox.docker import reap

    removed = reap(store.home, live)
    names = f": {', '.join(removed)}" if removed else ""
    console.print(f"removed {len(removed)} container(s){names}")
