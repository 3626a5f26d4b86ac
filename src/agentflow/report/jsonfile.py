"""``report.json`` made a step and an event at a time: the same bytes as the whole report
dumped with ``indent=2`` (a test holds them equal), never held whole. At 10,000 steps the
whole dump was the orchestrator's peak memory: pydantic builds the 13 MB and copies them
once more into the bytes it returns."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import TypeAdapter

from agentflow.report.model import Report, StepReport
from agentflow.store import Event
from agentflow.textsafe import json_bytes

_HEAD = TypeAdapter(Report)
_LISTS: tuple[tuple[str, TypeAdapter[Any]], ...] = (
    ("steps", TypeAdapter(StepReport)),
    ("events", TypeAdapter(Event)),
)
"""The report's long lists, in the order of its fields."""


def report_json(report: Report) -> Iterator[bytes]:
    """The bytes of ``report.json``, in pieces: the report without its long lists, with
    each list's items dumped one by one where it stood (every line of an item indented two
    levels, as inside the whole dump; JSON strings hold no line break of their own)."""
    empty = report.model_copy(update={name: [] for name, _ in _LISTS})
    rest = json_bytes(_HEAD.dump_json(empty, indent=2))
    for name, adapter in _LISTS:
        key = f'\n  "{name}": '.encode()  # a key of the top level: indented once
        before, found, rest = rest.partition(key + b"[]")
        if not found:
            raise ValueError(f"report.json: no top-level {name!r} in the dump")
        yield before
        yield key
        yield from _items(getattr(report, name), adapter)
    yield rest


def _items(items: Sequence[object], adapter: TypeAdapter[Any]) -> Iterator[bytes]:
    if not items:
        yield b"[]"
        return
    yield b"[\n"
    for i, item in enumerate(items):
        dumped = json_bytes(adapter.dump_json(item, indent=2))
        yield (b",\n    " if i else b"    ") + dumped.replace(b"\n", b"\n    ")
    yield b"\n  ]"
