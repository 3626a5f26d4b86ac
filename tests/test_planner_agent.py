"""The LLM planner on the agent loop, through the real CLI and the real anthropic SDK
against the fake Messages API: it looks around before it writes, a task expands into
steps of its own (validated like a hand-written workflow, resumable from the saved plan),
the plan the model wrote is approved before it runs, and planning tokens count."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import libtmux
import pytest

from agentflow import safefs
from agentflow.agent.llm import LLM
from agentflow.agent.tools import LOOK_TOOLS, ToolError
from agentflow.planner.anthropic import AnthropicPlanner, planning_tools
from agentflow.workflow import load_workflow
from fake_anthropic import FakeAnthropic, answer, call, text, tool_use

from conftest import AGENTFLOW, Env, run_id_of

LOOKING = """\
version: 1
name: looking
planner: {type: anthropic, model: claude-test}
steps:
  - id: make-data
    task: Write the data with job.py (find its flags first).
  - id: count
    needs: [make-data]
    run: wc -l < data.txt
"""

JOB = "import sys\n# usage: python3 job.py --lines N > data.txt\nprint('x')\n"

EXPANDING = """\
version: 1
name: expand
planner: {type: anthropic, model: claude-test}
steps:
  - id: setup
    run: echo setup >> order.txt
  - id: make-data
    needs: [setup]
    task: Fetch the raw data, shape it, and write data.txt.
    env: {MARK: from-task}
  - id: count
    needs: [make-data]
    run: echo count >> order.txt; wc -l < data.txt
"""


def use_fake(af: Env, fake: FakeAnthropic) -> None:
    af.env["ANTHROPIC_API_KEY"] = "test-key"
    af.env["ANTHROPIC_BASE_URL"] = fake.url


def submit(*steps: dict[str, Any]) -> Any:
    return tool_use("submit_plan", {"steps": list(steps)})


def expansion(shape: str = "sort raw.txt > data.txt", **shape_fields: Any) -> Any:
    """make-data carried out by two new steps, fetch then shape, and its own last command."""
    return submit(
        {
            "id": "fetch",
            "run": 'echo "fetch $MARK" >> order.txt; printf "b\\na\\n" > raw.txt',
            "success": {"files": ["raw.txt"]},
            "duration": "5s",
        },
        {"id": "shape", "run": f"echo shape >> order.txt; {shape}", "needs": ["fetch"]}
        | shape_fields,
        {
            "id": "make-data",
            "run": "echo make-data >> order.txt; test -s data.txt",
            "needs": ["shape"],
        },
    )


def tool_results(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool_result blocks of a request's last message (the answers to the last turn)."""
    last = request["body"]["messages"][-1]
    assert last["role"] == "user"
    return [b for b in last["content"] if b.get("type") == "tool_result"]


# --- looking around ---------------------------------------------------------------------------


def test_the_planner_looks_around_before_it_submits_and_the_calls_are_recorded(af: Env) -> None:
    (af.workspace / "job.py").write_text(JOB)
    wf = af.write(LOOKING)
    replies = [
        answer(
            text("First the workspace and the job."),
            call("list_dir", {"path": "."}, "toolu_a"),
            call("read_file", {"path": "job.py"}, "toolu_b"),
        ),
        answer(call("command_help", {"command": "python3 job.py"}, "toolu_c")),
        submit({"id": "make-data", "run": "printf 'a\\nb\\nc\\n' > data.txt"}),
    ]
    with FakeAnthropic(replies) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    assert len(fake.requests) == 3
    first = fake.requests[0]["body"]
    offered = [t["name"] for t in first["tools"]]
    assert {"read_file", "list_dir", "grep", "command_help", "submit_plan"} <= set(offered)
    assert not {"read_log", "step_info", "http_get"} & set(offered)  # need a run
    assert first["tool_choice"] == {"type": "any"}  # it may look first
    assert "command_help" in first["system"][0]["text"]
    # Each call of a turn is answered, by its id, in the request that follows.
    assert [r["tool_use_id"] for r in tool_results(fake.requests[1])] == ["toolu_a", "toolu_b"]
    assert [r["tool_use_id"] for r in tool_results(fake.requests[2])] == ["toolu_c"]
    rid = run_id_of(res.stdout)
    plan = json.loads((af.run_dir(rid) / "plan.json").read_text())
    assert [t["tool"] for t in plan["transcript"]] == [
        "text", "list_dir", "read_file", "command_help",
    ]  # fmt: skip
    assert plan["transcript"][2]["input"] == {"path": "job.py"}
    assert plan["usage"]["calls"] == 3


class FileTools:
    """A tiny real look-around toolbox: read_file over one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def schemas(self) -> list[dict[str, Any]]:
        return [t for t in LOOK_TOOLS if t["name"] == "read_file"]

    def call(self, name: str, args: dict[str, Any]) -> str:
        if name != "read_file":
            raise ToolError(f"unknown tool {name!r}")
        return (self.root / str(args["path"])).read_text()[:4000]


def test_what_a_tool_returned_reaches_the_model_before_it_plans(
    af: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    (af.workspace / "job.py").write_text(JOB)
    wf = load_workflow(af.write(LOOKING))
    replies = [
        answer(call("read_file", {"path": "job.py"}, "toolu_r")),
        submit({"id": "make-data", "run": "python3 job.py --lines 3 > data.txt"}),
    ]
    with FakeAnthropic(replies) as fake:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        planner = AnthropicPlanner(LLM("claude-test", 4096, None), FileTools(af.workspace))
        plan = planner.plan(wf, {})
    (result,) = tool_results(fake.requests[1])
    assert result["tool_use_id"] == "toolu_r"
    assert "usage: python3 job.py --lines N" in json.dumps(result["content"])
    assert "is_error" not in result
    assert plan.step("make-data").run == "python3 job.py --lines 3 > data.txt"
    assert [t.tool for t in plan.transcript] == ["read_file"]
    assert "--lines N" in plan.transcript[0].result
    assert plan.usage is not None
    assert plan.usage.calls == 2


def test_the_planning_tools_hide_agentflows_home_mask_secrets_and_run_nothing(
    af: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = af.workspace / ".agentflow"  # the default: inside the workflow's folder
    home.mkdir()
    monkeypatch.setenv("AGENTFLOW_HOME", str(home))
    monkeypatch.setenv("TOK", "s3cr3t-value")
    wf = load_workflow(af.write(LOOKING.replace("steps:", "secrets: [TOK]\nsteps:")))
    with planning_tools(wf) as tools:
        scene = tools.tools.scene  # type: ignore[attr-defined]  # the real Toolbox's
        assert safefs.identity(home) in scene.hidden
        assert scene.redact("token=s3cr3t-value") == "token=***"
        # No image: the run's steps would run on this machine, so --help runs here too
        # (plain commands only: nothing inline).
        assert scene.sandbox.name == "local"
        with pytest.raises(ToolError):
            tools.call("command_help", {"command": 'python3 -c \'open("x", "w")\''})
        assert not (af.workspace / "x").exists()
        assert scene.workspace == wf.base_dir
        offered = {t["name"] for t in tools.schemas()}
        assert {"read_file", "list_dir", "command_help"} <= offered
        assert not {"read_log", "step_info", "http_get"} & offered
        with pytest.raises(ToolError, match="needs a run"):
            tools.call("read_log", {"step": "make-data"})


HELPFUL_JOB = """\
import argparse
parser = argparse.ArgumentParser(prog="job.py")
parser.add_argument("--lines", type=int, required=True, help="how many lines to write")
args = parser.parse_args()
print("\\n".join("x" * args.lines))
"""


def test_the_planner_reads_a_jobs_help_before_it_writes_its_flags(af: Env) -> None:
    (af.workspace / "job.py").write_text(HELPFUL_JOB)
    wf = af.write(LOOKING)
    replies = [
        answer(call("command_help", {"command": "python3 job.py"})),
        submit({"id": "make-data", "run": "python3 job.py --lines 3 > data.txt"}),
    ]
    replies[1].requires = ("--lines LINES", "how many lines to write")
    with FakeAnthropic(replies) as fake:
        use_fake(af, fake)
        res = af.cli("plan", str(wf))
    assert res.returncode == 0, res.stdout + res.stderr
    assert not fake.unmet


@pytest.mark.docker
def test_in_docker_the_planner_looks_in_a_throwaway_read_only_container(
    af: Env, docker_client: Any
) -> None:
    from conftest import TEST_IMAGE

    wf = af.write(
        LOOKING.replace("steps:", f"sandbox: {{backend: docker, image: {TEST_IMAGE}}}\nsteps:")
    )
    replies = [
        answer(call("command_help", {"command": "sh -c 'echo hi > made-by-probe; echo tried'"})),
        submit({"id": "make-data", "run": "printf 'a\\nb\\nc\\n' > data.txt"}),
    ]
    replies[1].requires = ("Read-only file system",)
    with FakeAnthropic(replies) as fake:
        use_fake(af, fake)
        res = af.cli("plan", str(wf), timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not fake.unmet
    assert not (af.workspace / "made-by-probe").exists()
    left = docker_client.containers.list(all=True, filters={"label": "agentflow.workflow=looking"})
    assert left == []  # removed once planning ended


# --- expanding a task -------------------------------------------------------------------------


def test_a_task_expanded_into_two_steps_runs_them_in_order_before_it(af: Env) -> None:
    wf = af.write(EXPANDING)
    with FakeAnthropic([expansion()]) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    order = (af.workspace / "order.txt").read_text().splitlines()
    # The added steps run after what the task needs, in their order, with the task's env;
    # the task runs last, then what needs it.
    assert order == ["setup", "fetch from-task", "shape", "make-data", "count"]
    plan = json.loads((af.run_dir(rid) / "plan.json").read_text())
    steps = {s["id"]: s for s in plan["steps"]}
    assert [s["id"] for s in plan["steps"]] == ["setup", "fetch", "shape", "make-data", "count"]
    assert steps["fetch"]["expands"] == "make-data"
    assert steps["fetch"]["needs"] == ["setup"]
    assert steps["shape"]["needs"] == ["setup", "fetch"]
    assert steps["make-data"]["needs"] == ["setup", "shape"]
    assert steps["fetch"]["success"] == {"files": ["raw.txt"], "command": None, "log": None,
                                         "metrics": {}}  # fmt: skip
    state = af.state(rid)
    assert all(st["status"] == "succeeded" for st in state["steps"].values()), state["steps"]
    assert (af.run_dir(rid) / "steps" / "count" / "output.log").read_text().strip() == "2"


def test_a_saved_plan_with_added_steps_checks_them_and_resumes(af: Env, tmp_path: Path) -> None:
    wf = af.write(EXPANDING)
    saved = tmp_path / "plan.json"
    # shape writes data.txt only once `go` exists: its success check (the model's) fails
    # the first run.
    shaping = expansion(
        "if [ -f go ]; then sort raw.txt > data.txt; fi", success={"files": ["data.txt"]}
    )
    with FakeAnthropic([shaping]) as fake:
        use_fake(af, fake)
        res = af.cli("plan", str(wf), "-o", str(saved))
    assert res.returncode == 0, res.stderr
    assert "the model wrote the ✎ commands and the + steps (1020 tokens in 1 request" in res.stdout
    assert 'success: {"files": ["data.txt"]}' in res.stdout
    af.env.pop("ANTHROPIC_API_KEY")  # a saved plan runs without a model
    res = af.cli("run", str(wf), "--plan", str(saved), "--ci")
    assert res.returncode == 1, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    steps = af.state(rid)["steps"]
    assert steps["fetch"]["status"] == "succeeded"
    assert steps["shape"]["status"] == "failed"
    assert "data.txt" in steps["shape"]["message"]
    assert steps["make-data"]["status"] == "skipped"
    assert af.state(rid)["tokens_used"] == 0  # the saved plan's tokens were spent once
    (af.workspace / "go").touch()
    res = af.cli("resume", rid, "--ci")
    assert res.returncode == 0, res.stdout + res.stderr
    assert all(st["status"] == "succeeded" for st in af.state(rid)["steps"].values())
    assert (af.workspace / "order.txt").read_text().splitlines()[-3:] == [
        "shape", "make-data", "count",
    ]  # fmt: skip


def test_a_saved_plan_whose_added_step_breaks_the_rules_is_refused(af: Env, tmp_path: Path) -> None:
    wf = af.write(EXPANDING)
    saved = tmp_path / "plan.json"
    with FakeAnthropic([expansion()]) as fake:
        use_fake(af, fake)
        assert af.cli("plan", str(wf), "-o", str(saved)).returncode == 0
    plan = json.loads(saved.read_text())
    for s in plan["steps"]:
        if s["id"] == "make-data":
            s["needs"] = ["setup"]  # no longer needs its added steps
    saved.write_text(json.dumps(plan))
    res = af.cli("run", str(wf), "--plan", str(saved), "--ci")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "step 'shape' is part of make-data but neither make-data nor" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (af.home / "runs").exists()


def test_an_invalid_expansion_gets_repair_rounds_then_a_clear_error(af: Env) -> None:
    wf = af.write(EXPANDING)
    cycle = submit(
        {"id": "fetch", "run": "true", "needs": ["shape"]},
        {"id": "shape", "run": "true", "needs": ["fetch"]},
        {"id": "make-data", "run": "true", "needs": ["shape"]},
    )
    unknown = expansion().body["content"][0]["input"]
    unknown["steps"][1]["needs"] = ["fetsh"]
    # An id is a folder and a tmux window: one that would leave the run directory is refused.
    escape = submit(
        {"id": "../escape", "run": "true"},
        {"id": "make-data", "run": "true", "needs": ["../escape"]},
    )
    with FakeAnthropic([cycle, tool_use("submit_plan", unknown), escape]) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), "--yes")
    assert res.returncode == 1, res.stdout + res.stderr
    assert len(fake.requests) == 3
    (first,) = tool_results(fake.requests[1])
    assert first["is_error"] is True
    assert "dependency cycle: shape → fetch → shape" in first["content"]
    (second,) = tool_results(fake.requests[2])
    assert (
        "step 'shape' needs 'fetsh', which is neither a step of the workflow nor one you "
        "added (did you mean 'fetch'?)"
    ) in second["content"]
    error = res.stderr.strip()
    assert len(error.splitlines()) == 1
    assert "the model's plan is still invalid after 2 repair rounds" in error
    assert "step '../escape': id: String should match pattern" in error
    assert "Traceback" not in res.stderr
    assert not (af.home / "runs").exists()


def test_a_new_step_no_task_needs_is_refused_and_repaired(af: Env) -> None:
    wf = af.write(EXPANDING)
    stray = submit(
        {"id": "fetch", "run": "printf 'b\\na\\n' > raw.txt"},
        {"id": "make-data", "run": "sort raw.txt > data.txt"},
    )
    fixed = submit(
        {"id": "fetch", "run": "printf 'b\\na\\n' > raw.txt"},
        {"id": "make-data", "run": "sort raw.txt > data.txt", "needs": ["fetch"]},
    )
    with FakeAnthropic([stray, fixed]) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    (result,) = tool_results(fake.requests[1])
    assert "step 'fetch' is not in the workflow" in result["content"]
    assert "no task needs it" in result["content"]


# --- approval -----------------------------------------------------------------------------------


def test_run_without_a_terminal_refuses_the_models_plan_unless_yes(af: Env) -> None:
    wf = af.write(EXPANDING)
    with FakeAnthropic([expansion()]) as fake:
        use_fake(af, fake)
        refused = af.cli("run", str(wf))
        assert fake.requests == []  # refused before the model was asked anything
        approved = af.cli("run", str(wf), "--yes")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    error = refused.stderr.strip()
    assert len(error.splitlines()) == 1
    assert "nobody is here to approve them: pass --yes" in error
    assert f"agentflow plan {wf} -o plan.json" in error
    assert "--plan" in error
    assert approved.returncode == 0, approved.stdout + approved.stderr
    # The planning call is the run's: its tokens are in the run's usage.
    state = af.state(run_id_of(approved.stdout))
    assert state["usage"]["calls"] == 1
    assert state["usage"]["input_tokens"] == 900
    assert state["usage"]["output_tokens"] == 120
    assert state["tokens_used"] == 1020


def answer_the_plan_in_a_terminal(af: Env, wf: Path, term: Path, answer: str) -> str:
    """Run agentflow in a real terminal (a tmux pane), answer its question about the plan,
    return the screen."""
    with FakeAnthropic([expansion()]) as fake:
        use_fake(af, fake)
        env = " ".join(
            f"{k}={shlex.quote(v)}"
            for k, v in af.env.items()
            if k.startswith(("AGENTFLOW", "ANTHROPIC"))
        )
        cmd = (
            f"cd {shlex.quote(str(af.workspace))} && env -u CI {env} {AGENTFLOW} run "
            f"{shlex.quote(str(wf))} --run-id plan-{answer}; echo EXIT=$?; sleep 60"
        )
        terminal = libtmux.Server(socket_path=str(term))
        try:
            session = terminal.new_session(session_name="t", window_command=cmd, x=160, y=50)
            pane = session.active_window.active_pane
            assert pane is not None

            def screen() -> str:
                assert pane is not None
                return "\n".join(pane.capture_pane())

            question = "Run the commands the model wrote?"
            af.wait_for(lambda: question in screen(), 60, "the question")
            shown = screen()
            assert "fetch $MARK" in shown  # the model's commands, before anything runs
            assert "success: {" in shown
            assert not (af.workspace / "order.txt").exists()
            pane.send_keys(answer, enter=True)
            af.wait_for(lambda: "EXIT=" in screen(), 60, "the run ends")
            return screen()
        finally:
            terminal.kill()


@pytest.mark.parametrize(("answer", "code"), [("y", 0), ("n", 3)])
def test_in_a_terminal_the_models_plan_is_shown_and_asked_about(
    af: Env, tmp_path: Path, answer: str, code: int
) -> None:
    wf = af.write(EXPANDING)
    screen = answer_the_plan_in_a_terminal(af, wf, tmp_path / "term.sock", answer)
    assert f"EXIT={code}" in screen, screen
    if answer == "y":
        assert af.state("plan-y")["status"] == "succeeded"
    else:
        assert "not approved: nothing ran" in screen
        assert not (af.home / "runs").exists()
