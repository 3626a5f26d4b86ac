"""The run history: every run's summary in ``history.db`` (a resumed run once), the
``history`` and ``compare`` commands, learned durations, and a history that cannot be
written never costing the run."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agentflow import history
from agentflow.monitor import learned_durations

from conftest import Env, run_id_of

TRAIN = """\
version: 1
name: train
inputs:
  lr: {default: 0.1}
  layers: {default: 2}
steps:
  - id: prepare
    run: echo prepared
  - id: fit
    needs: [prepare]
    run: |
      sleep 0.${{ inputs.layers }}
      echo '{"loss": ${{ inputs.lr }}, "acc": 0.${{ inputs.layers }}}' > eval.json
    success:
      metrics:
        loss: {file: eval.json, key: loss, max: 1}
    outputs:
      acc: {json: eval.json, key: acc}
"""


def run(af: Env, wf: Path, *args: str, code: int = 0) -> str:
    res = af.cli("run", str(wf), "--ci", *args)
    assert res.returncode == code, res.stdout + res.stderr
    return run_id_of(res.stdout)


def db(af: Env) -> sqlite3.Connection:
    conn = sqlite3.connect(af.home / "history.db")
    conn.row_factory = sqlite3.Row
    return conn


def history_json(af: Env, *args: str) -> list[dict[str, Any]]:
    res = af.cli("history", "--json", *args)
    assert res.returncode == 0, res.stderr
    data: list[dict[str, Any]] = json.loads(res.stdout)
    return data


def test_every_run_is_recorded_and_a_resumed_run_once(af: Env) -> None:
    wf = af.write(TRAIN)
    first = run(af, wf, "--run-id", "t1")
    second = run(af, wf, "--run-id", "t2", "--set", "layers=4")
    other = af.write(
        "version: 1\nname: gate\nsteps:\n  - id: check\n    run: test -e ok || exit 3\n",
        "gate.yaml",
    )
    gated = run(af, other, "--run-id", "g1", code=1)
    (af.workspace / "ok").touch()
    resumed = af.cli("resume", gated)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    with db(af) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == history.SCHEMA_VERSION
        rows = conn.execute("SELECT run_id, status FROM runs ORDER BY created_at").fetchall()
        assert [tuple(r) for r in rows] == [
            (first, "succeeded"),
            (second, "succeeded"),
            (gated, "succeeded"),  # once, as it ended the second time
        ]
        check = conn.execute("SELECT * FROM steps WHERE run_id = 'g1'").fetchone()
        assert (check["status"], check["attempts"], check["exit_code"]) == ("succeeded", 2, 0)

    runs = history_json(af)
    assert [r["run_id"] for r in runs] == ["t1", "t2", "g1"]
    t1, t2 = runs[0], runs[1]
    assert t1["workflow"] == "train"
    assert t1["workflow_file"] == str(wf)
    assert t1["workflow_sha256"] == t2["workflow_sha256"]
    assert re.fullmatch(r"[0-9a-f]{64}", t1["workflow_sha256"])
    assert t1["inputs"] == {"lr": 0.1, "layers": 2}
    assert t2["inputs"] == {"lr": 0.1, "layers": 4}
    assert t1["tokens_used"] == 0
    assert t1["duration_s"] > 0
    fit = {s["id"]: s for s in t2["steps"]}["fit"]
    assert fit["status"] == "succeeded"
    assert fit["attempts"] == 1
    assert fit["duration_s"] >= 0.4
    assert fit["outputs"] == {"acc": "0.4"}
    assert fit["metrics"] == {"loss": 0.1}

    # One workflow, by name or by its file; the latest N.
    assert [r["run_id"] for r in history_json(af, "train")] == ["t1", "t2"]
    assert [r["run_id"] for r in history_json(af, str(other))] == ["g1"]
    assert [r["run_id"] for r in history_json(af, "train", "--limit", "1")] == ["t2"]

    af.env["COLUMNS"] = "150"  # piped, a table is 80 columns wide (the inputs would wrap)
    table = af.cli("history", "train").stdout.splitlines()
    # One workflow: no workflow column; no tokens column while no run used any.
    assert table[0].split() == ["run", "status", "started", "time", "steps", "tries", "inputs"]
    started = r"\d{4}-\d\d-\d\d \d\d:\d\d"
    assert re.match(rf"t1 +succeeded +{started} +\S+ +2/2 +2 +lr=0\.1 layers=2", table[1])
    assert table[2].startswith("t2 ")
    everything = af.cli("history").stdout.splitlines()
    assert everything[0].split()[:3] == ["run", "workflow", "status"]
    assert re.match(r"g1 +gate +succeeded ", everything[3])
    assert af.cli("history", "nothing-like-it").stdout.startswith(
        "no runs of workflow nothing-like-it in the history"
    )


def test_compare_shows_inputs_durations_outputs_and_metrics_side_by_side(af: Env) -> None:
    wf = af.write(TRAIN)
    a = run(af, wf, "--run-id", "base")
    b = run(af, wf, "--run-id", "wide", "--set", "layers=8", "--set", "lr=0.5")

    res = af.cli("compare", a, b, "--json")
    assert res.returncode == 0, res.stderr
    c = json.loads(res.stdout)
    assert (c["a"]["run_id"], c["b"]["run_id"]) == ("base", "wide")
    assert c["same_workflow_file"] is True
    inputs = {r["name"]: r for r in c["inputs"]}
    assert (inputs["layers"]["a"], inputs["layers"]["b"], inputs["layers"]["same"]) == (2, 8, False)
    assert inputs["layers"]["change"] == 6
    assert inputs["layers"]["change_pct"] == 300
    assert inputs["lr"]["change"] == pytest.approx(0.4)
    fit = {s["id"]: s for s in c["steps"]}["fit"]
    assert (fit["a_status"], fit["b_status"]) == ("succeeded", "succeeded")
    assert fit["b_time_s"] > fit["a_time_s"]  # sleep 0.8 against sleep 0.2
    assert fit["change"] == pytest.approx(fit["b_time_s"] - fit["a_time_s"], abs=1e-3)
    assert c["outputs"] == [
        {"name": "fit.acc", "a": "0.2", "b": "0.8", "same": False, "change": 0.6,
         "change_pct": 300.0},
    ]  # fmt: skip
    assert c["metrics"] == [
        {"name": "fit.loss", "a": 0.1, "b": 0.5, "same": False, "change": 0.4,
         "change_pct": 400.0},
    ]  # fmt: skip

    # The table, by prefixes of the ids.
    text = af.cli("compare", "ba", "wi").stdout
    assert re.search(r"^run +base +wide", text, re.M)
    assert re.search(r"^workflow +train +train \(same file\)", text, re.M)
    assert re.search(r"^layers +2 +8 +\+6 \(\+300%\)", text, re.M)
    assert re.search(r"^fit +succeeded +1 +\S+ +succeeded +1 +\S+ +\+\S+ \(\+\d+%\)", text, re.M)
    assert re.search(r"^fit\.acc +0\.2 +0\.8 +\+0\.6 \(\+300%\)", text, re.M)
    assert re.search(r"^fit\.loss +0\.1 +0\.5 +\+0\.4 \(\+400%\)", text, re.M)

    unknown = af.cli("compare", "base", "nope")
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("error: no run 'nope' in ")


def test_compare_shows_a_small_relative_change_with_its_digits(af: Env) -> None:
    """Issue 17: a change of -0.002 printed as ``(-0%)``."""
    wf = af.write(TRAIN)
    run(af, wf, "--run-id", "hi", "--set", "lr=0.95")
    run(af, wf, "--run-id", "lo", "--set", "lr=0.948")
    text = af.cli("compare", "hi", "lo").stdout
    assert re.search(r"^lr +0\.95 +0\.948 +-0\.002 \(-0\.21%\)", text, re.M), text
    assert re.search(r"^fit\.loss +0\.95 +0\.948 +-0\.002 \(-0\.21%\)", text, re.M), text
    assert re.search(r"^layers +2 +2 +\+0 \(\+0%\)", text, re.M), text
    assert "-0%" not in text


def test_compare_reads_a_run_the_history_has_not_recorded(af: Env) -> None:
    wf = af.write(TRAIN)
    a = run(af, wf, "--run-id", "old")
    b = run(af, wf, "--run-id", "new", "--set", "layers=3")
    with db(af) as conn:  # as if it ran before the history existed
        conn.execute("DELETE FROM runs WHERE run_id = 'old'")
    c = json.loads(af.cli("compare", a, b, "--json").stdout)
    assert c["a"]["run_id"] == "old"
    assert c["a"]["recorded_at"] is None
    assert {s["id"]: s["a_status"] for s in c["steps"]} == {
        "prepare": "succeeded",
        "fit": "succeeded",
    }
    assert c["metrics"][0]["a"] == 0.1


def test_the_monitor_expects_the_learned_duration_on_the_second_run(af: Env) -> None:
    wf = af.write(
        """\
        version: 1
        name: nap
        inputs: {secs: {default: 1}}
        steps:
          - id: doze
            run: |
              echo "dozing"; sleep ${{ inputs.secs }}
        """
    )
    first = run(af, wf, "--run-id", "n1")
    # The first run knew nothing: no expected duration, so no ETA.
    assert af.state(first)["steps"]["doze"]["progress"] is None
    # The history alone holds what was learned: the run's folder goes.
    shutil.rmtree(af.run_dir(first))
    learned = learned_durations(af.home / "runs", "nap", exclude="none")
    assert 1 <= learned["doze"] < 10

    proc = af.start("run", str(wf), "--run-id", "n2", "--ci", "--set", "secs=60")
    try:
        af.wait_for(
            lambda: (
                (af.state("n2")["steps"]["doze"].get("progress") or {}).get("eta_s") is not None
            ),
            message="the ETA of the learned duration",
        )
        progress = af.state("n2")["steps"]["doze"]["progress"]
        assert progress["total"] == 0
        # What was left of the learned duration at the first look (1s after the start).
        assert 0 <= progress["eta_s"] <= learned["doze"]
        assert af.cli("stop", "n2").returncode == 0
    finally:
        proc.communicate(timeout=30)
    # A stopped run is recorded too.
    assert [(r["run_id"], r["status"]) for r in history_json(af, "nap")] == [
        ("n1", "succeeded"),
        ("n2", "interrupted"),
    ]


def test_a_history_that_cannot_be_written_never_fails_the_run(af: Env) -> None:
    (af.home / "history.db").mkdir(parents=True)  # sqlite cannot open a folder
    wf = af.write("version: 1\nname: solid\nsteps:\n  - id: s\n    run: echo fine\n")
    res = af.cli("run", str(wf), "--ci")
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    assert af.state(rid)["status"] == "succeeded"
    assert (af.run_dir(rid) / "report.md").exists()
    events = [
        json.loads(line) for line in (af.run_dir(rid) / "events.jsonl").read_text().splitlines()
    ]
    warning = events[-1]
    assert warning["kind"] == "history_not_saved"
    assert warning["message"].startswith("warning: cannot open the run history ")
    assert "history not saved: warning: cannot open the run history" in res.stdout
    # And its run directory still teaches the next run (the fallback).
    assert "s" in learned_durations(af.home / "runs", "solid", exclude="none")


def test_the_schema_is_versioned_and_a_newer_one_is_refused(af: Env, tmp_path: Path) -> None:
    home = tmp_path / "h"
    with history.connect(home, create=True) as conn:
        assert conn is not None
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == {"runs", "steps"}
        assert conn.execute("PRAGMA user_version").fetchone()[0] == history.SCHEMA_VERSION == 2
    # Opening it again changes nothing; reading never makes a database.
    with history.connect(home) as conn:
        assert conn is not None
    assert history.runs(tmp_path / "elsewhere") == []
    assert not (tmp_path / "elsewhere").exists()

    raw = sqlite3.connect(history.db_path(home))
    raw.execute("PRAGMA user_version = 7")
    raw.close()
    with pytest.raises(history.HistoryError, match="schema version 7, from a newer agentflow"):
        history.runs(home)
    # learned durations go on without it
    assert learned_durations(home / "runs", "any", exclude="none") == {}

    af.home.mkdir(parents=True, exist_ok=True)
    shutil.copy(history.db_path(home), af.home / "history.db")
    res = af.cli("history")
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1
    assert "has schema version 7, from a newer agentflow (this one knows up to 2)" in res.stderr


WRITER = """\
import sys
from datetime import UTC, datetime
from pathlib import Path

from agentflow import history

for i in range(20):
    summary = history.RunSummary(
        run_id=f"{sys.argv[2]}-{i}", workflow="w", workflow_file="w.yaml",
        status="succeeded", created_at=datetime.now(UTC),
    )
    history.record(Path(sys.argv[1]), summary)
"""


def test_runs_that_end_at_once_are_all_recorded(tmp_path: Path) -> None:
    home = tmp_path / "h"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(home), name]) for name in "abc"]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    assert len(history.runs(home)) == 60
