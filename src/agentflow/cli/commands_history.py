"""Commands that look back over runs: ``history`` (past runs of a workflow, from the home's
run history) and ``compare`` (two runs side by side)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence, Set
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from agentflow import history
from agentflow.cli.app import command, console
from agentflow.cli.searching import trials_history
from agentflow.display import STATUS_STYLE
from agentflow.errors import UsageError
from agentflow.history import Comparison, Row, RunSummary
from agentflow.report import build_report
from agentflow.report.curves import overlay_page
from agentflow.report.text import human_duration, usd
from agentflow.store import Store
from agentflow.sweep import is_sweep
from agentflow.textsafe import one_line
from agentflow.workflow import load_workflow

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


@command("history")
def history_command(
    workflow: Annotated[
        str | None,
        typer.Argument(
            help="A workflow's name, or its file, or a search's (or sweep's) id: its "
            "trials; all workflows when omitted.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", help="Show the latest N runs (0: all).", min=0)
    ] = 20,
    as_json: JsonOption = False,
) -> None:
    """Show past runs (of one workflow), oldest first, as the run history recorded them
    when each run finished or was stopped."""
    home = Store().home
    if workflow is not None and is_sweep(home, workflow):
        trials_history(workflow, as_json)  # a search's (or sweep's) runs
        return
    name = _workflow_name(workflow)
    found = history.runs(home, name, limit or None)
    if as_json:
        _print_json([r.model_dump(mode="json") for r in found])
        return
    if not found:
        which = f" of workflow {name}" if name else ""
        console.print(f"no runs{which} in the history ({history.db_path(home)})")
        return
    tokens = any(r.tokens_used for r in found)
    cost = any(_cost(r) for r in found)
    table = _table(
        "run",
        *([] if name else ["workflow"]),
        "status",
        "started",
        "time",
        "steps",
        "tries",
        *(["tokens"] if tokens else []),
        *(["cost"] if cost else []),
        right={"time", "steps", "tries", "tokens", "cost"},
    )
    table.add_column("inputs", overflow="fold", min_width=10)
    for r in found:
        table.add_row(
            r.run_id,
            *([] if name else [r.workflow]),
            _status(r.status),
            f"{r.created_at.astimezone():%Y-%m-%d %H:%M}",
            human_duration(r.duration_s),
            f"{sum(s.status == 'succeeded' for s in r.steps)}/{len(r.steps)}",
            str(r.attempts),
            *([str(r.tokens_used)] if tokens else []),
            *([_cost(r)] if cost else []),
            Text(one_line(" ".join(f"{k}={v}" for k, v in r.inputs.items()))),
        )
    console.print(table)


@command()
def compare(
    run_a: Annotated[str, typer.Argument(help="A run (an id, or a prefix of one).")],
    run_b: Annotated[str, typer.Argument(help="Another run.")],
    more: Annotated[
        list[str] | None,
        typer.Argument(
            help="More runs, for --html (their curves overlaid too).", show_default=False
        ),
    ] = None,
    as_json: JsonOption = False,
    html: Annotated[
        Path | None,
        typer.Option("--html", help="Also write the runs' metric curves, overlaid, to this file."),
    ] = None,
) -> None:
    """Show two runs side by side: inputs, steps (status, tries, time), outputs and
    metrics, with the change from the first to the second. ``--html FILE`` draws the
    runs' ``expect.metrics`` curves on shared charts (a colour per run; more runs may be
    given)."""
    if more and html is None:
        raise UsageError("compare takes two runs; more only with --html FILE (their curves)")
    if html is not None:
        _write_curves(html, [run_a, run_b, *(more or [])])
        if more:
            return
    a, b = _summary(run_a), _summary(run_b)
    result = history.compare(a, b)
    if as_json:
        _print_json(result.model_dump(mode="json"))
        return
    _print_comparison(result)


def _write_curves(path: Path, run_ids: list[str]) -> None:
    store = Store()
    runs = []
    for run_id in run_ids:
        run = store.open(run_id)
        runs.append((run.run_id, build_report(run, run.read_state()).steps))
    try:
        path.write_text(overlay_page(runs), encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None
    # On stderr: stdout stays the comparison (and --json stays JSON).
    print(f"curves of {len(runs)} runs: {path}", file=sys.stderr)


def _workflow_name(workflow: str | None) -> str | None:
    """A workflow's name as given, or read from the workflow file it names."""
    if workflow is None:
        return None
    path = Path(workflow)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return load_workflow(path).workflow.name
    return workflow


def _summary(run_id: str) -> RunSummary:
    """A run from the history; one it has not recorded (running, or from before the
    history) from its run directory."""
    store = Store()
    found = history.get(store.home, run_id)
    if found is not None:
        return found
    run = store.open(run_id)  # UsageError naming the runs there are, when there is none
    state = run.read_state()
    return history.summarize(run, state, build_report(run, state))


def _cost(r: RunSummary) -> str:
    """The model's estimated cost for the run (``$0.04``); '' when it made no call or the
    run was recorded before costs were kept."""
    if r.usage is None or not (r.usage.calls or r.usage.cost_usd):
        return ""
    return usd(r.usage.cost_usd, short=True)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _table(*columns: str, title: str | None = None, right: Set[str] = frozenset()) -> Table:
    """A table without borders, like ``status``'s (colours only on a terminal); the
    columns named in ``right`` (numbers) are aligned right."""
    table = Table(box=None, pad_edge=False, show_edge=False, title=title, title_justify="left")
    for col in columns:
        table.add_column(col, no_wrap=True, justify="right" if col in right else "left")
    return table


def _status(status: str | None) -> Text:
    return Text(status or "—", style=STATUS_STYLE.get(status or "", "yellow"))


def _print_comparison(c: Comparison) -> None:
    a, b = c.a, c.b
    head = _table("", "a", "b")
    head.add_row("run", a.run_id, b.run_id)
    if a.workflow == b.workflow:
        file_note = "same file" if c.same_workflow_file else "the file differs"
        head.add_row("workflow", a.workflow, f"{b.workflow} ({file_note})")
    else:
        head.add_row("workflow", a.workflow, b.workflow)
    head.add_row("status", _status(a.status), _status(b.status))
    head.add_row(
        "started",
        f"{a.created_at.astimezone():%Y-%m-%d %H:%M}",
        f"{b.created_at.astimezone():%Y-%m-%d %H:%M}",
    )
    diff = None if a.duration_s is None or b.duration_s is None else b.duration_s - a.duration_s
    pct = diff / a.duration_s * 100 if diff is not None and a.duration_s else None
    change = _change(diff, pct, seconds=True)
    head.add_row(
        "time",
        human_duration(a.duration_s),
        " ".join(x for x in (human_duration(b.duration_s), change) if x),
    )
    if a.tokens_used or b.tokens_used:
        head.add_row("tokens", str(a.tokens_used), str(b.tokens_used))
    if _cost(a) or _cost(b):
        head.add_row("cost", _cost(a) or "—", _cost(b) or "—")
    console.print(head)
    _values_table("inputs", "input", c.inputs)
    steps = _table(
        "step", "a", "tries", "time", "b", "tries", "time", "change",
        title="\nsteps", right={"tries", "time"},
    )  # fmt: skip
    for s in c.steps:
        steps.add_row(
            s.id,
            _status(s.a_status),
            "" if s.a_attempts is None else str(s.a_attempts),
            human_duration(s.a_time_s),
            _status(s.b_status),
            "" if s.b_attempts is None else str(s.b_attempts),
            human_duration(s.b_time_s),
            _change(s.change, s.change_pct, seconds=True),
        )
    console.print(steps)
    _values_table("outputs", "output", c.outputs)
    _values_table("metrics", "metric", c.metrics)


def _values_table(title: str, what: str, rows: Sequence[Row]) -> None:
    if not rows:
        return
    table = _table(what, "a", "b", "change", title=f"\n{title}")
    for r in rows:
        change = _change(r.change, r.change_pct) or ("" if r.same else "differs")
        table.add_row(r.name, _text(r.a), _text(r.b), change)
    console.print(table)


def _text(value: Any) -> Text:
    """A value as a table cell: printable, its first line, never read as markup."""
    if value is None:
        return Text("—")
    if isinstance(value, float):
        return Text(f"{value:g}")
    return Text(one_line(str(value)))


def _change(diff: float | None, pct: float | None, *, seconds: bool = False) -> str:
    """``+1.5s (+25%)``, ``-0.2 (-12%)``, ``-0.002 (-0.2%)``, ``+0 (+0%)``; '' when
    unknown."""
    if diff is None:
        return ""
    sign = "-" if diff < 0 else "+"
    amount = human_duration(abs(diff)) if seconds else f"{abs(diff):g}"
    return f"{sign}{amount}" + (f" ({percent(pct)})" if pct is not None else "")


def percent(pct: float) -> str:
    """A relative change with two significant digits below 10% (``-0.2%``, ``+1.5%``,
    ``+12%``): a small change never shows as ``-0%``; one too small to write, ``<0.001%``."""
    size = abs(pct)
    if size == 0:
        return "+0%"
    if size < 0.001:
        return "<0.001%"
    sign = "-" if pct < 0 else "+"
    if size >= 9.95:  # rounds to 10 or more: whole percents
        return f"{sign}{size:.0f}%"
    return f"{sign}{size:.2g}%"
