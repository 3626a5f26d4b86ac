"""The agentic speculator workflow: task: steps for the LLM planner, run in CI from a saved
plan (no model, no key), as DESIGN.md says CI runs an agentic workflow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import Env, run_id_of

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"


def test_the_agentic_speculator_runs_from_its_saved_plan_without_a_model(
    af: Env, tmp_path: Path
) -> None:
    work = tmp_path / "workflows"
    work.mkdir()
    text = (WORKFLOWS / "speculator-agentic.yaml").read_text()
    (work / "speculator-agentic.yaml").write_text(text.replace("../docs/runbooks", "runbooks"))
    shutil.copytree(WORKFLOWS.parent / "docs" / "runbooks", work / "runbooks")
    shutil.copytree(
        WORKFLOWS / "tinylm", work / "tinylm", ignore=shutil.ignore_patterns("__pycache__")
    )
    plan = WORKFLOWS / "speculator-agentic.ci-plan.json"
    af.env.pop("ANTHROPIC_API_KEY", None)
    res = af.cli(
        "run", str(work / "speculator-agentic.yaml"), "--plan", str(plan), "--no-diagnose",
        "--sandbox", "local", timeout=600,
    )  # fmt: skip
    rid = run_id_of(res.stdout)
    saved = json.loads((af.run_dir(rid) / "plan.json").read_text())
    assert saved["planner"] == "anthropic"
    assert all(s["source"] == "planner" for s in saved["steps"])
    steps = af.state(rid)["steps"]
    for step in ("train-target", "serve-target", "generate", "train-draft"):
        assert steps[step]["status"] == "succeeded", (step, res.stdout)
    results = json.loads((work / ".speculator" / "results.json").read_text())
    assert results["lossless"] is True
    # Forty training steps make a small model: the 1.2x check may fail, and only it.
    if res.returncode != 0:
        assert steps["evaluate"]["message"].startswith("success check metrics.speedup"), steps


def test_the_full_saved_plan_matches_the_workflow() -> None:
    from agentflow.plan import Plan
    from agentflow.planner import check_plan
    from agentflow.workflow import load_workflow

    wf = load_workflow(WORKFLOWS / "speculator-agentic.yaml")
    for name in ("speculator-agentic.plan.json", "speculator-agentic.ci-plan.json"):
        plan = Plan.model_validate_json((WORKFLOWS / name).read_text())
        check_plan(plan, wf, name)
        assert {s.id for s in plan.steps if s.source == "planner"} == {
            s.id for s in wf.workflow.steps if s.task
        }
