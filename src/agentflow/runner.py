"""The runner: drives one run from its plan to its end, and picks it up again after a crash.

It starts steps in dependency order (up to ``max_parallel`` at once), each in its own tmux
window through the sandbox's wrapper, then sleeps until the earliest deadline. A step's
window signals a tmux channel when the step ends, which wakes the runner at once; what
happened is then read from the step's folder (``exit_code``), never from the screen.
Every change is saved to ``state.json`` before anything else happens.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import shlex
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol, TypeVar

from pydantic import BaseModel

from agentflow import stepfiles
from agentflow.diagnose import Decision as ModelDecision
from agentflow.diagnose import Diagnoser, Failure, build_context
from agentflow.errors import AgentflowError, EnvironmentProblem
from agentflow.llm import BudgetExceeded, LLMError
from agentflow.monitor import (
    READ_LIMIT,
    CheckSchedule,
    StepClock,
    Waker,
    eta_seconds,
    learned_durations,
    parse_progress,
)
from agentflow.plan import Plan, PlannedStep
from agentflow.recovery import Decision as RecoveryDecision
from agentflow.recovery import decide
from agentflow.redact import Redactor
from agentflow.report import write_reports
from agentflow.sandbox import Sandbox, wrapper_script
from agentflow.state import FINAL, Progress, RunState, StepState, StepStatus, now
from agentflow.store import Event, RunDir
from agentflow.template import Ref, scalar_text, substitute
from agentflow.tmux import Tmux, wake_channel
from agentflow.verify import OutputError, Where, probe, read_outputs, success_checks, tail
from agentflow.workflow.model import Step, Workflow
from agentflow.workflow.types import format_duration, parse_duration

M = TypeVar("M", bound=BaseModel)

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
    diagnoser: Diagnoser | None = None
    """Asks the model about failures of ``on_failure: diagnose`` steps."""
    approve: Callable[[str, str, str], bool] | None = None
    """Asks a person to approve a command the model changed (step, old, new); None where
    nobody can be asked (then the step is escalated instead)."""
    runbooks: tuple[Path, ...] = ()
    """The workflow's ``docs:``, for diagnoses."""


MAX_DECISIONS_PER_STEP = 3
MAX_DECISIONS_PER_RUN = 10


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
        self.clocks: dict[str, StepClock] = {}
        self.next_probe: dict[str, datetime] = {}
        self.last_probe: dict[str, str] = {}
        self.ending = False
        """Every other step is over: services are being stopped."""
        learned = learned_durations(setup.run.path.parent, state.workflow, state.run_id)
        self.expected: dict[str, float] = {}
        for step in setup.workflow.steps:
            duration = step.expect.duration if step.expect else None
            if duration is None:
                duration = learned.get(step.id)
            if duration is not None:
                self.expected[step.id] = duration

    # --- the loop -----------------------------------------------------------------------

    def start(self) -> RunState:
        """Drive a new run (its state already has every step pending)."""
        self._save()
        self._emit("run_started", message=f"{len(self.state.steps)} steps")
        return self._drive()

    def resume(self) -> RunState:
        """Drive a run again after its orchestrator stopped or died."""
        self._resuming = True
        # A service stopped at the end of the run starts again for steps that still need it.
        for step in self.s.workflow.steps:
            st = self.state.steps[step.id]
            if step.service and st.status == "succeeded" and not self._dependents_done(step.id):
                self.state = self.state.with_step(step.id, status="pending", message=None)
        self._save()
        running = [k for k, v in self.state.steps.items() if v.status == "running"]
        self._emit("run_resumed", message=f"{len(running)} steps were running")
        return self._drive()

    def _drive(self) -> RunState:
        try:
            self.s.sandbox.start()
        except AgentflowError as e:
            # No sandbox, no run: say so in the checkpoint (not "running" with nobody there).
            message = f"the sandbox could not start: {str(e).splitlines()[0]}"
            self.state = self.state.with_run(status="failed", finished_at=now(), message=message)
            self._save()
            self._emit("run_finished", status="failed", message=message)
            write_reports(self.s.run, self.state, self.s.junit)
            raise
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
                times += [t for t, _ in self._deadlines(step_id, st)]
                if step_id in self.clocks:
                    times.append(self.clocks[step_id].next)
                if step_id in self.next_probe and st.ready_at is None:
                    times.append(self.next_probe[step_id])
            elif st.status == "pending" and st.not_before is not None:
                times.append(st.not_before)
        return min(times)

    def _deadlines(self, step_id: str, st: StepState) -> list[tuple[datetime, str]]:
        """When agentflow must act on a running step, and why: ``kill`` (the grace after
        TERM is over), ``timeout``, ``stall``, ``not_ready``."""
        if st.kill_sent_at is not None:
            return [(st.kill_sent_at + timedelta(seconds=self.s.kill_grace), "kill")]
        if st.started_at is None:
            return []
        step = self.s.workflow.step(step_id)
        out = []
        timeout = self.s.workflow.timeout_of(step)
        if timeout is not None:
            out.append((st.started_at + timedelta(seconds=timeout), "timeout"))
        stall = self.s.workflow.stall_timeout_of(step)
        if stall is not None:
            out.append(((st.last_output_at or st.started_at) + timedelta(seconds=stall), "stall"))
        if step.service and step.ready and st.ready_at is None:
            out.append((st.started_at + timedelta(seconds=step.ready.timeout), "not_ready"))
        return out

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
            self._watch(step_id)

    def _exit_code(self, step_id: str) -> tuple[int | None, datetime | None]:
        return stepfiles.exit_code(self.s.run.step_dir(step_id))

    def _watch(self, step_id: str) -> None:
        """The cheap, deterministic check of one running step: new output (progress,
        stall timer), the readiness probe of a service, and its deadlines."""
        st = self.state.steps[step_id]
        clock = self.clocks.setdefault(step_id, StepClock(self.expected.get(step_id)))
        deadlines = self._deadlines(step_id, st)
        if clock.due() or any(t <= now() for t, _ in deadlines):
            clock.looked(self._look_at_output(step_id))
        step = self.s.workflow.step(step_id)
        if step.service and self.state.steps[step_id].ready_at is None:
            self._probe(step_id, step)
        st = self.state.steps[step_id]
        for deadline, why in self._deadlines(step_id, st):
            if deadline <= now():
                self._act_on_deadline(step_id, st, why)
                break

    def _look_at_output(self, step_id: str) -> bool:
        """Read what the step printed since the last look (the end of it, at most
        READ_LIMIT); update its progress and ETA. True when there was new output."""
        st = self.state.steps[step_id]
        new = stepfiles.new_output(self.s.run.step_dir(step_id), st.output_bytes, READ_LIMIT)
        if new is None:
            return False
        step = self.s.workflow.step(step_id)
        # When the output was written, not when we looked: the stall timer is exact.
        changes: dict[str, object] = {"output_bytes": new.size, "last_output_at": new.written}
        found = parse_progress(new.text, step.expect.progress if step.expect else None)
        if found is not None:
            done, total = found
            progress = Progress(done=done, total=total)
            elapsed = (now() - st.started_at).total_seconds() if st.started_at else 0.0
            eta = eta_seconds(progress.fraction, elapsed)
            changes["progress"] = progress.model_copy(update={"eta_s": eta})
        elif step_id in self.expected and st.progress is None:
            # No progress in the output: the ETA is what is left of the expected duration.
            elapsed = (now() - st.started_at).total_seconds() if st.started_at else 0.0
            left = max(0.0, self.expected[step_id] - elapsed)
            changes["progress"] = Progress(done=0, total=0, eta_s=left)
        self._update(step_id, **changes)
        return True

    def _probe(self, step_id: str, step: Step) -> None:
        if step.ready is None:  # a service without a probe is ready once started
            self._became_ready(step_id, step, "started (no readiness probe)")
            return
        due = self.next_probe.get(step_id)
        if due is not None and now() < due:
            return
        env = self._step_env(step)
        check = probe(self._rendered(step.ready, env), self._where(step, env))
        self.next_probe[step_id] = now() + timedelta(seconds=step.ready.interval)
        self.last_probe[step_id] = check.detail
        if check.ok:
            self._became_ready(step_id, step, check.detail)

    def _became_ready(self, step_id: str, step: Step, detail: str) -> None:
        st = self.state.steps[step_id]
        waited = (now() - st.started_at).total_seconds() if st.started_at else 0.0
        self._update(step_id, ready_at=now())
        self.next_probe.pop(step_id, None)
        self.schedule.changed()
        self._emit("service_ready", step_id, message=f"{detail} after {format_duration(waited)}")
        if step.outputs:
            try:
                env = self._step_env(step)
                rendered = {k: self._rendered(v, env) for k, v in step.outputs.items()}
                outputs = read_outputs(rendered, self._where(step, env))
            except OutputError as e:
                self._emit("output_missing", step_id, message=str(e))
            else:
                self._update(step_id, outputs={k: self.redactor(v) for k, v in outputs.items()})

    def _act_on_deadline(self, step_id: str, st: StepState, why: str) -> None:
        step = self.s.workflow.step(step_id)
        if why == "kill":
            self._signal(step_id, signal.SIGKILL)
            self._update(step_id, kill_sent_at=now() + timedelta(seconds=3600))
            return
        if why == "timeout":
            limit = self.s.workflow.timeout_of(step) or 0
            message = f"ran longer than its timeout ({format_duration(limit)})"
        elif why == "stall":
            limit = self.s.workflow.stall_timeout_of(step) or 0
            message = f"printed nothing for {format_duration(limit)} (stall_timeout)"
        else:
            assert step.ready is not None
            last = self.last_probe.get(step_id, "no probe answered")
            message = f"not ready after {format_duration(step.ready.timeout)}: {last}"
        self._update(step_id, kill_reason=why, kill_sent_at=now(), message=message)
        self._emit(why, step_id, message=f"{message}: stopping it")
        self._signal(step_id, signal.SIGTERM)

    def _signal(self, step_id: str, signum: int) -> None:
        pgid = stepfiles.pid(self.s.run.step_dir(step_id))
        if pgid is None:
            # Not started yet: closing the window ends the wrapper itself.
            window = self.state.steps[step_id].window
            if window and signum == signal.SIGKILL:
                self.s.tmux.kill_window(window)
            return
        self.s.sandbox.signal(pgid, signum)

    # --- the end of an attempt ------------------------------------------------------------

    def _attempt_ended(self, step_id: str, code: int, ended: datetime | None) -> None:
        st = self.state.steps[step_id]
        step = self.s.workflow.step(step_id)
        self._look_at_output(step_id)  # the last lines: final progress
        status, message = self._judge(step, st, code)
        self.clocks.pop(step_id, None)
        self.next_probe.pop(step_id, None)
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
        if step.service and st.kill_reason != "end":
            self._fail_dependents(step_id, f"service {step_id} stopped ({message or status})")
        if status == "succeeded":
            self.state = self.state.with_run(consecutive_failures=0)
            return
        if st.kill_reason in ("stop", "abort"):
            return
        if self._resuming:
            self._requeue(step_id, f"{status} while agentflow was away")
            return
        self._after_failure(step_id, status, code)

    def _judge(self, step: Step, st: StepState, code: int) -> tuple[StepStatus, str | None]:
        """The status of an attempt that ended with ``code``, with its checks run."""
        reason = st.kill_reason
        if reason == "timeout":
            return "timeout", st.message
        if reason == "stall":
            return "stalled", st.message
        if reason in ("not_ready", "dependency", "stop", "abort"):
            return "failed", st.message or "stopped"
        if reason == "end":
            return "succeeded", "stopped at the end of the run"
        if step.service and not self._dependents_done(step.id):
            return "failed", f"the service exited (code {code}) while the run still needed it"
        if code != 0:
            return "failed", f"exit code {code}"
        return self._verify(step)

    def _verify(self, step: Step) -> tuple[StepStatus, str | None]:
        """Exit 0 is not success: run the step's checks and read its outputs."""
        env = self._step_env(step)
        where = self._where(step, env)
        if step.success is not None:
            check = success_checks(self._rendered(step.success, env), where)
            if not check.ok:
                self._emit("check_failed", step.id, message=check.detail)
                return "failed", check.detail
        if step.outputs and not step.service:
            try:
                rendered = {k: self._rendered(v, env) for k, v in step.outputs.items()}
                outputs = read_outputs(rendered, where)
            except OutputError as e:
                return "failed", f"outputs: {e}"
            outputs = {k: self.redactor(v) for k, v in outputs.items()}
            self._update(step.id, outputs=outputs)
            shown = ", ".join(f"{k}={v}" for k, v in outputs.items())
            self._emit("outputs", step.id, message=shown)
        return "succeeded", None

    def _dependents_done(self, service: str) -> bool:
        return all(
            self.state.steps[s.id].status in FINAL
            for s in self.s.workflow.steps
            if service in s.needs
        )

    def _fail_dependents(self, service: str, why: str) -> None:
        """A service went away: the running steps that need it cannot go on."""
        for s in self.s.workflow.steps:
            st = self.state.steps[s.id]
            if service in s.needs and st.status == "running" and st.kill_reason is None:
                self._update(s.id, kill_reason="dependency", kill_sent_at=now(), message=why)
                self._emit("dependency_lost", s.id, message=why)
                self._signal(s.id, signal.SIGTERM)

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
        self.state = self.state.with_run(consecutive_failures=self.state.consecutive_failures + 1)
        step = self.s.workflow.step(step_id)
        st = self.state.steps[step_id]
        log_tail = tail(self.s.run.step_dir(step_id) / "output.log", 64 * 1024)
        if self.aborting is not None:
            return
        decision = decide(self.s.workflow, step, st, self.state, status, code, log_tail)
        if (
            decision.action == "fail"
            and self.s.workflow.on_failure_of(step) == "diagnose"
            and self.s.diagnoser is not None
        ):
            self._diagnose(step_id, step, status, code)
            return
        self._apply(step_id, step, status, decision)

    def _diagnose(self, step_id: str, step: Step, status: StepStatus, code: int | None) -> None:
        """Ask the model, within the guardrails, and carry out its decision."""
        st = self.state.steps[step_id]
        diagnoser = self.s.diagnoser
        assert diagnoser is not None
        if st.decisions >= MAX_DECISIONS_PER_STEP or self.state.decisions >= MAX_DECISIONS_PER_RUN:
            self._escalate(step_id, f"the model has already decided {st.decisions} times here")
            return
        step_dir = self.s.run.step_dir(step_id)
        failure = Failure(
            step=step,
            script=tail(step_dir / "run.sh", 16 * 1024),
            status=status,
            exit_code=code,
            message=st.message,
            attempts=st.attempts,
            log=step_dir / "output.log",
        )
        context = build_context(
            failure, self.s.run.read_events(), list(self.s.runbooks), self.redactor,
            diagnoser.budget_tokens,
        )  # fmt: skip
        try:
            decision, call = diagnoser.decide(context)
        except BudgetExceeded as e:
            self._escalate(step_id, str(e))
            return
        except LLMError as e:
            self._escalate(step_id, f"the model could not decide: {e}")
            return
        self.state = self.state.with_run(
            tokens_used=self.state.tokens_used + call.tokens, decisions=self.state.decisions + 1
        )
        self._update(step_id, decisions=st.decisions + 1)
        self._emit(
            "diagnosis",
            step_id,
            status=status,
            message=f"{decision.action}: {decision.diagnosis} "
            f"[{decision.category or 'uncategorised'}; {call.tokens} tokens]",
        )
        wait = parse_duration(decision.wait) if decision.wait else 0.0
        if decision.action == "retry":
            self._apply(step_id, step, status, RecoveryDecision("retry", "the model: retry", wait))
        elif decision.action == "retry_with_changes":
            self._retry_with_changes(step_id, decision, wait)
        elif decision.action == "escalate":
            self._escalate(step_id, f"the model: {decision.diagnosis}")
        elif decision.action == "skip":
            self._apply(step_id, step, status, RecoveryDecision("skip", "the model: skip"))
        else:
            self._apply(step_id, step, status, RecoveryDecision("abort", "the model: abort"))

    def _retry_with_changes(self, step_id: str, decision: ModelDecision, wait: float) -> None:
        st = self.state.steps[step_id]
        changes: dict[str, object] = {}
        if (
            decision.run
            and decision.run.strip() != (st.run_override or self._planned_run(step_id)).strip()
        ):
            old = st.run_override or self._planned_run(step_id)
            diff = "".join(
                difflib.unified_diff(_lines(old), _lines(decision.run), "planned", "proposed")
            )
            self._emit("command_proposed", step_id, message=diff)
            approve = self.s.approve
            if approve is None or not approve(step_id, old, decision.run):
                why = "needs approval" if approve is None else "was refused"
                self._escalate(
                    step_id,
                    f"the model's changed command {why}: see the diff in the events "
                    "(approve with --yes, or in a terminal)",
                )
                return
            changes["run_override"] = decision.run
        env = {**st.env_overrides, **(decision.env or {})}
        changes.update(
            status="pending",
            env_overrides=env,
            not_before=now() + timedelta(seconds=wait),
            message="retry with the model's changes",
        )
        self._update(step_id, **changes)
        shown = ", ".join(f"{k}={v}" for k, v in (decision.env or {}).items())
        self._emit(
            "retry_scheduled",
            step_id,
            message="retry with the model's changes" + (f" (env {shown})" if shown else ""),
        )

    def _escalate(self, step_id: str, why: str) -> None:
        message = f"a person must decide: {why}"
        self._update(step_id, status="blocked", message=message)
        self._emit("escalated", step_id, status="blocked", message=message)

    def _planned_run(self, step_id: str) -> str:
        return self.s.plan.step(step_id).run

    def _apply(self, step_id: str, step: Step, status: StepStatus, d: RecoveryDecision) -> None:
        st = self.state.steps[step_id]
        if d.rule is not None:
            self._emit("rule_matched", step_id, status=status, message=d.reason)
        if d.action == "retry":
            changes: dict[str, object] = {
                "status": "pending",
                "not_before": now() + timedelta(seconds=d.wait),
                "message": d.reason,
                "env_overrides": {**st.env_overrides, **d.set_env},
            }
            if d.rule is None:
                changes["retries"] = st.retries + 1
            else:
                key = str(d.rule)
                changes["rule_uses"] = {**st.rule_uses, key: st.rule_uses.get(key, 0) + 1}
            self._update(step_id, **changes)
            self._emit("retry_scheduled", step_id, status=status, message=d.reason)
            return
        if d.action == "skip":
            self._update(step_id, status="skipped", message=d.reason)
            self._emit("step_skipped", step_id, status="skipped", message=d.reason)
            return
        if d.action == "escalate":
            self._escalate(step_id, d.reason)
            return
        if d.reason:
            self._update(step_id, message=f"{st.message}; {d.reason}" if st.message else d.reason)
        if d.action == "abort" or self.s.workflow.on_failure_of(step) == "abort":
            self._abort(
                f"step {step_id} {status}" + (f" ({d.reason})" if d.rule is not None else "")
            )

    def _abort(self, why: str) -> None:
        self.aborting = why
        self._emit("run_aborting", message=why)
        for other, ost in self.state.steps.items():
            if ost.status == "running" and ost.kill_reason is None:
                self._update(
                    other, kill_reason="abort", kill_sent_at=now(), message=f"run aborted: {why}"
                )
                self._signal(other, signal.SIGTERM)

    # --- starting steps -------------------------------------------------------------------

    def _satisfied(self, need: str) -> bool:
        st = self.state.steps[need]
        return st.status == "succeeded" or (st.status == "running" and st.ready_at is not None)

    def _end_services(self) -> None:
        """Once every other step is over, stop the services (they are done, not failed)."""
        services = {s.id for s in self.s.workflow.steps if s.service}
        if not services:
            return
        others_over = all(
            st.status in FINAL for k, st in self.state.steps.items() if k not in services
        )
        if not others_over:
            return
        for step_id in services:
            st = self.state.steps[step_id]
            if st.status == "pending":
                why = "no step needs it any more"
                self._update(step_id, status="skipped", message=why)
                self._emit("step_skipped", step_id, status="skipped", message=why)
            elif st.status == "running" and st.kill_reason is None:
                self._update(step_id, kill_reason="end", kill_sent_at=now())
                self._emit("service_stopping", step_id, message="the run is over")
                self._signal(step_id, signal.SIGTERM)

    def _start_ready(self) -> None:
        self._end_services()
        # A ready service holds no place: it only waits for its users.
        running = sum(
            1 for st in self.state.steps.values() if st.status == "running" and st.ready_at is None
        )
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
            if not all(self._satisfied(n) for n in planned.needs):
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
        env = self._step_env(step)
        command = self._render(st.run_override or planned.run, env)
        header = f"# agentflow step {planned.id}, attempt {attempt}, run {self.state.run_id}\n"
        stepfiles.prepare(step_dir, st.attempts, f"{header}{command}\n", wrapper_script())
        env.update(
            AGENTFLOW_RUN_ID=self.state.run_id,
            AGENTFLOW_STEP=planned.id,
            AGENTFLOW_ATTEMPT=str(attempt),
        )
        if self.s.secrets:
            # Values go only to the step's environment; the wrapper masks them in its output.
            env.update(self.s.secrets, AGENTFLOW_SECRETS=" ".join(self.s.secrets))
        workdir = self._workdir(step, env)
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
            ready_at=None,
            progress=None,
            output_bytes=0,
            last_output_at=None,
        )
        self.clocks[planned.id] = StepClock(self.expected.get(planned.id))
        self.schedule.changed()
        self._emit("step_started", planned.id, status="running")

    def _step_env(self, step: Step) -> dict[str, str]:
        """The step's environment. Like shell assignments: ${{ env.X }} reads what is set
        above it (the workflow's env, then the step's, in the order written), else the
        caller's environment; then what a recover: rule or the model set for later attempts."""
        env: dict[str, str] = {}
        for key, value in [*self.s.workflow.env.items(), *step.env.items()]:
            env[key] = self._render(value, env)
        env.update(self.state.steps[step.id].env_overrides)
        return env

    def _rendered(self, model: M, env: dict[str, str]) -> M:
        """A ready/success/outputs block with its ${{ }} expressions filled in."""

        def walk(value: object) -> object:
            if isinstance(value, str):
                return self._render(value, env)
            if isinstance(value, dict):
                return {k: walk(v) for k, v in value.items()}
            if isinstance(value, list):
                return [walk(v) for v in value]
            return value

        return type(model).model_validate(walk(model.model_dump(by_alias=True)))

    def _workdir(self, step: Step, env: dict[str, str]) -> str:
        """The step's working directory inside the sandbox."""
        return self.s.sandbox.workdir(self._render(step.workdir, env) if step.workdir else None)

    def _where(self, step: Step, env: dict[str, str]) -> Where:
        """The step's folder inside the sandbox and on the host (for probes and checks),
        and its environment (commands of probes and checks see what the step sees)."""
        host_dir = self.s.workspace
        if step.workdir:
            host_dir = self.s.workspace / self._render(step.workdir, {})
        return Where(
            box=self.s.sandbox,
            workdir=self._workdir(step, {}),
            host_dir=host_dir,
            root=self.s.workspace,
            log=self.s.run.step_dir(step.id) / "output.log",
            env=env,  # not the secrets: checks do not need them
        )

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


def _lines(text: str) -> list[str]:
    return (text if text.endswith("\n") else text + "\n").splitlines(keepends=True)
