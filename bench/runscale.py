"""Driving a run: the orchestrator's cost per step as the workflow grows (issue 18).

A chain of ``n`` trivial steps (each needs the one before) at 50, 500 and 2,000 steps (and
10,000 with ``--big``), and 1,000 independent steps 16 at once: milliseconds per step from
the run's first event to its last (start-up left out), and the ``agentflow run`` process's
peak RSS. Flat per-step cost means the orchestrator's work per step does not depend on the
run's size.

    python bench/runscale.py [--rounds 1] [--big] [--sizes 50,500,2000] [--wide 1000]
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime

from common import chain, private_home, workflow


def once(shape: str, n: int, width: int) -> tuple[float, float, float]:
    """(ms per step between the first and last event, peak RSS in MB, wall seconds)."""
    steps = chain(n) if shape == "chain" else [(f"s{i}", "true", []) for i in range(n)]
    with private_home() as h:
        wf = h.write("wf.yaml", workflow(shape, steps, max_parallel=width))
        usage = h.measured("run", str(wf), "--ci", "--run-id", "r")
        lines = (h.run_dir("r") / "events.jsonl").read_text().splitlines()
        first, last = (datetime.fromisoformat(json.loads(x)["ts"]) for x in (lines[0], lines[-1]))
    return 1000 * (last - first).total_seconds() / n, usage.peak_mb, usage.wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--sizes", default="50,500,2000")
    ap.add_argument("--big", action="store_true", help="also a 10,000-step chain")
    ap.add_argument("--wide", type=int, default=1000, help="independent steps, 16 at once")
    a = ap.parse_args()
    sizes = [int(x) for x in a.sizes.split(",") if x] + ([10000] if a.big else [])
    cases = [("chain", n, 4) for n in sizes] + ([("wide", a.wide, 16)] if a.wide else [])
    for r in range(a.rounds):
        for shape, n, width in cases:
            per, rss, wall = once(shape, n, width)
            load = os.getloadavg()[0]
            print(
                f"round {r} {shape} {n}: {per:.2f} ms/step, peak {rss:.0f} MB, "
                f"wall {wall:.1f} s, load {load:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
