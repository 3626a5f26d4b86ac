"""``Toolbox``: the look-around tools over one ``Scene``, called by name; every result
and every refusal masked and bounded (``RESULT_MAX``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from agentflow.agent.tools import commands, facts, files, logs, runbooks, web
from agentflow.agent.tools.scene import Scene, ToolError
from agentflow.agent.tools.schemas import (
    LOOK_TOOLS,
    Args,
    CommandArgs,
    GrepArgs,
    HttpGetArgs,
    ListDirArgs,
    NoArgs,
    QueryArgs,
    ReadFileArgs,
    ReadLogArgs,
    StepArgs,
    problems,
)
from agentflow.agent.tools.text import cut

_Handler = Callable[[Scene, Any], str]

_TOOLS: dict[str, tuple[type[Args], _Handler]] = {
    "read_file": (ReadFileArgs, files.read_file),
    "list_dir": (ListDirArgs, files.list_dir),
    "grep": (GrepArgs, files.grep),
    "read_log": (ReadLogArgs, logs.read_log),
    "step_info": (StepArgs, facts.step_info),
    "sandbox_info": (NoArgs, facts.sandbox_info),
    "http_get": (HttpGetArgs, web.http_get),
    "command_help": (CommandArgs, commands.command_help),
    "search_runbooks": (QueryArgs, runbooks.search_runbooks),
}


class Toolbox:
    """The look-around tools over one ``Scene``."""

    def __init__(self, scene: Scene) -> None:
        self.scene = scene

    def schemas(self) -> list[dict[str, Any]]:
        return LOOK_TOOLS

    def call(self, name: str, args: dict[str, Any]) -> str:
        """The tool's result (bounded, masked); ToolError when it was called wrongly."""
        if name not in _TOOLS:
            raise ToolError(f"unknown tool {name!r}: the tools are {', '.join(_TOOLS)}")
        model, handler = _TOOLS[name]
        try:
            parsed = model.model_validate(args)
        except ValidationError as e:
            raise ToolError(cut(self.scene.redact(f"{name}: {problems(e, model)}"))) from None
        try:
            result = handler(self.scene, parsed)
        except ToolError as e:
            raise ToolError(cut(self.scene.redact(str(e)))) from None
        return cut(self.scene.redact(result))
