"""``${{ ... }}`` expressions in commands and environment values.

Forms: ``inputs.NAME``, ``env.NAME``, ``run.id``, ``steps.ID.outputs.NAME``,
``ports.NAME`` (a port the step asked for). Inputs are substituted when the plan is made;
the others just before a step starts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

_EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
EXPRESSION = _EXPR
"""One ``${{ ... }}`` expression (its inside is group 1)."""
_NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
_FORMS = {
    "inputs": re.compile(rf"^inputs\.({_NAME})$"),
    "env": re.compile(rf"^env\.({_NAME})$"),
    "run": re.compile(r"^run\.(id)$"),
    "steps": re.compile(rf"^steps\.({_NAME})\.outputs\.({_NAME})$"),
    "ports": re.compile(r"^ports\.([A-Za-z_][A-Za-z0-9_]*)$"),
}


@dataclass(frozen=True)
class Ref:
    """One expression: its kind (``inputs``, ``env``, ``run``, ``steps``, ``ports``) and
    names."""

    text: str
    kind: str
    names: tuple[str, ...]


class TemplateSyntaxError(ValueError):
    """An expression that is none of the known forms."""


def parse(expression: str) -> Ref:
    """Parse the inside of ``${{ }}``."""
    for kind, pattern in _FORMS.items():
        m = pattern.match(expression)
        if m:
            return Ref(expression, kind, m.groups())
    raise TemplateSyntaxError(
        f"unknown expression '${{{{ {expression} }}}}': use inputs.NAME, env.NAME, run.id, "
        "steps.ID.outputs.NAME or ports.NAME"
    )


def references(text: str) -> Iterator[Ref]:
    """Every expression in ``text``; raises TemplateSyntaxError for an unknown form."""
    for m in _EXPR.finditer(text):
        yield parse(m.group(1))


def scalar_text(value: str | int | float | bool) -> str:
    """An input value as it is substituted into text (``true``/``false`` for booleans)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def substitute(text: str, lookup: Callable[[Ref], str | None]) -> str:
    """Replace each expression by ``lookup(ref)``; where it returns None, keep it as written."""

    def one(m: re.Match[str]) -> str:
        value = lookup(parse(m.group(1)))
        return m.group(0) if value is None else value

    return _EXPR.sub(one, text)


def input_names(text: str) -> set[str]:
    """The inputs ``text`` refers to (``${{ inputs.NAME }}``); an expression of another or
    of no known form is passed over (text that is not checked, such as a description)."""
    names: set[str] = set()
    for m in _EXPR.finditer(text):
        found = _FORMS["inputs"].match(m.group(1).strip())
        if found:
            names.add(found.group(1))
    return names


def strings_in(value: object) -> Iterator[str]:
    """Every string in a dumped model (dicts' values, lists, tuples), where expressions
    may be."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings_in(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from strings_in(v)
