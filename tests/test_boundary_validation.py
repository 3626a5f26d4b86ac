"""Inputs at the edge of the sandbox boundary (issue 14, items 8, 9 and 12): durations and
numbers that are NaN, infinite or huge; hostile YAML (alias bombs, deep nesting); and
checkpoints of odd but valid shapes. Each is a one-line error, or a damaged checkpoint
that ``resume`` rebuilds, never a traceback."""

from __future__ import annotations

import json
import re
import resource
import subprocess

import pytest

from agentflow.errors import WorkflowError
from agentflow.workflow import parse_workflow
from fake_anthropic import FakeAnthropic, Reply

from conftest import AGENTFLOW, Env

HEADER = "version: 1\nname: t\n"


def problems(text: str) -> list[str]:
    with pytest.raises(WorkflowError) as info:
        parse_workflow(text, "wf.yaml")
    return [str(p) for p in info.value.problems]


def one_line_error(res: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The CLI's error: exit ``code``, one line on stderr, no traceback."""
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr[-2000:])
    assert "Traceback" not in res.stdout + res.stderr, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr[-2000:]
    assert lines[0].startswith("error: "), res.stderr[-2000:]
    return lines[0]


# --- item 8: durations and numbers ------------------------------------------------------------

STEP = "steps:\n  - id: a\n    run: x\n"
DURATION_PLACES = {
    # where: the workflow, with {d} for the duration
    "steps[0].timeout": STEP + "    timeout: {d}\n",
    "steps[0].stall_timeout": STEP + "    stall_timeout: {d}\n",
    "steps[0].expect.duration": STEP + "    expect: {{duration: {d}}}\n",
    "steps[0].retry.backoff.initial": STEP + "    retry: {{limit: 1, backoff: {{initial: {d}}}}}\n",
    "steps[0].retry.backoff.max": STEP + "    retry: {{backoff: {{max: {d}}}}}\n",
    "steps[0].ready.timeout": STEP + "    service: true\n    ready: {{log: up, timeout: {d}}}\n",
    "steps[0].ready.interval": STEP + "    service: true\n    ready: {{log: up, interval: {d}}}\n",
    "steps[0].recover[0].wait": STEP + "    recover: [{{match: x, action: retry, wait: {d}}}]\n",
    "defaults.timeout": "defaults: {{timeout: {d}}}\n" + STEP,
    "defaults.stall_timeout": "defaults: {{stall_timeout: {d}}}\n" + STEP,
    "sandbox.slurm.time": "sandbox: {{backend: slurm, slurm: {{time: {d}}}}}\n" + STEP,
}


def position(text: str, key: str) -> str:
    """``LINE:COL`` of the last ``key:`` in ``text`` (where the loader points)."""
    i = [m.start() for m in re.finditer(rf"(?<![\w-]){key}:", text)][-1]
    return f"{text.count(chr(10), 0, i) + 1}:{i - text.rfind(chr(10), 0, i)}"


TOO_LONG = "a duration can be at most 365d (a year)"
BAD_DURATIONS = {
    ".nan": "expected a duration like 90s, 15m or 2h, got nan",
    ".inf": f"{TOO_LONG}, got inf",
    "99999999999d": f"{TOO_LONG}, got '99999999999d'",
    "366d": f"{TOO_LONG}, got '366d'",
    "1" + "0" * 400: f"{TOO_LONG}, got 1000000000000000000000000000000000000...",
}


@pytest.mark.parametrize("value", list(BAD_DURATIONS))
@pytest.mark.parametrize("where", list(DURATION_PLACES))
def test_a_nan_infinite_or_huge_duration_is_one_located_error(where: str, value: str) -> None:
    text = HEADER + DURATION_PLACES[where].format(d=value)
    at = position(text, where.rsplit(".", 1)[-1])
    assert problems(text) == [f"wf.yaml:{at}: {where}: {BAD_DURATIONS[value]}"]
    parse_workflow(HEADER + DURATION_PLACES[where].format(d="365d"), "wf.yaml")  # a year: fine


NUMBERS = {
    # a NaN bound makes a check that never fails; inf and huge ones overflow
    "    success: {metrics: {m: {file: r.json, key: x, min: .nan}}}\n": (
        "wf.yaml:6:51: steps[0].success.metrics.m.min: input should be a finite number, got nan"
    ),
    "    success: {metrics: {m: {file: r.json, key: x, max: -.inf}}}\n": (
        "wf.yaml:6:51: steps[0].success.metrics.m.max: input should be a finite number, got -inf"
    ),
    "    retry: {limit: 3, backoff: {factor: .inf}}\n": (
        "wf.yaml:6:33: steps[0].retry.backoff.factor: input should be a finite number, got inf"
    ),
    "    retry: {limit: 3, backoff: {factor: 1e300}}\n": (
        "wf.yaml:6:33: steps[0].retry.backoff.factor: input should be less than or equal to 10"
    ),
    "    retry: {limit: 5000}\n": (
        "wf.yaml:6:13: steps[0].retry.limit: input should be less than or equal to 100"
    ),
}


@pytest.mark.parametrize("step_keys", list(NUMBERS))
def test_nan_infinite_and_overflowing_numbers_are_refused(step_keys: str) -> None:
    assert problems(HEADER + STEP + step_keys) == [NUMBERS[step_keys]]


def test_nan_input_cpus_and_memory_are_one_error_each() -> None:
    text = HEADER + (
        "inputs: {x: .nan}\nsandbox: {resources: {cpus: .inf, memory: " + "9" * 400 + "g}}\n" + STEP
    )
    assert problems(text) == [
        "wf.yaml:3:10: inputs.x.default: input should be a finite number, got nan",
        "wf.yaml:4:23: sandbox.resources.cpus: input should be a finite number, got inf",
        "wf.yaml:4:35: sandbox.resources.memory: '999999999999999999999999999999999999... "
        "is larger than any machine's memory (at most 1024t)",
    ]


def test_a_nan_timeout_stops_run_before_anything_starts(af: Env) -> None:
    """It used to pass validation and then stop the orchestrator with a traceback, the
    step running on orphaned."""
    wf = af.write(HEADER + "sandbox: {backend: local}\n" + STEP + "    timeout: .nan\n")
    line = one_line_error(af.cli("run", str(wf), "--ci"))
    assert line == (
        f"error: {wf}:7:5: steps[0].timeout: expected a duration like 90s, 15m or 2h, got nan"
    )
    assert not (af.home / "runs").exists() or not any((af.home / "runs").iterdir())


def test_a_saved_plan_with_an_infinite_duration_is_refused(af: Env) -> None:
    wf = af.write(HEADER + "sandbox: {backend: local}\n" + STEP)
    plan = {"workflow": "t", "planner": "static", "inputs": {}, "steps": []}
    plan["steps"] = [{"id": "a", "run": "x", "duration": 1e999}]
    (af.workspace / "plan.json").write_text(json.dumps(plan))  # Infinity
    line = one_line_error(af.cli("run", str(wf), "--plan", "plan.json", "--ci"))
    assert "plan.json: not a valid plan (steps.0.duration" in line, line


# --- item 9: hostile YAML ---------------------------------------------------------------------


def _limit_memory() -> None:
    # Without the limits, the alias bomb below takes gigabytes: fail fast instead.
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def test_an_alias_bomb_is_refused_before_it_is_expanded(af: Env) -> None:
    lines = [HEADER.strip(), "sandbox: {backend: local}", 'a: &a ["lol","lol","lol","lol"]']
    prev = "a"
    for name in "bcdefghijklmnop":  # 4^16 values once expanded
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 4)}]")
        prev = name
    wf = af.write("\n".join(lines) + "\n" + STEP)
    res = subprocess.run(
        [AGENTFLOW, "validate", str(wf)],
        cwd=af.workspace,
        env=af.env,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_limit_memory,
    )
    line = one_line_error(res)
    assert line == (
        f"error: {wf}:12:16: YAML: aliases (*name) expand the file by more than 1,000,000 "
        "characters: write the values out, or use fewer aliases"
    )


def test_aliases_are_limited_in_number() -> None:
    def with_aliases(n: int) -> str:
        choices = ", ".join(["*one"] * n)
        return HEADER + f"inputs: {{x: {{default: &one 1, choices: [{choices}]}}}}\n" + STEP

    parse_workflow(with_aliases(1000), "wf.yaml")  # anchors for shared values still work
    text = with_aliases(1001)
    col = [m.start() for m in re.finditer(r"\*one", text)][-1] - text.index("inputs") + 1
    assert problems(text) == [f"wf.yaml:3:{col}: YAML: more than 1000 aliases (*name)"]


def test_deep_nesting_is_one_error_not_a_recursion_error(af: Env) -> None:
    wf = af.write(HEADER + "x: " + "[" * 20_000 + "]" * 20_000 + "\n" + STEP)
    line = one_line_error(af.cli("validate", str(wf)))
    assert line == f"error: {wf}:3:67: YAML: values nested more than 64 levels deep"


def test_nesting_as_deep_as_a_workflow_needs_is_fine() -> None:
    def nested(depth: int) -> str:
        value = "[" * depth + "1" + "]" * depth
        return HEADER + f"inputs: {{x: 1}}\nmatrix: {{x: [{value}]}}\n" + STEP

    parse_workflow(nested(20), "wf.yaml")
    assert problems(nested(70)) == ["wf.yaml:4:75: YAML: values nested more than 64 levels deep"]


def test_a_model_answer_nested_too_deep_is_a_clear_error(af: Env) -> None:
    depth = 100_000
    plan = '{"steps": [{"id": "a", "run": "x", "notes": ' + "[" * depth + "]" * depth + "}]}"
    body = (
        '{"id": "m", "type": "message", "role": "assistant", "model": "m", "content": '
        '[{"type": "tool_use", "id": "t", "name": "submit_plan", "input": ' + plan + "}], "
        '"stop_reason": "tool_use", "stop_sequence": null, '
        '"usage": {"input_tokens": 1, "output_tokens": 1}}'
    )
    wf = af.write(
        HEADER + "planner: {type: anthropic, model: m}\nsandbox: {backend: local}\n"
        "steps:\n  - id: a\n    task: say hello\n"
    )
    with FakeAnthropic([Reply(raw=body.encode())]) as fake:
        af.env["ANTHROPIC_API_KEY"] = "test-key"
        af.env["ANTHROPIC_BASE_URL"] = fake.url
        line = one_line_error(af.cli("plan", str(wf)), code=1)
    assert line == (
        "error: the model's answer is nested too deeply to read: try again, or run a saved "
        "plan with --plan"
    )
