"""Sweeps: a matrix's combinations (GitHub Actions' include/exclude rules), one run each,
at most max_parallel_runs at once, a failed one not stopping the others, ranked by the
objective with the best as a ready --set line."""

from __future__ import annotations

import json
import re

from agentflow.sweep import SweepRecord, expand

from conftest import Env

GRID = """\
version: 1
name: grid
inputs:
  a: {default: 1}
  b: {default: 1}
objective: {metric: score, goal: maximize}
max_parallel_runs: 2
steps:
  - id: compute
    run: |
      if [ ${{ inputs.a }} = 2 ] && [ ${{ inputs.b }} = 4 ]; then echo "bad pair"; exit 1; fi
      echo "{\\"score\\": $(( ${{ inputs.a }} * ${{ inputs.b }} ))}" > s-${{ inputs.a }}-${{ inputs.b }}.json
    outputs:
      score: {json: "s-${{ inputs.a }}-${{ inputs.b }}.json", key: score}
"""  # noqa: E501


def test_expand_follows_github_actions_include_and_exclude() -> None:
    assert expand({"a": [1, 2], "b": ["x"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    # exclude removes every combination that has all of an entry's values
    assert expand({"a": [1, 2], "b": [3, 4], "exclude": [{"a": 1}]}) == [
        {"a": 2, "b": 3},
        {"a": 2, "b": 4},
    ]
    # include adds keys where it contradicts no matrix value, else a combination of its own
    got = expand({"a": [1, 2], "include": [{"a": 1, "extra": "y"}, {"a": 3}]})
    assert got == [{"a": 1, "extra": "y"}, {"a": 2}, {"a": 3}]
    assert expand({"a": [1, 2], "include": [{"color": "red"}]}) == [
        {"a": 1, "color": "red"},
        {"a": 2, "color": "red"},
    ]
    assert expand({"include": [{"a": 1}, {"a": 2}]}) == [{"a": 1}, {"a": 2}]
    # The example of GitHub's documentation, with its documented result.
    example = {
        "fruit": ["apple", "pear"],
        "animal": ["cat", "dog"],
        "include": [
            {"color": "green"},
            {"color": "pink", "animal": "cat"},
            {"fruit": "apple", "shape": "circle"},
            {"fruit": "banana"},
            {"fruit": "banana", "animal": "cat"},
        ],
    }
    assert expand(example) == [
        {"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"},
        {"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"},
        {"fruit": "pear", "animal": "cat", "color": "pink"},
        {"fruit": "pear", "animal": "dog", "color": "green"},
        {"fruit": "banana"},
        {"fruit": "banana", "animal": "cat"},
    ]


def test_a_two_by_two_sweep_ranks_its_runs_and_survives_a_failed_one(af: Env) -> None:
    af.write(GRID.replace("steps:", "matrix: {a: [1, 2], b: [3, 4]}\nsteps:", 1))
    res = af.cli("run", "wf.yaml", "--sandbox", "local", timeout=180)
    assert res.returncode == 1, res.stdout + res.stderr  # one combination failed
    out = res.stdout
    assert "4 runs of grid, 2 at once" in out
    assert "a=2 b=4  failed (compute failed)" in out
    table = [line.split() for line in out.splitlines() if re.match(r"\d+ +a=", line)]
    ranking = [row[1:3] for row in table]
    assert ranking == [["a=2", "b=3"], ["a=1", "b=4"], ["a=1", "b=3"], ["a=2", "b=4"]]
    assert "best: a=2 b=3 (score 6," in out
    assert "--set a=2 --set b=3" in out
    assert "1 of 4 runs did not succeed" in out
    (record_path,) = (af.home / "sweeps").glob("*.json")
    record = SweepRecord.model_validate_json(record_path.read_text())
    assert [m.status for m in record.members] == ["succeeded", "succeeded", "succeeded", "failed"]
    for m in record.members:  # each combination is a run of its own, with its inputs
        assert m.run_id is not None
        state = json.loads((af.run_dir(m.run_id) / "state.json").read_text())
        assert state["inputs"] == {"a": m.values["a"], "b": m.values["b"]}


def test_matrix_on_the_command_line(af: Env) -> None:
    af.write(GRID)
    res = af.cli("run", "wf.yaml", "--sandbox", "local", "--matrix", "a=3,5", "--set", "b=2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "best: a=5 (score 10," in res.stdout
    bad = af.cli("run", "wf.yaml", "--matrix", "c=1,2")
    assert bad.returncode == 2
    assert "has no input 'c'" in bad.stderr


def test_a_matrix_is_checked_against_the_inputs_and_outputs(af: Env) -> None:
    af.write(
        GRID.replace("steps:", "matrix: {aa: [1]}\nsteps:", 1).replace(
            "metric: score", "metric: speed"
        )
    )
    res = af.cli("validate", "wf.yaml")
    assert res.returncode == 2
    assert "the matrix names 'aa', which is no input (did you mean 'a'?)" in res.stderr
    assert "no step has an output 'speed' to rank runs by (outputs: score)" in res.stderr


def test_a_sweep_ends_with_a_status_a_ranking_and_a_command_with_every_set() -> None:
    from agentflow.sweep import Member
    from agentflow.workflow.model import Objective

    def ended(*statuses: str) -> SweepRecord:
        members = [
            Member(index=i, values={"k": i}, status=s, score=float(i) if s == "succeeded" else None)
            for i, s in enumerate(statuses, 1)
        ]
        rec = SweepRecord(
            sweep_id="s", workflow="w", workflow_file="/w s/wf.yaml", members=members,
            objective=Objective(metric="loss", goal="minimize"), sets={"note": "a b"},
        )  # fmt: skip
        rec.conclude()
        return rec

    rec = ended("succeeded", "succeeded", "succeeded")
    assert (rec.status, rec.ranking) == ("succeeded", [1, 2, 3])  # minimize: smallest first
    # Quoted for a shell, the command line's --set first, then the combination.
    assert rec.best_command == "agentflow run '/w s/wf.yaml' --set 'note=a b' --set k=1"
    assert rec.finished_at is not None
    assert ended("succeeded", "failed").status == "failed"
    assert ended("failed", "blocked").status == "blocked"
    assert ended("succeeded", "interrupted", "blocked").status == "interrupted"  # resume has work
    assert ended("succeeded", "pending").status == "interrupted"
    assert ended("failed").best_command is None  # no run gave the objective
