"""The benchmark suite (``make bench``): every figure against a baseline measured in the
same run, median of several rounds. Prints the table, writes ``bench/results.json`` and
``bench/RESULTS.md``.

    python bench/run.py [--rounds 5] [--quick] [--only overhead,resume,...] [--no-docker]

``--quick`` is a smoke check (one round, smaller sizes, a 20 s idle step); its figures go
to ``bench/results-quick.json`` and leave the real results alone. ``--only`` measures some
benchmarks and merges their figures into the existing results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import memory
import monitor
import overhead
import parallel
import resume
import scaling
from common import Figure, docker_ready, remove_containers

HERE = Path(__file__).resolve().parent
NAMES = ["overhead", "parallel", "monitor", "resume", "scaling", "memory"]
ROUND_CAPS = {"resume": 3, "scaling": 3, "memory": 1}
"""Rounds at most, for the slow ones (a 200-step run to build, 5,000-step files, a
1,000-step run): the suite stays within about ten minutes on two cores."""


def machine() -> dict[str, Any]:
    def out(*argv: str) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip()

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    import agentflow  # the tree measured: this checkout's src/, or one on PYTHONPATH

    source = Path(agentflow.__file__).resolve().parent.parent
    return {
        "source": str(source),
        "other_source": source != (HERE.parent / "src").resolve(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "tmux": out("tmux", "-V"),
        "docker": out("docker", "version", "--format", "{{.Server.Version}}"),
        "commit": out("git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"),
        "dirty": bool(out("git", "-C", str(HERE.parent), "status", "--porcelain", "src")),
    }


def fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "—"
    digits = 3 if abs(x) < 1 else 2 if abs(x) < 100 else 0
    return f"{x:.{digits}f} {unit}".strip()


def table(figures: list[Figure]) -> str:
    rows = [
        "| figure | agentflow | baseline | ratio | target | result |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for f in figures:
        if f.target is None:
            target, result = "—", "info"
        else:
            bound = f"{f.target:g}" if f.target_on == "ratio" else fmt(f.target, f.unit)
            target = f"{f.target_on} ≤ {bound}"
            result = "**pass**" if f.passed else "**MISS**"
        baseline = f"{fmt(f.baseline, f.unit)} ({f.baseline_name})" if f.baseline_name else "—"
        ratio = "—" if f.ratio is None else f"{f.ratio:.2f}"
        rows.append(
            f"| {f.name} | {fmt(f.value, f.unit)} | {baseline} | {ratio} | {target} | {result} |"
        )
    return "\n".join(rows)


def markdown(figures: list[Figure], meta: dict[str, Any]) -> str:
    m = meta["machine"]
    notes = [f"- {f.name}: {f.note}" for f in figures if f.note]
    return "\n".join(
        [
            "# Benchmark results",
            "",
            f"Measured {meta['date']} on {m['cores']} cores ({m['cpu']}), "
            f"{m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}, {m['tmux']}, "
            f"Docker {m['docker'] or 'absent'}; "
            + (
                f"**agentflow from {m['source']}, not this checkout's src/**"
                if m["other_source"]
                else f"commit {m['commit']}{' with local changes' if m['dirty'] else ''}"
            )
            + ". Load average before and after: "
            f"{meta['load_before']} → {meta['load_after']}. Medians of up to "
            f"{meta['rounds']} rounds; the suite took {meta['duration_s']:.0f} s.",
            "",
            "Reproduce: `make bench` (after `scripts/setup` and `scripts/docker-setup`), "
            "or `.venv/bin/python bench/run.py --rounds N`; "
            "`make bench-quick` is a one-round smoke check.",
            "",
            "Each ratio is agentflow's median over the baseline's median, measured in the "
            "same run (lower is better).",
            "",
            table(figures),
            "",
            "Notes:",
            "",
            *notes,
            "",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds per figure (median)")
    ap.add_argument("--quick", action="store_true", help="one round, small sizes: smoke check")
    ap.add_argument("--only", default=",".join(NAMES), help=f"some of {','.join(NAMES)}")
    ap.add_argument("--no-docker", action="store_true", help="skip the Docker sandbox figures")
    args = ap.parse_args()
    chosen = [n for n in args.only.split(",") if n]
    unknown = set(chosen) - set(NAMES)
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    rounds = 1 if args.quick else args.rounds
    docker = not args.no_docker and docker_ready()
    if not docker and not args.no_docker:
        print("no Docker daemon or test image (scripts/docker-setup): Docker figures skipped")

    figures: list[Figure] = []
    raw_monitor: dict[str, Any] | None = None

    def per_round(name: str) -> int:
        return min(rounds, ROUND_CAPS.get(name, rounds))

    suites: dict[str, Callable[[], list[Figure]]] = {
        "overhead": lambda: overhead.run(per_round("overhead"), args.quick, docker),
        "parallel": lambda: parallel.run(per_round("parallel"), args.quick),
        "resume": lambda: resume.run(per_round("resume"), args.quick),
        "scaling": lambda: scaling.run(per_round("scaling"), args.quick),
        "memory": lambda: memory.run(per_round("memory"), args.quick),
    }
    started = time.monotonic()
    load_before = [round(x, 2) for x in os.getloadavg()]
    try:
        for name in chosen:
            t0 = time.monotonic()
            print(f"== {name}", flush=True)
            if name == "monitor":
                found, raw_monitor = monitor.run(rounds, args.quick)
            else:
                found = suites[name]()
            for f in found:
                verdict = "" if f.passed is None else (" pass" if f.passed else " MISS")
                ratio = "" if f.ratio is None else f" (ratio {f.ratio:.2f})"
                print(f"   {f.name}: {fmt(f.value, f.unit)}{ratio}{verdict}", flush=True)
            print(f"   [{time.monotonic() - t0:.0f} s]", flush=True)
            figures += found
    finally:
        remove_containers("label=agentflow.bench=1")

    out = HERE / ("results-quick.json" if args.quick else "results.json")
    previous = json.loads(out.read_text()) if out.exists() else {}
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "rounds": rounds,
        "machine": machine(),
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "duration_s": round(time.monotonic() - started, 1),
    }
    merged = {**previous.get("figures", {}), **{f.key: f.to_json() for f in figures}}
    results: dict[str, Any] = {**meta, "figures": merged}
    results["monitor"] = raw_monitor or previous.get("monitor")
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    # The table covers what was measured now and, with --only, the earlier figures too.
    shown = [_figure(v) for v in merged.values()]
    print()
    print(table(shown))
    print(f"\nwrote {out.relative_to(HERE.parent)}", end="")
    if not args.quick:
        (HERE / "RESULTS.md").write_text(markdown(shown, meta))
        print(" and bench/RESULTS.md", end="")
    print()
    missed = [f.key for f in shown if f.passed is False]
    if missed:
        print(f"targets missed: {', '.join(missed)}")


def _figure(data: dict[str, Any]) -> Figure:
    fields = {k: v for k, v in data.items() if k not in ("ratio", "passed")}
    return Figure(**fields)


if __name__ == "__main__":
    main()
