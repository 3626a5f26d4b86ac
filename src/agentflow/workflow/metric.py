"""``expect.metrics``: numbers to follow over a step's run, read from its output or from a
JSON-lines file it writes (kept as series: ``agentflow.series``)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, model_validator

from agentflow.workflow.base import Model


def _pattern_shorthand(value: Any) -> Any:
    # `loss: 'loss=([0-9.eE+-]+)'` is short for `loss: {log: 'loss=([0-9.eE+-]+)'}`.
    return {"log": value} if isinstance(value, str) else value


class MetricSource(Model):
    """Where a metric's values come from: a pattern over the output (a string is short for
    ``{log: PATTERN}``), or a JSON-lines file the step appends to."""

    log: str | None = None
    """A regular expression over output lines with one group, the value
    (``'loss=([0-9.eE+-]+)'``); the last match on a line counts."""
    jsonl: str | None = None
    """A JSON-lines file, relative to the step's folder in the workspace: one JSON object a
    line; lines that are not, or lack the key, are skipped."""
    key: str | None = None
    """The key of the value in each JSON-lines record (dots go into nested objects; default:
    the metric's name). A record's ``step`` key, when a number, is its step number."""

    @model_validator(mode="after")
    def _one_source(self) -> MetricSource:
        if (self.log is None) == (self.jsonl is None):
            raise ValueError("give exactly one of log (a pattern) and jsonl (a file)")
        if self.key is not None and self.jsonl is None:
            raise ValueError("`key` goes with `jsonl`")
        if self.log is not None:
            try:
                groups = re.compile(self.log).groups
            except re.error as e:
                raise ValueError(f"invalid regular expression {self.log!r}: {e}") from None
            if groups != 1:
                raise ValueError(
                    f"the pattern {self.log!r} has {groups} groups: give exactly one, "
                    "around the value (use (?:...) for other groups)"
                )
        return self


Metric = Annotated[MetricSource, BeforeValidator(_pattern_shorthand)]
