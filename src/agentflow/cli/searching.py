"""``agentflow search WORKFLOW``: the workflow's ``search:`` block, an adaptive search over
its inputs (a sweep whose runs an Optuna study proposes one by one, see
``agentflow.search``), followed here like a sweep; ``resume``, ``status`` and ``stop`` take
its id as a sweep's."""

from __future__ import annotations

import contextlib
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from agentflow import history
from agentflow.cli.app import command, console
from agentflow.cli.commands_define import SetOption
from agentflow.cli.commands_run import (
    CiOption,
    KeepOption,
    NoCacheOption,
    NoDiagnoseOption,
    NotifyOption,
    YesOption,
)
from agentflow.cli.sweeping import begin, follow_sweep
from agentflow.display import STATUS_STYLE
from agentflow.errors import UsageError
from agentflow.history import RunSummary
from agentflow.orchestrator import SandboxChoice
from agentflow.planner.inputs import parse_set_options
from agentflow.report.text import human_duration
from agentflow.search.info import SearchInfo, search_dir
from agentflow.store import Store, new_run_id
from agentflow.sweep import SweepOptions, SweepRecord, label, read_record
from agentflow.textsafe import one_line
from agentflow.workflow import load_workflow


@command()
def search(
    file: Annotated[Path, typer.Argument(help="The workflow file (with a `search:` block).")],
    set_: SetOption = None,
    sandbox: Annotated[
        SandboxChoice | None, typer.Option("--sandbox", help="Where steps run.")
    ] = None,
    planner: Annotated[str | None, typer.Option("--planner", help="static or anthropic.")] = None,
    trials: Annotated[
        int | None, typer.Option("--trials", min=1, help="How many trials (search.trials).")
    ] = None,
    parallel: Annotated[
        int | None,
        typer.Option("--parallel", min=1, help="The most trials at once (search.parallel)."),
    ] = None,
    ci: CiOption = False,
    keep_sandbox: KeepOption = False,
    yes: YesOption = False,
    no_diagnose: NoDiagnoseOption = False,
    no_cache: NoCacheOption = False,
    notify: NotifyOption = None,
) -> None:
    """Search the workflow's inputs for the best objective: one detached run per trial,
    with values an Optuna sampler (TPE by default) proposes from the trials so far; a trial
    whose reported metric is clearly worse than the others' at the same step is stopped
    (pruned). Ends with the ranked trials, the best `--set` line and an HTML page. Exit 0
    when every trial succeeded or was pruned, 1 when one failed."""
    wf = load_workflow(file)
    workflow = wf.workflow
    spec = workflow.search
    if spec is None:
        raise UsageError(
            f"{file}: no `search:` block; add one (trials, space, …: see docs/workflow.md)"
        )
    updates = {k: v for k, v in {"trials": trials, "parallel": parallel}.items() if v}
    spec = spec.model_copy(update=updates)  # kept in the record, which resume reads
    overrides = parse_set_options(set_ or [])
    for name in overrides:
        if name in spec.space:
            raise UsageError(f"--set {name}: the search chooses {name}; leave it out of --set")
    options = SweepOptions(
        sandbox=sandbox, planner=planner, keep_sandbox=keep_sandbox, yes=yes,
        no_diagnose=no_diagnose, no_cache=no_cache, notify=notify,
    )  # fmt: skip
    store = Store()
    sid = new_run_id(workflow.name).replace(workflow.name, f"{workflow.name}-search", 1)
    record = SweepRecord(
        sweep_id=sid,
        workflow=workflow.name,
        workflow_file=str(wf.path),
        objective=workflow.objective,
        members=[],
        sets=overrides,
        options=options,
        parallel=spec.parallel,
        created_at=datetime.now(UTC),
        search=SearchInfo(
            trials=spec.trials,
            study=str(search_dir(store.home, sid) / "study.db"),
            sampler=spec.sampler,
            seed=spec.seed,
        ),
    )
    begin(store, record, wf)
    prune = f", pruning on {spec.prune.metric}" if spec.prune else ""
    console.print(
        f"search [bold cyan]{sid}[/]: {spec.trials} trials of {workflow.name} "
        f"({spec.sampler}), {spec.parallel} at once{prune}"
    )
    follow_sweep(store, record, wf, ci)


def trials_history(sweep_id: str, as_json: bool) -> None:
    """``agentflow history SEARCH`` (or a sweep): its runs, in the order they began, each
    with its values, score, how it ended (``pruned`` too) and how long it took."""
    store = Store()
    record = read_record(store.home, sweep_id)
    recorded: dict[str, RunSummary] = {}
    for m in record.members:
        with contextlib.suppress(UsageError):
            found = history.get(store.home, m.run_id) if m.run_id else None
            if found is not None and found.run_id == m.run_id:  # exactly it, no prefix
                recorded[found.run_id] = found
    if as_json:
        rows = [
            {**m.model_dump(mode="json"),
             "duration_s": recorded[m.run_id].duration_s if m.run_id in recorded else None}
            for m in record.members
        ]  # fmt: skip
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    objective = record.objective
    table = Table(box=None, pad_edge=False, show_edge=False)
    for name in ("#", "values", *([objective.metric] if objective else []), "status", "time"):
        table.add_column(name, justify="right" if name in ("#", "time") else "left")
    table.add_column("run", overflow="fold")
    for m in record.members:
        summary = recorded.get(m.run_id or "")
        status = f"pruned ({m.message})" if m.status == "pruned" and m.message else m.status
        table.add_row(
            str(m.index),
            Text(one_line(label(m.values))),
            *([] if objective is None else ["" if m.score is None else f"{m.score:g}"]),
            Text(status, style=STATUS_STYLE.get(m.status, "")),
            human_duration(summary.duration_s) if summary else "",
            m.run_id or "",
        )
    console.print(f"{record.kind} {sweep_id}: {len(record.members)} of {record.planned()} runs")
    console.print(table)
