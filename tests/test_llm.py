"""The model, through the real anthropic SDK against a fake Messages API on 127.0.0.1:
planning task steps, repairing a bad plan, API errors, diagnosis and its guardrails."""

from __future__ import annotations

import json
import shlex
from datetime import datetime
from pathlib import Path
from typing import Any

import libtmux
import pytest

from agentflow.agent.diagnose import Failure, build_context
from agentflow.redact import Redactor
from agentflow.workflow.model import Step
from fake_anthropic import FakeAnthropic, Reply, error, tool_use

from conftest import AGENTFLOW, Env, run_id_of

RUNBOOK = """\
# Tiny pipeline

## Happy path
Write the data, then count it.

## Failure modes
### counting fails with "no data"
The data file was not written: write data.txt first.
"""

AGENTIC = """\
version: 1
name: agentic
goal: Produce data.txt with three lines, then count them.
docs: [runbook.md]
planner: {type: anthropic, model: claude-test}
steps:
  - id: make-data
    task: Write three lines into data.txt.
  - id: count
    needs: [make-data]
    run: wc -l < data.txt
"""


def use_fake(af: Env, fake: FakeAnthropic) -> None:
    af.env["ANTHROPIC_API_KEY"] = "test-key"
    af.env["ANTHROPIC_BASE_URL"] = fake.url


def agentic(af: Env) -> Path:
    (af.workspace / "runbook.md").write_text(RUNBOOK)
    return af.write(AGENTIC)


def plan_reply(run: str = "printf 'a\\nb\\nc\\n' > data.txt", **extra: Any) -> Reply:
    return tool_use("submit_plan", {"steps": [{"id": "make-data", "run": run, **extra}]})


def test_a_task_step_is_planned_by_the_model_and_run(af: Env) -> None:
    with FakeAnthropic([plan_reply(duration="5s", notes="simple")]) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(agentic(af)), "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    plan = json.loads((af.run_dir(rid) / "plan.json").read_text())
    steps = {s["id"]: s for s in plan["steps"]}
    assert steps["make-data"]["source"] == "planner"
    assert steps["make-data"]["duration"] == "5s"
    assert steps["count"]["source"] == "workflow"
    assert (af.run_dir(rid) / "steps" / "count" / "output.log").read_text().strip() == "3"
    (request,) = fake.requests
    body = request["body"]
    assert request["path"] == "/v1/messages"
    assert body["model"] == "claude-test"
    assert body["tool_choice"] == {"type": "any"}  # it may look around first
    text = body["messages"][0]["content"][0]["text"]
    assert "Produce data.txt with three lines" in text
    assert "counting fails with" in text  # the runbook's failure modes
    assert "network: none" in text  # sandbox facts


def test_plan_shows_what_the_model_wrote_and_saves_it(af: Env, tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    with FakeAnthropic([plan_reply()]) as fake:
        use_fake(af, fake)
        res = af.cli("plan", str(agentic(af)), "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert "✎" in res.stdout
    assert "the model wrote" in res.stdout
    # the saved plan runs with no model (and no key) at all
    af.env.pop("ANTHROPIC_API_KEY")
    res = af.cli("run", str(agentic(af)), "--plan", str(out))
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_malformed_plan_gets_a_repair_round(af: Env) -> None:
    bad = tool_use(
        "submit_plan", {"steps": [{"id": "make-dta", "run": "true", "duration": "soon"}]}
    )
    with FakeAnthropic([bad, plan_reply()]) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(agentic(af)), "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    repair = fake.requests[1]["body"]["messages"]
    assert repair[1]["role"] == "assistant"
    result = repair[2]["content"][0]
    assert result["type"] == "tool_result"
    assert result["is_error"] is True
    assert "make-dta" in result["content"]
    assert "task step 'make-data' has no command" in result["content"]


def test_an_unrepairable_plan_is_exit_1_and_shows_what_the_model_sent(af: Env) -> None:
    bad = tool_use("submit_plan", {"steps": [{"id": "nope", "run": "true"}]})
    with FakeAnthropic([bad, bad, bad]) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(agentic(af)), "--yes")
    assert res.returncode == 1
    assert "still invalid after 2 repair rounds" in res.stderr
    assert '"id": "nope"' in res.stderr
    assert "Traceback" not in res.stderr
    assert not (af.home / "runs").exists()


def test_rate_limit_and_overload_are_retried_by_the_sdk(af: Env) -> None:
    replies = [error(429, "rate_limit_error"), error(529, "overloaded_error"), plan_reply()]
    with FakeAnthropic(replies) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(agentic(af)), "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    assert len(fake.requests) == 3


def test_an_api_that_keeps_failing_is_a_clear_error(af: Env) -> None:
    with FakeAnthropic([error(529, "overloaded_error")] * 6) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(agentic(af)), "--yes")
    assert res.returncode == 1
    assert "the Anthropic API answered 529" in res.stderr
    assert "--plan" in res.stderr


def test_no_key_with_the_anthropic_planner_is_exit_4(af: Env) -> None:
    af.env.pop("ANTHROPIC_API_KEY", None)
    res = af.cli("run", str(agentic(af)))
    assert res.returncode == 4
    assert "ANTHROPIC_API_KEY" in res.stderr


# --- diagnosis ------------------------------------------------------------------------------

BROKEN = """\
version: 1
name: broken
docs: [runbook.md]
defaults: {on_failure: diagnose}
steps:
  - id: count
    run: wc -l < missing.txt
"""


def decision(action: str, **fields: Any) -> Reply:
    return tool_use(
        "submit_decision", {"diagnosis": "data.txt was never written", "action": action, **fields}
    )


def test_a_failing_step_is_fixed_by_a_retry_with_changes_decision(af: Env) -> None:
    (af.workspace / "runbook.md").write_text(RUNBOOK)
    wf = af.write(BROKEN)
    fix = decision(
        "retry_with_changes",
        run="printf 'x\\ny\\n' > data.txt; wc -l < data.txt",
        env={"HINT": "1"},
        category="data",
    )
    with FakeAnthropic([fix]) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    st = af.state(rid)["steps"]["count"]
    assert st["attempts"] == 2
    assert st["run_override"].startswith("printf")
    assert st["env_overrides"] == {"HINT": "1"}
    assert af.state(rid)["tokens_used"] == 1020
    events = [json.loads(x) for x in (af.run_dir(rid) / "events.jsonl").read_text().splitlines()]
    kinds = [e["kind"] for e in events]
    assert "diagnosis" in kinds
    proposed = next(e for e in events if e["kind"] == "command_proposed")
    assert "-wc -l < missing.txt" in proposed["message"]
    assert "+printf" in proposed["message"]
    request = fake.requests[0]["body"]
    assert request["tool_choice"] == {"type": "any"}  # it may look around first
    assert {"read_file", "grep", "submit_decision"} <= {t["name"] for t in request["tools"]}
    context = json.dumps(request["messages"][0]["content"])
    assert "missing.txt" in context  # the script and the log's error
    assert "counting fails with" in context  # the runbook's failure modes
    report = (af.run_dir(rid) / "report.md").read_text()
    assert "data.txt was never written" in report


def test_in_ci_a_changed_command_without_yes_escalates(af: Env) -> None:
    (af.workspace / "runbook.md").write_text(RUNBOOK)
    wf = af.write(BROKEN)
    with FakeAnthropic([decision("retry_with_changes", run="echo changed")]) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), "--ci")
    assert res.returncode == 3
    st = af.state(run_id_of(res.stdout))["steps"]["count"]
    assert st["status"] == "blocked"
    assert "needs approval" in st["message"]


def test_a_spent_budget_escalates(af: Env) -> None:
    (af.workspace / "runbook.md").write_text(RUNBOOK)
    wf = af.write(BROKEN.replace("defaults:", "planner: {budget: 2500}\ndefaults:"))
    with FakeAnthropic([decision("retry"), decision("retry")]) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), "--ci")
    assert res.returncode == 3, res.stdout
    # The budget is a cap: the first request may answer in what is left of it, and the
    # second, which would go past it, is never sent.
    assert len(fake.requests) == 1
    assert fake.requests[0]["body"]["max_tokens"] < 2500
    st = af.state(run_id_of(res.stdout))["steps"]["count"]
    assert st["status"] == "blocked"
    assert "token budget (2500) is spent" in st["message"]


def test_a_budget_too_small_for_one_request_sends_none(af: Env) -> None:
    (af.workspace / "runbook.md").write_text(RUNBOOK)
    wf = af.write(BROKEN.replace("defaults:", "planner: {budget: 300}\ndefaults:"))
    with FakeAnthropic([decision("retry")]) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), "--ci")
    assert res.returncode == 3, res.stdout
    assert fake.requests == []
    message = af.state(run_id_of(res.stdout))["steps"]["count"]["message"]
    assert "token budget (300) is spent" in message
    assert "the next request needs about" in message


def test_an_answer_cut_at_max_tokens_and_a_refused_request_say_what_to_do(af: Env) -> None:
    cut = plan_reply()
    cut.body["stop_reason"] = "max_tokens"
    with FakeAnthropic([cut]) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(agentic(af)), "--yes")
    assert res.returncode == 1
    assert "cut at" in res.stderr
    assert "raise planner.max_tokens" in res.stderr
    too_long = error(400, "invalid_request_error", "prompt is too long: 210000 tokens")
    with FakeAnthropic([too_long] * 6) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(agentic(af)), "--yes")
    assert res.returncode == 1
    assert "refused the request (400: prompt is too long" in res.stderr
    assert "try again later" not in res.stderr
    assert len(fake.requests) == 1  # nothing to retry


def test_the_request_for_a_100_mb_log_is_bounded_and_has_no_secret(af: Env) -> None:
    secret = "sk-very-secret-4242"
    wf = af.write(
        """\
version: 1
name: huge
secrets: [API_KEY_X]
defaults: {on_failure: diagnose}
steps:
  - id: noisy
    run: |
      yes "processing batch, all fine, key=$API_KEY_X" | head -c 100000000
      echo "RuntimeError: CUDA out of memory (key $API_KEY_X)"
      exit 1
"""
    )
    af.env["API_KEY_X"] = secret
    with FakeAnthropic([decision("abort")]) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    body = json.dumps(fake.requests[0]["body"])
    assert len(body) < 6000 * 4 + 4000
    assert secret not in body
    assert "CUDA out of memory" in body


def test_build_context_bounds_any_log_and_masks_secrets(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    with log.open("w") as f:
        for i in range(200_000):
            f.write(f"step {i} ok token=hunter2-secret\n")
        f.write("Traceback (most recent call last):\nValueError: loss is nan\n")
    failure = Failure(
        Step(id="train", run="python train.py"),
        "python train.py",
        "failed",
        1,
        "exit code 1",
        1,
        log,
    )
    context = build_context(failure, [], [], Redactor(["hunter2-secret"]), budget_tokens=2000)
    assert len(context) <= 2000 * 4
    assert "hunter2-secret" not in context
    assert "loss is nan" in context


def answer_in_a_terminal(
    af: Env, wf: Path, term: Path, answer: str, run: str = "echo fixed-by-model"
) -> str:
    """Run agentflow in a real terminal (a tmux pane), answer its prompt, return the screen."""
    fix = decision("retry_with_changes", run=run)
    with FakeAnthropic([fix]) as fake:
        use_fake(af, fake)
        env = " ".join(
            f"{k}={shlex.quote(v)}"
            for k, v in af.env.items()
            if k.startswith(("AGENTFLOW", "ANTHROPIC"))
        )
        cmd = (
            # -u CI: a person at a terminal, even when the suite itself runs in CI
            f"cd {shlex.quote(str(af.workspace))} && env -u CI {env} {AGENTFLOW} run "
            f"{shlex.quote(str(wf))} --run-id ap-{answer}; echo EXIT=$?; sleep 60"
        )
        terminal = libtmux.Server(socket_path=str(term))
        try:
            session = terminal.new_session(session_name="t", window_command=cmd, x=150, y=40)
            pane = session.active_window.active_pane
            assert pane is not None

            def screen() -> str:
                assert pane is not None
                return "\n".join(pane.capture_pane())

            af.wait_for(lambda: "Run the changed command?" in screen(), 60, "the prompt")
            assert "+" + run.split()[0] in screen()
            shown = screen()
            pane.send_keys(answer, enter=True)
            af.wait_for(lambda: "EXIT=" in screen(), 60, "the run ends")
            return shown + "\n=====\n" + screen()
        finally:
            terminal.kill()


@pytest.mark.parametrize(("answer", "code", "status"), [("y", 0, "succeeded"), ("n", 3, "blocked")])
def test_approval_prompt_accepted_and_refused(
    af: Env, tmp_path: Path, answer: str, code: int, status: str
) -> None:
    (af.workspace / "runbook.md").write_text(RUNBOOK)
    wf = af.write(BROKEN)
    screen = answer_in_a_terminal(af, wf, tmp_path / "term.sock", answer)
    assert f"EXIT={code}" in screen, screen
    assert af.state(f"ap-{answer}")["steps"]["count"]["status"] == status


def test_the_prompt_shows_all_of_a_long_command_and_what_hides(af: Env, tmp_path: Path) -> None:
    (af.workspace / "runbook.md").write_text(RUNBOOK)
    wf = af.write(BROKEN)
    hidden = "echo ok" + " " * 200 + "; touch TAIL_THAT_RUNS\u200b; echo x" + "y" * 200
    screen = answer_in_a_terminal(af, wf, tmp_path / "term.sock", "n", run=hidden)
    prompt = screen.split("=====")[0]
    # The blanks are counted, the invisible mark spelled out, the long line wrapped: all
    # of what would run is on the screen before the question.
    assert "⟨200 blanks⟩" in prompt
    assert "TAIL_THAT_RUNS\\u200b" in prompt
    assert "y" * 100 in "".join(prompt.split())


@pytest.mark.parametrize("action", ["skip", "abort"])
def test_skip_and_abort_decisions(af: Env, action: str) -> None:
    (af.workspace / "runbook.md").write_text(RUNBOOK)
    wf = af.write(BROKEN)
    with FakeAnthropic([decision(action)]) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), "--ci")
    st = af.state(run_id_of(res.stdout))["steps"]["count"]
    # The model may not turn a run green unasked: a skip needs a person (or --yes).
    assert st["status"] == ("blocked" if action == "skip" else "failed")
    assert res.returncode == (3 if action == "skip" else 1)
    if action == "skip":
        with FakeAnthropic([decision(action)]) as fake:
            use_fake(af, fake)
            res = af.cli("run", str(wf), "--ci", "--yes")
        st = af.state(run_id_of(res.stdout))["steps"]["count"]
        assert (st["status"], res.returncode) == ("skipped", 0)


def test_a_slow_model_never_delays_another_steps_timeout(af: Env) -> None:
    wf = af.write(
        """\
        version: 1
        name: slow
        planner: {type: static}
        steps:
          - id: broken
            run: exit 3
            on_failure: diagnose
          - id: slow
            run: sleep 30
            timeout: 2s
          - id: after-broken
            needs: [broken]
            run: echo never
        """
    )
    slow_answer = decision("abort")
    slow_answer.delay = 10
    with FakeAnthropic([slow_answer]) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), "--ci", timeout=90)
    assert res.returncode == 1, res.stdout + res.stderr
    state = af.state(run_id_of(res.stdout))
    slow = state["steps"]["slow"]
    took = datetime.fromisoformat(slow["finished_at"]) - datetime.fromisoformat(slow["started_at"])
    assert slow["status"] == "timeout"
    assert took.total_seconds() < 3 + 2, took  # its timeout (2 s), the kill's grace, not 10 s
    events = [json.loads(x) for x in (af.run_dir(state["run_id"]) / "events.jsonl").open()]
    kinds = [(e["kind"], e.get("step")) for e in events]
    assert kinds.index(("step_finished", "slow")) < kinds.index(("diagnosis", "broken"))
    assert state["steps"]["broken"]["status"] == "failed"
    assert state["steps"]["after-broken"]["status"] == "skipped"
