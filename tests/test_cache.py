"""The step cache: a ``cache:`` step whose key is unchanged takes an earlier run's result
(outputs, files checked by hash) instead of running; a changed input runs exactly the
steps that read it and their dependents; a damaged or half-stored entry is a miss; a
secret's value never lands in the cache; gc keeps it within its limit.

"Ran nothing" is asserted by the attempts count: a step taken from the cache has
``attempts == 0`` (no attempt started) and ``cached_from`` set."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from conftest import Env, run_id_of

WORKFLOW = """\
version: 1
name: cachy
sandbox: {backend: local}
secrets: [TOKEN]
defaults:
  cache: {inputs: ["data/a.txt"]}
steps:
  - id: prep
    run: |
      mkdir -p out
      cat data/a.txt > out/prep.txt
      echo '{"n": 3}' > out/n.json
    artifacts: [out/prep.txt]
    outputs:
      n: {json: out/n.json, key: n}
  - id: train
    needs: [prep]
    run: echo "n=${{ steps.prep.outputs.n }}" > out/model.txt
    artifacts: [out/model.txt]
  - id: other
    cache: {inputs: ["data/b.txt"]}
    run: mkdir -p out && cat data/b.txt > out/other.txt
    artifacts: [out/other.txt]
"""


def _setup(af: Env) -> Path:
    af.env["TOKEN"] = "s3cr3t-value"  # a secret's name is part of the key, never its value
    (af.workspace / "data").mkdir()
    (af.workspace / "data" / "a.txt").write_text("alpha\n")
    (af.workspace / "data" / "b.txt").write_text("beta\n")
    return af.write(WORKFLOW)


def _run(af: Env, wf: Path, *args: str) -> tuple[str, dict[str, Any]]:
    res = af.cli("run", str(wf), "--ci", *args)
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    return rid, af.state(rid)["steps"]


def _cached(steps: dict[str, Any]) -> set[str]:
    return {k for k, st in steps.items() if st["cached_from"]}


def test_an_unchanged_workflow_runs_nothing_the_second_time(af: Env) -> None:
    wf = _setup(af)
    first, steps1 = _run(af, wf)
    assert not _cached(steps1)
    for path in ("out/prep.txt", "out/model.txt", "out/n.json", "out/other.txt"):
        (af.workspace / path).unlink()  # the files come back from the cache
    started = time.monotonic()
    second, steps2 = _run(af, wf)
    took = time.monotonic() - started
    for step_id, st in steps2.items():
        assert st["status"] == "succeeded", step_id
        assert st["cached_from"] == first, step_id
        assert st["attempts"] == 0, step_id  # no attempt started
        assert not (af.run_dir(second) / "steps" / step_id / "run.sh").exists()
    assert steps2["prep"]["outputs"] == {"n": "3"}
    assert (af.workspace / "out" / "model.txt").read_text() == "n=3\n"
    assert (af.workspace / "out" / "n.json").exists()
    assert took < 3 * len(steps2)
    report = (af.run_dir(second) / "report.md").read_text()
    assert f"cached from {first}" in report
    events = (af.run_dir(second) / "events.jsonl").read_text()
    assert '"step_cached"' in events
    # The restored artifacts are the second run's own: copied and in its manifest.
    manifest = json.loads((af.run_dir(second) / "artifacts.json").read_text())
    kept = manifest["steps"]["train"]["files"]
    assert [(a["path"], a["copied"]) for a in kept] == [("out/model.txt", True)]
    assert (af.run_dir(second) / kept[0]["stored"]).read_text() == "n=3\n"


def test_a_changed_input_file_runs_exactly_the_steps_that_read_it(af: Env) -> None:
    wf = _setup(af)
    _run(af, wf)
    (af.workspace / "data" / "a.txt").write_text("changed\n")
    _, steps = _run(af, wf)
    # prep reads a.txt; train needs prep (its key holds prep's); other reads only b.txt.
    assert _cached(steps) == {"other"}
    assert steps["prep"]["attempts"] == 1
    assert steps["train"]["attempts"] == 1
    assert (af.workspace / "out" / "prep.txt").read_text() == "changed\n"


def test_no_cache_runs_everything_and_resume_keeps_it(af: Env) -> None:
    wf = _setup(af)
    _run(af, wf)
    rid, steps = _run(af, wf, "--no-cache")
    assert not _cached(steps)
    assert all(st["attempts"] == 1 for st in steps.values())
    assert af.state(rid)["no_cache"] is True


def _entries(af: Env) -> list[Path]:
    return [p for p in (af.home / "cache").iterdir() if not p.name.startswith(".")]


def _entry_of(af: Env, step: str) -> Path:
    for entry in _entries(af):
        if json.loads((entry / "manifest.json").read_text())["step"] == step:
            return entry
    raise AssertionError(f"no cache entry for {step}")


def test_a_cached_file_that_does_not_hash_the_same_is_a_miss(af: Env) -> None:
    wf = _setup(af)
    _run(af, wf)
    entry = _entry_of(af, "prep")
    for stored in (entry / "files").iterdir():
        stored.write_bytes(b"tampered\n")
    _, steps = _run(af, wf)
    assert "prep" not in _cached(steps)
    assert steps["prep"]["attempts"] == 1
    assert (af.workspace / "out" / "prep.txt").read_text() == "alpha\n"


def test_a_store_killed_midway_is_never_used(af: Env) -> None:
    wf = _setup(af)
    _run(af, wf)
    entry = _entry_of(af, "other")
    # As SIGKILL leaves it: the folder still under its temporary name, or (a copy from
    # another tool) under its key with no manifest.
    entry.rename(entry.with_name(f".tmp-{entry.name[:16]}-dead"))
    prep = _entry_of(af, "prep")
    (prep / "manifest.json").unlink()
    _, steps = _run(af, wf)
    assert steps["prep"]["attempts"] == 1
    assert not steps["prep"]["cached_from"]
    assert steps["other"]["attempts"] == 1
    assert not steps["other"]["cached_from"]
    assert (af.workspace / "out" / "other.txt").read_text() == "beta\n"
    # The half entry was replaced by a whole one: the next run takes prep from the cache.
    assert json.loads((_entry_of(af, "prep") / "manifest.json").read_text())["files"]


def test_a_secret_never_lands_in_the_cache(af: Env) -> None:
    wf = af.write(
        """\
        version: 1
        name: leaky
        sandbox: {backend: local}
        secrets: [TOKEN]
        steps:
          - id: leak
            cache: {}
            run: mkdir -p out && echo "$TOKEN" > out/t.txt && echo "$TOKEN" > out/v.txt
            artifacts: [out/t.txt]
            outputs:
              v: {file: out/v.txt}
        """
    )
    af.env["TOKEN"] = "hunter2-secret-value"
    _, steps = _run(af, wf)
    assert steps["leak"]["status"] == "succeeded"
    for path in (af.home / "cache").rglob("*") if (af.home / "cache").exists() else []:
        if path.is_file():
            assert b"hunter2-secret-value" not in path.read_bytes(), path
    assert not (af.home / "cache").exists() or not _entries(af)
    _, again = _run(af, wf)
    assert again["leak"]["attempts"] == 1  # nothing was kept: it runs again


def test_gc_prunes_the_cache_over_its_limit(af: Env) -> None:
    wf = _setup(af)
    _run(af, wf)
    assert len(_entries(af)) == 3
    af.env["AGENTFLOW_CACHE_MAX"] = "8"  # bytes: room for one small entry at most
    res = af.cli("gc")
    assert res.returncode == 0, res.stdout + res.stderr
    left = _entries(af)
    assert len(left) <= 1
    assert sum(json.loads((e / "manifest.json").read_text())["size"] for e in left) <= 8
