"""Benchmarks of the monitor: how fast a step's end is noticed, and what watching costs.

Each figure is measured side by side with the naive design (a loop that polls the step's
exit-code file at a fixed interval), in the same run:

- completion detection: time from a step's exit (its exit_code file) to its dependent's
  start, over a chain of steps of varied lengths and one long step whose check interval has
  backed off to a minute or more; p50 and p95.
- idle cost: CPU time and wake-ups (voluntary context switches) of the orchestrator while
  one long step runs; the naive poller (1 s interval) runs at the same time, in a process
  of its own, waiting for a step just as long.

    python bench/monitor.py [--long 130] [--chain 20] [--poll 5]

Prints a table and merges its figures into bench/results.json (``make bench`` runs it as
part of the suite).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from common import AGENTFLOW, Figure, Home, private_home

HERE = Path(__file__).resolve().parent


def chain_workflow(lengths: list[float]) -> str:
    lines = ["version: 1", "name: bench-chain", "steps:"]
    for i, s in enumerate(lengths):
        lines.append(f"  - id: s{i}")
        lines.append(f"    run: sleep {s:.2f}")
        if i:
            lines.append(f"    needs: [s{i - 1}]")
    return "\n".join(lines) + "\n"


def cpu_and_wakeups(pid: int) -> tuple[float, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    status = Path(f"/proc/{pid}/status").read_text()
    switches = int(status.split("voluntary_ctxt_switches:")[1].split()[0])
    return cpu, switches


def detection_latencies(home: Path, run_id: str, steps: int) -> list[float]:
    run = home / "runs" / run_id
    state = json.loads((run / "state.json").read_text())
    out = []
    for i in range(1, steps):
        ended = (run / "steps" / f"s{i - 1}" / "exit_code").stat().st_mtime
        started = datetime.fromisoformat(state["steps"][f"s{i}"]["started_at"]).timestamp()
        out.append(started - ended)
    return out


def run_agentflow(h: Home, wf: Path, run_id: str) -> tuple[float, int, float]:
    proc = subprocess.Popen(
        [AGENTFLOW, "run", str(wf), "--ci", "--run-id", run_id],
        cwd=h.work,
        env=h.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(3)  # past start-up: measure the watching, not the imports
    cpu0, sw0 = cpu_and_wakeups(proc.pid)
    t0 = time.monotonic()
    samples = (cpu0, sw0)
    while proc.poll() is None:
        try:
            samples = cpu_and_wakeups(proc.pid)
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.5)
    elapsed = time.monotonic() - t0
    proc.wait()
    return samples[0] - cpu0, samples[1] - sw0, elapsed


def naive_poller(exit_file: Path, interval: float, deadline: float) -> tuple[float, float, int]:
    """The naive design: poll a file at a fixed interval. Returns (latency, cpu, wake-ups)."""
    cpu0, sw0 = cpu_and_wakeups(os.getpid())
    while time.monotonic() < deadline:
        if exit_file.exists():
            latency = time.time() - exit_file.stat().st_mtime
            cpu1, sw1 = cpu_and_wakeups(os.getpid())
            return latency, cpu1 - cpu0, sw1 - sw0
        time.sleep(interval)
    raise RuntimeError("the step did not end")


def start_naive(work: Path, seconds: float) -> tuple[subprocess.Popen[str], ...]:
    """A step of ``seconds`` and, in a process of its own, the naive poller waiting for it."""
    exit_file = work / "naive-exit"
    step = subprocess.Popen(["sh", "-c", f"sleep {seconds}; touch {exit_file}"], text=True)
    poller = subprocess.Popen(
        [sys.executable, __file__, "--naive", str(exit_file), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    return step, poller


def measure(long: float, chain: int, poll: float) -> dict[str, Any]:
    rng = random.Random(7)
    with private_home() as h:
        # 1. completion detection over a chain of varied steps
        lengths = [rng.uniform(0.3, 3.0) for _ in range(chain)]
        run_agentflow(h, h.write("chain.yaml", chain_workflow(lengths)), "chain")
        lat = detection_latencies(h.home, "chain", chain)
        # 2. one long step (its check interval backs off to a minute and more), then a
        #    short one; the naive poller waits for a step as long, at the same time
        naive_step, naive = start_naive(h.work, long)
        cpu, wakeups, elapsed = run_agentflow(
            h, h.write("long.yaml", chain_workflow([long, 0.1])), "long"
        )
        long_latency = detection_latencies(h.home, "long", 2)[0]
        out, _ = naive.communicate(timeout=long + 60)
        naive_step.wait()
        naive_latency, naive_cpu, naive_wakeups = json.loads(out)
    naive_chain = [rng.uniform(0, poll) for _ in lat]  # uniform over the interval
    p95 = statistics.quantiles(lat, n=20)[-1] if len(lat) > 1 else lat[0]
    return {
        "detection_p50_s": round(statistics.median(lat), 4),
        "detection_p95_s": round(p95, 4),
        "detection_long_step_s": round(long_latency, 4),
        "naive_poll_interval_s": poll,
        "naive_detection_p50_s": round(statistics.median(naive_chain), 3),
        "naive_detection_long_step_s": round(naive_latency, 3),
        "idle_seconds": round(elapsed, 1),
        "idle_cpu_s": round(cpu, 3),
        "idle_cpu_percent": round(100 * cpu / elapsed, 3),
        "idle_wakeups": wakeups,
        "naive_1s_poll_cpu_s": round(naive_cpu, 3),
        "naive_1s_poll_wakeups": naive_wakeups,
    }


def figures(r: dict[str, Any], chain: int, long: float) -> list[Figure]:
    poll = r["naive_poll_interval_s"]
    idle = r["idle_seconds"]
    return [
        Figure(
            key="detection_p50",
            name=f"completion detection p50 ({chain} chained steps of 0.3–3 s)",
            unit="s",
            value=r["detection_p50_s"],
            baseline=r["naive_detection_p50_s"],
            baseline_name=f"naive {poll:g} s poll (uniform over the interval)",
            rounds=chain - 1,
        ),
        Figure(
            key="detection_p95",
            name="completion detection p95",
            unit="s",
            value=r["detection_p95_s"],
            baseline=0.95 * poll,
            baseline_name=f"naive {poll:g} s poll",
            target=0.5,
            target_on="value",
            rounds=chain - 1,
        ),
        Figure(
            key="detection_long_step",
            name=f"detection after a {long:g} s step (checks backed off)",
            unit="s",
            value=r["detection_long_step_s"],
            baseline=r["naive_detection_long_step_s"],
            baseline_name="naive 1 s poll, measured",
            target=0.5,
            target_on="value",
        ),
        Figure(
            key="idle_cpu",
            name=f"orchestrator CPU while one {long:g} s step runs",
            unit="% core",
            value=r["idle_cpu_percent"],
            baseline=round(100 * r["naive_1s_poll_cpu_s"] / idle, 3) if idle else None,
            baseline_name="naive 1 s poll, measured",
            target=1.0,
            target_on="value",
            note=f"{r['idle_cpu_s']} s CPU and {r['idle_wakeups']} wake-ups over {idle} s "
            f"(naive: {r['naive_1s_poll_cpu_s']} s, {r['naive_1s_poll_wakeups']} wake-ups)",
        ),
    ]


def run(rounds: int, quick: bool) -> tuple[list[Figure], dict[str, Any]]:
    """For the suite: one measurement (its chain gives the rounds of detection)."""
    long, chain = (20.0, 6) if quick else (130.0, 20)
    results = measure(long, chain, 5.0)
    return figures(results, chain, long), results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--long", type=float, default=130.0, help="seconds of the long step")
    ap.add_argument("--chain", type=int, default=20, help="steps in the chain")
    ap.add_argument("--poll", type=float, default=5.0, help="the naive poller's interval")
    ap.add_argument("--naive", nargs=2, metavar=("EXIT_FILE", "SECONDS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.naive:  # the naive poller's own process (see start_naive)
        exit_file, seconds = Path(args.naive[0]), float(args.naive[1])
        print(json.dumps(naive_poller(exit_file, 1.0, time.monotonic() + seconds + 30)))
        return
    results = measure(args.long, args.chain, args.poll)
    print(f"{'figure':38} {'agentflow':>12} {'naive':>12}")
    rows = [
        ("completion detection p50 (s)", "detection_p50_s", "naive_detection_p50_s"),
        ("completion detection p95 (s)", "detection_p95_s", None),
        ("detection after a long step (s)", "detection_long_step_s", "naive_detection_long_step_s"),
        ("idle CPU over the long step (s)", "idle_cpu_s", "naive_1s_poll_cpu_s"),
        ("idle CPU (% of one core)", "idle_cpu_percent", None),
        ("wake-ups over the long step", "idle_wakeups", "naive_1s_poll_wakeups"),
    ]
    for label, ours, theirs in rows:
        naive = results[theirs] if theirs else ""
        if ours == "detection_p95_s":
            naive = f"~{args.poll * 0.95:g}"
        print(f"{label:38} {results[ours]:>12} {naive:>12}")
    out = HERE / "results.json"
    merged = json.loads(out.read_text()) if out.exists() else {}
    merged["monitor"] = results
    out.write_text(json.dumps(merged, indent=2) + "\n")


if __name__ == "__main__":
    main()
