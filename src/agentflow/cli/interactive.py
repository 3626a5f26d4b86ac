"""The person at the terminal: what agentflow asks them before and while a run goes
(approving the commands the model wrote or changed, what Ctrl-C means), with the live view
paused meanwhile. Where nobody can answer (CI, a pipe), there is no asker: the runner
decides alone, and a plan the model writes is refused unless ``--yes``."""

from __future__ import annotations

import contextlib
import difflib
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.markup import escape
from rich.prompt import Confirm, Prompt
from rich.syntax import Syntax

from agentflow.cli.app import console, plain_output
from agentflow.cli.commands_define import print_plan, print_planning, print_sandbox
from agentflow.display import LiveTable
from agentflow.errors import EXIT_BLOCKED, AgentflowError, UsageError
from agentflow.orchestrator import Approve
from agentflow.plan import Plan
from agentflow.planner import Planner
from agentflow.reload import Reload
from agentflow.runner import InterruptChoice
from agentflow.state import RunState
from agentflow.textsafe import revealed
from agentflow.workflow.load import WorkflowFile
from agentflow.workflow.model import Scalar


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
            diff = difflib.unified_diff(_lines(old), _lines(new), "planned", "proposed")
            # Control characters shown, not stripped, and every line whole (wrapped, not
            # cut at the screen's edge): the person approves what will run.
            console.print(Syntax(revealed("".join(diff)), "diff", word_wrap=True))
            try:
                return bool(Confirm.ask("Run the changed command?", default=False))
            except (KeyboardInterrupt, EOFError):
                return False

    return ask


def _lines(text: str) -> list[str]:
    """Every line with its newline: a last line without one must not run into the next."""
    return (text if text.endswith("\n") else text + "\n").splitlines(keepends=True)


class PlanRefused(AgentflowError):
    """The person did not approve the commands the model wrote: nothing ran (exit 3)."""

    exit_code = EXIT_BLOCKED


def approved_planning(planner: Planner, file: Path, yes: bool, ci: bool) -> Planner:
    """``planner``, whose plan runs only once approved when a model writes it: ``--yes``
    approves; on a terminal the plan is shown and the person asked; where nobody can be
    asked (CI, a pipe) it is refused here, before the model is asked anything."""
    if planner.name == "static" or yes:
        return planner
    if not someone_answers(ci):
        raise UsageError(
            "the model writes this run's commands and nobody is here to approve them: pass "
            f"--yes, or save a plan with `agentflow plan {file} -o plan.json`, review it, and "
            "run it with --plan"
        )
    return _Approving(planner)


class _Approving:
    """A planner whose plan is shown (like ``agentflow plan``) and approved at the terminal."""

    def __init__(self, planner: Planner) -> None:
        self.planner = planner
        self.name = planner.name

    def plan(self, wf: WorkflowFile, inputs: dict[str, Scalar]) -> Plan:
        plan = self.planner.plan(wf, inputs)
        if not any(s.source == "planner" for s in plan.steps):
            return plan  # the model changed nothing: every command is the file's
        print_plan(plan)
        print_planning(plan)
        print_sandbox(wf.workflow)
        try:
            yes = bool(Confirm.ask("Run the commands the model wrote?", default=False))
        except (KeyboardInterrupt, EOFError):
            yes = False
        if not yes:
            raise PlanRefused(
                "the model's plan was not approved: nothing ran (`agentflow plan "
                f"{wf.path.name} -o plan.json` saves one to review, edit and run with --plan)"
            )
        return plan


def approved_reload(change: Reload, state: RunState, yes: bool, ci: bool) -> bool:
    """The reload's diff shown; ``--yes`` approves, a terminal asks, and where nobody can
    be asked (CI, a pipe) it is refused: a changed command must not run unseen."""
    print_reload(change, state)
    if yes:
        return True
    if not someone_answers(ci):
        raise UsageError(
            f"run {state.run_id}: nobody is here to approve the reloaded workflow: pass --yes"
        )
    try:
        return bool(Confirm.ask("Reload the workflow and go on?", default=False))
    except (KeyboardInterrupt, EOFError):
        return False


def print_reload(change: Reload, state: RunState) -> None:
    """Per step, what changed (the command as a diff), and what runs again."""
    console.print(f"[bold]{escape(change.wf.path.name)} changed since run {state.run_id} began:[/]")
    for step_id, what in change.changes.items():
        status = state.steps[step_id].status
        console.print(f"  ~ {step_id} ({status}): {', '.join(what)}")
        if "command" in what:
            diff = difflib.unified_diff(
                _lines(change.old_commands[step_id]), _lines(change.plan.step(step_id).run),
                "run's copy", "edited",
            )  # fmt: skip
            console.print(Syntax(revealed("".join(diff)), "diff", word_wrap=True))
    for step_id in change.added:
        console.print(f"  + {step_id} (new step)")
    if not change.changes and not change.added:
        console.print("  no step's definition changed")
    again = ", ".join(change.rerun) or "none"
    console.print(f"succeeded steps that run again: {again}")


CHOICES: dict[str, InterruptChoice] = {"s": "stop", "d": "detach", "c": "continue"}


def interrupt_asker(
    ci: bool, lives: list[LiveTable], *, unattended: bool = False
) -> Callable[[], InterruptChoice] | None:
    """Ctrl-C on a terminal asks: stop the run, detach (it goes on in tmux), or continue
    watching; a second Ctrl-C, or end of input, detaches. Without a terminal: detach.
    ``unattended``: a detached run's own orchestrator (Ctrl-C from `attach --write`), where
    detaching would leave the run with nobody driving it: stop or continue."""
    if not someone_answers(ci):
        return None
    if unattended:
        question = "s: stop the run   c: continue (Ctrl-b d leaves this view)"
        choices, default = ["s", "c"], "c"
    else:
        question = "s: stop the run   d: detach (it goes on in tmux)   c: continue watching"
        choices, default = list(CHOICES), "d"

    def ask() -> InterruptChoice:
        with _asking(lives):
            console.print(f"\n[bold]Ctrl-C[/]  {question}")
            try:
                answer = Prompt.ask("What now", choices=choices, default=default)
            except (KeyboardInterrupt, EOFError):
                console.print()
                return "detach" if not unattended else "continue"
            if answer == "c":  # back to the table as it was: the question goes
                _erase([f"Ctrl-C  {question}", f"What now [{'/'.join(choices)}] ({default}): c"])
        return CHOICES[answer]

    return ask


def _erase(lines: list[str]) -> None:
    """Take back what was just printed on the terminal: ``lines`` (each as wide as it
    wrapped) and the blank line above them."""
    if not console.is_terminal:
        return
    width = max(1, console.width)
    rows = 1 + sum(max(1, -(-len(line) // width)) for line in lines)
    console.file.write(f"\x1b[{rows}F\x1b[J")
    console.file.flush()
