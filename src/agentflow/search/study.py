"""The Optuna study of a search: its sampler and pruner from the workflow's ``search:``, the
trials asked one by one (ask/tell), and the values a trial's run reports while it goes.

The study lives in an SQLite file, so everything it learned survives the process that
follows the search; ``Trials`` reconciles it with the sweep record when it is opened again
(a trial asked but never given a run failed; a run that ended while nobody followed it is
told now). Only this module (and ``report``) import Optuna: it is slow to import.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from agentflow.sweep import Member, SweepRecord
from agentflow.workflow.search import Choice, IntRange, LogRange, Prune, Search

if TYPE_CHECKING:
    from agentflow.workflow.model import Objective

STUDY_NAME = "search"

optuna.logging.set_verbosity(logging.WARNING)
# Features an older Optuna calls experimental (constant_liar) work: no warning per trial.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def distributions(search: Search) -> dict[str, BaseDistribution]:
    out: dict[str, BaseDistribution] = {}
    for name, param in search.space.items():
        if isinstance(param, Choice):
            out[name] = CategoricalDistribution(param.choice)
        elif isinstance(param, IntRange):
            out[name] = IntDistribution(*param.int_range)
        elif isinstance(param, LogRange):
            out[name] = FloatDistribution(*param.log_range, log=True)
        else:
            out[name] = FloatDistribution(*param.range)
    return out


def sampler_for(search: Search) -> optuna.samplers.BaseSampler:
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    # TPE learns from a few random trials first: a third of a small budget, at most 10
    # (Optuna's default), so that a budget of 12 is not all random.
    startup = max(2, min(10, search.trials // 3))
    return optuna.samplers.TPESampler(
        seed=search.seed,
        n_startup_trials=startup,
        # Trials still running count as if they had the worst value seen: parallel
        # trials are not all asked at the same point.
        constant_liar=search.parallel > 1,
    )


def pruner_for(prune: Prune | None) -> optuna.pruners.BasePruner:
    if prune is None or prune.pruner == "none":
        return optuna.pruners.NopPruner()
    percentile = 50.0 if prune.pruner == "median" else prune.percentile
    return optuna.pruners.PercentilePruner(
        percentile,
        n_startup_trials=prune.startup_trials,
        n_warmup_steps=prune.warmup_steps,
        interval_steps=prune.interval,
    )


def open_study(path: Path, search: Search, objective: Objective) -> optuna.Study:
    """The study in ``path`` (made when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.create_study(
        storage=f"sqlite:///{path}",
        study_name=STUDY_NAME,
        direction=objective.goal,
        sampler=sampler_for(search),
        pruner=pruner_for(search.prune),
        load_if_exists=True,
    )


def set_value(value: Any) -> str:
    """A sampled value as ``--set`` text (six significant digits for a float)."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


class Trials:
    """The record's members and the study's trials, one for one."""

    def __init__(
        self, study: optuna.Study, search: Search, objective: Objective, record: SweepRecord
    ) -> None:
        self.study = study
        self.search = search
        self.record = record
        self.dists = distributions(search)
        # The prune metric's values go to the study in the objective's sense.
        self.flip = search.prune is not None and search.prune.goal != objective.goal
        self.handles: dict[int, optuna.trial.Trial] = {}
        self.reported: dict[int, int] = {}
        """Member index → the last step number given to its trial."""
        self._reconcile()

    def _reconcile(self) -> None:
        frozen = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        owned = {m.trial for m in self.record.members if m.trial is not None}
        for number, t in frozen.items():
            if t.state == TrialState.RUNNING and number not in owned:
                # Asked, then the follower died before the record named it: no run.
                self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        for m in self.record.members:
            mine = frozen.get(m.trial if m.trial is not None else -1)
            if mine is None:
                continue
            t = mine
            if t.state == TrialState.RUNNING:
                if m.status in ("succeeded", "failed", "blocked", "pruned"):
                    self.tell(m)
                else:
                    self.handles[m.index] = optuna.trial.Trial(self.study, t._trial_id)
                    if t.intermediate_values:
                        self.reported[m.index] = max(t.intermediate_values)

    def ask(self) -> Member:
        """A new member, with the values the sampler proposes."""
        trial = self.study.ask(self.dists)
        index = len(self.record.members) + 1
        values = {k: set_value(trial.params[k]) for k in self.search.space}
        member = Member(index=index, values=dict(values), trial=trial.number)
        self.handles[index] = trial
        return member

    def report(self, member: Member, step: int, value: float) -> bool:
        """Give the trial a new value at ``step``; True when it should be pruned."""
        trial = self.handles.get(member.index)
        if trial is None or step <= self.reported.get(member.index, -1):
            return False
        self.reported[member.index] = step
        trial.report(-value if self.flip else value, step)
        return trial.should_prune()

    def tell(self, member: Member) -> None:
        """How the member's run ended: its score, pruned, or failed (no score)."""
        if member.trial is None:
            return
        self.handles.pop(member.index, None)
        if member.status == "pruned":
            self.study.tell(member.trial, state=TrialState.PRUNED, skip_if_finished=True)
        elif (
            member.status == "succeeded"
            and member.score is not None
            and math.isfinite(member.score)
        ):
            self.study.tell(member.trial, member.score, skip_if_finished=True)
        else:
            self.study.tell(member.trial, state=TrialState.FAIL, skip_if_finished=True)


def importances(study: optuna.Study) -> dict[str, float] | None:
    """Each input's share of the objective's variance (fANOVA); None with too few
    finished trials, or when Optuna cannot tell."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(done) < 3:
        return None
    try:
        found = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError, ZeroDivisionError):
        return None
    return {k: float(v) for k, v in found.items()}
