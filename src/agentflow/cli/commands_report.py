"""``agentflow report``: a run's report, made again from its checkpoint and events (so
it works for a run that is still going, or whose orchestrator died)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from agentflow import ondisk
from agentflow.cli.app import command, console
from agentflow.report import build_report, html_page, markdown
from agentflow.store import Store


@command()
def report(
    run_id: Annotated[str, typer.Argument(help="The run.")],
    html: Annotated[
        bool,
        typer.Option("--html", help="Write one self-contained HTML page and print its path."),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write the report here (default with --html: report.html in the run's folder).",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Print a run's report (Markdown), or write it as an HTML page."""
    run = Store().open(run_id)
    # A run nobody drives: its steps as their own files show them (exit codes since).
    made = build_report(run, ondisk.read(run, run.read_state()).state)
    text = html_page(made) if html else markdown(made)
    path = output or (run.path / "report.html" if html else None)
    if path is None:
        sys.stdout.write(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    console.print(str(path.resolve()), soft_wrap=True)
