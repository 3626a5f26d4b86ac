"""What to do when an attempt went wrong: ``recover:`` rules first, then the retry policy,
within the run-wide breaker. A pure decision: the runner carries it out."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Literal

from agentflow.state import RunState, StepState
from agentflow.workflow.model import Step, Workflow
from agentflow.workflow.types import format_duration

Action = Literal["retry", "fail", "skip", "abort", "escalate"]


@dataclass(frozen=True)
class Decision:
    """The outcome of one failed attempt."""

    action: Action
    reason: str
    """Why, for the event log and the report."""
    wait: float = 0.0
    """Seconds before the next attempt (``retry``)."""
    set_env: dict[str, str] = field(default_factory=dict)
    """Environment for the next attempts (``retry`` by a rule)."""
    rule: int | None = None
    """The index of the ``recover:`` rule that matched."""


def decide(
    workflow: Workflow,
    step: Step,
    st: StepState,
    run: RunState,
    status: str,
    exit_code: int | None,
    log_tail: str,
) -> Decision:
    """Decide after an attempt of ``step`` ended with ``status`` (failed, crashed, timeout,
    stalled). ``st`` is the step's state with this attempt recorded."""
    breaker = workflow.max_consecutive_failures
    tripped = run.consecutive_failures >= breaker
    for i, rule in enumerate(step.recover):
        if not re.search(rule.match, log_tail, re.MULTILINE):
            continue
        what = f"recover rule {i + 1} matched /{rule.match}/"
        if rule.action != "retry":
            message = f"{what}: {rule.message}" if rule.message else what
            return Decision(rule.action, message, rule=i)
        used = st.rule_uses.get(str(i), 0)
        if used >= rule.limit:
            continue  # spent: the retry policy below decides
        if tripped:
            return Decision("fail", f"{what}, but {breaker} attempts failed in a row (breaker)")
        changes = ", ".join(f"{k}={v}" for k, v in rule.set_env.items())
        detail = f" with {changes}" if changes else ""
        return Decision("retry", f"{what}: retry{detail}", rule.wait or 0.0, rule.set_env, i)
    policy = workflow.retry_of(step)
    if st.retries >= policy.limit:
        # Nothing to add when no retries were asked for.
        return Decision("fail", f"gave up after {st.retries} retries" if policy.limit else "")
    if status not in policy.on:
        return Decision("fail", f"{status}: not retried (retry.on is {', '.join(policy.on)})")
    if status == "failed" and policy.exit_codes is not None and exit_code not in policy.exit_codes:
        return Decision("fail", f"exit code {exit_code} is not in retry.exit_codes")
    if tripped:
        return Decision("fail", f"{breaker} attempts failed in a row: the breaker stops retries")
    b = policy.backoff
    delay = min(b.max, b.initial * b.factor**st.retries)
    delay *= random.uniform(0.5, 1.0)  # jitter: retries of many steps do not align
    n = st.retries + 1
    return Decision("retry", f"retry {n}/{policy.limit} in {format_duration(delay)}", delay)
