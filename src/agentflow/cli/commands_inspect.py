"""Commands that look at runs: status, logs, attach."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from agentflow import ondisk, safefs
from agentflow.cli.app import command, console, err_console
from agentflow.cli.sweeping import show_sweep
from agentflow.display import STATUS_STYLE, last_line, steps_table
from agentflow.errors import StateError, UsageError
from agentflow.sparkline import metric_table
from agentflow.state import RunState, now
from agentflow.store import RunDir, Store
from agentflow.sweep import is_sweep
from agentflow.textsafe import one_line, printable
from agentflow.tmux import Tmux, socket_path_for
from agentflow.viewparts import detach_keys
from agentflow.workflow import format_duration


def _run_status(run: RunDir, state: RunState) -> str:
    """The recorded status, corrected when its orchestrator died without saying so."""
    if state.status == "running" and run.lock_holder() is None:
        return "orphaned"
    return state.status


@command()
def status(
    run_id: Annotated[
        str | None, typer.Argument(help="A run or a sweep; all runs when omitted.")
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print state.json's content, with what the step files say (exit codes, "
            "progress) and the fields driven, unwatched and ended_unwatched (a sweep: "
            "its record).",
        ),
    ] = False,
) -> None:
    """Show all runs, one run's steps, or a sweep's runs. A run nobody drives is shown
    from its steps' own files: exit codes written since, and progress."""
    store = Store()
    if run_id is not None and is_sweep(store.home, run_id):
        show_sweep(run_id, as_json)
        return
    if run_id is not None:
        run = store.open(run_id)
        seen = ondisk.read(run, run.read_state())
        if as_json:
            sys.stdout.write(ondisk.json_dump(ondisk.as_json(seen)))
            return
        _show_run(run, seen)
        return
    runs = store.list()
    if as_json:
        states: list[dict[str, object]] = []
        for r in runs:
            try:
                states.append(ondisk.as_json(ondisk.read(r, r.read_state())))
            except StateError as e:
                states.append({"run_id": r.run_id, "status": "damaged", "error": str(e)})
        sys.stdout.write(ondisk.json_dump(states))
        return
    if not runs:
        console.print(f"no runs in {store.runs}")
        return
    damaged: list[str] = []
    table = Table(box=None, pad_edge=False, show_edge=False)
    for col in ("run", "workflow", "status", "steps", "started", "time"):
        table.add_column(col, no_wrap=col != "workflow")
    for run in runs:
        try:
            state = run.read_state()
        except StateError as e:  # one damaged run must not hide the others
            table.add_row(run.run_id, "", Text("damaged", style="red"), "", "", "")
            damaged.append(str(e))
            continue
        shown = _run_status(run, state)
        end = state.finished_at or (now() if shown == "running" else state.updated_at)
        table.add_row(
            state.run_id,
            state.workflow,
            Text(shown, style=STATUS_STYLE.get(shown, "yellow")),
            f"{state.count('succeeded')}/{len(state.steps)}",
            f"{state.created_at.astimezone():%Y-%m-%d %H:%M}",
            format_duration(round((end - state.created_at).total_seconds())),
        )
    console.print(table)
    for problem in damaged:
        console.print(f"[red]damaged:[/] {problem}")


def _show_run(run: RunDir, seen: ondisk.OnDisk) -> None:
    state = seen.state
    shown = _run_status(run, state)
    console.print(
        Text.assemble(
            (state.run_id, "bold"),
            f"  {state.workflow}  ",
            (shown, STATUS_STYLE.get(shown, "yellow")),
            f"  {state.sandbox}",
            f"  {one_line(state.message)}",
        )
    )
    lines = {
        k: last_line(run.step_dir(k) / "output.log")
        for k, st in state.steps.items()
        if st.status == "running" and k not in seen.ended
    }
    console.print(steps_table(state, last_lines=lines, width=console.width))
    if metrics := metric_table(state):  # sparklines of expect.metrics
        console.print(metrics)
    rid = state.run_id
    if seen.unwatched:
        ended = len(seen.ended_unwatched)
        what = f"; {ended} ended since: `agentflow resume {rid}` records them" if ended else ""
        console.print(
            f"nobody watches this run: its running steps are shown from their own files{what}",
            style="yellow",
        )
    if shown == "orphaned" and not seen.ended_unwatched:
        console.print(f"its orchestrator is gone: `agentflow resume {rid}`")


@command()
def logs(
    run_id: Annotated[str, typer.Argument(help="The run.")],
    step: Annotated[str, typer.Argument(help="The step.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new output.")
    ] = False,
    attempt: Annotated[
        int | None, typer.Option("--attempt", help="An earlier attempt's log.")
    ] = None,
) -> None:
    """Print a step's complete output (every byte, not a screen capture). On a terminal,
    escape sequences (colours aside) and control characters are left out; piped or
    redirected, every byte."""
    run = Store().open(run_id)
    seen = ondisk.read(run, run.read_state())
    state = seen.state
    if step not in state.steps:
        raise UsageError(f"run {run.run_id} has no step '{step}'; steps: {', '.join(state.steps)}")
    folder = run.step_dir(step)
    attempts = state.steps[step].attempts
    if attempt is not None and attempt != attempts:
        if not 1 <= attempt < attempts:
            raise UsageError(f"step '{step}' has no attempt {attempt} (it has had {attempts})")
        folder = folder / f"attempt-{attempt}"
    log = folder / "output.log"
    if not _exists(log, run.steps_path) and not follow:
        raise UsageError(f"step '{step}' has no output yet ({state.steps[step].status})")
    _print_log(log, folder / "exit_code", run.steps_path, follow)
    if attempt is None and step in seen.unwatched:
        # Said after the log (on stderr: the log itself stays as the step wrote it).
        again = ondisk.read(run, run.read_state()) if follow else seen
        code = again.state.steps[step].exit_code
        why = "still running" if code is None else f"ended while unwatched: exit {code}"
        err_console.print(
            f"({step} {why}; nobody drives run {run.run_id}: `agentflow resume "
            f"{run.run_id}` records it)",
            style="yellow",
        )


def _exists(path: Path, root: Path) -> bool:
    try:
        safefs.lstat(path, root)
    except OSError:
        return False
    return True


def _print_log(log: Path, exit_code: Path, root: Path, follow: bool) -> None:
    """Print the log from the run's steps/ folder, which the sandbox can write: read
    through the guarded path (a planted link or FIFO is refused, with one line)."""
    out = _LogOut(sys.stdout.isatty())
    pos = 0
    while True:
        size = pos
        if _exists(log, root):
            try:
                with safefs.open_read(log, root) as f:
                    f.seek(pos)
                    while chunk := f.read(1 << 16):
                        out.write(chunk)
                        pos += len(chunk)
                    size = os.fstat(f.fileno()).st_size
            except OSError as e:
                raise UsageError(f"cannot show {log}: {e.strerror}") from None
            out.flush()
        if not follow or (_exists(exit_code, root) and size <= pos):
            out.close()
            return
        time.sleep(0.2)


class _LogOut:
    """A log's bytes to stdout: as they are to a pipe or a file (the person asked for the
    log); to a terminal, whole lines made printable with their colours kept (a step's output
    must not set the clipboard or the title, clear the screen or move the cursor)."""

    HELD = 1 << 20
    """A line longer than this is shown in parts (a step may write no newline at all)."""

    def __init__(self, terminal: bool) -> None:
        self.out = sys.stdout.buffer
        self.terminal = terminal
        self.held = b""

    def write(self, chunk: bytes) -> None:
        if not self.terminal:
            self.out.write(chunk)
            return
        self.held += chunk
        # Whole lines only: an escape sequence or a character may be split between reads.
        lines, newline, self.held = self.held.rpartition(b"\n")
        if newline:
            self._show(lines + newline)
        if len(self.held) > self.HELD:
            self._show(self.held)
            self.held = b""

    def flush(self) -> None:
        self.out.flush()

    def close(self) -> None:
        if self.held:
            self._show(self.held)
            self.held = b""
        self.out.flush()

    def _show(self, data: bytes) -> None:
        text = data.decode("utf-8", errors="replace")
        self.out.write(printable(text, colours=True).encode("utf-8"))


@command()
def attach(
    run_id: Annotated[str, typer.Argument(help="The run.")],
    step: Annotated[str | None, typer.Argument(help="Open this step's window.")] = None,
    write: Annotated[
        bool,
        typer.Option(
            "--write", "-w", help="Be able to type into the windows (read-only without it)."
        ),
    ] = False,
) -> None:
    """Attach to the run's tmux session, read-only unless --write (leave with Ctrl-b d;
    from inside tmux, Ctrl-b Ctrl-b d, as the status line says once attached).
    Read-only, tmux lets you only detach: name a STEP to open its window."""
    store = Store()
    run = store.open(run_id)
    state = run.read_state()
    if step is not None and step not in state.steps:
        raise UsageError(f"run {run.run_id} has no step '{step}'; steps: {', '.join(state.steps)}")
    tmux = Tmux(socket_path_for(store.home))
    if not tmux.has_session(run.run_id):
        raise UsageError(
            f"run {run.run_id} has no tmux session any more (stopped, or the machine restarted): "
            f"`agentflow logs {run.run_id} STEP` shows the output"
        )
    if not sys.stdin.isatty():
        raise UsageError("attach needs a terminal")
    window = state.steps[step].window if step else None
    # From inside tmux, the outer tmux takes Ctrl-b: say which keys leave this one.
    leave = f"{detach_keys()} leaves; the run goes on" + ("" if write else " (read-only)")
    argv = tmux.attach_argv(run.run_id, window, read_only=not write, note=leave)
    env = {k: v for k, v in os.environ.items() if k != "TMUX"}  # also from inside tmux
    os.execvpe(argv[0], argv, env)
