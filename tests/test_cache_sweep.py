"""The step cache in a sweep: a step's key holds only the inputs it refers to, so runs that
differ in an input only a later step reads (the speculator's ``k``) take the earlier
steps from the cache; a service whose dependents all came from the cache is not started.

First a small speculator-shaped workflow (train, a real HTTP service, data generated
through it, a downstream step), then the speculator itself over ``k=2,4,8``, shrunk with
``--set`` as in test_speculator.py, on the local sandbox."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any

from test_speculator import FAST, WORKFLOWS

from conftest import Env, run_id_of

NOT_NEEDED = "not needed: its dependents came from the cache"

SHAPED = """\
version: 1
name: shaped
sandbox: {backend: local}
inputs:
  size: {default: 1}
  samples: {default: 2}
  k: {default: 4}
  port: {default: 0}
steps:
  - id: train
    run: mkdir -p out && echo "model ${{ inputs.size }} $(cat src/lib.txt)" > out/model.txt
    cache: {inputs: ["src/*.txt"]}
    artifacts: [out/model.txt]
  - id: slow
    run: sleep 0.5
  - id: serve
    needs: [train]
    service: true
    run: exec python3 -m http.server ${{ inputs.port }} --bind 127.0.0.1 --directory out
    ready: {http: "http://127.0.0.1:${{ inputs.port }}/model.txt", timeout: 30s, interval: 100ms}
  - id: generate
    needs: [serve, slow]
    run: >-
      python3 -c "import urllib.request as u;
      t = u.urlopen('http://127.0.0.1:${{ inputs.port }}/model.txt').read().decode();
      open('out/data.txt', 'w').write(t.strip() + ' x ${{ inputs.samples }}\\n')"
    cache: {inputs: ["src/*.txt"]}
    artifacts: [out/data.txt]
  - id: evaluate
    needs: [generate]
    run: echo "k=${{ inputs.k }} $(cat out/data.txt)" > out/result.txt
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(af: Env, wf: Path, *sets: str, timeout: float = 60) -> tuple[str, dict[str, Any], str]:
    args = [x for s in sets for x in ("--set", s)]
    res = af.cli("run", str(wf), "--ci", *args, timeout=timeout)
    rid = run_id_of(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr
    return rid, af.state(rid)["steps"], res.stdout


def _cached(steps: dict[str, Any]) -> set[str]:
    return {k for k, st in steps.items() if st["cached_from"]}


def test_an_input_only_a_later_step_reads_keeps_the_earlier_steps_cached(af: Env) -> None:
    (af.workspace / "src").mkdir()
    (af.workspace / "src" / "lib.txt").write_text("v1\n")
    wf = af.write(SHAPED)
    port = f"port={_free_port()}"
    first, steps, _ = _run(af, wf, port, "k=2")
    assert not _cached(steps)
    assert steps["serve"]["ready_at"] is not None

    # k is read by evaluate alone: train and generate come from the cache, in a workspace
    # without the files the first run left; the service they needed is not started.
    shutil.rmtree(af.workspace / "out")
    second, steps, out = _run(af, wf, port, "k=4")
    for step_id in ("train", "generate"):
        assert steps[step_id]["cached_from"] == first, step_id
        assert steps[step_id]["attempts"] == 0, step_id
    assert steps["serve"]["status"] == "skipped"
    assert steps["serve"]["message"] == NOT_NEEDED
    assert steps["serve"]["attempts"] == 0
    assert steps["slow"]["attempts"] == 1  # (not cached: generate waited for it)
    assert steps["evaluate"]["attempts"] == 1
    result = (af.workspace / "out" / "result.txt").read_text()
    assert result == "k=4 model 1 v1 x 2\n"
    # The live lines say it once: "cached from RUN", not "cached: cached from RUN".
    line = next(x for x in out.splitlines() if "generate" in x and "cached from" in x)
    assert line.count("cached from") == 1, line
    report = (af.run_dir(second) / "report.md").read_text()
    assert f"cached from {first}" in report

    # samples is read by generate: train is still cached, generate runs, so serve starts.
    _, steps, _ = _run(af, wf, port, "k=4", "samples=3")
    assert _cached(steps) == {"train"}
    assert steps["serve"]["ready_at"] is not None
    assert steps["generate"]["attempts"] == 1
    assert (af.workspace / "out" / "result.txt").read_text() == "k=4 model 1 v1 x 3\n"

    # size is read by train: everything after it runs again (its key is in theirs).
    _, steps, _ = _run(af, wf, port, "k=4", "samples=3", "size=2")
    assert not _cached(steps)
    assert steps["serve"]["ready_at"] is not None
    assert (af.workspace / "out" / "result.txt").read_text() == "k=4 model 2 v1 x 3\n"

    # A changed source file (a cache input of every step) runs them again too.
    (af.workspace / "src" / "lib.txt").write_text("v2\n")
    _, steps, _ = _run(af, wf, port, "k=4", "samples=3", "size=2")
    assert not _cached(steps)
    assert (af.workspace / "out" / "result.txt").read_text() == "k=4 model 2 v2 x 3\n"


def test_no_cache_starts_the_service(af: Env) -> None:
    (af.workspace / "src").mkdir()
    (af.workspace / "src" / "lib.txt").write_text("v1\n")
    wf = af.write(SHAPED)
    port = f"port={_free_port()}"
    _run(af, wf, port)
    res = af.cli("run", str(wf), "--ci", "--set", port, "--no-cache")
    assert res.returncode == 0, res.stdout + res.stderr
    steps = af.state(run_id_of(res.stdout))["steps"]
    assert not _cached(steps)
    assert steps["serve"]["ready_at"] is not None
    assert steps["generate"]["attempts"] == 1


# --- the speculator itself ------------------------------------------------------------------


def _speculator_copy(root: Path) -> Path:
    work = root / "workflows"
    work.mkdir(parents=True)
    text = (WORKFLOWS / "speculator.yaml").read_text().replace("../docs/runbooks", "runbooks")
    (work / "speculator.yaml").write_text(text)
    (work / "runbooks").mkdir()
    runbook = WORKFLOWS.parent / "docs" / "runbooks" / "speculator.md"
    (work / "runbooks" / "speculator.md").write_text(runbook.read_text())
    (work / "tinylm").mkdir()
    for f in (WORKFLOWS / "tinylm").glob("*.py"):
        (work / "tinylm" / f.name).write_text(f.read_text())
    return work / "speculator.yaml"


def test_a_speculator_sweep_over_k_trains_the_target_once(af: Env, tmp_path: Path) -> None:
    sets = [
        x for k, v in {**FAST, "port": str(_free_port())}.items() for x in ("--set", f"{k}={v}")
    ]
    upstream = ("train-target", "generate", "train-draft")
    runs: list[str] = []
    # The third run is in a fresh copy of the workflow: nothing left in its workspace.
    for k, root in (("2", tmp_path / "a"), ("4", tmp_path / "a"), ("8", tmp_path / "b")):
        wf = root / "workflows" / "speculator.yaml"
        if not wf.exists():
            _speculator_copy(root)
        res = af.cli(
            "run", str(wf), "--sandbox", "local", *sets, "--set", f"k={k}", "--ci", timeout=600
        )  # fmt: skip
        rid = run_id_of(res.stdout)
        steps = af.state(rid)["steps"]
        # Models this small may miss the 1.2× speedup check; nothing else may fail.
        assert res.returncode == 0 or steps["evaluate"]["message"].startswith(
            "success check metrics.speedup"
        ), res.stdout
        assert steps["evaluate"]["attempts"] == 1
        results = json.loads((wf.parent / ".speculator" / "results.json").read_text())
        assert results["k"] == int(k)
        assert results["lossless"] is True
        runs.append(rid)
        if not runs[:-1]:
            assert not _cached(steps)
            assert steps["serve-target"]["ready_at"] is not None
            continue
        for step_id in upstream:
            assert steps[step_id]["cached_from"] == runs[0], (step_id, res.stdout)
            assert steps[step_id]["attempts"] == 0, step_id
        assert steps["serve-target"]["status"] == "skipped"
        assert steps["serve-target"]["message"] == NOT_NEEDED
        report = (af.run_dir(rid) / "report.md").read_text()
        assert report.count(f"cached from {runs[0]}") >= len(upstream)
        assert (wf.parent / ".speculator" / "ckpt" / "target.npz").exists()
