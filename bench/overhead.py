"""Per-step overhead: trivial sequential steps (``run: "true"``) through ``agentflow run``
against a shell loop doing the bare minimum, in the same run, alternating round by round.

- Docker: agentflow's Docker sandbox (busybox image) against a loop of ``docker exec
  CONTAINER true`` on one container started beforehand (not timed).
- local: the local sandbox against a loop that starts each process in a new window of a
  tmux server of its own and waits for its done signal (``tmux wait-for``), the server's
  start and end included.

Two figures per sandbox: the whole run (agentflow's start-up, tmux session and container
included) against the whole loop; and the time per step once running, from the run's own
events (first step's start to last step's end, over the step count) against the loop's
time over its step count.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from common import BUSYBOX, Figure, chain, median, private_home, workflow

TMUX_LOOP = r"""
S=$1; N=$2
tmux -S "$S" new-session -d -s b -x 200 -y 50
for i in $(seq "$N"); do
  tmux -S "$S" new-window -d -t b: "true; tmux -S '$S' wait-for -S done$i"
  tmux -S "$S" wait-for "done$i"
done
tmux -S "$S" kill-server
"""
DOCKER_LOOP = 'for i in $(seq "$2"); do docker exec "$1" true; done'


def _timed_shell(script: str, *args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["bash", "-c", script, "bench", *args], check=True, capture_output=True)
    return time.perf_counter() - t0


def _agentflow(n: int, docker: bool) -> tuple[float, float, float]:
    """Wall time of the run, seconds per step from its first step's start to its last
    step's end (events.jsonl), and the orchestrator's CPU seconds (with its tmux and
    docker clients)."""
    with private_home() as h:
        wf = h.write("wf.yaml", workflow("overhead", chain(n), max_parallel=1, docker=docker))
        usage = h.measured("run", str(wf), "--ci", "--run-id", "o")
        lines = (h.run_dir("o") / "events.jsonl").read_text().splitlines()
    events = [json.loads(x) for x in lines]
    started = [e["ts"] for e in events if e["kind"] == "step_started"]
    finished = [e["ts"] for e in events if e["kind"] == "step_finished"]
    span = datetime.fromisoformat(finished[-1]) - datetime.fromisoformat(started[0])
    return usage.wall, span.total_seconds() / n, usage.cpu


def _baseline_container() -> str:
    name = f"agentflow-bench-{time.monotonic_ns()}"
    idle = "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"
    subprocess.run(
        ["docker", "run", "-d", "--init", "--network", "none", "--name", name,
         "--label", "agentflow.bench=1", BUSYBOX, "sh", "-c", idle],
        check=True, capture_output=True,
    )  # fmt: skip
    return name


def measure(docker: bool, steps: int, rounds: int) -> list[Figure]:
    sandbox = "docker" if docker else "local"
    container = _baseline_container() if docker else ""
    baseline: Callable[[int], float]
    if docker:
        what = f"`docker exec CONTAINER true` ×{steps}"

        def baseline(n: int) -> float:
            return _timed_shell(DOCKER_LOOP, container, str(n))

    else:
        what = f"{steps} processes in tmux windows, each awaited"
        sock_dir = Path(f"/tmp/afb-{time.monotonic_ns()}")
        sock_dir.mkdir()

        def baseline(n: int) -> float:
            return _timed_shell(TMUX_LOOP, str(sock_dir / "s"), str(n))

    walls, per_step, cpus, loops = [], [], [], []
    try:
        for _ in range(rounds):
            wall, per, cpu = _agentflow(steps, docker)
            walls.append(wall)
            per_step.append(1000 * per)
            cpus.append(cpu)
            loops.append(baseline(steps))
    finally:
        if docker:
            subprocess.run(["docker", "rm", "-f", container], capture_output=True, check=False)
        else:
            sock_dir.joinpath("s").unlink(missing_ok=True)
            sock_dir.rmdir()
    per_loop = [1000 * x / steps for x in loops]
    return [
        Figure(
            key=f"overhead_{sandbox}_run",
            name=f"{steps} sequential steps, {sandbox} sandbox: whole run",
            unit="s",
            value=median(walls),
            baseline=median(loops),
            baseline_name=what,
            target=1.5,
            rounds=rounds,
            samples=walls,
            baseline_samples=loops,
            note="agentflow's start-up (imports, tmux session"
            + (", container" if docker else "")
            + f") included; the orchestrator used {median(cpus):.2f} s of CPU",
        ),
        Figure(
            key=f"overhead_{sandbox}_per_step",
            name=f"time per step, {sandbox} sandbox",
            unit="ms",
            value=median(per_step),
            baseline=median(per_loop),
            baseline_name=f"the same loop, over {steps}",
            target=1.5,
            rounds=rounds,
            samples=per_step,
            baseline_samples=per_loop,
            note="from the run's events: first step's start to last step's end, over "
            f"{steps} (start-up excluded)",
        ),
    ]


def run(rounds: int, quick: bool, docker: bool) -> list[Figure]:
    steps = 20 if quick else 50
    figures = measure(False, steps, rounds)
    if docker:
        figures += measure(True, steps, rounds)
    return figures
