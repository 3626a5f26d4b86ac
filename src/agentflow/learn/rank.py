"""The candidates to learn: a run's recoveries, one per step and fix, the most repeated
(over every run of the workflow) first; and, for each, its symptom and the rule it can be."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from agentflow.errors import AgentflowError, StateError, WorkflowError
from agentflow.learn.recoveries import Recovery, find_recoveries
from agentflow.learn.symptom import MATCH_BYTES, attempt_log, match_for, plain, symptom_line
from agentflow.state import RunState
from agentflow.store import RunDir, Store
from agentflow.verify import tail
from agentflow.workflow import Workflow, parse_workflow
from agentflow.workflow.model import RecoverRule


class NothingToLearn(AgentflowError):
    """The run has no failure that a rule or a diagnosis turned into a success."""


@dataclass
class Candidate:
    """One fix to learn: the latest recovery of its kind in the run, and how often the same
    fix of the same step got a run of this workflow through."""

    recovery: Recovery
    seen_in: list[str]
    """The runs (this one included) where the same step was fixed the same way."""
    times: int
    symptom: str | None = None
    rule: RecoverRule | None = None
    """The rule to propose (None: none can be, see ``notes``)."""
    notes: list[str] = field(default_factory=list)


def _runs_of(store: Store, name: str, skip: str) -> list[tuple[RunDir, RunState]]:
    out = []
    for other in store.list():
        if other.run_id == skip:
            continue
        try:
            st = other.read_state()
        except AgentflowError:
            continue
        if st.workflow == name:
            out.append((other, st))
    return out


def _frozen(run: RunDir) -> Callable[[], Workflow | None]:
    cache: list[Workflow | None] = []

    def read() -> Workflow | None:
        if not cache:
            try:
                text = run.workflow_path.read_text(encoding="utf-8")
                cache.append(parse_workflow(text, str(run.workflow_path), bare_seconds=True))
            except (OSError, WorkflowError):
                cache.append(None)
        return cache[0]

    return read


def _planned(run: RunDir) -> Callable[[str], str | None]:
    """The commands the run's steps were planned with (``plan.json``, written by
    agentflow, not by a step); read once, when first asked."""
    cache: list[dict[str, str]] = []

    def command(step: str) -> str | None:
        if not cache:
            try:
                cache.append({s.id: s.run for s in run.read_plan().steps})
            except StateError:
                cache.append({})
        return cache[0].get(step)

    return command


def _recoveries(run: RunDir, state: RunState) -> list[Recovery]:
    events = run.read_events()
    done = state.status == "succeeded"
    return find_recoveries(run.run_id, events, _frozen(run), done, _planned(run))


def rank(store: Store, run: RunDir, state: RunState) -> list[Candidate]:
    """The run's recoveries, one per step and fix, the most repeated first (counted over
    every run of the workflow in this home), then in the order they happened."""
    mine = _recoveries(run, state)
    if not mine:
        going = f" (it is {state.status}: try again when it is over)" if not state.finished else ""
        raise NothingToLearn(
            f"run {run.run_id} recovered from nothing: no rule or diagnosis led to a success"
            + going
        )
    groups: dict[tuple[object, ...], Candidate] = {}
    for r in mine:
        key = (r.step, r.fix.key)
        if key in groups:
            groups[key].recovery = r  # the latest: its log is the freshest
            groups[key].times += 1
        else:
            groups[key] = Candidate(r, [run.run_id], 1)
    for other, st in _runs_of(store, state.workflow, run.run_id):
        for r in _recoveries(other, st):
            c = groups.get((r.step, r.fix.key))
            if c is not None:
                c.times += 1
                if other.run_id not in c.seen_in:
                    c.seen_in.append(other.run_id)
    order = list(groups.values())
    return sorted(order, key=lambda c: -c.times)  # stable: ties keep the run's order


def describe(c: Candidate, run: RunDir, state: RunState) -> None:
    """The candidate's symptom line, and the rule to propose for it."""
    r, fix = c.recovery, c.recovery.fix
    failed = tail(attempt_log(run, state, r.step, r.attempt), MATCH_BYTES)
    after = None
    if fix.action == "retry":
        after = tail(attempt_log(run, state, r.step, r.attempt + 1), MATCH_BYTES)
    if fix.rule is not None:
        c.symptom = symptom_line(failed, after, fix.rule.match)
        c.rule = fix.rule
        return
    volatile = (str(run.path.resolve()), str(run.path), run.run_id)
    c.symptom = symptom_line(failed, after, volatile=volatile)
    cannot = fix.why_no_rule(r.step)
    if cannot is not None:
        c.notes.append(f"no rule: {cannot}")
        return
    if c.symptom is None:
        c.notes.append(
            f"no rule: no line of the failed log tells this failure apart ({r.status}); "
            "a status is for retry: {on: [...]}, a wrong result for success:"
        )
        return
    pattern = match_for(c.symptom, volatile)
    if not re.search(pattern, failed, re.MULTILINE):
        pattern = plain(c.symptom)
        if not re.search(pattern, failed, re.MULTILINE):  # control codes inside the line
            c.notes.append("no rule: the line, cleaned up, is not in the log as written")
            return
    if after is not None and re.search(pattern, after, re.MULTILINE):
        c.notes.append(
            "no rule: the line is in the log of the attempt that succeeded too, so a rule "
            "matching it would match any failure"
        )
        return
    c.rule = RecoverRule(match=pattern, action=fix.action, set_env=fix.set_env, wait=fix.wait)


def has_rule(
    rules: list[RecoverRule], new: RecoverRule, c: Candidate, run: RunDir, state: RunState
) -> bool:
    """Whether the step has this rule already: the same one, or one that matches the
    failed attempt's log and does the same."""
    r = c.recovery
    failed = tail(attempt_log(run, state, r.step, r.attempt), MATCH_BYTES)
    for old in rules:
        same = (old.action, old.set_env, old.wait) == (new.action, new.set_env, new.wait)
        if not same:
            continue
        if old.match == new.match:
            return True
        with contextlib.suppress(re.error):
            if re.search(old.match, failed, re.MULTILINE):
                return True
    return False
