"""The ``agentflow`` command line: parse, call, print.

This package is the only place that turns an ``AgentflowError`` into a red one-line message
and an exit code (``app.command``); the commands live in one module per group.
"""

from __future__ import annotations

from agentflow.cli import (
    commands_define,
    commands_history,
    commands_init,
    commands_inspect,
    commands_learn,
    commands_manage,
    commands_report,
    commands_resume,
    commands_run,
    searching,
)
from agentflow.cli.app import app

__all__ = [
    "app",
    "commands_define",
    "commands_history",
    "commands_init",
    "commands_inspect",
    "commands_learn",
    "commands_manage",
    "commands_report",
    "commands_resume",
    "commands_run",
    "main",
    "searching",
]


def main() -> None:
    """The console script."""
    app()
