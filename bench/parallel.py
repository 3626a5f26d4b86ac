"""Parallelism: 32 independent ``sleep 2`` steps with ``max_parallel: 32``, local sandbox,
against the ideal (every step at once: 2 s).

The figure is the wall time of the whole ``agentflow run`` (start-up included); the note
gives the span from the first step's start to the last step's end, from ``state.json``.
"""

from __future__ import annotations

import json
from datetime import datetime

from common import Figure, StepSpec, median, private_home, workflow


def _once(width: int, seconds: float) -> tuple[float, float]:
    steps: list[StepSpec] = [(f"p{i}", f"sleep {seconds:g}", []) for i in range(width)]
    with private_home() as h:
        wf = h.write("wf.yaml", workflow("parallel", steps, max_parallel=width))
        wall = h.timed("run", str(wf), "--ci", "--run-id", "par")
        state = json.loads((h.run_dir("par") / "state.json").read_text())
    starts = [datetime.fromisoformat(s["started_at"]) for s in state["steps"].values()]
    ends = [datetime.fromisoformat(s["finished_at"]) for s in state["steps"].values()]
    return wall, (max(ends) - min(starts)).total_seconds()


def run(rounds: int, quick: bool) -> list[Figure]:
    width, seconds = 32, 2.0
    walls, spans = [], []
    for _ in range(rounds):
        wall, span = _once(width, seconds)
        walls.append(wall)
        spans.append(span)
    return [
        Figure(
            key="parallel_32",
            name=f"{width} × `sleep {seconds:g}`, max_parallel {width}: whole run",
            unit="s",
            value=median(walls),
            baseline=seconds,
            baseline_name=f"the ideal: {seconds:g} s",
            target=1.5,
            rounds=rounds,
            samples=walls,
            note=f"first start to last end: {median(spans):.2f} s (median)",
        )
    ]
