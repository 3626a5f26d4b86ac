"""Validate and plan: what reading a big workflow costs, and how it grows with its size.

- ``agentflow validate`` + ``agentflow plan`` of a 1,000-step workflow, wall time of the
  two commands, against the same two commands on a 1-step workflow (start-up alone).
- Growth: the per-step cost of validate + plan at 100, 1,000 and 5,000 steps, as chains
  and as fan-outs (one root, the rest needing it, one step needing them all). Timed
  in-process (the CLI commands through typer's test runner, in a fresh interpreter, after
  one warm-up call), so start-up noise does not swamp the 100-step figure. The per-step
  cost at n steps is ``(t(n) - t(1)) / (n - 1)`` (what a command costs whatever the size
  is left out); the figure is the per-step cost at 5,000 over the one at 100: about 1 when
  the cost grows linearly.

    python bench/scaling.py --inproc ROUNDS FILE...   (the timing child; prints JSON)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from common import Figure, chain, fan_out, median, private_home, workflow


def _inproc(rounds: int, paths: list[str]) -> dict[str, list[float]]:
    """Seconds per ``validate`` + ``plan`` of each of ``paths``, in this process, after
    one warm-up call on the first (lazy imports, first-use caches)."""
    from typer.testing import CliRunner

    from agentflow.cli import app

    runner = CliRunner()

    def once(path: str) -> float:
        t0 = time.perf_counter()
        for command in ("validate", "plan"):
            result = runner.invoke(app, [command, path])
            if result.exit_code != 0:
                raise RuntimeError(f"{command} {path}: {result.output[-500:]}")
        return time.perf_counter() - t0

    once(paths[0])
    return {path: [once(path) for _ in range(rounds)] for path in paths}


def _child(paths: list[Path], rounds: int, env: dict[str, str]) -> dict[str, list[float]]:
    out = subprocess.run(
        [sys.executable, __file__, "--inproc", str(rounds), *map(str, paths)],
        capture_output=True, text=True, check=True, env=env, cwd=paths[0].parent,
    )  # fmt: skip
    times: dict[str, list[float]] = json.loads(out.stdout)
    return times


def run(rounds: int, quick: bool) -> list[Figure]:
    sizes = [100, 1000] if quick else [100, 1000, 5000]
    figures = []
    with private_home() as h:
        one = h.write("one.yaml", workflow("one", chain(1)))
        big = h.write("big.yaml", workflow("big", chain(1000)))
        cli_one, cli_big = [], []
        for _ in range(rounds):
            cli_big.append(h.timed("validate", str(big)) + h.timed("plan", str(big)))
            cli_one.append(h.timed("validate", str(one)) + h.timed("plan", str(one)))
        figures.append(
            Figure(
                key="validate_plan_1000",
                name="`agentflow validate` + `agentflow plan`, 1,000-step chain",
                unit="s",
                value=median(cli_big),
                baseline=median(cli_one),
                baseline_name="the same on a 1-step workflow (start-up)",
                target=2.0,
                rounds=rounds,
                samples=cli_big,
                baseline_samples=cli_one,
                note="wall time of both commands, each a fresh process",
            )
        )
        for shape, make in (("chain", chain), ("fan-out", fan_out)):
            files = {n: h.write(f"{shape}-{n}.yaml", workflow(f"w{n}", make(n))) for n in sizes}
            times = _child([one, *files.values()], rounds, h.env)
            fixed = median(times[str(one)])
            per_step = {n: (median(times[str(files[n])]) - fixed) / (n - 1) for n in sizes}
            small, large = per_step[sizes[0]], per_step[sizes[-1]]
            figures.append(
                Figure(
                    key=f"validate_plan_growth_{shape}",
                    name=f"validate + plan per step, {shape}: {sizes[-1]:,} vs {sizes[0]} steps",
                    unit="ms/step",
                    value=1000 * large,
                    baseline=1000 * small,
                    baseline_name=f"per step at {sizes[0]} steps",
                    target=1.5,
                    rounds=rounds,
                    samples=[1000 * per_step[n] for n in sizes],
                    note=f"in-process, {1000 * fixed:.0f} ms per pair of commands on 1 step; "
                    "ms per further step at "
                    + ", ".join(f"{n:,}: {1000 * per_step[n]:.3f}" for n in sizes),
                )
            )
    return figures


if __name__ == "__main__":
    if sys.argv[1:2] == ["--inproc"]:
        print(json.dumps(_inproc(int(sys.argv[2]), sys.argv[3:])))
    else:
        for f in run(int(sys.argv[1]) if len(sys.argv) > 1 else 3, quick=False):
            print(f.name, f.value, f.baseline, f.ratio, f.note)
