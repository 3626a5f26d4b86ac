"""Fix and go on: `resume --reload` takes an edited workflow into a run, `rerun` runs
steps again on request; what succeeded and did not change is kept."""

from __future__ import annotations

from conftest import Env

STORY = """\
version: 1
name: story
steps:
  - id: data
    run: echo data >> starts.txt
  - id: train
    needs: [data]
    run: echo train >> starts.txt
  - id: evaluate
    needs: [train]
    timeout: 1s
    run: echo evaluate >> starts.txt && sleep 0.3 && eho done
"""

FIXED = STORY.replace("timeout: 1s", "timeout: 30s").replace("eho done", "echo done")


def failed_run(af: Env) -> str:
    """The engineer's run: data and train succeed, evaluate fails on a typo."""
    wf = af.write(STORY)
    res = af.cli("run", str(wf), "--run-id", "f1", "--ci")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "resume f1 --reload" in res.stdout  # the footer names the flag
    assert af.state("f1")["steps"]["evaluate"]["status"] == "failed"
    return "f1"


def starts(af: Env) -> list[str]:
    return (af.workspace / "starts.txt").read_text().split()


def test_reload_reruns_only_the_fixed_step(af: Env) -> None:
    rid = failed_run(af)
    before = af.state(rid)["steps"]
    af.write(FIXED)
    res = af.cli("resume", rid, "--reload", "--yes", "--ci")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "evaluate (failed): command, timeout" in res.stdout
    assert starts(af) == ["data", "train", "evaluate", "evaluate"]
    after = af.state(rid)["steps"]
    for kept in ("data", "train"):
        assert after[kept]["started_at"] == before[kept]["started_at"]
        assert after[kept]["attempts"] == 1
    assert after["evaluate"]["status"] == "succeeded"
    run = af.run_dir(rid)
    assert (run / "workflow.1.yaml").read_text() == STORY  # nothing lost
    assert (run / "plan.1.json").exists()
    assert (run / "workflow.yaml").read_text() == FIXED
    assert (run / "steps" / "evaluate" / "attempt-1" / "output.log").exists()


def test_reload_reruns_a_changed_succeeded_step_and_its_dependents(af: Env) -> None:
    rid = failed_run(af)
    before = af.state(rid)["steps"]
    af.write(FIXED.replace("echo train >>", "echo train; echo train >>"))
    res = af.cli("resume", rid, "--reload", "--yes", "--ci")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "succeeded steps that run again: train" in res.stdout
    assert starts(af) == ["data", "train", "evaluate", "train", "evaluate"]
    after = af.state(rid)["steps"]
    assert after["data"]["started_at"] == before["data"]["started_at"]
    assert after["train"]["started_at"] != before["train"]["started_at"]
    assert after["train"]["attempts"] == 2


def test_reload_refuses_an_invalid_workflow_and_touches_nothing(af: Env) -> None:
    rid = failed_run(af)
    state = (af.run_dir(rid) / "state.json").read_bytes()
    af.write(FIXED.replace("needs: [train]", "needs: [trian]"))
    res = af.cli("resume", rid, "--reload", "--yes", "--ci")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "trian" in res.stderr
    assert "wf.yaml" in res.stderr
    assert "Traceback" not in res.stderr
    assert (af.run_dir(rid) / "state.json").read_bytes() == state
    assert not (af.run_dir(rid) / "workflow.1.yaml").exists()


def test_reload_in_ci_needs_yes(af: Env) -> None:
    rid = failed_run(af)
    state = (af.run_dir(rid) / "state.json").read_bytes()
    af.write(FIXED)
    res = af.cli("resume", rid, "--reload", "--ci")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "--yes" in res.stderr
    assert (af.run_dir(rid) / "state.json").read_bytes() == state


def test_plain_resume_of_a_changed_file_says_so(af: Env) -> None:
    rid = failed_run(af)
    af.write(FIXED)
    res = af.cli("resume", rid, "--ci")
    assert res.returncode == 1, res.stdout + res.stderr  # the frozen typo again
    assert "changed since run f1 began" in res.stderr
    assert "--reload" in res.stderr


def test_rerun_an_upstream_step_with_its_dependents(af: Env) -> None:
    wf = af.write(FIXED)
    assert af.cli("run", str(wf), "--run-id", "r1", "--ci").returncode == 0
    before = af.state("r1")["steps"]
    res = af.cli("rerun", "r1", "train", "--ci")
    assert res.returncode == 0, res.stdout + res.stderr
    assert starts(af) == ["data", "train", "evaluate", "train", "evaluate"]
    after = af.state("r1")["steps"]
    assert after["data"]["started_at"] == before["data"]["started_at"]
    assert after["train"]["attempts"] == 2
    assert after["evaluate"]["attempts"] == 2
    assert (af.run_dir("r1") / "steps" / "train" / "attempt-1" / "output.log").exists()


def test_rerun_names_unknown_steps(af: Env) -> None:
    wf = af.write(FIXED)
    assert af.cli("run", str(wf), "--run-id", "r1", "--ci").returncode == 0
    res = af.cli("rerun", "r1", "trian", "nope", "--ci")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "trian, nope" in res.stderr
    assert "data, train, evaluate" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_rerun_detached_goes_on_in_the_background(af: Env) -> None:
    wf = af.write(FIXED)
    assert af.cli("run", str(wf), "--run-id", "r1", "--ci").returncode == 0
    res = af.cli("rerun", "r1", "evaluate", "--detach", "--ci")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "goes on in the background" in res.stdout
    af.wait_for(
        lambda: (
            af.state("r1")["steps"]["evaluate"]["attempts"] == 2
            and af.state("r1")["status"] == "succeeded"
        ),
        message="the detached rerun ends",
    )
    assert starts(af) == ["data", "train", "evaluate", "evaluate"]


def test_rerun_of_a_run_being_driven_is_refused(af: Env) -> None:
    wf = af.write(
        FIXED.replace("echo data >> starts.txt", "while [ ! -e go ]; do sleep 0.05; done")
    )
    proc = af.start("run", str(wf), "--run-id", "r1", "--ci")
    try:
        af.wait_for(lambda: af.state("r1")["steps"]["data"]["status"] == "running")
        res = af.cli("rerun", "r1", "data", "--ci")
        assert res.returncode == 2, res.stdout + res.stderr
        assert "being driven by another agentflow process" in res.stderr
    finally:
        (af.workspace / "go").touch()
        proc.communicate(timeout=30)
    assert af.state("r1")["steps"]["data"]["attempts"] == 1
