"""What happened in a run: the failed attempts that a decision (a ``recover:`` rule that
matched, or the model's diagnosis) turned into a success, read from ``events.jsonl``.

A decision is learned only when what it started ended in a success: the next attempt of
the step succeeded (a retry, with or without changes, or after its upstream steps ran
again), or, for a ``skip``, the run did. A decision followed by another failure (an
investigation that only printed something, a fix that did not work) is dropped with it."""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from agentflow.learn.fix import Fix
from agentflow.learn.transcript import (
    Decision,
    changed_lines,
    cited,
    decision,
    names,
    patched_files,
)
from agentflow.state import UNSUCCESSFUL
from agentflow.store import Event
from agentflow.workflow import Workflow, parse_duration

_RULE = re.compile(r"recover rule (\d+) matched")
_ENV_LINE = re.compile(r"\+env ([A-Za-z_][A-Za-z0-9_]*)=(.*)")
_RUN_LEVEL = ("rerun_scheduled", "inputs_changed")


@dataclass(frozen=True)
class Recovery:
    """A failed attempt of a step, and the fix that got the step (or the run) through."""

    run_id: str
    step: str
    attempt: int
    """The attempt that failed."""
    status: str
    message: str | None
    """The step's note for that attempt (``exit code 1``)."""
    fix: Fix


@dataclass
class _Pending:
    """A failed attempt, and what has been decided and done about it so far."""

    attempt: int
    status: str
    message: str | None
    rule_number: int | None = None
    decision: Decision | None = None
    proposal: str | None = None
    retry_message: str | None = None
    carried_out: bool = False
    """A retry (or a rerun of upstream steps, then the step) was scheduled."""
    files: tuple[str, ...] | None = None
    """What ``patch_applied`` says the patch changed."""
    inputs: dict[str, str] | None = None
    """What ``inputs_changed`` says was changed."""
    cited: list[str] = field(default_factory=list)


Planned = Callable[[str], str | None]
"""The command a step was planned with (``plan.json``), None when unknown."""


def find_recoveries(
    run_id: str,
    events: list[Event],
    workflow: Callable[[], Workflow | None],
    succeeded: bool,
    planned: Planned = lambda _: None,
) -> list[Recovery]:
    """The recoveries in one run's events, in order. ``workflow`` gives the run's own
    workflow (read only when a rule's content is needed)."""
    pending: dict[str, _Pending] = {}
    found: list[Recovery] = []
    skips: list[Recovery] = []
    decided: str | None = None  # the step of the latest decision
    for e in events:
        if e.step is None:
            # A rerun or an input change may be recorded for the run: it carries out the
            # latest decision.
            if e.kind in _RUN_LEVEL and decided in pending:
                _note(pending[decided], e)
            continue
        decided = e.step if e.kind == "diagnosis" else decided
        p = pending.get(e.step)
        if e.kind == "step_finished":
            if e.status in UNSUCCESSFUL:
                pending[e.step] = _Pending(e.attempt or 0, e.status or "failed", e.message)
            elif e.status == "succeeded":
                pending.pop(e.step, None)
                if p is not None and p.carried_out and (e.attempt or 0) > p.attempt:
                    fix = _fix(p, e.step, workflow, planned)
                    if fix is not None:
                        found.append(Recovery(run_id, e.step, p.attempt, p.status, p.message, fix))
            continue
        if p is None:
            continue
        if e.kind == "step_skipped":
            fix = _fix(p, e.step, workflow, planned, skip=True)
            if fix is not None:
                skips.append(Recovery(run_id, e.step, p.attempt, p.status, p.message, fix))
            pending.pop(e.step, None)
        elif e.kind in ("escalated", "step_requeued", "agent_exhausted"):
            pending.pop(e.step, None)  # a person decides, or a resume reruns it: no fix
        else:
            _note(p, e)
    # A skip got the run through only if the run succeeded.
    return found + skips if succeeded else found


def _note(p: _Pending, e: Event) -> None:
    """What an event after the failure says about the decision and its carrying out."""
    data = e.data or {}
    if e.kind == "rule_matched":
        m = _RULE.search(e.message or "")
        p.rule_number = int(m.group(1)) if m else None
    elif e.kind == "agent_tool" and not data.get("error"):
        phrase = cited(str(data.get("tool")), data.get("input"), e.step or "", p.attempt)
        if phrase is not None:
            p.cited.append(phrase)
    elif e.kind == "diagnosis":
        p.decision = decision(e)
    elif e.kind == "command_proposed":
        p.proposal = e.message or ""
    elif e.kind == "patch_applied":
        p.files = names(data.get("files"))
    elif e.kind == "inputs_changed" and isinstance(changed := data.get("inputs"), dict):
        p.inputs = {k: _text(v) for k, v in changed.items()}
    elif e.kind in ("retry_scheduled", "rerun_scheduled"):
        p.retry_message = e.message or ""
        p.carried_out = True


def _fix(
    p: _Pending,
    step: str,
    workflow: Callable[[], Workflow | None],
    planned: Planned,
    skip: bool = False,
) -> Fix | None:
    action: Literal["retry", "skip"] = "skip" if skip else "retry"
    if p.rule_number is not None:
        wf = workflow()
        rule = None
        if wf is not None:
            with contextlib.suppress(KeyError, IndexError):
                rule = wf.step(step).recover[p.rule_number - 1]
        if rule is None:
            return None
        return Fix("rule", action, dict(rule.set_env), rule=rule, rule_number=p.rule_number)
    d = p.decision
    if d is None:
        return None  # the retry policy, or a person: nothing was decided about this failure
    if skip:
        if d.action != "skip":
            return None
        return Fix("model", "skip", diagnosis=d.diagnosis, category=d.category)
    if d.action not in ("retry", "retry_with_changes", "rerun"):
        return None
    if not d.recorded:  # a run from before events had data: the runner's own messages
        env, diff = _model_changes(p.proposal or "", p.retry_message or "")
        return Fix("model", "retry", env, diff or None, d.diagnosis, d.category)
    wait = _seconds(d.wait)
    found = tuple(p.cited)
    if d.action == "retry":  # the runner retries as is: the other fields do nothing
        return Fix(
            "model", "retry", diagnosis=d.diagnosis, category=d.category, wait=wait, found_by=found
        )
    # What the runner says it did, else what the model asked for.
    patch = d.patch or ""
    files = p.files if p.files is not None else names(patched_files(patch))
    inputs = p.inputs
    if inputs is None:
        inputs = {k: _text(v) for k, v in (d.inputs or {}).items()}
    return Fix(
        "model",
        "retry",
        dict(d.env or {}),
        _command_diff(d, p, planned(step)),
        d.diagnosis,
        d.category,
        wait=wait,
        scope=d.scope or "step",
        inputs=inputs,
        files=files,
        fix_lines=tuple(changed_lines(patch)),
        rerun=names(d.rerun) if d.action == "rerun" else (),
        found_by=found,
    )


def _command_diff(d: Decision, p: _Pending, planned: str | None) -> str | None:
    """The model's change of the command, against the planned one: a command put back as
    planned (after a decision that only looked around) is no change."""
    if not d.run or not d.run.strip():
        return None
    if planned is not None:
        if d.run.strip() == planned.strip():
            return None
        diff = difflib.unified_diff(_lines(planned), _lines(d.run), "planned", "proposed")
        return "".join(diff).strip("\n")
    # No plan: the runner's diff, from the command of the attempt before; the env lines
    # it ends with are the decision's.
    lines = (p.proposal or "").splitlines()
    env = [f"+env {k}={v}" for k, v in (d.env or {}).items()]
    if env and lines[-len(env) :] == env:
        lines = lines[: -len(env)]
    return "\n".join(lines).strip("\n") or None


def _lines(text: str) -> list[str]:
    return (text if text.endswith("\n") else text + "\n").splitlines(keepends=True)


def _text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _seconds(wait: str | None) -> float | None:
    if not wait:
        return None
    try:
        return parse_duration(wait) or None
    except ValueError:
        return None  # the runner did not wait either


def _model_changes(proposal: str, retry_message: str) -> tuple[dict[str, str], str]:
    """The environment and the command diff of a ``command_proposed`` event: the diff,
    then one ``+env NAME=VALUE`` line per variable; ``retry_scheduled`` shows the same
    variables as ``(env A=1, B=2)``, which tells them from a diff line that looks alike."""
    lines = proposal.splitlines()
    shown = re.search(r"\(env (.*)\)\s*$", retry_message, re.DOTALL)
    env_lines: list[tuple[str, str]] = []
    for line in reversed(lines):
        m = _ENV_LINE.fullmatch(line)
        if not m:
            break
        env_lines.insert(0, (m.group(1), m.group(2)))
    count = 0
    if shown:
        for k in range(len(env_lines), 0, -1):
            if ", ".join(f"{n}={v}" for n, v in env_lines[-k:]) == shown.group(1):
                count = k
                break
    env = dict(env_lines[len(env_lines) - count :]) if count else {}
    diff = "\n".join(lines[: len(lines) - count]).strip("\n")
    return env, diff
