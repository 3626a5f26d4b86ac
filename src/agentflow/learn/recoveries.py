"""What happened in a run: the failed attempts that a decision (a ``recover:`` rule that
matched, or the model's diagnosis) turned into a success, read from ``events.jsonl``."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from agentflow.state import UNSUCCESSFUL
from agentflow.store import Event
from agentflow.workflow import Workflow
from agentflow.workflow.model import RecoverRule

_DIAGNOSIS = re.compile(
    r"(?P<action>\w+): (?P<diagnosis>.*) \[(?P<category>[^\[\]]*); \d+ tokens\]", re.DOTALL
)
_RULE = re.compile(r"recover rule (\d+) matched")
_ENV_LINE = re.compile(r"\+env ([A-Za-z_][A-Za-z0-9_]*)=(.*)")


@dataclass(frozen=True)
class Fix:
    """What was decided about a failed attempt, and carried out."""

    source: Literal["model", "rule"]
    action: Literal["retry", "skip"]
    set_env: dict[str, str] = field(default_factory=dict)
    command_diff: str | None = None
    """The model's change of the step's command (a diff), when it made one."""
    diagnosis: str | None = None
    category: str | None = None
    rule: RecoverRule | None = None
    """The rule that matched (``source == "rule"``), as the run's workflow had it."""
    rule_number: int | None = None

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...], str | None]:
        """What makes two fixes the same: what was done, whoever decided it."""
        return self.action, tuple(sorted(self.set_env.items())), self.command_diff

    def describe(self) -> str:
        who = (
            "the model"
            if self.source == "model"
            else f"recover rule {self.rule_number}"
            + (f" (/{self.rule.match}/)" if self.rule else "")
        )
        return f"{who}: {self.what()}"

    def what(self) -> str:
        if self.action == "skip":
            return "skip the step"
        changes = []
        if self.command_diff:
            changes.append("a changed command")
        if self.set_env:
            changes.append(", ".join(f"{k}={v}" for k, v in self.set_env.items()))
        return "retry with " + " and ".join(changes) if changes else "retry as is"


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
    attempt: int
    status: str
    message: str | None
    rule_number: int | None = None
    diagnosis: dict[str, str] | None = None
    proposal: str | None = None
    retry_message: str | None = None


def find_recoveries(
    run_id: str, events: list[Event], workflow: Callable[[], Workflow | None], succeeded: bool
) -> list[Recovery]:
    """The recoveries in one run's events, in order. ``workflow`` gives the run's own
    workflow (read only when a rule's content is needed)."""
    pending: dict[str, _Pending] = {}
    found: list[Recovery] = []
    skips: list[Recovery] = []
    for e in events:
        if e.step is None:
            continue
        p = pending.get(e.step)
        if e.kind == "step_finished":
            if e.status in UNSUCCESSFUL:
                pending[e.step] = _Pending(e.attempt or 0, e.status or "failed", e.message)
            elif e.status == "succeeded":
                pending.pop(e.step, None)
                if p is not None and p.retry_message is not None and e.attempt == p.attempt + 1:
                    fix = _fix(p, e.step, workflow)
                    if fix is not None:
                        found.append(Recovery(run_id, e.step, p.attempt, p.status, p.message, fix))
            continue
        if p is None:
            continue
        if e.kind == "rule_matched":
            m = _RULE.search(e.message or "")
            p.rule_number = int(m.group(1)) if m else None
        elif e.kind == "diagnosis":
            m = _DIAGNOSIS.fullmatch(e.message or "")
            p.diagnosis = m.groupdict() if m else None
        elif e.kind == "command_proposed":
            p.proposal = e.message or ""
        elif e.kind == "retry_scheduled":
            p.retry_message = e.message or ""
        elif e.kind == "step_skipped":
            fix = _fix(p, e.step, workflow, skip=True)
            if fix is not None:
                skips.append(Recovery(run_id, e.step, p.attempt, p.status, p.message, fix))
            pending.pop(e.step, None)
        elif e.kind in ("escalated", "step_requeued"):
            pending.pop(e.step, None)  # a person decides, or a resume reruns it: no fix
    # A skip got the run through only if the run succeeded.
    return found + skips if succeeded else found


def _fix(
    p: _Pending, step: str, workflow: Callable[[], Workflow | None], skip: bool = False
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
    d = p.diagnosis
    if d is None:
        return None  # the retry policy, or a person: nothing was decided about this failure
    category = d["category"] if d["category"] != "uncategorised" else None
    if d["action"] == "skip" and skip:
        return Fix("model", "skip", diagnosis=d["diagnosis"], category=category)
    if skip or d["action"] not in ("retry", "retry_with_changes"):
        return None
    env, diff = _model_changes(p.proposal or "", p.retry_message or "")
    return Fix("model", "retry", env, diff or None, diagnosis=d["diagnosis"], category=category)


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
