"""The person at the terminal: what agentflow asks them while a run goes (approving a
command the model changed, what Ctrl-C means), with the live view paused meanwhile.
Where nobody can answer (CI, a pipe), there is no asker and the runner decides alone."""

from __future__ import annotations

import contextlib
import difflib
import signal
import sys
from collections.abc import Callable, Iterator

from rich.prompt import Confirm, Prompt
from rich.syntax import Syntax

from agentflow.cli.app import console, plain_output
from agentflow.display import LiveTable
from agentflow.orchestrator import Approve
from agentflow.runner import InterruptChoice
from agentflow.textsafe import revealed


def someone_answers(ci: bool) -> bool:
    return not plain_output(ci) and sys.stdin.isatty()


@contextlib.contextmanager
def _asking(lives: list[LiveTable]) -> Iterator[None]:
    """The live view paused, and Ctrl-C back to raising KeyboardInterrupt (the runner's
    handler only sets a flag, which would leave a prompt waiting)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with lives[0].paused() if lives else contextlib.nullcontext():
            yield
    finally:
        signal.signal(signal.SIGINT, old)


def approver(yes: bool, ci: bool, lives: list[LiveTable]) -> Approve | None:
    """--yes: approve; a terminal: ask; otherwise (CI, a pipe) nobody can: escalate."""
    if yes:
        return lambda step, old, new: True
    if not someone_answers(ci):
        return None

    def ask(step: str, old: str, new: str) -> bool:
        with _asking(lives):
            console.print(f"\n[bold]The model wants to change the command of step {step}:[/]")
            diff = difflib.unified_diff(
                old.splitlines(True), new.splitlines(True), "planned", "proposed"
            )
            # Control characters shown, not stripped: the person approves what will run.
            console.print(Syntax(revealed("".join(diff)), "diff"))
            try:
                return bool(Confirm.ask("Run the changed command?", default=False))
            except (KeyboardInterrupt, EOFError):
                return False

    return ask


CHOICES: dict[str, InterruptChoice] = {"s": "stop", "d": "detach", "c": "continue"}


def interrupt_asker(ci: bool, lives: list[LiveTable]) -> Callable[[], InterruptChoice] | None:
    """Ctrl-C on a terminal asks: stop the run, detach (it goes on in tmux), or continue
    watching; a second Ctrl-C, or end of input, detaches. Without a terminal: detach."""
    if not someone_answers(ci):
        return None

    def ask() -> InterruptChoice:
        with _asking(lives):
            console.print(
                "\n[bold]Ctrl-C[/]  s: stop the run   d: detach (it goes on in tmux)   "
                "c: continue watching"
            )
            try:
                answer = Prompt.ask("What now", choices=list(CHOICES), default="d")
            except (KeyboardInterrupt, EOFError):
                console.print()
                return "detach"
        return CHOICES[answer]

    return ask
