"""The static planner: run order, inputs from defaults and ``--set``, and what it refuses."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from agentflow.errors import PlanError, UsageError
from agentflow.plan import Plan
from agentflow.planner import make_plan
from agentflow.planner.inputs import parse_set_options
from agentflow.workflow import WorkflowFile, load_workflow

from conftest import agentflow

ROOT = Path(__file__).resolve().parents[1]
HELLO = ROOT / "workflows" / "hello.yaml"
AGENTFLOW = Path(sys.executable).parent / "agentflow"


@pytest.fixture
def write(tmp_path: Path):
    """Write a workflow (given without its ``version``/``name`` header) and load it."""

    def _write(body: str, name: str = "wf.yaml") -> WorkflowFile:
        path = tmp_path / name
        text = "version: 1\nname: t\n" + textwrap.dedent(body).lstrip("\n")
        path.write_text(text, encoding="utf-8")
        return load_workflow(path)

    return _write


STEP_ECHO = "\nsteps:\n  - id: a\n    run: echo ${{{{ inputs.{} }}}}\n"


def order(plan: Plan) -> list[str]:
    return [s.id for s in plan.steps]


# --- run order --------------------------------------------------------------------------------


def test_hello_runs_in_dependency_then_file_order() -> None:
    plan = make_plan(load_workflow(HELLO), {})
    assert order(plan) == ["prepare", "count", "lint", "summarize"]


def test_independent_steps_keep_file_order(write) -> None:
    wf = write(
        """
        steps:
          - {id: c, run: echo c}
          - {id: a, run: echo a}
          - {id: b, run: echo b}
        """
    )
    assert order(make_plan(wf, {})) == ["c", "a", "b"]


def test_a_step_listed_before_its_dependency_runs_after_it(write) -> None:
    wf = write(
        """
        steps:
          - {id: late, needs: [early], run: echo late}
          - {id: early, run: echo early}
        """
    )
    assert order(make_plan(wf, {})) == ["early", "late"]


def test_ready_steps_run_in_file_order_as_they_become_ready(write) -> None:
    wf = write(
        """
        steps:
          - {id: x, run: echo x}
          - {id: y, needs: [z], run: echo y}
          - {id: z, run: echo z}
          - {id: w, run: echo w}
        """
    )
    # x and z are ready first (x before z); once z is done, y (file index 1) beats w (3).
    assert order(make_plan(wf, {})) == ["x", "z", "y", "w"]


def test_every_step_comes_after_all_it_needs(write) -> None:
    wf = write(
        """
        steps:
          - {id: d, needs: [b, c], run: echo d}
          - {id: c, needs: [a], run: echo c}
          - {id: b, needs: [a, a], run: echo b}
          - {id: a, run: echo a}
        """
    )
    plan = make_plan(wf, {})
    position = {sid: i for i, sid in enumerate(order(plan))}
    for step in plan.steps:
        assert all(position[n] < position[step.id] for n in step.needs)
    assert order(plan) == ["a", "c", "b", "d"]


def test_plan_keeps_each_steps_needs(write) -> None:
    wf = write(
        """
        steps:
          - {id: a, run: echo a}
          - {id: b, needs: a, run: echo b}
        """
    )
    plan = make_plan(wf, {})
    assert plan.step("a").needs == []
    assert plan.step("b").needs == ["a"]


def test_plan_names_workflow_planner_and_source() -> None:
    plan = make_plan(load_workflow(HELLO), {})
    assert plan.workflow == "hello"
    assert plan.planner == "static"
    assert {s.source for s in plan.steps} == {"workflow"}


# --- inputs -----------------------------------------------------------------------------------


def test_inputs_are_substituted_with_defaults() -> None:
    plan = make_plan(load_workflow(HELLO), {})
    assert plan.inputs == {"greeting": "hello", "count": 3}
    assert plan.step("count").run.startswith("for i in $(seq 1 3); do")
    assert plan.step("lint").run.startswith('grep -q "hello" .hello/greeting.txt')


def test_set_overrides_a_default() -> None:
    plan = make_plan(load_workflow(HELLO), parse_set_options(["greeting=bonjour", "count=5"]))
    assert plan.inputs == {"greeting": "bonjour", "count": 5}
    assert "seq 1 5" in plan.step("count").run
    assert '"bonjour"' in plan.step("lint").run


def test_inputs_shorthand_and_spacing_inside_braces(write) -> None:
    wf = write(
        """
        inputs: {layers: 2}
        steps:
          - {id: a, run: "train --layers ${{inputs.layers}} --again ${{   inputs.layers   }}"}
        """
    )
    assert make_plan(wf, {}).step("a").run == "train --layers 2 --again 2"


def test_integer_input_is_converted(write) -> None:
    wf = write("inputs: {n: 1}" + STEP_ECHO.format("n"))
    plan = make_plan(wf, {"n": "42"})
    assert plan.inputs["n"] == 42
    assert isinstance(plan.inputs["n"], int)
    assert plan.step("a").run == "echo 42"


def test_integer_input_refuses_text(write) -> None:
    wf = write("inputs: {n: 1}" + STEP_ECHO.format("n"))
    with pytest.raises(UsageError, match=r"^--set n=many: expected an integer$"):
        make_plan(wf, {"n": "many"})


def test_number_input_is_converted(write) -> None:
    wf = write("inputs: {lr: 0.5}" + STEP_ECHO.format("lr"))
    plan = make_plan(wf, {"lr": "0.25"})
    assert plan.inputs["lr"] == 0.25
    assert plan.step("a").run == "echo 0.25"


@pytest.mark.parametrize(
    ("raw", "value", "text"),
    [
        ("true", True, "true"),
        ("YES", True, "true"),
        ("on", True, "true"),
        ("1", True, "true"),
        ("false", False, "false"),
        ("no", False, "false"),
        ("Off", False, "false"),
        ("0", False, "false"),
    ],
)
def test_boolean_input_is_converted(write, raw: str, value: bool, text: str) -> None:
    wf = write("inputs: {fast: false}" + STEP_ECHO.format("fast"))
    plan = make_plan(wf, {"fast": raw})
    assert plan.inputs["fast"] is value
    assert plan.step("a").run == f"echo {text}"


def test_boolean_default_renders_lowercase(write) -> None:
    wf = write("inputs: {fast: true}" + STEP_ECHO.format("fast"))
    assert make_plan(wf, {}).step("a").run == "echo true"


def test_boolean_input_refuses_other_words(write) -> None:
    wf = write("inputs: {fast: false}" + STEP_ECHO.format("fast"))
    with pytest.raises(UsageError, match=r"^--set fast=maybe: expected a boolean$"):
        make_plan(wf, {"fast": "maybe"})


def test_declared_type_wins_over_the_default_type(write) -> None:
    wf = write("inputs: {tag: {type: string, default: 1}}" + STEP_ECHO.format("tag"))
    plan = make_plan(wf, {"tag": "007"})
    assert plan.inputs["tag"] == "007"
    assert plan.step("a").run == "echo 007"


def test_choices_accept_a_listed_value(write) -> None:
    wf = write(
        "inputs: {mode: {default: fast, choices: [fast, slow]}}\n" + STEP_ECHO.format("mode")
    )
    assert make_plan(wf, {"mode": "slow"}).step("a").run == "echo slow"


def test_choices_refuse_other_values(write) -> None:
    wf = write(
        "inputs: {mode: {default: fast, choices: [fast, slow]}}\n" + STEP_ECHO.format("mode")
    )
    with pytest.raises(UsageError, match=r"^--set mode=medium: must be one of fast, slow$"):
        make_plan(wf, {"mode": "medium"})


def test_integer_choices_compare_converted_values(write) -> None:
    wf = write("inputs: {k: {default: 4, choices: [4, 8]}}" + STEP_ECHO.format("k"))
    assert make_plan(wf, {"k": "8"}).inputs["k"] == 8
    with pytest.raises(UsageError, match="must be one of 4, 8"):
        make_plan(wf, {"k": "5"})


def test_unknown_set_name_suggests_the_close_one() -> None:
    with pytest.raises(UsageError) as info:
        make_plan(load_workflow(HELLO), {"cuont": "5"})
    assert str(info.value) == (
        "--set cuont: hello.yaml has no input 'cuont' (did you mean 'count'?); "
        "inputs: greeting, count"
    )


def test_unknown_set_name_without_close_match_lists_inputs() -> None:
    with pytest.raises(UsageError) as info:
        make_plan(load_workflow(HELLO), {"zzz": "5"})
    assert str(info.value) == "--set zzz: hello.yaml has no input 'zzz'; inputs: greeting, count"


def test_set_on_a_workflow_without_inputs(write) -> None:
    wf = write("steps:\n  - {id: a, run: echo}\n")
    with pytest.raises(UsageError, match=r"has no input 'x'; inputs: none$"):
        make_plan(wf, {"x": "1"})


def test_required_input_missing(write) -> None:
    wf = write("inputs: {model: {description: which model}}" + STEP_ECHO.format("model"))
    with pytest.raises(UsageError) as info:
        make_plan(wf, {})
    assert str(info.value) == (
        "input 'model' of wf.yaml has no default: give it with --set model=VALUE"
    )


def test_required_input_given_with_set(write) -> None:
    wf = write("inputs: {model: null}" + STEP_ECHO.format("model"))
    assert make_plan(wf, {"model": "tiny"}).step("a").run == "echo tiny"


def test_parse_set_options_splits_at_the_first_equals() -> None:
    assert parse_set_options(["a=1", "b=x=y", " c =", "a=2"]) == {"a": "2", "b": "x=y", "c": ""}


@pytest.mark.parametrize("item", ["novalue", "=x", " =x"])
def test_parse_set_options_refuses_items_without_a_name(item: str) -> None:
    with pytest.raises(UsageError, match="write it as --set name=value"):
        parse_set_options([item])


# --- what stays for run time, and what the static planner cannot do --------------------------


def test_run_id_and_env_stay_unresolved(write) -> None:
    wf = write(
        """
        inputs: {n: 2}
        steps:
          - id: a
            run: echo ${{ run.id }} ${{ env.HOME }} ${{ inputs.n }}
        """
    )
    assert make_plan(wf, {}).step("a").run == "echo ${{ run.id }} ${{ env.HOME }} 2"


def test_hello_keeps_run_id_for_run_time() -> None:
    plan = make_plan(load_workflow(HELLO), {})
    assert 'echo "hello from run ${{ run.id }}"' in plan.step("prepare").run


def test_task_step_is_a_plan_error_that_says_what_to_do(write) -> None:
    wf = write(
        """
        steps:
          - {id: a, run: echo a}
          - {id: train, needs: [a], task: Train a small model.}
        """
    )
    with pytest.raises(PlanError) as info:
        make_plan(wf, {})
    message = str(info.value)
    assert message.startswith("wf.yaml: step 'train' is a `task:`")
    assert "--plan" in message
    assert "anthropic" in message
    assert info.value.exit_code == 2


def test_plan_round_trips_through_json() -> None:
    plan = make_plan(load_workflow(HELLO), {"count": "7"})
    assert Plan.model_validate_json(plan.model_dump_json()) == plan


# --- the command line -------------------------------------------------------------------------


def test_cli_plan_writes_a_plan_json_that_validates(tmp_path: Path) -> None:
    result = agentflow("plan", str(HELLO), "-o", "plan.json", "--set", "count=5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "plan.json").read_text(encoding="utf-8")
    plan = Plan.model_validate_json(text)
    assert order(plan) == ["prepare", "count", "lint", "summarize"]
    assert plan.inputs == {"greeting": "hello", "count": 5}
    assert json.loads(text)["version"] == 1


def test_cli_plan_prints_the_steps_in_order(tmp_path: Path) -> None:
    result = agentflow("plan", str(HELLO), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "hello: 4 steps, planner static, inputs greeting=hello, count=3" in out
    assert out.index("prepare") < out.index("summarize")
    assert not (tmp_path / "plan.json").exists()


def test_cli_plan_task_step_exits_2_with_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(
        "version: 1\nname: t\nsteps:\n  - {id: train, task: Train it.}\n", encoding="utf-8"
    )
    result = agentflow("plan", "wf.yaml", "-o", "plan.json", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: wf.yaml: step 'train' is a `task:`")
    assert "--plan" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "plan.json").exists()


def test_cli_plan_unknown_set_exits_2(tmp_path: Path) -> None:
    result = agentflow("plan", str(HELLO), "--set", "cuont=5", cwd=tmp_path)
    assert result.returncode == 2
    assert "error: --set cuont: hello.yaml has no input 'cuont' (did you mean 'count'?)" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
