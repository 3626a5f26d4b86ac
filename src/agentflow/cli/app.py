"""The Typer application and what every command shares."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from agentflow.errors import AgentflowError, WorkflowError
from agentflow.settings import settings
from agentflow.textsafe import printable

app = typer.Typer(
    name="agentflow",
    help="Run long, multi-step engineering workflows from one YAML file, in tmux sessions "
    "you can attach to, with a checkpoint that survives anything.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False)


def _print_version(asked: bool) -> None:
    if asked:
        # The installed distribution's version: what a bug report needs.
        try:
            version = metadata.version("agentflow")
        except metadata.PackageNotFoundError:  # run from a source tree, not installed
            version = "unknown (not installed)"
        console.print(f"agentflow {version}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False,
        "--version",
        help="Print agentflow's version and exit.",
        callback=_print_version,
        is_eager=True,
    ),
) -> None:
    """Run long, multi-step engineering workflows from one YAML file, in tmux sessions
    you can attach to, with a checkpoint that survives anything."""


F = TypeVar("F", bound=Callable[..., Any])


def command(name: str | None = None, *, hidden: bool = False) -> Callable[[F], F]:
    """Register a command whose AgentflowError becomes a red one-line message and an exit
    code (every problem on its own line for an invalid workflow), never a traceback."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except AgentflowError as e:
                lines = e.problems if isinstance(e, WorkflowError) else [str(e)]
                for line in lines:
                    shown = escape(printable(str(line)))  # it may quote what a step wrote
                    err_console.print(f"[bold red]error:[/] {shown}", soft_wrap=True)
                raise typer.Exit(e.exit_code) from None
            except OSError as e:
                # A full disk or a permission problem: say what and where, no traceback.
                where = f"{e.filename}: " if e.filename else ""
                message = escape(where + (e.strerror or str(e)))
                err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
                raise typer.Exit(1) from None

        app.command(name, hidden=hidden)(wrapper)
        return fn

    return decorate


def plain_output(ci: bool) -> bool:
    """Plain lines instead of a live view: asked for, in CI, or not on a terminal."""
    return ci or in_ci() or not sys.stdout.isatty()


def in_ci() -> bool:
    """CI systems set ``CI`` (to ``true``, ``1``, …); ``CI=false`` or ``0`` means no."""
    return settings().ci
