"""The scheduler's invariants, on real runs: never more than ``max_parallel`` steps at
once, every step once and after its needs, a failure skips exactly what needs it (and what
needs that), a retry's back-off holds its dependents back."""

from __future__ import annotations

from datetime import datetime

from conftest import Env, run_id_of

# Each step counts the steps running with it in a shared folder (mkdir is atomic) and
# records the count it saw: the steps' own view of how many ran at once.
COUNT = (
    'mkdir -p live && mkdir "live/$AGENTFLOW_STEP" && ls live | wc -l >> seen'
    ' && sleep 0.2 && rmdir "live/$AGENTFLOW_STEP"'
)


def _step(step_id: str, needs: list[str], run: str = COUNT, extra: str = "") -> str:
    lines = f"  - id: {step_id}\n    run: '{run}'\n"
    if needs:
        lines += f"    needs: [{', '.join(needs)}]\n"
    return lines + extra


def _times(state: dict, step: str) -> tuple[datetime, datetime]:
    st = state["steps"][step]
    return datetime.fromisoformat(st["started_at"]), datetime.fromisoformat(st["finished_at"])


def test_a_wide_diamond_runs_each_step_once_in_order_within_max_parallel(af: Env) -> None:
    # root -> a0..a9 -> mid -> b0..b9 (b_i also needs a_i) -> join
    needs = {"root": []} | {f"a{i}": ["root"] for i in range(10)}
    needs["mid"] = [f"a{i}" for i in range(10)]
    needs |= {f"b{i}": ["mid", f"a{i}"] for i in range(10)}
    needs["join"] = [f"b{i}" for i in range(10)]
    steps = "".join(_step(k, v) for k, v in needs.items())
    wf = af.write(f"version: 1\nname: diamond\nmax_parallel: 3\nsteps:\n{steps}")
    res = af.cli("run", str(wf), timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    state = af.state(run_id_of(res.stdout))
    assert {k: v["status"] for k, v in state["steps"].items()} == dict.fromkeys(needs, "succeeded")
    assert all(v["attempts"] == 1 for v in state["steps"].values())
    seen = [int(x) for x in (wf.parent / "seen").read_text().split()]
    assert len(seen) == len(needs), "every step ran exactly once"
    assert max(seen) <= 3, f"more than max_parallel at once: {seen}"
    for step_id, step_needs in needs.items():
        start, _ = _times(state, step_id)
        for n in step_needs:
            assert _times(state, n)[1] <= start, f"{step_id} started before {n} ended"


def test_a_failure_skips_its_dependents_and_theirs_while_other_branches_go_on(af: Env) -> None:
    steps = (
        _step("root", [], "true")
        + _step("bad", ["root"], "exit 3")
        + _step("good", ["root"], "true")
        + _step("after_bad", ["bad"], "true")
        + _step("after_after", ["after_bad", "good"], "true")
        + _step("after_good", ["good"], "true")
    )
    wf = af.write(f"version: 1\nname: fail\nmax_parallel: 2\nsteps:\n{steps}")
    res = af.cli("run", str(wf))
    assert res.returncode == 1, res.stdout + res.stderr
    st = af.state(run_id_of(res.stdout))["steps"]
    assert {k: v["status"] for k, v in st.items()} == {
        "root": "succeeded",
        "bad": "failed",
        "good": "succeeded",
        "after_bad": "skipped",
        "after_after": "skipped",
        "after_good": "succeeded",
    }
    assert st["after_bad"]["message"] == "needs bad, which failed"
    assert st["after_after"]["message"] == "needs after_bad, which skipped"
    assert st["after_bad"]["attempts"] == 0
    assert st["after_after"]["attempts"] == 0


def test_a_retry_waits_its_back_off_and_its_dependent_runs_after_it(af: Env) -> None:
    # Fails once, then succeeds; the dependent starts only after the second attempt.
    flaky = "test -e tried && exit 0; touch tried; exit 1"
    retry = "    retry: {limit: 2, backoff: {initial: 1s}}\n"
    steps = _step("flaky", [], flaky, retry) + _step("next", ["flaky"], "true")
    steps += "".join(_step(f"free{i}", [], "true") for i in range(4))
    wf = af.write(f"version: 1\nname: retry\nmax_parallel: 2\nsteps:\n{steps}")
    res = af.cli("run", str(wf))
    assert res.returncode == 0, res.stdout + res.stderr
    state = af.state(run_id_of(res.stdout))
    st = state["steps"]
    assert {v["status"] for v in st.values()} == {"succeeded"}
    assert st["flaky"]["attempts"] == 2
    assert st["next"]["attempts"] == 1
    assert _times(state, "flaky")[1] <= _times(state, "next")[0]
