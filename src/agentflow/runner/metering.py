"""The runner's side of ``expect.metrics``: at each look at a running step, the values in its
new output and in its JSON-lines files join the step's series (``agentflow.series``),
saved in ``metrics/<step>.json``; the checkpoint gets each series in short."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agentflow import series
from agentflow.monitor import READ_LIMIT
from agentflow.series import StepSeries
from agentflow.state import MetricSummary, now
from agentflow.stepfiles import NewOutput
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


def look(
    r: RunnerBase, step_id: str, new: NewOutput | None, *, final: bool
) -> dict[str, MetricSummary] | None:
    """Add what the step reported since the last look to its series; the series in short
    when something was added (None: nothing new, or the step follows no metric)."""
    step = r.s.workflow.step(step_id)
    metrics = step.expect.metrics if step.expect else {}
    if not metrics:
        return None
    data = _meter(r, step_id).data
    before = {k: s.count for k, s in data.series.items()}
    patterns = {k: re.compile(m.log) for k, m in metrics.items() if m.log is not None}
    if patterns and (new is not None or final):
        lines = _new_lines(r, step_id, data, new, final)
        progress = step.expect.progress if step.expect else None
        # Only done/total progress gives a step number (a lone group is a percentage).
        regex = re.compile(progress) if progress and re.compile(progress).groups == 2 else None
        found, data.step = series.parse_lines(lines, patterns, regex, data.step)
        t = (new.written if new is not None else now()).timestamp()
        for f in found:
            data.add(f.name, f.value, t, f.step)
    for name, m in metrics.items():
        if m.jsonl is not None:
            _read_jsonl(r, step_id, data, name, m.jsonl, m.key or name)
    if {k: s.count for k, s in data.series.items()} == before:
        return None
    series.save(r.s.run.path, step_id, data)
    return summaries(data)


def _new_lines(
    r: RunnerBase, step_id: str, data: StepSeries, new: NewOutput | None, final: bool
) -> list[str]:
    """The complete lines of the output not yet taken in (with the unfinished last one when
    the attempt has ended)."""
    st = r.state.steps[step_id]
    if data.attempt != st.attempts:  # a new attempt: a new output.log
        data.attempt, data.output_bytes, data.carry = st.attempts, 0, ""
    text = ""
    if new is not None:
        begin = max(st.output_bytes, new.size - READ_LIMIT)  # where new.text starts
        text = new.text
        if data.output_bytes < st.output_bytes:
            data.carry = ""  # saved before output that had no value: its line is stale
        if begin > st.output_bytes:  # output left unread: the text starts mid-line
            data.carry, text = "", re.split(r"[\r\n]", text, maxsplit=1)[-1]
        elif data.output_bytes > begin:  # taken in already, before a crash and resume
            skip = data.output_bytes - begin
            text = text.encode()[skip:].decode("utf-8", errors="replace")
        data.output_bytes = max(data.output_bytes, new.size)
    lines, data.carry = series.split_complete(data.carry, text)
    if final and data.carry:
        lines, data.carry = [*lines, data.carry], ""
    return lines


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
