"""Sweeps: one run per combination of a workflow's ``matrix`` (GitHub Actions' rules for
``include`` and ``exclude``), at most ``max_parallel_runs`` at once, ranked at the end by
the ``objective``.

Each combination is an ordinary run, with its own run directory, sandbox and tmux session,
driven by an orchestrator of its own in that session (as ``run --detach`` does): a failed
combination does not stop the others, and a run of a sweep can be watched, stopped and
resumed like any other. The sweep has an id and a status of its own; its record
(``$AGENTFLOW_HOME/sweeps/<sweep-id>.json``) says which run is which combination, how each
ended, and at the end the ranking. ``sweep_follow`` launches and follows the runs.
"""

from __future__ import annotations

import contextlib
import itertools
import shlex
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentflow.errors import RunLockedError, StateError, UsageError, first_line
from agentflow.search.info import SearchInfo
from agentflow.store import hold_lock, lock_holder, new_run_id, valid_run_id
from agentflow.workflow.model import Objective, Scalar

if TYPE_CHECKING:
    from agentflow.workflow.load import WorkflowFile

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
    return " ".join(f"--set {shlex.quote(f'{k}={v}')}" for k, v in values.items())


SweepStatus = Literal["running", "succeeded", "failed", "blocked", "interrupted"]


class SweepOptions(BaseModel):
    """What the sweep's command line gave every run of it, kept for ``resume``."""

    model_config = ConfigDict(extra="forbid")

    sandbox: str | None = None
    """``--sandbox``, else the workflow's choice."""
    planner: str | None = None
    """``--planner``, else the workflow's."""
    keep_sandbox: bool = False
    yes: bool = False
    no_diagnose: bool = False
    no_cache: bool = False
    notify: str | None = None
    """``--notify``'s URL: each run of the sweep keeps it (``notify.json``) and notifies."""


class Member(BaseModel):
    """One combination of a sweep and the run made of it."""

    model_config = ConfigDict(extra="forbid")

    index: int
    values: dict[str, Scalar]
    run_id: str | None = None
    status: str = "pending"
    """``pending`` (not started), ``running``, then how its run ended (``succeeded``,
    ``failed``, ``blocked``, ``interrupted``: stopped, or its orchestrator gone)."""
    score: float | None = None
    """The objective's value, when the run gave it."""
    message: str | None = None
    trial: int | None = None
    """In a search: the number of its Optuna trial (``pruned``: stopped early by it)."""


class SweepRecord(BaseModel):
    """``sweeps/<id>.json``: the combinations, their runs, how each went, and the sweep's
    own status and ranking."""

    model_config = ConfigDict(extra="forbid")

    sweep_id: str
    workflow: str
    workflow_file: str
    objective: Objective | None
    members: list[Member]
    status: SweepStatus = "running"
    """``running`` while followed (or its follower died: ``status`` says ``orphaned``),
    then ``succeeded`` (every run did), ``failed``, ``blocked`` (a run waits for a person),
    or ``interrupted`` (detached or stopped, or a run was: ``resume`` continues it)."""
    message: str | None = None
    sets: dict[str, str] = Field(default_factory=dict)
    """The ``--set`` values of the command line, given to every run."""
    options: SweepOptions = Field(default_factory=SweepOptions)
    parallel: int = 1
    """At most this many runs at once (``max_parallel_runs``)."""
    created_at: datetime | None = None
    finished_at: datetime | None = None
    ranking: list[int] = Field(default_factory=list)
    """Member indices, best first, written when the sweep ends."""
    best_command: str | None = None
    """The command that runs the best combination again, with every ``--set``."""
    search: SearchInfo | None = None
    """An adaptive search (``agentflow search``): members are asked from its study."""

    @property
    def kind(self) -> str:
        return "search" if self.search is not None else "sweep"

    def planned(self) -> int:
        """How many runs in all (a search's members come one by one)."""
        return max(len(self.members), self.search.trials if self.search else 0)

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

    def command_for(self, member: Member) -> str:
        """``agentflow run FILE`` with every ``--set`` of the sweep and the combination."""
        values: dict[str, Scalar] = {**self.sets, **member.values}
        return f"agentflow run {shlex.quote(self.workflow_file)} {set_line(values)}".rstrip()

    def conclude(self) -> None:
        """The final status (``interrupted`` first: a resume has work; then ``blocked``,
        ``failed``), the ranking and the best command."""
        statuses = {m.status for m in self.members}
        if statuses & {"interrupted", "running", "pending"} or len(self.members) < self.planned():
            self.status = "interrupted"
        elif "blocked" in statuses:
            self.status = "blocked"
        elif not statuses <= {"succeeded", "pruned"}:  # a pruned trial did its job
            self.status = "failed"
        else:
            self.status = "succeeded"
        self.ranking = [m.index for m in self.ranked()]
        best = self.best()
        self.best_command = self.command_for(best) if best is not None else None
        self.finished_at = datetime.now(UTC)


def score_of(outputs: dict[str, dict[str, str]], objective: Objective | None) -> float | None:
    """The objective's metric: the first step output of that name that is a number."""
    if objective is None:
        return None
    for step_outputs in outputs.values():
        if objective.metric in step_outputs:
            try:
                return float(step_outputs[objective.metric]) + 0.0  # no "-0" shown
            except ValueError:
                return None
    return None


def new_sweep_id(workflow: str) -> str:
    return new_run_id(workflow).replace(workflow, f"{workflow}-sweep", 1)


def members_of(combos: list[dict[str, Scalar]]) -> list[Member]:
    return [Member(index=i, values=values) for i, values in enumerate(combos, 1)]


def sweep_path(home: Path, sweep_id: str) -> Path:
    return home / "sweeps" / f"{sweep_id}.json"


def is_sweep(home: Path, name: str) -> bool:
    """An exact sweep id (never a prefix: a sweep's runs' ids start with it)."""
    return valid_run_id(name) and sweep_path(home, name).is_file()


def read_record(home: Path, sweep_id: str) -> SweepRecord:
    path = sweep_path(home, sweep_id)
    try:
        return SweepRecord.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as e:
        raise StateError(f"{path}: not a readable sweep record ({first_line(e)})") from None


def save_record(home: Path, record: SweepRecord) -> None:
    path = sweep_path(home, record.sweep_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(record.model_dump_json(indent=2), encoding="utf-8")
    tmp.replace(path)


def frozen_path(home: Path, sweep_id: str) -> Path:
    """The workflow file as the sweep started (``run_sweep`` writes it)."""
    return sweep_path(home, sweep_id).with_suffix(".workflow.yaml")


def frozen_workflow(home: Path, record: SweepRecord) -> WorkflowFile:
    """The workflow as the sweep started it; a record of an earlier version: the file as
    it is now."""
    from agentflow.workflow.load import WorkflowFile, load_workflow, parse_workflow

    frozen = frozen_path(home, record.sweep_id)
    path = Path(record.workflow_file)
    if frozen.is_file():
        text = frozen.read_text(encoding="utf-8")
        return WorkflowFile(path, text, parse_workflow(text, str(path), base_dir=path.parent))
    return load_workflow(path)


def records(home: Path) -> Iterator[SweepRecord]:
    for path in sorted((home / "sweeps").glob("*.json")):
        yield SweepRecord.model_validate_json(path.read_bytes())


def follower_lock(home: Path, sweep_id: str) -> contextlib.AbstractContextManager[None]:
    """Held by the process that follows the sweep (launches its runs, records them): one at
    a time. Its pid is in the file, for ``status`` (no holder while ``running``: orphaned)."""
    path = sweep_path(home, sweep_id).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)

    def busy(pid: int | None) -> RunLockedError:
        return RunLockedError(
            f"sweep {sweep_id} is being followed by another agentflow process"
            f"{f' (pid {pid})' if pid else ''}: `agentflow status {sweep_id}` shows it"
        )

    return hold_lock(path, busy)


def follower(home: Path, sweep_id: str) -> int | None:
    """The pid of the live process following the sweep, or None."""
    return lock_holder(sweep_path(home, sweep_id).with_suffix(".lock"))
