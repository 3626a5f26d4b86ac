"""``resume``, ``resume --reload`` and ``rerun``: driving an existing run again, from where
it was, with an edited workflow file, or with chosen steps run again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from agentflow import reload
from agentflow.cli.app import command, console, err_console
from agentflow.cli.commands_run import (
    CiOption,
    JunitOption,
    KeepOption,
    NoCacheOption,
    NoDiagnoseOption,
    NotifyOption,
    YesOption,
    drive_again,
    run_detached,
    without_cache,
)
from agentflow.cli.interactive import approved_reload
from agentflow.cli.sweeping import resume_sweep
from agentflow.display import Observers
from agentflow.errors import EXIT_OK, StateError, UsageError
from agentflow.orchestrator import reopen
from agentflow.state import RunState, reset_for_rerun, with_dependents
from agentflow.store import RunDir, Store
from agentflow.sweep import SweepOptions, is_sweep

DetachOption = Annotated[
    bool,
    typer.Option("--detach", "-d", help="Go on in the background: the orchestrator runs in tmux."),
]


@command("resume")
def resume_cmd(
    run_id: Annotated[str, typer.Argument(help="The run to continue.")],
    ci: CiOption = False,
    junit: JunitOption = None,
    keep_sandbox: KeepOption = False,
    yes: YesOption = False,
    no_diagnose: NoDiagnoseOption = False,
    reload_: Annotated[
        bool,
        typer.Option(
            "--reload",
            help="Take the edited workflow file into the run: changed steps (and what "
            "needs them) run again, unchanged succeeded ones are kept.",
        ),
    ] = False,
    no_cache: NoCacheOption = False,
    notify: NotifyOption = None,
    detach: DetachOption = False,
) -> None:
    """Continue a run: skip what succeeded, re-attach to what runs, redo the rest. Or a
    sweep (its exact id): start its runs not started, follow the others."""
    if is_sweep(Store().home, run_id):  # before prefix matching: its runs' ids start with it
        if reload_ or junit is not None:
            raise UsageError("--reload and --junit apply to a run, not to a sweep")
        flags = SweepOptions(
            keep_sandbox=keep_sandbox, yes=yes, no_diagnose=no_diagnose, no_cache=no_cache
        )
        resume_sweep(run_id, ci=ci, flags=flags)
        return
    run_dir = Store().open(run_id)
    try:
        state = run_dir.read_state()
    except StateError:
        # A damaged checkpoint: rebuilt (from the previous copy and the events) under the
        # run's lock, and said so; a run past saving stays an error.
        with run_dir.lock():
            note = run_dir.recover_state()
        if note:
            err_console.print(f"[yellow]warning:[/] {note}")
        state = run_dir.read_state()
    before = reloading(run_dir, state, yes=yes, ci=ci) if reload_ else None
    if before is None and reload.file_changed(run_dir, state):
        err_console.print(
            f"note: {state.workflow_file} changed since run {state.run_id} began; this resume "
            f"runs the run's frozen copy (`agentflow resume {state.run_id} --reload` takes "
            "the edits)"
        )
    if before is None and state.status == "succeeded":
        run_dir.settle()  # its orchestrator may have been killed before its last snapshot
        console.print(f"run {state.run_id} already succeeded: nothing to do")
        raise typer.Exit(EXIT_OK)
    if detach:
        with run_dir.lock():  # refused while another orchestrator drives it
            if before is not None:
                before()
        # A new orchestrator in the run's tmux session (in its first window, where the old
        # one was): it re-attaches to the steps that went on and drives the run to its end.
        prepared = reopen(Store(), run_dir.run_id, lambda r, p, h: Observers([]), notify=notify)
        without_cache(prepared, no_cache)
        run_detached(
            prepared, junit=junit, keep_sandbox=keep_sandbox, yes=yes, no_diagnose=no_diagnose
        )
        return
    drive_again(
        run_dir, ci=ci, junit=junit, keep_sandbox=keep_sandbox, yes=yes, no_diagnose=no_diagnose,
        before=before, no_cache=no_cache, notify=notify,
    )  # fmt: skip


def reloading(
    run_dir: RunDir, state: RunState, *, yes: bool, ci: bool
) -> Callable[[], None] | None:
    """The edited workflow checked, compared, shown and approved; what to do under the
    run's lock (None: the file did not change). Nothing is written before that."""
    if not reload.file_changed(run_dir, state):
        err_console.print(f"{state.workflow_file} has not changed: resuming as it was")
        return None
    plan = reload.prepare(run_dir, state)
    if not approved_reload(plan, state, yes, ci):
        raise UsageError(f"run {state.run_id}: the reload was not approved; nothing changed")

    def write() -> None:
        # Again under the lock: the run may have moved since it was read.
        if run_dir.read_state() != state:
            raise UsageError(f"run {state.run_id} changed meanwhile: run the reload again")
        reload.apply(run_dir, plan)

    return write


@command()
def rerun(
    run_id: Annotated[str, typer.Argument(help="The run.")],
    steps: Annotated[list[str], typer.Argument(help="The steps to run again.")],
    ci: CiOption = False,
    junit: JunitOption = None,
    keep_sandbox: KeepOption = False,
    yes: YesOption = False,
    no_diagnose: NoDiagnoseOption = False,
    no_cache: NoCacheOption = False,
    notify: NotifyOption = None,
    detach: DetachOption = False,
) -> None:
    """Run steps again, with everything that needs them, for real (never from the cache);
    then go on to the run's end as resume does. Earlier attempts stay in the run."""
    run_dir = Store().open(run_id)
    state = run_dir.read_state()
    unknown = [s for s in steps if s not in state.steps]
    if unknown:
        raise UsageError(
            f"run {run_dir.run_id} has no step {', '.join(unknown)}; its steps: "
            f"{', '.join(state.steps)}"
        )

    def reset() -> None:
        current = run_dir.read_state()
        order = {p.id: p.needs for p in run_dir.read_plan().steps}
        chosen = with_dependents(order, steps)
        busy = [s for s in chosen if current.steps[s].status == "running"]
        if busy:
            raise UsageError(
                f"step {', '.join(busy)} of run {run_dir.run_id} is running: wait for it, or "
                f"`agentflow stop {run_dir.run_id}` first"
            )
        run_dir.write_state(reset_for_rerun(current, chosen, "rerun: asked with agentflow rerun"))
        console.print(f"run {run_dir.run_id}: running again {', '.join(chosen)}")

    if detach:
        with run_dir.lock():
            reset()
        # The detached orchestrator (`drive`) resumes the run, as `run --detach` starts one.
        prepared = reopen(Store(), run_dir.run_id, lambda r, p, h: Observers([]), notify=notify)
        if prepared.runner.state.count("running"):
            raise UsageError(
                f"run {run_dir.run_id} has steps running with nobody driving them: "
                f"`agentflow resume {run_dir.run_id}` first (or rerun without --detach)"
            )
        # Nothing runs in the old session (its windows are ended attempts, their logs are
        # in the run's folders): a new one, whose first window is the new orchestrator.
        prepared.runner.s.tmux.kill_session(run_dir.run_id)
        without_cache(prepared, no_cache)
        run_detached(
            prepared, junit=junit, keep_sandbox=keep_sandbox, yes=yes, no_diagnose=no_diagnose
        )
        return
    drive_again(
        run_dir, ci=ci, junit=junit, keep_sandbox=keep_sandbox, yes=yes, no_diagnose=no_diagnose,
        before=reset, no_cache=no_cache, notify=notify,
    )  # fmt: skip
