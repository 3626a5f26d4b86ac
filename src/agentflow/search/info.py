"""What a sweep record keeps of a search (no Optuna here: ``status`` reads it)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict


class SearchInfo(BaseModel):
    """The search part of a sweep record: the trial budget and where the study is."""

    model_config = ConfigDict(extra="forbid")

    trials: int
    """How many trials in all (``search.trials``)."""
    study: str
    """The study's SQLite file."""
    sampler: str = "tpe"
    seed: int | None = None
    report: str | None = None
    """The HTML page of the result (importance, parallel coordinates), once written."""


def search_dir(home: Path, search_id: str) -> Path:
    return home / "searches" / search_id
