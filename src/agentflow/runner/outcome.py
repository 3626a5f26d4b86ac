"""The end of an attempt: its status (checks, outputs), then what to do when it went
wrong: recover rules, the retry policy, the model's diagnosis, escalation, abort."""

from __future__ import annotations

import signal
from datetime import datetime

from pydantic import JsonValue

from agentflow import stepfiles
from agentflow.recovery import decide
from agentflow.report.text import cause_lines
from agentflow.runner import metering
from agentflow.runner.agentic import Agentic
from agentflow.runner.base import SANDBOX_LOSSES
from agentflow.runner.caching import store_result
from agentflow.state import UNSUCCESSFUL, StepState, StepStatus, now
from agentflow.verify import OutputError, read_outputs, success_checks, tail
from agentflow.viewparts import CAUSE
from agentflow.workflow.model import Step


class Outcomes(Agentic):
    """Judging ended attempts and recovering from failed ones."""

    def _attempt_ended(self, step_id: str, code: int, ended: datetime | None) -> None:
        st = self.state.steps[step_id]
        step = self.s.workflow.step(step_id)
        self._look_at_output(step_id, final=True)  # the last lines: final progress, metrics
        status, message = self._judge(step, st, code)
        lost = self._output_lost(step_id)
        self.tidy_soon.add(step_id)  # (after the launches its end allows)
        self._keep_window(st.window)
        if lost:
            message = f"{message}; {lost}" if message else lost
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
        cause = None if st.kill_reason in ("stop", "abort") else self._cause(step_id, status)
        self._emit(
            "step_finished", step_id, status=status, exit_code=code, message=message, data=cause
        )
        if step.service and st.kill_reason != "end":
            self._fail_dependents(step_id, f"service {step_id} stopped ({message or status})")
        if status == "succeeded":
            store_result(self, step_id)
            self._patch_result(step_id, succeeded=True)
            self.state = self.state.with_run(consecutive_failures=0)
            return
        if st.kill_reason in ("stop", "abort", "end"):
            return  # ("end": a service whose artifacts failed; nothing needs it any more)
        self._not_succeeded(step_id, status, code)

    def _cause(self, step_id: str, status: str) -> dict[str, JsonValue] | None:
        """The last meaningful lines of a failed attempt's log (masked), for the event
        that says it failed: shown under it in the live view and plain lines."""
        if status not in UNSUCCESSFUL:
            return None
        lines = cause_lines(self.s.run.step_dir(step_id) / "output.log", self.redactor)
        return {CAUSE: list[JsonValue](lines)} if lines else None

    def _output_lost(self, step_id: str) -> str | None:
        """Whether the wrapper recorded that output.log lost output: then an event and a
        note say so (the step's status is what it is; its log is not all it printed)."""
        writer = stepfiles.output_incomplete(self.s.run.step_dir(step_id))
        if writer is None:
            return None
        if writer > 128:
            note = f"output.log may be incomplete: its writer was stopped (signal {writer - 128})"
        else:
            note = "output.log is incomplete: a write failed (disk full?)"
        self._emit("output_incomplete", step_id, message=note)
        return note

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
            problem = self._collect_artifacts(step)  # a service's: when it is stopped
            if problem:
                return "failed", problem
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
            check = success_checks(self._rendered(step.success, env, step.id), where)
            if not check.ok:
                self._emit("check_failed", step.id, message=check.detail)
                return "failed", check.detail
            if check.measured:  # what was measured, also when it passed (for the report)
                self._emit("metrics_checked", step.id, message="; ".join(check.measured))
        outputs: dict[str, str] | None = None
        if step.outputs and not step.service:
            try:
                rendered = {k: self._rendered(v, env, step.id) for k, v in step.outputs.items()}
                outputs = read_outputs(rendered, where)
            except OutputError as e:
                return "failed", f"outputs: {e}"
        followed = metering.last_values(self, step.id)  # an output declared by name wins
        if followed and not step.service:
            outputs = {**followed, **(outputs or {})}
        problem = self._collect_artifacts(step)
        if problem:
            return "failed", problem
        if outputs is not None:
            masked = {k: self.redactor(v) for k, v in outputs.items()}
            if masked != outputs:
                self.uncacheable[step.id] = "an output holds a secret's value"
            outputs = masked
            self._update(step.id, outputs=outputs)
            shown = ", ".join(f"{k}={v}" for k, v in outputs.items())
            self._emit("outputs", step.id, message=shown)
        return "succeeded", None

    def _fail_dependents(self, service: str, why: str) -> None:
        """A service went away: the running steps that need it cannot go on."""
        for s in self.s.workflow.steps:
            st = self.state.steps[s.id]
            if service in s.needs and st.status == "running" and st.kill_reason is None:
                self._update(s.id, kill_reason="dependency", kill_sent_at=now(), message=why)
                self._emit("dependency_lost", s.id, message=why)
                self._signal(s.id, signal.SIGTERM)

    def _not_succeeded(self, step_id: str, status: StepStatus, code: int | None) -> None:
        """What follows an attempt that ended without success (not stopped by agentflow):
        run again after a resume, run again at no cost when it went down with its
        sandbox, else the step's failure (recover rules, retries, the model)."""
        if self._resuming:
            self._requeue(step_id, f"{status} while agentflow was away")
            return
        gone = self.sandbox_losses.get(step_id, 0)
        if status == "crashed" and gone < SANDBOX_LOSSES and not self.s.sandbox.healthy():
            # It went down with its sandbox (a Docker daemon restarting): not the step's
            # failure, so no retry is spent; it starts again once the sandbox is back. (A
            # few times only: a step that brings its own container down is failing.)
            self.sandbox_losses[step_id] = gone + 1
            self._requeue(step_id, "crashed with its sandbox: it runs again, no retry spent")
            return
        self._after_failure(step_id, status, code)

    def _requeue(self, step_id: str, why: str) -> None:
        # A resume redoes whatever did not succeed: no retry allowance is needed for it.
        self._update(step_id, status="pending", message=None)
        self._emit("step_requeued", step_id, message=why)

    def _crashed(self, step_id: str, why: str) -> None:
        self._sandbox_checked = False  # the sandbox itself may be gone (container killed)
        self._ended_by_scheduler(step_id, "crashed", why)

    def _ended_by_scheduler(self, step_id: str, status: StepStatus, why: str) -> None:
        """An attempt ended by its surroundings, not by the step: the machine or container
        went away, or a batch scheduler ended the job (``crashed``, ``timeout``, ``failed``)."""
        # Whatever the attempt left running must not overlap its retry.
        self._signal(step_id, signal.SIGKILL)
        code, _ = self._exit_code(step_id)
        self._update(
            step_id, status=status, finished_at=now(), message=why, kill_reason=None,
            exit_code=code, kill_sent_at=None,
        )  # fmt: skip
        self.clocks.pop(step_id, None)
        self.next_probe.pop(step_id, None)
        self.schedule.changed()
        cause = self._cause(step_id, status)
        self._emit("step_finished", step_id, status=status, exit_code=code, message=why, data=cause)
        if self.s.workflow.step(step_id).service:
            self._fail_dependents(step_id, f"service {step_id} stopped ({why})")
        self._not_succeeded(step_id, status, code)

    def _after_failure(self, step_id: str, status: StepStatus, code: int | None) -> None:
        # (Here, not where any attempt ends: one that went down with its sandbox runs
        # again as it was, patch included.)
        self._patch_result(step_id, succeeded=False)
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
