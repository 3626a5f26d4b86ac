"""Pruning in ``agentflow search``: the wall time of the same search (same seed, same trial
budget) with its pruner and with ``pruner: none`` (the series are still read, nothing is
stopped), each in a fresh home and workspace (no step cache shared), and what each found.

    python bench/search_prune.py                    # a synthetic trainer (about 2 minutes)
    python bench/search_prune.py --speculator       # workflows/speculator.yaml, shrunk
    python bench/search_prune.py --speculator --show --draft-steps 60   # the tests' inputs
    python bench/search_prune.py --trials 12 --rounds 1
    python bench/search_prune.py --speculator --sampler random   # the same trials both times

Besides the wall time, the table has the seconds spent in the pruned step (``train``,
``train-draft``) over all trials. The synthetic trainer prints ``loss=`` for 16 steps of
0.25 s, worse the farther its ``x`` is from 0.3, and scores ``-|x - 0.3|``. The
speculator search is the workflow's own ``search:`` (draft width, window, k; pruning on
the draft's loss), with the fast inputs of tests/test_speculator.py. With a pruner, TPE
also learns from pruned trials, so the two searches propose the same first trials and may
differ after the first prune.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

from common import AGENTFLOW, Home, median, private_home

ROOT = Path(__file__).resolve().parent.parent
FAST = {
    "target_steps": "40",
    "target_d": "64",
    "target_layers": "2",
    "samples": "30",
    "draft_steps": "300",
}
"""tests/test_speculator.py's fast inputs (but draft_hidden: the search chooses it), with a
longer draft training (``--draft-steps``): at 60 steps it lasts about 5 s, no more than a
trial's own start and stop, and pruning has nothing to save."""

TRAINER = """\
version: 1
name: trainer
inputs:
  x: {default: 0.5}
objective: {metric: score, goal: maximize}
search:
  trials: TRIALS
  parallel: 1
  seed: 11
  space:
    x: {range: [0, 1]}
  prune: {metric: loss, startup_trials: 3}
steps:
  - id: train
    run: |
      python3 -u -c "
      import time
      x = ${{ inputs.x }}
      for i in range(1, 17):
          print('loss=%g' % (abs(x - 0.3) * 10 + 1.0 / i), flush=True)
          time.sleep(0.25)
      print('score=%g' % -abs(x - 0.3))
      "
    expect: {metrics: {loss: 'loss=([0-9.eE+-]+)'}}
    outputs:
      score: {log: 'score=(\\S+)'}
"""


def _no_pruner(text: str) -> str:
    """The same search with ``pruner: none`` (its prune block as a flow map or a block)."""
    out, n = re.subn(r"(?m)^(\s+)pruner: \w+$", r"\1pruner: none", text, count=1)
    if n == 0:
        out, n = re.subn(r"prune: \{", "prune: {pruner: none, ", text, count=1)
    assert n == 1, "the workflow's search has no `prune:` to switch off"
    return out


def _sampler(text: str, sampler: str | None) -> str:
    """The search with another sampler (``random``: the same trials with and without
    pruning, whatever each one scored, so that only the pruning differs)."""
    if sampler is None:
        return text
    out, n = re.subn(r"(?m)^(\s+)seed: (\d+)$", rf"\1seed: \2\n\1sampler: {sampler}", text, count=1)
    assert n == 1, "the workflow's search has no `seed:` line to put the sampler after"
    return out


def _setup(
    h: Home, speculator: bool, trials: int, prune: bool, sampler: str | None
) -> tuple[Path, list[str]]:
    if speculator:
        shutil.copytree(ROOT / "workflows" / "tinylm", h.work / "tinylm")
        (h.work / "runbooks").mkdir()
        shutil.copy(ROOT / "docs" / "runbooks" / "speculator.md", h.work / "runbooks")
        text = (ROOT / "workflows" / "speculator.yaml").read_text()
        text = text.replace("../docs/runbooks", "runbooks")
        port = str(21000 + (hash(str(h.work)) % 20000))
        sets = [x for k, v in {**FAST, "port": port}.items() for x in ("--set", f"{k}={v}")]
        sets += ["--trials", str(trials)]
    else:
        text, sets = TRAINER.replace("TRIALS", str(trials)), []
    text = _sampler(text, sampler)
    path = h.write("wf.yaml", text if prune else _no_pruner(text))
    return path, sets


def _once(speculator: bool, trials: int, prune: bool, sampler: str | None) -> dict[str, object]:
    with private_home() as h:
        path, sets = _setup(h, speculator, trials, prune, sampler)
        t0 = time.perf_counter()
        done = subprocess.run(
            [AGENTFLOW, "search", str(path), "--ci", "--sandbox", "local", *sets],
            cwd=h.work, env=h.env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        if done.returncode not in (0, 1):  # 1: a trial failed (a draft too small): still
            raise RuntimeError(f"search exited {done.returncode}:\n{done.stdout}{done.stderr}")
        (record_path,) = (h.home / "sweeps").glob("*-search-*.json")
        record = json.loads(record_path.read_text())
        members = record["members"]
        step = "train-draft" if speculator else "train"
        busy = sum(_step_seconds(h.run_dir(m["run_id"]), step) for m in members if m["run_id"])
    scores = [m["score"] for m in members if m["score"] is not None]
    best = max(scores) if scores else None
    return {
        "wall": wall,
        "trials": len(members),
        "pruned": sum(m["status"] == "pruned" for m in members),
        "failed": sum(m["status"] not in ("succeeded", "pruned") for m in members),
        "best": best,
        "busy": busy,
        "table": done.stdout[done.stdout.rfind("\nsearch ") :],
    }


def _step_seconds(run_dir: Path, step: str) -> float:
    """How long the step ran in this run (0 when it did not: cached, or never reached)."""
    try:
        st = json.loads((run_dir / "state.json").read_text())["steps"][step]
        start, end = st.get("started_at"), st.get("finished_at")
    except (OSError, KeyError, ValueError):
        return 0.0
    if not start or not end:
        return 0.0
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speculator", action="store_true")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument(
        "--draft-steps", type=int, default=300,
        help="The speculator's draft_steps: long enough for pruning to matter.",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--sampler", choices=["tpe", "random"], default=None,
        help="Instead of the workflow's: random proposes the same trials in both searches.",
    )  # fmt: skip
    parser.add_argument("--show", action="store_true", help="Print each search's table.")
    args = parser.parse_args()
    rows = []
    for prune in (True, False):
        FAST["draft_steps"] = str(args.draft_steps)
        runs = [
            _once(args.speculator, args.trials, prune, args.sampler) for _ in range(args.rounds)
        ]
        if args.show:
            for r in runs:
                print(f"--- {'pruned' if prune else 'no pruning'}{r['table']}")
        rows.append((prune, runs))
    what = "speculator" if args.speculator else "synthetic trainer"
    what += f", sampler {args.sampler}" if args.sampler else ""
    print(f"\nsearch of {args.trials} trials, {what}, {args.rounds} round(s), median wall time")
    step = "train-draft" if args.speculator else "train"
    print(
        f"{'pruning':<8} {'wall s':>8} {step + ' s':>14} {'trials':>7} {'pruned':>7} "
        f"{'failed':>7} {'best':>10}"
    )
    walls = {}
    for prune, runs in rows:
        wall = median([float(str(r["wall"])) for r in runs])
        walls[prune] = wall
        last = runs[-1]
        best = last["best"]
        busy = median([float(str(r["busy"])) for r in runs])
        print(
            f"{'on' if prune else 'off':<8} {wall:>8.1f} {busy:>14.1f} {last['trials']!s:>7} "
            f"{last['pruned']!s:>7} {last['failed']!s:>7} "
            f"{'' if best is None else format(best, '.4g'):>10}"
        )
    saved = walls[False] - walls[True]
    print(f"saved by pruning: {saved:.1f} s ({saved / walls[False]:.0%} of the wall time)")


if __name__ == "__main__":
    main()
