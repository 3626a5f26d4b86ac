"""The checkpoint: a run's state, saved as ``state.json`` after every change.

``RunState`` and ``StepState`` are frozen; each change makes a new value through the
functions here, so a state is always complete and consistent when it is written.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, Field, NonNegativeInt

from agentflow.lean import LeanModel
from agentflow.workflow.model import Scalar

RunStatus = Literal["running", "succeeded", "failed", "interrupted", "blocked"]
StepStatus = Literal[
    "pending",
    "running",
    "succeeded",
    "failed",
    "crashed",
    "timeout",
    "stalled",
    "skipped",
    "blocked",
]
KillReason = Literal["timeout", "stall", "not_ready", "dependency", "end", "stop", "abort"]
"""Why agentflow stopped a step: its timeout, no output for stall_timeout, a service not
ready in time, a service it needs died, the run ended (services), a person, on_failure."""

DONE: frozenset[str] = frozenset({"succeeded"})
"""A step in this status never runs again, not even on resume."""
UNSUCCESSFUL: frozenset[str] = frozenset({"failed", "crashed", "timeout", "stalled"})
"""The end of an attempt that went wrong."""
FINAL: frozenset[str] = frozenset(
    {"succeeded", "failed", "crashed", "timeout", "stalled", "skipped", "blocked"}
)
"""A step in this status has nothing more to do in this run (until a resume)."""


def now() -> datetime:
    return datetime.now(UTC)


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(3000, 1, 1, tzinfo=UTC)


def _plausible(value: datetime) -> datetime:
    """A time of a run, comparable with every other: one without a zone (written by hand
    or by another tool) is taken as UTC. Outside 1970–2999 it is refused (the checkpoint is
    damaged): adding a timeout to the year 9999, or showing the year 1 in a zone west of
    UTC, overflows."""
    if value.tzinfo is None or value.utcoffset() is None:
        value = value.replace(tzinfo=UTC)
    if not EARLIEST <= value < LATEST:
        raise ValueError(f"{value.isoformat()} is not a time of a run (1970 to 2999)")
    return value.astimezone(UTC)


Timestamp = Annotated[datetime, AfterValidator(_plausible)]
"""A point in time as the checkpoint, the events and the plan keep it."""


class StateModel(LeanModel):
    # No NaN or infinity: agentflow never writes one (JSON has none; pydantic would write
    # null), so one read back was put there by someone else.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class StepState(StateModel):
    """Where one step stands."""

    status: StepStatus = "pending"
    attempts: NonNegativeInt = 0
    """Attempts started so far, in this run and its resumes."""
    retries: NonNegativeInt = 0
    """Retries used since the run (or its latest resume) began; the retry limit counts these."""
    exit_code: int | None = None
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    outputs: dict[str, str] = Field(default_factory=dict)
    message: str | None = None
    """Why the step is in its status, for a person (e.g. which dependency failed)."""
    window: str | None = None
    """The tmux window id (``@12``) of the current attempt."""
    kill_reason: KillReason | None = None
    """Set when agentflow has asked the step's processes to stop, and why."""
    kill_sent_at: Timestamp | None = None
    not_before: Timestamp | None = None
    """A retry waits until then (back-off)."""
    ready_at: Timestamp | None = None
    """When a service's readiness probe passed (its dependents may start)."""
    progress: Progress | None = None
    """Done/total from the step's output, with an ETA."""
    output_bytes: NonNegativeInt = 0
    """How much of the current attempt's output.log has been looked at."""
    last_output_at: Timestamp | None = None
    """When the current attempt last printed something (for stall detection)."""
    env_overrides: dict[str, str] = Field(default_factory=dict)
    """Environment set for later attempts by a ``recover:`` rule."""
    rule_uses: dict[str, NonNegativeInt] = Field(default_factory=dict)
    """How often each ``recover:`` rule (by index) has retried this step."""
    run_override: str | None = None
    """A command the model wrote for later attempts (approved), instead of the plan's."""
    decisions: NonNegativeInt = 0
    """How often the model has decided about this step."""
    cached_from: str | None = None
    """The run whose cached result this step took instead of running (``cache:``)."""
    fresh: bool = False
    """Run for real, never from the cache: a person asked for it (``rerun``, or a
    ``resume --reload`` that changed the step)."""
    patch_undo: str | None = None
    """The run directory's record of a patch the model applied before the current attempt:
    taken back when that attempt fails."""
    metrics: dict[str, MetricSummary] = Field(default_factory=dict)
    """Each ``expect.metrics`` series in short: its last value and shape (the whole series
    is in ``metrics/<step>.json``)."""
    gpus: list[str] = Field(default_factory=list)
    """The pool's GPUs the latest attempt was given (``resources.gpus``, ``agentflow.pool``)."""
    cpus: list[int] = Field(default_factory=list)
    """The pool's CPUs the latest attempt was pinned to (``resources.cpus``)."""
    ports: dict[str, int] = Field(default_factory=dict)
    """The loopback ports agentflow chose for the step's ``ports:`` names (kept by resume
    and rerun: the same for the whole run)."""


class MetricSummary(StateModel):
    """A metric series in short, for the live view and ``status``."""

    last: float
    """The latest value."""
    shape: list[float] = Field(default_factory=list)
    """A few values spread evenly over the series, the latest last (a sparkline's)."""
    count: NonNegativeInt = 0
    """How many values the step reported."""


class Progress(StateModel):
    """A step's progress as its output shows it."""

    done: float
    total: float | None = None
    """None when the pattern gives a percentage (then ``done`` is the percentage)."""
    eta_s: float | None = None
    """Seconds left, estimated from the pace so far."""

    @property
    def fraction(self) -> float | None:
        if self.total:
            return max(0.0, min(1.0, self.done / self.total))
        if self.total is None:
            return max(0.0, min(1.0, self.done / 100))
        return None


class Usage(StateModel):
    """What the model was asked and what it cost: tokens by kind and an estimated price."""

    calls: NonNegativeInt = 0
    input_tokens: NonNegativeInt = 0
    """Tokens sent that were neither read from nor written to the prompt cache."""
    output_tokens: NonNegativeInt = 0
    cache_read_tokens: NonNegativeInt = 0
    cache_write_tokens: NonNegativeInt = 0
    cost_usd: float = 0.0
    """Estimated from the model's list prices (``agent/pricing.py``)."""

    @property
    def tokens(self) -> int:
        sent = self.input_tokens + self.cache_read_tokens + self.cache_write_tokens
        return sent + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            calls=self.calls + other.calls,
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            cost_usd=round(self.cost_usd + other.cost_usd, 6),
        )


class RunState(StateModel):
    """Where a run stands: the content of ``state.json``."""

    version: Literal[1] = 1
    run_id: str
    workflow: str
    """The workflow's name."""
    workflow_file: str
    """The workflow file the run was started from (a copy is in the run directory)."""
    workspace: str
    """The folder steps run in (the workflow file's folder)."""
    status: RunStatus = "running"
    sandbox: str = "local"
    planner: str = "static"
    inputs: dict[str, Scalar] = Field(default_factory=dict)
    created_at: Timestamp = Field(default_factory=now)
    updated_at: Timestamp = Field(default_factory=now)
    finished_at: Timestamp | None = None
    message: str | None = None
    consecutive_failures: NonNegativeInt = 0
    """Failed attempts in a row, across steps (the breaker)."""
    tokens_used: NonNegativeInt = 0
    """Tokens the model has used for this run (planning and diagnoses; ``usage`` has them
    by kind)."""
    decisions: NonNegativeInt = 0
    """How often the model has decided about a failure in this run."""
    usage: Usage = Field(default_factory=Usage)
    """What the model cost this run: planning and diagnoses, by kind of token."""
    no_cache: bool = False
    """``--no-cache``: no step of this run is taken from the cache (kept by ``resume``,
    which can also set it; results are still stored)."""
    input_overrides: dict[str, Scalar] = Field(default_factory=dict)
    """Inputs the model changed (approved) for the rest of the run: every later command,
    probe and check is rendered with these."""
    steps: dict[str, StepState]

    def step(self, step_id: str) -> StepState:
        return self.steps[step_id]

    def with_step(self, step_id: str, **changes: object) -> RunState:
        """A new state with one step changed."""
        step = self.steps[step_id].model_copy(update=changes)
        return self.model_copy(update={"steps": {**self.steps, step_id: step}, "updated_at": now()})

    def with_run(self, **changes: object) -> RunState:
        return self.model_copy(update={**changes, "updated_at": now()})

    def count(self, *statuses: str) -> int:
        return sum(1 for s in self.steps.values() if s.status in statuses)

    @property
    def finished(self) -> bool:
        return all(s.status in FINAL for s in self.steps.values())

    def outcome(self) -> RunStatus:
        """The run's status once no step can move any more."""
        if any(s.status == "blocked" for s in self.steps.values()):
            return "blocked"
        if any(s.status in UNSUCCESSFUL for s in self.steps.values()):
            return "failed"
        return "succeeded"


def prepare_resume(state: RunState) -> RunState:
    """A run being resumed: every step that did not succeed (and is not running) will run
    again, with its retry allowance renewed."""
    steps = {}
    for step_id, st in state.steps.items():
        if st.status in DONE or st.status == "running":
            steps[step_id] = st.model_copy(update={"retries": 0})
        else:
            steps[step_id] = st.model_copy(
                update={
                    "status": "pending",
                    "retries": 0,
                    "message": None,
                    "not_before": None,
                    "rule_uses": {},
                }
            )
    return state.model_copy(
        update={
            "steps": steps,
            "consecutive_failures": 0,
            "status": "running",
            "finished_at": None,
            "message": None,
            "updated_at": now(),
        }
    )


def with_dependents(needs: Mapping[str, Sequence[str]], names: Collection[str]) -> list[str]:
    """``names`` and every step that needs one of them, directly or not, in the order of
    ``needs`` (a plan's run order, where a step comes after what it needs)."""
    found: list[str] = []
    for step_id, its_needs in needs.items():
        if step_id in names or any(n in found for n in its_needs):
            found.append(step_id)
    return found


def rerun_changes(message: str, *, fresh: bool = True) -> dict[str, object]:
    """What a step run again starts from: pending, without its last result (its attempts,
    logs and earlier outputs stay in the run's step folders). ``fresh``: for real, never
    from the cache."""
    return {
        "status": "pending",
        "message": message,
        "exit_code": None,
        "not_before": None,
        "ready_at": None,
        "outputs": {},
        "fresh": fresh,
    }


def reset_for_rerun(state: RunState, step_ids: Sequence[str], message: str) -> RunState:
    """``state`` with ``step_ids`` to run again, for real (``rerun``, ``resume --reload``)."""
    for step_id in step_ids:
        state = state.with_step(step_id, **rerun_changes(message), retries=0)
    return state
