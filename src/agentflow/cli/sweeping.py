"""``agentflow run`` of a workflow with a ``matrix`` (or ``--matrix``): a sweep, one
detached run per combination, followed here and ranked at the end."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from agentflow.cli.app import console
from agentflow.display import Observers
from agentflow.errors import EXIT_FAILED, EXIT_OK, UsageError
from agentflow.orchestrator import SandboxChoice, new_run, start_detached
from agentflow.planner import Planner, make_plan
from agentflow.store import Store
from agentflow.sweep import (
    MATRIX_KEYWORDS,
    Member,
    Sweep,
    SweepRecord,
    expand,
    label,
    members_of,
    new_sweep_id,
    set_line,
)
from agentflow.textsafe import one_line
from agentflow.workflow.load import WorkflowFile

EXIT_INTERRUPTED = 130


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
    planner: Planner,
    *,
    sandbox: SandboxChoice | None,
    keep_sandbox: bool,
    yes: bool,
    no_diagnose: bool,
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
    )
    total = len(record.members)

    def launch(member: Member, run_id: str) -> None:
        values = {**overrides, **{k: str(v) for k, v in member.values.items()}}
        the_plan = make_plan(wf, values, planner)
        prepared = new_run(
            store, wf, the_plan, lambda r, p, h: Observers([]), run_id=run_id,
            sandbox=sandbox, keep_sandbox=keep_sandbox, diagnose=not no_diagnose,
        )  # fmt: skip
        argv = detached_argv(
            run_id, junit=None, keep_sandbox=keep_sandbox, yes=yes, no_diagnose=no_diagnose
        )
        start_detached(prepared, argv)

    def say(member: Member, text: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        shown = escape(f"{label(member.values)}  {one_line(text)}")
        console.print(f"{stamp}  [{member.index}/{total}] {shown}")

    parallel = workflow.max_parallel_runs
    console.print(
        f"sweep [bold cyan]{record.sweep_id}[/]: {total} runs of {workflow.name}, "
        f"{parallel} at once"
    )
    sweep = Sweep(store, record, parallel, launch, say)
    try:
        done = sweep.run()
    except KeyboardInterrupt:
        going = [m.run_id for m in record.members if m.status == "running"]
        console.print(
            f"\n[yellow]sweep {record.sweep_id} interrupted:[/] "
            f"{len(going)} run(s) go on in tmux ({', '.join(str(r) for r in going)}); "
            f"{sum(m.status == 'pending' for m in record.members)} not started. "
            "`agentflow status` shows them; `agentflow stop RUN` stops one."
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    _summary(done, wf)
    failed = [m for m in done.members if m.status != "succeeded"]
    raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)


def _summary(record: SweepRecord, wf: WorkflowFile) -> None:
    objective = record.objective
    table = Table(box=None, pad_edge=False, show_edge=False, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("combination", no_wrap=True)
    if objective is not None:
        arrow = "↑" if objective.goal == "maximize" else "↓"
        table.add_column(f"{objective.metric} {arrow}", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("run", overflow="fold")  # last: the one that may wrap
    for rank, m in enumerate(record.ranked(), 1):
        row = [str(rank), label(m.values)]
        if objective is not None:
            row.append("" if m.score is None else f"{m.score:g}")
        table.add_row(*row, m.status, m.run_id or "")
    console.print(table)
    best = record.best()
    if best is not None and objective is not None:
        console.print(
            f"best: {label(best.values)} ({objective.metric} {best.score:g}, run {best.run_id})\n"
            f"  agentflow run {wf.path} {set_line(best.values)}"
        )
    failed = sum(m.status != "succeeded" for m in record.members)
    if failed:
        console.print(f"{failed} of {len(record.members)} runs did not succeed")
