"""The tools' schemas as the model sees them (``LOOK_TOOLS``, a contract:
../shared/DESIGN.md, The LLM) and the pydantic models their arguments are checked with."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, PositiveInt, ValidationError

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
        "its last `tail` lines (default 60), its first `head` lines, the lines `around` a line "
        "number, or the lines matching the regular expression `grep`, with line numbers.",
        "input_schema": {
            "type": "object",
            "properties": {
                "step": {"type": "string"},
                "attempt": {"type": "integer", "minimum": 1},
                "grep": {"type": "string"},
                "tail": {"type": "integer", "minimum": 1},
                "head": {"type": "integer", "minimum": 1},
                "around": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "a line number: the lines around it",
                },
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
        "description": "GET a loopback URL (http://127.0.0.1, http://localhost or "
        "http://[::1], any port) from inside the sandbox: status, a few headers and the start "
        "of the body; redirects are reported, not followed.",
        "input_schema": {
            "type": "object",
            "properties": {"url": {"type": "string"}},
            "required": ["url"],
        },
    },
    {
        "name": "command_help",
        "description": "Run `COMMAND --help` inside the sandbox (e.g. `python3 -m pkg.train`): "
        "its bounded output. Outside Docker it runs on this machine: at most 6 plain words, "
        "no option but python's -m.",
        "input_schema": {
            "type": "object",
            "properties": {"command": {"type": "string"}},
            "required": ["command"],
        },
    },
    {
        "name": "search_runbooks",
        "description": "Search the workflow's runbooks (docs:) for words: the sections that "
        "mention them most, bounded.",
        "input_schema": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    },
]


class Args(BaseModel):
    """A tool's arguments: its own fields and no others."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ReadFileArgs(Args):
    path: str
    start_line: PositiveInt | None = None
    end_line: PositiveInt | None = None


class ListDirArgs(Args):
    path: str = "."


class GrepArgs(Args):
    pattern: str
    path: str = "."


class ReadLogArgs(Args):
    step: str
    attempt: PositiveInt | None = None
    grep: str | None = None
    tail: PositiveInt | None = None
    head: PositiveInt | None = None
    around: PositiveInt | None = None


class StepArgs(Args):
    step: str


class NoArgs(Args):
    pass


class HttpGetArgs(Args):
    url: str


class CommandArgs(Args):
    command: str


class QueryArgs(Args):
    query: str


def problems(e: ValidationError, model: type[Args]) -> str:
    """What is wrong with a call's arguments, in a line the model can act on."""
    fields = ", ".join(model.model_fields) or "none"
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'input'}: "
        + (
            f"not a field (the fields: {fields})"
            if err["type"] == "extra_forbidden"
            else err["msg"]
        )
        for err in e.errors()
    )
