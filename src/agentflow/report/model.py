"""What a report says: ``report.json`` as pydantic models, and what every format reads."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, Field, JsonValue

from agentflow.artifacts import Artifact
from agentflow.lean import LeanModel
from agentflow.series import Series
from agentflow.state import UNSUCCESSFUL, Usage
from agentflow.store import Event
from agentflow.workflow.model import Scalar

DECISION_KINDS = frozenset(
    {
        "retry_scheduled",
        "rule_matched",
        "diagnosis",
        "command_proposed",
        "command_approved",
        "command_refused",
        "escalated",
        "run_aborting",
        "step_requeued",
        "dependency_lost",
        "timeout",
        "stall",
        "not_ready",
        "agent_exhausted",
        "patch_applied",
        "rerun_scheduled",
        "inputs_changed",
    }
)
"""Events that record what agentflow (or the model) decided about a step."""

UNFINISHED = frozenset({"pending", "running"})
NOT_RUN = frozenset({"skipped", "pending"})


class ReportModel(LeanModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Attempt(ReportModel):
    """One attempt of a step, from its ``step_started`` to its ``step_finished`` event."""

    number: int
    started_at: datetime
    finished_at: datetime | None = None
    """None while it runs (or when its end was never recorded)."""
    status: str
    """How it ended (``succeeded``, ``failed``, …), ``running``, or ``unknown``."""
    exit_code: int | None = None
    message: str | None = None
    ready_at: datetime | None = None
    """When a service's readiness probe passed during this attempt."""
    gpus: list[str] = Field(default_factory=list)
    """The pool's GPUs the attempt was given (``resources.gpus``)."""
    cpus: list[int] = Field(default_factory=list)
    """The pool's CPUs the attempt was pinned to (``resources.cpus``)."""


class MetricResult(ReportModel):
    """A ``success.metrics`` check of the step's latest attempt."""

    name: str
    file: str
    key: str
    min: float | None = None
    max: float | None = None
    result: Literal["passed", "failed", "not checked"]
    detail: str | None = None
    """What the check found (recorded only when it failed)."""

    @property
    def bounds(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f"≥ {self.min:g}")
        if self.max is not None:
            parts.append(f"≤ {self.max:g}")
        return ", ".join(parts) or "a number"


class StepReport(ReportModel):
    id: str
    status: str
    service: bool = False
    attempts: int
    exit_code: int | None
    started_at: datetime | None
    """The latest attempt's start."""
    finished_at: datetime | None
    duration_s: float | None
    """The latest attempt's duration."""
    time_s: float | None = None
    """All attempts together (the time the step kept something busy)."""
    outputs: dict[str, str]
    message: str | None
    log: str
    """The latest attempt's ``output.log``."""
    history: list[Attempt] = Field(default_factory=list)
    metrics: list[MetricResult] = Field(default_factory=list)
    artifacts: list[Artifact] = Field(default_factory=list)
    """The files its ``artifacts:`` kept (``artifacts.json``): copied into the run
    directory, or recorded by path, size and sha256 only."""
    log_tail: str | None = None
    """The end of the log of a step that did not succeed (cleaned of colour codes)."""
    series: list[Series] = Field(default_factory=list)
    """Its ``expect.metrics`` over time (``metrics/<step>.json``)."""
    ports: dict[str, int] = Field(default_factory=dict)
    """The loopback ports it was given (``ports:``), by name."""

    @property
    def ready_after_s(self) -> float | None:
        """How long the latest attempt of a service took to become ready."""
        ready = next((a for a in reversed(self.history) if a.ready_at), None)
        if not self.service or ready is None or ready.ready_at is None:
            return None
        return max(0.0, (ready.ready_at - ready.started_at).total_seconds())

    @property
    def went_wrong(self) -> bool:
        return self.status in UNSUCCESSFUL or self.status == "blocked"


class ToolCall(ReportModel):
    """One entry of the agent's transcript (an ``agent_tool`` event): a look-around tool the
    model called and what it got back (bounded), or its own words (``tool`` is ``text``)."""

    at: datetime
    tool: str
    input: dict[str, JsonValue] = Field(default_factory=dict)
    result: str = ""
    error: bool = False


class Diagnosis(ReportModel):
    """One time the model was asked about a failed step: what it looked at, what it decided
    and what that cost."""

    kind: Literal["diagnosis", "agent_exhausted", "unfinished"]
    """A decision; a cap reached before one (the step escalated); or tool calls with no
    decision after them (the run stopped, or the model is still at it)."""
    step: str | None
    attempt: int | None = None
    at: datetime
    """When it was decided (for ``unfinished``, the last tool call)."""
    action: str | None = None
    diagnosis: str | None = None
    category: str | None = None
    reason: str | None = None
    """Why an ``agent_exhausted`` stopped (which cap)."""
    message: str | None = None
    """The event's sentence, as the timeline shows it."""
    decision: dict[str, JsonValue] = Field(default_factory=dict)
    """The decision's fields as recorded (``submit_decision``'s, null when not given)."""
    turns: int | None = None
    tools: list[str] = Field(default_factory=list)
    """The tools called, in order."""
    usage: Usage | None = None
    """Its tokens and estimated cost; None when not recorded (a run from before)."""
    transcript: list[ToolCall] = Field(default_factory=list)

    @property
    def outcome(self) -> str:
        """What came of it, in a few words: the action, or why there is none."""
        if self.kind == "agent_exhausted":
            return "gave up (escalated)"
        if self.kind == "unfinished":
            return "no decision recorded"
        return self.action or "decided"


class ModelUse(ReportModel):
    """What the model did and cost in the run: planning and diagnoses."""

    usage: Usage = Field(default_factory=Usage)
    """The whole run's, by kind of token, with the estimated cost (``state.json``'s)."""
    tokens_used: int = 0
    """The run's token count as the checkpoint keeps it (also runs from before ``usage``)."""
    diagnoses: list[Diagnosis] = Field(default_factory=list)

    @property
    def used(self) -> bool:
        return bool(self.usage.calls or self.usage.tokens or self.tokens_used or self.diagnoses)


class Report(ReportModel):
    """``report.json``: the run's outcome in a form tools can read."""

    run_id: str
    workflow: str
    workflow_file: str = ""
    status: str
    """The run's status; ``orphaned`` when it says running but its orchestrator is gone."""
    message: str | None
    inputs: dict[str, Scalar]
    created_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    """Start to end; for a run that has not ended, start to ``timeline_end``."""
    timeline_end: datetime
    """The end of the time the report covers (the run's end, or now while it runs)."""
    generated_at: datetime
    counts: dict[str, int] = Field(default_factory=dict)
    """How many steps are in each status, most important first."""
    resume: str | None = None
    """The command that continues the run, when it did not succeed."""
    steps: list[StepReport]
    events: list[Event]
    llm: ModelUse = Field(default_factory=ModelUse)
    """What the model did (each diagnosis with its transcript) and what it cost."""

    @property
    def decisions(self) -> list[Event]:
        """Retries, recover rules, the model's diagnoses and proposals, escalations, and
        the skips they caused."""
        found: list[Event] = []
        last_kind: dict[str, str] = {}
        for e in self.events:
            after_decision = last_kind.get(e.step or "") in ("rule_matched", "diagnosis")
            if e.kind in DECISION_KINDS or (e.kind == "step_skipped" and after_decision):
                found.append(e)
            if e.step:
                last_kind[e.step] = e.kind
        return found

    @property
    def reason(self) -> str | None:
        """Why the run is in its status, in a few words: its message, or which steps went
        wrong."""
        if self.message:
            return self.message
        troubled = self.troubled
        if self.status == "succeeded" or not troubled:
            return None
        if len(troubled) == 1:
            only = troubled[0]
            return f"{only.id} {only.status}" + (f": {only.message}" if only.message else "")
        named = ", ".join(f"{s.id} {s.status}" for s in troubled[:3])
        return named + (f" and {len(troubled) - 3} more" if len(troubled) > 3 else "")

    @property
    def artifacts(self) -> list[tuple[str, Artifact]]:
        """Every step's artifacts, as (step id, artifact)."""
        return [(s.id, a) for s in self.steps for a in s.artifacts]

    @property
    def troubled(self) -> list[StepReport]:
        """The steps that failed or need a person."""
        return [s for s in self.steps if s.went_wrong]
