"""The runner: drives one run from its plan to its end, and picks it up again after a crash.

It starts steps in dependency order (up to ``max_parallel`` at once), each in its own tmux
window through the sandbox's wrapper, then sleeps until the earliest deadline. A step's
window signals a tmux channel when the step ends, which wakes the runner at once; what
happened is then read from the step's folder (``exit_code``), never from the screen.
Every change is saved to ``state.json`` before anything else happens.
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import shutil
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from agentflow.errors import EnvironmentProblem
from agentflow.monitor import CheckSchedule, Waker
from agentflow.plan import Plan, PlannedStep
from agentflow.redact import Redactor
from agentflow.report import write_reports
from agentflow.sandbox import Sandbox, wrapper_script
from agentflow.state import FINAL, RunState, StepState, StepStatus, now
from agentflow.store import Event, RunDir
from agentflow.template import Ref, scalar_text, substitute
from agentflow.tmux import Tmux, wake_channel
from agentflow.workflow.model import Workflow
from agentflow.workflow.types import format_duration

STOP_REQUEST = "stop-requested"
"""A file in the run directory: the orchestrator's SIGTERM means "stop", not "detach"."""


class Observer(Protocol):
    """Someone who shows the run: the live table, plain lines, the orchestrator's log."""

    def event(self, event: Event, state: RunState) -> None: ...

    def update(self, state: RunState) -> None: ...


@dataclass(frozen=True)
class RunSetup:
    """Everything a runner needs, fixed for the run's life."""

    run: RunDir
    workflow: Workflow
    plan: Plan
    workspace: Path
    sandbox: Sandbox
    tmux: Tmux
    kill_grace: float = 10.0
    """Seconds between TERM and KILL when a step is stopped."""
    junit: Path | None = None
    """Where to write a copy of the JUnit report, besides the run directory."""
    secrets: dict[str, str] = field(default_factory=dict)
    """The workflow's secrets by name: handed to each step, masked everywhere."""


class Runner:
    def __init__(self, setup: RunSetup, state: RunState, observer: Observer) -> None:
        self.s = setup
        self.state = state
        self.observer = observer
        self.session = state.run_id
        self.channel = wake_channel(self.session)
        self.schedule = CheckSchedule()
        self.redactor = Redactor(setup.secrets.values())
        self.aborting: str | None = None
        self._resuming = False
        self._sandbox_checked = True

    # --- the loop -----------------------------------------------------------------------

    def start(self) -> RunState:
        """Drive a new run (its state already has every step pending)."""
        self._save()
        self._emit("run_started", message=f"{len(self.state.steps)} steps")
        return self._drive()

    def resume(self) -> RunState:
        """Drive a run again after its orchestrator stopped or died."""
        self._resuming = True
        self._save()
        running = [k for k, v in self.state.steps.items() if v.status == "running"]
        self._emit("run_resumed", message=f"{len(running)} steps were running")
        return self._drive()

    def _drive(self) -> RunState:
        self.s.sandbox.start()
        self._ensure_session()
        waker = Waker(lambda: self.s.tmux.waiter(self.channel), self.s.run.path / "steps" / ".wake")
        try:
            with waker.signals():
                while not waker.interrupted:
                    changed_before = self.schedule.last
                    self._check_running()
                    self._resuming = False
                    self._start_ready()
                    if self._done():
                        return self._finish()
                    if self.schedule.last == changed_before:
                        self.schedule.checked()
                    waker.sleep((self._next_wake() - now()).total_seconds())
                if (self.s.run.path / STOP_REQUEST).exists():
                    self.stop("stopped by `agentflow stop`")
                else:
                    self._detach()
                return self.state
        finally:
            waker.close()

    def _done(self) -> bool:
        return self.state.finished

    def _next_wake(self) -> datetime:
        times = [self.schedule.next_check()]
        for step_id, st in self.state.steps.items():
            if st.status == "running":
                deadline = self._deadline(step_id, st)
                if deadline is not None:
                    times.append(deadline)
            elif st.status == "pending" and st.not_before is not None:
                times.append(st.not_before)
        return min(times)

    def _deadline(self, step_id: str, st: StepState) -> datetime | None:
        if st.kill_sent_at is not None:
            return st.kill_sent_at + timedelta(seconds=self.s.kill_grace)
        timeout = self.s.workflow.timeout_of(self.s.workflow.step(step_id))
        if timeout is not None and st.started_at is not None:
            return st.started_at + timedelta(seconds=timeout)
        return None

    # --- watching running steps -----------------------------------------------------------

    def _check_running(self) -> None:
        running = [k for k, v in self.state.steps.items() if v.status == "running"]
        if not running:
            return
        panes = self.s.tmux.panes(self.session)  # one tmux call for all steps
        for step_id in running:
            st = self.state.steps[step_id]
            code, ended = self._exit_code(step_id)
            if code is not None:
                self._attempt_ended(step_id, code, ended)
                continue
            pane = panes.get(st.window or "")
            if pane is None or pane.dead or pane.name != step_id:
                # The exit code is written before the window can die; look once more.
                code, ended = self._exit_code(step_id)
                if code is not None:
                    self._attempt_ended(step_id, code, ended)
                else:
                    why = "its tmux window is gone" if pane is None else "its wrapper died"
                    self._crashed(step_id, f"{why} without recording an exit code")
                continue
            self._enforce_deadline(step_id, st)

    def _exit_code(self, step_id: str) -> tuple[int | None, datetime | None]:
        path = self.s.run.step_dir(step_id) / "exit_code"
        try:
            text = path.read_text().strip()
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None, None
        try:
            code = int(text)
        except ValueError:
            code = 255
        return code, datetime.fromtimestamp(mtime).astimezone()

    def _enforce_deadline(self, step_id: str, st: StepState) -> None:
        deadline = self._deadline(step_id, st)
        if deadline is None or now() < deadline:
            return
        if st.kill_sent_at is None:
            timeout = self.s.workflow.timeout_of(self.s.workflow.step(step_id)) or 0
            self._update(step_id, kill_reason="timeout", kill_sent_at=now())
            self._emit(
                "timeout", step_id, message=f"ran longer than {format_duration(timeout)}: killing"
            )
            self._signal(step_id, signal.SIGTERM)
        else:
            self._signal(step_id, signal.SIGKILL)
            self._update(step_id, kill_sent_at=now() + timedelta(seconds=3600))

    def _signal(self, step_id: str, signum: int) -> None:
        pid_file = self.s.run.step_dir(step_id) / "pid"
        try:
            pgid = int(pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            # Not started yet: closing the window ends the wrapper itself.
            window = self.state.steps[step_id].window
            if window and signum == signal.SIGKILL:
                self.s.tmux.kill_window(window)
            return
        self.s.sandbox.signal(pgid, signum)

    # --- the end of an attempt ------------------------------------------------------------

    def _attempt_ended(self, step_id: str, code: int, ended: datetime | None) -> None:
        st = self.state.steps[step_id]
        status: StepStatus
        if st.kill_reason == "timeout":
            status, message = "timeout", "killed: it ran past its timeout"
        elif st.kill_reason in ("stop", "abort"):
            status, message = "failed", st.message or "stopped"
        elif code == 0:
            status, message = "succeeded", None
        else:
            status, message = "failed", f"exit code {code}"
        self._update(
            step_id,
            status=status,
            exit_code=code,
            finished_at=ended or now(),
            message=message,
            kill_reason=None,
            kill_sent_at=None,
        )
        self.schedule.changed()
        self._emit("step_finished", step_id, status=status, exit_code=code, message=message)
        if status == "succeeded" or st.kill_reason in ("stop", "abort"):
            return
        if self._resuming:
            self._requeue(step_id, f"{status} while agentflow was away")
            return
        self._after_failure(step_id, status, code)

    def _requeue(self, step_id: str, why: str) -> None:
        # A resume redoes whatever did not succeed: no retry allowance is needed for it.
        self._update(step_id, status="pending", message=None)
        self._emit("step_requeued", step_id, message=why)

    def _crashed(self, step_id: str, why: str) -> None:
        # Whatever the attempt left running must not overlap its retry.
        self._signal(step_id, signal.SIGKILL)
        self._sandbox_checked = False  # the sandbox itself may be gone (container killed)
        self._update(step_id, status="crashed", finished_at=now(), message=why, kill_reason=None)
        self.schedule.changed()
        self._emit("step_finished", step_id, status="crashed", message=why)
        if self._resuming:
            self._requeue(step_id, "crashed while agentflow was away")
            return
        self._after_failure(step_id, "crashed", None)

    def _after_failure(self, step_id: str, status: StepStatus, code: int | None) -> None:
        step = self.s.workflow.step(step_id)
        policy = self.s.workflow.retry_of(step)
        st = self.state.steps[step_id]
        code_ok = status != "failed" or policy.exit_codes is None or code in policy.exit_codes
        if self.aborting is None and st.retries < policy.limit and status in policy.on and code_ok:
            b = policy.backoff
            delay = min(b.max, b.initial * b.factor**st.retries) * random.uniform(0.5, 1.0)
            retry = st.retries + 1
            message = f"retry {retry}/{policy.limit} in {format_duration(delay)}"
            self._update(
                step_id,
                status="pending",
                retries=retry,
                not_before=now() + timedelta(seconds=delay),
                message=message,
            )
            self._emit("retry_scheduled", step_id, status=status, message=message)
            return
        if self.s.workflow.on_failure_of(step) == "abort" and self.aborting is None:
            self.aborting = f"step {step_id} {status} and its on_failure is abort"
            self._emit("run_aborting", step_id, message=self.aborting)
            for other, ost in self.state.steps.items():
                if ost.status == "running":
                    self._update(
                        other, kill_reason="abort", kill_sent_at=now(), message=self.aborting
                    )
                    self._signal(other, signal.SIGTERM)

    # --- starting steps -------------------------------------------------------------------

    def _start_ready(self) -> None:
        running = self.state.count("running")
        for planned in self.s.plan.steps:
            st = self.state.steps[planned.id]
            if st.status != "pending":
                continue
            blocked_by = [
                n for n in planned.needs if self.state.steps[n].status in FINAL - {"succeeded"}
            ]
            if self.aborting or blocked_by:
                why = (
                    f"run aborted: {self.aborting}"
                    if self.aborting
                    else (f"needs {blocked_by[0]}, which {self.state.steps[blocked_by[0]].status}")
                )
                self._update(planned.id, status="skipped", message=why)
                self._emit("step_skipped", planned.id, status="skipped", message=why)
                continue
            if running >= self.s.workflow.max_parallel:
                continue
            if any(self.state.steps[n].status != "succeeded" for n in planned.needs):
                continue
            if st.not_before is not None and now() < st.not_before:
                continue
            self._launch(planned)
            running += 1

    def _launch(self, planned: PlannedStep) -> None:
        if not self._sandbox_checked:
            self.s.sandbox.start()  # idempotent: re-attaches, or starts a new one
            self._sandbox_checked = True
        step = self.s.workflow.step(planned.id)
        st = self.state.steps[planned.id]
        attempt = st.attempts + 1
        step_dir = self.s.run.step_dir(planned.id)
        _archive_attempt(step_dir, st.attempts)
        step_dir.mkdir(parents=True, exist_ok=True)
        # Like shell assignments: ${{ env.X }} reads what is set above it (the workflow's
        # env, then the step's, in the order written), else the caller's environment.
        env: dict[str, str] = {}
        for key, value in [*self.s.workflow.env.items(), *step.env.items()]:
            env[key] = self._render(value, env)
        command = self._render(planned.run, env)
        (step_dir / "run.sh").write_text(
            f"# agentflow step {planned.id}, attempt {attempt}, run {self.state.run_id}\n"
            f"{command}\n"
        )
        (step_dir / "wrapper.sh").write_text(wrapper_script())
        env.update(
            AGENTFLOW_RUN_ID=self.state.run_id,
            AGENTFLOW_STEP=planned.id,
            AGENTFLOW_ATTEMPT=str(attempt),
        )
        if self.s.secrets:
            # Values go only to the step's environment; the wrapper masks them in its output.
            env.update(self.s.secrets, AGENTFLOW_SECRETS=" ".join(self.s.secrets))
        workdir = self.s.sandbox.workdir(self._render(step.workdir, env) if step.workdir else None)
        launch = self.s.sandbox.launch(step_dir, workdir, env)
        pane_command = shlex.join(launch.command)
        if st.window:
            self.s.tmux.kill_window(st.window)
        try:
            window = self.s.tmux.new_window(
                self.session, planned.id, pane_command, self.s.workspace, launch.env
            )
        except EnvironmentProblem:
            # The tmux server or session went away (killed, or the machine's tmux restarted):
            # make it again and try once more; a second failure is the environment's.
            self._ensure_session()
            window = self.s.tmux.new_window(
                self.session, planned.id, pane_command, self.s.workspace, launch.env
            )
        self._update(
            planned.id,
            status="running",
            attempts=attempt,
            started_at=now(),
            finished_at=None,
            exit_code=None,
            window=window,
            message=None,
            kill_reason=None,
            kill_sent_at=None,
            not_before=None,
        )
        self.schedule.changed()
        self._emit("step_started", planned.id, status="running")

    def _render(self, text: str, env: dict[str, str]) -> str:
        def lookup(ref: Ref) -> str | None:
            if ref.kind == "inputs":
                value = self.s.plan.inputs.get(ref.names[0])
                return None if value is None else scalar_text(value)
            if ref.kind == "env":
                return env.get(ref.names[0], os.environ.get(ref.names[0], ""))
            if ref.kind == "run":
                return self.state.run_id
            return self.state.steps[ref.names[0]].outputs.get(ref.names[1], "")

        return substitute(text, lookup)

    # --- ending the run -------------------------------------------------------------------

    def _finish(self) -> RunState:
        outcome = self.state.outcome()
        self.state = self.state.with_run(status=outcome, finished_at=now(), message=self.aborting)
        self._save()
        self._emit("run_finished", status=outcome, message=self.aborting)
        self.s.sandbox.close()
        write_reports(self.s.run, self.state, self.s.junit)
        return self.state

    def _detach(self) -> None:
        message = "agentflow stopped watching; running steps go on in tmux"
        self.state = self.state.with_run(status="interrupted", message=message)
        self._save()
        self._emit("run_interrupted", status="interrupted", message=message)

    def stop(self, reason: str) -> None:
        """Stop every running step (TERM, then KILL after the grace period), close the
        run's tmux session, and mark the run interrupted."""
        running = [k for k, v in self.state.steps.items() if v.status == "running"]
        for step_id in running:
            self._update(step_id, kill_reason="stop", kill_sent_at=now(), message=reason)
            self._signal(step_id, signal.SIGTERM)
        deadline = time.monotonic() + self.s.kill_grace
        while running and time.monotonic() < deadline:
            running = [k for k in running if self._exit_code(k)[0] is None]
            time.sleep(0.05)
        for step_id in running:
            self._signal(step_id, signal.SIGKILL)
        time.sleep(0.1 if running else 0)
        for step_id, st in self.state.steps.items():
            if st.status == "running":
                code, ended = self._exit_code(step_id)
                self._update(
                    step_id, status="failed", exit_code=code, finished_at=ended or now(),
                    message=reason, kill_reason=None, kill_sent_at=None,
                )  # fmt: skip
                self._emit(
                    "step_finished", step_id, status="failed", exit_code=code, message=reason
                )
        self.s.tmux.kill_session(self.session)
        self.s.sandbox.close()
        self.state = self.state.with_run(status="interrupted", finished_at=now(), message=reason)
        self._save()
        self._emit("run_stopped", status="interrupted", message=reason)
        write_reports(self.s.run, self.state, self.s.junit)
        with contextlib.suppress(FileNotFoundError):
            (self.s.run.path / STOP_REQUEST).unlink()

    # --- plumbing -------------------------------------------------------------------------

    def _ensure_session(self) -> None:
        log = self.s.run.log_path
        log.touch()
        # The session's first window shows the orchestrator's log, for whoever attaches.
        command = shlex.join(["tail", "-n", "+1", "-F", str(log)])
        self.s.tmux.ensure_session(self.session, self.s.workspace, command)

    def _update(self, step_id: str, **changes: object) -> None:
        self.state = self.state.with_step(step_id, **changes)
        self._save()

    def _save(self) -> None:
        self.s.run.write_state(self.state)
        self.observer.update(self.state)

    def _emit(
        self,
        kind: str,
        step: str | None = None,
        *,
        status: str | None = None,
        exit_code: int | None = None,
        message: str | None = None,
    ) -> None:
        attempt = self.state.steps[step].attempts if step else None
        message = self.redactor(message) if message else message
        event = Event(
            kind=kind,
            step=step,
            attempt=attempt,
            status=status,
            exit_code=exit_code,
            message=message,
        )
        self.s.run.append_event(event)
        self.observer.event(event, self.state)


def _archive_attempt(step_dir: Path, attempt: int) -> None:
    """Move an earlier attempt's files into ``attempt-N/`` so each attempt keeps its log."""
    if attempt == 0 or not step_dir.exists():
        return
    files = [p for p in step_dir.iterdir() if p.is_file()]
    if not files:
        return
    target = step_dir / f"attempt-{attempt}"
    target.mkdir(exist_ok=True)
    for p in files:
        shutil.move(p, target / p.name)
