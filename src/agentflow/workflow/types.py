"""Small value types of the workflow format: durations, ids, environment names."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PlainSerializer, ValidationInfo, WithJsonSchema

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_FULL = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

DURATION_PATTERN = r"^(\d+(\.\d+)?(ms|s|m|h|d))+$"

MAX_DURATION_S = 365 * 86400.0
"""The longest duration a workflow (or the model) may give: a year. Longer ones are typos,
and unbounded ones overflow the clock (``now + timeout``) and stop the orchestrator."""


def parse_duration(value: Any) -> float:
    """``"90s"``, ``"15m"``, ``"1h30m"`` or a number of seconds → seconds (float), between
    0 and a year (``MAX_DURATION_S``)."""
    seconds = _seconds(value)
    if math.isnan(seconds):  # YAML's .nan
        raise ValueError(f"expected a duration like 90s, 15m or 2h, got {_shown(value)}")
    if seconds > MAX_DURATION_S:  # also .inf, and digits too many for a float
        raise ValueError(f"a duration can be at most 365d (a year), got {_shown(value)}")
    return seconds


UNITS_REQUIRED = "durations need units"
"""The validation context key under which a workflow file's durations must carry a unit:
``timeout: 5`` reads as seconds to one person and minutes to another (sweeps, cluster
limits), so the file must say. Only the loader sets it; models built in code (a plan's
expected duration, a frozen run's old copy) keep numbers as seconds."""


def _duration_field(value: Any, info: ValidationInfo) -> float:
    strict = isinstance(info.context, dict) and info.context.get(UNITS_REQUIRED, False)
    if strict and _bare_number(value):
        return _no_unit(value)
    return parse_duration(value)


def _bare_number(value: Any) -> bool:
    # NaN, infinities, huge and negative numbers keep their own, clearer messages.
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and 0 <= value <= MAX_DURATION_S
    )


def _no_unit(value: float) -> float:
    n = f"{value:g}" if isinstance(value, float) else str(value)
    raise ValueError(f"{n} has no unit: write {n}s, {n}m or {n}h")


def _seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 90s, 15m or 2h, got {_shown(value)}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value}")
        if isinstance(value, int) and value > MAX_DURATION_S:
            return math.inf  # float() of an int with hundreds of digits would raise
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if _DURATION_FULL.match(text):
            return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
    raise ValueError(f"expected a duration like 90s, 15m or 2h, got {_shown(value)}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def format_duration(seconds: float) -> str:
    """Seconds → the shortest readable form (``"1h30m"``, ``"45s"``, ``"0.5s"``)."""
    if seconds < 60 and seconds != int(seconds):
        return f"{seconds:.3g}s"
    total = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    return "".join(parts) or "0s"


Duration = Annotated[
    float,
    BeforeValidator(_duration_field),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration with its unit: 500ms, 90s, 15m, 2h, 1d, 1h30m; "
            "at most 365d. A bare number is refused (seconds or minutes?).",
        }
    ),
]
"""A length of time in seconds, written in YAML with its unit: ``90s``, ``15m``, ``2h``."""

ID_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$"
StepId = Annotated[str, Field(pattern=ID_PATTERN)]
"""A step id: a letter, then letters, digits, ``-`` or ``_`` (used in paths and tmux)."""

ENV_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
EnvName = Annotated[str, Field(pattern=ENV_PATTERN)]


def _scalar_to_str(value: Any) -> Any:
    # YAML reads `PYTHONUNBUFFERED: 1` as an int; environment values are strings.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


EnvValue = Annotated[str, BeforeValidator(_scalar_to_str)]
Env = dict[EnvName, EnvValue]


_SIZE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str) -> int:
    """Bytes of a size written as Docker does (``4g``, ``512m``, ``1.5G``, ``100``)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmgtKMGT]?)[bB]?", text.strip())
    if not m:
        raise ValueError(f"not a size: {text!r} (write it like 4g or 512m)")
    size = float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if size >= MAX_SIZE:  # also inf: digits too many for a float
        raise ValueError(f"{_shown(text)} is larger than any machine's memory (at most 1024t)")
    return int(size)


MAX_SIZE = 2**50
"""Sizes stay below a pebibyte (``1024t``): what Docker and Slurm take as a number."""
