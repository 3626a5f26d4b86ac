"""Input values: the workflow's defaults with ``--set name=value`` overrides applied."""

from __future__ import annotations

import difflib

from agentflow.errors import UsageError
from agentflow.workflow.load import WorkflowFile
from agentflow.workflow.model import Input, Scalar

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def parse_set_options(items: list[str]) -> dict[str, str]:
    """``["a=1", "b=x"]`` → ``{"a": "1", "b": "x"}``."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--set {item!r}: write it as --set name=value")
        out[name.strip()] = value
    return out


def resolve_inputs(wf: WorkflowFile, overrides: dict[str, str]) -> dict[str, Scalar]:
    """Every input's value; raises UsageError for unknown names, bad values, missing ones."""
    declared = wf.workflow.inputs
    for name in overrides:
        if name not in declared:
            hint = difflib.get_close_matches(name, declared, n=1)
            tail = f" (did you mean '{hint[0]}'?)" if hint else ""
            known = ", ".join(declared) or "none"
            raise UsageError(
                f"--set {name}: {wf.path.name} has no input '{name}'{tail}; inputs: {known}"
            )
    values: dict[str, Scalar] = {}
    for name, spec in declared.items():
        if name in overrides:
            values[name] = _convert(name, overrides[name], spec)
        elif spec.default is not None:
            values[name] = spec.default
        else:
            raise UsageError(
                f"input '{name}' of {wf.path.name} has no default: give it with --set {name}=VALUE"
            )
    return values


def _convert(name: str, raw: str, spec: Input) -> Scalar:
    kind = spec.kind
    value: Scalar
    try:
        if kind == "integer":
            value = int(raw)
        elif kind == "number":
            value = float(raw)
        elif kind == "boolean":
            if raw.lower() not in _TRUE | _FALSE:
                raise ValueError
            value = raw.lower() in _TRUE
        else:
            value = raw
    except ValueError:
        raise UsageError(f"--set {name}={raw}: expected {_article(kind)} {kind}") from None
    if spec.choices is not None and value not in spec.choices:
        choices = ", ".join(str(c) for c in spec.choices)
        raise UsageError(f"--set {name}={raw}: must be one of {choices}")
    return value


def _article(kind: str) -> str:
    return "an" if kind[0] in "aeiou" else "a"
