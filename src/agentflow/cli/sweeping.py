"""``agentflow run`` of a workflow with a ``matrix`` (or ``--matrix``): a sweep, one
detached run per combination, followed here and ranked at the end; ``resume SWEEP`` and
``status SWEEP``."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, cast

import typer
from rich.table import Table

from agentflow.cli.app import console, plain_output
from agentflow.cli.interactive import approved_planning, someone_answers
from agentflow.cli.sweep_view import (
    SweepLive,
    header,
    members_table,
    run_states,
    runs_note,
    shown_status,
)
from agentflow.display import Observers
from agentflow.errors import EXIT_BLOCKED, EXIT_FAILED, EXIT_OK, EnvironmentProblem, UsageError
from agentflow.orchestrator import SandboxChoice, new_run, reopen, start_detached
from agentflow.planner import make_plan, planner_for
from agentflow.store import Store
from agentflow.sweep import (
    MATRIX_KEYWORDS,
    Member,
    SweepOptions,
    SweepRecord,
    expand,
    follower,
    follower_lock,
    frozen_path,
    frozen_workflow,
    label,
    members_of,
    new_sweep_id,
    read_record,
    save_record,
    sweep_path,
)
from agentflow.sweep_follow import ENDED, Launch, Redrive, Sweep
from agentflow.textsafe import json_text
from agentflow.workflow.load import WorkflowFile

EXIT_INTERRUPTED = 130
EXIT_BY_STATUS = {"succeeded": EXIT_OK, "failed": EXIT_FAILED, "blocked": EXIT_BLOCKED}


def detached_argv(
    run_id: str, *, junit: Path | None, keep_sandbox: bool, yes: bool, no_diagnose: bool
) -> list[str]:
    """The command of a detached run's own orchestrator (``agentflow drive``)."""
    argv = [sys.executable, "-m", "agentflow", "drive", run_id]
    if junit is not None:
        argv += ["--junit", str(junit.absolute())]
    return (
        argv + ["--keep-sandbox"] * keep_sandbox + ["--yes"] * yes + ["--no-diagnose"] * no_diagnose
    )


def run_sweep(
    wf: WorkflowFile,
    matrix: dict[str, list[Any]],
    overrides: dict[str, str],
    options: SweepOptions,
    *,
    ci: bool,
) -> None:
    workflow = wf.workflow
    names = [k for k in matrix if k not in MATRIX_KEYWORDS]
    for name in names:
        if name not in workflow.inputs:
            raise UsageError(
                f"--matrix {name}: {wf.path.name} has no input '{name}'; "
                f"inputs: {', '.join(workflow.inputs) or 'none'}"
            )
        if name in overrides:
            raise UsageError(f"--set {name} and the matrix both give {name}: keep one")
    combos = expand(matrix)
    if not combos:
        raise UsageError("the matrix has no combinations (everything is excluded)")
    store = Store()
    record = SweepRecord(
        sweep_id=new_sweep_id(workflow.name),
        workflow=workflow.name,
        workflow_file=str(wf.path),
        objective=workflow.objective,
        members=members_of(combos),
        sets=overrides,
        options=options,
        parallel=workflow.max_parallel_runs,
        created_at=datetime.now(UTC),
    )
    begin(store, record, wf)
    console.print(
        f"sweep [bold cyan]{record.sweep_id}[/]: {len(record.members)} runs of "
        f"{workflow.name}, {record.parallel} at once"
    )
    follow_sweep(store, record, wf, ci)


def resume_sweep(sweep_id: str, *, ci: bool, flags: SweepOptions) -> None:
    """Follow the sweep again: runs not started start, runs that go on are followed, runs
    whose orchestrator is gone are driven again, finished runs are left as they are."""
    store = Store()
    record = read_record(store.home, sweep_id)
    if all(m.status in ENDED for m in record.members) and len(record.members) >= record.planned():
        console.print(f"{record.kind} {sweep_id} already ended ({record.status}): nothing to do")
        _ranking(record)
        raise typer.Exit(EXIT_BY_STATUS.get(record.status, EXIT_FAILED))
    given = flags.model_dump(exclude_defaults=True)
    record.options = record.options.model_copy(update=given)
    wf = frozen_workflow(store.home, record)
    began = run_states(store, record)  # a launch cut short may have made its run
    waiting = sum(m.status == "pending" and m.index not in began for m in record.members)
    waiting += record.planned() - len(record.members)  # a search's trials not yet asked
    console.print(
        f"{record.kind} [bold cyan]{sweep_id}[/]: resuming; {waiting} of {record.planned()} "
        f"runs not started, {sum(m.status in ENDED for m in record.members)} over"
    )
    follow_sweep(store, record, wf, ci)


def begin(store: Store, record: SweepRecord, wf: WorkflowFile) -> None:
    """The record saved, and the workflow as it was: runs not started yet when the sweep
    is resumed use this copy."""
    store.ensure_home()
    frozen = frozen_path(store.home, record.sweep_id)
    frozen.parent.mkdir(parents=True, exist_ok=True)
    frozen.write_text(wf.text, encoding="utf-8")
    save_record(store.home, record)


def follow_sweep(store: Store, record: SweepRecord, wf: WorkflowFile, ci: bool) -> None:
    options = record.options
    planner = approved_planning(planner_for(wf, options.planner), wf.path, options.yes, ci)
    sandbox = cast(SandboxChoice | None, options.sandbox)  # checked by `run`'s option

    def argv(run_id: str) -> list[str]:
        # Each run writes junit.xml in its own directory: none elsewhere.
        return detached_argv(
            run_id, junit=None, keep_sandbox=options.keep_sandbox, yes=options.yes,
            no_diagnose=options.no_diagnose,
        )  # fmt: skip

    def launch(member: Member, run_id: str) -> None:
        values = {**record.sets, **{k: str(v) for k, v in member.values.items()}}
        the_plan = make_plan(wf, values, planner)
        prepared = new_run(
            store, wf, the_plan, lambda r, p, h: Observers([]), run_id=run_id,
            sandbox=sandbox, keep_sandbox=options.keep_sandbox,
            diagnose=not options.no_diagnose, notify=options.notify,
        )  # fmt: skip
        if options.no_cache:  # in the run's state: its orchestrator, and a resume, keep it
            prepared.runner.state = prepared.runner.state.with_run(no_cache=True)
        start_detached(prepared, argv(run_id))

    def redrive(run_id: str) -> None:
        prepared = reopen(store, run_id, lambda r, p, h: Observers([]))
        start_detached(prepared, argv(run_id))

    view = SweepLive(record, live=not plain_output(ci))
    asks = someone_answers(ci)
    with follower_lock(store.home, record.sweep_id), _signals_detach(), view:
        # Under the lock: a search's study is reconciled with its record by one follower.
        sweep = _follower(store, record, wf, launch, redrive, view.say)
        while True:
            try:
                done = sweep.follow(lambda: view.update(sweep.look.states))
                outcome = "over"
            except KeyboardInterrupt:
                choice = view.ask() if asks else "detach"
                if choice == "continue":
                    continue
                if choice == "stop":
                    done, outcome = sweep.stop_all(), "stopped"
                else:
                    done, outcome = sweep.detach("detached"), "detached"
            except _Signalled as e:
                done, outcome = sweep.detach(f"detached ({e})"), "detached"
            break
    _conclude(store, done, outcome)


def _follower(
    store: Store, record: SweepRecord, wf: WorkflowFile, launch: Launch, redrive: Redrive,
    say: Callable[[Member, str], None],
) -> Sweep:  # fmt: skip
    if record.search is None:
        return Sweep(store, record, launch, redrive, say)
    from agentflow.search.follow import SearchFollow  # Optuna: only when searching

    return SearchFollow(store, record, wf.workflow, launch, redrive, say)


class _Signalled(BaseException):
    """SIGTERM or SIGHUP to the follower: it detaches (the runs go on)."""


@contextlib.contextmanager
def _signals_detach() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Signalled(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _conclude(store: Store, record: SweepRecord, outcome: str) -> None:
    sid = record.sweep_id
    console.print(header(record, record.status))
    if outcome != "over":
        _members(store, record)
        going = [m.run_id for m in record.members if m.status == "running"]
        waiting = sum(m.status == "pending" for m in record.members)
        waiting += record.planned() - len(record.members)
        kind = record.kind
        if outcome == "stopped":
            console.print(f"[yellow]{kind} {sid} stopped[/] ({waiting} run(s) not started)")
        else:
            console.print(
                f"[yellow]detached from {kind} {sid}:[/] {len(going)} run(s) go on in tmux, "
                f"{waiting} not started"
            )
        console.print(f"  continue: agentflow resume {sid}\n  status:   agentflow status {sid}")
        raise typer.Exit(EXIT_INTERRUPTED)
    _ranking(record)
    console.print(f"record: {sweep_path(store.home, sid)}")
    if record.search is not None:
        from agentflow.search.page import write_page  # Optuna: only for a search

        console.print(f"report: {write_page(store, record)}", soft_wrap=True)
    if record.status == "interrupted":
        console.print(f"some runs did not finish: `agentflow resume {sid}` continues them")
        raise typer.Exit(EXIT_INTERRUPTED)
    raise typer.Exit(EXIT_BY_STATUS.get(record.status, EXIT_FAILED))


def _ranking(record: SweepRecord) -> None:
    """The ranked table, the best combination and the command that runs it again."""
    objective = record.objective
    table = Table(box=None, pad_edge=False, show_edge=False, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("combination", no_wrap=True)
    if objective is not None:
        arrow = "↑" if objective.goal == "maximize" else "↓"
        table.add_column(f"{objective.metric} {arrow}", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("run", overflow="fold")  # last: the one that may wrap
    by_index = {m.index: m for m in record.members}
    ranked = [by_index[i] for i in record.ranking if i in by_index] or record.ranked()
    for rank, m in enumerate(ranked, 1):
        row = [str(rank), label(m.values)]
        if objective is not None:
            row.append("" if m.score is None else f"{m.score:g}")
        status = f"pruned ({m.message})" if m.status == "pruned" and m.message else m.status
        table.add_row(*row, status, m.run_id or "")
    console.print(table)
    best = record.best()
    if best is not None and objective is not None:
        console.print(
            f"best: {label(best.values)} ({objective.metric} {best.score:g}, run {best.run_id})",
            highlight=False,
        )
        console.print(f"  {record.best_command or record.command_for(best)}", markup=False)
    failed = sum(m.status not in ("succeeded", "pruned") for m in record.members)
    if failed:
        console.print(f"{failed} of {len(record.members)} runs did not succeed")
    pruned = [m for m in record.members if m.status == "pruned"]
    if pruned:  # stopped early on purpose: no failure
        console.print(f"{len(pruned)} of {len(record.members)} trials pruned (stopped early)")


def _members(store: Store, record: SweepRecord) -> None:
    console.print(members_table(record, run_states(store, record), console.width))
    note = runs_note(record, console.width)
    if note is not None:
        console.print(note)


def show_sweep(sweep_id: str, as_json: bool) -> None:
    """``agentflow status SWEEP``: the sweep's line and its runs; ``--json``: the record."""
    store = Store()
    if as_json:
        sys.stdout.write(json_text(sweep_path(store.home, sweep_id).read_text(encoding="utf-8")))
        return
    record = read_record(store.home, sweep_id)
    shown = shown_status(store, record)
    console.print(header(record, shown))
    if record.message:
        console.print(record.message, markup=False, highlight=False)
    _members(store, record)
    best = record.best()
    if record.best_command and best is not None:
        console.print(f"best: {label(best.values)}   {record.best_command}", markup=False)
    if shown in ("orphaned", "interrupted"):
        console.print(f"continue it: `agentflow resume {sweep_id}`")


def stop_sweep(sweep_id: str) -> None:
    """``agentflow stop SWEEP``: its follower detached first (SIGTERM; else it would start
    the runs not started as the stopped ones end), then every running run stopped."""
    store = Store()
    pid = follower(store.home, sweep_id)
    if pid is not None and pid > 0:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while follower(store.home, sweep_id) is not None:
            if time.monotonic() > deadline:
                raise EnvironmentProblem(
                    f"the follower of sweep {sweep_id} (pid {pid}) did not let go within 30s"
                )
            time.sleep(0.1)
    record = read_record(store.home, sweep_id)  # as the follower left it

    def never(*args: object) -> None:
        raise AssertionError("stop starts no run")

    with follower_lock(store.home, sweep_id):
        view = SweepLive(record, live=False)
        done = Sweep(store, record, never, never, view.say).stop_all()
    console.print(f"sweep {sweep_id} {done.message}")
    console.print(f"  continue: agentflow resume {sweep_id}")
