"""The look-around tools: what the model may look at before it decides.

Read-only and bounded: every result is at most ``RESULT_MAX`` characters, secrets are
masked, paths are confined to the workspace (through ``safefs``: no link is followed,
agentflow's home is never shown), and commands run inside the step's sandbox. The tools'
names and fields are a contract (../shared/DESIGN.md, The LLM).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentflow.plan import Plan
from agentflow.redact import Redactor
from agentflow.sandbox import Sandbox
from agentflow.state import RunState
from agentflow.store import RunDir
from agentflow.workflow.model import Workflow

RESULT_MAX = 4000
"""Characters of one tool result (about 1,000 tokens)."""


class ToolError(Exception):
    """A tool was called wrongly (unknown step, a path outside the workspace…): the model
    gets the message as an error result and may try again."""


@dataclass(frozen=True, kw_only=True)
class Scene:
    """What the tools may look at, fixed when the model is asked (a snapshot: the runner
    goes on while the model thinks)."""

    workspace: Path
    workflow: Workflow
    redact: Redactor
    hidden: frozenset[tuple[int, int]] = frozenset()
    """Identities (device, inode) never shown: agentflow's home, the tmux socket folder."""
    runbooks: list[Path] = field(default_factory=list)
    sandbox: Sandbox | None = None
    """The sandbox commands run in (None: planning before it exists; then commands fail
    with a clear result)."""
    run: RunDir | None = None
    plan: Plan | None = None
    state: RunState | None = None
    step: str | None = None
    """The step the question is about: commands run with its workdir and environment."""
    env: dict[str, str] = field(default_factory=dict)
    """That step's rendered environment (secrets are not in it)."""


LOOK_TOOLS: list[dict[str, Any]] = [
    {
        "name": "read_file",
        "description": "Read a workspace file (a path relative to the workspace), optionally "
        "a range of lines (1-based, inclusive). The result is bounded.",
        "input_schema": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "start_line": {"type": "integer", "minimum": 1},
                "end_line": {"type": "integer", "minimum": 1},
            },
            "required": ["path"],
        },
    },
    {
        "name": "list_dir",
        "description": "List a workspace directory (relative path; '.' is the workspace): "
        "names, kinds and sizes.",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
        },
    },
    {
        "name": "grep",
        "description": "Search workspace files for a regular expression: matching lines as "
        "file:line: text, bounded. `path` limits the search to a file or directory.",
        "input_schema": {
            "type": "object",
            "properties": {"pattern": {"type": "string"}, "path": {"type": "string"}},
            "required": ["pattern"],
        },
    },
    {
        "name": "read_log",
        "description": "Read a step's log (output.log) of an attempt (default: the latest): "
        "its last `tail` lines, or the lines matching `grep` with their line numbers.",
        "input_schema": {
            "type": "object",
            "properties": {
                "step": {"type": "string"},
                "attempt": {"type": "integer", "minimum": 1},
                "grep": {"type": "string"},
                "tail": {"type": "integer", "minimum": 1},
            },
            "required": ["step"],
        },
    },
    {
        "name": "step_info",
        "description": "A step's facts: status, planned command and overrides, rendered env "
        "(secrets masked), ready probe, success checks, outputs, needs and dependents.",
        "input_schema": {
            "type": "object",
            "properties": {"step": {"type": "string"}},
            "required": ["step"],
        },
    },
    {
        "name": "sandbox_info",
        "description": "The sandbox: backend, image, read-only root, mounts, free disk and "
        "memory, GPUs, listening TCP ports.",
        "input_schema": {"type": "object", "properties": {}},
    },
    {
        "name": "http_get",
        "description": "GET a loopback URL (127.0.0.1 or localhost) from inside the sandbox: "
        "status and the start of the body.",
        "input_schema": {
            "type": "object",
            "properties": {"url": {"type": "string"}},
            "required": ["url"],
        },
    },
    {
        "name": "command_help",
        "description": "Run `COMMAND --help` inside the sandbox (e.g. `python3 -m pkg.train`): "
        "its bounded output.",
        "input_schema": {
            "type": "object",
            "properties": {"command": {"type": "string"}},
            "required": ["command"],
        },
    },
]


class Toolbox:
    """The look-around tools over one ``Scene``."""

    def __init__(self, scene: Scene) -> None:
        self.scene = scene

    def schemas(self) -> list[dict[str, Any]]:
        return LOOK_TOOLS

    def call(self, name: str, args: dict[str, Any]) -> str:
        """The tool's result (bounded, masked); ToolError when it was called wrongly."""
        raise ToolError(f"unknown tool {name!r}")
