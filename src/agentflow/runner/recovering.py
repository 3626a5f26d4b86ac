"""Carrying out a recovery decision (from a ``recover:`` rule, the retry policy or the
model): retry, skip, escalate to a person, or abort the run."""

from __future__ import annotations

import signal
from datetime import timedelta

from agentflow.recovery import Decision as RecoveryDecision
from agentflow.runner.windows import Windows
from agentflow.state import StepStatus, now
from agentflow.workflow.model import Step


class Recovering(Windows):
    """What every kind of recovery ends with."""

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
