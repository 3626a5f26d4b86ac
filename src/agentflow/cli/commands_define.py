"""Commands that read a workflow without running it: validate, schema, plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from agentflow.cli.app import command, console
from agentflow.plan import Plan, PlannedStep
from agentflow.planner import make_plan, planner_for
from agentflow.planner.inputs import parse_set_options
from agentflow.sandbox import describe
from agentflow.textsafe import revealed
from agentflow.workflow import Workflow, format_duration, load_workflow

PlannerOption = Annotated[
    str | None,
    typer.Option("--planner", help="static, or anthropic (the model writes task: steps)."),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override an input: --set name=value (repeatable).", metavar="K=V"),
]


@command()
def validate(file: Annotated[Path, typer.Argument(help="The workflow file.")]) -> None:
    """Check a workflow file; no side effects. Exit 2 lists every problem with its line."""
    wf = load_workflow(file)
    n = len(wf.workflow.steps)
    steps = f"{n} step{'s' * (n != 1)}"
    console.print(f"[green]✔[/] {file}: valid workflow '{wf.workflow.name}', {steps}")


@command()
def schema() -> None:
    """Print the JSON Schema of the workflow file format."""
    print(json.dumps(Workflow.model_json_schema(by_alias=True), indent=2))


@command()
def plan(
    file: Annotated[Path, typer.Argument(help="The workflow file.")],
    set_: SetOption = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Save the plan as JSON here.")
    ] = None,
    planner: PlannerOption = None,
) -> None:
    """Show the plan: the steps in run order with their commands (and save it with -o)."""
    wf = load_workflow(file)
    chosen = planner_for(wf, planner)
    the_plan = make_plan(wf, parse_set_options(set_ or []), chosen)
    print_plan(the_plan)
    print_planning(the_plan)
    print_sandbox(wf.workflow)
    if output is not None:
        output.write_text(the_plan.model_dump_json(indent=2) + "\n", encoding="utf-8")
        console.print(f"plan saved to {output}: run it with `agentflow run {file} --plan {output}`")


def print_sandbox(workflow: Workflow) -> None:
    config = workflow.sandbox
    if config.backend == "local" or not (config.image or config.build or config.slurm):
        console.print("sandbox: local (steps run on this machine, in the workflow's folder)")
        return
    facts, relaxed = describe(config)
    console.print(f"sandbox: {config.backend} — " + "; ".join(facts))
    for item in relaxed:
        console.print(f"  [yellow]relaxed:[/] {item}")


def print_planning(the_plan: Plan) -> None:
    """What the model did to make the plan: what it cost, and what it looked at."""
    usage = the_plan.usage
    if usage is None or not usage.calls:
        return
    added = any(s.expands for s in the_plan.steps)
    what = "the [magenta]✎[/] commands" + (" and the [magenta]+[/] steps" if added else "")
    cost = f", about ${usage.cost_usd:.2f}" if usage.cost_usd else ""
    calls = f"{usage.calls} request{'s' * (usage.calls != 1)}"
    console.print(f"the model wrote {what} ({usage.tokens} tokens in {calls}{cost})")
    looked = [t for t in the_plan.transcript if t.tool != "text"]
    if looked:
        shown = "; ".join(f"{t.tool} {json.dumps(t.input, ensure_ascii=False)}" for t in looked)
        console.print(f"  it looked: {escape(revealed(shown[:600]))}", style="dim")


def _checks(step: PlannedStep) -> str:
    """The checks the model wrote for a step (their commands run too), one per line."""
    lines = []
    for key in ("ready", "success"):
        value = getattr(step, key)
        if value is not None:
            dumped = value.model_dump(mode="json", exclude_defaults=True, by_alias=True)
            lines.append(f"\n{key}: {json.dumps(dumped, ensure_ascii=False)}")
    return "".join(lines)


def print_plan(the_plan: Plan) -> None:
    table = Table(box=None, pad_edge=False, show_edge=False, title_justify="left")
    table.add_column("#", justify="right", style="dim")
    table.add_column("step", style="bold", no_wrap=True)
    table.add_column("", no_wrap=True)
    table.add_column("needs", style="dim")
    table.add_column("expect", justify="right")
    table.add_column("command", overflow="fold")
    for i, s in enumerate(the_plan.steps, 1):
        mark = "[magenta]+[/]" if s.expands else "[magenta]✎[/]" if s.source == "planner" else ""
        # A command the model wrote may hold control characters: shown, not obeyed.
        text = escape(revealed(s.run.strip() + _checks(s)))
        table.add_row(
            str(i),
            s.id,
            mark,
            ", ".join(s.needs),
            format_duration(s.duration) if s.duration else "",
            f"[magenta]{text}[/]" if s.source == "planner" else text,
        )
    inputs = escape(revealed(", ".join(f"{k}={v}" for k, v in the_plan.inputs.items())))
    console.print(
        f"[bold]{the_plan.workflow}[/]: {len(the_plan.steps)} steps, planner {the_plan.planner}"
        + (f", inputs {inputs}" if inputs else "")
    )
    console.print(table)
