"""Inputs at the edge of the sandbox boundary (issue 14, items 8, 9 and 12): durations and
numbers that are NaN, infinite or huge; hostile YAML (alias bombs, deep nesting); and
checkpoints of odd but valid shapes. Each is a one-line error, or a damaged checkpoint
that ``resume`` rebuilds, never a traceback."""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agentflow.errors import WorkflowError
from agentflow.monitor import eta_seconds
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


# --- item 12: checkpoints of odd shapes -------------------------------------------------------

TWO_STEPS = HEADER + (
    "sandbox: {backend: local}\n"
    "steps:\n"
    "  - id: a\n    run: 'true'\n"
    "  - id: b\n    needs: [a]\n    run: exit 3\n"
)


@pytest.fixture
def two_runs(af: Env) -> Env:
    """Two failed runs, ``one`` and ``two``, in the test's home; 9 hours east of UTC, so
    that a time near the end of the calendar overflows when shown."""
    af.env["TZ"] = "Asia/Tokyo"
    wf = af.write(TWO_STEPS)
    for run_id in ("one", "two"):
        res = af.cli("run", str(wf), "--ci", "--run-id", run_id)
        assert res.returncode == 1, res.stdout + res.stderr
    return af


def test_a_checkpoint_without_the_plans_steps_is_damaged_and_resume_rebuilds_it(
    two_runs: Env,
) -> None:
    af = two_runs
    for name in ("state.json", "state.json.prev"):
        path = af.run_dir("one") / name
        path.write_text(json.dumps(json.loads(path.read_text()) | {"steps": {}}))
    line = one_line_error(af.cli("status", "one"), code=1)
    assert "state.json: damaged checkpoint (steps: 'a', 'b' of the plan missing); " in line
    assert "`agentflow resume one` rebuilds it from events.jsonl" in line
    res = af.cli("resume", "one", "--ci")
    assert res.returncode == 1, res.stdout + res.stderr  # b fails again
    assert "rebuilt from plan.json and" in res.stderr, res.stderr
    state = af.state("one")
    assert sorted(state["steps"]) == ["a", "b"]
    assert state["steps"]["a"]["status"] == "succeeded", "the events said so: not run again"
    assert state["steps"]["b"]["attempts"] == 2


ODD_TIMES = [
    "2026-01-02T03:04:05",  # no time zone
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59-23:59",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+23:59",
    "2026-01-02T03:04:05+14:00",
]
ODD_VALUES = st.one_of(
    st.sampled_from(ODD_TIMES),
    st.sampled_from([None, -1, 0, 2**70, -(2**70), "", "x", [], {}, True, 1e308]),
    st.floats(allow_nan=True, allow_infinity=True),
)
RUN_FIELDS = [
    "created_at", "updated_at", "finished_at", "status", "consecutive_failures",
    "tokens_used", "decisions", "run_id", "inputs", "message", "steps",
]  # fmt: skip
STEP_FIELDS = [
    "status", "attempts", "retries", "exit_code", "started_at", "finished_at", "kill_reason",
    "kill_sent_at", "not_before", "ready_at", "last_output_at", "output_bytes", "progress",
    "decisions", "rule_uses", "outputs", "window", "env_overrides",
]  # fmt: skip
STEP_IDS = st.sampled_from(["a", "b", "zzz"])
Mutation = tuple[Any, ...]
MUTATIONS = st.one_of(
    st.tuples(st.just("run"), st.sampled_from(RUN_FIELDS), ODD_VALUES),
    st.tuples(st.just("step"), STEP_IDS, st.sampled_from(STEP_FIELDS), ODD_VALUES),
    st.tuples(
        st.just("progress"), STEP_IDS, st.fixed_dictionaries(
            {"done": ODD_VALUES, "total": ODD_VALUES, "eta_s": ODD_VALUES}
        ),
    ),
    st.tuples(st.just("drop"), STEP_IDS),
)  # fmt: skip
ODD_EVENTS = st.lists(
    st.fixed_dictionaries(
        {"ts": st.sampled_from([*ODD_TIMES, "2026-06-01T00:00:00Z"]), "kind": st.sampled_from(
            ["step_started", "step_finished", "timeout", "service_ready", "outputs",
             "run_finished", "retry_scheduled", "x"]
        )},
        optional={
            "step": STEP_IDS, "attempt": st.sampled_from([-1, 0, 1, 9, 2**70]),
            "status": st.sampled_from(["succeeded", "failed", "running", "weird"]),
            "exit_code": st.sampled_from([0, 3, -(2**70)]), "message": st.just("a=1, b=2"),
        },
    ),
    max_size=3,
)  # fmt: skip


def _mutate(state: dict[str, Any], m: Mutation) -> None:
    steps = state["steps"]
    if m[0] == "run":
        state[m[1]] = m[2]
    elif m[0] == "drop":
        if isinstance(steps, dict):  # an earlier mutation may have replaced them
            steps.pop(m[1], None)
    elif isinstance(steps, dict):
        step = steps.setdefault(m[1], dict(next(iter(steps.values()), {})))
        if m[0] == "step":
            step[m[2]] = m[3]
        else:
            step["progress"] = m[2]


def _run_all(af: Env, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """The commands at the same time (they only read), each as the real CLI."""
    started = [(cmd, af.start(*cmd)) for cmd in commands]
    done = []
    for cmd, proc in started:
        out, err = proc.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(list(cmd), proc.returncode, out, err))
    return done


def _no_crash(res: subprocess.CompletedProcess[str]) -> None:
    text = res.stdout + res.stderr
    assert res.returncode in {0, 1, 2, 3, 4}, (res.args, res.returncode, text[-3000:])
    assert "Traceback" not in text, (res.args, text[-3000:])


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    mutations=st.lists(MUTATIONS, min_size=1, max_size=3),
    also_prev=st.booleans(),
    events=ODD_EVENTS,
)
@example(mutations=[("run", "created_at", "2026-01-02T03:04:05")], also_prev=False, events=[])
@example(mutations=[("run", "steps", {})], also_prev=True, events=[])
@example(mutations=[("run", "created_at", "9999-12-31T23:59:59Z")], also_prev=True, events=[])
def test_a_checkpoint_of_any_shape_never_crashes_a_command(
    two_runs: Env, mutations: list[Mutation], also_prev: bool, events: list[dict[str, Any]]
) -> None:
    """Whatever state.json holds (and its previous copy, and odd lines in events.jsonl):
    status, report, compare, history and resume end with an exit code and at most a
    message, and the other run still shows in ``status``."""
    af = two_runs
    run = af.run_dir("one")
    saved = af.home / "saved-one"
    if not saved.exists():
        shutil.copytree(run, saved)
    shutil.rmtree(run)
    shutil.copytree(saved, run)
    (af.home / "history.db").unlink(missing_ok=True)  # compare reads the run directories
    for name in ("state.json", "state.json.prev") if also_prev else ("state.json",):
        state = json.loads((run / name).read_text())
        for m in mutations:
            _mutate(state, m)
        (run / name).write_text(json.dumps(state))
    with (run / "events.jsonl").open("a") as f:
        f.writelines(json.dumps(e) + "\n" for e in events)

    before = _run_all(
        af, ("status",), ("status", "one"), ("report", "one"), ("compare", "one", "two")
    )
    resumed = af.cli("resume", "one", "--ci")
    after = _run_all(af, ("status",), ("history",))
    for res in (*before, resumed, *after):
        _no_crash(res)
    for listing in (before[0], after[0]):
        assert re.search(r"^two\s+t\s+failed", listing.stdout, re.M), listing.stdout


def _record(body: bytes) -> bytes:
    return b"%08x %s\n" % (zlib.crc32(body), body)


A_DONE = _record(b'{"seq":1,"steps":{"a":{"status":"succeeded","attempts":1,"exit_code":0}}}')
ODD_LOGS = {
    "a torn record": A_DONE + _record(b'{"seq":2,"run":{"message":"x"}}')[:20],
    "a bad checksum": _record(b'{"seq":1}').replace(b"{", b"[", 1) + A_DONE,
    "garbage": bytes(range(256)) * 8,
    "a huge line": b"9" * (16 << 20) + b"\n" + A_DONE,
    "odd JSON": b"".join(
        _record(body) for body in (
            b'{"seq":1,"steps":{"a":{"attempts":-1}}}', b'{"seq":2,"run":{"steps":[]}}',
            b'{"seq":1e999}', b'{"seq":3,"run":{"created_at":"9999-12-31T23:59:59Z"}}',
        )
    ) + A_DONE,
    "another run's": _record(b'{"seq":1,"run":{"run_id":"two"}}') + A_DONE,
}  # fmt: skip


@pytest.mark.parametrize(
    "odd", [*ODD_LOGS.values(), "link", "folder"], ids=[*ODD_LOGS, "link", "folder"]
)
def test_a_checkpoint_log_of_any_shape_never_crashes_a_command(
    two_runs: Env, odd: bytes | str
) -> None:
    """Whatever state.log holds (cut short, damaged, huge, a link, a folder): status,
    report, compare, history and resume end with an exit code and at most a message; a
    damage with records after it is told when the run is resumed."""
    af = two_runs
    log = af.run_dir("one") / "state.log"
    if odd == "link":
        log.symlink_to(af.run_dir("two") / "state.json")
    elif odd == "folder":
        log.mkdir()
    else:
        assert isinstance(odd, bytes)
        log.write_bytes(odd)
    before = _run_all(
        af, ("status",), ("status", "one"), ("report", "one"), ("compare", "one", "two")
    )
    resumed = af.cli("resume", "one", "--ci")
    after = _run_all(af, ("status",), ("history",), ("status", "one"))
    for res in (*before, resumed, *after):
        _no_crash(res)
    for listing in (before[0], after[0]):
        assert re.search(r"^two\s+t\s+failed", listing.stdout, re.M), listing.stdout
    events = (af.run_dir("one") / "events.jsonl").read_text()
    # A torn last record is no damage (a crash mid-append); a link or a folder is no log.
    damaged = isinstance(odd, bytes) and odd != ODD_LOGS["a torn record"]
    assert ("checkpoint_log_damaged" in events) == damaged
    if odd == "link":
        assert (af.run_dir("two") / "state.json").is_file(), "the link's target is untouched"


def test_progress_with_more_digits_than_a_float_keeps_the_checkpoint_readable(af: Env) -> None:
    """A step's output is hostile: `10**400/10**400` parsed as progress was infinite, saved
    as null, and the checkpoint could no longer be read."""
    big = "9" * 400
    wf = af.write(
        HEADER + "sandbox: {backend: local}\n" + STEP.replace("run: x", f"run: echo {big}/{big} [")
    )
    res = af.cli("run", str(wf), "--ci", "--run-id", "p")
    assert res.returncode == 0, res.stdout + res.stderr
    shown = af.cli("status", "p")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "damaged" not in shown.stdout + shown.stderr


def test_an_eta_beyond_a_float_is_no_eta() -> None:
    """1 of 10^308 done after 2 s: the ETA overflowed to infinity, and showing it
    (``round(inf)``) stopped the live view."""
    assert eta_seconds(1 / 10**308, 2.0) is None
    assert eta_seconds(0.5, 2.0) == 2.0


def test_a_file_time_a_step_forged_is_not_taken(af: Env) -> None:
    """A step can give its output.log any time: one before it started (or far in the
    future) is not when it printed."""
    touch = 'touch -d 1960-01-01 "$AGENTFLOW_HOME/runs/$AGENTFLOW_RUN_ID/steps/a/output.log"'
    wf = af.write(
        HEADER + "sandbox: {backend: local}\n" + STEP.replace(
            "run: x", f"run: echo hi; sleep 0.3; {touch}; sleep 0.3"
        )
    )  # fmt: skip
    res = af.cli("run", str(wf), "--ci", "--run-id", "f")
    assert res.returncode == 0, res.stdout + res.stderr
    step = af.state("f")["steps"]["a"]
    assert step["last_output_at"] >= step["started_at"], step
    assert af.cli("status", "f").returncode == 0
