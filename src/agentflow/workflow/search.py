"""The workflow's ``search:`` block: an adaptive search (``agentflow search``) over some of
its inputs, against its ``objective``, with a trial budget, a sampler and a pruner.

Its own module, not ``model.py``'s: that module is the rest of the format and is long enough.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from agentflow.workflow.base import Model
from agentflow.workflow.types import StepId

if TYPE_CHECKING:
    from agentflow.workflow.model import Workflow

Number = int | float
SearchScalar = str | int | float | bool


class _Bounds(Model):
    @model_validator(mode="after")
    def _ordered(self) -> _Bounds:
        lo, hi = self.bounds()
        if not lo < hi:
            raise ValueError(f"the low end ({lo}) must be below the high end ({hi})")
        return self

    def bounds(self) -> tuple[Number, Number]:
        raise NotImplementedError


class Range(_Bounds):
    """A number drawn uniformly from ``[lo, hi]``."""

    range: tuple[float, float]
    """``[lo, hi]``."""

    def bounds(self) -> tuple[Number, Number]:
        return self.range


class LogRange(_Bounds):
    """A number drawn uniformly on a log scale from ``[lo, hi]`` (both above 0): a
    learning rate."""

    log_range: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]]
    """``[lo, hi]``, both above 0."""

    def bounds(self) -> tuple[Number, Number]:
        return self.log_range


class IntRange(_Bounds):
    """An integer from ``lo`` to ``hi``, both included."""

    int_range: tuple[int, int]
    """``[lo, hi]``."""

    def bounds(self) -> tuple[Number, Number]:
        return self.int_range


class Choice(Model):
    """One of a list of values (unordered: the sampler learns which is good)."""

    choice: Annotated[list[SearchScalar], Field(min_length=1)]
    """The values."""


KINDS = ("range", "log_range", "int_range", "choice")


def _kind(value: Any) -> str | None:
    # One key names the kind: its errors are that kind's, not four models' at once.
    if isinstance(value, dict):
        return next((k for k in KINDS if k in value), None)
    return next((k for k in KINDS if hasattr(value, k)), None)


Param = Annotated[
    Annotated[Range, Tag("range")]
    | Annotated[LogRange, Tag("log_range")]
    | Annotated[IntRange, Tag("int_range")]
    | Annotated[Choice, Tag("choice")],
    Discriminator(
        _kind,
        custom_error_type="search_space",
        custom_error_message="give one of range, log_range, int_range or choice",
    ),
]


class Prune(Model):
    """Stopping clearly worse trials early, from a metric series a step reports while it
    runs (its ``expect.metrics``): each new value is given to the trial at its step number,
    and a trial whose value is worse than the ``percentile`` of the other trials' values at
    the same step (the median by default) is stopped and ends ``pruned``."""

    metric: str
    """A metric of some step's ``expect.metrics`` (``loss``)."""
    step: StepId | None = None
    """The step that reports it; by default the first step whose ``expect.metrics`` has it."""
    goal: Literal["minimize", "maximize"] = "minimize"
    """Whether smaller (a loss) or larger values of this metric are better; it may differ
    from the objective's goal (a lower loss for a higher speedup)."""
    pruner: Literal["median", "percentile", "none"] = "median"
    """``median``, ``percentile`` (``percentile`` below), or ``none`` (report the series,
    prune nothing: a baseline)."""
    percentile: float = Field(default=50.0, gt=0, lt=100)
    """With ``pruner: percentile``: a trial goes on only while it is within the best
    ``percentile`` percent of the other trials at the same step (25: the best quarter;
    50 is the median)."""
    startup_trials: int = Field(default=3, ge=0)
    """No trial is pruned before this many trials have finished (there is nothing to
    compare with)."""
    warmup_steps: int = Field(default=0, ge=0)
    """No trial is pruned at a step number below this (early values are noisy)."""
    interval: int = Field(default=1, ge=1)
    """Pruning is considered every this many step numbers."""


class Search(Model):
    """An adaptive search over inputs (``agentflow search``): trials are runs, each with
    values the sampler chose for the ``space``, ranked by the workflow's ``objective``."""

    trials: int = Field(ge=1)
    """How many trials (runs) in all."""
    parallel: int = Field(default=1, ge=1)
    """The most trials at once."""
    seed: int | None = None
    """The sampler's seed: the same seed proposes the same first trials."""
    sampler: Literal["tpe", "random"] = "tpe"
    """``tpe`` (Optuna's Tree-structured Parzen Estimator: it learns from finished trials)
    or ``random``."""
    space: Annotated[dict[str, Param], Field(min_length=1)]
    """Input name → where its values come from: ``{range: [lo, hi]}``, ``{log_range: [lo,
    hi]}``, ``{int_range: [lo, hi]}`` or ``{choice: [a, b, ...]}``."""
    prune: Prune | None = None
    """Stop clearly worse trials early (see ``Prune``); none by default."""


Loc = tuple[str | int, ...]


def search_problems(workflow: Workflow) -> Iterator[tuple[Loc, str]]:
    """What a search needs: an objective, inputs for its space (an integer input takes
    ``int_range`` or ``choice``), and a pruning metric some step reports."""
    search = workflow.search
    if search is None:
        return
    if workflow.objective is None:
        yield ("search",), "a search needs an `objective:` (the output to maximize or minimize)"
    known = list(workflow.inputs)
    for name, param in search.space.items():
        loc: Loc = ("search", "space", name)
        if name not in workflow.inputs:
            hint = difflib.get_close_matches(name, known, n=1)
            tail = (
                f" (did you mean '{hint[0]}'?)"
                if hint
                else f" (inputs: {', '.join(known) or 'none'})"
            )
            yield loc, f"the search space names '{name}', which is no declared input{tail}"
        elif workflow.inputs[name].kind == "integer" and isinstance(param, Range | LogRange):
            yield loc, f"input '{name}' is an integer: give it int_range or choice"
    prune = search.prune
    if prune is None:
        return
    reporting = [s.id for s in workflow.steps if s.expect and prune.metric in s.expect.metrics]
    if prune.step is not None:
        if prune.step not in {s.id for s in workflow.steps}:
            yield ("search", "prune", "step"), f"no step '{prune.step}'"
        elif prune.step not in reporting:
            yield (
                ("search", "prune", "metric"),
                f"step '{prune.step}' reports no metric '{prune.metric}' (its expect.metrics)",
            )
    elif not reporting:
        yield (
            ("search", "prune", "metric"),
            f"no step reports a metric '{prune.metric}' to prune by (expect.metrics)",
        )


def pruning_step(workflow: Workflow, prune: Prune) -> str | None:
    """The step whose series ``prune`` reads."""
    if prune.step is not None:
        return prune.step
    return next(
        (s.id for s in workflow.steps if s.expect and prune.metric in s.expect.metrics), None
    )
