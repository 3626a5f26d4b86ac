"""``LeanModel``: a frozen pydantic model that a run holds by the ten thousand (a step's
checkpoint, an event, a step's report).

pydantic keeps, in every instance, the set of the fields its input named
(``model_fields_set``, for ``exclude_unset``). A checkpointed step read back names all its
27 fields: a 2.2 KB set, more than the step's values, and at 10,000 steps these sets were
a third of the orchestrator's memory. agentflow never dumps with ``exclude_unset``, so
these models keep one shared empty set instead: ``model_fields_set`` is always empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel

_UNTRACKED: set[str] = set()
"""Shared by every instance: nothing adds to it, as the models are frozen (no assignment)
and pydantic copies the set before a ``model_copy`` adds the updated names."""


class LeanModel(BaseModel):
    """A frozen model that does not record which fields were given."""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if not cls.model_config.get("frozen"):
            raise TypeError(f"{cls.__name__}: a LeanModel must be frozen (its set is shared)")

    def model_post_init(self, context: Any, /) -> None:
        object.__setattr__(self, "__pydantic_fields_set__", _UNTRACKED)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copied = super().model_copy(update=update, deep=deep)
        object.__setattr__(copied, "__pydantic_fields_set__", _UNTRACKED)
        return copied
