"""The run history: a summary of every run under a home, in ``$AGENTFLOW_HOME/history.db``.

One row per run in ``runs`` (its workflow, the sha256 of the workflow file it ran, inputs,
status, times, the model's calls, tokens by kind and estimated cost) and one per step in
``steps`` (status, attempts, durations, outputs, metrics measured by ``success.metrics``,
artifacts). A run is written when it finishes or is stopped, by its run id: a run resumed
and finished again replaces its earlier summary, so it is counted once. The history feeds
the expected durations of steps (``monitor.learned_durations``), ``agentflow history`` and
``agentflow compare``.

The database is SQLite (the standard library's ``sqlite3``). Its schema is versioned in
``PRAGMA user_version``: ``MIGRATIONS[i]`` takes it from version ``i`` to ``i + 1``, and
every connection brings an older database up to date first (in one transaction, so two
processes never migrate it twice). A database from a newer agentflow is refused, not
changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agentflow.artifacts import Artifact, read_manifest
from agentflow.errors import AgentflowError, UsageError
from agentflow.report.model import Report, StepReport
from agentflow.state import RunState, Usage, now
from agentflow.store import RunDir
from agentflow.workflow.model import Scalar

DB_NAME = "history.db"
BUSY_TIMEOUT_S = 10.0
"""How long a writer waits for another (runs that end at the same moment)."""
LEARN_FROM = 20
"""Learned durations: the median over this many latest successful runs of the step."""

MIGRATIONS: list[str] = [
    # 0 -> 1
    """
    CREATE TABLE runs (
        run_id          TEXT PRIMARY KEY,
        workflow        TEXT NOT NULL,
        workflow_file   TEXT NOT NULL,
        workflow_sha256 TEXT,
        status          TEXT NOT NULL,
        message         TEXT,
        sandbox         TEXT NOT NULL,
        planner         TEXT NOT NULL,
        inputs          TEXT NOT NULL,
        created_at      TEXT NOT NULL,
        finished_at     TEXT,
        duration_s      REAL,
        tokens_used     INTEGER NOT NULL DEFAULT 0,
        recorded_at     TEXT NOT NULL
    );
    CREATE INDEX runs_by_workflow ON runs (workflow, created_at);
    CREATE TABLE steps (
        run_id      TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        step_id     TEXT NOT NULL,
        position    INTEGER NOT NULL,
        service     INTEGER NOT NULL DEFAULT 0,
        status      TEXT NOT NULL,
        attempts    INTEGER NOT NULL,
        exit_code   INTEGER,
        started_at  TEXT,
        finished_at TEXT,
        duration_s  REAL,
        time_s      REAL,
        outputs     TEXT NOT NULL,
        metrics     TEXT NOT NULL,
        artifacts   TEXT NOT NULL,
        PRIMARY KEY (run_id, step_id)
    );
    """,
    # 1 -> 2: what the model cost each run (NULL: recorded before it was kept)
    """
    ALTER TABLE runs ADD COLUMN model_calls INTEGER;
    ALTER TABLE runs ADD COLUMN input_tokens INTEGER;
    ALTER TABLE runs ADD COLUMN output_tokens INTEGER;
    ALTER TABLE runs ADD COLUMN cache_read_tokens INTEGER;
    ALTER TABLE runs ADD COLUMN cache_write_tokens INTEGER;
    ALTER TABLE runs ADD COLUMN cost_usd REAL;
    """,
]
"""The schema, as the steps from one version to the next (append; never edit one)."""
SCHEMA_VERSION = len(MIGRATIONS)


class HistoryError(AgentflowError):
    """The history database cannot be used (damaged, from a newer agentflow)."""


class HistoryModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StepSummary(HistoryModel):
    """One step of a recorded run."""

    id: str
    status: str
    service: bool = False
    attempts: int
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None
    """The latest attempt's duration."""
    time_s: float | None = None
    """All attempts together."""
    outputs: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    """The values ``success.metrics`` measured, by metric name."""
    artifacts: list[Artifact] = Field(default_factory=list)


class RunSummary(HistoryModel):
    """One recorded run: what ``agentflow history --json`` prints for each run."""

    run_id: str
    workflow: str
    workflow_file: str
    workflow_sha256: str | None = None
    """The sha256 of the workflow file as the run froze it (None when it is gone)."""
    status: str
    message: str | None = None
    sandbox: str = "local"
    planner: str = "static"
    inputs: dict[str, Scalar] = Field(default_factory=dict)
    created_at: datetime
    finished_at: datetime | None = None
    duration_s: float | None = None
    tokens_used: int = 0
    usage: Usage | None = None
    """The model's calls, tokens by kind and estimated cost (planning and diagnoses);
    None for a run recorded before they were kept."""
    recorded_at: datetime | None = None
    steps: list[StepSummary] = Field(default_factory=list)

    @property
    def attempts(self) -> int:
        return sum(s.attempts for s in self.steps)

    def step(self, step_id: str) -> StepSummary | None:
        return next((s for s in self.steps if s.id == step_id), None)


# --- making a summary ------------------------------------------------------------------------

_MEASURED = re.compile(r"^.*? = ([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?inf|nan)(?:,|$)")


def summarize(run: RunDir, state: RunState, report: Report) -> RunSummary:
    """The summary of a run, from its checkpoint and its report."""
    manifest = read_manifest(run)
    steps = [
        _step_summary(s, manifest.steps[s.id].files if s.id in manifest.steps else [])
        for s in report.steps
    ]
    return RunSummary(
        run_id=state.run_id,
        workflow=state.workflow,
        workflow_file=state.workflow_file,
        workflow_sha256=_sha256(run.workflow_path),
        status=report.status,
        message=report.reason,
        sandbox=state.sandbox,
        planner=state.planner,
        inputs=state.inputs,
        created_at=state.created_at,
        finished_at=state.finished_at,
        duration_s=report.duration_s,
        tokens_used=state.tokens_used,
        usage=state.usage,
        steps=steps,
    )


def _step_summary(s: StepReport, files: list[Artifact]) -> StepSummary:
    metrics: dict[str, float] = {}
    for m in s.metrics:
        found = _MEASURED.match(m.detail or "")
        if found:
            metrics[m.name] = float(found.group(1))
    return StepSummary(
        id=s.id,
        status=s.status,
        service=s.service,
        attempts=s.attempts,
        exit_code=s.exit_code,
        started_at=s.started_at,
        finished_at=s.finished_at,
        duration_s=s.duration_s,
        time_s=s.time_s,
        outputs=s.outputs,
        metrics=metrics,
        artifacts=files,
    )


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


# --- the database ----------------------------------------------------------------------------


def db_path(home: Path) -> Path:
    return home / DB_NAME


@contextlib.contextmanager
def connect(home: Path, *, create: bool = False) -> Iterator[sqlite3.Connection | None]:
    """A connection to the home's history, migrated to this version's schema; None when
    there is no database and ``create`` is false (reading never makes one)."""
    path = db_path(home)
    if not create and not path.is_file():
        yield None
        return
    if create:
        home.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as e:
        raise HistoryError(f"cannot open the run history {path}: {e}") from None
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn, path)
        yield conn
    except sqlite3.DatabaseError as e:
        raise HistoryError(f"the run history {path} cannot be used: {e}") from None
    finally:
        conn.close()


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = _version(conn)
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise HistoryError(
            f"the run history {path} has schema version {version}, from a newer agentflow "
            f"(this one knows up to {SCHEMA_VERSION}): upgrade agentflow"
        )
    conn.execute("BEGIN IMMEDIATE")  # one migrator at a time; the others wait, then see it
    try:
        version = _version(conn)
        for step in MIGRATIONS[version:SCHEMA_VERSION]:
            for statement in _statements(step):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # (SQLite may have rolled it back itself: a full disk)
            conn.execute("ROLLBACK")
        raise


def _version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def _statements(script: str) -> list[str]:
    """The statements of a migration (``executescript`` would commit the transaction)."""
    return [s.strip() for s in script.split(";") if s.strip()]


def _ts(value: datetime | None) -> str | None:
    """A time as stored: ISO 8601 in UTC, always with microseconds (so text order is time
    order)."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def record(home: Path, summary: RunSummary) -> None:
    """Save a run's summary, replacing what was recorded for it before (a resumed run)."""
    with connect(home, create=True) as conn:
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                """
                INSERT INTO runs (run_id, workflow, workflow_file, workflow_sha256, status,
                    message, sandbox, planner, inputs, created_at, finished_at, duration_s,
                    tokens_used, recorded_at, model_calls, input_tokens, output_tokens,
                    cache_read_tokens, cache_write_tokens, cost_usd)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (run_id) DO UPDATE SET
                    workflow = excluded.workflow, workflow_file = excluded.workflow_file,
                    workflow_sha256 = excluded.workflow_sha256, status = excluded.status,
                    message = excluded.message, sandbox = excluded.sandbox,
                    planner = excluded.planner, inputs = excluded.inputs,
                    created_at = excluded.created_at, finished_at = excluded.finished_at,
                    duration_s = excluded.duration_s, tokens_used = excluded.tokens_used,
                    recorded_at = excluded.recorded_at, model_calls = excluded.model_calls,
                    input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens,
                    cache_read_tokens = excluded.cache_read_tokens,
                    cache_write_tokens = excluded.cache_write_tokens,
                    cost_usd = excluded.cost_usd
                """,
                (
                    summary.run_id,
                    summary.workflow,
                    summary.workflow_file,
                    summary.workflow_sha256,
                    summary.status,
                    summary.message,
                    summary.sandbox,
                    summary.planner,
                    json.dumps(summary.inputs),
                    _ts(summary.created_at),
                    _ts(summary.finished_at),
                    summary.duration_s,
                    summary.tokens_used,
                    _ts(now()),
                    *_usage_columns(summary.usage),
                ),
            )
            conn.execute("DELETE FROM steps WHERE run_id = ?", (summary.run_id,))
            conn.executemany(
                """
                INSERT INTO steps (run_id, step_id, position, service, status, attempts,
                    exit_code, started_at, finished_at, duration_s, time_s, outputs, metrics,
                    artifacts)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                [
                    (
                        summary.run_id,
                        s.id,
                        i,
                        int(s.service),
                        s.status,
                        s.attempts,
                        s.exit_code,
                        _ts(s.started_at),
                        _ts(s.finished_at),
                        s.duration_s,
                        s.time_s,
                        json.dumps(s.outputs),
                        json.dumps(s.metrics),
                        json.dumps([a.model_dump(mode="json") for a in s.artifacts]),
                    )
                    for i, s in enumerate(summary.steps)
                ],
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def _usage_columns(usage: Usage | None) -> tuple[int | float | None, ...]:
    if usage is None:
        return (None,) * 6
    return (
        usage.calls,
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.cost_usd,
    )


def _usage(row: sqlite3.Row) -> Usage | None:
    if row["model_calls"] is None:
        return None
    return Usage(
        calls=row["model_calls"],
        input_tokens=row["input_tokens"] or 0,
        output_tokens=row["output_tokens"] or 0,
        cache_read_tokens=row["cache_read_tokens"] or 0,
        cache_write_tokens=row["cache_write_tokens"] or 0,
        cost_usd=row["cost_usd"] or 0.0,
    )


def runs(home: Path, workflow: str | None = None, limit: int | None = None) -> list[RunSummary]:
    """Recorded runs, oldest first: the latest ``limit`` (all when None) of ``workflow``
    (of every workflow when None)."""
    with connect(home) as conn:
        if conn is None:
            return []
        where, args = ("WHERE workflow = ?", [workflow]) if workflow else ("", [])
        sql = f"SELECT * FROM runs {where} ORDER BY created_at DESC, run_id DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        rows = conn.execute(sql, args).fetchall()
        found = [_run(conn, row) for row in rows]
    return found[::-1]


def get(home: Path, run_id: str) -> RunSummary | None:
    """The recorded run ``run_id``, or the only one whose id starts with it; None when
    there is none; UsageError when the prefix is ambiguous."""
    with connect(home) as conn:
        if conn is None:
            return None
        row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            escaped = run_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            rows = conn.execute(
                "SELECT * FROM runs WHERE run_id LIKE ? ESCAPE '\\' ORDER BY run_id LIMIT 4",
                (escaped + "%",),
            ).fetchall()
            if len(rows) > 1:
                shown = ", ".join(r["run_id"] for r in rows[:3])
                raise UsageError(f"run id {run_id!r} is ambiguous: {shown}, …")
            row = rows[0] if rows else None
        return _run(conn, row) if row is not None else None


def _run(conn: sqlite3.Connection, row: sqlite3.Row) -> RunSummary:
    steps = conn.execute(
        "SELECT * FROM steps WHERE run_id = ? ORDER BY position", (row["run_id"],)
    ).fetchall()
    return RunSummary(
        run_id=row["run_id"],
        workflow=row["workflow"],
        workflow_file=row["workflow_file"],
        workflow_sha256=row["workflow_sha256"],
        status=row["status"],
        message=row["message"],
        sandbox=row["sandbox"],
        planner=row["planner"],
        inputs=json.loads(row["inputs"]),
        created_at=_time(row["created_at"]) or now(),
        finished_at=_time(row["finished_at"]),
        duration_s=row["duration_s"],
        tokens_used=row["tokens_used"],
        usage=_usage(row),
        recorded_at=_time(row["recorded_at"]),
        steps=[_step(s) for s in steps],
    )


def _step(row: sqlite3.Row) -> StepSummary:
    return StepSummary(
        id=row["step_id"],
        status=row["status"],
        service=bool(row["service"]),
        attempts=row["attempts"],
        exit_code=row["exit_code"],
        started_at=_time(row["started_at"]),
        finished_at=_time(row["finished_at"]),
        duration_s=row["duration_s"],
        time_s=row["time_s"],
        outputs=json.loads(row["outputs"]),
        metrics=json.loads(row["metrics"]),
        artifacts=[Artifact.model_validate(a) for a in json.loads(row["artifacts"])],
    )


def step_durations(home: Path, workflow: str, exclude: str) -> dict[str, list[float]] | None:
    """The durations of each step's successful attempts in the latest runs of
    ``workflow`` (not services, not run ``exclude``), newest first, at most LEARN_FROM per
    step; None when the history has no run of the workflow."""
    with connect(home) as conn:
        if conn is None:
            return None
        known = conn.execute(
            "SELECT 1 FROM runs WHERE workflow = ? AND run_id != ? LIMIT 1", (workflow, exclude)
        ).fetchone()
        if known is None:
            return None
        rows = conn.execute(
            """
            SELECT s.step_id, s.duration_s FROM steps s JOIN runs r ON r.run_id = s.run_id
            WHERE r.workflow = ? AND r.run_id != ? AND s.status = 'succeeded'
                AND s.service = 0 AND s.duration_s IS NOT NULL
            ORDER BY r.created_at DESC
            """,
            (workflow, exclude),
        ).fetchall()
    samples: dict[str, list[float]] = {}
    for step_id, duration in rows:
        mine = samples.setdefault(step_id, [])
        if len(mine) < LEARN_FROM:
            mine.append(float(duration))
    return samples


# --- comparing two runs ----------------------------------------------------------------------


class Row(HistoryModel):
    """One line of a comparison: a name and its value in each run."""

    name: str
    a: Any = None
    b: Any = None
    same: bool
    change: float | None = None
    """b − a, when both are numbers."""
    change_pct: float | None = None
    """The change in percent of a (when a is not 0)."""


class StepRow(HistoryModel):
    """One step in both runs."""

    id: str
    a_status: str | None = None
    b_status: str | None = None
    a_attempts: int | None = None
    b_attempts: int | None = None
    a_time_s: float | None = None
    b_time_s: float | None = None
    change: float | None = None
    change_pct: float | None = None


class Comparison(HistoryModel):
    """``agentflow compare A B``: two runs side by side."""

    a: RunSummary
    b: RunSummary
    same_workflow_file: bool
    """Whether both ran the same workflow file (by its sha256)."""
    inputs: list[Row]
    steps: list[StepRow]
    outputs: list[Row]
    """``step.output`` of each output of either run."""
    metrics: list[Row]
    """``step.metric`` of each metric measured in either run."""


def compare(a: RunSummary, b: RunSummary) -> Comparison:
    """Two runs side by side: inputs, steps (status, attempts, time), outputs, metrics."""
    inputs = [_row(k, a.inputs.get(k), b.inputs.get(k)) for k in _union(a.inputs, b.inputs)]
    ids = _union({s.id: 0 for s in a.steps}, {s.id: 0 for s in b.steps})
    steps = []
    for step_id in ids:
        sa, sb = a.step(step_id), b.step(step_id)
        ta = _time_of(sa)
        tb = _time_of(sb)
        change, pct = _change(ta, tb)
        steps.append(
            StepRow(
                id=step_id,
                a_status=sa.status if sa else None,
                b_status=sb.status if sb else None,
                a_attempts=sa.attempts if sa else None,
                b_attempts=sb.attempts if sb else None,
                a_time_s=ta,
                b_time_s=tb,
                change=change,
                change_pct=pct,
            )
        )
    outputs = [_row(name, va, vb) for name, va, vb in _values(a, b, lambda s: s.outputs)]
    metrics = [_row(name, va, vb) for name, va, vb in _values(a, b, lambda s: s.metrics)]
    return Comparison(
        a=a,
        b=b,
        same_workflow_file=a.workflow_sha256 is not None and a.workflow_sha256 == b.workflow_sha256,
        inputs=inputs,
        steps=steps,
        outputs=outputs,
        metrics=metrics,
    )


def _union(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [*a, *(k for k in b if k not in a)]


def _time_of(s: StepSummary | None) -> float | None:
    if s is None:
        return None
    return s.time_s if s.time_s is not None else s.duration_s


def _values(
    a: RunSummary, b: RunSummary, of: Callable[[StepSummary], Mapping[str, Any]]
) -> Iterator[tuple[str, Any, Any]]:
    """``step.name`` and its value in each run, for every value ``of`` gives a step."""
    va = {f"{s.id}.{k}": v for s in a.steps for k, v in of(s).items()}
    vb = {f"{s.id}.{k}": v for s in b.steps for k, v in of(s).items()}
    for name in _union(va, vb):
        yield name, va.get(name), vb.get(name)


def _row(name: str, a: Any, b: Any) -> Row:
    change, pct = _change(_number(a), _number(b))
    return Row(name=name, a=a, b=b, same=a == b, change=change, change_pct=pct)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _change(a: float | None, b: float | None) -> tuple[float | None, float | None]:
    if a is None or b is None:
        return None, None
    pct = (b - a) / abs(a) * 100 if a else None
    return round(b - a, 6), (round(pct, 2) if pct is not None else None)
