"""Starting, resuming and stopping runs: what ``agentflow run/resume/stop`` do, without the
printing. Each function assembles a ``Runner`` from a run directory and the machine's
sandbox and tmux, so that the CLI stays a thin layer of parsing and printing.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from agentflow.agent.diagnose import Diagnoser
from agentflow.agent.llm import check_record
from agentflow.agent.loop import Limits
from agentflow.errors import EnvironmentProblem, StateError, UsageError
from agentflow.notify import Notifier, attach, remember
from agentflow.plan import Plan
from agentflow.pool import Demand, demand
from agentflow.runner import (
    STOP_REASON_MAX,
    STOP_REQUEST,
    InterruptChoice,
    Observer,
    Runner,
    RunSetup,
)
from agentflow.sandbox import Sandbox
from agentflow.sandbox.local import LocalSandbox
from agentflow.settings import settings
from agentflow.state import RunState, StepState, Usage, prepare_resume
from agentflow.store import RunDir, Store, new_run_id
from agentflow.tmux import Tmux, socket_path_for
from agentflow.workflow.load import WorkflowFile, parse_workflow
from agentflow.workflow.model import Workflow
from agentflow.workflow.support import changed_keys

SandboxChoice = Literal["auto", "docker", "local", "slurm"]
Approve = Callable[[str, str, str], bool]
"""Asks a person to approve a command the model changed: (step, old, new) → yes or no."""


@dataclass(frozen=True)
class Prepared:
    """A runner ready to drive, and what the CLI shows about it."""

    runner: Runner
    run: RunDir
    attach_hint: str
    warnings: list[str]
    notifier: Notifier | None = None
    """Tells the run's ``notify:`` targets (and ``--notify``'s) how it goes."""


def choose_backend(workflow: Workflow, choice: SandboxChoice | None) -> tuple[str, list[str]]:
    """``docker`` or ``local``, and the warnings to show. ``auto`` is Docker when the
    workflow names an image and a daemon answers, else local (said in a warning)."""
    backend = choice or workflow.sandbox.backend
    ignored = sorted(changed_keys(workflow.sandbox) - {"backend", "image", "build"})
    if backend == "local":
        if ignored:
            return "local", [f"the local sandbox ignores sandbox.{', sandbox.'.join(ignored)}"]
        return "local", []
    if backend == "slurm":
        ignored = sorted(changed_keys(workflow.sandbox) & {"network", "mounts"})
        if workflow.sandbox.resources.pids is not None:
            ignored.append("resources.pids")
        if (workflow.sandbox.image or workflow.sandbox.build) and not (
            workflow.sandbox.slurm and workflow.sandbox.slurm.container
        ):
            ignored.append("image (no slurm.container)")
        if ignored:
            return "slurm", [f"the slurm sandbox ignores sandbox.{', sandbox.'.join(ignored)}"]
        return "slurm", []
    has_image = bool(workflow.sandbox.image or workflow.sandbox.build)
    if backend == "docker":
        from agentflow.sandbox.docker import connect

        if not has_image:
            raise UsageError(
                "the docker sandbox needs `sandbox.image` or `sandbox.build` in the workflow"
            )
        connect().close()  # no daemon: exit 4 with a hint, before anything is created
        return "docker", []
    if not has_image:
        return "local", ["the workflow names no image: steps run on this machine (local sandbox)"]
    from agentflow.sandbox.docker import daemon_answers

    if daemon_answers():
        return "docker", []
    warning = "no Docker daemon answers: steps run on this machine (local sandbox)"
    if ignored:
        warning += f", without sandbox.{', sandbox.'.join(ignored)}"
    return "local", [warning]


def make_sandbox(
    backend: str,
    workflow: Workflow,
    run: RunDir,
    workspace: Path,
    home: Path,
    *,
    keep: bool = False,
    log: Callable[[str], None] | None = None,
    pool: Demand | None = None,
) -> Sandbox:
    if backend == "slurm":
        from agentflow.sandbox.slurm import SlurmSandbox

        return SlurmSandbox(workflow, run.run_id, workspace, run.path / "steps")
    if backend == "docker":
        from agentflow.sandbox.docker import DockerSandbox

        return DockerSandbox(
            workflow.sandbox,
            run_id=run.run_id,
            workflow=workflow.name,
            workspace=workspace,
            steps_dir=run.path / "steps",
            home=home,
            log=log,
            build_log=run.path / "build.log",
            keep=keep,
            socket_dir=socket_path_for(home).parent,
            gpus=pool.pool.gpus if pool is not None and pool.gpu_steps else None,
        )
    return LocalSandbox(workspace, workflow.secrets, run.path / "steps")


def make_diagnoser(workflow: Workflow, used: int = 0) -> Diagnoser | None:
    """The model, for a workflow with ``on_failure: diagnose`` steps (no key: exit 4)."""
    if not any(workflow.on_failure_of(s) == "diagnose" for s in workflow.steps):
        return None
    from agentflow.agent.llm import LLM

    if not settings().anthropic_api_key and settings().llm_replay is None:
        raise EnvironmentProblem(
            "on_failure: diagnose needs ANTHROPIC_API_KEY (the model reads failures): export "
            "it, or run with --no-diagnose (failures are then handled as on_failure: continue)"
        )
    cfg = workflow.planner
    limits = Limits(turns=cfg.turns, seconds=cfg.deadline)
    return Diagnoser(LLM(cfg.model, cfg.max_tokens, cfg.budget, used=used), limits=limits)


def read_secrets(workflow: Workflow) -> dict[str, str]:
    """The values of the workflow's secrets, from this process's environment."""
    missing = [name for name in workflow.secrets if not os.environ.get(name)]
    if missing:
        raise EnvironmentProblem(
            f"secret{'s' if len(missing) > 1 else ''} {', '.join(missing)} named in the "
            "workflow but not set: export it in the environment agentflow runs in"
        )
    return {name: os.environ[name] for name in workflow.secrets}


def _tmux(store: Store) -> Tmux:
    store.ensure_home()
    return Tmux(socket_path_for(store.home))


def new_run(
    store: Store,
    wf: WorkflowFile,
    plan: Plan,
    observer_for: ObserverFactory,
    *,
    run_id: str | None = None,
    sandbox: SandboxChoice | None = None,
    junit: Path | None = None,
    kill_grace: float = 10.0,
    keep_sandbox: bool = False,
    log: Callable[[str], None] | None = None,
    approve: Approve | None = None,
    on_interrupt: Callable[[], InterruptChoice] | None = None,
    diagnose: bool = True,
    planned_here: bool = True,
    notify: str | None = None,
) -> Prepared:
    """Create the run directory (workflow and plan frozen in it) and a runner for it.
    Everything that can be missing (tmux, a daemon, a secret, a key) is checked first.
    ``planned_here``: the plan was made for this run, whose usage starts with its cost
    (a saved plan's was paid once, when it was made). ``notify``: ``--notify``'s URL, kept
    with the run."""
    tmux = _tmux(store)
    secrets = read_secrets(wf.workflow)
    check_record(wf.workflow, wf.base_dir)
    workflow = plan.workflow_for(wf.workflow)  # with the steps the planner added
    usage = (plan.usage if planned_here else None) or Usage()
    diagnoser = make_diagnoser(workflow, usage.tokens) if diagnose else None
    backend, warnings = choose_backend(wf.workflow, sandbox)
    pool = demand(workflow, backend, str(wf.path))  # a step that can never get its GPUs
    run = store.create(run_id or new_run_id(wf.workflow.name))
    if notify is not None:
        remember(run, notify)
    box = make_sandbox(
        backend, workflow, run, wf.base_dir, store.home, keep=keep_sandbox, log=log, pool=pool
    )
    run.write_text("workflow.yaml", wf.text)
    run.write_plan(plan)
    state = RunState(
        run_id=run.run_id,
        workflow=wf.workflow.name,
        workflow_file=str(wf.path),
        workspace=str(wf.base_dir),
        sandbox=box.name,
        planner=plan.planner,
        inputs=plan.inputs,
        tokens_used=usage.tokens,
        usage=usage,
        steps={s.id: StepState() for s in plan.steps},
    )
    setup = RunSetup(
        run, workflow, plan, wf.base_dir, box, tmux, kill_grace, junit, secrets,
        diagnoser, approve, on_interrupt, pool,
    )  # fmt: skip
    hint = f"agentflow attach {run.run_id}"
    runner = Runner(setup, state, observer_for(run, plan, hint))
    notifier, more = attach(runner, workflow)
    return Prepared(runner, run, hint, warnings + more, notifier)


def reopen(
    store: Store,
    run_id: str,
    observer_for: ObserverFactory,
    *,
    junit: Path | None = None,
    kill_grace: float = 10.0,
    keep_sandbox: bool = False,
    log: Callable[[str], None] | None = None,
    secrets: bool = True,
    approve: Approve | None = None,
    on_interrupt: Callable[[], InterruptChoice] | None = None,
    diagnose: bool = True,
    notify: str | None = None,
) -> Prepared:
    """A runner for an existing run, from what its directory froze. ``secrets=False``
    for a runner that only stops the run (no step starts, no secret is needed).
    ``notify``: a ``--notify`` URL, kept with the run from now on."""
    run = store.open(run_id)
    if notify is not None:
        remember(run, notify)
    state = run.read_state()
    plan = run.read_plan()
    workspace = Path(state.workspace)
    try:
        text = run.workflow_path.read_text(encoding="utf-8")
    except OSError as e:
        raise StateError(f"{run.workflow_path}: cannot read the run's workflow ({e})") from None
    try:
        frozen = parse_workflow(text, str(run.workflow_path), bare_seconds=True)
        workflow = plan.workflow_for(frozen)
    except KeyError as e:
        raise StateError(f"{run.path}: plan.json has step {e} that workflow.yaml lacks") from None
    if not workspace.is_dir():
        raise UsageError(f"run {run.run_id}: its workspace {workspace} no longer exists")
    values = read_secrets(workflow) if secrets else {}
    check_record(workflow, workspace)
    # (Only stopping it: a pool that changed since must not stand in the way.)
    pool = demand(workflow, state.sandbox, str(run.workflow_path), check=secrets)
    box = make_sandbox(
        state.sandbox, workflow, run, workspace, store.home, keep=keep_sandbox, log=log,
        pool=pool,
    )  # fmt: skip
    diagnoser = make_diagnoser(workflow, state.tokens_used) if secrets and diagnose else None
    setup = RunSetup(
        run, workflow, plan, workspace, box, _tmux(store), kill_grace, junit, values,
        diagnoser, approve, on_interrupt, pool,
    )  # fmt: skip
    hint = f"agentflow attach {run.run_id}"
    runner = Runner(setup, state, observer_for(run, plan, hint))
    notifier, warnings = attach(runner, workflow)
    return Prepared(runner, run, hint, warnings, notifier)


def start_detached(prepared: Prepared, argv: list[str], wait: float = 20.0) -> None:
    """Hand a new run to an orchestrator of its own (``argv``) in the first window of the
    run's tmux session, where it survives this terminal and a person sees it on attach.
    Returns once that orchestrator is going; raises with what its window showed if it
    ended before it got going."""
    runner, run = prepared.runner, prepared.run
    run.write_state(runner.state)
    # This shell's environment (secrets, keys, PATH) for the orchestrator, which the tmux
    # server (perhaps older than this shell) would not give it. Through a private file it
    # reads and deletes at once: on tmux's command line it would show in `ps` for as long
    # as the server lives (a server started by this command keeps it as its own).
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
    env_file = run.path / DRIVE_ENV
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(env, f)
    command = shlex.join([*argv, "--env-file", str(env_file)])
    said = _size(run.events_path)
    # A run driven again (`resume --detach`, a sweep's run whose orchestrator is gone) may
    # still have its session, with steps going on: its first window, a dead orchestrator's,
    # starts anew; a session whose first window is a step's (the run was driven from a
    # terminal) gets a new first window.
    tmux, cwd = runner.s.tmux, runner.s.workspace
    if not tmux.respawn_first(run.run_id, cwd, command) and not (
        tmux.has_session(run.run_id) and tmux.new_first_window(run.run_id, cwd, command)
    ):
        tmux.ensure_session(run.run_id, cwd, command)
    deadline = time.monotonic() + wait
    # Going: it holds the lock, or it has already said something (a short run may be over
    # before a look finds the lock held).
    while run.lock_holder() is None and _size(run.events_path) <= said:
        ended, shown = runner.s.tmux.first_pane(run.run_id)
        if ended or time.monotonic() > deadline:
            why = "ended at once" if ended else f"did not start within {wait:.0f}s"
            last = shown.splitlines()[-1] if shown else "(no output)"
            raise EnvironmentProblem(
                f"the detached orchestrator of run {run.run_id} {why}: {last} "
                f"(see `agentflow attach {run.run_id}`)"
            )
        time.sleep(0.1)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


DRIVE_ENV = "drive-env.json"
"""The environment handed to a detached run's orchestrator (deleted once read)."""


def take_environment(path: Path) -> None:
    """A detached orchestrator's first act: the caller's environment, then the file goes."""
    try:
        env = json.loads(path.read_text(encoding="utf-8"))
    finally:
        path.unlink(missing_ok=True)
    os.environ.update({str(k): str(v) for k, v in env.items()})


def resume(prepared: Prepared) -> RunState:
    runner = prepared.runner
    runner.state = prepare_resume(runner.state)
    return runner.resume()


def request_stop(run: RunDir, wait: float = 30.0, reason: str = "") -> bool:
    """Ask a live orchestrator to stop its run; True if one was there and let go in time.
    ``reason``: what its steps and the run say stopped them (``agentflow stop`` else)."""
    pid = run.lock_holder()
    if pid is None or pid <= 0:
        return False
    (run.path / STOP_REQUEST).write_text(reason[:STOP_REASON_MAX], encoding="utf-8")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if run.lock_holder() is None:
            return True
        time.sleep(0.1)
    raise EnvironmentProblem(
        f"the orchestrator of run {run.run_id} (pid {pid}) did not stop within {wait:.0f}s"
    )


class ObserverFactory(Protocol):
    """Builds the observer of a run once its directory exists (the CLI provides one)."""

    def __call__(self, run: RunDir, plan: Plan, attach_hint: str) -> Observer: ...
