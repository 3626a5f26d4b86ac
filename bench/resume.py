"""Resume: how long ``agentflow resume`` takes to get a half-done run going again.

A chain of 200 trivial steps, local sandbox: step 100 waits for a file. Once it runs,
the orchestrator is killed (SIGKILL), the file is made, and step 100 ends while nobody
watches. The figure is the time from starting ``agentflow resume`` to step 101's command
running (its marker file's mtime); the baseline is the same for a fresh ``agentflow run``
of that workflow: from its start to step 0's command running.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from pathlib import Path

from common import Figure, Home, chain, median, private_home, wait_for, workflow


def _command(i: int, half: int) -> str:
    if i == half:
        return "while [ ! -e gate ]; do sleep 0.01; done"
    if i in (0, half + 1):
        return f"touch marker-{i}"
    return "true"


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGKILL)
    proc.wait()


def _running(h: Home, run_id: str, step: str) -> bool:
    state = json.loads((h.run_dir(run_id) / "state.json").read_text())
    return bool(state["steps"][step]["status"] == "running")


def _since(t0: float, marker: Path, timeout: float) -> float:
    wait_for(marker.exists, timeout, str(marker))
    return marker.stat().st_mtime - t0


def _once(steps: int) -> tuple[float, float]:
    half = steps // 2
    with private_home() as h:
        wf = h.write("wf.yaml", workflow("resume", chain(steps, lambda i: _command(i, half))))
        t0 = time.time()
        first = h.start("run", str(wf), "--ci", "--run-id", "r")
        fresh = _since(t0, h.work / "marker-0", 60)
        wait_for(lambda: _running(h, "r", f"s{half}"), 300, f"step {half} running")
        _kill(first)  # the orchestrator dies; step `half` goes on in tmux
        (h.work / "gate").touch()
        wait_for((h.run_dir("r") / "steps" / f"s{half}" / "exit_code").exists, 60, "exit code")
        t0 = time.time()
        second = h.start("resume", "r", "--ci")
        try:
            resumed = _since(t0, h.work / f"marker-{half + 1}", 60)
        finally:
            _kill(second)
    return resumed, fresh


def run(rounds: int, quick: bool) -> list[Figure]:
    steps = 200
    resumed, fresh = [], []
    for _ in range(rounds):
        r, f = _once(steps)
        resumed.append(r)
        fresh.append(f)
    return [
        Figure(
            key="resume_200",
            name=f"`agentflow resume` of a {steps}-step run half done, to step {steps // 2 + 1}",
            unit="s",
            value=median(resumed),
            baseline=median(fresh),
            baseline_name="`agentflow run` of the same workflow, to its first step",
            target=1.5,
            rounds=rounds,
            samples=resumed,
            baseline_samples=fresh,
            note="the first orchestrator was killed with SIGKILL while step 100 ran",
        )
    ]
