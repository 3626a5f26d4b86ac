"""Diagnosis of a failed step by the model (``on_failure: diagnose``).

The context is bounded whatever the log's size: the step, its script, how it ended, the
head and tail of its log, the lines that look like errors (with a little context), earlier
attempts and decisions, and the runbooks' failure-mode sections; secrets are masked
before anything leaves the process. From there the model looks around with the agent
loop's tools and ends with one ``submit_decision`` call.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agentflow.agent import logscan
from agentflow.agent.decision import SUBMIT_DECISION, Decision, Rules, parse, problems
from agentflow.agent.llm import LLM
from agentflow.agent.loop import Limits, Outcome, ToolLoop
from agentflow.agent.tools import Scene, Toolbox
from agentflow.redact import Redactor
from agentflow.runbook import bounded
from agentflow.store import Event
from agentflow.workflow.model import Step

CHARS_PER_TOKEN = 4
DEFAULT_BUDGET_TOKENS = 6000
SYSTEM = """\
You are the recovery engineer of agentflow. A step of an engineering workflow failed. The \
account below is bounded (the log is cut). Investigate before you decide: read the files \
the traceback names (read_file, grep), the step's facts and its dependents (step_info), \
any step's log (read_log), the sandbox (sandbox_info: mounts, free disk, listening ports), \
a service (http_get), a command's flags (command_help). Then call submit_decision with one \
action: retry (a transient failure); retry_with_changes (a corrected `run`, `env` with \
`scope: downstream` when the steps after it need the same, a `patch` to workspace files, \
or `inputs` to change for the rest of the run, e.g. a port); rerun (succeeded upstream \
steps that produced something bad, named in `rerun`); skip (the step does not matter); \
abort (nothing can work); escalate (a person must decide: put the question in \
`question`). Prefer the runbook's documented fixes; change as little as works."""


@dataclass(frozen=True)
class Diagnosis:
    """The model's decision and how it got there (transcript, turns, cost)."""

    decision: Decision
    outcome: Outcome


@dataclass(frozen=True)
class Failure:
    """What the diagnosis is about."""

    step: Step
    script: str
    status: str
    exit_code: int | None
    message: str | None
    attempts: int
    log: Path


def build_context(
    failure: Failure,
    history: list[Event],
    runbooks: list[Path],
    redact: Redactor,
    budget_tokens: int = DEFAULT_BUDGET_TOKENS,
    workspace: Path | None = None,
) -> str:
    """The account of the failure, at most ``budget_tokens`` (≈ 4 characters a token)."""
    budget = budget_tokens * CHARS_PER_TOKEN
    step = failure.step
    about = {
        "step": step.id,
        "description": step.description,
        "task": step.task,
        "status": failure.status,
        "exit_code": failure.exit_code,
        "message": failure.message,
        "attempts so far": failure.attempts,
    }
    log = logscan.read(failure.log)
    earlier = [
        f"{e.ts:%H:%M:%S} attempt {e.attempt}: {e.kind} {e.status or ''} {e.message or ''}".strip()
        for e in history
        if e.step == step.id and e.kind not in ("step_started", "agent_tool")
    ][-12:]
    errors = "\n---\n".join(log.errors)
    if log.more_shapes:
        errors += f"\n[... and {log.more_shapes} more kinds of error line]"
    # In order of importance, each with its share of the budget and the end it keeps when
    # cut (a log's tail its end, the rest their start); what a part leaves unused goes to
    # the parts that need more, in this order.
    parts = [
        Part("The step", json.dumps({k: v for k, v in about.items() if v is not None}), 0.1),
        Part("Its script", failure.script, 0.12),
        Part(f"End of its log ({log.size} bytes in all)", log.tail, 0.3, keep="end"),
        Part("Lines that look like errors, each kind once (with context)", errors, 0.2),
        Part("Start of its log", log.head, 0.06),
        Part("Earlier attempts and decisions", "\n".join(earlier), 0.07, keep="end"),
        Part(
            "Runbook failure modes",
            bounded(runbooks, budget // 4, failures_only=True, root=workspace),
            0.15,
        ),
    ]
    return fit([p.masked(redact) for p in parts], budget)


CUT = "[... cut ...]"


@dataclass(frozen=True)
class Part:
    """One section of the account: a title, its text, its share of the budget, and which
    end of the text it keeps when cut."""

    title: str
    text: str
    share: float
    keep: Literal["start", "end"] = "start"

    def masked(self, redact: Redactor) -> Part:
        return Part(self.title, redact(self.text), self.share, self.keep)

    def cut(self, limit: int) -> str:
        if len(self.text) <= limit:
            return self.text
        room = max(0, limit - len(CUT) - 1)
        if self.keep == "end":
            return f"{CUT}\n{self.text[len(self.text) - room :]}"
        return f"{self.text[:room]}\n{CUT}"


def fit(parts: list[Part], budget: int) -> str:
    """The parts within ``budget`` characters: each gets its share, and what a part does
    not use is given to the parts that need more, most important first."""
    parts = [p for p in parts if p.text]
    headers = sum(len(p.title) + 6 for p in parts)  # "## ", "\n", "\n\n" between
    room = max(0, budget - headers)
    limits = [min(len(p.text), int(room * p.share)) for p in parts]
    left = room - sum(limits)
    for i, p in enumerate(parts):
        more = min(left, len(p.text) - limits[i])
        limits[i] += more
        left -= more
    text = "\n\n".join(f"## {p.title}\n{p.cut(n)}" for p, n in zip(parts, limits, strict=True))
    return text[:budget]


class Diagnoser:
    """Asks the model for a decision about a failure: it looks around with the tools over
    ``scene`` (none: it decides from the account alone), then decides."""

    def __init__(
        self,
        llm: LLM,
        budget_tokens: int = DEFAULT_BUDGET_TOKENS,
        limits: Limits | None = None,
    ) -> None:
        self.llm = llm
        self.budget_tokens = budget_tokens
        self.limits = limits or Limits()

    def ask(
        self,
        context: str,
        rules: Rules,
        scene: Scene | None = None,
        done: Callable[[], None] | None = None,
    ) -> Future[Diagnosis]:
        """``decide`` on a thread of its own, so that the runner never waits for the model;
        ``done`` is called when the answer (or the error) is there."""
        answer: Future[Diagnosis] = Future()

        def run() -> None:
            try:
                answer.set_result(self.decide(context, rules, scene))
            except BaseException as e:  # handed to the runner, which says what it was
                answer.set_exception(e)
            finally:
                if done is not None:
                    done()

        threading.Thread(target=run, name="agentflow-diagnosis", daemon=True).start()
        return answer

    def decide(self, context: str, rules: Rules, scene: Scene | None = None) -> Diagnosis:
        tools = Toolbox(scene) if scene is not None else None
        loop = ToolLoop(
            self.llm, tools, SUBMIT_DECISION, lambda data: problems(data, rules), self.limits
        )
        outcome = loop.run(SYSTEM, context)
        return Diagnosis(parse(outcome.action), outcome)
