"""GPUs and CPUs as a pool (issue 19): steps with ``resources: {gpus: N}`` draw devices
from ``AGENTFLOW_GPUS`` through a ledger under the home, shared by every run of it."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from agentflow.pool.devices import Pool, parse_gpus
from agentflow.pool.ledger import Holding, Ledger
from agentflow.pool.run import container_ordinals
from agentflow.sandbox.docker import device_requests
from agentflow.store import hold_lock

from conftest import Env

# Each step takes its device by making a folder named after it (mkdir fails when the
# folder is there: another step holds the same device right now), records when it held
# it, and gives it back before it ends.
HOLD = """\
    run: |
      mkdir -p held times
      mkdir "held/gpu-$CUDA_VISIBLE_DEVICES" || {{ echo "GPU taken"; exit 9; }}
      echo "$CUDA_VISIBLE_DEVICES $(date +%s%N)" > "times/{id}.start"
      {wait}
      echo "$(date +%s%N)" > "times/{id}.end"
      rmdir "held/gpu-$CUDA_VISIBLE_DEVICES"
"""


def pooled(name: str, ids: list[str], wait: str = "sleep 1", gpus: int = 1) -> str:
    steps = "".join(
        f"  - id: {i}\n    resources: {{gpus: {gpus}}}\n" + HOLD.format(id=i, wait=wait)
        for i in ids
    )
    return (
        f"version: 1\nname: {name}\nmax_parallel: 4\nsandbox: {{backend: local}}\nsteps:\n{steps}"
    )


def with_pool(af: Env, gpus: str) -> Env:
    return Env(af.home, af.workspace, {**af.env, "AGENTFLOW_GPUS": gpus})


def intervals(ws: Path) -> dict[str, tuple[str, int, int]]:
    """Each step's device and when it held it (ns)."""
    out = {}
    for start in (ws / "times").glob("*.start"):
        device, t0 = start.read_text().split()
        t1 = (start.with_suffix(".end")).read_text().strip()
        out[start.stem] = (device, int(t0), int(t1))
    return out


def overlapping(spans: dict[str, tuple[str, int, int]]) -> list[tuple[str, str]]:
    keys = sorted(spans)
    return [
        (a, b)
        for i, a in enumerate(keys)
        for b in keys[i + 1 :]
        if spans[a][1] < spans[b][2] and spans[b][1] < spans[a][2]
    ]


def ledger_of(home: Path) -> list[dict[str, Any]]:
    path = home / "pool" / "ledger.json"
    if not path.exists():
        return []
    held: list[dict[str, Any]] = json.loads(path.read_text())["held"]
    return held


def test_four_steps_share_a_pool_of_two_gpus(af: Env) -> None:
    env = with_pool(af, "0,1")
    wf = env.write(pooled("four", ["a", "b", "c", "d"]))
    res = env.cli("run", str(wf), "--ci", "--run-id", "r4")
    assert res.returncode == 0, res.stdout + res.stderr
    spans = intervals(af.workspace)
    assert sorted(spans) == ["a", "b", "c", "d"]
    assert {d for d, _, _ in spans.values()} <= {"0", "1"}
    # Steps overlap only on different GPUs: at most two at a time, never two on one.
    for a, b in overlapping(spans):
        assert spans[a][0] != spans[b][0], (a, b, spans)
    for t in {t0 for _, t0, _ in spans.values()}:
        assert sum(1 for _, t0, t1 in spans.values() if t0 <= t < t1) <= 2
    # Two had to wait for a GPU, and said so.
    assert res.stdout.count("queued: no free GPU") == 2, res.stdout
    state = af.state("r4")
    for step_id, (device, _, _) in spans.items():
        assert state["steps"][step_id]["status"] == "succeeded"
        assert state["steps"][step_id]["gpus"] == [device]
        assert f"started (attempt 1, GPU {device})" in res.stdout
    status = env.cli("status", "r4")
    for step_id, (device, _, _) in spans.items():
        row = next(x for x in status.stdout.splitlines() if x.startswith(step_id + " "))
        assert f"GPU {device}" in row, status.stdout
    report = (af.run_dir("r4") / "report.md").read_text()
    for step_id, (device, _, _) in spans.items():
        assert f"| {step_id} " in report
        row = next(x for x in report.splitlines() if x.startswith(f"| {step_id} "))
        assert f"GPU {device}" in row, report
    html = (af.run_dir("r4") / "report.html").read_text()
    for step_id, (device, _, _) in spans.items():
        assert f"{step_id} attempt 1: succeeded, exit 0, GPU {device}" in html  # its bar
    attempts = json.loads((af.run_dir("r4") / "report.json").read_text())["steps"]
    assert {s["id"]: s["history"][0]["gpus"] for s in attempts} == {
        k: [d] for k, (d, _, _) in spans.items()
    }
    assert ledger_of(af.home) == []  # every attempt gave its GPU back


def test_two_runs_of_one_home_share_one_gpu_without_overlap(af: Env) -> None:
    env = with_pool(af, "0")
    release = "while [ ! -e release ]; do sleep 0.05; done"
    first = env.write(pooled("one", ["x"], wait=release), "one.yaml")
    second = env.write(pooled("two", ["y"], wait=release), "two.yaml")
    runs = [env.start("run", str(first), "--ci"), env.start("run", str(second), "--ci")]
    af.wait_for(
        lambda: any("step_queued" in p.read_text() for p in af.home.glob("runs/*/events.jsonl")),
        message="one run waits for the other's GPU",
    )
    (af.workspace / "release").touch()
    outs = [p.communicate(timeout=90) for p in runs]
    for p, (out, err) in zip(runs, outs, strict=True):
        assert p.returncode == 0, out + err
    spans = intervals(af.workspace)
    assert sorted(spans) == ["x", "y"]
    assert overlapping(spans) == [], spans
    assert sum(out.count("queued: no free GPU") for out, _ in outs) == 1
    assert ledger_of(af.home) == []


def test_the_members_of_a_sweep_share_one_gpu_without_overlap(af: Env) -> None:
    env = with_pool(af, "0")
    release = "while [ ! -e release ]; do sleep 0.05; done"
    hold = HOLD.format(id="${{ inputs.lr }}", wait=release)
    wf = env.write(
        "version: 1\nname: sw\ninputs:\n  lr: {default: 1}\nmatrix:\n  lr: [1, 2]\n"
        "max_parallel_runs: 2\nsteps:\n  - id: train\n    resources: {gpus: 1}\n" + hold
    )
    sweep = env.start("run", str(wf), "--ci", "--sandbox", "local")

    def queued() -> list[Path]:
        return [p for p in af.home.glob("runs/*/events.jsonl") if "step_queued" in p.read_text()]

    af.wait_for(lambda: len(queued()) == 1, message="a member waits for the GPU")
    (af.workspace / "release").touch()
    out, err = sweep.communicate(timeout=90)
    assert sweep.returncode == 0, out + err
    spans = intervals(af.workspace)
    assert sorted(spans) == ["1", "2"]
    assert overlapping(spans) == [], spans
    assert len(queued()) == 1  # the member that came second waited for the first
    assert ledger_of(af.home) == []


def test_a_killed_run_gives_its_gpu_back_once_its_step_is_gone(af: Env) -> None:
    env = with_pool(af, "0")
    hog = env.write(pooled("hog", ["hog"], wait="sleep 300"), "hog.yaml")
    proc = env.start("run", str(hog), "--ci", "--run-id", "hog")
    pid_file = af.run_dir("hog") / "steps" / "hog" / "pid"
    af.wait_for(lambda: pid_file.exists() and (af.workspace / "times/hog.start").exists())
    assert [h["step"] for h in ledger_of(af.home)] == ["hog"]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Its orchestrator is dead but its step still runs on the GPU: nobody else gets it.
    late = env.write(
        "version: 1\nname: late\nsteps:\n  - id: late\n    resources: {gpus: 1}\n"
        "    run: date +%s%N > late.start\n",
        "late.yaml",
    )
    waiter = env.start("run", str(late), "--ci", "--run-id", "late")
    events = af.run_dir("late") / "events.jsonl"
    af.wait_for(lambda: "step_queued" in events.read_text(), message="late queued")
    assert [h["run"] for h in ledger_of(af.home)] == ["hog"]
    killed = time.time_ns()
    os.killpg(int(pid_file.read_text()), signal.SIGKILL)  # the rest of the run dies
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, out + err
    assert int((af.workspace / "late.start").read_text()) > killed  # not before
    assert "queued: no free GPU" in out
    assert af.state("late")["steps"]["late"]["gpus"] == ["0"]
    assert ledger_of(af.home) == []


def test_a_step_still_running_keeps_its_gpu_across_a_resume(af: Env) -> None:
    env = with_pool(af, "0,1")
    wf = env.write(pooled("keep", ["k"], wait="while [ ! -e release ]; do sleep 0.05; done"))
    proc = env.start("run", str(wf), "--run-id", "r")
    af.wait_for(lambda: (af.workspace / "times/k.start").exists())
    device = af.state("r")["steps"]["k"]["gpus"]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = env.start("resume", "r")
    af.wait_for(lambda: "run_resumed" in (af.run_dir("r") / "events.jsonl").read_text())
    assert [(h["step"], h["gpus"]) for h in ledger_of(af.home)] == [("k", device)]
    (af.workspace / "release").touch()
    out, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, out + err
    state = af.state("r")
    assert state["steps"]["k"]["attempts"] == 1
    assert state["steps"]["k"]["gpus"] == device
    assert ledger_of(af.home) == []


@pytest.mark.parametrize(
    ("gpus", "env", "said"),
    [
        (2, {"AGENTFLOW_GPUS": "0"}, "resources.gpus: 2 but the pool has 1 GPU (AGENTFLOW_GPUS=0)"),
        (1, {"AGENTFLOW_GPUS": ""}, "resources.gpus: 1 but the pool has 0 GPUs (AGENTFLOW_GPUS=)"),
        (1, {"AGENTFLOW_GPUS": "0;1"}, "AGENTFLOW_GPUS='0;1': '0;1' is not a GPU id"),
    ],
)
def test_a_step_asking_more_than_the_pool_is_a_clear_error(
    af: Env, gpus: int, env: dict[str, str], said: str
) -> None:
    wf = af.write(pooled("big", ["big"], gpus=gpus))
    res = Env(af.home, af.workspace, {**af.env, **env}).cli("run", str(wf), "--ci")
    assert res.returncode == 2, res.stdout + res.stderr
    assert said in res.stderr
    assert res.stderr.count("\n") == 1, res.stderr  # one line, no traceback
    if gpus == 2:
        assert f"{wf}: step big: " in res.stderr
    assert not list(af.home.glob("runs/*"))  # nothing started


def test_cpus_pin_a_step_to_cpus_of_its_own(af: Env) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    wf = af.write(
        "version: 1\nname: pin\nsandbox: {backend: local}\nsteps:\n"
        "  - id: p\n    resources: {cpus: 1}\n"
        "    run: grep Cpus_allowed_list /proc/self/status > pinned.txt\n"
    )
    res = af.cli("run", str(wf), "--ci", "--run-id", "p")
    assert res.returncode == 0, res.stdout + res.stderr
    pinned = (af.workspace / "pinned.txt").read_text().split()[-1]
    held = af.state("p")["steps"]["p"]["cpus"]
    assert len(held) == 1
    assert held[0] in cpus
    assert pinned == str(held[0])
    assert f"CPU {held[0]}" in res.stdout


def test_the_ledger_reclaims_a_dead_runs_holding_and_never_gives_one_twice(
    tmp_path: Path,
) -> None:
    ledger = Ledger(tmp_path)
    pool = Pool(("0", "1"), (0,), "AGENTFLOW_GPUS=0,1")
    for run in ("gone", "alive"):
        (tmp_path / "runs" / run / "steps").mkdir(parents=True)

    def holding(run: str, step: str) -> Holding:
        return Holding(run=run, run_dir=str(tmp_path / "runs" / run), step=step, attempt=1)

    a = ledger.take(holding("gone", "s"), 2, 0, pool)
    assert a is not None
    assert a.gpus == ["0", "1"]
    # The same attempt asking again (a resume) keeps what it has.
    assert ledger.take(holding("gone", "s"), 2, 0, pool) == a
    with hold_lock(tmp_path / "runs" / "alive" / "lock", lambda pid: RuntimeError()):
        # Nobody holds the lock of "gone" and its holding names no process marker
        # (Docker's): it is dead, and another run takes what it held.
        b = ledger.take(holding("alive", "t"), 1, 0, pool)
        assert b is not None
        assert b.gpus == ["0"]
        assert [h.run for h in ledger.held()] == ["alive"]
        # "alive" is driven (its lock is held): what it holds is not taken from it.
        assert ledger.take(holding("third", "u"), 2, 0, pool) is None  # one free, two wanted
        c = ledger.take(holding("third", "u"), 1, 0, pool)
        assert c is not None
        assert c.gpus == ["1"]
        assert ledger.give("alive") == [b]
    assert [h.run for h in ledger.held()] == ["third"]


def test_docker_gets_the_pools_gpus_by_id_and_each_step_its_own() -> None:
    # The container's device request (the real function the sandbox creates it with).
    [request] = device_requests(None, ("2", "3"))
    assert request["DeviceIDs"] == ["2", "3"]
    assert request["Count"] == 0
    assert request["Capabilities"] == [["gpu"]]
    [whole] = device_requests("all", None)
    assert whole["Count"] == -1
    assert device_requests(None, None) == []
    # Inside, CUDA counts the container's GPUs from 0 in the host's order.
    assert container_ordinals(("3", "2"), ["3"]) == ["1"]
    assert parse_gpus(" 0, 1,,1 ") == ("0", "1")
