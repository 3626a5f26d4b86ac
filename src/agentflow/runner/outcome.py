"""The end of an attempt: its status (checks, outputs), then what to do when it went
wrong: recover rules, the retry policy, the model's diagnosis, escalation, abort."""

from __future__ import annotations

import difflib
import re
import signal
from datetime import datetime, timedelta

from agentflow import artifacts, stepfiles
from agentflow.agent.diagnose import Decision as ModelDecision
from agentflow.agent.diagnose import Failure, build_context
from agentflow.agent.llm import BudgetExceeded, ToolCall
from agentflow.artifacts import ArtifactError, Collector
from agentflow.errors import AgentflowError
from agentflow.recovery import Decision as RecoveryDecision
from agentflow.recovery import decide
from agentflow.runner.base import (
    DIAGNOSIS_DEADLINE,
    MAX_DECISIONS_PER_RUN,
    MAX_DECISIONS_PER_STEP,
    SANDBOX_LOSSES,
    Asked,
    RunnerBase,
)
from agentflow.settings import settings
from agentflow.state import StepState, StepStatus, now
from agentflow.template import TemplateSyntaxError, references
from agentflow.verify import OutputError, read_outputs, success_checks, tail
from agentflow.workflow.model import Step
from agentflow.workflow.types import ENV_PATTERN, format_duration, parse_duration


class Outcomes(RunnerBase):
    """Judging ended attempts and recovering from failed ones."""

    def _attempt_ended(self, step_id: str, code: int, ended: datetime | None) -> None:
        st = self.state.steps[step_id]
        step = self.s.workflow.step(step_id)
        self._look_at_output(step_id)  # the last lines: final progress
        status, message = self._judge(step, st, code)
        lost = self._output_lost(step_id)
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
        self._emit("step_finished", step_id, status=status, exit_code=code, message=message)
        if step.service and st.kill_reason != "end":
            self._fail_dependents(step_id, f"service {step_id} stopped ({message or status})")
        if status == "succeeded":
            self.state = self.state.with_run(consecutive_failures=0)
            return
        if st.kill_reason in ("stop", "abort", "end"):
            return  # ("end": a service whose artifacts failed; nothing needs it any more)
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
            check = success_checks(self._rendered(step.success, env), where)
            if not check.ok:
                self._emit("check_failed", step.id, message=check.detail)
                return "failed", check.detail
            if check.measured:  # what was measured, also when it passed (for the report)
                self._emit("metrics_checked", step.id, message="; ".join(check.measured))
        outputs: dict[str, str] | None = None
        if step.outputs and not step.service:
            try:
                rendered = {k: self._rendered(v, env) for k, v in step.outputs.items()}
                outputs = read_outputs(rendered, where)
            except OutputError as e:
                return "failed", f"outputs: {e}"
        problem = self._collect_artifacts(step)
        if problem:
            return "failed", problem
        if outputs is not None:
            outputs = {k: self.redactor(v) for k, v in outputs.items()}
            self._update(step.id, outputs=outputs)
            shown = ", ".join(f"{k}={v}" for k, v in outputs.items())
            self._emit("outputs", step.id, message=shown)
        return "succeeded", None

    def _collect_artifacts(self, step: Step) -> str | None:
        """Keep the step's ``artifacts`` with the run (its attempt succeeded so far); what
        went wrong, or None. The manifest and an ``artifacts`` event record them."""
        if not step.artifacts:
            return None
        env = self._step_env(step)
        patterns = [self._render(p, env) for p in step.artifacts]
        home = self.s.run.path.parent.parent
        collector = Collector(
            root=self.s.workspace,
            step_dir=self._where(step, env).host_dir,
            dest=self.s.run.path / artifacts.COPY_DIR / step.id,
            copy_max=settings().artifact_copy_max,
            exclude=(home,),
        )
        try:
            files, skipped = collector.collect(patterns)
            collected = artifacts.StepArtifacts(
                attempt=self.state.steps[step.id].attempts,
                collected_at=now(),
                patterns=patterns,
                files=files,
                skipped=skipped,
            )
            artifacts.save(self.s.run, step.id, collected, self.redactor)
        except ArtifactError as e:
            return str(e)
        except OSError as e:  # the manifest cannot be written (a full disk)
            return f"artifacts: cannot record them in the run directory ({e.strerror or e})"
        self._emit("artifacts", step.id, message=artifacts.summary(collected))
        return None

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
        self._emit("step_finished", step_id, status=status, exit_code=code, message=why)
        if self.s.workflow.step(step_id).service:
            self._fail_dependents(step_id, f"service {step_id} stopped ({why})")
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
            count = max(st.decisions, self.state.decisions)
            self._escalate(step_id, f"the model has already decided {count} times (the limit)")
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
            failure, self.s.run.read_events(), self.s.runbooks, self.redactor,
            diagnoser.budget_tokens, self.s.workspace,
        )  # fmt: skip
        # The model is asked off the runner's thread: while it thinks, the runner goes on
        # enforcing timeouts, probes and stop requests. The step waits, pending, and its
        # dependents with it; the answer is carried out at the runner's next look.
        self.diagnoses[step_id] = Asked(
            status, st.message, now() + timedelta(seconds=DIAGNOSIS_DEADLINE),
            diagnoser.ask(context, self.wake),
        )  # fmt: skip
        self._update(step_id, status="pending", message="diagnosing: the model is looking")
        self._emit("diagnosis_started", step_id, status=status)

    def _collect_diagnoses(self) -> None:
        """Carry out the model's answers that have come (on the runner's thread)."""
        for step_id, asked in list(self.diagnoses.items()):
            late = not asked.answer.done() and now() >= asked.deadline
            if not asked.answer.done() and not late:
                continue
            self._undiagnosed(step_id)
            if self.aborting is not None:
                continue
            if late:
                self._escalate(
                    step_id,
                    f"the model did not answer within {format_duration(DIAGNOSIS_DEADLINE)}",
                )
                continue
            step = self.s.workflow.step(step_id)
            try:
                decision, call = asked.answer.result()
            except BudgetExceeded as e:
                self._escalate(step_id, str(e))
                continue
            except AgentflowError as e:  # the API down, the key refused, an unusable answer
                self._escalate(step_id, f"the model could not decide: {str(e).splitlines()[0]}")
                continue
            self._decided(step_id, step, asked.status, decision, call)

    def _undiagnosed(self, step_id: str) -> None:
        """The step is no longer waiting for the model: back to how its attempt ended."""
        asked = self.diagnoses.pop(step_id)
        self._update(step_id, status=asked.status, message=asked.message)

    def _decided(
        self, step_id: str, step: Step, status: StepStatus, decision: ModelDecision, call: ToolCall
    ) -> None:
        st = self.state.steps[step_id]
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
        try:
            wait = parse_duration(decision.wait) if decision.wait else 0.0
        except ValueError:
            wait = 0.0  # a wait we cannot read is no reason to stop the run
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
        """Carry out the model's changed command and/or environment, once checked and
        approved by a person (or --yes): the model's words never run unseen."""
        st = self.state.steps[step_id]
        old = st.run_override or self._planned_run(step_id)
        new = decision.run if decision.run and decision.run.strip() != old.strip() else None
        env = decision.env or {}
        problem = self._check_model_change(new, env)
        if problem:
            self._escalate(step_id, f"the model proposed a change that cannot run: {problem}")
            return
        proposal = "".join(
            difflib.unified_diff(_lines(old), _lines(new or old), "planned", "proposed")
        ) + "".join(f"+env {k}={v}\n" for k, v in env.items())
        self._emit("command_proposed", step_id, message=proposal)
        approve = self.s.approve
        if approve is None or not approve(step_id, old, (new or old) + _env_lines(env)):
            why = "needs approval" if approve is None else "was refused"
            self._escalate(
                step_id,
                f"the model's change {why}: see the proposal in the events "
                "(approve with --yes, or in a terminal)",
            )
            return
        changes: dict[str, object] = {
            "status": "pending",
            "env_overrides": {**st.env_overrides, **env},
            "not_before": now() + timedelta(seconds=wait),
            "message": "retry with the model's changes",
        }
        if new is not None:
            changes["run_override"] = new
        self._update(step_id, **changes)
        shown = ", ".join(f"{k}={v}" for k, v in env.items())
        self._emit(
            "retry_scheduled",
            step_id,
            message="retry with the model's changes" + (f" (env {shown})" if shown else ""),
        )

    def _check_model_change(self, run: str | None, env: dict[str, str]) -> str | None:
        """Why a change the model proposes must not run, or None."""
        for name in env:
            if not re.fullmatch(ENV_PATTERN, name):
                return f"{name!r} is not an environment variable name"
            if name in _HOST_ENV or name.startswith(_HOST_ENV_PREFIXES):
                return f"it may not set {name} (it changes how programs start, not the step)"
            if name in self.s.secrets:
                return f"it may not set the secret {name}"
        if run is not None:
            try:
                refs = list(references(run))
            except TemplateSyntaxError as e:
                return str(e)
            for ref in refs:
                if ref.kind == "inputs" and ref.names[0] not in self.s.plan.inputs:
                    return f"unknown input {ref.names[0]!r}"
                if ref.kind == "env" and ref.names[0] in self.s.secrets:
                    return f"${{{{ env.{ref.names[0]} }}}} would write a secret into files"
                if ref.kind == "steps" and ref.names[0] not in self.state.steps:
                    return f"unknown step {ref.names[0]!r}"
        return None

    def _escalate(self, step_id: str, why: str) -> None:
        message = f"a person must decide: {why}"
        self._update(step_id, status="blocked", message=message)
        self._emit("escalated", step_id, status="blocked", message=message)

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


_HOST_ENV = frozenset(
    {"BASH_ENV", "ENV", "PATH", "IFS", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND", "HOME",
     "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PERL5OPT", "NODE_OPTIONS", "RUBYOPT"}
)  # fmt: skip
_HOST_ENV_PREFIXES = ("LD_", "DYLD_", "DOCKER_", "TMUX", "AGENTFLOW_")


def _env_lines(env: dict[str, str]) -> str:
    return "".join(f"\n# env {k}={v}" for k, v in env.items())


def _lines(text: str) -> list[str]:
    return (text if text.endswith("\n") else text + "\n").splitlines(keepends=True)
