"""The model's decision about a failed step: its tool (``submit_decision``, a contract),
its model, and what makes one unusable. The checks run inside the agent loop, so that the
model gets a repair round with the problems listed; the runner checks again before it
acts (the run may have moved on while the model thought)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from agentflow import safefs
from agentflow.agent.patch import PatchError, prepare
from agentflow.errors import AgentflowError
from agentflow.store import RunDir, valid_run_id
from agentflow.template import TemplateSyntaxError, references
from agentflow.workflow.model import Input, Scalar
from agentflow.workflow.types import ENV_PATTERN, parse_duration

Action = Literal["retry", "retry_with_changes", "rerun", "skip", "abort", "escalate"]

SUBMIT_DECISION: dict[str, Any] = {
    "name": "submit_decision",
    "description": "Submit the diagnosis of the failure and the one action to take. Call it "
    "once you know the cause (look first with the other tools).",
    "input_schema": {
        "type": "object",
        "properties": {
            "diagnosis": {"type": "string", "description": "what went wrong, and why"},
            "category": {"type": "string", "description": "e.g. oom, network, bug, data, port"},
            "action": {
                "type": "string",
                "enum": ["retry", "retry_with_changes", "rerun", "skip", "abort", "escalate"],
            },
            "run": {"type": "string", "description": "a corrected script for the step"},
            "env": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "environment for the next attempts",
            },
            "scope": {
                "type": "string",
                "enum": ["step", "downstream"],
                "description": "env for this step only (default), or also every step that "
                "needs it, directly or not",
            },
            "inputs": {
                "type": "object",
                "description": "input values to change for the rest of the run: every later "
                "command, ready probe and check is rendered with them",
            },
            "patch": {
                "type": "string",
                "description": "a unified diff relative to the workspace (--- a/PATH, +++ "
                "b/PATH, @@ hunks with exact context), applied before the retry",
            },
            "rerun": {
                "type": "array",
                "items": {"type": "string"},
                "description": "succeeded upstream steps to run again (with everything that "
                "needs them) before this one",
            },
            "stop_runs": {
                "type": "array",
                "items": {"type": "string"},
                "description": "ids of other agentflow runs of this home, still running, "
                "that hold what this step needs (a port, a GPU): stopped before the retry",
            },
            "wait": {"type": "string", "description": "wait before retrying, like 30s"},
            "question": {
                "type": "string",
                "description": "escalate: what a person must decide",
            },
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
    scope: Literal["step", "downstream"] | None = None
    inputs: dict[str, Scalar] | None = None
    patch: str | None = None
    rerun: list[str] | None = None
    stop_runs: list[str] | None = None
    wait: str | None = None
    question: str | None = None

    @property
    def changes(self) -> bool:
        return bool(self.run or self.env or self.patch or self.inputs or self.stop_runs)


@dataclass(frozen=True, kw_only=True)
class Rules:
    """What a decision about ``step`` may ask for, as the run stood when the model was
    asked."""

    step: str
    statuses: dict[str, str]
    """Every step's status."""
    upstream: frozenset[str]
    """The steps ``step`` needs, directly or not."""
    inputs: dict[str, Scalar]
    specs: dict[str, Input] = field(default_factory=dict)
    """The workflow's inputs: the type and choices a changed value must keep."""
    env_names: frozenset[str] = frozenset()
    """The names the step's environment declares: all a command the model writes may
    read with ``${{ env.NAME }}`` (never agentflow's own environment)."""
    secrets: frozenset[str] = frozenset()
    workspace: Path | None = None
    hidden: frozenset[safefs.Identity] = field(default_factory=frozenset)
    run_id: str | None = None
    runs: Path | None = None
    """The home's ``runs/`` folder: where other runs a decision may stop are."""


HOST_ENV = frozenset(
    {"BASH_ENV", "ENV", "PATH", "IFS", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND", "HOME",
     "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PERL5OPT", "NODE_OPTIONS", "RUBYOPT"}
)  # fmt: skip
HOST_ENV_PREFIXES = ("LD_", "DYLD_", "DOCKER_", "TMUX", "AGENTFLOW_")


def parse(data: dict[str, Any]) -> Decision:
    """The decision in ``data``; ValueError saying what is wrong."""
    try:
        return Decision.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        raise ValueError(
            f"{'.'.join(map(str, first['loc']))}: {first['msg']} ({json.dumps(data)[:300]})"
        ) from None


def problems(data: dict[str, Any], rules: Rules) -> list[str]:
    """Why the decision in ``data`` cannot be carried out (empty: it can)."""
    try:
        d = parse(data)
    except ValueError as e:
        return [str(e)]
    out: list[str] = []
    if d.action == "retry_with_changes" and not d.changes:
        out.append("retry_with_changes needs a run, env, patch, inputs or stop_runs")
    if d.action == "rerun" and not d.rerun:
        out.append("rerun needs `rerun`: the succeeded upstream steps to run again")
    if d.wait:
        try:
            if parse_duration(d.wait) > WAIT_MAX:
                out.append("wait: at most 1h (a person can wait longer)")
        except ValueError as e:
            out.append(f"wait: {e}")
    out += _env_problems(d.env or {}, rules)
    if d.run is not None:
        out += _template_problems(d.run, rules)
        if "\x00" in d.run:
            out.append("run: no NUL character")
    for name in d.rerun or []:
        status = rules.statuses.get(name)
        if status is None:
            out.append(f"rerun: no step {name!r} (steps: {', '.join(rules.statuses)})")
        elif name not in rules.upstream:
            out.append(f"rerun: {name} is not upstream of {rules.step}")
        elif status != "succeeded":
            out.append(f"rerun: {name} is {status}, not succeeded")
    for name, value in (d.inputs or {}).items():
        if name not in rules.inputs:
            known = ", ".join(rules.inputs) or "none"
            out.append(f"inputs: the workflow has no input {name!r} (inputs: {known})")
        else:
            out += [f"inputs: {name}: {p}" for p in _input_problems(value, rules.specs.get(name))]
    out += [f"stop_runs: {p}" for p in _stop_problems(d.stop_runs or [], rules)]
    if d.patch and rules.workspace is not None:
        try:
            prepare(d.patch, rules.workspace, rules.hidden)
        except PatchError as e:
            out.append(f"patch: {e}")
    return out


def _env_problems(env: dict[str, str], rules: Rules) -> list[str]:
    out = []
    for name, value in env.items():
        if "\x00" in value:
            out.append(f"env: {name}: no NUL character")
        if not re.fullmatch(ENV_PATTERN, name):
            out.append(f"env: {name!r} is not an environment variable name")
        elif name in HOST_ENV or name.startswith(HOST_ENV_PREFIXES):
            out.append(f"env: it may not set {name} (it changes how programs start)")
        elif name in rules.secrets:
            out.append(f"env: it may not set the secret {name}")
    return out


def _template_problems(run: str, rules: Rules) -> list[str]:
    try:
        refs = list(references(run))
    except TemplateSyntaxError as e:
        return [f"run: {e}"]
    out = []
    for ref in refs:
        if ref.kind == "inputs" and ref.names[0] not in rules.inputs:
            out.append(f"run: unknown input {ref.names[0]!r}")
        if ref.kind == "env" and ref.names[0] in rules.secrets:
            out.append(f"run: ${{{{ env.{ref.names[0]} }}}} would write a secret into files")
        elif ref.kind == "env" and ref.names[0] not in rules.env_names:
            out.append(
                f"run: ${{{{ env.{ref.names[0]} }}}} is not in the step's environment (it "
                f"would read agentflow's own): use ${ref.names[0]} in the script"
            )
        if ref.kind == "steps" and ref.names[0] not in rules.statuses:
            out.append(f"run: unknown step {ref.names[0]!r}")
    return out


WAIT_MAX = 3600.0
"""The longest wait the model may ask for before a retry."""


def _input_problems(value: Scalar, spec: Input | None) -> list[str]:
    """A changed input keeps its type and choices, and carries no expression (a value is
    filled into commands that are rendered again)."""
    if spec is None:
        return []
    kind = spec.kind
    fits = {
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "string": isinstance(value, str),
    }[kind]
    out = [] if fits else [f"must be {'an' if kind == 'integer' else 'a'} {kind}"]
    if spec.choices is not None and value not in spec.choices:
        out.append(f"must be one of {', '.join(map(str, spec.choices))}")
    if isinstance(value, str) and ("${{" in value or "\x00" in value):
        out.append("no ${{ }} expression and no NUL character in a value")
    return out


def _stop_problems(runs: list[str], rules: Rules) -> list[str]:
    """Only agentflow's own runs, of this home, still running, and never this one."""
    out = []
    for rid in runs:
        if not valid_run_id(rid):
            out.append(f"{rid[:60]!r} is not a run id")
        elif rid == rules.run_id:
            out.append(f"{rid} is this run")
        elif rules.runs is None or not (rules.runs / rid / "state.json").is_file():
            out.append(f"no run {rid} in this home")
        elif _status(rules.runs / rid / "state.json") != "running":
            out.append(f"run {rid} is not running")
    return out


def _status(state: Path) -> str | None:
    try:
        return RunDir(state.parent).read_state().status
    except (AgentflowError, OSError):
        return None
