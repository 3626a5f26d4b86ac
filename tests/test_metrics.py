"""Metric series (``expect.metrics``): parsed from real step output, bounded, kept with the
run, as outputs, in status and in the reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentflow import series
from agentflow.series import MAX_POINTS, Series

from conftest import Env, run_id_of

TRAIN = """\
version: 1
name: train
steps:
  - id: train
    run: |
      for i in $(seq 1 30); do
        printf 'epoch %d/30 loss=%s acc=0.%02d\\n' $i $(awk "BEGIN{print 2.0/$i}") $i
        [ $((i % 10)) -eq 0 ] && sleep 0.3
      done
      printf 'final loss=0.01'
    expect:
      progress: 'epoch (\\d+)/(\\d+)'
      metrics:
        loss: 'loss=([0-9.eE+-]+)'
        acc: 'acc=([0-9.]+)'
    outputs:
      acc: {log: 'acc=(0\\.0\\d)'}
  - id: use
    needs: [train]
    run: echo "loss was ${{ steps.train.outputs.loss }}, acc ${{ steps.train.outputs.acc }}"
"""


def test_series_from_real_output_become_outputs_and_survive_in_the_run(af: Env) -> None:
    res = af.cli("run", str(af.write(TRAIN)))
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    saved = json.loads((af.run_dir(rid) / "metrics" / "train.json").read_text())
    loss = saved["series"]["loss"]
    # 30 epochs and the final line without a newline (read when the step ended).
    assert loss["count"] == 31
    assert [p["step"] for p in loss["points"][:3]] == [1, 2, 3]  # the progress's step
    assert loss["points"][0]["v"] == 2.0
    assert loss["points"][-1]["v"] == 0.01
    assert loss["points"][-1]["step"] == 30  # the latest progress step
    state = af.state(rid)
    st = state["steps"]["train"]
    assert st["metrics"]["loss"]["last"] == 0.01
    assert len(st["metrics"]["loss"]["shape"]) == series.SHAPE_POINTS
    # The last values are outputs; a declared output of the same name wins.
    assert st["outputs"]["loss"] == "0.01"
    assert st["outputs"]["acc"] == "0.09"
    use = (af.run_dir(rid) / "steps" / "use" / "output.log").read_text()
    assert "loss was 0.01, acc 0.09" in use
    report = json.loads((af.run_dir(rid) / "report.json").read_text())
    step = next(s for s in report["steps"] if s["id"] == "train")
    assert {s["name"] for s in step["series"]} == {"loss", "acc"}
    status = af.cli("status", rid)
    assert status.returncode == 0, status.stderr
    line = next(x for x in status.stdout.splitlines() if "loss" in x)
    assert "█" in line, status.stdout
    assert line.rstrip().endswith("0.01"), status.stdout
