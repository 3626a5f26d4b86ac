"""agentflow against Snakemake, Prefect, Luigi and Dagster (``make bench-peers``): the same
workloads written natively for each tool, each step a separate process, and the floors
(bare tmux windows, ``xargs -P``, ``docker exec``) in the same interleaved rounds, the
tools' order rotated from round to round. Medians; the 1-minute load average is recorded
before each measurement. Prints the tables, writes ``bench/peers.json`` and
``bench/PEERS.md``.

    python bench/peers.py [--rounds 5] [--quick] [--skip dagster] [--timeout 600] [--no-docker]

``--quick`` is a smoke check of the harness (one round, smaller sizes): its figures go to
``bench/peers-quick.json`` and leave the real results alone. The peers are installed into
``bench/.peers-venv`` first (pinned in ``bench/peers-requirements.txt``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import peers_gen as gen
import peers_tools as tools
from common import docker_ready, remove_containers
from run import fmt, machine

HERE = Path(__file__).resolve().parent


@dataclass
class Series:
    """One tool's measurements of one workload."""

    samples: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    """The 1-minute load average before each measurement (failed ones too)."""
    status: str = "ok"
    """``ok``, ``timeout`` (not tried again after), ``failed`` (the same), ``skipped``."""
    detail: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


Results = dict[str, dict[str, Series]]
"""Workload key → tool → its series."""


def per_step(results: Results, w: gen.Workload, tool: str) -> float | None:
    """Seconds per step with the tool's start-up left out: ``(t(n) - t(1)) / (n - 1)``."""
    if not w.per_step_from or w.size < 2:
        return None
    whole = results[w.key].get(tool)
    start = results[w.per_step_from].get(tool)
    if whole is None or start is None or whole.median is None or start.median is None:
        return None
    return (whole.median - start.median) / (w.size - 1)


def measure(bench: tools.Bench, ws: list[gen.Workload], names: list[str], rounds: int) -> Results:
    results: Results = {w.key: {} for w in ws}
    print("== warm-up (not timed): one step with each tool", flush=True)
    for tool in names:
        out = bench.measure(tool, ws[0])
        if out.status != "ok":
            print(f"   {tool}: {out.status} {out.detail}", flush=True)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        print(f"== round {r + 1}/{rounds}: {', '.join(order)}", flush=True)
        for w in ws:
            for tool in order:
                if not bench.runs(tool, w):
                    continue
                series = results[w.key].setdefault(tool, Series())
                if series.status != "ok":
                    continue  # a timeout or a failure is not waited for again
                load = os.getloadavg()[0]
                out = bench.measure(tool, w)
                series.loads.append(round(load, 2))
                if out.wall is None:
                    series.status, series.detail = out.status, out.detail
                    shown = f"{out.status}: {out.detail}"
                else:
                    series.samples.append(out.wall)
                    shown = f"{out.wall:.2f} s"
                print(f"   {w.key:13} {tool:10} {shown} (load {load:.2f})", flush=True)
    return results


def cell(series: Series | None, per: float | None) -> str:
    if series is None:
        return ""
    if series.status in ("timeout", "skipped"):
        return series.detail or series.status
    if series.median is None:
        return "failed"
    text = f"{fmt(series.median, 's')}"
    if per is None:
        return text
    # Not above the tool's own 1-step run: its start-up varies more than the steps cost.
    return text + (f" ({1000 * per:.1f} ms/step)" if per > 0 else " (— ms/step)")


def ratio_cell(ours: float | None, theirs: Series | None, value: float | None, whole: bool) -> str:
    """agentflow's figure over the other's; against a timeout, the bound it gives (whole
    runs only: a per-step figure has no bound from it)."""
    if ours is None or theirs is None or theirs.status == "skipped":
        return ""
    if theirs.status == "timeout" and value is None:
        limit = float(theirs.detail.strip("> s"))
        return f"< {ours / limit:.2f}" if whole else "—"
    if value is None or value <= 0:
        return "—"
    return f"{ours / value:.2f}"


def tables(results: Results, ws: list[gen.Workload], names: list[str]) -> str:
    head = ["workload", *names, "load (1 min) before"]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for w in ws:
        by_tool = results[w.key]
        if not by_tool:
            continue
        loads = [x for s in by_tool.values() for x in s.loads]
        span = f"{min(loads):.1f}–{max(loads):.1f}" if loads else ""
        cells = [cell(by_tool.get(t), per_step(results, w, t)) for t in names]
        rows.append(f"| {w.name} | " + " | ".join(cells) + f" | {span} |")
    others = [t for t in names if t != "agentflow"]
    ratio_rows = [
        "| agentflow ÷ | " + " | ".join(others) + " |",
        "| --- |" + " --- |" * len(others),
    ]
    for w in ws:
        by_tool = results[w.key]
        ours = by_tool.get("agentflow")
        if ours is None or ours.median is None:
            continue
        whole = [
            ratio_cell(ours.median, by_tool.get(t), _median(by_tool.get(t)), True) for t in others
        ]
        mine = per_step(results, w, "agentflow")
        if mine is None or mine <= 0:
            ratio_rows.append(f"| {w.name} | " + " | ".join(whole) + " |")
            continue
        steps = [ratio_cell(mine, by_tool.get(t), per_step(results, w, t), False) for t in others]
        ratio_rows.append(f"| {w.name}, whole run | " + " | ".join(whole) + " |")
        ratio_rows.append(f"| {w.name}, per step | " + " | ".join(steps) + " |")
    return "\n".join(rows) + "\n\n" + "\n".join(ratio_rows)


def _median(series: Series | None) -> float | None:
    return None if series is None else series.median


def to_json(results: Results, ws: list[gen.Workload]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for w in ws:
        by_tool = {}
        for tool, s in results[w.key].items():
            per = per_step(results, w, tool)
            by_tool[tool] = {
                "median_s": None if s.median is None else round(s.median, 4),
                "per_step_ms": None if per is None else round(1000 * per, 3),
                "samples_s": [round(x, 4) for x in s.samples],
                "load1_before": s.loads,
                "status": s.status,
                "detail": s.detail,
            }
        out[w.key] = {
            "name": w.name,
            "steps": w.size,
            "at_once": w.parallel,
            "floor": tools.floor_name(w),
            "tools": by_tool,
        }
    return out


def markdown(table: str, ws: list[gen.Workload], meta: dict[str, Any]) -> str:
    m, v = meta["machine"], meta["versions"]
    floors = "; ".join(f"{w.name}: {tools.floor_name(w)}" for w in ws)
    return "\n".join(
        [
            "# agentflow and its peers",
            "",
            f"Measured {meta['date']} on {m['cores']} cores ({m['cpu']}), "
            f"{m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}, {m['tmux']}, "
            f"Docker {m['docker'] or 'absent'}; agentflow at commit {m['commit']}"
            f"{' with local changes' if m['dirty'] else ''}; "
            + ", ".join(f"{k} {x}" for k, x in v.items())
            + f". Medians of {meta['rounds']} interleaved rounds (the tools' order rotated "
            f"each round); the comparison took {meta['duration_s']:.0f} s; load average "
            f"before and after: {meta['load_before']} → {meta['load_after']}.",
            "",
            *_caveat(meta),
            "Reproduce: `make bench-peers` (after `scripts/setup` and `scripts/docker-setup`; "
            "it installs the pinned peers into `bench/.peers-venv`), or "
            "`.venv/bin/python bench/peers.py --rounds N [--skip dagster]`. Raw samples, "
            "with the load average before each, are in `bench/peers.json`.",
            "",
            table,
            "",
            "- Whole run: wall time of the tool's command, start-up included. Per step: "
            "`(t(n) - t(1 step)) / (n - 1)`, the tool's own 1-step run subtracted.",
            "- Each step is one shell process (`true`, `sleep`). agentflow: `agentflow run "
            "--ci` in a fresh home. Snakemake: one rule per step, a touched output, "
            "`--cores` = steps at once. Prefect: one task per step running `subprocess`, "
            "called in turn for the chain, submitted to a `ThreadPoolTaskRunner` otherwise; "
            "its ephemeral server on SQLite, offline. Luigi: one task per step, the local "
            "scheduler, `workers` = steps at once. Dagster: one op per step, the in-process "
            "executor for the chain, the multiprocess one otherwise.",
            f"- Floors: {floors}.",
            f"- A tool that passes {meta['timeout']:g} s on a workload is stopped and not "
            "tried there again; a ratio against it is then an upper bound.",
            "",
        ]
    )


def _caveat(meta: dict[str, Any]) -> list[str]:
    """A warning above the tables when they cannot be read as a measurement."""
    cores = meta["machine"]["cores"] or 1
    busy = max(meta["load_max"], meta["load_before"][0]) > cores
    if meta["rounds"] >= 3 and not busy:
        return []
    why = [f"{meta['rounds']} round{'s' if meta['rounds'] > 1 else ''}"] * (meta["rounds"] < 3)
    if busy:
        why.append(f"a 1-minute load average up to {meta['load_max']:.1f} on {cores} cores")
    return [f"**Indicative only** ({' and '.join(why)}): re-measure on an idle machine.", ""]


def _load_max(results: Results) -> float:
    loads = [x for by_tool in results.values() for s in by_tool.values() for x in s.loads]
    return max(loads, default=0.0)


def from_json(data: dict[str, Any]) -> Results:
    """The results a ``peers.json`` holds (``--render`` makes the tables again from it)."""
    return {
        key: {
            tool: Series(t["samples_s"], t["load1_before"], t["status"], t["detail"])
            for tool, t in row["tools"].items()
        }
        for key, row in data["workloads"].items()
    }


def report(results: Results, ws: list[gen.Workload], meta: dict[str, Any], out: Path) -> None:
    """Print the tables; write ``out`` (the JSON) and, for a real run, bench/PEERS.md."""
    shown = [t for t in tools.TOOLS if any(t in results[w.key] for w in ws)]
    table = tables(results, ws, shown)
    data = {**meta, "workloads": to_json(results, ws)}
    out.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    print()
    print(table)
    print(f"\nload average before and after: {meta['load_before']} → {meta['load_after']}")
    print(f"wrote {out.relative_to(HERE.parent)}", end="")
    if not meta["quick"]:
        (HERE / "PEERS.md").write_text(markdown(table, ws, meta))
        print(" and bench/PEERS.md", end="")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians)")
    ap.add_argument("--quick", action="store_true", help="one round, small sizes: smoke check")
    ap.add_argument("--skip", default="", help=f"tools to leave out, of {','.join(tools.PEERS)}")
    ap.add_argument(
        "--timeout", type=float, help="seconds per run of a tool (600; 120 with --quick)"
    )
    ap.add_argument("--no-docker", action="store_true", help="leave out the Docker rows")
    ap.add_argument(
        "--render", action="store_true", help="measure nothing: the tables from bench/peers.json"
    )
    args = ap.parse_args()
    out = HERE / ("peers-quick.json" if args.quick else "peers.json")
    if args.render:
        data = json.loads(out.read_text())
        meta = {k: v for k, v in data.items() if k != "workloads"}
        results = from_json(data)
        meta["load_max"] = _load_max(results)
        report(results, gen.workloads(data["quick"]), meta, out)
        return
    skipped = [t for t in args.skip.split(",") if t]
    unknown = set(skipped) - set(tools.PEERS)
    if unknown:
        ap.error(f"unknown tool(s) to skip: {', '.join(sorted(unknown))}")
    rounds = 1 if args.quick else args.rounds
    timeout = args.timeout or (120 if args.quick else 600)
    docker = not args.no_docker and docker_ready()
    if not docker and not args.no_docker:
        print("no Docker daemon or test image (scripts/docker-setup): Docker rows left out")
    venv = tools.ensure_venv()
    names = [t for t in tools.TOOLS if t not in skipped]
    ws = gen.workloads(args.quick)
    started = time.monotonic()
    load_before = [round(x, 2) for x in os.getloadavg()]
    try:
        with tools.Bench(venv, timeout, docker) as bench:
            results = measure(bench, ws, names, rounds)
    finally:
        remove_containers("label=agentflow.bench=1")
    for tool in skipped:
        for w in ws:
            if w.peers:
                results[w.key][tool] = Series(status="skipped")
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "rounds": rounds,
        "timeout": timeout,
        "machine": machine(),
        "versions": tools.versions(venv),
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "load_max": _load_max(results),
        "duration_s": round(time.monotonic() - started, 1),
    }
    report(results, ws, meta, out)


if __name__ == "__main__":
    main()
