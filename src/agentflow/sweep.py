"""Sweeps: one run per combination of a workflow's ``matrix`` (GitHub Actions' rules for
``include`` and ``exclude``), at most ``max_parallel_runs`` at once, ranked at the end by
the ``objective``.

Each combination is an ordinary run, with its own run directory, sandbox and tmux session,
driven by an orchestrator of its own in that session (as ``run --detach`` does): a failed
combination does not stop the others, and a run of a sweep can be watched, stopped and
resumed like any other. The sweep itself only launches runs, waits for them, and keeps a
record (``$AGENTFLOW_HOME/sweeps/<sweep-id>.json``) of which run is which combination.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from agentflow.errors import AgentflowError, UsageError, first_line
from agentflow.state import UNSUCCESSFUL
from agentflow.store import Store, new_run_id
from agentflow.workflow.model import Objective, Scalar

MATRIX_KEYWORDS = ("include", "exclude")


def expand(matrix: dict[str, list[Any]]) -> list[dict[str, Scalar]]:
    """The combinations of ``matrix``: the product of its lists, minus ``exclude`` entries
    (each removes the combinations that have all its values), plus ``include`` entries
    (each adds its values to every combination of the product it does not contradict on
    the matrix's own keys, or, fitting none, becomes a combination of its own; those are
    never merged into again)."""
    dims = {k: v for k, v in matrix.items() if k not in MATRIX_KEYWORDS}
    combos: list[dict[str, Scalar]] = (
        [dict(zip(dims, values, strict=True)) for values in itertools.product(*dims.values())]
        if dims
        else []
    )
    for entry in matrix.get("exclude") or []:
        combos = [c for c in combos if not all(_same(c.get(k), v) for k, v in entry.items())]
    extra: list[dict[str, Scalar]] = []
    for entry in matrix.get("include") or []:
        fits = [c for c in combos if all(_same(c[k], v) for k, v in entry.items() if k in dims)]
        for c in fits:
            c.update(entry)
        if not fits:
            extra.append(dict(entry))
    return combos + extra


def _same(a: object, b: object) -> bool:
    """Values from the command line are text: ``--matrix k=4`` matches ``exclude: [{k: 4}]``."""
    return a == b or (a is not None and b is not None and str(a) == str(b))


def parse_matrix_options(items: list[str]) -> dict[str, list[Any]]:
    """``--matrix k=2,4,8`` (repeated) → ``{"k": ["2", "4", "8"]}``."""
    out: dict[str, list[Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not name.strip() or not values.strip():
            raise UsageError(f"--matrix {item!r}: write it as --matrix name=value1,value2")
        out[name.strip()] = [v.strip() for v in values.split(",")]
    return out


def label(values: dict[str, Scalar]) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items())


def set_line(values: dict[str, Scalar]) -> str:
    return " ".join(f"--set {k}={v}" for k, v in values.items())


class Member(BaseModel):
    """One combination of a sweep and the run made of it."""

    model_config = ConfigDict(extra="forbid")

    index: int
    values: dict[str, Scalar]
    run_id: str | None = None
    status: str = "pending"
    """``pending`` (not started), then the run's own status."""
    score: float | None = None
    """The objective's value, when the run gave it."""
    message: str | None = None


class SweepRecord(BaseModel):
    """``sweeps/<id>.json``: the combinations, their runs, how each went."""

    model_config = ConfigDict(extra="forbid")

    sweep_id: str
    workflow: str
    workflow_file: str
    objective: Objective | None
    members: list[Member]

    def ranked(self) -> list[Member]:
        """Best first: runs that gave the objective by it, then the rest in order."""
        if self.objective is None:
            return list(self.members)
        sign = -1 if self.objective.goal == "maximize" else 1
        scored = sorted(
            (m for m in self.members if m.score is not None), key=lambda m: sign * (m.score or 0)
        )
        return scored + [m for m in self.members if m.score is None]

    def best(self) -> Member | None:
        ranked = self.ranked()
        if self.objective is None or not ranked or ranked[0].score is None:
            return None
        return ranked[0]


def score_of(outputs: dict[str, dict[str, str]], objective: Objective | None) -> float | None:
    """The objective's metric: the first step output of that name that is a number."""
    if objective is None:
        return None
    for step_outputs in outputs.values():
        if objective.metric in step_outputs:
            try:
                return float(step_outputs[objective.metric])
            except ValueError:
                return None
    return None


FINAL_RUN = {"succeeded", "failed", "blocked", "interrupted"}

Launch = Callable[[Member, str], None]
"""Starts the run of a member under the given run id (planning it first)."""


class Sweep:
    """Launches the members' runs, at most ``parallel`` at once, and follows them."""

    def __init__(
        self,
        store: Store,
        record: SweepRecord,
        parallel: int,
        launch: Launch,
        say: Callable[[Member, str], None],
        poll: float = 0.5,
    ) -> None:
        self.store = store
        self.record = record
        self.parallel = parallel
        self.launch = launch
        self.say = say
        self.poll = poll
        self.path = store.home / "sweeps" / f"{record.sweep_id}.json"

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(self.record.model_dump_json(indent=2), encoding="utf-8")
        tmp.replace(self.path)

    def run(self) -> SweepRecord:
        self.save()
        waiting = list(self.record.members)
        active: list[Member] = []
        while waiting or active:
            while waiting and len(active) < self.parallel:
                member = waiting.pop(0)
                member.run_id = f"{self.record.sweep_id}-{member.index}"
                try:
                    self.launch(member, member.run_id)
                except AgentflowError as e:
                    # A combination that cannot even start (a bad value) fails alone.
                    member.status, member.message = "failed", first_line(e)
                    self.say(member, f"could not start: {member.message}")
                else:
                    member.status = "running"
                    active.append(member)
                    self.say(member, f"started run {member.run_id}")
                self.save()
            time.sleep(self.poll)
            for member in list(active):
                if self._ended(member):
                    active.remove(member)
                    self.save()
        return self.record

    def _ended(self, member: Member) -> bool:
        assert member.run_id is not None
        run = self.store.open(member.run_id)
        state = run.read_state()
        if state.status not in FINAL_RUN or run.lock_holder() is not None:
            return False
        member.status = state.status
        failed = [f"{k} {st.status}" for k, st in state.steps.items() if st.status in UNSUCCESSFUL]
        member.message = ", ".join(failed) or state.message
        outputs = {k: st.outputs for k, st in state.steps.items()}
        member.score = score_of(outputs, self.record.objective)
        shown = f"{state.status}" + (f" ({member.message})" if member.message else "")
        if member.score is not None and self.record.objective is not None:
            shown += f", {self.record.objective.metric}={member.score:g}"
        self.say(member, shown)
        return True


def new_sweep_id(workflow: str) -> str:
    return new_run_id(workflow).replace(workflow, f"{workflow}-sweep", 1)


def members_of(combos: list[dict[str, Scalar]]) -> list[Member]:
    return [Member(index=i, values=values) for i, values in enumerate(combos, 1)]


def records(home: Path) -> Iterator[SweepRecord]:
    for path in sorted((home / "sweeps").glob("*.json")):
        yield SweepRecord.model_validate_json(path.read_bytes())
