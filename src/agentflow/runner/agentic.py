"""The model's part in a run: asking it about a failure off the runner's thread, with a
snapshot of the run to look at; collecting its answer, its transcript and its cost; and
handing the decision to ``Acting``, which carries it out."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from pydantic import JsonValue

from agentflow.agent.decision import problems
from agentflow.agent.diagnose import Diagnosis, Failure, build_context
from agentflow.agent.loop import LoopExhausted
from agentflow.agent.loop import Step as LoopStep
from agentflow.agent.tools import Scene
from agentflow.errors import AgentflowError, first_line
from agentflow.recovery import Decision as RecoveryDecision
from agentflow.runner.acting import Acting
from agentflow.runner.base import (
    DIAGNOSIS_DEADLINE,
    MAX_DECISIONS_PER_RUN,
    MAX_DECISIONS_PER_STEP,
    Asked,
)
from agentflow.state import StepStatus, now
from agentflow.verify import tail
from agentflow.workflow.model import Step
from agentflow.workflow.types import format_duration, parse_duration


class Agentic(Acting):
    """Diagnoses by the model: asking it, collecting its answers and their transcripts."""

    def _diagnose(self, step_id: str, step: Step, status: StepStatus, code: int | None) -> None:
        """Ask the model, within the guardrails; its answer is carried out when it comes."""
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
        # The model is asked off the runner's thread: while it looks around and thinks,
        # the runner goes on enforcing timeouts, probes and stop requests. The step waits,
        # pending, and its dependents with it; the answer is carried out at the next look.
        env = self._step_env(step)
        scene = Scene(
            workspace=self.s.workspace,
            workflow=self.s.workflow,
            redact=self.redactor,
            hidden=self.hidden,
            runbooks=self.s.runbooks,
            sandbox=self.s.sandbox,
            run=self.s.run,
            plan=self.s.plan,
            state=self.state,  # a snapshot: states are never changed, only replaced
            step=step_id,
            env=env,
            workdir=self._workdir(step, env),
        )
        # The loop keeps its own deadline; this one holds should a request hang past it.
        limits = diagnoser.limits
        deadline = max(DIAGNOSIS_DEADLINE, limits.seconds + limits.request_timeout + 30)
        self.diagnoses[step_id] = Asked(
            status, st.message, now() + timedelta(seconds=deadline),
            diagnoser.ask(context, self._rules(step_id), scene, self.wake),
        )  # fmt: skip
        self._update(step_id, status="pending", message="diagnosing: the model is looking")
        self._emit("diagnosis_started", step_id, status=status)

    def _collect_diagnoses(self) -> None:
        """Carry out the model's answers that have come (on the runner's thread)."""
        self._collect_holds()
        self._count_usage()
        for step_id, asked in list(self.diagnoses.items()):
            late = not asked.answer.done() and now() >= asked.deadline
            if not asked.answer.done() and not late:
                continue
            self._undiagnosed(step_id)
            if self.aborting is not None:
                continue
            if late:
                took = format_duration((now() - asked.asked_at).total_seconds())
                self._escalate(step_id, f"the model did not answer within {took}")
                continue
            try:
                diagnosis = asked.answer.result()
            except LoopExhausted as e:
                e.transcript = self._masked(e.transcript)  # before anything is cut
                self._transcript(step_id, e.transcript)
                self._emit(
                    "agent_exhausted",
                    step_id,
                    message=str(e),
                    data={"reason": str(e), "tools": _tools(e.transcript),
                          "usage": e.usage.model_dump()},
                )  # fmt: skip
                self._escalate(step_id, f"the model did not decide ({e}); {e.found()}")
                continue
            except AgentflowError as e:  # the API down, the key refused, an unusable answer
                self._escalate(step_id, f"the model could not decide: {first_line(e)}")
                continue
            except Exception as e:  # whatever else an answer did: the run goes on
                self._escalate(
                    step_id,
                    f"the model's answer could not be handled ({type(e).__name__}: "
                    f"{first_line(e)[:200]})",
                )
                continue
            diagnosis.outcome.transcript = self._masked(diagnosis.outcome.transcript)
            self._transcript(step_id, diagnosis.outcome.transcript)
            self._decided(step_id, asked.status, diagnosis)

    def _count_usage(self) -> None:
        """What the model has cost so far, into the checkpoint (a diagnosis counts when
        its answer comes, and also when it is dropped: late, aborted, stopped)."""
        diagnoser = self.s.diagnoser
        if diagnoser is None:
            return
        llm = diagnoser.llm
        usage = self.usage_base + llm.usage
        if usage != self.state.usage or llm.used != self.state.tokens_used:
            self.state = self.state.with_run(tokens_used=llm.used, usage=usage)

    def _masked(self, transcript: list[LoopStep]) -> list[LoopStep]:
        """The transcript with secrets masked: before anything is cut from it, so that no
        cut leaves the first part of a secret showing."""
        r = self.redactor
        return [LoopStep(s.tool, r.deep(s.input), r(s.result), s.error) for s in transcript]

    def _transcript(self, step_id: str, transcript: list[LoopStep]) -> None:
        for entry in transcript:
            what = entry.tool if entry.tool == "text" else f"{entry.tool} {_shown(entry.input)}"
            self._emit("agent_tool", step_id, message=what, data=entry.event_data())

    def _undiagnosed(self, step_id: str) -> None:
        """The step is no longer waiting for the model: back to how its attempt ended."""
        asked = self.diagnoses.pop(step_id)
        self._update(step_id, status=asked.status, message=asked.message)

    def _decided(self, step_id: str, status: StepStatus, diagnosis: Diagnosis) -> None:
        d, out = diagnosis.decision, diagnosis.outcome
        st = self.state.steps[step_id]
        self.state = self.state.with_run(decisions=self.state.decisions + 1)
        self._update(step_id, decisions=st.decisions + 1)
        data: dict[str, JsonValue] = {
            **d.model_dump(mode="json"),
            "turns": out.turns,
            "tools": _tools(out.transcript),
            "usage": out.usage.model_dump(),
        }
        self._emit(
            "diagnosis",
            step_id,
            status=status,
            message=f"{d.action}: {d.diagnosis} "
            f"[{d.category or 'uncategorised'}; {out.usage.tokens} tokens]",
            data=data,
        )
        wrong = problems(d.model_dump(exclude_none=True), self._rules(step_id))
        if wrong:  # the run moved on while the model thought (a file changed, a step ran)
            self._escalate(step_id, f"the model's decision cannot be carried out: {wrong[0]}")
            return
        wait = parse_duration(d.wait) if d.wait else 0.0
        step = self.s.workflow.step(step_id)
        if d.action == "retry":
            self._apply(step_id, step, status, RecoveryDecision("retry", "the model: retry", wait))
        elif d.action == "retry_with_changes":
            self._change(step_id, d, wait)
        elif d.action == "rerun":
            self._rerun(step_id, d)
        elif d.action == "escalate":
            self._escalate(step_id, f"the model: {d.question or d.diagnosis}")
        elif d.action == "skip":
            self._skip(step_id, step, status, d)
        else:
            self._apply(step_id, step, status, RecoveryDecision("abort", "the model: abort"))


def _tools(transcript: list[LoopStep]) -> list[JsonValue]:
    return [s.tool for s in transcript if s.tool != "text"]


def _shown(args: dict[str, Any]) -> str:
    return json.dumps(args, ensure_ascii=False)[:200]
