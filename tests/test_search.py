"""Adaptive search (``agentflow search``): trials are runs proposed by an Optuna study,
ranked by the objective; TPE beats random search on a known optimum; trials clearly worse
at the same step are pruned (stopped, not failed); a search whose follower was killed
resumes its study; ``history SEARCH`` shows its trials."""

from __future__ import annotations

import json
import re
import signal
import tempfile
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from agentflow.search.study import Trials, open_study
from agentflow.sweep import SweepRecord
from agentflow.workflow.model import Objective
from agentflow.workflow.search import Search

from conftest import Env

QUAD = """\
version: 1
name: quad
inputs:
  x: {default: 0.5}
  y: {default: 0.5}
  pause: {default: 0}
objective: {metric: score, goal: maximize}
search:
  trials: 5
  parallel: 2
  seed: 3
  space:
    x: {range: [0, 1]}
    y: {range: [0, 1]}
steps:
  - id: compute
    run: |
      sleep ${{ inputs.pause }}
      python3 -c "print('score=%g' % (-(${{ inputs.x }}-0.3)**2 - (${{ inputs.y }}-0.7)**2))"
    outputs:
      score: {log: 'score=(\\S+)'}
"""

# Each trial "trains" for 10 steps; its loss at every step is worse the farther x is from
# 0.3, so a trial far off is clearly worse than the median at the same step.
TRAIN = """\
version: 1
name: train
inputs:
  x: {default: 0.5}
objective: {metric: score, goal: maximize}
search:
  trials: 6
  parallel: 1
  seed: 7
  sampler: random
  space:
    x: {choice: [0.3, 0.35, 0.9, 0.95, 1.0]}
  prune: {metric: loss, startup_trials: 2}
steps:
  - id: train
    run: |
      python3 -u -c "
      import time
      x = ${{ inputs.x }}
      for i in range(1, 11):
          print('loss=%g' % (abs(x - 0.3) * 10 + 1.0 / i), flush=True)
          time.sleep(0.2)
      print('score=%g' % -abs(x - 0.3))
      "
    expect: {metrics: {loss: 'loss=([0-9.eE+-]+)'}}
    outputs:
      score: {log: 'score=(\\S+)'}
"""


def _study_run(sampler: str, seed: int, n: int) -> list[float]:
    """A search over the known optimum in-process, through the same sampling layer."""
    spec = Search.model_validate(
        {
            "trials": n,
            "seed": seed,
            "sampler": sampler,
            "space": {"x": {"range": [0, 1]}, "y": {"range": [0, 1]}},
        }
    )
    objective = Objective(metric="score", goal="maximize")
    record = SweepRecord(
        sweep_id="s", workflow="w", workflow_file="w.yaml", objective=objective, members=[]
    )
    with tempfile.TemporaryDirectory() as tmp:
        trials = Trials(open_study(Path(tmp) / "study.db", spec, objective), spec, objective,
                        record)  # fmt: skip
        for _ in range(n):
            member = trials.ask()
            record.members.append(member)
            x, y = float(str(member.values["x"])), float(str(member.values["y"]))
            member.score, member.status = -((x - 0.3) ** 2) - (y - 0.7) ** 2, "succeeded"
            trials.tell(member)
    return [m.score for m in record.members if m.score is not None]


def test_tpe_beats_random_search_of_the_same_budget_on_a_known_optimum() -> None:
    tpe, rand = _study_run("tpe", 0, 30), _study_run("random", 0, 30)
    assert len(tpe) == len(rand) == 30

    def top5(scores: list[float]) -> float:
        return sum(sorted(scores)[-5:]) / 5

    # TPE's best trials are nearer the optimum (0.3, 0.7), and once it has learned (the
    # second half) it proposes better trials on the whole.
    assert top5(tpe) > top5(rand)
    assert sum(tpe[15:]) / 15 > sum(rand[15:]) / 15
    assert max(tpe) > -0.01


def test_a_search_runs_trials_as_runs_and_ends_with_the_best_set_line(af: Env) -> None:
    af.write(QUAD)
    res = af.cli("search", "wf.yaml", "--ci", "--sandbox", "local", timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "5 trials of quad (tpe), 2 at once" in out
    m = re.search(r"best: x=(\S+) y=(\S+) \(score (\S+), run (\S+)\)", out)
    assert m, out
    best_run = m.group(4)
    assert (
        f"agentflow run {af.workspace / 'wf.yaml'} --set x={m.group(1)} --set y={m.group(2)}" in out
    )
    (record_path,) = (af.home / "sweeps").glob("quad-search-*.json")
    record = SweepRecord.model_validate_json(record_path.read_text())
    assert len(record.members) == 5
    assert {m.status for m in record.members} == {"succeeded"}
    scores = [m.score for m in record.members]
    assert max(s for s in scores if s is not None) == float(m.group(3))
    # Each trial is an ordinary run, with the sampled values as its inputs.
    state = json.loads((af.run_dir(best_run) / "state.json").read_text())
    assert state["inputs"]["x"] == float(m.group(1))
    # The study in SQLite under the home has every trial, told its score.
    assert record.search is not None
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{record.search.study}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 5
    assert study.best_value == pytest.approx(float(m.group(3)))
    # The HTML page: trials, importance (or why not), parallel coordinates as SVG.
    page = (af.home / "searches" / record.sweep_id / "search.html").read_text()
    assert page.count('<polyline class="trial"') == 5
    assert "<h2>Importance</h2>" in page
    assert "<script" not in page
    # history SEARCH lists its trials.
    hist = af.cli("history", record.sweep_id)
    assert hist.returncode == 0, hist.stderr
    assert sum(1 for line in hist.stdout.splitlines() if "succeeded" in line) == 5


def test_a_search_is_checked_against_the_inputs(af: Env) -> None:
    af.write(
        QUAD.replace("    y: {range: [0, 1]}", "    z: {range: [0, 1]}\n    pause: {range: [0, 1]}")
    )
    res = af.cli("search", "wf.yaml", "--ci")
    assert res.returncode == 2
    assert (
        "wf.yaml:14:5: search.space.z: the search space names 'z', which is no declared input"
        in res.stderr
    )
    assert "input 'pause' is an integer: give it int_range or choice" in res.stderr
    af.write(
        QUAD.replace("search:", "unused:").split("unused:")[0]
        + QUAD.split("steps:", 1)[1].join(["steps:", ""])
    )
    none = af.cli("search", "wf.yaml", "--ci")
    assert none.returncode == 2
    assert "no `search:` block" in none.stderr


def test_pruning_stops_clearly_worse_trials_and_they_end_pruned(af: Env) -> None:
    af.write(TRAIN)
    res = af.cli("search", "wf.yaml", "--ci", "--sandbox", "local", timeout=240)
    # Pruned trials are no failure.
    assert res.returncode == 0, res.stdout + res.stderr
    (record_path,) = (af.home / "sweeps").glob("train-search-*.json")
    record = SweepRecord.model_validate_json(record_path.read_text())
    pruned = [m for m in record.members if m.status == "pruned"]
    kept = [m for m in record.members if m.status == "succeeded"]
    assert pruned, res.stdout
    assert len(pruned) + len(kept) == 6
    for m in pruned:
        # Only clearly worse values are pruned, and their runs were stopped early.
        assert float(str(m.values["x"])) >= 0.9, (m.values, res.stdout)
        assert m.score is None
        assert (m.message or "").startswith("at step "), m.message
        assert m.run_id is not None
        loss = json.loads((af.run_dir(m.run_id) / "metrics" / "train.json").read_text())
        assert loss["series"]["loss"]["count"] < 10
        state = af.state(m.run_id)
        assert state["status"] == "interrupted"
        assert state["message"].startswith(f"pruned by search {record.sweep_id}: at step ")
    assert all(m.score is not None for m in kept)
    assert "pruned (at step " in res.stdout
    assert f"{len(pruned)} of 6 trials pruned" in res.stdout
    assert "did not succeed" not in res.stdout
    assert record.search is not None
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{record.search.study}")
    states = [t.state for t in study.trials]
    assert states.count(TrialState.PRUNED) == len(pruned)
    assert states.count(TrialState.COMPLETE) == len(kept)


def test_a_search_killed_midway_resumes_its_study(af: Env) -> None:
    af.write(
        QUAD.replace("trials: 5", "trials: 6").replace("pause: {default: 0}", "pause: {default: 2}")
    )
    follower = af.start("search", "wf.yaml", "--ci", "--sandbox", "local")
    try:
        records = af.home / "sweeps"

        def some_done() -> bool:
            paths = list(records.glob("quad-search-*.json"))
            if not paths:
                return False
            rec = SweepRecord.model_validate_json(paths[0].read_text())
            return any(m.status == "succeeded" for m in rec.members) and any(
                m.status == "running" for m in rec.members
            )

        af.wait_for(some_done, timeout=90, message="a trial ended while another runs")
        follower.send_signal(signal.SIGKILL)  # no chance to record anything
    finally:
        follower.kill()
        follower.communicate()
    (path,) = records.glob("quad-search-*.json")
    before = SweepRecord.model_validate_json(path.read_text())
    sid = before.sweep_id
    assert len(before.members) < 6
    status = af.cli("status", sid)
    assert "orphaned" in status.stdout
    res = af.cli("resume", sid, "--ci", timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    after = SweepRecord.model_validate_json(path.read_text())
    # Every trial accounted for: the finished ones kept, the running ones followed to their
    # end (not started again), the rest asked from the same study.
    assert len(after.members) == 6
    assert [m.status for m in after.members] == ["succeeded"] * 6
    for old in before.members:
        if old.status == "succeeded":
            assert after.members[old.index - 1].model_dump() == old.model_dump()
    assert len({m.run_id for m in after.members}) == 6
    assert len(list((af.home / "runs").glob(f"{sid}-*"))) == 6
    assert after.search is not None
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{after.search.study}")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6
    assert {t.number for t in complete} == {m.trial for m in after.members}
    assert "best: x=" in res.stdout
    again = af.cli("resume", sid)
    assert "already ended (succeeded): nothing to do" in again.stdout
