"""``agentflow init``: a starter workflow and its runbook, ready to validate and run."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from agentflow.cli.app import command, console
from agentflow.errors import UsageError

STARTER_FILES = ("workflow.yaml", "runbook.md")


@command()
def init(
    directory: Annotated[
        Path, typer.Argument(help="Where to write the files (made if missing).")
    ] = Path("."),
) -> None:
    """Write a starter workflow (workflow.yaml) and its runbook (runbook.md) to edit."""
    taken = [directory / name for name in STARTER_FILES if (directory / name).exists()]
    if taken:
        raise UsageError(
            f"{taken[0]} already exists: choose an empty directory (`agentflow init DIR`), "
            "agentflow never overwrites your files"
        )
    directory.mkdir(parents=True, exist_ok=True)
    starter = resources.files("agentflow") / "starter"
    for name in STARTER_FILES:
        (directory / name).write_text(starter.joinpath(name).read_text(encoding="utf-8"))
    wf = directory / "workflow.yaml"
    console.print(
        f"wrote {wf} and {directory / 'runbook.md'}\n"
        f"  check it:  agentflow validate {wf}\n"
        f"  see it:    agentflow plan {wf}\n"
        f"  run it:    agentflow run {wf}\n"
        "Then replace each step's `run:` with your own commands (docs/workflow.md)."
    )
