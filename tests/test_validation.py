"""The workflow loader refuses bad files with one located problem per mistake.

Every problem reads ``FILE:LINE:COL: message``; the CLI prints each on its own line after
``error:`` and exits 2, never with a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentflow.errors import Problem, WorkflowError
from agentflow.workflow import Workflow, load_workflow, parse_workflow

from conftest import agentflow as run_console_script

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "workflows").glob("*.yaml"))
AGENTFLOW = Path(sys.executable).parent / "agentflow"

HEADER = "version: 1\nname: t\n"
ONE_STEP = "steps:\n  - id: a\n    run: echo hi\n"


def problems(text: str, *, tmp_path: Path | None = None) -> list[str]:
    """The located problems of ``text``, as the CLI prints them (without ``error:``)."""
    if tmp_path is None:
        with pytest.raises(WorkflowError) as info:
            parse_workflow(text, "wf.yaml")
    else:
        (tmp_path / "wf.yaml").write_text(text, encoding="utf-8")
        with pytest.raises(WorkflowError) as info:
            load_workflow(tmp_path / "wf.yaml")
    found = info.value.problems
    assert found, "a WorkflowError must list at least one problem"
    assert all(isinstance(p, Problem) for p in found)
    return [str(p) for p in found]


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# --- unknown keys -----------------------------------------------------------------------------


def test_unknown_top_level_key_suggests_the_close_one() -> None:
    text = HEADER + "stpes: []\n" + ONE_STEP
    assert problems(text) == ["wf.yaml:3:1: unknown key 'stpes' (did you mean 'steps'?)"]


def test_unknown_top_level_key_without_close_match_lists_known_keys() -> None:
    text = HEADER + "zzzz: 1\n" + ONE_STEP
    assert problems(text) == [
        "wf.yaml:3:1: unknown key 'zzzz'; known keys: defaults, description, docs, env, goal, "
        "inputs, matrix, max_consecutive_failures, max_parallel, max_parallel_runs, name, notify, "
        "objective, planner, sandbox, secrets, steps, version"
    ]


def test_unknown_step_key_suggests_the_close_one() -> None:
    text = HEADER + "steps:\n  - id: a\n    run: x\n    timout: 5m\n"
    assert problems(text) == [
        "wf.yaml:6:5: steps[0]: unknown key 'timout' (did you mean 'timeout'?)"
    ]


def test_unknown_step_key_without_close_match_lists_known_keys() -> None:
    text = HEADER + "steps:\n  - id: a\n    run: x\n    qqqq: 1\n"
    assert problems(text) == [
        "wf.yaml:6:5: steps[0]: unknown key 'qqqq'; known keys: artifacts, cache, description, "
        "env, expect, id, needs, on_failure, outputs, ports, ready, recover, resources, retry, "
        "run, service, stall_timeout, success, task, timeout, workdir"
    ]


def test_unknown_key_in_retry_backoff_is_located_in_the_nested_block() -> None:
    text = HEADER + dedent(
        """
        steps:
          - id: a
            run: x
            retry:
              limit: 1
              backoff:
                intial: 5s
        """
    )
    assert problems(text) == [
        "wf.yaml:9:9: steps[0].retry.backoff: unknown key 'intial' (did you mean 'initial'?)"
    ]


def test_unknown_key_in_sandbox_suggests_the_close_one() -> None:
    text = HEADER + "sandbox:\n  backnd: local\n" + ONE_STEP
    assert problems(text) == [
        "wf.yaml:4:3: sandbox: unknown key 'backnd' (did you mean 'backend'?)"
    ]


def test_unknown_key_in_sandbox_without_close_match_lists_its_keys() -> None:
    text = HEADER + "sandbox:\n  zzzz: 1\n" + ONE_STEP
    assert problems(text) == [
        "wf.yaml:4:3: sandbox: unknown key 'zzzz'; known keys: backend, build, image, mounts, "
        "network, resources, slurm, workdir"
    ]


def test_unknown_key_in_defaults_retry_backoff_flow_mapping() -> None:
    text = HEADER + "defaults:\n  retry:\n    backoff: {intial: 5s}\n" + ONE_STEP
    assert problems(text) == [
        "wf.yaml:5:15: defaults.retry.backoff: unknown key 'intial' (did you mean 'initial'?)"
    ]


def test_unknown_key_in_an_input_suggests_default() -> None:
    text = HEADER + "inputs:\n  layers: {defualt: 2}\n" + ONE_STEP
    assert problems(text) == [
        "wf.yaml:4:12: inputs.layers: unknown key 'defualt' (did you mean 'default'?)"
    ]


# --- steps: run / task / ids / needs ----------------------------------------------------------


def test_step_without_run_or_task() -> None:
    text = HEADER + "steps:\n  - id: a\n    description: nothing to do\n"
    assert problems(text) == [
        "wf.yaml:4:5: steps[0]: a step needs `run` (a command) or `task` (for the LLM planner)"
    ]


def test_step_with_both_run_and_task() -> None:
    text = HEADER + "steps:\n  - id: a\n    run: x\n    task: do x\n"
    assert problems(text) == ["wf.yaml:4:5: steps[0]: a step has either `run` or `task`, not both"]


def test_step_without_id() -> None:
    text = HEADER + "steps:\n  - run: x\n"
    assert problems(text) == ["wf.yaml:4:5: steps[0]: missing required key 'id'"]


def test_duplicate_step_ids_point_at_the_second() -> None:
    text = HEADER + "steps:\n  - id: a\n    run: x\n  - id: a\n    run: y\n"
    assert problems(text) == [
        "wf.yaml:6:5: steps[1].id: duplicate step id 'a' (first used by steps[0])"
    ]


def test_needs_unknown_step_suggests_the_close_one() -> None:
    text = HEADER + "steps:\n  - id: build\n    run: x\n  - id: b\n    needs: [biuld]\n    run: y\n"
    assert problems(text) == [
        "wf.yaml:7:13: steps[1].needs[0]: unknown step 'biuld' (did you mean 'build'?)"
    ]


def test_needs_unknown_step_without_close_match_lists_the_steps() -> None:
    text = HEADER + "steps:\n  - id: build\n    run: x\n  - id: b\n    needs: [zzz]\n    run: y\n"
    assert problems(text) == [
        "wf.yaml:7:13: steps[1].needs[0]: unknown step 'zzz'; steps are: build, b"
    ]


def test_needs_as_a_single_string_is_accepted() -> None:
    text = HEADER + "steps:\n  - id: a\n    run: x\n  - id: b\n    needs: a\n    run: y\n"
    assert parse_workflow(text, "wf.yaml").steps[1].needs == ["a"]


def test_step_needing_itself() -> None:
    text = HEADER + "steps:\n  - id: a\n    needs: [a]\n    run: x\n"
    assert problems(text) == ["wf.yaml:5:13: steps[0].needs[0]: step 'a' needs itself"]


def test_two_step_cycle_is_printed_with_arrows() -> None:
    text = HEADER + dedent(
        """
        steps:
          - id: a
            needs: [b]
            run: x
          - id: b
            needs: [a]
            run: y
        """
    )
    assert problems(text) == ["wf.yaml:8:5: steps[1].needs: dependency cycle: b → a → b"]


def test_three_step_cycle_is_printed_in_run_order() -> None:
    text = HEADER + dedent(
        """
        steps:
          - id: a
            needs: [c]
            run: x
          - id: b
            needs: [a]
            run: y
          - id: c
            needs: [b]
            run: z
        """
    )
    assert problems(text) == ["wf.yaml:8:5: steps[1].needs: dependency cycle: b → c → a → b"]


@pytest.mark.parametrize("bad_id", ["1abc", "a b", "-a", "a.b", "a" * 64])
def test_bad_step_id(bad_id: str) -> None:
    text = HEADER + f"steps:\n  - id: '{bad_id}'\n    run: x\n"
    assert problems(text) == [
        f"wf.yaml:4:5: steps[0].id: '{bad_id}' is not allowed here: an id starts with a letter, "
        "then letters, digits, - or _ (at most 63)"
    ]


def test_bad_workflow_name() -> None:
    text = "version: 1\nname: my workflow\n" + ONE_STEP
    assert problems(text) == [
        "wf.yaml:2:1: name: 'my workflow' is not allowed here: an id starts with a letter, "
        "then letters, digits, - or _ (at most 63)"
    ]


def test_bad_input_name() -> None:
    text = HEADER + "inputs: {1x: 2}\n" + ONE_STEP
    assert problems(text) == [
        "wf.yaml:3:10: inputs.1x: '1x' is not allowed here: use letters, digits and _ only, "
        "not starting with a digit"
    ]


# --- durations and types ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5 minutes", "expected a duration like 90s, 15m or 2h, got '5 minutes'"),
        ("-1", "a duration cannot be negative, got -1"),
        ("true", "expected a duration like 90s, 15m or 2h, got True"),
        ("'10'", "expected a duration like 90s, 15m or 2h, got '10'"),
        ("5x", "expected a duration like 90s, 15m or 2h, got '5x'"),
    ],
)
def test_bad_step_timeout(value: str, message: str) -> None:
    text = HEADER + f"steps:\n  - id: a\n    run: x\n    timeout: {value}\n"
    assert problems(text) == [f"wf.yaml:6:5: steps[0].timeout: {message}"]


def test_bad_duration_in_defaults() -> None:
    text = HEADER + "defaults:\n  timeout: soon\n" + ONE_STEP
    assert problems(text) == [
        "wf.yaml:4:3: defaults.timeout: expected a duration like 90s, 15m or 2h, got 'soon'"
    ]


@pytest.mark.parametrize(("value", "seconds"), [("90s", 90.0), ("1h30m", 5400.0), ("45s", 45.0)])
def test_good_durations_are_seconds(value: str, seconds: float) -> None:
    text = HEADER + f"steps:\n  - id: a\n    run: x\n    timeout: {value}\n"
    assert parse_workflow(text, "wf.yaml").steps[0].timeout == seconds


def test_max_parallel_must_be_an_integer() -> None:
    text = HEADER + "max_parallel: x\n" + ONE_STEP
    assert problems(text) == [
        "wf.yaml:3:1: max_parallel: input should be a valid integer, "
        "unable to parse string as an integer"
    ]


def test_max_parallel_must_be_positive() -> None:
    text = HEADER + "max_parallel: 0\n" + ONE_STEP
    assert problems(text) == [
        "wf.yaml:3:1: max_parallel: input should be greater than or equal to 1"
    ]


def test_steps_as_a_mapping_instead_of_a_list() -> None:
    text = HEADER + "steps:\n  a:\n    run: x\n"
    assert problems(text) == [
        "wf.yaml:3:1: steps: input should be a valid list, got {'a': {'run': 'x'}}"
    ]


def test_steps_empty_list() -> None:
    assert problems(HEADER + "steps: []\n") == [
        "wf.yaml:3:1: steps: a workflow needs at least one step"
    ]


def test_workflow_env_value_that_is_a_list() -> None:
    text = HEADER + "env:\n  A: [1, 2]\n" + ONE_STEP
    assert problems(text) == ["wf.yaml:4:3: env.A: input should be a valid string, got [1, 2]"]


def test_step_env_value_that_is_a_list() -> None:
    text = HEADER + "steps:\n  - id: a\n    run: x\n    env:\n      A: [1]\n"
    assert problems(text) == [
        "wf.yaml:7:7: steps[0].env.A: input should be a valid string, got [1]"
    ]


def test_env_numbers_and_booleans_become_strings() -> None:
    text = HEADER + "env: {A: 1, B: true}\n" + ONE_STEP
    assert parse_workflow(text, "wf.yaml").env == {"A": "1", "B": "true"}


def test_missing_required_top_level_keys() -> None:
    assert problems("name: t\n" + ONE_STEP) == ["wf.yaml:1:1: missing required key 'version'"]


def test_version_2_is_refused() -> None:
    text = "version: 2\nname: t\n" + ONE_STEP
    assert problems(text) == ["wf.yaml:1:1: version: 2 is not allowed: input should be 1"]


def test_backend_typo_suggests_docker() -> None:
    text = HEADER + "sandbox:\n  backend: dockr\n" + ONE_STEP
    assert problems(text) == [
        "wf.yaml:4:3: sandbox.backend: 'dockr' is not allowed: input should be 'auto', "
        "'docker', 'local' or 'slurm' (did you mean 'docker'?)"
    ]


def test_on_failure_typo_suggests_abort() -> None:
    text = HEADER + "steps:\n  - id: a\n    run: x\n    on_failure: abrot\n"
    assert problems(text) == [
        "wf.yaml:6:5: steps[0].on_failure: 'abrot' is not allowed: input should be 'abort', "
        "'continue' or 'diagnose' (did you mean 'abort'?)"
    ]


# --- YAML itself ------------------------------------------------------------------------------


def test_yaml_syntax_error_has_its_line() -> None:
    text = HEADER + "steps:\n  - id: a\n   run: x\n"
    assert problems(text) == [
        "wf.yaml:5:4: YAML syntax error: while parsing a block collection expected "
        "<block end>, but found '<block mapping start>'"
    ]


def test_unclosed_flow_sequence_is_a_syntax_error() -> None:
    text = HEADER + "steps:\n  - id: a\n    run: [x\n"
    (found,) = problems(text)
    assert found.startswith("wf.yaml:6:1: YAML syntax error: ")


def test_tab_indentation_is_a_syntax_error() -> None:
    text = HEADER + "steps:\n\t- id: a\n"
    (found,) = problems(text)
    assert found.startswith("wf.yaml:4:1: YAML syntax error: ")
    assert "'\\t'" in found


def test_second_yaml_document_is_refused() -> None:
    text = HEADER + ONE_STEP + "---\nfoo: 1\n"
    assert problems(text) == [
        "wf.yaml:6:1: YAML syntax error: expected a single document in the stream "
        "but found another document"
    ]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(text: str) -> None:
    assert problems(text) == [
        "wf.yaml:1:1: the file is empty: a workflow needs at least `version: 1`, `name` and `steps`"
    ]


@pytest.mark.parametrize("text", ["- a\n- b\n", "hello\n", "42\n", "\n\n[1, 2]\n"])
def test_file_that_is_not_a_mapping(text: str) -> None:
    line = text.count("\n", 0, len(text) - len(text.lstrip("\n"))) + 1
    assert problems(text) == [
        f"wf.yaml:{line}:1: a workflow file must be a mapping of keys (version, name, steps, …)"
    ]


def test_document_with_only_a_start_marker_is_refused() -> None:
    assert problems("---\n") == [
        "wf.yaml:1:1: the file is empty: a workflow needs at least `version: 1`, `name` and `steps`"
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{type: integer, default: abc}", "default 'abc' is not of type integer"),
        ("{type: number, default: true}", "default True is not of type number"),
        ("{type: boolean, default: 3}", "default 3 is not of type boolean"),
    ],
)
def test_input_default_must_match_its_type(spec: str, message: str) -> None:
    text = HEADER + f"inputs:\n  n: {spec}\n" + ONE_STEP
    column = len("  n: ") + spec.index("default") + 1  # the `default` key
    assert problems(text) == [f"wf.yaml:4:{column}: inputs.n.default: {message}"]


def test_workflow_env_cannot_read_step_outputs(tmp_path: Path) -> None:
    text = HEADER + "env: {X: '${{ steps.a.outputs.y }}'}\n" + ONE_STEP
    found = problems(text)
    assert len(found) >= 1
    assert any("the workflow's env cannot read step outputs" in p for p in found)


def test_duplicate_top_level_key() -> None:
    text = HEADER + "name: u\n" + ONE_STEP
    assert problems(text) == ["wf.yaml:3:1: duplicate key 'name'"]


def test_duplicate_step_key() -> None:
    text = HEADER + "steps:\n  - id: a\n    run: x\n    run: y\n"
    assert problems(text) == ["wf.yaml:6:5: duplicate key 'run'"]


def test_every_duplicate_key_is_reported() -> None:
    text = HEADER + "name: u\nsteps:\n  - id: a\n    id: b\n    run: x\n"
    assert problems(text) == [
        "wf.yaml:3:1: duplicate key 'name'",
        "wf.yaml:6:5: duplicate key 'id'",
    ]


def test_key_that_is_not_a_word() -> None:
    text = HEADER + "? [a, b]\n: 1\n" + ONE_STEP
    assert problems(text) == ["wf.yaml:3:3: a key must be a plain word"]


# --- ${{ }} expressions -----------------------------------------------------------------------


def test_unknown_expression_form() -> None:
    text = HEADER + "steps:\n  - id: a\n    run: echo ${{ foo.bar }}\n"
    assert problems(text) == [
        "wf.yaml:5:5: steps[0].run: unknown expression '${{ foo.bar }}': "
        "use inputs.NAME, env.NAME, run.id, steps.ID.outputs.NAME or ports.NAME"
    ]


def test_unknown_expression_in_workflow_env() -> None:
    text = HEADER + "env: {A: '${{ secrets.X }}'}\n" + ONE_STEP
    assert problems(text) == [
        "wf.yaml:3:7: env.A: unknown expression '${{ secrets.X }}': "
        "use inputs.NAME, env.NAME, run.id, steps.ID.outputs.NAME or ports.NAME"
    ]


def test_unknown_input_when_none_declared() -> None:
    text = HEADER + "steps:\n  - id: a\n    run: echo ${{ inputs.missing }}\n"
    assert problems(text) == [
        "wf.yaml:5:5: steps[0].run: unknown input 'missing' (inputs: none are declared)"
    ]


def test_unknown_input_lists_the_declared_ones() -> None:
    text = HEADER + "inputs: {n: 1, m: 2}\nsteps:\n  - id: a\n    task: use ${{ inputs.missing }}\n"
    assert problems(text) == ["wf.yaml:6:5: steps[0].task: unknown input 'missing' (inputs: n, m)"]


def test_step_output_reference_to_unknown_step() -> None:
    text = HEADER + "steps:\n  - id: b\n    run: echo ${{ steps.x.outputs.y }}\n"
    assert problems(text) == ["wf.yaml:5:5: steps[0].run: unknown step 'x' in ${{ steps.x... }}"]


def test_step_output_reference_to_a_step_not_in_needs() -> None:
    text = HEADER + dedent(
        """
        steps:
          - id: x
            run: echo 1 > y.txt
            outputs: {y: {file: y.txt}}
          - id: b
            run: echo ${{ steps.x.outputs.y }}
        """
    )
    assert problems(text) == [
        "wf.yaml:8:5: steps[1].run: step 'b' reads an output of 'x' but does not need it: "
        "add it to needs",
    ]


def test_step_output_reference_to_an_undeclared_output() -> None:
    text = HEADER + dedent(
        """
        steps:
          - id: x
            run: echo
          - id: b
            needs: [x]
            run: echo ${{ steps.x.outputs.y }}
        """
    )
    assert problems(text) == [
        "wf.yaml:8:5: steps[1].run: step 'x' declares no output 'y' (add it to outputs)"
    ]


def test_known_expressions_are_accepted() -> None:
    text = HEADER + dedent(
        """
        inputs: {n: 1}
        env: {A: '${{ inputs.n }}'}
        steps:
          - id: a
            run: echo ${{ inputs.n }} ${{ env.HOME }} ${{ run.id }} ${{inputs.n}}
        """
    )
    assert parse_workflow(text, "wf.yaml").steps[0].id == "a"


# --- inputs and docs --------------------------------------------------------------------------


def test_input_default_not_among_choices() -> None:
    text = HEADER + "inputs:\n  mode: {default: c, choices: [a, b]}\n" + ONE_STEP
    assert problems(text) == [
        "wf.yaml:4:10: inputs.mode.default: default 'c' is not one of the choices ['a', 'b']"
    ]


def test_input_type_typo_suggests_integer() -> None:
    text = HEADER + "inputs:\n  n: {type: int}\n" + ONE_STEP
    assert problems(text) == [
        "wf.yaml:4:7: inputs.n.type: 'int' is not allowed: input should be 'string', "
        "'integer', 'number' or 'boolean' (did you mean 'integer'?)"
    ]


def test_missing_runbook_in_docs(tmp_path: Path) -> None:
    text = HEADER + "docs: [runbooks/nope.md]\n" + ONE_STEP
    assert problems(text, tmp_path=tmp_path) == [
        f"{tmp_path / 'wf.yaml'}:3:8: docs[0]: runbook 'runbooks/nope.md' not found next to "
        "the workflow"
    ]


def test_existing_runbook_in_docs_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "runbooks").mkdir()
    (tmp_path / "runbooks" / "ok.md").write_text("# ok\n", encoding="utf-8")
    (tmp_path / "wf.yaml").write_text(HEADER + "docs: [runbooks/ok.md]\n" + ONE_STEP)
    assert load_workflow(tmp_path / "wf.yaml").workflow.docs == ["runbooks/ok.md"]


def test_docs_are_not_checked_without_a_base_dir() -> None:
    text = HEADER + "docs: [runbooks/nope.md]\n" + ONE_STEP
    assert parse_workflow(text, "wf.yaml").docs == ["runbooks/nope.md"]


def test_a_service_with_a_probe_is_accepted() -> None:
    extra = "    service: true\n    ready: {http: 'http://127.0.0.1:8000/health', timeout: 1m}\n"
    wf = parse_workflow(HEADER + ONE_STEP + extra, "wf.yaml")
    assert wf.steps[0].ready is not None
    assert wf.steps[0].ready.timeout == 60


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "    expect: {progress: '(a'}\n",
            "wf.yaml:6:5: steps[0].expect: invalid regular expression '(a': "
            "missing ), unterminated subpattern at position 0",
        ),
        (
            "    expect: {progress: 'no groups'}\n",
            "wf.yaml:6:5: steps[0].expect: progress: give two groups (done, total) "
            "or one (a percentage)",
        ),
        (
            "    outputs: {x: {log: 'no group'}}\n",
            "wf.yaml:6:15: steps[0].outputs.x: log: the value is the first group: "
            "put one in the pattern",
        ),
        (
            "    service: true\n    ready: {tcp: 'localhost'}\n",
            "wf.yaml:7:5: steps[0].ready: tcp: expected host:port, got 'localhost'",
        ),
        (
            "    recover: [{match: '[', action: retry}]\n",
            "wf.yaml:6:15: steps[0].recover[0]: invalid regular expression '[': "
            "unterminated character set at position 0",
        ),
    ],
)
def test_bad_patterns_are_located(extra: str, expected: str) -> None:
    assert problems(HEADER + ONE_STEP + extra) == [expected]


def test_ready_without_service_says_to_add_it() -> None:
    extra = "    ready: {http: 'http://127.0.0.1:8000/health'}\n"
    assert problems(HEADER + ONE_STEP + extra) == [
        "wf.yaml:4:5: steps[0]: `ready` is for services: add `service: true`"
    ]


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        pytest.param(
            "matrix: {n: [1, 2]}\n",
            "wf.yaml:3:10: matrix.n: the matrix names 'n', which is no input "
            "(inputs: none are declared)",
            id="matrix-input",
        ),
        pytest.param(
            "inputs: {n: 1}\nmatrix: {n: [], include: [{m: 2}]}\n",
            "wf.yaml:4:10: matrix.n: 'n' has no values to sweep over",
            id="matrix-empty",
        ),
        pytest.param(
            "objective: {metric: speedup}\n",
            "wf.yaml:3:13: objective.metric: no step has an output 'speedup' to rank runs by "
            "(outputs: none)",
            id="objective",
        ),
        pytest.param(
            "sandbox: {backend: slurm, build: {context: .}}\n",
            "wf.yaml:3:1: sandbox: the slurm backend cannot build an image: build and push it, "
            "then name it in `image`",
            id="slurm-build",
        ),
        pytest.param(
            "sandbox: {backend: slurm, resources: {gpus: all}}\n",
            "wf.yaml:3:39: sandbox.resources.gpus: `gpus: all` has no meaning on a cluster: "
            "give a count",
            id="slurm-gpus-all",
        ),
        pytest.param(
            "sandbox: {backend: docker, image: x, slurm: {partition: gpu}}\n",
            "wf.yaml:3:38: sandbox.slurm: `slurm` applies only with `backend: slurm`",
            id="slurm-block-elsewhere",
        ),
    ],
)
def test_sweep_and_cluster_keys_are_checked(block: str, expected: str) -> None:
    problems_found = problems(HEADER + block + ONE_STEP)
    assert expected in problems_found, problems_found


def test_per_step_limits_need_the_slurm_sandbox() -> None:
    extra = "    resources: {memory: 4g}\n"
    assert problems(HEADER + ONE_STEP + extra) == [
        "wf.yaml:6:17: steps[0].resources.memory: a step's `memory` needs "
        "`sandbox.backend: slurm` (a job per step); for docker, set sandbox.resources"
    ]
    # GPUs and CPUs are drawn from the machine's pool (agentflow.pool) on any sandbox.
    pooled = parse_workflow(HEADER + ONE_STEP + "    resources: {gpus: 1, cpus: 2}\n", "wf.yaml")
    assert pooled.steps[0].resources is not None
    assert pooled.steps[0].resources.gpus == 1


@pytest.mark.parametrize(
    "block",
    [
        "sandbox: {backend: local}\n",
        "sandbox: {backend: auto, network: none, workdir: /workspace}\n",  # defaults, written out
        "planner: {type: static, max_tokens: 4096}\n",
        "planner: {type: static}\n",
        "defaults: {on_failure: abort, timeout: 1h}\n",
        "secrets: []\n",
        "secrets: [HF_TOKEN]\n",
        "sandbox: {backend: docker, image: x:1, network: bridge, workdir: /w}\n",
        "sandbox: {build: {context: ., args: {BASE: x}}, resources: {cpus: 1, gpus: all}}\n",
        "sandbox: {image: x, mounts: [{source: ./data, target: /data, read_only: true}]}\n",
        "max_parallel_runs: 2\n",
        "sandbox: {backend: slurm, slurm: {partition: gpu, time: 2h, options: [--exclusive]}}\n",
        "sandbox: {backend: slurm, image: x, slurm: {container: {runtime: pyxis}}}\n",
    ],
)
def test_supported_settings_are_accepted(block: str) -> None:
    """Docker sandbox settings and secrets are acted on since the docker sandbox landed."""
    assert isinstance(parse_workflow(HEADER + block + ONE_STEP, "wf.yaml"), Workflow)


# --- several problems at once -----------------------------------------------------------------


def test_several_schema_problems_are_all_reported_sorted_by_line() -> None:
    # The steps come first in the file, max_parallel last: the report follows the file.
    text = dedent(
        """
        steps:
          - id: a
            rnu: x
          - id: B c
            run: y
        version: 1
        name: t
        max_parallel: x
        """
    )
    assert problems(text) == [
        "wf.yaml:3:5: steps[0]: unknown key 'rnu' (did you mean 'run'?)",
        "wf.yaml:4:5: steps[1].id: 'B c' is not allowed here: an id starts with a letter, "
        "then letters, digits, - or _ (at most 63)",
        "wf.yaml:8:1: max_parallel: input should be a valid integer, "
        "unable to parse string as an integer",
    ]


def test_semantic_and_not_supported_problems_are_reported_together_by_line() -> None:
    text = HEADER + dedent(
        """
        steps:
          - id: a
            needs: [zz]
            run: x
          - id: b
            run: ${{ nope }}
            service: true
          - id: a
            run: y
        """
    )
    found = problems(text)
    assert found == [
        "wf.yaml:5:13: steps[0].needs[0]: unknown step 'zz'; steps are: a, b",
        "wf.yaml:8:5: steps[1].run: unknown expression '${{ nope }}': "
        "use inputs.NAME, env.NAME, run.id, steps.ID.outputs.NAME or ports.NAME",
        "wf.yaml:10:5: steps[2].id: duplicate step id 'a' (first used by steps[0])",
    ]


# --- files on disk ----------------------------------------------------------------------------


def test_missing_file() -> None:
    with pytest.raises(WorkflowError) as info:
        load_workflow("definitely/not/here.yaml")
    assert [str(p) for p in info.value.problems] == ["definitely/not/here.yaml: no such file"]


def test_folder_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(WorkflowError) as info:
        load_workflow(tmp_path)
    assert [str(p) for p in info.value.problems] == [f"{tmp_path}: is a folder, not a file"]


def test_binary_file(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_bytes(b"version: 1\n\xff\xfe\n")
    with pytest.raises(WorkflowError) as info:
        load_workflow(tmp_path / "wf.yaml")
    assert [str(p) for p in info.value.problems] == [
        f"{tmp_path / 'wf.yaml'}: not UTF-8 text (byte 11): is this a workflow file?"
    ]


def test_load_workflow_keeps_text_and_absolute_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("wf.yaml").write_text(HEADER + ONE_STEP, encoding="utf-8")
    wf = load_workflow("wf.yaml")
    assert wf.path == tmp_path.resolve() / "wf.yaml"
    assert wf.text == HEADER + ONE_STEP
    assert wf.base_dir == tmp_path.resolve()


# --- bugs in src: expected behaviour, failing today ------------------------------------------


def test_retry_on_key_as_written_in_the_design_is_accepted() -> None:
    text = HEADER + ONE_STEP + "    retry: {limit: 2, on: [crashed, timeout]}\n"
    retry = parse_workflow(text, "wf.yaml").steps[0].retry
    assert retry is not None
    assert retry.on == ["crashed", "timeout"]


CRASHERS = {
    "custom-tag": HEADER + "steps:\n  - id: a\n    run: !foo x\n",
    "python-tag": HEADER + "steps:\n  - id: a\n    run: !!python/object:os.system x\n",
    "merge-key": HEADER + "steps:\n  - &s {id: a, run: x}\n  - <<: *s\n    id: b\n",
    "value-equals": HEADER + "steps:\n  - id: a\n    run: =\n",
    "bad-binary-int": HEADER + "max_parallel: 0b_\n" + ONE_STEP,
    "bad-hex-int": HEADER + "max_parallel: 0x_\n" + ONE_STEP,
    "bad-explicit-int": HEADER + "max_parallel: !!int abc\n" + ONE_STEP,
    "recursive-alias": HEADER + "env: &x [*x]\n" + ONE_STEP,
}


@pytest.mark.parametrize("text", CRASHERS.values(), ids=CRASHERS.keys())
def test_yaml_constructs_the_loader_cannot_build_are_workflow_errors(text: str) -> None:
    found = problems(text)
    assert all(f.startswith("wf.yaml:") for f in found)


@pytest.mark.parametrize(
    "text",
    [
        HEADER + "steps:\n  - id: a\n    run: x\x01\n",
        HEADER + 'steps:\n  - id: a\n    run: x\n    "q\\nz": 1\n',
    ],
    ids=["control-character", "key-with-newline"],
)
def test_every_problem_is_located_and_on_one_line(text: str) -> None:
    with pytest.raises(WorkflowError) as info:
        parse_workflow(text, "wf.yaml")
    for p in info.value.problems:
        assert p.line is not None
        assert p.column is not None
        assert "\n" not in str(p)


# --- the command line -------------------------------------------------------------------------


def agentflow(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Narrow output (40 columns), so that a message wrapped over lines would show."""
    return run_console_script(*args, cwd=cwd, columns=40)


def test_console_script_exists() -> None:
    assert AGENTFLOW.is_file()


def test_cli_validate_bad_file_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    # Long messages (the list of known keys) must not be wrapped even in a narrow terminal.
    text = HEADER + "max_parallel: x\nsteps:\n  - id: a\n    run: x\n    qqqq: 1\n"
    (tmp_path / "bad.yaml").write_text(text, encoding="utf-8")
    result = agentflow("validate", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: bad.yaml:3:1: max_parallel: input should be a valid integer, "
        "unable to parse string as an integer",
        "error: bad.yaml:7:5: steps[0]: unknown key 'qqqq'; known keys: artifacts, cache, "
        "description, env, expect, id, needs, on_failure, outputs, ports, ready, recover, "
        "resources, retry, run, service, stall_timeout, success, task, timeout, workdir",
    ]
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_validate_yaml_syntax_error_exits_2(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(HEADER + "steps:\n  - id: a\n   run: x\n")
    result = agentflow("validate", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: bad.yaml:5:4: YAML syntax error: ")
    assert "Traceback" not in result.stderr


def test_cli_validate_valid_file_exits_0(tmp_path: Path) -> None:
    (tmp_path / "ok.yaml").write_text(HEADER + ONE_STEP, encoding="utf-8")
    result = agentflow("validate", "ok.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "valid workflow 't', 1 step" in result.stdout
    assert result.stderr == ""


def test_cli_validate_has_no_side_effects(tmp_path: Path) -> None:
    (tmp_path / "ok.yaml").write_text(HEADER + ONE_STEP, encoding="utf-8")
    agentflow("validate", "ok.yaml", cwd=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.yaml"]


def test_cli_validate_missing_file_exits_2(tmp_path: Path) -> None:
    result = agentflow("validate", "nope.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: nope.yaml: no such file"]
    assert "Traceback" not in result.stderr


def test_cli_validate_yaml_tag_exits_2_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(CRASHERS["custom-tag"], encoding="utf-8")
    result = agentflow("validate", "bad.yaml", cwd=tmp_path)
    assert "Traceback" not in result.stderr
    assert result.returncode == 2


def test_cli_schema_is_json_with_steps_and_closed_steps(tmp_path: Path) -> None:
    result = agentflow("schema", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert "steps" in schema["properties"]
    assert schema["properties"]["steps"]["items"] == {"$ref": "#/$defs/Step"}
    assert schema["$defs"]["Step"]["additionalProperties"] is False
    assert schema["additionalProperties"] is False


# --- the examples -----------------------------------------------------------------------------


def test_there_are_example_workflows() -> None:
    assert EXAMPLES, f"no workflows/*.yaml under {ROOT}"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_workflow_validates(path: Path) -> None:
    wf = load_workflow(path)
    assert wf.workflow.steps


# --- fuzzing: nothing but WorkflowError escapes -----------------------------------------------

# The random text includes YAML's sharp edges: tags `!`, anchors and aliases `&` `*`,
# merge keys `<<`, `=`, digits and `_` (bad ints), and a control character.
YAMLISH = st.text(
    alphabet=st.sampled_from(list("abcdeinprstuvy :-\n\t  []{},#'\"|>?$.%!&*<=_0123456789\x01")),
    max_size=120,
)
KEYS = st.sampled_from(
    [
        "version",
        "name",
        "steps",
        "id",
        "run",
        "task",
        "needs",
        "env",
        "inputs",
        "timeout",
        "retry",
        "limit",
        "backoff",
        "initial",
        "on",
        "sandbox",
        "backend",
        "default",
        "choices",
        "type",
        "docs",
        "service",
        "ready",
        "http",
        "planner",
        "defaults",
        "stpes",
        "x",
    ]
)
SCALARS = st.one_of(
    st.sampled_from(
        ["a", "b", "5m", "90s", "-1s", "docker", "dockr", "static", "anthropic", "integer"]
    ),
    st.sampled_from(
        ["${{ inputs.a }}", "${{ nope }}", "${{ steps.a.outputs.o }}", "${{ run.id }}"]
    ),
    st.just(""),
    st.integers(-3, 5),
    st.booleans(),
    st.none(),
    st.text(alphabet="abz-_ ${}.", max_size=10),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=8,
)
STEP_IDS = st.sampled_from(["a", "b", "c", "1x", "z"])
STEPS = st.lists(
    st.fixed_dictionaries(
        {"id": STEP_IDS},
        optional={
            "run": st.sampled_from(["echo hi", "echo ${{ inputs.a }}", "echo ${{ x }}"]),
            "needs": st.lists(STEP_IDS, max_size=2) | STEP_IDS,
            "timeout": VALUES,
            "retry": VALUES,
            "task": SCALARS,
        },
    ).flatmap(lambda step: st.dictionaries(KEYS, VALUES, max_size=2).map(lambda e: step | e)),
    max_size=4,
)


@st.composite
def structured_yaml(draw: st.DrawFn) -> str:
    """Well-formed YAML shaped like a workflow, with random keys and values inside."""
    doc = draw(st.dictionaries(KEYS, VALUES, max_size=3))
    doc |= {"version": draw(st.sampled_from([1, 1, 1, 2])), "name": "t", "steps": draw(STEPS)}
    return yaml.safe_dump(doc, sort_keys=False)


def assert_only_workflow_errors(text: str) -> None:
    """``parse_workflow`` returns a Workflow or raises a WorkflowError with problems."""
    error: WorkflowError | None = None
    try:
        result = parse_workflow(text, "fuzz.yaml")
    except WorkflowError as e:
        error = e
    if error is None:
        assert isinstance(result, Workflow)
        return
    assert error.problems
    for p in error.problems:
        assert p.message
        assert str(p).startswith("fuzz.yaml")


FUZZ = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@FUZZ
@given(YAMLISH)
def test_fuzz_random_yamlish_text(text: str) -> None:
    assert_only_workflow_errors(text)


@FUZZ
@given(structured_yaml())
def test_fuzz_random_workflow_shaped_text(text: str) -> None:
    assert_only_workflow_errors(text)


HELLO = (ROOT / "workflows" / "hello.yaml").read_text(encoding="utf-8")


@st.composite
def mutated_hello(draw: st.DrawFn) -> str:
    text = HELLO
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["delete", "duplicate", "swap"]))
        lines = text.splitlines(keepends=True)
        if kind in {"delete", "duplicate"} and lines:
            i = draw(st.integers(0, len(lines) - 1))
            lines[i : i + 1] = [] if kind == "delete" else [lines[i], lines[i]]
            text = "".join(lines)
        elif len(text) >= 2:
            i = draw(st.integers(0, len(text) - 1))
            j = draw(st.integers(0, len(text) - 1))
            chars = list(text)
            chars[i], chars[j] = chars[j], chars[i]
            text = "".join(chars)
    return text


def test_hello_itself_parses() -> None:
    assert parse_workflow(HELLO, "hello.yaml").name == "hello"


@FUZZ
@given(mutated_hello())
def test_fuzz_mutations_of_hello(text: str) -> None:
    assert_only_workflow_errors(text)


@pytest.mark.parametrize("value", ["2024-13-01", "2024-01-01", "!!timestamp nope"])
def test_dates_and_timestamps_stay_text(value: str) -> None:
    wf = parse_workflow(HEADER + f"description: {value}\n" + ONE_STEP, "wf.yaml")
    assert wf.description == value.removeprefix("!!timestamp ")


def test_a_secret_cannot_be_substituted_into_a_command() -> None:
    text = HEADER + "secrets: [TOKEN]\nsteps:\n  - id: a\n    run: curl -H ${{ env.TOKEN }} x\n"
    assert problems(text) == [
        "wf.yaml:6:5: steps[0].run: ${{ env.TOKEN }} would write the secret TOKEN into files: "
        "use $TOKEN (the step's environment has it)"
    ]
