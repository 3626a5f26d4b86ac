"""Diagnosis of a failed step by the model (``on_failure: diagnose``).

The context is bounded whatever the log's size: the step, its script, how it ended, the
head and tail of its log, the lines that look like errors (with a little context), earlier
attempts and decisions, and the runbooks' failure-mode sections; secrets are masked
before anything leaves the process. The model answers with one ``submit_decision`` call.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from agentflow import safefs, stepfiles
from agentflow.llm import LLM, LLMError, ToolCall
from agentflow.redact import Redactor
from agentflow.runbook import bounded
from agentflow.store import Event
from agentflow.workflow.model import Step

CHARS_PER_TOKEN = 4
DEFAULT_BUDGET_TOKENS = 6000
_ERROR = re.compile(
    r"error|exception|traceback|fatal|failed|failure|killed|denied|no such|not found|"
    r"out of memory|oom|nan\b|panic|segmentation",
    re.IGNORECASE,
)
_SCAN_BYTES = 8 * 1024 * 1024
"""How far back from the end of a log the error scan looks."""

SYSTEM = """\
You are the recovery engineer of agentflow. A step of an engineering workflow failed. Read \
the account below (it is bounded: the log is cut), find the cause, and decide one action: \
retry (a transient failure), retry_with_changes (give `run`, a corrected script, and/or \
`env`), skip (the step does not matter), abort (nothing can work), or escalate (a person \
must decide: say what in the diagnosis). Prefer the runbook's documented fixes. Answer only \
by calling submit_decision."""

Action = Literal["retry", "retry_with_changes", "skip", "abort", "escalate"]

SUBMIT_DECISION = {
    "name": "submit_decision",
    "description": "Submit the diagnosis of the failure and the action to take.",
    "input_schema": {
        "type": "object",
        "properties": {
            "diagnosis": {"type": "string", "description": "what went wrong, and why"},
            "category": {"type": "string", "description": "e.g. oom, network, bug, data"},
            "action": {
                "type": "string",
                "enum": ["retry", "retry_with_changes", "skip", "abort", "escalate"],
            },
            "run": {"type": "string", "description": "the new script (retry_with_changes)"},
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "wait": {"type": "string", "description": "wait before retrying, like 30s"},
        },
        "required": ["diagnosis", "action"],
    },
}


class Decision(BaseModel):
    """The model's answer (more optional fields may come; they are ignored)."""

    model_config = ConfigDict(extra="ignore")

    diagnosis: str
    category: str | None = None
    action: Action
    run: str | None = None
    env: dict[str, str] | None = None
    wait: str | None = None


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
    head, tail, errors, size = _read_log(failure.log)
    earlier = [
        f"{e.ts:%H:%M:%S} attempt {e.attempt}: {e.kind} {e.status or ''} {e.message or ''}".strip()
        for e in history
        if e.step == step.id and e.kind not in ("step_started",)
    ][-12:]
    # In order of importance; each part gets a share of what is left.
    parts = [
        ("The step", json.dumps({k: v for k, v in about.items() if v is not None}), 0.1),
        ("Its script", failure.script, 0.12),
        (f"End of its log ({size} bytes in all)", tail, 0.3),
        ("Lines that look like errors (with context)", errors, 0.2),
        ("Start of its log", head, 0.06),
        ("Earlier attempts and decisions", "\n".join(earlier), 0.07),
        (
            "Runbook failure modes",
            bounded(runbooks, budget // 4, failures_only=True, root=workspace),
            0.15,
        ),
    ]
    out = []
    for title, text, share in parts:
        if not text:
            continue
        limit = int(budget * share)
        text = redact(text)
        if len(text) > limit:
            text = (
                "[... cut ...]\n" + text[-limit:]
                if "log" in title
                else text[:limit] + "\n[... cut ...]"
            )
        out.append(f"## {title}\n{text}")
    context = "\n\n".join(out)
    return context[:budget]


def _read_log(path: Path) -> tuple[str, str, str, int]:
    """(head, tail, error lines with context, size) of a log of any size."""
    try:
        with safefs.open_read(path, stepfiles.steps_root(path)) as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(0)
            head = f.read(4096).decode("utf-8", errors="replace")
            f.seek(max(0, size - _SCAN_BYTES))
            end = f.read(_SCAN_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return "", "", "", 0
    lines = end.splitlines()
    tail = "\n".join(lines[-150:])
    hits: list[str] = []
    last_shown = -1
    for i, line in enumerate(lines[:-150] if len(lines) > 150 else []):
        if _ERROR.search(line) and i > last_shown:
            lo, hi = max(0, i - 2, last_shown + 1), min(len(lines), i + 3)
            hits.append("\n".join(lines[lo:hi]))
            last_shown = hi - 1
            if len(hits) >= 40:
                break
    return head, tail, "\n---\n".join(hits), size


class Diagnoser:
    """Asks the model for a decision about a failure."""

    def __init__(self, llm: LLM, budget_tokens: int = DEFAULT_BUDGET_TOKENS) -> None:
        self.llm = llm
        self.budget_tokens = budget_tokens

    def decide(self, context: str) -> tuple[Decision, ToolCall]:
        messages = [{"role": "user", "content": context}]
        call = self.llm.call_tool(SYSTEM, messages, SUBMIT_DECISION)
        try:
            decision = Decision.model_validate(call.input)
        except ValidationError as e:
            first = e.errors()[0]
            raise LLMError(
                f"the model's decision is invalid ({'.'.join(map(str, first['loc']))}: "
                f"{first['msg']}): {json.dumps(call.input)[:500]}"
            ) from None
        if decision.action == "retry_with_changes" and not (decision.run or decision.env):
            raise LLMError("the model chose retry_with_changes without a new run or env")
        return decision, call
