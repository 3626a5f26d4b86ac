"""``Model``: the base of every model of the workflow format (``model.py`` and the blocks
in modules of their own: ``search``, ``notify``, ``metric``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from agentflow.docstrings import described


class Model(BaseModel):
    """Base of every workflow model: frozen, no unknown keys, docstrings become descriptions.
    No number may be NaN or infinite (YAML's ``.nan``, ``.inf``): a NaN bound makes a check
    that never fails, an infinite one overflows the clock."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra=described, allow_inf_nan=False
    )
