"""Running workflows for real: tmux windows, the wrapper, the runner's rules."""

from __future__ import annotations

import itertools
import json
import os
import signal
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

import libtmux

from agentflow.tmux import socket_path_for

from conftest import Env, group_alive, run_id_of

ROOT = Path(__file__).resolve().parent.parent


def times(state: dict, step: str) -> tuple[datetime, datetime]:
    st = state["steps"][step]
    return datetime.fromisoformat(st["started_at"]), datetime.fromisoformat(st["finished_at"])


def test_hello_workflow_runs_end_to_end(af: Env, tmp_path: Path) -> None:
    junit = tmp_path / "out" / "junit.xml"
    res = af.cli("run", str(ROOT / "workflows" / "hello.yaml"), "--junit", str(junit))
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    state = af.state(rid)
    assert state["status"] == "succeeded"
    assert {s["status"] for s in state["steps"].values()} == {"succeeded"}
    run_dir = af.run_dir(rid)
    assert "line 3" in (run_dir / "steps" / "count" / "output.log").read_text()
    assert (run_dir / "steps" / "count" / "exit_code").read_text().strip() == "0"
    for name in ("report.md", "report.json", "junit.xml", "workflow.yaml", "plan.json"):
        assert (run_dir / name).is_file(), name
    cases = ET.parse(junit).getroot().findall(".//testcase")
    assert [c.get("name") for c in cases] == ["prepare", "count", "lint", "summarize"]
    # the plain output (stdout is not a terminal) has no colour codes
    assert "\x1b[" not in res.stdout


def test_independent_steps_run_in_parallel_up_to_max_parallel(af: Env) -> None:
    steps = "".join(f"  - id: s{i}\n    run: sleep 1\n" for i in range(3))
    wide = af.write(f"version: 1\nname: wide\nmax_parallel: 3\nsteps:\n{steps}", "wide.yaml")
    narrow = af.write(f"version: 1\nname: narrow\nmax_parallel: 1\nsteps:\n{steps}", "n.yaml")
    res = af.cli("run", str(wide))
    assert res.returncode == 0, res.stderr
    spans = [times(af.state(run_id_of(res.stdout)), f"s{i}") for i in range(3)]
    assert max(s for s, _ in spans) < min(e for _, e in spans), "all three overlapped"
    res = af.cli("run", str(narrow))
    assert res.returncode == 0, res.stderr
    spans = sorted(times(af.state(run_id_of(res.stdout)), f"s{i}") for i in range(3))
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, "max_parallel: 1 runs one at a time"


def test_timeout_kills_the_whole_process_group(af: Env) -> None:
    wf = af.write(
        """\
        version: 1
        name: slow
        steps:
          - id: sleepy
            timeout: 1s
            run: |
              sleep 300 &
              echo $! > child.pid
              sleep 300
        """
    )
    res = af.cli("run", str(wf))
    assert res.returncode == 1
    rid = run_id_of(res.stdout)
    st = af.state(rid)["steps"]["sleepy"]
    assert st["status"] == "timeout"
    assert st["exit_code"] == 143  # TERM
    pgid = int((af.run_dir(rid) / "steps" / "sleepy" / "pid").read_text())
    child = int((af.workspace / "child.pid").read_text())
    assert child != pgid  # a background child, in the step's process group
    af.wait_for(lambda: not group_alive(pgid), timeout=5, message="the background child dies")


def test_a_failed_step_skips_its_dependents_only(af: Env) -> None:
    wf = af.write(
        """\
        version: 1
        name: branches
        steps:
          - id: bad
            run: echo broken >&2; exit 3
          - id: after-bad
            needs: [bad]
            run: echo never
          - id: later
            needs: [after-bad]
            run: echo never
          - id: other
            run: echo fine
        """
    )
    res = af.cli("run", str(wf))
    assert res.returncode == 1
    assert "agentflow logs" in res.stdout
    steps = af.state(run_id_of(res.stdout))["steps"]
    assert steps["bad"]["status"] == "failed"
    assert steps["bad"]["exit_code"] == 3
    assert steps["after-bad"]["status"] == "skipped"
    assert "bad" in steps["after-bad"]["message"]
    assert steps["later"]["status"] == "skipped"
    assert steps["other"]["status"] == "succeeded"


def test_on_failure_abort_stops_the_rest_of_the_run(af: Env) -> None:
    wf = af.write(
        """\
        version: 1
        name: abort
        steps:
          - id: long
            run: sleep 60
          - id: bad
            on_failure: abort
            run: sleep 0.5; exit 1
          - id: after
            needs: [long]
            run: echo never
        """
    )
    res = af.cli("run", str(wf))
    assert res.returncode == 1
    steps = af.state(run_id_of(res.stdout))["steps"]
    assert steps["bad"]["status"] == "failed"
    assert steps["long"]["status"] == "failed"
    assert "abort" in steps["long"]["message"]
    assert steps["after"]["status"] == "skipped"


def test_retry_with_backoff_until_success_keeps_each_attempts_log(af: Env) -> None:
    wf = af.write(
        """\
        version: 1
        name: flaky
        steps:
          - id: flaky
            retry: {limit: 3, backoff: {initial: 100ms, factor: 2}}
            run: |
              n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count
              echo "attempt $n"
              [ $n -ge 3 ]
        """
    )
    res = af.cli("run", str(wf))
    assert res.returncode == 0, res.stdout
    rid = run_id_of(res.stdout)
    st = af.state(rid)["steps"]["flaky"]
    assert st["status"] == "succeeded"
    assert st["attempts"] == 3
    step_dir = af.run_dir(rid) / "steps" / "flaky"
    assert (step_dir / "attempt-1" / "output.log").read_text() == "attempt 1\n"
    assert (step_dir / "attempt-2" / "output.log").read_text() == "attempt 2\n"
    assert (step_dir / "output.log").read_text() == "attempt 3\n"
    kinds = [json.loads(line)["kind"] for line in (af.run_dir(rid) / "events.jsonl").open()]
    assert kinds.count("retry_scheduled") == 2


def test_retry_limit_exhausted_fails(af: Env) -> None:
    wf = af.write(
        """\
        version: 1
        name: hopeless
        defaults:
          retry: {limit: 1, backoff: {initial: 0s}}
        steps:
          - id: nope
            run: exit 7
        """
    )
    res = af.cli("run", str(wf))
    assert res.returncode == 1
    st = af.state(run_id_of(res.stdout))["steps"]["nope"]
    assert (st["status"], st["attempts"], st["exit_code"]) == ("failed", 2, 7)


def test_output_log_holds_every_byte_of_a_large_output(af: Env) -> None:
    wf = af.write(
        """\
        version: 1
        name: chatty
        steps:
          - id: chatty
            run: seq 1 300000
        """
    )
    res = af.cli("run", str(wf))
    assert res.returncode == 0
    log = af.run_dir(run_id_of(res.stdout)) / "steps" / "chatty" / "output.log"
    lines = log.read_text().splitlines()
    assert len(lines) == 300000
    assert lines[0] == "1"
    assert lines[-1] == "300000"


def test_a_step_reading_stdin_does_not_hang(af: Env) -> None:
    wf = af.write(
        """\
        version: 1
        name: stdin
        defaults: {timeout: 20s}
        steps:
          - id: reader
            run: |
              read -r line
              echo "got [$line]"
              cat
        """
    )
    res = af.cli("run", str(wf))
    assert res.returncode == 0
    st = af.state(run_id_of(res.stdout))["steps"]["reader"]
    assert st["status"] == "succeeded"
    log = af.run_dir(run_id_of(res.stdout)) / "steps" / "reader" / "output.log"
    assert log.read_text() == "got []\n"


def test_commands_with_tricky_characters_run_as_written(af: Env) -> None:
    wf = af.write(
        """\
        version: 1
        name: tricky
        env: {GREETING: "a; b | c"}
        steps:
          - id: tricky
            workdir: sub
            run: |
              cat <<'END'
              -leading dash; semicolon | pipe "quotes" $HOME
              END
              echo "$GREETING" "${{ env.GREETING }}" "$AGENTFLOW_STEP" "$(basename "$PWD")"
        """
    )
    (af.workspace / "sub").mkdir()
    res = af.cli("run", str(wf))
    assert res.returncode == 0, res.stdout
    log = af.run_dir(run_id_of(res.stdout)) / "steps" / "tricky" / "output.log"
    assert log.read_text().splitlines() == [
        '-leading dash; semicolon | pipe "quotes" $HOME',
        "a; b | c a; b | c tricky sub",
    ]


def test_status_and_logs_commands(af: Env) -> None:
    res = af.cli("run", str(ROOT / "workflows" / "hello.yaml"))
    rid = run_id_of(res.stdout)
    listing = af.cli("status")
    assert listing.returncode == 0
    assert rid in listing.stdout
    assert "succeeded" in listing.stdout
    one = af.cli("status", rid)
    assert "summarize" in one.stdout
    as_json = af.cli("status", rid, "--json")
    shown, saved = json.loads(as_json.stdout), af.state(rid)
    # state.json's fields as saved, and the ones status adds (what the step files say).
    assert shown.pop("driven") is False
    for step in shown["steps"].values():
        assert step.pop("unwatched") is False
        assert step.pop("ended_unwatched") is False
    assert shown == saved
    logs = af.cli("logs", rid, "count")
    assert logs.stdout.splitlines() == ["line 1", "line 2", "line 3"]
    missing = af.cli("logs", rid, "nope")
    assert missing.returncode == 2
    assert "no step 'nope'" in missing.stderr
    unknown = af.cli("status", "no-such-run")
    assert unknown.returncode == 2
    assert "Traceback" not in unknown.stderr


def test_steps_see_their_environment(af: Env) -> None:
    wf = af.write(
        """\
        version: 1
        name: envs
        inputs: {size: 3}
        env: {LEVEL: top, SIZE: "${{ inputs.size }}"}
        steps:
          - id: show
            env: {LEVEL: step}
            run: echo "$LEVEL $SIZE $AGENTFLOW_RUN_ID $AGENTFLOW_ATTEMPT $FROM_CALLER"
        """
    )
    env_before = dict(af.env)
    af.env["FROM_CALLER"] = "caller"
    res = af.cli("run", str(wf), "--set", "size=5")
    af.env = env_before
    assert res.returncode == 0
    rid = run_id_of(res.stdout)
    log = (af.run_dir(rid) / "steps" / "show" / "output.log").read_text()
    assert log == f"step 5 {rid} 1 caller\n"
    assert os.environ.get("FROM_CALLER") is None


def test_expressions_render_the_same_in_commands_env_and_workdir(af: Env) -> None:
    wf = af.write(
        """\
        version: 1
        name: render
        inputs: {flag: false, mode: fast}
        env: {FLAG: "${{ inputs.flag }}", BOTH: "${{ env.FLAG }}-x"}
        steps:
          - id: show
            workdir: "${{ inputs.mode }}"
            run: echo "${{ inputs.flag }} $FLAG $BOTH $(basename "$PWD")"
        """
    )
    (af.workspace / "fast").mkdir()
    res = af.cli("run", str(wf), "--set", "flag=yes")
    assert res.returncode == 0, res.stdout
    log = af.run_dir(run_id_of(res.stdout)) / "steps" / "show" / "output.log"
    assert log.read_text() == "true true true-x fast\n"


def test_a_saved_plan_must_match_the_workflow(af: Env, tmp_path: Path) -> None:
    hello = ROOT / "workflows" / "hello.yaml"
    plan_path = tmp_path / "plan.json"
    assert af.cli("plan", str(hello), "-o", str(plan_path)).returncode == 0
    plan = json.loads(plan_path.read_text())
    plan["steps"] = [s for s in plan["steps"] if s["id"] != "lint"]
    plan_path.write_text(json.dumps(plan))
    res = af.cli("run", str(hello), "--plan", str(plan_path))
    assert res.returncode == 2
    assert "does not match hello.yaml (missing steps: lint)" in res.stderr
    assert not (af.home / "runs").exists() or not any((af.home / "runs").iterdir())
    res = af.cli("run", str(hello), "--plan", str(plan_path), "--set", "count=1")
    assert res.returncode == 2
    assert "--set has no effect with --plan" in res.stderr


def test_a_saved_plan_runs_as_saved(af: Env, tmp_path: Path) -> None:
    hello = ROOT / "workflows" / "hello.yaml"
    plan_path = tmp_path / "plan.json"
    assert af.cli("plan", str(hello), "-o", str(plan_path), "--set", "count=2").returncode == 0
    res = af.cli("run", str(hello), "--plan", str(plan_path))
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    assert (af.run_dir(rid) / "steps" / "count" / "output.log").read_text().count("line") == 2
    assert json.loads((af.run_dir(rid) / "plan.json").read_text())["inputs"]["count"] == 2


def test_a_crashed_attempt_is_killed_before_its_retry(af: Env) -> None:
    wf = af.write(
        """\
        version: 1
        name: crashy
        steps:
          - id: victim
            retry: {limit: 1, backoff: {initial: 0s}}
            run: |
              echo $$ > "pid.$AGENTFLOW_ATTEMPT"
              sleep 3
              touch "marker.$AGENTFLOW_ATTEMPT"
        """
    )
    proc = af.start("run", str(wf), "--run-id", "c1")
    af.wait_for(lambda: (af.workspace / "pid.1").exists(), message="attempt 1 started")
    server = libtmux.Server(socket_path=str(socket_path_for(af.home)))
    panes = server.cmd("list-panes", "-a", "-F", "#{window_name} #{pane_pid}").stdout
    wrapper = next(int(line.split()[1]) for line in panes if line.startswith("victim "))
    os.killpg(wrapper, signal.SIGKILL)  # the wrapper dies; the step itself would go on
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, out + err
    assert (af.workspace / "marker.2").exists()
    assert not (af.workspace / "marker.1").exists(), "the crashed attempt was killed"
    events = (af.run_dir("c1") / "events.jsonl").read_text()
    assert '"status":"crashed"' in events
