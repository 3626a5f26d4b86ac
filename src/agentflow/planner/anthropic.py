"""The LLM planner: the model writes the commands of ``task:`` steps (and may refine the
others) through one forced ``submit_plan`` tool call; the answer is validated, with one
repair round, before it becomes a ``Plan``."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from agentflow.agent.llm import LLM, LLMError
from agentflow.plan import Plan, PlannedStep
from agentflow.planner.static import render_inputs, run_order
from agentflow.runbook import bounded
from agentflow.sandbox import describe
from agentflow.template import TemplateSyntaxError, references
from agentflow.workflow.load import WorkflowFile
from agentflow.workflow.model import Scalar, Step
from agentflow.workflow.types import parse_duration

RUNBOOK_BUDGET = 24_000
"""Characters of runbook text in a planning request (about 6,000 tokens)."""

SYSTEM = """\
You are the planner of agentflow, which runs engineering workflows step by step, each step \
as a shell script (bash where the sandbox has it, else POSIX sh) in the workflow's folder \
inside the sandbox described below. Write the command of every step given as a `task` \
(plain words), and refine a `run` step only when it is clearly wrong. Commands must be \
non-interactive, idempotent where possible (a step may run again after a failure), print \
progress, and exit non-zero on failure. Follow the runbooks. Answer only by calling \
submit_plan, with the exact step ids of the workflow."""


class AnswerStep(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    run: str
    duration: str | None = None
    notes: str | None = None


class Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    steps: list[AnswerStep]
    notes: str | None = None


SUBMIT_PLAN = {
    "name": "submit_plan",
    "description": "Submit the plan: one entry per step you write or refine (every task step).",
    "input_schema": {
        "type": "object",
        "properties": {
            "steps": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "description": "the workflow's step id"},
                        "run": {"type": "string", "description": "the shell script"},
                        "duration": {"type": "string", "description": "expected, like 90s, 15m"},
                        "notes": {"type": "string"},
                    },
                    "required": ["id", "run"],
                },
            },
            "notes": {"type": "string"},
        },
        "required": ["steps"],
    },
}


class AnthropicPlanner:
    name = "anthropic"

    def __init__(self, llm: LLM) -> None:
        self.llm = llm
        self.calls: list[int] = []
        """Tokens used by each call (for the record)."""

    def plan(self, wf: WorkflowFile, inputs: dict[str, Scalar]) -> Plan:
        messages: list[dict[str, Any]] = [{"role": "user", "content": request(wf, inputs)}]
        call = self.llm.call_tool(SYSTEM, messages, SUBMIT_PLAN)
        self.calls.append(call.tokens)
        problems = check_answer(call.input, wf)
        if problems:
            # One repair round: the model sees its answer and what is wrong with it.
            messages += [
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": call.tool_use_id,
                            "name": "submit_plan",
                            "input": call.input,
                        }
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": call.tool_use_id,
                            "is_error": True,
                            "content": "The plan is invalid:\n- "
                            + "\n- ".join(problems)
                            + "\nCall submit_plan again with a corrected plan.",
                        }
                    ],
                },
            ]
            call = self.llm.call_tool(SYSTEM, messages, SUBMIT_PLAN)
            self.calls.append(call.tokens)
            problems = check_answer(call.input, wf)
            if problems:
                sent = json.dumps(call.input)[:1500]
                raise LLMError(
                    f"the model's plan is invalid after one repair ({'; '.join(problems)}); "
                    f"it sent: {sent}"
                )
        return to_plan(Answer.model_validate(call.input), wf, inputs)


def check_answer(data: dict[str, Any], wf: WorkflowFile) -> list[str]:
    """What is wrong with the model's answer (empty when it is usable)."""
    try:
        answer = Answer.model_validate(data)
    except ValidationError as e:
        return [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
    ids = {s.id for s in wf.workflow.steps}
    problems = []
    seen: set[str] = set()
    for s in answer.steps:
        if s.id not in ids:
            problems.append(f"step '{s.id}' is not in the workflow (ids: {', '.join(sorted(ids))})")
        if s.id in seen:
            problems.append(f"step '{s.id}' is given twice")
        seen.add(s.id)
        if not s.run.strip():
            problems.append(f"step '{s.id}' has an empty run")
        problems += [f"step '{s.id}': {p}" for p in _template_problems(s.run, wf)]
        if s.duration is not None:
            try:
                parse_duration(s.duration)
            except ValueError:
                problems.append(f"step '{s.id}': duration {s.duration!r} is not like 90s, 15m, 2h")
    for step in wf.workflow.steps:
        if step.task is not None and step.id not in seen:
            problems.append(f"task step '{step.id}' has no command: give it a run")
    return problems


def _template_problems(run: str, wf: WorkflowFile) -> list[str]:
    try:
        refs = list(references(run))
    except TemplateSyntaxError as e:
        return [str(e)]
    out = []
    for ref in refs:
        if ref.kind == "inputs" and ref.names[0] not in wf.workflow.inputs:
            out.append(f"unknown input {ref.names[0]!r} (inputs: {', '.join(wf.workflow.inputs)})")
        elif ref.kind == "env" and ref.names[0] in wf.workflow.secrets:
            out.append(
                f"${{{{ env.{ref.names[0]} }}}} writes a secret into files: use ${ref.names[0]}"
            )
        elif ref.kind == "steps":
            out.append("use no ${{ steps... }} expressions in commands you write")
    return out


def to_plan(answer: Answer, wf: WorkflowFile, inputs: dict[str, Scalar]) -> Plan:
    written = {s.id: s for s in answer.steps}
    steps = []
    for step in run_order(wf.workflow):
        mine = written.get(step.id)
        duration = step.expect.duration if step.expect else None
        if mine is not None and mine.duration:
            duration = parse_duration(mine.duration)
        steps.append(
            PlannedStep(
                id=step.id,
                run=render_inputs(mine.run if mine else step.run or "", inputs),
                needs=list(step.needs),
                source="planner" if mine else "workflow",
                duration=duration,
                notes=mine.notes if mine else None,
            )
        )
    return Plan(workflow=wf.workflow.name, planner="anthropic", inputs=inputs, steps=steps)


def request(wf: WorkflowFile, inputs: dict[str, Scalar]) -> str:
    """The planning request: goal, steps, inputs, sandbox facts, runbooks (bounded)."""
    w = wf.workflow
    facts, relaxed = describe(w.sandbox)
    parts = [
        f"Workflow: {w.name}" + (f" — {w.description}" if w.description else ""),
        f"Goal:\n{w.goal}" if w.goal else "",
        "Inputs: " + json.dumps(inputs),
        f"Sandbox ({w.sandbox.backend}): " + "; ".join(facts + relaxed),
        "Steps (in order; `needs` must be done first):\n"
        + "\n".join(_describe(s) for s in w.steps),
    ]
    books = bounded([wf.base_dir / d for d in w.docs], RUNBOOK_BUDGET, root=wf.base_dir)
    if books:
        parts.append("Runbooks:\n" + books)
    return "\n\n".join(p for p in parts if p)


def _describe(step: Step) -> str:
    fields: dict[str, Any] = {"id": step.id}
    if step.needs:
        fields["needs"] = step.needs
    if step.task:
        fields["task"] = step.task
    else:
        fields["run"] = step.run
    for key in ("description", "service", "expect", "success"):
        value = getattr(step, key)
        if value:
            fields[key] = (
                value.model_dump(mode="json", exclude_defaults=True, by_alias=True)
                if isinstance(value, BaseModel)
                else value
            )
    if step.outputs:
        fields["outputs"] = {
            k: v.model_dump(mode="json", exclude_none=True, by_alias=True)
            for k, v in step.outputs.items()
        }
    return "- " + json.dumps(fields)
