"""The LLM planner: the model looks around the workspace with the read-only tools
(``agent.tools``: list it, read files, ``--help`` of a command) on the shared agent loop
(``agent.loop.ToolLoop``), then writes the commands of the ``task:`` steps (and may refine
the others) through ``submit_plan``. An answer that does not fit gets repair rounds, with
its problems listed; it becomes a ``Plan`` that records what planning cost and the
model's look-around calls.

A task may be expanded into several steps (new ids with ``needs``, ``success``, ``ready``):
they are validated like a hand-written workflow, and the task keeps its id and runs last,
after them (the rule is in ``planner.expansion``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import os
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentflow import safefs
from agentflow.agent.llm import LLM, LLMError
from agentflow.agent.loop import Limits, LoopExhausted, ToolLoop, Tools
from agentflow.agent.loop import Step as LoopStep
from agentflow.agent.tools import Scene, Toolbox, ToolError
from agentflow.errors import AgentflowError
from agentflow.plan import TRANSCRIPT_MAX, Plan, PlannedStep, ToolUse
from agentflow.planner.expansion import plan_problems
from agentflow.planner.static import render_inputs, run_order
from agentflow.redact import Redactor
from agentflow.runbook import bounded
from agentflow.sandbox import describe
from agentflow.template import TemplateSyntaxError, references
from agentflow.workflow.load import WorkflowFile
from agentflow.workflow.model import Probe, Scalar, Step, Success, Workflow
from agentflow.workflow.types import parse_duration

RUNBOOK_BUDGET = 24_000
"""Characters of runbook text in a planning request (about 6,000 tokens)."""

REPAIRS = 2
"""Repair rounds for an answer that does not fit, before planning fails."""

LIMITS = Limits(turns=16, seconds=600.0)
"""Requests (look-arounds and repairs included) and time for one plan."""

RUN_ONLY = frozenset({"read_log", "step_info", "http_get"})
"""Look-around tools that need a run (step logs, step facts, services): not offered."""

SYSTEM = """\
You are the planner of agentflow, which runs engineering workflows step by step, each step \
as a shell script (bash where the sandbox has it, else POSIX sh) in the workflow's folder \
inside the sandbox described below. Write the command of every step given as a `task` \
(plain words), and refine a `run` step only when it is clearly wrong. Commands must be \
non-interactive, idempotent where possible (a step may run again after a failure), print \
progress, and exit non-zero on failure. Follow the runbooks.

Look before you write: list the workspace (list_dir), read the scripts and configs a task \
names (read_file, grep), and run `command_help` on a job's module or program (such as \
`python3 -m pkg.train`) before writing its flags; never guess a flag. When command_help \
cannot run it (no sandbox to look in), it says so: then read the module's source.

A task may be expanded into several steps: give each new step a new id (a letter, then \
letters, digits, - or _), its `run`, its `needs` (the steps it runs after), and `success` \
checks (or a `ready` probe, which makes it a service) where they prove its work; then name \
the new steps in the `needs` of the task's own entry. The task keeps its id and runs last, \
after its new steps; the new steps run after what the task needs. Use no \
${{ steps... }} expressions in the commands you write.

End by calling submit_plan, with the exact step ids of the workflow."""


class AnswerStep(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    run: str
    duration: str | None = None
    notes: str | None = None
    needs: list[str] = Field(default_factory=list)
    ready: Probe | None = None
    success: Success | None = None


class Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    steps: list[AnswerStep]
    notes: str | None = None


SUBMIT_PLAN = {
    "name": "submit_plan",
    "description": "Submit the plan: one entry per step you write or refine (every task "
    "step), and one per step you add to carry out a task.",
    "input_schema": {
        "type": "object",
        "properties": {
            "steps": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {
                            "type": "string",
                            "description": "the workflow's step id, or a new one for a "
                            "step that carries out part of a task",
                        },
                        "run": {"type": "string", "description": "the shell script"},
                        "duration": {"type": "string", "description": "expected, like 90s, 15m"},
                        "notes": {"type": "string"},
                        "needs": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "steps this one runs after; a task's entry names "
                            "the new steps that carry it out",
                        },
                        "ready": {
                            "type": "object",
                            "description": "when a new service step is ready: one of http "
                            "(a URL), tcp (host:port), command, log (a regex of its output), "
                            "file; and timeout (like 5m)",
                        },
                        "success": {
                            "type": "object",
                            "description": "checks after the step exits 0: files (that must "
                            "exist and not be empty), command (must exit 0), log (a regex "
                            "its output must match), metrics ({name: {file, key, min, max}})",
                        },
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

    def __init__(self, llm: LLM, tools: Tools | None = None, limits: Limits = LIMITS) -> None:
        self.llm = llm
        self.tools = tools
        """The look-around tools (default: ``planning_tools`` of the workflow planned)."""
        self.limits = limits

    def plan(self, wf: WorkflowFile, inputs: dict[str, Scalar]) -> Plan:
        try:
            with contextlib.ExitStack() as stack:
                tools = self.tools or stack.enter_context(planning_tools(wf))
                loop = ToolLoop(self.llm, tools, SUBMIT_PLAN, _Check(wf, inputs), self.limits)
                out = loop.run(SYSTEM, request(wf, inputs))
        except LoopExhausted as e:
            raise LLMError(
                f"the model made no plan ({e}; {e.found()}): try again, or write the "
                "commands as run: in the workflow"
            ) from None
        steps, _ = planned_steps(Answer.model_validate(out.action), wf, inputs)
        derived = Plan(workflow=wf.workflow.name, planner=self.name, inputs=inputs, steps=steps)
        order = [s.id for s in run_order(derived.workflow_for(wf.workflow))]
        by_id = {s.id: s for s in steps}
        return Plan(
            workflow=wf.workflow.name,
            planner=self.name,
            inputs=inputs,
            steps=[by_id[i] for i in order],
            usage=out.usage,
            transcript=[_recorded(s) for s in out.transcript[:TRANSCRIPT_MAX]],
            transcript_total=len(out.transcript),
        )


class _Check:
    """``check_answer`` for the loop, which stops planning after ``REPAIRS`` rounds."""

    def __init__(self, wf: WorkflowFile, inputs: dict[str, Scalar]) -> None:
        self.wf = wf
        self.inputs = inputs
        self.invalid = 0

    def __call__(self, data: dict[str, Any]) -> list[str]:
        problems = check_answer(data, self.wf, self.inputs)
        if problems:
            self.invalid += 1
            if self.invalid > REPAIRS:
                sent = json.dumps(data)[:1500]
                raise LLMError(
                    f"the model's plan is still invalid after {REPAIRS} repair rounds "
                    f"({'; '.join(problems[:5])}); it sent: {sent}"
                )
        return problems


def _recorded(step: LoopStep) -> ToolUse:
    return ToolUse.model_validate(step.event_data())


class PlanningTools:
    """The look-around tools that mean something before a run exists (no step logs,
    step facts or services yet)."""

    def __init__(self, tools: Tools) -> None:
        self.tools = tools

    def schemas(self) -> list[dict[str, Any]]:
        return [t for t in self.tools.schemas() if t["name"] not in RUN_ONLY]

    def call(self, name: str, args: dict[str, Any]) -> str:
        if name in RUN_ONLY:
            raise ToolError(f"{name} needs a run, and there is none while planning")
        return self.tools.call(name, args)


@contextlib.contextmanager
def planning_tools(wf: WorkflowFile) -> Iterator[Tools]:
    """The look-around tools over the workflow's folder, before any run: agentflow's home
    and tmux socket hidden, the secrets the environment holds masked, and commands
    (``command_help``) in a probe sandbox: for Docker a throwaway container with the
    workspace read-only and no network, locally this machine (plain commands only)."""
    from agentflow.orchestrator import choose_backend
    from agentflow.sandbox.probe import probing
    from agentflow.store import home_dir
    from agentflow.tmux import socket_path_for

    home = home_dir()
    w = wf.workflow
    scene = Scene(
        workspace=wf.base_dir,
        workflow=w,
        redact=Redactor(os.environ.get(name, "") for name in w.secrets),
        hidden=safefs.identities([home, socket_path_for(home).parent]),
        runbooks=[wf.base_dir / d for d in w.docs],
    )
    try:
        backend, _ = choose_backend(w, None)
    except AgentflowError:  # no daemon: the run will say so; the model just cannot look
        yield PlanningTools(Toolbox(scene))
        return
    with probing(w, wf.base_dir, home, socket_path_for(home).parent, backend) as box:
        yield PlanningTools(Toolbox(dataclasses.replace(scene, sandbox=box)))


def check_answer(data: dict[str, Any], wf: WorkflowFile, inputs: dict[str, Scalar]) -> list[str]:
    """What is wrong with the model's answer (empty when it is usable)."""
    try:
        answer = Answer.model_validate(data)
    except ValidationError as e:
        return [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
    return planned_steps(answer, wf, inputs)[1]


def planned_steps(
    answer: Answer, wf: WorkflowFile, inputs: dict[str, Scalar]
) -> tuple[list[PlannedStep], list[str]]:
    """The plan's steps from the answer (the workflow's order, each task's added steps
    just before it), and what is wrong with them (empty: usable)."""
    w = wf.workflow
    problems = _entry_problems(answer, w)
    owners, owner_problems = _owners(answer, w)
    problems += owner_problems
    if problems:
        return [], problems
    written = {s.id: s for s in answer.steps}
    steps: list[PlannedStep] = []
    for step in w.steps:
        for added in (s for s in answer.steps if owners.get(s.id) == step.id):
            steps.append(_planned(added, step, inputs, expands=step.id))
        steps.append(_planned(written.get(step.id), step, inputs))
    return steps, plan_problems(steps, w, ordered=False)


def _planned(
    mine: AnswerStep | None, step: Step, inputs: dict[str, Scalar], expands: str | None = None
) -> PlannedStep:
    """A step as planned: ``step`` as written, as the model wrote it (``mine``), or, with
    ``expands``, a step the model added for the task ``step``."""
    duration = step.expect.duration if step.expect and not expands else None
    if mine is None:
        return PlannedStep(
            id=step.id,
            run=render_inputs(step.run or "", inputs),
            needs=list(step.needs),
            duration=duration,
        )
    # Its own needs (an added step: its task's) first, then those the model gave.
    needs = list(dict.fromkeys([*step.needs, *mine.needs]))
    return PlannedStep(
        id=mine.id,
        run=render_inputs(mine.run, inputs),
        needs=needs,
        source="planner",
        duration=parse_duration(mine.duration) if mine.duration else duration,
        notes=mine.notes,
        expands=expands,
        ready=mine.ready,
        success=mine.success,
    )


def _entry_problems(answer: Answer, w: Workflow) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    for s in answer.steps:
        if s.id in seen:
            problems.append(f"step '{s.id}' is given twice")
        seen.add(s.id)
        if not s.run.strip():
            problems.append(f"step '{s.id}' has an empty run")
        problems += [f"step '{s.id}': {p}" for p in _template_problems(s.run, w)]
        if s.duration is not None:
            try:
                parse_duration(s.duration)
            except ValueError:
                problems.append(f"step '{s.id}': duration {s.duration!r} is not like 90s, 15m, 2h")
    for step in w.steps:
        if step.task is not None and step.id not in seen:
            problems.append(f"task step '{step.id}' has no command: give it a run")
    known = [*(s.id for s in w.steps), *seen]
    for s in answer.steps:
        for need in s.needs:
            if need not in known:
                hint = difflib.get_close_matches(need, known, n=1)
                problems.append(
                    f"step '{s.id}' needs '{need}', which is neither a step of the workflow "
                    "nor one you added" + (f" (did you mean '{hint[0]}'?)" if hint else "")
                )
    return problems


def _owners(answer: Answer, w: Workflow) -> tuple[dict[str, str], list[str]]:
    """The task each new step (an id the workflow does not have) is part of: the one whose
    entry needs it, directly or through other new steps."""
    ids = {s.id for s in w.steps}
    new = {s.id: s for s in answer.steps if s.id not in ids}
    claims: dict[str, list[str]] = {i: [] for i in new}
    for entry in answer.steps:
        if entry.id in ids and w.step(entry.id).task is not None:
            for i in _reached(entry.needs, new):
                claims[i].append(entry.id)
    problems = []
    for i, tasks in claims.items():
        if not tasks:
            problems.append(
                f"step '{i}' is not in the workflow (ids: {', '.join(sorted(ids))}), and no "
                "task needs it: a step you add must be in the needs of the task it is part "
                "of (or of that task's other new steps)"
            )
        elif len(tasks) > 1:
            problems.append(
                f"step '{i}' is needed by the tasks {' and '.join(tasks)}: give each task "
                "steps of its own"
            )
    return {i: tasks[0] for i, tasks in claims.items() if len(tasks) == 1}, problems


def _reached(needs: list[str], new: dict[str, AnswerStep]) -> set[str]:
    found: set[str] = set()
    todo = [n for n in needs if n in new]
    while todo:
        cur = todo.pop()
        if cur not in found:
            found.add(cur)
            todo += [n for n in new[cur].needs if n in new]
    return found


def _template_problems(run: str, w: Workflow) -> list[str]:
    try:
        refs = list(references(run))
    except TemplateSyntaxError as e:
        return [str(e)]
    out = []
    for ref in refs:
        if ref.kind == "inputs" and ref.names[0] not in w.inputs:
            out.append(f"unknown input {ref.names[0]!r} (inputs: {', '.join(w.inputs)})")
        elif ref.kind == "env" and ref.names[0] in w.secrets:
            out.append(
                f"${{{{ env.{ref.names[0]} }}}} writes a secret into files: use ${ref.names[0]}"
            )
        elif ref.kind == "steps":
            out.append("use no ${{ steps... }} expressions in commands you write")
    return out


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
