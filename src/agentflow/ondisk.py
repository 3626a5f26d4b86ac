"""What a run's steps' own files say, laid over its checkpoint for display.

The checkpoint (``state.json``) is kept current by the orchestrator that drives the run.
When nobody drives it (its orchestrator died, or a person detached and nothing resumed
it), a step that was running goes on in tmux, writing its output, and at its end its
exit code, into ``steps/<id>/``, while the checkpoint still says ``running`` with the
progress of the last look. ``status``, ``logs`` and ``report`` show such a run from the
step files instead: the exit code (``ended while unwatched: exit 0, resume to record
it``) and the time it was written, and the progress of the output's tail.

Read only, and only for display: nothing here writes the checkpoint (a resume judges an
ended attempt: its checks, outputs, retries). Step files are read through ``stepfiles``
(``safefs``): an exit code is a small integer, output a bounded tail.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentflow import stepfiles
from agentflow.monitor import READ_LIMIT, eta_seconds, parse_progress
from agentflow.state import Progress, RunState, StepState, now
from agentflow.store import RunDir
from agentflow.textsafe import json_text
from agentflow.workflow.model import Workflow


@dataclass(frozen=True)
class OnDisk:
    """A run's state with its step files' truth laid over it."""

    state: RunState
    """The checkpoint, with what the step files say (never saved)."""
    driven: bool
    """An orchestrator holds the run's lock: it keeps the checkpoint current."""
    unwatched: frozenset[str]
    """Running steps nobody watches (the run is not driven)."""
    ended: frozenset[str]
    """Running steps whose exit code is written but not yet recorded in the checkpoint."""

    @property
    def ended_unwatched(self) -> frozenset[str]:
        return self.ended & self.unwatched


def ended_note(code: int) -> str:
    return f"ended while unwatched: exit {code}, resume to record it"


def read(run: RunDir, state: RunState, workflow: Workflow | None = None) -> OnDisk:
    """``state`` with its running steps as their files show them. A step whose exit code
    is written gets it (and its time) whether or not the run is driven (the orchestrator
    records it a moment later); when nobody drives the run, its note says so, and a step
    still going gets its progress from the end of its output."""
    driven = run.lock_holder() is not None
    running = [k for k, st in state.steps.items() if st.status == "running"]
    if not running:
        return OnDisk(state, driven, frozenset(), frozenset())
    if workflow is None and not driven:
        from agentflow.report.metrics import frozen_workflow  # (the report package is heavy)

        workflow = frozen_workflow(run)
    ended: set[str] = set()
    steps = dict(state.steps)
    for step_id in running:
        st = steps[step_id]
        folder = run.step_dir(step_id)
        code, written = stepfiles.exit_code(folder)
        changes: dict[str, object] = {}
        if code is not None:
            ended.add(step_id)
            changes = {"exit_code": code, "finished_at": written}
            if not driven:
                changes["message"] = ended_note(code)
        if not driven:
            changes.update(_progress(folder, st, workflow, step_id, code is None))
        if changes:
            steps[step_id] = st.model_copy(update=changes)
    unwatched = frozenset() if driven else frozenset(running)
    return OnDisk(state.model_copy(update={"steps": steps}), driven, unwatched, frozenset(ended))


def _progress(
    folder: Path, st: StepState, workflow: Workflow | None, step_id: str, going: bool
) -> dict[str, object]:
    """The progress and last output time of the end of the step's output (as the
    monitor's look would find them), with an ETA while it is going."""
    new = stepfiles.new_output(folder, 0, READ_LIMIT)
    pattern = None
    if workflow is not None:
        step = next((s for s in workflow.steps if s.id == step_id), None)
        pattern = step.expect.progress if step is not None and step.expect else None
    try:
        found = parse_progress(new.text, pattern) if new is not None else None
    except re.error:  # a pattern a hand-edited copy of the workflow holds: no progress
        found = None
    changes: dict[str, object] = {"last_output_at": new.written} if new is not None else {}
    if found is not None:
        progress = Progress(done=found[0], total=found[1])
        elapsed = (now() - st.started_at).total_seconds() if st.started_at else 0.0
        eta = eta_seconds(progress.fraction, elapsed) if going else None
        changes["progress"] = progress.model_copy(update={"eta_s": eta})
    elif st.progress is not None and (not going or st.progress.total == 0):
        # An ETA from the expected duration, as of a look nobody will take again: none.
        changes["progress"] = (
            None if st.progress.total == 0 else st.progress.model_copy(update={"eta_s": None})
        )
    return changes


def as_json(seen: OnDisk) -> dict[str, Any]:
    """The checkpoint's JSON (every field as ``state.json`` has it) with what the files
    say, and added fields: ``driven`` for the run; per step, ``unwatched`` (running,
    nobody watches it) and ``ended_unwatched`` (its exit code is written, not recorded)."""
    data: dict[str, Any] = json.loads(seen.state.model_dump_json())
    data["driven"] = seen.driven
    for step_id, step in data["steps"].items():
        step["unwatched"] = step_id in seen.unwatched
        step["ended_unwatched"] = step_id in seen.ended_unwatched
    return data


def json_dump(value: object) -> str:
    """Indented JSON, safe to print to a terminal (``textsafe.json_text``)."""
    return json_text(json.dumps(value, indent=2, ensure_ascii=False)) + "\n"
