"""What saving the checkpoint costs per step, and how it grows with the workflow's size.

Chains of trivial steps (``run: "true"``, one at a time) through ``agentflow run``, local
sandbox, at each size:

- ms per step once running (first step's start to last step's end, from events.jsonl);
- bytes written to the checkpoint per step (``state.json``'s temporary file, its log
  ``state.log``), counted from the orchestrator's own ``write`` calls under ``strace``
  (a separate run, not timed);
- fsync calls per step (same run).

The target (issue 18): bytes per step that do not grow with the workflow's size.

    python bench/checkpoint.py [--sizes 50,500] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path

from common import AGENTFLOW, chain, median, private_home, workflow

_WRITE = re.compile(r"^(?:write|pwrite64)\((\d+)<([^>]*)>.*\)\s+=\s+(\d+)$")
_FSYNC = re.compile(r"^(?:fsync|fdatasync)\(")


def _per_step(n: int) -> float:
    with private_home() as h:
        wf = h.write("wf.yaml", workflow("ckpt", chain(n), max_parallel=1))
        h.measured("run", str(wf), "--ci", "--run-id", "c")
        lines = (h.run_dir("c") / "events.jsonl").read_text().splitlines()
    events = [json.loads(x) for x in lines]
    started = [e["ts"] for e in events if e["kind"] == "step_started"]
    finished = [e["ts"] for e in events if e["kind"] == "step_finished"]
    span = datetime.fromisoformat(finished[-1]) - datetime.fromisoformat(started[0])
    return span.total_seconds() / n * 1000


def _written(n: int) -> tuple[float, float]:
    """Checkpoint bytes and fsyncs per step, from strace of the orchestrator."""
    if shutil.which("strace") is None:
        return float("nan"), float("nan")
    out = Path(tempfile.mkdtemp()) / "trace"
    with private_home() as h:
        wf = h.write("wf.yaml", workflow("ckpt", chain(n), max_parallel=1))
        done = subprocess.run(
            ["strace", "-qq", "-y", "-e", "trace=write,pwrite64,fsync,fdatasync", "-o",
             str(out), AGENTFLOW, "run", str(wf), "--ci", "--run-id", "c"],
            cwd=h.work, env=h.env, check=False, capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"the traced run of {n} steps: {done.stdout[-2000:]}{done.stderr}")
    total = 0
    syncs = 0
    for line in out.read_text().splitlines():
        m = _WRITE.match(line)
        if m and (m.group(2).endswith((".state.json.tmp", "/state.log"))):
            total += int(m.group(3))
        if _FSYNC.match(line):
            syncs += 1
    shutil.rmtree(out.parent, ignore_errors=True)
    return total / n, syncs / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="50,500")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    print("| steps | ms/step | checkpoint bytes/step | fsyncs/step |")
    print("| ---: | ---: | ---: | ---: |")
    for n in [int(x) for x in args.sizes.split(",")]:
        ms = median([_per_step(n) for _ in range(args.rounds)])
        written, syncs = _written(n)
        print(f"| {n} | {ms:.1f} | {written:,.0f} | {syncs:.1f} |", flush=True)


if __name__ == "__main__":
    main()
