"""Benchmarks of the monitor: how fast a step's end is noticed, and what watching costs.

Each figure is measured side by side with the naive design (a loop that polls the step's
exit-code file at a fixed interval), in the same run:

- completion detection: time from a step's exit (its exit_code file) to its dependent's
  start, over a chain of steps of varied lengths and one long step whose check interval has
  backed off to a minute or more; p50 and p95.
- idle cost: CPU time and wake-ups (voluntary context switches) of the orchestrator while
  one long step runs.

    python bench/monitor.py [--long 130] [--chain 20] [--poll 5]

Prints a table and merges its figures into bench/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
AGENTFLOW = str(Path(sys.executable).parent / "agentflow")


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


def run_agentflow(workdir: Path, home: Path, wf: Path, run_id: str) -> tuple[float, int, float]:
    env = {**os.environ, "AGENTFLOW_HOME": str(home)}
    proc = subprocess.Popen(
        [AGENTFLOW, "run", str(wf), "--ci", "--run-id", run_id],
        cwd=workdir,
        env=env,
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--long", type=float, default=130.0, help="seconds of the long step")
    ap.add_argument("--chain", type=int, default=20, help="steps in the chain")
    ap.add_argument("--poll", type=float, default=5.0, help="the naive poller's interval")
    args = ap.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        home = work / "home"
        # 1. completion detection over a chain of varied steps
        lengths = [rng.uniform(0.3, 3.0) for _ in range(args.chain)]
        chain = work / "chain.yaml"
        chain.write_text(chain_workflow(lengths))
        run_agentflow(work, home, chain, "chain")
        lat = detection_latencies(home, "chain", args.chain)
        # 2. one long step (its check interval backs off to a minute and more), then a short
        long_wf = work / "long.yaml"
        long_wf.write_text(chain_workflow([args.long, 0.1]))
        cpu, wakeups, elapsed = run_agentflow(work, home, long_wf, "long")
        long_latency = detection_latencies(home, "long", 2)[0]
        # the naive poller, same run: a process that sleeps for the same step
        exit_file = work / "naive-exit"
        proc = subprocess.Popen(
            ["sh", "-c", f"sleep {args.long}; touch {exit_file}"], stdout=subprocess.DEVNULL
        )
        time.sleep(3)
        naive_latency, naive_cpu, naive_wakeups = naive_poller(
            exit_file, 1.0, time.monotonic() + args.long + 30
        )
        proc.wait()
        naive_chain = [rng.uniform(0, args.poll) for _ in lat]  # uniform over the interval
    p95 = statistics.quantiles(lat, n=20)[-1]
    results = {
        "detection_p50_s": round(statistics.median(lat), 4),
        "detection_p95_s": round(p95, 4),
        "detection_long_step_s": round(long_latency, 4),
        "naive_poll_interval_s": args.poll,
        "naive_detection_p50_s": round(statistics.median(naive_chain), 3),
        "naive_detection_long_step_s": round(naive_latency, 3),
        "idle_seconds": round(elapsed, 1),
        "idle_cpu_s": round(cpu, 3),
        "idle_cpu_percent": round(100 * cpu / elapsed, 3),
        "idle_wakeups": wakeups,
        "naive_1s_poll_cpu_s": round(naive_cpu, 3),
        "naive_1s_poll_wakeups": naive_wakeups,
    }
    print(f"{'figure':38} {'agentflow':>12} {'naive':>12}")
    print(
        f"{'completion detection p50 (s)':38} {results['detection_p50_s']:>12} "
        f"{results['naive_detection_p50_s']:>12}"
    )
    print(
        f"{'completion detection p95 (s)':38} {results['detection_p95_s']:>12} "
        f"{'~' + str(args.poll * 0.95):>12}"
    )
    print(
        f"{'detection after a long step (s)':38} {results['detection_long_step_s']:>12} "
        f"{results['naive_detection_long_step_s']:>12}"
    )
    print(
        f"{'idle CPU over the long step (s)':38} {results['idle_cpu_s']:>12} "
        f"{results['naive_1s_poll_cpu_s']:>12}"
    )
    print(f"{'idle CPU (% of one core)':38} {results['idle_cpu_percent']:>12}")
    print(
        f"{'wake-ups over the long step':38} {results['idle_wakeups']:>12} "
        f"{results['naive_1s_poll_wakeups']:>12}"
    )
    out = HERE / "results.json"
    merged = json.loads(out.read_text()) if out.exists() else {}
    merged["monitor"] = results
    out.write_text(json.dumps(merged, indent=2) + "\n")


if __name__ == "__main__":
    main()
