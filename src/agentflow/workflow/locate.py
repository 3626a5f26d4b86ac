"""Locating problems: a pydantic error's path → the line and column a person must edit,
with what was wrong and what is allowed there."""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel

from agentflow.errors import Problem
from agentflow.workflow.model import Workflow
from agentflow.workflow.yamlhints import mapping_hint
from agentflow.workflow.yamlpos import Loc


class Locator:
    def __init__(self, filename: str, positions: dict[Loc, tuple[int, int]]) -> None:
        self.filename = filename
        self.positions = positions

    def at(self, loc: Loc, message: str, label: Loc | None = None) -> Problem:
        """A problem at ``loc`` (or the nearest enclosing place that has a position),
        described as being in ``label`` (default: ``loc``)."""
        probe = loc
        while probe not in self.positions and probe:
            probe = probe[:-1]
        line, col = self.positions.get(probe, (None, None))
        where = _describe(loc if label is None else label)
        return Problem(self.filename, line, col, f"{where}{message}")

    def pydantic(self, err: Mapping[str, Any]) -> Problem:
        loc = _loc_of(err)
        kind = err["type"]
        msg = str(err["msg"]).removeprefix("Value error, ")
        if kind == "extra_forbidden":
            key = str(loc[-1])
            allowed = _allowed_keys(loc[:-1])
            hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            known = f"; known keys: {', '.join(sorted(allowed))}" if allowed and not hint else ""
            return self.at(loc, f"unknown key '{key}'{suggestion}{known}", label=loc[:-1])
        if kind == "missing":
            return self.at(loc[:-1], f"missing required key '{loc[-1]}'")
        if kind == "string_pattern_mismatch":
            msg = f"{err['input']!r} is not allowed here: {_pattern_hint(err)}"
        elif kind == "literal_error":
            msg = f"{err['input']!r} is not allowed: {msg[0].lower()}{msg[1:]}"
            choices = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
            hint = difflib.get_close_matches(str(err["input"]), choices, n=1, cutoff=0.6)
            if hint:
                msg += f" (did you mean '{hint[0]}'?)"
        elif kind == "too_short" and loc == ("steps",):
            msg = "a workflow needs at least one step"
        else:
            msg = f"{msg[0].lower()}{msg[1:]}" if msg else msg
            if "input" in err and (kind.endswith("_type") or kind == "finite_number"):
                msg += f", got {_short(err['input'])}"
            if kind == "string_type":
                msg += mapping_hint(err.get("input"))
        return self.at(loc, msg)


def one_per_number(errors: list[Any]) -> list[Any]:
    """A NaN or infinity where a scalar goes is one problem, not one per type it is not."""
    finite = {_loc_of(err) for err in errors if err["type"] == "finite_number"}
    return [e for e in errors if e["type"] == "finite_number" or _loc_of(e) not in finite]


def _loc_of(err: Mapping[str, Any]) -> Loc:
    return tuple(x for x in err["loc"] if not _is_internal(x))


def _is_internal(part: Any) -> bool:
    # pydantic adds the name of a union member or a function validator to some locations.
    return isinstance(part, str) and (
        part in {"str", "int", "float", "bool", "list[...]", "dict[...]", "[key]"}
        or part.startswith(("function-", "literal[", "list[", "dict["))
    )


def _pattern_hint(err: Mapping[str, Any]) -> str:
    pattern = err.get("ctx", {}).get("pattern", "")
    if "A-Za-z][A-Za-z0-9_-]{0,62}" in pattern:
        return "an id starts with a letter, then letters, digits, - or _ (at most 63)"
    if "A-Za-z_][A-Za-z0-9_]*" in pattern:
        return "use letters, digits and _ only, not starting with a digit"
    return f"it must match {pattern}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(loc: Loc) -> str:
    """``('steps', 2, 'timeout')`` → ``"steps[2].timeout: "``."""
    if not loc:
        return ""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out + ": "


def _allowed_keys(loc: Loc) -> list[str]:
    """The keys allowed in the mapping at ``loc``, by walking the models' annotations."""
    current: Any = Workflow
    for part in loc:
        current = _child_type(current, part)
        if current is None:
            return []
    model = _model_in(current)
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _child_type(annotation: Any, part: str | int) -> Any:
    model = _model_in(annotation)
    if model is not None and isinstance(part, str):
        for name, field in model.model_fields.items():
            if part in (name, field.alias):
                return field.annotation
        return None
    for arg in _flatten(annotation):
        origin = typing.get_origin(arg)
        if origin is list and isinstance(part, int):
            return typing.get_args(arg)[0]
        if origin is dict and isinstance(part, str):
            return typing.get_args(arg)[1]
    return None


def _flatten(annotation: Any) -> Iterator[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        yield from _flatten(typing.get_args(annotation)[0])
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _flatten(arg)
    else:
        yield annotation


def _model_in(annotation: Any) -> type[BaseModel] | None:
    for arg in _flatten(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None
