"""The docstrings under a model's fields, read from its source only when a schema or a
reference page is made.

pydantic's ``use_attribute_docstrings`` reads them when each model class is made: it parsed
the source of every workflow, plan and settings model at every start of the CLI, a third
of its start-up. ``described`` (a model's ``json_schema_extra``) gives the JSON schema the
same descriptions, read when a schema is asked for.
"""

from __future__ import annotations

import ast
import functools
import inspect
import itertools
import textwrap
from typing import Any

from pydantic import BaseModel


def attribute_docstrings(cls: type) -> dict[str, str]:
    """The docstring under each annotated attribute of ``cls`` and of its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        docs.update(_own(klass))
    return docs


@functools.cache
def _own(cls: type) -> dict[str, str]:
    """The docstrings under the attributes written in ``cls``'s own body."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # a class made at run time, or a built-in one
        return {}
    body = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)).body
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def described(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """Give each property of ``cls``'s schema its field's docstring as its description, as
    ``use_attribute_docstrings`` would (not where the field names one, nor where it only
    repeats the description of the model the field holds)."""
    docs = attribute_docstrings(cls)
    properties = schema.get("properties", {})
    for name, field in cls.model_fields.items():
        doc = docs.get(name)
        key = field.alias or name
        prop = properties.get(key)
        if doc is None or prop is None or field.description is not None:
            continue
        held = field.annotation
        repeated = isinstance(held, type) and doc == inspect.cleandoc(held.__doc__ or "")
        if "$ref" in prop and repeated:
            continue
        # (In the order pydantic writes a property's keys: sorted.)
        properties[key] = dict(sorted({**prop, "description": doc}.items()))
