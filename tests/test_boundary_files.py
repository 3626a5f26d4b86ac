"""Issue 14: what the host does with files a step controls. Every host-side touch of the
workspace or the run's ``steps/`` goes through ``safefs``: no link followed at any depth,
regular files only, reads capped, agentflow's home hidden by identity.

Each test plants what a hostile step would (a link to a host folder, a FIFO, a sparse
file, a file where a folder must be) and asserts that no host file outside the run
changed, nothing hung, memory stayed bounded and the error is one line.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from agentflow import learn, runbook, safefs, stepfiles
from agentflow.artifacts import Collector
from agentflow.monitor import parse_progress
from agentflow.sandbox import EXEC_OUTPUT_MAX
from agentflow.sandbox.docker import DockerSandbox
from agentflow.sandbox.local import LocalSandbox
from agentflow.verify import OutputError, Where, read_outputs, success_checks
from agentflow.workflow.model import Output, Success
from agentflow.workflow.model import Sandbox as SandboxConfig

from conftest import TEST_IMAGE, Env, run_id_of

BOX = f"sandbox: {{backend: docker, image: {TEST_IMAGE}}}\n"


def host_dir(tmp_path: Path) -> Path:
    """A host folder a step must never reach: its files are checked afterwards."""
    victim = tmp_path / "host"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me\n")
    (victim / "run.sh").write_text("original\n")
    return victim


def untouched(victim: Path) -> None:
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt", "run.sh"]
    assert (victim / "precious.txt").read_text() == "keep me\n"
    assert (victim / "run.sh").read_text() == "original\n"


# --- the guarded path itself ---------------------------------------------------------------


Plant = Callable[[Path, Path], None]


def _link_to_host_file(path: Path, victim: Path) -> None:
    os.symlink(victim / "precious.txt", path)


def _link_to_host_dir(path: Path, victim: Path) -> None:
    os.symlink(victim, path)


def _fifo(path: Path, victim: Path) -> None:
    os.mkfifo(path)


def _sparse(path: Path, victim: Path) -> None:
    with path.open("wb") as f:
        f.truncate(1 << 30)  # 1 GiB, no blocks


def _folder(path: Path, victim: Path) -> None:
    path.mkdir()


PLANTS: dict[str, Plant] = {
    "link to a host file": _link_to_host_file,
    "link to a host folder": _link_to_host_dir,
    "fifo": _fifo,
    "sparse 1 GiB": _sparse,
    "folder": _folder,
}


@pytest.mark.parametrize("kind", PLANTS)
@pytest.mark.parametrize("name", ["exit_code", "pid", "output.log", "run.sh"])
def test_step_files_of_any_kind_are_read_bounded_and_never_followed(
    tmp_path: Path, kind: str, name: str
) -> None:
    victim = host_dir(tmp_path)
    step = tmp_path / "steps" / "s"
    step.mkdir(parents=True)
    PLANTS[kind](step / name, victim)
    tracemalloc.start()
    code, _ = stepfiles.exit_code(step)
    group = stepfiles.pid(step)
    out = stepfiles.new_output(step, 0, 4096)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes to read a planted {kind}"
    if name == "exit_code":
        # A planted exit code is a failure, never the content of a host file.
        assert code == 255
    if name == "pid":
        assert group is None
    if name == "output.log" and kind != "sparse 1 GiB":
        assert out is None
    if name == "output.log" and kind == "sparse 1 GiB":
        assert out is not None
        assert len(out.text) <= 4096
    # Preparing the next attempt moves and removes names, never what they point to.
    stepfiles.prepare(step, 1, "echo new\n", "wrapper\n")
    stepfiles.prepare(step, 0, "echo new\n", "wrapper\n")
    assert (step / "run.sh").read_text() == "echo new\n"
    assert not (step / "run.sh").is_symlink()
    untouched(victim)


@pytest.mark.parametrize("kind", ["link to a host folder", "fifo", "sparse 1 GiB"])
def test_a_step_folder_planted_as_a_link_or_file_is_replaced_not_followed(
    tmp_path: Path, kind: str
) -> None:
    victim = host_dir(tmp_path)
    steps = tmp_path / "steps"
    steps.mkdir()
    PLANTS[kind](steps / "b", victim)
    for earlier in (0, 1):
        stepfiles.prepare(steps / "b", earlier, "echo b\n", "wrapper\n")
        assert stat.S_ISDIR((steps / "b").lstat().st_mode)
        assert (steps / "b" / "run.sh").read_text() == "echo b\n"
    # A link where an attempt's folder goes: the files move past it, never into it.
    shutil.rmtree(steps / "b" / "attempt-1")
    os.symlink(victim, steps / "b" / "attempt-1")
    stepfiles.prepare(steps / "b", 1, "echo b2\n", "wrapper\n")
    assert not (steps / "b" / "attempt-1").is_symlink()
    untouched(victim)


def test_a_link_at_any_depth_is_refused_and_the_home_by_identity(tmp_path: Path) -> None:
    victim = host_dir(tmp_path)
    ws = tmp_path / "ws"
    (ws / "real").mkdir(parents=True)
    (ws / "real" / "ok.txt").write_text("ok")
    os.symlink(victim, ws / "via")
    assert safefs.read_text(ws / "real" / "ok.txt", ws, 100) == "ok"
    with pytest.raises(safefs.UnsafePath, match="symbolic link"):
        safefs.read_text(ws / "via" / "precious.txt", ws, 100)
    with pytest.raises(safefs.UnsafePath, match="outside"):
        safefs.read_text(ws / ".." / "host" / "precious.txt", ws, 100)
    with pytest.raises(safefs.TooLarge):
        safefs.read_text(ws / "real" / "ok.txt", ws, 1)
    # The home reached through another path (a bind mount, a second name) is still the home.
    home = ws / "real"
    with pytest.raises(safefs.UnsafePath, match="agentflow's own folder"):
        safefs.read_text(ws / "real" / "ok.txt", ws, 100, safefs.identities([home]))


def where(ws: Path, tmp_path: Path, hidden: frozenset[safefs.Identity] = frozenset()) -> Where:
    steps = tmp_path / "steps"
    (steps / "s").mkdir(parents=True, exist_ok=True)
    return Where(
        box=_NoBox(),
        workdir="/workspace",
        host_dir=ws,
        root=ws,
        log=steps / "s" / "output.log",
        steps=steps,
        hidden=hidden,
    )


class _NoBox:
    def exec(
        self, script: str, workdir: str, timeout: float, env: dict[str, str] | None = None
    ) -> tuple[int, str]:
        raise AssertionError("relative paths are read on the host")


@pytest.mark.parametrize("kind", PLANTS)
def test_outputs_metrics_and_success_files_of_any_kind(tmp_path: Path, kind: str) -> None:
    victim = host_dir(tmp_path)
    ws = tmp_path / "ws"
    ws.mkdir()
    at = where(ws, tmp_path)
    for name in ("value.txt", "results.json"):
        PLANTS[kind](ws / name, victim)
    tracemalloc.start()
    for outputs in (
        {"v": Output(file="value.txt")},
        {"v": Output.model_validate({"json": "results.json", "key": "x"})},
    ):
        with pytest.raises(Exception, match=r"value\.txt|results\.json") as caught:
            read_outputs(outputs, at)
        assert "\n" not in str(caught.value)
        assert "keep me" not in str(caught.value)
    check = success_checks(
        Success.model_validate({"metrics": {"x": {"file": "results.json", "key": "x"}}}), at
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert not check.ok
    assert "keep me" not in check.detail
    assert peak < 4 << 20, peak
    files = success_checks(Success(files=["value.txt"]), at)
    assert files.ok == (kind in ("sparse 1 GiB", "folder", "fifo"))  # they exist, unfollowed
    untouched(victim)


def test_an_output_is_bounded(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "value.txt").write_text("x" * 4500)
    with pytest.raises(Exception, match="more than the 4096 an output may hold"):
        read_outputs({"v": Output(file="value.txt")}, where(ws, tmp_path))
    (ws / "value.txt").write_text("x" * 100_000)
    with pytest.raises(Exception, match=r"^value\.txt is larger than 5120 bytes: not read$"):
        read_outputs({"v": Output(file="value.txt")}, where(ws, tmp_path))


# --- end to end: a hostile step on both backends ------------------------------------------


def _plant_step_folder(af: Env, tmp_path: Path, backend: str) -> None:
    victim = host_dir(tmp_path)
    steps = "/agentflow/steps" if backend == "docker" else "$AGENTFLOW_STEPS"
    link = victim  # the host's path: dangling inside a container, and still never followed
    wf = af.write(
        f"""\
        version: 1
        name: plant
        {BOX if backend == "docker" else ""}
        steps:
          - id: a
            run: ln -s {link} {steps}/b && echo data > {steps}/c
          - id: b
            needs: [a]
            run: echo b ran
          - id: c
            needs: [a]
            run: echo c ran
        """.replace("$AGENTFLOW_STEPS", str(af.home / "runs" / "r1" / "steps"))
    )
    res = af.cli("run", str(wf), "--ci", "--run-id", "r1", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    st = af.state("r1")["steps"]
    assert {k: v["status"] for k, v in st.items()} == dict.fromkeys("abc", "succeeded")
    for step in "bc":
        path = af.run_dir("r1") / "steps" / step
        assert stat.S_ISDIR(path.lstat().st_mode)
        assert f"{step} ran" in (path / "output.log").read_text()
    untouched(victim)


def test_a_planted_step_folder_is_replaced_locally(af: Env, tmp_path: Path) -> None:
    _plant_step_folder(af, tmp_path, "local")


@pytest.mark.docker
def test_a_planted_step_folder_is_replaced_in_docker(
    af: Env, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    _plant_step_folder(af, tmp_path, "docker")


@pytest.mark.docker
def test_a_mount_source_replaced_by_a_link_is_refused(
    af: Env, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    victim = host_dir(tmp_path)
    (af.workspace / "data").mkdir()
    wf = af.write(
        f"""\
        version: 1
        name: mounts
        sandbox:
          backend: docker
          image: {TEST_IMAGE}
          mounts: [{{source: data, target: /data}}]
        steps:
          - id: swap
            run: rmdir data && ln -s {victim} data
        """
    )
    first = af.cli("run", str(wf), "--ci", timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    again = af.cli("run", str(wf), "--ci", timeout=120)
    assert again.returncode == 2, again.stdout + again.stderr
    line = again.stderr.strip().splitlines()[-1]
    assert "sandbox.mounts[0]: data" in line
    assert "is a symbolic link" in line
    assert "Traceback" not in again.stderr
    untouched(victim)


@pytest.mark.docker
def test_the_home_is_hidden_by_identity_and_its_files_are_never_outputs(
    af: Env, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    real_home = af.workspace / ".agentflow"
    real_home.mkdir()
    alias = tmp_path / "alias-home"
    alias.symlink_to(real_home)  # the home reached through a link: hidden all the same
    af.home = alias
    af.env["AGENTFLOW_HOME"] = str(alias)
    secret = af.write("version: 1\nname: other\nsteps:\n  - {id: s, run: echo other-runs-log}\n")
    assert af.cli("run", str(secret), "--ci", "--run-id", "other").returncode == 0
    wf = af.write(
        f"""\
        version: 1
        name: peek
        {BOX}
        steps:
          - id: look
            run: |
              ls -a /workspace/.agentflow
              ln -sf .agentflow/runs/other/steps/s/output.log leak.txt
            outputs: {{leaked: {{file: leak.txt}}}}
        """,
        "peek.yaml",
    )
    res = af.cli("run", str(wf), "--ci", "--run-id", "peek", timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    st = af.state("peek")["steps"]["look"]
    assert st["status"] == "failed"
    assert "leak.txt" in st["message"]
    assert "symbolic link" in st["message"]
    shown = (af.run_dir("peek") / "steps" / "look" / "output.log").read_text()
    assert "runs" not in shown  # the container saw an empty folder
    for path in af.run_dir("peek").rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert "other-runs-log" not in path.read_text(errors="replace"), path


def test_a_fifo_or_sparse_output_neither_hangs_nor_bloats_the_run(af: Env) -> None:
    wf = af.write(
        """\
        version: 1
        name: bloat
        steps:
          - id: fifo
            run: rm -f f.json && mkfifo f.json
            outputs: {v: {json: f.json, key: x}}
          - id: sparse
            run: truncate -s 20M big.txt
            outputs: {v: {file: big.txt}}
          - id: after
            run: echo still here
        """
    )
    res = af.cli("run", str(wf), "--ci", timeout=60)
    assert res.returncode == 1, res.stdout + res.stderr
    st = af.state(run_id_of(res.stdout))
    assert st["steps"]["after"]["status"] == "succeeded"
    assert "f.json is not a regular file" in st["steps"]["fifo"]["message"]
    assert "big.txt is larger than" in st["steps"]["sparse"]["message"]
    assert (af.run_dir(st["run_id"]) / "state.json").stat().st_size < 64 * 1024


def test_secrets_never_reach_artifact_patterns_or_the_manifest(af: Env) -> None:
    af.env["TOKEN"] = "s3cr3t-value"
    bad = af.write(
        """\
        version: 1
        name: leak
        secrets: [TOKEN]
        steps:
          - id: s
            run: "true"
            artifacts: ["${{ env.TOKEN }}.txt"]
        """
    )
    res = af.cli("validate", str(bad))
    assert res.returncode == 2
    assert "would write the secret TOKEN into files" in res.stderr
    named = af.write(
        """\
        version: 1
        name: named
        secrets: [TOKEN]
        steps:
          - id: s
            run: echo x > "out-$TOKEN.txt"
            artifacts: ["out-*.txt"]
        """,
        "named.yaml",
    )
    res = af.cli("run", str(named), "--ci")
    assert res.returncode == 0, res.stdout + res.stderr
    run = af.run_dir(run_id_of(res.stdout))
    manifest = json.loads((run / "artifacts.json").read_text())
    assert manifest["steps"]["s"]["files"][0]["path"] == "out-***.txt"
    for path in run.rglob("*"):
        if path.is_file():
            assert "s3cr3t-value" not in path.read_text(errors="replace"), path


def test_run_directories_are_private(af: Env) -> None:
    wf = af.write("version: 1\nname: p\nsteps:\n  - {id: s, run: echo hi}\n")
    res = af.cli("run", str(wf), "--ci")
    assert res.returncode == 0, res.stdout + res.stderr
    run = af.run_dir(run_id_of(res.stdout))
    for folder in (af.home, af.home / "runs", run):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for name in ("state.json", "state.log.prev", "events.jsonl"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o600, name


def test_a_check_that_prints_without_end_costs_bounded_memory(tmp_path: Path) -> None:
    box = LocalSandbox(tmp_path)
    tracemalloc.start()
    code, out = box.exec(
        "head -c 50000000 /dev/zero | tr '\\0' x; echo; echo last; exit 3", str(tmp_path), 20
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert code == 3
    assert out.endswith("last\n")
    assert len(out) <= EXEC_OUTPUT_MAX
    assert peak < 4 << 20, peak
    code, out = box.exec("sleep 30 & sleep 30", str(tmp_path), 1)
    assert code == 124


@pytest.mark.docker
def test_a_check_in_docker_streams_its_output(af: Env, docker_client: docker.DockerClient) -> None:
    wf = af.write(
        f"""\
        version: 1
        name: loud
        {BOX}
        steps:
          - id: s
            run: "true"
            success: {{command: "head -c 30000000 /dev/zero|tr '\\\\0' x;echo;echo the-end;exit 1"}}
        """
    )
    res = af.cli("run", str(wf), "--ci", timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    message = af.state(run_id_of(res.stdout))["steps"]["s"]["message"]
    assert message.endswith("exit 1 (the-end)"), message


def test_runbooks_and_learn_never_follow_a_link_a_step_planted(tmp_path: Path) -> None:
    victim = host_dir(tmp_path)
    ws = tmp_path / "ws"
    (ws / "docs").mkdir(parents=True)
    os.symlink(victim / "precious.txt", ws / "docs" / "runbook.md")
    # What would go to the model: nothing of the host file.
    assert "keep me" not in runbook.bounded([ws / "docs" / "runbook.md"], 10_000, root=ws)
    # `learn --apply` writes a runbook through a temporary name a step could plant.
    (ws / "docs" / "runbook.md").unlink()
    (ws / "docs" / "runbook.md").write_text("# Runbook\n")
    os.symlink(victim / "run.sh", ws / "docs" / ".runbook.md.learn.tmp")
    learn._write(ws / "docs" / "runbook.md", "# Runbook\nlearnt\n")
    assert (ws / "docs" / "runbook.md").read_text() == "# Runbook\nlearnt\n"
    untouched(victim)


def test_an_output_with_a_lone_surrogate_is_saved(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "r.json").write_text('{"x": "a\\ud800b"}')
    values = read_outputs(
        {"v": Output.model_validate({"json": "r.json", "key": "x"})}, where(ws, tmp_path)
    )
    assert values == {"v": "a?b"}
    values["v"].encode("utf-8")  # what the checkpoint does with it


@pytest.mark.docker
def test_a_home_deep_in_the_workspace_cannot_be_moved_aside(
    af: Env, docker_client: docker.DockerClient
) -> None:
    # The default home is ./.agentflow of wherever agentflow starts: here a subfolder.
    af.home = af.workspace / "sub" / ".agentflow"
    af.env["AGENTFLOW_HOME"] = str(af.home)
    (af.workspace / "sub").mkdir()
    (af.workspace / "sub" / "notes.txt").write_text("visible\n")
    wf = af.write(
        f"""\
        version: 1
        name: aside
        {BOX}
        steps:
          - id: move
            run: |
              cat sub/notes.txt
              mv sub sub2 && echo MOVED || echo kept
              mkdir -p sub/.agentflow/runs 2>/dev/null; ls -a sub/.agentflow
        """
    )
    res = af.cli("run", str(wf), "--ci", "--run-id", "aside", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    log = (af.run_dir("aside") / "steps" / "move" / "output.log").read_text()
    assert "visible" in log  # the folder's own files stay visible to the step
    assert "kept" in log
    assert "MOVED" not in log
    assert (af.workspace / "sub" / ".agentflow" / "runs" / "aside" / "state.json").is_file()
    assert not (af.workspace / "sub2").exists()


def test_what_a_step_writes_fails_its_step_never_the_orchestrator(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    at = where(ws, tmp_path)
    (ws / "deep.json").write_text("[" * 100_000)
    with pytest.raises(OutputError, match="nested too deeply"):
        read_outputs({"v": Output.model_validate({"json": "deep.json", "key": "0"})}, at)
    (ws / "nul.txt").write_bytes(b"ok\0x")
    with pytest.raises(OutputError, match="holds a NUL character"):
        read_outputs({"v": Output(file="nul.txt")}, at)
    # A link loop among the artifacts is passed over, not a crash.
    (ws / "out").mkdir()
    (ws / "out" / "a.txt").write_text("a")
    os.symlink("loop", ws / "out" / "loop")
    collector = Collector(root=ws, step_dir=ws, dest=tmp_path / "dest", copy_max=1 << 20)
    files, skipped = collector.collect(["out"])
    assert [f.path for f in files] == ["out/a.txt"]
    assert [s.path for s in skipped] == ["out/loop"]


def test_a_step_folder_nested_past_the_stack_is_moved_aside(tmp_path: Path) -> None:
    step = tmp_path / "steps" / "s"
    deep = step / "run.sh"
    deep.mkdir(parents=True)
    fd = os.open(deep, os.O_RDONLY)
    for _ in range(300):  # deeper than the recursion limit below
        os.mkdir("a", dir_fd=fd)
        sub = os.open("a", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = sub
    os.close(fd)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)  # a step can nest folders past any limit; this one is cheap
    try:
        stepfiles.prepare(step, 0, "echo ok\n", "wrapper\n")
    finally:
        sys.setrecursionlimit(limit)
    assert (step / "run.sh").read_text() == "echo ok\n"
    aside = [p.name for p in step.iterdir() if p.name.startswith(".removed-")]
    assert len(aside) == 1


def test_a_long_run_of_digits_does_not_freeze_the_progress_scan() -> None:
    # Quadratic before: 64 KiB of digits held the orchestrator 84 s on every check.
    text = "1" * 65536 + "\n12/40 [=====]"
    done: list[object] = []
    worker = threading.Thread(target=lambda: done.append(parse_progress(text, None)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert done == [(12.0, 40.0)], "the progress scan did not finish within 10 s"
    assert parse_progress("5" * 65536, None) is None


def test_a_flooded_or_replaced_wake_fifo_neither_holds_nor_ends_the_run(af: Env) -> None:
    steps = af.home / "runs" / "wake" / "steps"
    wf = af.write(
        f"""\
        version: 1
        name: wake
        steps:
          - id: flood
            run: timeout 3 sh -c 'cat /dev/zero > {steps}/.wake' || true
          - id: plant
            needs: [flood]
            run: rm -f {steps}/.wake && mkdir {steps}/.wake
          - id: after
            needs: [plant]
            run: echo done
        """
    )
    res = af.cli("run", str(wf), "--ci", "--run-id", "wake", timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert af.state("wake")["steps"]["after"]["status"] == "succeeded"
    assert not (steps / ".wake").exists()  # removed at the end, folder and all


@pytest.mark.docker
def test_a_check_that_ignores_its_timeout_does_not_hold_the_host(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    (tmp_path / "steps").mkdir()
    box = DockerSandbox(
        SandboxConfig.model_validate({"backend": "docker", "image": TEST_IMAGE}),
        run_id=f"deadline-{os.getpid()}",
        workflow="deadline",
        workspace=tmp_path,
        steps_dir=tmp_path / "steps",
        home=tmp_path / "home",
    )
    box.start()
    try:
        began = time.monotonic()
        # Ignores TERM, and a child keeps the output open past any KILL of the script.
        code, _ = box.exec("trap '' TERM; sleep 60 & wait; sleep 60", "/workspace", 1)
        waited = time.monotonic() - began
    finally:
        box.close()
    assert code in (124, 137), code
    assert waited < 30, f"the host waited {waited:.0f}s for a 1 s check"


def test_a_value_too_long_for_tmux_reaches_its_step_whole(af: Env) -> None:
    """A step's variables go in a private script, never on tmux's command line: a
    100,000-byte value (six times what tmux passes to a window) reaches the step whole;
    one more than Linux passes to a program fails its step, saying so, not the run."""
    wf = af.write(
        f"""\
        version: 1
        name: long
        steps:
          - id: big
            env: {{BIG: "{"x" * 100_000}"}}
            run: printf %s "$BIG" | wc -c
          - id: huge
            env: {{HUGE: "{"x" * 200_000}"}}
            run: echo never
          - id: other
            run: echo fine
        """
    )
    res = af.cli("run", str(wf), "--ci")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    rid = run_id_of(res.stdout)
    steps = af.state(rid)["steps"]
    assert steps["big"]["status"] == "succeeded"
    assert (af.run_dir(rid) / "steps" / "big" / "output.log").read_text().split() == ["100000"]
    assert steps["other"]["status"] == "succeeded"
    assert steps["huge"]["status"] == "failed"
    assert "HUGE takes 200006 bytes, more than Linux passes" in steps["huge"]["message"]


@pytest.mark.docker
def test_an_image_built_from_the_workspace_carries_no_home_and_takes_no_fifo(
    af: Env, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    victim = host_dir(tmp_path)
    af.home = af.workspace / ".agentflow"
    af.env["AGENTFLOW_HOME"] = str(af.home)
    first = af.write("version: 1\nname: first\nsteps:\n  - {id: s, run: echo first-runs-log}\n")
    assert af.cli("run", str(first), "--ci", "--run-id", "first").returncode == 0
    (af.workspace / "Dockerfile").write_text(f"FROM {TEST_IMAGE}\nCOPY . /ctx\n")
    os.mkfifo(af.workspace / "pipe")  # archived, it would hold the build
    os.symlink(victim / "precious.txt", af.workspace / "link.txt")  # kept as a link
    (af.workspace / "data").mkdir()
    (af.workspace / "data" / "ok.txt").write_text("ok\n")
    wf = af.write(
        """\
        version: 1
        name: ctx
        sandbox: {backend: docker, build: {context: .}}
        steps:
          - id: look
            run: find /ctx | sort; cat /ctx/data/ok.txt; readlink /ctx/link.txt
        """,
        "ctx.yaml",
    )
    res = af.cli("run", str(wf), "--ci", "--run-id", "ctx", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    log = (af.run_dir("ctx") / "steps" / "look" / "output.log").read_text()
    assert "/ctx/data/ok.txt" in log
    assert f"{victim}/precious.txt" in log  # the link, not what it points to
    assert "keep me" not in log
    assert "/ctx/pipe" not in log
    assert ".agentflow" not in log
    docker_client.images.remove("agentflow/ctx:latest", force=True)
    # A FIFO at .dockerignore: a one-line error, not a build that waits forever.
    os.mkfifo(af.workspace / ".dockerignore")
    res = af.cli("run", str(wf), "--ci", "--run-id", "ctx2", timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert ".dockerignore: is not a regular file" in res.stderr


@pytest.mark.docker
def test_a_mount_inside_a_writable_mount_and_the_workspace_inside_one_hold(
    af: Env, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    victim = host_dir(tmp_path)
    outer = tmp_path / "outer"
    (outer / "inner").mkdir(parents=True)
    wf = af.write(
        f"""\
        version: 1
        name: nested
        sandbox:
          backend: docker
          image: {TEST_IMAGE}
          mounts:
            - {{source: {outer}, target: /outer}}
            - {{source: {outer}/inner, target: /inner, read_only: true}}
            - {{source: {af.workspace.parent}, target: /parent}}
        steps:
          - id: swap
            run: |
              mv /parent/{af.workspace.name} /parent/moved && echo MOVED || echo kept
              rmdir /outer/inner && ln -s {victim} /outer/inner
        """
    )
    first = af.cli("run", str(wf), "--ci", timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (
        "kept"
        in first.stdout
        + (af.home / "runs")
        .joinpath(run_id_of(first.stdout), "steps", "swap", "output.log")
        .read_text()
    )
    assert af.workspace.is_dir()
    again = af.cli("run", str(wf), "--ci", timeout=120)
    assert again.returncode == 2, again.stdout + again.stderr
    assert "sandbox.mounts[1]" in again.stderr
    assert "is a symbolic link" in again.stderr
    untouched(victim)


def test_only_ascii_digits_make_an_exit_code(tmp_path: Path) -> None:
    step = tmp_path / "steps" / "s"
    step.mkdir(parents=True)
    for text in ("²", "--5", "1e3", "0x1"):
        (step / "exit_code").write_text(text)
        assert stepfiles.exit_code(step)[0] == 255, text
    (step / "exit_code").write_text("  -3\n")
    assert stepfiles.exit_code(step)[0] == -3


def test_progress_is_found_behind_many_later_lines() -> None:
    text = "epoch 3/10 [####\n" + "".join(f"chatty line {i}\n" for i in range(200))
    assert parse_progress(text, None) == (3.0, 10.0)
    assert parse_progress(text, r"epoch (\d+)/(\d+)") == (3.0, 10.0)


@pytest.mark.docker
def test_a_home_reached_through_a_link_the_step_replaces_stays_put(
    af: Env, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    victim = host_dir(tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (af.workspace / ".agentflow").symlink_to(scratch)  # the home kept on a scratch disk
    af.home = af.workspace / ".agentflow"
    af.env["AGENTFLOW_HOME"] = str(af.home)
    wf = af.write(
        f"""\
        version: 1
        name: relink
        {BOX}
        steps:
          - id: swap
            run: |
              rm .agentflow && mkdir -p .agentflow/runs/$AGENTFLOW_RUN_ID
              for f in events.jsonl agentflow.log state.json report.md; do
                ln -s {victim}/precious.txt .agentflow/runs/$AGENTFLOW_RUN_ID/$f
              done
          - id: after
            needs: [swap]
            run: echo still-recorded
        """
    )
    res = af.cli("run", str(wf), "--ci", "--run-id", "relink", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    state = json.loads((scratch / "runs" / "relink" / "state.json").read_text())
    assert state["steps"]["after"]["status"] == "succeeded"
    assert not (scratch / "runs" / "relink" / "events.jsonl").is_symlink()
    untouched(victim)


@pytest.mark.docker
def test_mounts_that_overlap_the_workspace_start_and_links_in_writable_ones_are_refused(
    af: Env, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    # A monorepo: the workspace is a service folder, its repository mounted around it.
    repo = tmp_path / "repo"
    (repo / "lib").mkdir(parents=True)
    (repo / "lib" / "shared.txt").write_text("shared\n")
    svc = repo / "svc"
    svc.mkdir()
    (svc / "data").mkdir()
    link = tmp_path / "repo-link"
    link.symlink_to(repo)  # the writable mount named through a link
    victim = host_dir(tmp_path)
    wf = svc / "wf.yaml"
    wf.write_text(
        f"version: 1\nname: mono\nsandbox:\n  backend: docker\n  image: {TEST_IMAGE}\n"
        "  workdir: /repo/svc\n  mounts:\n"
        f"    - {{source: {link}, target: /repo}}\n"
        f"    - {{source: {repo}/svc/data, target: /data, read_only: true}}\n"
        "steps:\n  - id: s\n    run: cat /repo/lib/shared.txt && rmdir data && "
        f"ln -s {victim} data\n"
    )
    first = af.cli("run", str(wf), "--ci", timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    again = af.cli("run", str(wf), "--ci", timeout=120)
    assert again.returncode == 2, again.stdout + again.stderr
    assert "sandbox.mounts[1]" in again.stderr
    assert "is a symbolic link" in again.stderr
    untouched(victim)


@pytest.mark.docker
def test_linked_build_files_and_an_oddly_named_home_build_as_before(
    af: Env, docker_client: docker.DockerClient
) -> None:
    af.home = af.workspace / "state[1]"  # a home whose name reads as a glob
    af.env["AGENTFLOW_HOME"] = str(af.home)
    first = af.write("version: 1\nname: first\nsteps:\n  - {id: s, run: echo x}\n")
    assert af.cli("run", str(first), "--ci").returncode == 0
    (af.workspace / "docker").mkdir()
    (af.workspace / "docker" / "Dockerfile.dev").write_text(f"FROM {TEST_IMAGE}\nCOPY . /ctx\n")
    (af.workspace / "Dockerfile").symlink_to("docker/Dockerfile.dev")
    (af.workspace / ".gitignore").write_text("ignored.txt\n")
    (af.workspace / ".dockerignore").symlink_to(".gitignore")
    (af.workspace / "ignored.txt").write_text("no\n")
    wf = af.write(
        """\
        version: 1
        name: linked
        sandbox: {backend: docker, build: {context: .}}
        steps:
          - id: look
            run: find /ctx | sort
        """,
        "linked.yaml",
    )
    res = af.cli("run", str(wf), "--ci", "--run-id", "linked", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    log = (af.run_dir("linked") / "steps" / "look" / "output.log").read_text()
    assert "/ctx/docker/Dockerfile.dev" in log
    assert "ignored.txt" not in log
    assert "state[1]" not in log
    docker_client.images.remove("agentflow/linked:latest", force=True)
