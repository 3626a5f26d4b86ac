"""A 1,000-step run: the orchestrator's peak memory, and whether a step costs the same in
a big run as in a small one.

1,000 independent trivial steps, ``max_parallel: 16``, local sandbox, against the same
shape with 50 steps, in the same run:

- peak RSS of the ``agentflow run`` process (``ru_maxrss`` from ``wait4``: the process and
  the children it waited for, of which it is by far the largest);
- time per step from the run's first event to its last (start-up excluded), which stays
  flat when every part of the orchestrator's work per step is independent of the run's size.
"""

from __future__ import annotations

import json
from datetime import datetime

from common import Figure, StepSpec, median, private_home, workflow


def _once(steps: int, width: int) -> tuple[float, float, float]:
    """(peak RSS in MB, seconds per step between the first and last event, wall seconds)."""
    shape: list[StepSpec] = [(f"s{i}", "true", []) for i in range(steps)]
    with private_home() as h:
        wf = h.write("wf.yaml", workflow("memory", shape, max_parallel=width))
        usage = h.measured("run", str(wf), "--ci", "--run-id", "m")
        lines = (h.run_dir("m") / "events.jsonl").read_text().splitlines()
        first, last = (datetime.fromisoformat(json.loads(x)["ts"]) for x in (lines[0], lines[-1]))
    return usage.peak_mb, (last - first).total_seconds() / steps, usage.wall


def run(rounds: int, quick: bool) -> list[Figure]:
    big, small, width = (200 if quick else 1000), 50, 16
    rounds = max(1, min(rounds, 2))  # a big run takes a while; its memory hardly varies
    rss, per, walls, rss0, per0 = [], [], [], [], []
    for _ in range(rounds):
        m, p, w = _once(big, width)
        rss.append(m)
        per.append(p * 1000)
        walls.append(w)
        m0, p0, _ = _once(small, width)
        rss0.append(m0)
        per0.append(p0 * 1000)
    return [
        Figure(
            key=f"memory_{big}",
            name=f"orchestrator peak RSS, {big:,}-step run",
            unit="MB",
            value=median(rss),
            baseline=median(rss0),
            baseline_name=f"the same for a {small}-step run",
            target=1.5,
            rounds=rounds,
            samples=rss,
            baseline_samples=rss0,
            note=f"independent trivial steps, max_parallel {width}; "
            f"the run took {median(walls):.0f} s",
        ),
        Figure(
            key=f"per_step_{big}",
            name=f"time per step in a {big:,}-step run",
            unit="ms",
            value=median(per),
            baseline=median(per0),
            baseline_name=f"the same in a {small}-step run",
            target=1.5,
            rounds=rounds,
            samples=per,
            baseline_samples=per0,
            note="first event to last, over the step count (start-up excluded)",
        ),
    ]
