"""The runner's side of ``expect.metrics``: at each look at a running step, the values in its
new output and in its JSON-lines files join the step's series (``agentflow.series``),
saved in ``metrics/<step>.json``; the checkpoint gets each series in short."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from agentflow import series, stepfiles
from agentflow.monitor import READ_LIMIT
from agentflow.series import StepSeries
from agentflow.state import MetricSummary, now
from agentflow.verify import OutputError

if TYPE_CHECKING:
    from agentflow.runner.base import RunnerBase


@dataclass
class Meter:
    """A step's series in memory (and on disk)."""

    data: StepSeries


def _meter(r: RunnerBase, step_id: str) -> Meter:
    meter = r.meters.get(step_id)
    if meter is None:  # first look in this runner: what earlier ones saved (a resume)
        meter = r.meters[step_id] = Meter(series.load(r.s.run.path, step_id))
    return meter


def look(r: RunnerBase, step_id: str, *, final: bool) -> dict[str, MetricSummary] | None:
    """Add what the step reported since the last look to its series; the series in short
    when something was added (None: nothing new, or the step follows no metric).
    ``final``: the attempt has ended (its unfinished last line counts)."""
    step = r.s.workflow.step(step_id)
    metrics = step.expect.metrics if step.expect else {}
    if not metrics:
        return None
    data = _meter(r, step_id).data
    before = {k: s.count for k, s in data.series.items()}
    patterns = {k: re.compile(m.log) for k, m in metrics.items() if m.log is not None}
    if patterns:
        lines, written = _new_lines(r, step_id, data, final)
        progress = step.expect.progress if step.expect else None
        # Only done/total progress gives a step number (a lone group is a percentage).
        regex = re.compile(progress) if progress and re.compile(progress).groups == 2 else None
        found, data.step = series.parse_lines(lines, patterns, regex, data.step)
        for f in found:
            data.add(f.name, f.value, written.timestamp(), f.step)
    for name, m in metrics.items():
        if m.jsonl is not None:
            _read_jsonl(r, step_id, data, name, m.jsonl, m.key or name)
    if {k: s.count for k, s in data.series.items()} == before:
        return None
    # With the offset it read to: values are saved as soon as found, so a resume after a
    # crash reads on from there, counting none twice and losing none.
    series.save(r.s.run.path, step_id, data)
    return summaries(data)


def _new_lines(
    r: RunnerBase, step_id: str, data: StepSeries, final: bool
) -> tuple[list[str], datetime]:
    """The complete lines of the output after what the series has taken in (read here, from
    the series' own offset: the checkpoint's may be ahead or behind it after a crash), with
    the unfinished last one when the attempt has ended; and when they were written."""
    attempt = r.state.steps[step_id].attempts
    if data.attempt != attempt:  # a new attempt: a new output.log
        data.attempt, data.output_bytes, data.carry = attempt, 0, ""
    new = stepfiles.new_output(r.s.run.step_dir(step_id), data.output_bytes, READ_LIMIT)
    text = ""
    if new is not None:
        text = new.text
        if new.size - data.output_bytes > READ_LIMIT:  # output left unread: mid-line start
            data.carry, text = "", re.split(r"[\r\n]", text, maxsplit=1)[-1]
        data.output_bytes = new.size
    lines, data.carry = series.split_complete(data.carry, text)
    if final and data.carry:
        lines, data.carry = [*lines, data.carry], ""
    return lines, new.written if new is not None else now()


def _read_jsonl(
    r: RunnerBase, step_id: str, data: StepSeries, name: str, file: str, key: str
) -> None:
    step = r.s.workflow.step(step_id)
    env = r._step_env(step)
    where = r._where(step, env)
    try:
        path = where.host_path(r._render(file, env))
    except OutputError:
        return  # leads outside the workspace: nothing to read there
    offset = data.jsonl_offsets.get(name, 0)
    records, data.jsonl_offsets[name] = series.read_jsonl(path, where.root, key, offset, r.hidden)
    t = now().timestamp()
    for record in records:
        data.add(name, record.value, t, record.step if record.step is not None else data.step)


def summaries(data: StepSeries) -> dict[str, MetricSummary]:
    return {
        name: MetricSummary(last=s.points[-1].v, shape=s.shape(), count=s.count)
        for name, s in data.series.items()
        if s.points
    }


def last_values(r: RunnerBase, step_id: str) -> dict[str, str]:
    """The last value of each metric the step follows, as outputs."""
    step = r.s.workflow.step(step_id)
    if not step.expect or not step.expect.metrics:
        return {}
    data = _meter(r, step_id).data
    return {
        name: series.output_value(s.points[-1].v)
        for name, s in data.series.items()
        if s.points and name in step.expect.metrics
    }
