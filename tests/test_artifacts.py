"""Artifacts: the files a step lists are copied (or, when large, recorded) with their
sha256 when it succeeds, never read from outside the workspace, and listed in the reports."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from agentflow.artifacts import ArtifactError, Collector, human_size

from conftest import TEST_IMAGE, Env, run_id_of


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest(af: Env, rid: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((af.run_dir(rid) / "artifacts.json").read_text())
    return data


COLLECT = """\
version: 1
name: keep
steps:
  - id: make
    run: |
      mkdir -p out/sub ckpt
      echo hello > out/a.txt
      echo world > out/sub/b.txt
      head -c 5000 /dev/zero > ckpt/big.bin
      head -c 10 /dev/zero > ckpt/small.bin
      echo notes > ckpt/notes.txt
      ln -s {outside} out/leak
      echo '{{"speedup": 1.25}}' > results.json
    artifacts: [out, "ckpt/*.bin", results.json]
  - id: after
    needs: [make]
    run: echo fine
"""


def test_artifacts_are_copied_hashed_and_listed_in_the_reports(af: Env, tmp_path: Path) -> None:
    outside = tmp_path / "host-secret.txt"
    outside.write_text("not for the run\n")
    af.env["AGENTFLOW_ARTIFACT_COPY_MAX"] = "1kB"
    res = af.cli("run", str(af.write(COLLECT.format(outside=outside))), "--ci")
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    run = af.run_dir(rid)

    kept = manifest(af, rid)["steps"]["make"]
    assert kept["attempt"] == 1
    assert kept["patterns"] == ["out", "ckpt/*.bin", "results.json"]
    files = {f["path"]: f for f in kept["files"]}
    assert sorted(files) == [
        "ckpt/big.bin",
        "ckpt/small.bin",
        "out/a.txt",
        "out/sub/b.txt",
        "results.json",
    ]
    for path, f in files.items():
        assert f["sha256"] == sha256(af.workspace / path), path
        assert f["size"] == (af.workspace / path).stat().st_size, path
    # Above the copy limit: recorded by size and hash, not copied.
    assert files["ckpt/big.bin"]["copied"] is False
    assert files["ckpt/big.bin"]["stored"] is None
    assert not (run / "artifacts" / "make" / "ckpt" / "big.bin").exists()
    for path in ("out/a.txt", "out/sub/b.txt", "ckpt/small.bin", "results.json"):
        assert files[path]["copied"] is True
        assert files[path]["stored"] == f"artifacts/make/{path}"
        assert (run / files[path]["stored"]).read_bytes() == (af.workspace / path).read_bytes()
    # The link out of the workspace, matched by the folder, is passed over, never read.
    assert kept["skipped"] == [{"path": "out/leak", "reason": "leads outside the workspace"}]
    assert not any("not for the run" in p.read_text() for p in run.rglob("*") if p.is_file())
    assert not (run / "artifacts" / "after").exists()

    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    said = next(e for e in events if e["kind"] == "artifacts")
    assert said["step"] == "make"
    assert said["message"].startswith("5 files, ")
    assert "recorded only (over the copy limit): ckpt/big.bin (5 kB)" in said["message"]
    assert "make                 artifacts: 5 files" in res.stdout

    report = json.loads((run / "report.json").read_text())
    steps = {s["id"]: s for s in report["steps"]}
    assert steps["make"]["artifacts"] == kept["files"]
    assert steps["after"]["artifacts"] == []
    md = (run / "report.md").read_text()
    section = md.split("## Artifacts\n", 1)[1].split("\n## ", 1)[0]
    short = files["out/a.txt"]["sha256"][:16]
    assert re.search(
        rf"\| make +\| out/a\.txt +\| +6 B \| {short} +\| artifacts/make/out/a\.txt ", section
    )
    assert re.search(
        r"\| ckpt/big\.bin +\| 5 kB \| \w{16} +\| recorded only \(over the copy", section
    )
    html = (run / "report.html").read_text()
    assert "<h2>Artifacts</h2>" in html
    assert f'title="{files["results.json"]["sha256"]}"' in html
    # `agentflow report` makes the same section again from the run directory.
    again = af.cli("report", rid)
    assert "## Artifacts" in again.stdout
    assert "artifacts/make/results.json" in again.stdout


def test_a_pattern_that_matches_nothing_fails_the_step(af: Env) -> None:
    wf = af.write(
        """\
        version: 1
        name: nothing
        steps:
          - id: train
            run: mkdir -p ckpt && echo x > ckpt/model.pt
            artifacts: [ckpt/model.pt, "ckpt/*.npz"]
          - id: after
            needs: [train]
            run: echo never
        """
    )
    res = af.cli("run", str(wf), "--ci")
    assert res.returncode == 1, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    steps = af.state(rid)["steps"]
    assert steps["train"]["status"] == "failed"
    assert steps["train"]["exit_code"] == 0
    assert steps["train"]["message"] == "artifacts: ckpt/*.npz matches nothing"
    assert steps["after"]["status"] == "skipped"
    # Nothing half-collected: no copy, no manifest entry.
    assert not (af.run_dir(rid) / "artifacts" / "train").exists()
    assert not (af.run_dir(rid) / "artifacts.json").exists()
    md = (af.run_dir(rid) / "report.md").read_text()
    assert "artifacts: ckpt/*.npz matches nothing" in md


def test_artifacts_never_lead_out_of_the_workspace(af: Env, tmp_path: Path) -> None:
    outside = tmp_path / "host.txt"
    outside.write_text("host file\n")
    wf = af.write(
        f"""\
        version: 1
        name: contain
        steps:
          - id: inside
            run: |
              mkdir -p data && echo real > data/real.txt && ln -sf data/real.txt latest
            artifacts: [latest]
          - id: link-out
            run: ln -sf {outside} leak.txt
            artifacts: [leak.txt]
          - id: dot-dot
            run: "true"
            artifacts: ["../host.txt"]
        """
    )
    res = af.cli("run", str(wf), "--ci")
    assert res.returncode == 1, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    steps = af.state(rid)["steps"]
    # A link to a file inside the workspace is read through; kept under the link's name.
    assert steps["inside"]["status"] == "succeeded"
    kept = manifest(af, rid)["steps"]["inside"]["files"]
    assert [(f["path"], f["copied"]) for f in kept] == [("latest", True)]
    assert (af.run_dir(rid) / "artifacts" / "inside" / "latest").read_text() == "real\n"
    assert steps["link-out"]["status"] == "failed"
    assert steps["link-out"]["message"] == "artifacts: leak.txt leads outside the workspace"
    assert steps["dot-dot"]["status"] == "failed"
    assert steps["dot-dot"]["message"] == "artifacts: ../host.txt leads outside the workspace"
    assert set(manifest(af, rid)["steps"]) == {"inside"}
    for path in af.run_dir(rid).rglob("*"):
        assert not path.is_file() or "host file" not in path.read_text(errors="replace")


def test_patterns_are_relative_to_the_step_folder_and_expressions_are_filled_in(
    af: Env,
) -> None:
    wf = af.write(
        """\
        version: 1
        name: where
        inputs: {tag: v2}
        steps:
          - id: build
            workdir: pkg
            run: |
              mkdir -p deep/er .hidden
              echo 1 > one.txt; echo 2 > deep/er/two.txt; echo 3 > .hidden/three.txt
              echo 4 > deep/.dot.txt; echo 5 > notes-${{ inputs.tag }}.md
            artifacts: ["**/*.txt", "notes-${{ inputs.tag }}.md"]
        """
    )
    (af.workspace / "pkg").mkdir()
    res = af.cli("run", str(wf), "--ci")
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    kept = manifest(af, rid)["steps"]["build"]
    assert kept["patterns"] == ["**/*.txt", "notes-v2.md"]
    # Paths in the workspace; `**` and `*` leave hidden names alone.
    assert [f["path"] for f in kept["files"]] == [
        "pkg/deep/er/two.txt",
        "pkg/notes-v2.md",
        "pkg/one.txt",
    ]
    assert (af.run_dir(rid) / "artifacts" / "build" / "pkg" / "deep" / "er" / "two.txt").exists()


def test_a_service_keeps_its_artifacts_when_it_is_stopped_at_the_end(af: Env) -> None:
    wf = af.write(
        """\
        version: 1
        name: served
        steps:
          - id: server
            service: true
            run: |
              echo "ready" | tee server.log; exec sleep 300
            ready: {file: server.log, interval: 100ms}
            artifacts: [server.log]
          - id: client
            needs: [server]
            run: echo "client was here" >> server.log
        """
    )
    res = af.cli("run", str(wf), "--ci")
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    assert af.state(rid)["steps"]["server"]["status"] == "succeeded"
    copy = af.run_dir(rid) / "artifacts" / "server" / "server.log"
    assert copy.read_text() == "ready\nclient was here\n"


def test_artifact_patterns_are_checked_when_the_workflow_is_validated(af: Env) -> None:
    wf = af.write(
        """\
        version: 1
        name: bad
        steps:
          - id: s
            run: "true"
            artifacts: [/etc/passwd, "", "x-${{ nope }}"]
        """
    )
    res = af.cli("validate", str(wf))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines == [
        f"error: {wf}:6:17: steps[0].artifacts[0]: '/etc/passwd': artifacts are read from "
        "the workspace: give a path relative to the step's folder, not an absolute one",
        f"error: {wf}:6:30: steps[0].artifacts[1]: an artifact pattern cannot be empty",
        f"error: {wf}:6:34: steps[0].artifacts[2]: unknown expression '${{{{ nope }}}}': use "
        "inputs.NAME, env.NAME, run.id, steps.ID.outputs.NAME or ports.NAME",
    ]
    # One pattern may be written without a list.
    ok = af.write(
        "version: 1\nname: ok\nsteps:\n  - id: s\n    run: 'true'\n    artifacts: a.txt\n"
    )
    assert af.cli("validate", str(ok)).returncode == 0


def test_a_bad_copy_limit_is_one_line_of_error(af: Env) -> None:
    af.env["AGENTFLOW_ARTIFACT_COPY_MAX"] = "lots"
    res = af.cli("status")
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "error: AGENTFLOW_ARTIFACT_COPY_MAX='lots' is not a size: give bytes, or a number "
        "with a unit (500MB, 2GiB)"
    )


# --- the collector on its own: the rules a run relies on ----------------------------------


def collector(ws: Path, dest: Path, copy_max: int = 10**9, **kw: Any) -> Collector:
    return Collector(root=ws, step_dir=ws, dest=dest, copy_max=copy_max, **kw)


def test_the_home_inside_the_workspace_is_never_collected(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "home" / "runs" / "r1").mkdir(parents=True)
    (ws / "home" / "runs" / "r1" / "state.json").write_text("{}")
    (ws / "model.json").write_text("{}")
    dest = ws / "home" / "runs" / "r1" / "artifacts" / "s"
    c = collector(ws, dest, exclude=(ws / "home",))
    files, skipped = c.collect(["**/*.json"])
    assert [f.path for f in files] == ["model.json"]
    assert skipped == []
    with pytest.raises(ArtifactError, match=r"^artifacts: home is in agentflow's home$"):
        c.collect(["home"])


def test_a_folder_is_every_file_in_it_and_an_empty_one_fails(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "empty").mkdir(parents=True)
    (ws / "full" / "a").mkdir(parents=True)
    (ws / "full" / "a" / "x.bin").write_bytes(b"\0" * 3)
    (ws / "full" / ".keep").write_bytes(b"")
    os.symlink(ws / "full" / "a", ws / "full" / "alias")  # a link to a folder: not followed
    os.mkfifo(ws / "full" / "pipe")
    files, skipped = collector(ws, tmp_path / "dest").collect(["full"])
    assert [(f.path, f.size) for f in files] == [("full/.keep", 0), ("full/a/x.bin", 3)]
    assert [(s.path, s.reason) for s in skipped] == [
        ("full/alias", "is a link to a folder (name the folder itself)"),
        ("full/pipe", "is not a regular file"),
    ]
    with pytest.raises(ArtifactError, match=r"^artifacts: empty matches nothing$"):
        collector(ws, tmp_path / "dest2").collect(["empty"])
    assert not (tmp_path / "dest2").exists()


def test_collecting_again_replaces_the_earlier_copies(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("first")
    dest = tmp_path / "artifacts" / "s"
    collector(ws, dest).collect(["a.txt"])
    (ws / "a.txt").unlink()
    (ws / "b.txt").write_text("second")
    files, _ = collector(ws, dest).collect(["b.txt"])
    assert sorted(p.name for p in dest.iterdir()) == ["b.txt"]
    assert files[0].sha256 == hashlib.sha256(b"second").hexdigest()
    # A failed collection leaves the earlier copies as they were, and no partial folder.
    with pytest.raises(ArtifactError):
        collector(ws, dest).collect(["b.txt", "missing.txt"])
    assert sorted(p.name for p in dest.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["s"]


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1500, "1.5 kB"),
        (12_345_678, "12.3 MB"),
        (250 * 10**9, "250 GB"),
    ],
)
def test_sizes_read_as_people_write_them(size: int, shown: str) -> None:
    assert human_size(size) == shown


# --- a Docker step: its files are in the bind-mounted workspace -----------------------------


@pytest.fixture
def docker_image(docker_client: object) -> str:
    return TEST_IMAGE


@pytest.mark.docker
def test_a_docker_steps_artifacts_are_read_from_the_host_workspace(
    af: Env, docker_image: str
) -> None:
    wf = af.write(
        f"""\
        version: 1
        name: boxed-artifacts
        sandbox: {{backend: docker, image: {docker_image}}}
        steps:
          - id: make
            run: |
              mkdir -p out && echo "made in the box" > out/result.txt
              ln -s /etc/passwd out/passwd   # the container's; on the host: outside
            artifacts: [out]
        """
    )
    res = af.cli("run", str(wf), "--ci", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    kept = manifest(af, rid)["steps"]["make"]
    assert [f["path"] for f in kept["files"]] == ["out/result.txt"]
    assert kept["skipped"] == [{"path": "out/passwd", "reason": "leads outside the workspace"}]
    copy = af.run_dir(rid) / "artifacts" / "make" / "out" / "result.txt"
    assert copy.read_text() == "made in the box\n"
