"""Commands that drive runs: run, and drive (a detached run's own orchestrator)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from agentflow.cli.app import command, console, err_console, plain_output
from agentflow.cli.closedpipe import GoesOnWhenClosed, stdout_closed
from agentflow.cli.commands_define import SetOption
from agentflow.cli.interactive import (
    approved_planning,
    approver,
    interrupt_asker,
)
from agentflow.cli.sweeping import detached_argv, run_sweep
from agentflow.display import LiveTable, LogFile, Observers, PlainLines
from agentflow.errors import EXIT_BLOCKED, EXIT_FAILED, EXIT_OK, UsageError
from agentflow.notify import checked_url, finish
from agentflow.orchestrator import (
    ObserverFactory,
    Prepared,
    SandboxChoice,
    new_run,
    reopen,
    resume,
    start_detached,
    take_environment,
)
from agentflow.plan import Plan
from agentflow.planner import check_plan, make_plan, planner_for
from agentflow.planner.inputs import parse_set_options
from agentflow.runner import Observer
from agentflow.settings import settings
from agentflow.state import UNSUCCESSFUL, RunState
from agentflow.store import RunDir, Store
from agentflow.sweep import SweepOptions, parse_matrix_options
from agentflow.textsafe import one_line, printable
from agentflow.viewparts import sandbox_label
from agentflow.workflow import load_workflow

EXIT_INTERRUPTED = 130

CiOption = Annotated[
    bool, typer.Option("--ci", help="Plain lines, one per event, no colours (also when CI is set).")
]
YesOption = Annotated[
    bool,
    typer.Option(
        "--yes", "-y", help="Approve commands the model writes or changes, without asking."
    ),
]
NoDiagnoseOption = Annotated[
    bool,
    typer.Option(
        "--no-diagnose",
        help="Do not send failures to the model: on_failure: diagnose acts as continue.",
    ),
]
KeepOption = Annotated[
    bool, typer.Option("--keep-sandbox", help="Keep the run's container when it ends.")
]
NoCacheOption = Annotated[
    bool,
    typer.Option(
        "--no-cache",
        help="Run every step for real: take nothing from the step cache (results are still "
        "stored). Kept by resume.",
    ),
]


def _notify_url(url: str | None) -> str | None:
    try:
        return checked_url(url)
    except UsageError as e:
        raise typer.BadParameter(str(e)) from None


NotifyOption = Annotated[
    str | None,
    typer.Option(
        "--notify",
        metavar="URL",
        callback=_notify_url,
        help="POST a JSON notification (Slack-compatible) here when the run ends, fails or "
        "waits for a person. Kept by resume and by a detached run.",
    ),
]
JunitOption = Annotated[
    Path | None, typer.Option("--junit", help="Also write the JUnit XML report here.")
]


def _observer_factory(
    ci: bool, unattended: bool = False
) -> tuple[ObserverFactory, list[LiveTable]]:
    """``unattended``: a detached run's own orchestrator, seen through `agentflow attach`
    (read-only: Ctrl-C does nothing there), whose footer says how to leave and stop."""
    lives: list[LiveTable] = []

    def build(run: RunDir, plan: Plan, attach_hint: str) -> Observer:
        log = LogFile(str(run.log_path))
        steps = run.path / "steps"
        if plain_output(ci):
            lines = PlainLines(sys.stdout, github=settings().github_actions, steps_dir=steps)
            return Observers([log, GoesOnWhenClosed(lines, run.run_id)])
        footer = (
            f"leave: Ctrl-b d (in tmux: Ctrl-b Ctrl-b d), the run goes on   "
            f"stop: agentflow stop {run.run_id}"
            if unattended
            else None
        )
        live = LiveTable(console, [s.id for s in plan.steps], attach_hint, steps, footer)
        lives.append(live)
        return Observers([log, GoesOnWhenClosed(live, run.run_id)])

    return build, lives


def _sandbox_log(line: str) -> None:
    """The sandbox's own output (an image build), shown as it comes."""
    err_console.print(printable(line), style="dim", markup=False, highlight=False)


def _drive(prepared: Prepared, lives: list[LiveTable], fn: object) -> RunState:
    for w in prepared.warnings:
        err_console.print(f"[yellow]warning:[/] {w}")
    rid = prepared.run.run_id
    try:
        console.print(f"run [bold cyan]{rid}[/]   watch: {prepared.attach_hint}")
    except BrokenPipeError:
        stdout_closed(rid)
    if lives:
        s = prepared.runner.s
        lives[0].sandbox = sandbox_label(s.sandbox.name, s.workflow.sandbox)
        with lives[0]:  # (a failed notification shows as a line of the live view)
            return _notified(prepared, fn)
    return _notified(prepared, fn)


def _notified(prepared: Prepared, fn: object) -> RunState:
    """Drive the run, then send (or wait for) its notifications, however it ended."""
    try:
        return fn()  # type: ignore[operator,no-any-return]
    finally:
        finish(prepared.notifier, prepared.runner.observer, prepared.runner.state)


def _conclude(state: RunState, run: RunDir) -> None:
    rid = state.run_id
    if state.status == "succeeded":
        console.print(f"[green]✔ run {rid} succeeded[/]   report: {run.path / 'report.md'}")
        raise typer.Exit(EXIT_OK)
    if state.status == "interrupted":
        stopped = state.finished_at is not None
        if stopped:
            console.print(f"[yellow]run {rid} stopped.[/] Resume it with `agentflow resume {rid}`")
        else:
            console.print(
                f"[yellow]detached from run {rid}:[/] its running steps go on in tmux.\n"
                f"  continue: agentflow resume {rid}\n  stop:     agentflow stop {rid}"
            )
        raise typer.Exit(EXIT_INTERRUPTED)
    failed = [k for k, v in state.steps.items() if v.status in UNSUCCESSFUL]
    where = f"; see `agentflow logs {rid} {failed[0]}`" if failed else ""
    if state.status == "blocked":
        for step_id, st in state.steps.items():
            if st.status == "blocked":
                why = escape(one_line(st.message))
                console.print(f"[magenta]step {step_id} is blocked:[/] {why}")
        console.print(f"run {rid} is blocked; when it is sorted out: agentflow resume {rid}")
        raise typer.Exit(EXIT_BLOCKED)
    why = ", ".join(failed) or escape(one_line(state.message))
    console.print(f"[red]✘ run {rid} failed[/] ({why}){where}")
    console.print(f"  report: {run.path / 'report.md'}   resume: agentflow resume {rid}")
    # The fix is often an edit of the workflow file: a plain resume runs the frozen copy.
    name = Path(state.workflow_file).name
    console.print(f"  after editing {name}: agentflow resume {rid} --reload")
    raise typer.Exit(EXIT_FAILED)


@command()
def run(
    file: Annotated[Path, typer.Argument(help="The workflow file.")],
    plan_file: Annotated[
        Path | None, typer.Option("--plan", help="Run this saved plan instead of planning.")
    ] = None,
    set_: SetOption = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="Name the run.")] = None,
    sandbox: Annotated[
        SandboxChoice | None, typer.Option("--sandbox", help="Where steps run.")
    ] = None,
    planner: Annotated[str | None, typer.Option("--planner", help="static or anthropic.")] = None,
    detach: Annotated[
        bool,
        typer.Option(
            "--detach", "-d", help="Run in the background: the orchestrator runs in tmux."
        ),
    ] = False,
    ci: CiOption = False,
    junit: JunitOption = None,
    keep_sandbox: KeepOption = False,
    yes: YesOption = False,
    no_diagnose: NoDiagnoseOption = False,
    no_cache: NoCacheOption = False,
    notify: NotifyOption = None,
    matrix_opts: Annotated[
        list[str] | None,
        typer.Option(
            "--matrix",
            help="A sweep over an input: --matrix k=2,4,8 (repeat for more inputs; "
            "replaces that input's list in the workflow's matrix).",
        ),
    ] = None,
) -> None:
    """Run a workflow. Exit 0 when every step succeeded, 1 when one failed, 3 when blocked.
    A workflow with a matrix (or --matrix) runs one run per combination: a sweep."""
    wf = load_workflow(file)
    matrix = {**(wf.workflow.matrix or {}), **parse_matrix_options(matrix_opts or [])}
    if matrix:
        if detach or plan_file is not None or run_id is not None or junit is not None:
            raise UsageError(
                "a sweep makes one detached run per combination, each with its own "
                "junit.xml: --detach, --plan, --run-id and --junit do not apply"
            )
        options = SweepOptions(
            sandbox=sandbox, planner=planner, keep_sandbox=keep_sandbox, yes=yes,
            no_diagnose=no_diagnose, no_cache=no_cache, notify=notify,
        )  # fmt: skip
        run_sweep(wf, matrix, parse_set_options(set_ or []), options, ci=ci)
        return
    if plan_file is not None:
        if set_:
            raise UsageError("--set has no effect with --plan: a saved plan's inputs are fixed")
        the_plan = _read_plan(plan_file)
        check_plan(the_plan, wf, str(plan_file))
    else:
        chosen = approved_planning(planner_for(wf, planner), file, yes, ci)
        the_plan = make_plan(wf, parse_set_options(set_ or []), chosen)
    saved = plan_file is not None
    if detach:
        run_detached(
            without_cache(new_run(
                Store(), wf, the_plan, lambda r, p, h: Observers([]), run_id=run_id,
                sandbox=sandbox, junit=junit, keep_sandbox=keep_sandbox, diagnose=not no_diagnose,
                planned_here=not saved, notify=notify,
            ), no_cache),
            junit=junit, keep_sandbox=keep_sandbox, yes=yes, no_diagnose=no_diagnose,
        )  # fmt: skip
        return
    factory, lives = _observer_factory(ci)
    prepared = new_run(
        Store(),
        wf,
        the_plan,
        factory,
        run_id=run_id,
        sandbox=sandbox,
        junit=junit,
        keep_sandbox=keep_sandbox,
        log=_sandbox_log,
        approve=approver(yes, ci, lives),
        on_interrupt=interrupt_asker(ci, lives),
        diagnose=not no_diagnose,
        planned_here=not saved,
        notify=notify,
    )
    without_cache(prepared, no_cache)
    with prepared.run.lock():
        state = _drive(prepared, lives, prepared.runner.start)
    _conclude(state, prepared.run)


def without_cache(prepared: Prepared, no_cache: bool) -> Prepared:
    """``--no-cache``: recorded in the run's state, so that a resume keeps it."""
    if no_cache and not prepared.runner.state.no_cache:
        runner = prepared.runner
        runner.state = runner.state.with_run(no_cache=True)
        prepared.run.write_state(runner.state)
    return prepared


def run_detached(
    prepared: Prepared, *, junit: Path | None, keep_sandbox: bool, yes: bool, no_diagnose: bool
) -> None:
    rid = prepared.run.run_id
    argv = detached_argv(
        rid, junit=junit, keep_sandbox=keep_sandbox, yes=yes, no_diagnose=no_diagnose
    )
    for w in prepared.warnings:
        err_console.print(f"[yellow]warning:[/] {w}")
    start_detached(prepared, argv)
    console.print(
        f"run [bold cyan]{rid}[/] goes on in the background (its orchestrator is in tmux)\n"
        f"  watch:  agentflow attach {rid}       (add --write to type)\n"
        f"  status: agentflow status {rid}\n"
        f"  logs:   agentflow logs -f {rid} STEP\n"
        f"  stop:   agentflow stop {rid}"
    )


@command("drive", hidden=True)
def drive(
    run_id: Annotated[str, typer.Argument(help="The run.")],
    junit: JunitOption = None,
    keep_sandbox: KeepOption = False,
    yes: YesOption = False,
    no_diagnose: NoDiagnoseOption = False,
    env_file: Annotated[Path | None, typer.Option("--env-file")] = None,
    notify: NotifyOption = None,
) -> None:
    """The orchestrator of a detached run, in the first window of the run's session.
    Changed commands need --yes: nobody may be there to approve them (else: blocked)."""
    if env_file is not None:
        take_environment(env_file)
    run_dir = Store().open(run_id)
    # Its first orchestrator may have died before it started anything: then start.
    fresh = not run_dir.read_events()
    drive_again(run_dir, ci=False, junit=junit, keep_sandbox=keep_sandbox, yes=yes,
                 no_diagnose=no_diagnose, unattended=True, fresh=fresh, notify=notify)  # fmt: skip


def drive_again(
    run_dir: RunDir,
    *,
    ci: bool,
    junit: Path | None,
    keep_sandbox: bool,
    yes: bool,
    no_diagnose: bool,
    unattended: bool = False,
    fresh: bool = False,
    before: Callable[[], None] | None = None,
    no_cache: bool = False,
    notify: str | None = None,
) -> None:
    """Drive an existing run (resume it, or start it when ``fresh``) under its lock.
    ``unattended``: nobody may be there to approve a changed command (a detached run).
    ``before``: a change to the run's directory made under the same lock (rerun, reload)."""
    factory, lives = _observer_factory(ci, unattended)
    with run_dir.lock():
        if before is not None:
            before()
        prepared = reopen(
            Store(),
            run_dir.run_id,
            factory,
            junit=junit,
            keep_sandbox=keep_sandbox,
            log=_sandbox_log,
            approve=approver(yes, ci or unattended, lives),
            on_interrupt=interrupt_asker(ci, lives, unattended=unattended),
            diagnose=not no_diagnose,
            notify=notify,
        )
        without_cache(prepared, no_cache)
        start = prepared.runner.start if fresh else lambda: resume(prepared)
        final = _drive(prepared, lives, start)
    _conclude(final, run_dir)


def _read_plan(path: Path) -> Plan:
    from pydantic import ValidationError

    try:
        the_plan = Plan.model_validate_json(path.read_bytes())
    except OSError as e:
        raise UsageError(f"{path}: cannot read the plan ({e.strerror})") from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise UsageError(f"{path}: not a valid plan ({where}: {first['msg']})") from None
    return the_plan
