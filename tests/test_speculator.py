"""The speculator workflow end to end, shrunk with --set so that it runs in about a minute:
every step of the pipeline for real (train, serve with a readiness probe, generate through
HTTP, distil, evaluate), on the local sandbox."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Env, run_id_of

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
FAST = {
    "target_steps": "40",
    "target_d": "64",
    "target_layers": "2",
    "samples": "30",
    "draft_steps": "60",
    "draft_hidden": "64",
}


def test_the_speculator_pipeline_runs_end_to_end(af: Env, tmp_path: Path) -> None:
    # A copy of the workflow and its package, so the run's outputs stay out of the repo.
    work = tmp_path / "workflows"
    work.mkdir()
    (work / "speculator.yaml").write_text(
        (WORKFLOWS / "speculator.yaml").read_text().replace("../docs/runbooks", "runbooks")
    )
    (work / "runbooks").mkdir()
    runbook = WORKFLOWS.parent / "docs" / "runbooks" / "speculator.md"
    (work / "runbooks" / "speculator.md").write_text(runbook.read_text())
    (work / "tinylm").mkdir()
    for f in (WORKFLOWS / "tinylm").glob("*.py"):
        (work / "tinylm" / f.name).write_text(f.read_text())
    port = str(20000 + (hash(str(tmp_path)) % 20000))
    sets = [x for k, v in {**FAST, "port": port}.items() for x in ("--set", f"{k}={v}")]
    res = af.cli("run", str(work / "speculator.yaml"), "--sandbox", "local", *sets, timeout=600)
    rid = run_id_of(res.stdout)
    steps = af.state(rid)["steps"]
    for step in ("train-target", "serve-target", "generate", "train-draft"):
        assert steps[step]["status"] == "succeeded", (step, res.stdout)
    assert steps["serve-target"]["ready_at"] is not None
    # Both trainers print their loss: a series each, the last value as an output.
    for step, key in (("train-target", "target_steps"), ("train-draft", "draft_steps")):
        loss = json.loads((af.run_dir(rid) / "metrics" / f"{step}.json").read_text())
        points = loss["series"]["loss"]["points"]
        assert [p["step"] for p in points] == list(range(10, int(FAST[key]) + 1, 10)), step
        assert points[-1]["v"] < points[0]["v"], f"{step} learned nothing"
        assert steps[step]["outputs"]["loss"] == f"{points[-1]['v']:g}"
    results = json.loads((work / ".speculator" / "results.json").read_text())
    assert results["lossless"] is True
    assert 0 <= results["acceptance_rate"] <= 1
    assert results["target_tokens_per_s"] > 0
    # Models this small may not reach the 1.2× the full-size run shows; that check is the
    # only one allowed to fail here, and it must say so.
    if res.returncode == 0:
        assert steps["evaluate"]["outputs"]["lossless"] == "true"
        assert float(steps["evaluate"]["outputs"]["speedup"]) >= 1.2
    else:
        assert res.returncode == 1
        assert steps["evaluate"]["message"].startswith("success check metrics.speedup"), steps
    assert (work / ".speculator" / "draft-w12-h64" / "draft-step-50.npz").exists()
