"""``agentflow learn``: what a run recovered from, as a runbook entry and a ``recover:``
rule (a patch to review, or ``--apply`` it)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from agentflow.cli.app import command, console, err_console
from agentflow.errors import UsageError
from agentflow.learn import propose
from agentflow.store import Store
from agentflow.textsafe import printable


def _write(text: str) -> None:
    """The proposal to stdout: as it is to a pipe or a file (a patch to apply), printable
    on a terminal (it quotes a step's log and the model's diagnosis)."""
    sys.stdout.write(printable(text) if sys.stdout.isatty() else text)


def _shown(path: Path) -> str:
    """``path`` relative to the current folder when it is under it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@command()
def learn(
    run_id: Annotated[str, typer.Argument(help="A run that recovered from a failure.")],
    apply: Annotated[
        bool, typer.Option("--apply", help="Write the changes to the workflow and its runbook.")
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write the patch to this file (for git apply or patch -p1).",
            dir_okay=False,
        ),
    ] = None,
    workflow: Annotated[
        Path | None,
        typer.Option(
            "--workflow",
            help="The workflow file to change (default: the one the run was started from).",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Propose a runbook entry and a recover: rule for each failure a run recovered from
    (by a rule or the model's diagnosis); print them as a patch."""
    if apply and output is not None:
        raise UsageError("give --apply or -o FILE, not both")
    proposal = propose(Store(), run_id, workflow)
    for warning in proposal.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    if not proposal.changes:
        _write(proposal.header())
        console.print(
            f"nothing to propose: the workflow and its runbook have all that run "
            f"{proposal.run_id} recovered from"
        )
        return
    if apply:
        proposal.apply()
        for ch in proposal.changes:
            new = " (new)" if ch.old is None else ""
            console.print(f"wrote {escape(_shown(ch.path))}{new}", soft_wrap=True)
            for what in ch.what:
                console.print(f"  {escape(what)}", soft_wrap=True)
        if any(ch.path == proposal.workflow for ch in proposal.changes):
            console.print(f"check it: agentflow validate {escape(_shown(proposal.workflow))}")
        return
    text = proposal.header() + proposal.patch()
    if output is None:
        _write(text)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    where = os.path.relpath(output.resolve(), proposal.root)
    console.print(
        f"wrote the patch to {escape(_shown(output.resolve()))}; apply it in "
        f"{escape(str(proposal.root))} with `git apply {escape(where)}` or "
        f"`patch -p1 < {escape(where)}`",
        soft_wrap=True,
    )
