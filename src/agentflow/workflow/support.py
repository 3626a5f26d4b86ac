"""Keys of the format that this version parses but does not act on yet.

A workflow that uses one is refused with "not supported yet" rather than run with the key
silently ignored. Each entry disappears when the feature lands.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import BaseModel

from agentflow.workflow.model import Workflow

Loc = tuple[str | int, ...]

_STEP_KEYS: dict[str, str] = {}


def unsupported(workflow: Workflow) -> Iterator[tuple[Loc, str]]:
    """Where ``workflow`` uses a key that this version cannot act on yet."""
    for i, step in enumerate(workflow.steps):
        for key in sorted(step.model_fields_set & _STEP_KEYS.keys()):
            if getattr(step, key):
                yield ("steps", i, key), _msg(_STEP_KEYS[key])


def changed_keys(model: BaseModel) -> set[str]:
    """The keys written with a value other than their default (writing a default is fine)."""
    fields = type(model).model_fields
    return {
        k
        for k in model.model_fields_set
        if getattr(model, k) != fields[k].get_default(call_default_factory=True)
    }


def _msg(what: str) -> str:
    return f"{what} is not supported yet in this version of agentflow: remove it for now"
