"""Monitoring and recovery on real tmux: services and readiness, progress, stalls,
success checks, outputs, recover rules, escalation, the breaker."""

from __future__ import annotations

import json
import re
import socket
from datetime import datetime

import pytest

from agentflow.monitor import StepClock, eta_seconds, learned_durations, parse_progress

from conftest import Env, run_id_of


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def events(af: Env, rid: str) -> list[dict[str, object]]:
    path = af.run_dir(rid) / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def at(af: Env, rid: str, step: str, key: str) -> datetime:
    return datetime.fromisoformat(af.state(rid)["steps"][step][key])


# --- progress parsing (pure) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pattern", "expected"),
    [
        ("step 3/10\nstep 4/10\n", r"step (\d+)/(\d+)", (4.0, 10.0)),
        ("epoch 1 loss 2.0\n 45%|####      | 45/100 [00:12<00:15]", None, (45.0, 100.0)),
        ("\r 10%|#   |\r 55%|#####     |", None, (55.0, None)),
        ("done 87.5%\n", r"done ([\d.]+)%", (87.5, None)),
        ("nothing here\n", r"(\d+)/(\d+)", None),
    ],
)
def test_parse_progress(
    text: str, pattern: str | None, expected: tuple[float, float | None] | None
) -> None:
    assert parse_progress(text, pattern) == expected


def test_eta_from_the_pace_so_far() -> None:
    assert eta_seconds(0.25, 60) == pytest.approx(180)
    assert eta_seconds(None, 60) is None
    assert eta_seconds(0.0, 60) is None


def test_the_check_interval_backs_off_while_nothing_changes() -> None:
    clock = StepClock(expected=3600)
    intervals = []
    for _ in range(12):
        clock.looked(changed=False)
        intervals.append(clock.interval)
    assert intervals == sorted(intervals)
    assert intervals[-1] == 300  # minutes apart once quiet
    clock.looked(changed=True)
    assert clock.interval == 30  # an hour-long step: a look every 36 s at most while busy


# --- services ------------------------------------------------------------------------------


def service_workflow(port: int, delay: float = 1.0, timeout: str = "30s") -> str:
    return f"""\
version: 1
name: svc
steps:
  - id: server
    service: true
    run: sleep {delay}; exec python3 -m http.server {port} --bind 127.0.0.1
    ready: {{http: "http://127.0.0.1:{port}/", interval: 200ms, timeout: {timeout}}}
  - id: client
    needs: [server]
    run: python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/').status)"
  - id: independent
    run: echo independent
"""


def test_dependents_wait_for_a_service_to_be_ready_and_it_is_stopped_at_the_end(af: Env) -> None:
    wf = af.write(service_workflow(free_port()))
    res = af.cli("run", str(wf))
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    state = af.state(rid)
    server = state["steps"]["server"]
    assert server["status"] == "succeeded"
    assert server["message"] == "stopped at the end of the run"
    ready = datetime.fromisoformat(server["ready_at"])
    assert (ready - at(af, rid, "server", "started_at")).total_seconds() >= 1.0
    assert at(af, rid, "client", "started_at") >= ready
    log = (af.run_dir(rid) / "steps" / "client" / "output.log").read_text()
    assert log == "200\n"
    kinds = [e["kind"] for e in events(af, rid)]
    assert "service_ready" in kinds
    assert "service_stopping" in kinds


def test_a_service_that_never_gets_ready_fails_and_skips_its_dependents(af: Env) -> None:
    wf = af.write(service_workflow(free_port(), delay=60, timeout="1s"))
    res = af.cli("run", str(wf))
    assert res.returncode == 1
    steps = af.state(run_id_of(res.stdout))["steps"]
    assert steps["server"]["status"] == "failed"
    assert "not ready after 1s" in steps["server"]["message"]
    assert steps["client"]["status"] == "skipped"
    assert steps["independent"]["status"] == "succeeded"


def test_a_service_that_dies_fails_the_steps_using_it(af: Env) -> None:
    port = free_port()
    wf = af.write(
        f"""\
version: 1
name: flaky-service
steps:
  - id: server
    service: true
    run: python3 -m http.server {port} --bind 127.0.0.1 & pid=$!; sleep 1.5; kill $pid; exit 3
    ready: {{tcp: "127.0.0.1:{port}", interval: 100ms}}
  - id: user
    needs: [server]
    run: sleep 30
"""
    )
    res = af.cli("run", str(wf))
    assert res.returncode == 1
    steps = af.state(run_id_of(res.stdout))["steps"]
    assert steps["server"]["status"] == "failed"
    assert steps["user"]["status"] == "failed"
    assert "service server stopped" in steps["user"]["message"]


# --- timers and progress --------------------------------------------------------------------


def test_a_silent_step_is_stalled_and_killed(af: Env) -> None:
    wf = af.write(
        """\
version: 1
name: stall
steps:
  - id: quiet
    stall_timeout: 1s
    run: echo started; sleep 60
"""
    )
    res = af.cli("run", str(wf))
    assert res.returncode == 1
    st = af.state(run_id_of(res.stdout))["steps"]["quiet"]
    assert st["status"] == "stalled"
    assert "printed nothing for 1s" in st["message"]


def test_a_chatty_step_is_not_stalled(af: Env) -> None:
    wf = af.write(
        """\
version: 1
name: chatty
steps:
  - id: ticking
    stall_timeout: 1s
    run: for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.4; done
"""
    )
    res = af.cli("run", str(wf))
    assert res.returncode == 0, res.stdout
    assert af.state(run_id_of(res.stdout))["steps"]["ticking"]["status"] == "succeeded"


def test_progress_and_eta_are_recorded(af: Env) -> None:
    wf = af.write(
        """\
version: 1
name: prog
steps:
  - id: work
    expect: {duration: 10s, progress: 'item (\\d+) of (\\d+)'}
    run: |
      for i in 1 2 3 4 5 6 7 8; do
        echo "item $i of 8"; sleep 0.3
        if [ $i = 4 ]; then while [ ! -f go ]; do sleep 0.1; done; fi  # held for the status
      done
"""
    )
    proc = af.start("run", str(wf), "--run-id", "p1")
    af.wait_for(
        lambda: (af.state("p1")["steps"]["work"].get("progress") or {}).get("done", 0) >= 3,
        message="progress seen while running",
    )
    progress = af.state("p1")["steps"]["work"]["progress"]
    assert progress["total"] == 8
    assert progress["eta_s"] is not None
    status = af.cli("status", "p1")
    assert re.search(r"\d+% eta", status.stdout), status.stdout
    (af.workspace / "go").touch()
    proc.communicate(timeout=30)
    assert af.state("p1")["steps"]["work"]["progress"]["done"] == 8


def test_learned_durations_come_from_earlier_successful_runs(af: Env) -> None:
    wf = af.write("version: 1\nname: learn\nsteps:\n  - id: nap\n    run: sleep 0.5\n")
    for _ in range(2):
        assert af.cli("run", str(wf)).returncode == 0
    learned = learned_durations(af.home / "runs", "learn", exclude="none")
    assert 0.5 <= learned["nap"] < 5


# --- verification and outputs ---------------------------------------------------------------


def test_a_success_check_fails_a_step_that_exited_0(af: Env) -> None:
    wf = af.write(
        """\
version: 1
name: verify
steps:
  - id: claims
    run: |
      echo '{"speedup": 1.1}' > results.json
    success:
      metrics: {speedup: {file: results.json, key: speedup, min: 1.2}}
  - id: empty
    run: touch empty.txt
    success: {files: [empty.txt]}
  - id: fine
    run: |
      echo '{"a": {"b": [0, 7]}}' > r.json; echo "all good"
    success:
      files: [r.json]
      log: "all good"
      command: test -s r.json
      metrics: {b: {file: r.json, key: a.b.1, min: 5, max: 9}}
"""
    )
    res = af.cli("run", str(wf))
    assert res.returncode == 1
    steps = af.state(run_id_of(res.stdout))["steps"]
    assert steps["claims"]["status"] == "failed"
    assert steps["claims"]["exit_code"] == 0
    assert steps["claims"]["message"] == (
        "success check metrics.speedup: speedup = 1.1, below the minimum 1.2"
    )
    assert steps["empty"]["message"] == "success check files: empty.txt is empty"
    assert steps["fine"]["status"] == "succeeded"


def test_outputs_flow_to_later_steps(af: Env) -> None:
    wf = af.write(
        """\
version: 1
name: outputs
steps:
  - id: produce
    run: |
      echo '{"eval": {"speedup": 1.35}}' > results.json
      echo 7b > model.txt
      echo "acceptance=0.71"
    outputs:
      speedup: {json: results.json, key: eval.speedup}
      model: {file: model.txt}
      acceptance: {log: 'acceptance=([\\d.]+)'}
  - id: consume
    needs: [produce]
    env: {MODEL: "${{ steps.produce.outputs.model }}"}
    run: echo "${{ steps.produce.outputs.speedup }} $MODEL ${{ steps.produce.outputs.acceptance }}"
"""
    )
    res = af.cli("run", str(wf))
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    assert af.state(rid)["steps"]["produce"]["outputs"] == {
        "speedup": "1.35",
        "model": "7b",
        "acceptance": "0.71",
    }
    log = (af.run_dir(rid) / "steps" / "consume" / "output.log").read_text()
    assert log == "1.35 7b 0.71\n"


# --- recovery -------------------------------------------------------------------------------


def test_a_recover_rule_fixes_a_step_by_setting_an_env_var(af: Env) -> None:
    wf = af.write(
        """\
version: 1
name: oom
steps:
  - id: train
    env: {BATCH_SIZE: "64"}
    run: |
      if [ "$BATCH_SIZE" -gt 16 ]; then echo "RuntimeError: CUDA out of memory"; exit 1; fi
      echo "trained with batch $BATCH_SIZE"
    recover:
      - {match: "out of memory", action: retry, set_env: {BATCH_SIZE: "8"}}
"""
    )
    res = af.cli("run", str(wf))
    assert res.returncode == 0, res.stdout
    rid = run_id_of(res.stdout)
    st = af.state(rid)["steps"]["train"]
    assert st["attempts"] == 2
    assert st["env_overrides"] == {"BATCH_SIZE": "8"}
    log = (af.run_dir(rid) / "steps" / "train" / "output.log").read_text()
    assert log == "trained with batch 8\n"
    kinds = [e["kind"] for e in events(af, rid)]
    assert "rule_matched" in kinds
    report = (af.run_dir(rid) / "report.md").read_text()
    assert "recover rule 1 matched /out of memory/" in report


def test_escalate_blocks_the_run_exit_3_then_resume(af: Env) -> None:
    wf = af.write(
        """\
version: 1
name: escalate
steps:
  - id: needs-human
    run: test -e approved || { echo "license not accepted"; exit 1; }
    recover:
      - match: "license not accepted"
        action: escalate
        message: "accept the license, then resume"
  - id: after
    needs: [needs-human]
    run: echo after
"""
    )
    res = af.cli("run", str(wf), "--run-id", "esc1")
    assert res.returncode == 3, res.stdout
    assert "blocked" in res.stdout
    steps = af.state("esc1")["steps"]
    assert steps["needs-human"]["status"] == "blocked"
    assert "accept the license, then resume" in steps["needs-human"]["message"]
    assert af.state("esc1")["status"] == "blocked"
    (af.workspace / "approved").touch()
    res = af.cli("resume", "esc1")
    assert res.returncode == 0, res.stdout
    assert af.state("esc1")["steps"]["after"]["status"] == "succeeded"


def test_the_breaker_stops_retries_after_consecutive_failures(af: Env) -> None:
    steps = "".join(
        f"  - id: s{i}\n    retry: {{limit: 5, backoff: {{initial: 0s}}}}\n    run: exit 1\n"
        for i in range(2)
    )
    wf = af.write(
        f"version: 1\nname: breaker\nmax_consecutive_failures: 3\nmax_parallel: 1\nsteps:\n{steps}"
    )
    res = af.cli("run", str(wf))
    assert res.returncode == 1
    state = af.state(run_id_of(res.stdout))
    attempts = sum(s["attempts"] for s in state["steps"].values())
    assert attempts <= 4, "no more retries once 3 failed in a row"
    messages = " ".join(s["message"] or "" for s in state["steps"].values())
    assert "breaker" in messages


def test_retry_only_for_listed_exit_codes(af: Env) -> None:
    wf = af.write(
        """\
version: 1
name: codes
steps:
  - id: picky
    retry: {limit: 3, backoff: {initial: 0s}, exit_codes: [75]}
    run: exit 2
"""
    )
    res = af.cli("run", str(wf))
    st = af.state(run_id_of(res.stdout))["steps"]["picky"]
    assert st["attempts"] == 1
    assert "not in retry.exit_codes" in st["message"]


def test_expressions_in_probes_and_checks_are_filled_in(af: Env) -> None:
    port = free_port()
    wf = af.write(
        f"""\
version: 1
name: exprs
inputs: {{port: {port}, want: "3"}}
env: {{WANT: "${{{{ inputs.want }}}}"}}
steps:
  - id: server
    service: true
    run: exec python3 -m http.server ${{{{ inputs.port }}}} --bind 127.0.0.1
    ready: {{http: "http://127.0.0.1:${{{{ inputs.port }}}}/", interval: 200ms}}
  - id: check
    needs: [server]
    run: echo "value 3" > out.txt
    success:
      files: ["${{{{ run.id }}}}.none", out.txt]
"""
    )
    res = af.cli("run", str(wf))
    assert res.returncode == 1
    st = af.state(run_id_of(res.stdout))["steps"]
    assert st["server"]["ready_at"] is not None
    rid = run_id_of(res.stdout)
    assert st["check"]["message"] == f"success check files: {rid}.none does not exist"


def test_a_check_command_sees_the_steps_environment(af: Env) -> None:
    wf = af.write(
        """\
version: 1
name: envcheck
env: {WANT: "yes"}
steps:
  - id: a
    run: 'true'
    success: {command: 'test "$WANT" = yes'}
"""
    )
    res = af.cli("run", str(wf))
    assert res.returncode == 0, res.stdout


def test_a_stalled_step_fails_the_run_in_every_report(af: Env) -> None:
    wf = af.write(
        "version: 1\nname: st\nsteps:\n  - id: q\n    stall_timeout: 1s\n    run: sleep 30\n"
    )
    res = af.cli("run", str(wf))
    assert res.returncode == 1
    assert "(q)" in res.stdout
    rid = run_id_of(res.stdout)
    junit = (af.run_dir(rid) / "junit.xml").read_text()
    assert 'failures="1"' in junit
    assert 'type="stalled"' in junit


def test_ready_services_do_not_hold_places_and_resume_restarts_them(af: Env) -> None:
    port = free_port()
    wf = af.write(
        f"""\
version: 1
name: svcs
max_parallel: 1
steps:
  - id: server
    service: true
    run: exec python3 -m http.server {port} --bind 127.0.0.1
    ready: {{tcp: "127.0.0.1:{port}", interval: 200ms}}
  - id: user
    needs: [server]
    run: |
      python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/')"
      test -e go || {{ echo "not yet"; exit 1; }}
    recover: [{{match: "not yet", action: escalate}}]
"""
    )
    res = af.cli("run", str(wf), "--run-id", "sv1")
    assert res.returncode == 3, res.stdout  # the user ran while the ready server held no place
    (af.workspace / "go").touch()
    res = af.cli("resume", "sv1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert af.state("sv1")["steps"]["server"]["attempts"] == 2
