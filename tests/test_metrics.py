"""Metric series (``expect.metrics``): parsed from real step output, bounded, kept with the
run, as outputs, in status and in the reports."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agentflow import series
from agentflow.report.curves import RUN_COLOURS
from agentflow.series import MAX_POINTS, Series
from test_experience import terminal
from test_report_html import chromium

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


def test_a_step_taken_from_the_cache_keeps_the_curves_of_the_run_it_came_from(af: Env) -> None:
    wf = af.write(TRAIN.replace("  - id: train\n", "  - id: train\n    cache: {inputs: []}\n"))
    first = run_id_of(af.cli("run", str(wf)).stdout)
    res = af.cli("run", str(wf))
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    st = af.state(rid)["steps"]["train"]
    assert st["cached_from"] == first
    assert st["attempts"] == 0
    assert st["metrics"]["loss"]["last"] == 0.01
    saved = json.loads((af.run_dir(rid) / "metrics" / "train.json").read_text())
    assert saved["series"]["loss"]["count"] == 31
    assert saved["output_bytes"] == 0  # where the other run's reading stopped is not kept
    report = json.loads((af.run_dir(rid) / "report.json").read_text())
    step = next(s for s in report["steps"] if s["id"] == "train")
    assert {s["name"] for s in step["series"]} == {"loss", "acc"}


def test_a_series_of_10000_values_is_bounded_and_evenly_downsampled() -> None:
    s = Series(name="loss")
    for i in range(10_000):
        s.add(1.0 / (i + 1), t=1000.0 + i, step=i + 1)
        assert len(s.points) <= MAX_POINTS
    assert s.count == 10_000
    assert len(s.points) > MAX_POINTS // 2  # halved when full, not emptied
    first, last = s.points[0], s.points[-1]
    assert (first.step, first.v) == (1, 1.0)  # the first value stays
    assert (last.step, last.v, last.t) == (10_000, 1.0 / 10_000, 1000.0 + 9999)  # the latest
    gaps = {b.n - a.n for a, b in zip(s.points[:-2], s.points[1:-1], strict=True)}
    assert gaps == {s.stride}, "kept values are evenly spread"
    assert s.stride in (8, 16)
    # The short form the checkpoint keeps spans the whole series too.
    shape = s.shape()
    assert len(shape) == series.SHAPE_POINTS
    assert (shape[0], shape[-1]) == (1.0, 1.0 / 10_000)
    # It goes through JSON (the series file) unchanged.
    assert Series.model_validate_json(s.model_dump_json()) == s


def test_values_of_a_line_that_ends_in_a_later_read_are_read_once() -> None:
    lines, rest = series.split_complete("", "loss=0.5\nloss=0.2")
    assert (lines, rest) == (["loss=0.5"], "loss=0.2")
    lines, rest = series.split_complete(rest, "5\r 10/20 [")
    assert lines == ["loss=0.25"]
    patterns = {"loss": re.compile(r"loss=([0-9.eE+-]+)")}
    found, step = series.parse_lines(
        ["step 3/9 loss=nan", "step 4/9 loss=1e-3 loss=2e-3", "x loss=inf"],
        patterns,
        re.compile(r"step (\d+)/(\d+)"),
    )
    assert [(f.value, f.step) for f in found] == [(2e-3, 4)]  # no NaN, no infinity
    assert step == 4


JSONL = """\
version: 1
name: jl
steps:
  - id: fit
    run: |
      mkdir -p logs
      {
        printf '{"step": 10, "loss": 1.5}\\n'
        printf 'not json at all\\n'
        printf '\\x00\\xff\\xfe garbage\\n'
        printf '{"loss": "NaN"}\\n{"loss": 1e999}\\n{"loss": true}\\n[1, 2]\\n{"other": 3}\\n'
        printf '{"step": 20, "loss": 0.75, "eval": {"acc": 0.5}}\\n'
        python3 -c 'print("{\\"loss\\": " + "[" * 100000 + "]" * 100000 + "}")'
        printf '{"step": 30, "loss": 0.5, "eval": {"acc": 0.75}}\\n'
        printf '{"step": 40, "loss": 0.25'
      } > logs/metrics.jsonl
      ln -s /etc/passwd logs/leak.jsonl
    expect:
      metrics:
        loss: {jsonl: logs/metrics.jsonl, key: loss}
        acc: {jsonl: logs/metrics.jsonl, key: eval.acc}
        leak: {jsonl: logs/leak.jsonl, key: root}
"""


def test_garbage_lines_of_a_jsonl_file_are_skipped(af: Env) -> None:
    res = af.cli("run", str(af.write(JSONL)))
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    saved = series.load(af.run_dir(rid), "fit")
    loss = saved.series["loss"]
    # The unfinished last record is not read: a writer may still be writing it.
    assert [(p.step, p.v) for p in loss.points] == [(10, 1.5), (20, 0.75), (30, 0.5)]
    assert [(p.step, p.v) for p in saved.series["acc"].points] == [(20, 0.5), (30, 0.75)]
    assert "leak" not in saved.series  # a symlink is not followed
    st = af.state(rid)["steps"]["fit"]
    assert st["outputs"] == {"loss": "0.5", "acc": "0.75"}


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("'loss=([0-9.'", "invalid regular expression"),
        ("'loss=([0-9.]+) acc=([0-9.]+)'", "has 2 groups: give exactly one"),
        ("'loss=[0-9.]+'", "has 0 groups: give exactly one"),
    ],
)
def test_a_bad_metric_pattern_is_refused_at_load_naming_its_line(
    af: Env, pattern: str, why: str
) -> None:
    wf = af.write(
        "version: 1\nname: bad\nsteps:\n  - id: train\n    run: echo hi\n"
        f"    expect:\n      duration: 5m\n      metrics:\n        loss: {pattern}\n"
    )
    res = af.cli("run", str(wf))
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: {wf}:9:"), lines[0]
    assert "steps[0].expect.metrics.loss" in lines[0]
    assert why in lines[0]
    assert "Traceback" not in res.stderr


DESCENT = """\
version: 1
name: descent
steps:
  - id: fit
    run: |
      for i in $(seq 1 40); do echo "it $i/40 loss=$(awk "BEGIN{print 3/$i}")"; done
    expect:
      progress: 'it (\\d+)/(\\d+)'
      metrics: {loss: 'loss=([0-9.eE+-]+)'}
"""


def curve_pixels(img: Image.Image, colour: str, tolerance: int = 40) -> np.ndarray:
    """The (row, column) of every pixel of about ``colour``."""
    want = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
    near = (np.abs(np.asarray(img, dtype=np.int16) - want) <= tolerance).all(axis=2)
    return np.argwhere(near)


def test_report_html_draws_the_curve_in_chromium(af: Env, tmp_path: Path) -> None:
    res = af.cli("run", str(af.write(DESCENT)))
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    page = af.run_dir(rid) / "report.html"
    text = page.read_text()
    assert "<script" not in text
    assert "http" not in text.split("<body>")[1]  # nothing fetched
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (scripts/chromium-setup installs it)")
    # What the browser parsed: one polyline of 40 points, falling (SVG y grows downwards).
    dom = subprocess.run(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu",
         f"--user-data-dir={tmp_path / 'p1'}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=90, check=True,
    ).stdout  # fmt: skip
    found = re.findall(r'<polyline class="curve"[^>]*points="([^"]+)"', dom)
    assert len(found) == 1, dom[-2000:]
    xy = [tuple(map(float, p.split(","))) for p in found[0].split()]
    assert len(xy) == 40
    assert xy[0][0] < xy[-1][0]
    assert xy[0][1] < xy[-1][1]
    # And drawn: the screenshot has a line of the curve's colour from top left to bottom
    # right, wider and taller than any badge of that colour could be.
    img = screenshot_tall(browser, page, tmp_path)
    pixels = curve_pixels(img, RUN_COLOURS[0])
    assert len(pixels) > 300, "no curve drawn"
    rows, cols = pixels[:, 0], pixels[:, 1]
    assert cols.max() - cols.min() > 300
    assert rows.max() - rows.min() > 100
    left = rows[cols < cols.min() + 30].mean()
    right = rows[cols > cols.max() - 30].mean()
    assert left < right - 80, "the curve falls from left to right"


def screenshot_tall(browser: str, page: Path, tmp_path: Path) -> Image.Image:
    png = tmp_path / "shot.png"
    subprocess.run(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'p2'}", f"--screenshot={png}",
         "--window-size=1280,1400", page.as_uri()],
        capture_output=True, timeout=90, check=True,
    )  # fmt: skip
    return Image.open(png).convert("RGB")


def test_compare_html_overlays_the_curves_of_several_runs(af: Env, tmp_path: Path) -> None:
    wf = af.write(
        DESCENT.replace("3/$i", "${{ inputs.scale }}/$i").replace(
            "name: descent", "name: d\ninputs: {scale: {default: 3}}"
        )
    )
    rids = []
    for scale in ("3", "5", "8"):
        res = af.cli("run", str(wf), "--set", f"scale={scale}")
        assert res.returncode == 0, res.stdout + res.stderr
        rids.append(run_id_of(res.stdout))
    out = tmp_path / "curves.html"
    res = af.cli("compare", *rids, "--html", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    page = out.read_text()
    lines = re.findall(r'<polyline class="curve" data-label="([^"]+)"[^>]*stroke="([^"]+)"', page)
    assert [label for label, _ in lines] == rids  # one chart, a curve per run
    assert len({colour for _, colour in lines}) == 3
    # The last points: 3/40, 5/40, 8/40, one per run, in the caption.
    lasts = zip(rids, ("0.075", "0.125", "0.2"), strict=True)
    assert "last " + "; ".join(f"{r}: {v}" for r, v in lasts) in page
    # Two runs: the usual comparison on stdout, the curves too; more runs need --html.
    res = af.cli("compare", rids[0], rids[1], "--html", str(out))
    assert res.returncode == 0, res.stderr
    assert rids[1] in res.stdout
    assert len(re.findall(r"<polyline", out.read_text())) == 2
    res = af.cli("compare", *rids)
    assert res.returncode == 2
    assert "--html" in res.stderr


HALTING = """\
version: 1
name: halting
steps:
  - id: fit
    run: |
      for i in 1 2 3 4 5; do echo "loss=$i"; done
      printf 'loss=6'
      while [ ! -e release ]; do sleep 0.05; done
      echo 5
      for i in 7 8 9; do echo "loss=$i"; done
    expect:
      metrics: {loss: 'loss=([0-9.]+)'}
"""


def test_a_series_survives_the_orchestrators_death_and_resume(af: Env) -> None:
    proc = af.start("run", str(af.write(HALTING)), "--run-id", "m1")
    log = af.run_dir("m1") / "steps" / "fit" / "output.log"
    # Killed once it has looked at everything, the unfinished line `loss=6` included.
    af.wait_for(
        lambda: (
            log.read_text().endswith("loss=6")
            and af.state("m1")["steps"]["fit"]["output_bytes"] == log.stat().st_size
            and af.state("m1")["steps"]["fit"]["metrics"]["loss"]["count"] == 5
        ),
        message="five values read",
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = af.start("resume", "m1")
    af.wait_for(lambda: "run_resumed" in (af.run_dir("m1") / "events.jsonl").read_text())
    (af.workspace / "release").touch()
    out, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, out + err
    loss = series.load(af.run_dir("m1"), "fit").series["loss"]
    # Each value once, the line cut by the crash whole (`loss=6` + `5`).
    assert [p.v for p in loss.points] == [1, 2, 3, 4, 5, 65, 7, 8, 9]
    assert [p.step for p in loss.points] == list(range(1, 10))
    assert af.state("m1")["steps"]["fit"]["outputs"] == {"loss": "9"}


LIVE = """\
version: 1
name: live
steps:
  - id: train
    run: |
      for i in $(seq 1 60); do echo "epoch $i/60 loss=$(awk "BEGIN{print 4/$i}")"; sleep 0.2; done
    expect:
      progress: 'epoch (\\d+)/(\\d+)'
      metrics: {loss: 'loss=([0-9.eE+-]+)'}
"""


def test_the_live_view_shows_a_sparkline_and_the_last_value(af: Env, tmp_path: Path) -> None:
    af.write(LIVE)
    with terminal(af, tmp_path, "run", "wf.yaml", "--run-id", "sp") as term:

        def sparkline_row() -> str:
            rows = [x for x in term.screen().splitlines() if re.match(r"train\s+loss\s", x)]
            return rows[0] if rows else ""

        # While it runs: a falling line of bars, ending in the latest value.
        af.wait_for(lambda: len(re.findall("[▁▂▃▄▅▆▇█]", sparkline_row())) >= 5, message="bars")
        row = sparkline_row()
        assert "▶ running" in term.screen()
        bars = re.search("[▁▂▃▄▅▆▇█]+", row)
        assert bars is not None
        assert bars.group()[0] == "█"
        assert bars.group()[-1] in "▁▂"
        value = float(row.split()[-1])
        assert 4 / 60 <= value < 4 / 4
        af.wait_for(lambda: "EXIT=" in term.screen(), timeout=60, message="the run ends")
        assert re.search(r"train\s+loss\s+█[▁▂▃▄▅▆▇█]+\s+0\.06667", term.screen()), term.screen()
