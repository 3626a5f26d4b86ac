"""Masking secret values in text agentflow writes or shows (events, reports, messages).

Step output is masked at the source, by the step's wrapper, before it reaches a file.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import JsonValue

MASK = "***"


class Redactor:
    """Replaces every occurrence of each secret value with ``***``."""

    def __init__(self, values: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self.values = sorted({v for v in values if v}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, MASK)
        return text

    def deep(self, value: JsonValue) -> Any:
        """``value`` with every string in it masked (keys too), however it is nested."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self(k): self.deep(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.deep(v) for v in value]
        return value
