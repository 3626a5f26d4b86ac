"""The peers benchmark's harness (bench/peers*.py), not its figures: every workload written
for each tool is a valid file of that tool (agentflow's own loader; Python that compiles and
carries the same steps; with bench/.peers-venv installed, Snakemake's dry run and a real
Luigi run), the floors run, and the tables say what a timeout or a skipped tool means."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agentflow.workflow.load import parse_workflow

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.append(str(BENCH))  # the bench scripts import each other as top-level modules

import peers  # noqa: E402
import peers_gen as gen  # noqa: E402
import peers_tools  # noqa: E402

WORKLOADS = gen.workloads(quick=False) + gen.workloads(quick=True)
VENV_BIN = peers_tools.VENV / "bin"
needs_peers = pytest.mark.skipif(
    not (peers_tools.VENV / ".installed").exists(),
    reason="bench/.peers-venv not installed (make bench-peers installs it)",
)


def _steps_in(script: str) -> list[list[object]]:
    """The STEPS a generated Python script carries (the JSON literal it loads)."""
    tree = ast.parse(script)
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "STEPS":
            call = node.value
            assert isinstance(call, ast.Call)
            literal = call.args[0]
            assert isinstance(literal, ast.Constant)
            steps: list[list[object]] = json.loads(literal.value)
            return steps
    raise AssertionError("no STEPS in the script")


@pytest.mark.parametrize("w", WORKLOADS, ids=lambda w: f"{w.key}-{w.size}")
def test_agentflow_workflow_is_valid_and_has_the_steps(w: gen.Workload) -> None:
    wf = parse_workflow(gen.agentflow_file(w), "wf.yaml")
    assert len(wf.steps) == w.size
    assert wf.max_parallel == w.parallel
    assert [list(s.needs) for s in wf.steps] == [needs for _, _, needs in w.steps]
    assert (wf.sandbox is not None and wf.sandbox.backend == "docker") == w.docker


@pytest.mark.parametrize("w", [w for w in WORKLOADS if w.peers], ids=lambda w: w.key)
def test_python_peers_compile_and_carry_the_steps(w: gen.Workload) -> None:
    for make in (gen.prefect_script, gen.luigi_script, gen.dagster_script):
        script = make(w)
        compile(script, f"{make.__name__}.py", "exec")
        assert _steps_in(script) == [list(s) for s in w.steps]
        assert f"PARALLEL = {w.parallel}\n" in script


def test_snakefile_has_one_rule_per_step_wired_by_its_needs() -> None:
    w = gen.workloads(quick=True)[1]  # the chain
    text = gen.snakefile(w)
    rules = re.findall(r"^rule (\w+):", text, re.M)
    assert rules == ["all", *(sid for sid, _, _ in w.steps)]
    last = w.steps[-1][0]
    assert f'rule all:\n    input: ["done/{last}"]' in text
    assert 'rule s1:\n    input: ["done/s0"]\n    output: touch("done/s1")' in text
    assert gen.snakemake_args(w)[-3:] == ["1", "--quiet", "all"]


def test_snakefile_keeps_braces_literal() -> None:
    w = gen.Workload("x", "x", [("a", "echo {x}", [])], 1)
    assert 'shell: "echo {{x}}"' in gen.snakefile(w)


def test_xargs_floor_runs_each_step_and_refuses_mixed_commands(tmp_path: Path) -> None:
    w = gen.Workload("x", "x", gen.independent(5, f"touch {tmp_path}/hit"), 5)
    assert gen.xargs_floor(w) == f"seq 5 | xargs -P5 -I{{}} touch {tmp_path}/hit"
    subprocess.run(["bash", "-c", gen.xargs_floor(w)], check=True)
    assert (tmp_path / "hit").exists()
    mixed = gen.Workload("y", "y", [("a", "true", []), ("b", "false", [])], 2)
    with pytest.raises(ValueError, match="one command"):
        gen.xargs_floor(mixed)


def test_tables_show_timeouts_skips_and_ratios() -> None:
    ws = gen.workloads(quick=True)[:2]
    one, chain = ws
    results: peers.Results = {
        "one": {
            "agentflow": peers.Series([1.0]),
            "luigi": peers.Series([0.5]),
            "dagster": peers.Series(status="timeout", detail="> 600 s"),
            "prefect": peers.Series(status="skipped"),
        },
        "chain": {
            "agentflow": peers.Series([2.9]),
            "luigi": peers.Series([0.5, 0.6, 2.4]),
            "dagster": peers.Series(status="timeout", detail="> 600 s"),
            "prefect": peers.Series(status="skipped"),
        },
    }
    text = peers.tables(results, ws, ["agentflow", "prefect", "luigi", "dagster"])
    n = chain.size
    assert f"| {chain.name} | 2.90 s ({1000 * 1.9 / (n - 1):.1f} ms/step) | skipped |" in text
    assert "0.600 s (5.3 ms/step)" in text  # luigi's median, its start-up taken off
    assert "| > 600 s |" in text
    # The ratios, against prefect (skipped), luigi and dagster (an upper bound, whole runs).
    assert f"| {one.name} |  | 2.00 | < 0.00 |" in text
    assert f"| {chain.name}, whole run |  | 4.83 | < 0.00 |" in text
    assert f"| {chain.name}, per step |  | 19.00 | — |" in text


@needs_peers
def test_snakemake_dry_run_plans_every_step(tmp_path: Path) -> None:
    w = gen.Workload("chain", "c", gen.chain(3), 1)
    (tmp_path / "Snakefile").write_text(gen.snakefile(w))
    argv = [str(VENV_BIN / "snakemake"), "--dry-run", *gen.snakemake_args(w)]
    out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert re.search(r"^total\s+4$", out.stdout, re.M), out.stdout  # 3 steps and `all`


@needs_peers
def test_luigi_script_runs_the_chain(tmp_path: Path) -> None:
    w = gen.Workload("chain", "c", gen.chain(3, lambda i: f"echo {i} >> order"), 1)
    (tmp_path / "flow.py").write_text(gen.luigi_script(w))
    subprocess.run([str(VENV_BIN / "python"), "flow.py"], cwd=tmp_path, check=True)
    assert (tmp_path / "order").read_text().split() == ["0", "1", "2"]
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == ["s0", "s1", "s2"]


def test_results_come_back_from_their_json() -> None:
    ws = gen.workloads(quick=True)
    results: peers.Results = {w.key: {} for w in ws}
    results["one"]["agentflow"] = peers.Series([1.0, 1.2], [0.5, 0.7])
    results["chain"]["agentflow"] = peers.Series([3.0], [0.6])
    results["many"]["dagster"] = peers.Series([], [4.0], "timeout", "> 120 s")
    data = json.loads(json.dumps({"workloads": peers.to_json(results, ws)}))
    again = peers.from_json(data)
    assert again == results
    assert data["workloads"]["chain"]["tools"]["agentflow"]["per_step_ms"] == round(
        1000 * (3.0 - 1.1) / (ws[1].size - 1), 3
    )
    names = ["agentflow", "dagster"]
    assert peers.tables(again, ws, names) == peers.tables(results, ws, names)
