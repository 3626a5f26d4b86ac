"""Commands that read a workflow without running it: validate, schema, plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from agentflow.cli.app import command, console
from agentflow.plan import Plan
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
    tokens = sum(getattr(chosen, "calls", []))
    if tokens:
        console.print(f"the model wrote the [magenta]✎[/] commands ({tokens} tokens)")
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


def print_plan(the_plan: Plan) -> None:
    table = Table(box=None, pad_edge=False, show_edge=False, title_justify="left")
    table.add_column("#", justify="right", style="dim")
    table.add_column("step", style="bold", no_wrap=True)
    table.add_column("", no_wrap=True)
    table.add_column("needs", style="dim")
    table.add_column("expect", justify="right")
    table.add_column("command", overflow="fold")
    for i, s in enumerate(the_plan.steps, 1):
        table.add_row(
            str(i),
            s.id,
            "[magenta]✎[/]" if s.source == "planner" else "",
            ", ".join(s.needs),
            format_duration(s.duration) if s.duration else "",
            # A command the model wrote may hold control characters: shown, not obeyed.
            f"[magenta]{escape(revealed(s.run.strip()))}[/]"
            if s.source == "planner"
            else escape(revealed(s.run.strip())),
        )
    inputs = escape(revealed(", ".join(f"{k}={v}" for k, v in the_plan.inputs.items())))
    console.print(
        f"[bold]{the_plan.workflow}[/]: {len(the_plan.steps)} steps, planner {the_plan.planner}"
        + (f", inputs {inputs}" if inputs else "")
    )
    console.print(table)
