"""Issue 15: the look-around tools the model investigates with.

Every result is bounded (``RESULT_MAX``) and masked; paths stay in the workspace through
``safefs`` (no link followed, no FIFO opened, agentflow's home refused by identity);
searches with the model's regular expression end within their time limit; commands run in
the step's sandbox. Scenes are built from real parts: a run directory from ``Store``, the
workflow from ``load_workflow``, a plan from the static planner, a real sandbox.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import docker
import pytest

from agentflow import safefs
from agentflow.agent import search
from agentflow.agent.tools import LOOK_TOOLS, RESULT_MAX, Scene, Toolbox, ToolError
from agentflow.planner.static import StaticPlanner
from agentflow.redact import Redactor
from agentflow.sandbox.docker import DockerSandbox
from agentflow.sandbox.local import LocalSandbox
from agentflow.state import RunState, StepState
from agentflow.store import RunDir, Store
from agentflow.workflow.load import load_workflow
from agentflow.workflow.model import Sandbox as SandboxConfig

from conftest import TEST_IMAGE, Env, run_id_of

SECRET = "s3cr3t-Tok3n-8f2a91"

WORKFLOW = """\
version: 1
name: looked
secrets: [API_KEY]
env: {MODE: fast, API_KEY: not-this-one}
steps:
  - id: prepare
    run: echo prepare
  - id: server
    service: true
    needs: [prepare]
    run: python3 -m http.server 8000
    env: {PORT: "8000"}
    ready: {http: "http://127.0.0.1:8000/health", timeout: 30s}
  - id: train
    needs: [server]
    run: python3 train.py --epochs 3
    workdir: sub
    success: {files: [model.bin]}
    outputs: {loss: {json: metrics.json, key: loss}}
  - id: report
    needs: [train]
    run: echo report
"""


@dataclass
class World:
    """A workspace, a run of WORKFLOW in a private home, and the scene the tools see."""

    workspace: Path
    home: Path
    run: RunDir
    scene: Scene

    @property
    def tools(self) -> Toolbox:
        return Toolbox(self.scene)

    def call(self, name: str, **args: Any) -> str:
        result = self.tools.call(name, args)
        assert len(result) <= RESULT_MAX, f"{name}: {len(result)} characters"
        assert SECRET not in result
        return result

    def refused(self, name: str, **args: Any) -> str:
        with pytest.raises(ToolError) as e:
            self.tools.call(name, args)
        message = str(e.value)
        assert len(message) <= RESULT_MAX
        assert SECRET not in message
        return message

    def log(self, step: str, text: str | bytes, attempt: int | None = None) -> Path:
        folder = self.run.step_dir(step)
        if attempt is not None:
            folder = folder / f"attempt-{attempt}"
        folder.mkdir(parents=True, exist_ok=True)
        data = text.encode() if isinstance(text, str) else text
        (folder / "output.log").write_bytes(data)
        return folder / "output.log"


@pytest.fixture
def world(tmp_path: Path) -> World:
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    (ws / "wf.yaml").write_text(WORKFLOW)
    wf = load_workflow(ws / "wf.yaml")
    home = tmp_path / "home"
    store = Store(home)
    run = store.create("looked-1")
    plan = StaticPlanner().plan(wf, {})
    state = RunState(
        run_id=run.run_id,
        workflow="looked",
        workflow_file=str(ws / "wf.yaml"),
        workspace=str(ws),
        steps={s.id: StepState() for s in plan.steps},
    )
    state.steps["prepare"] = StepState(status="succeeded", attempts=1, exit_code=0)
    state.steps["train"] = StepState(
        status="failed",
        attempts=2,
        exit_code=1,
        message="exit 1",
        env_overrides={"BATCH": "16"},
        run_override="python3 train.py --epochs 1",
    )
    scene = Scene(
        workspace=ws,
        workflow=wf.workflow,
        redact=Redactor([SECRET]),
        hidden=safefs.identities([home]),
        sandbox=LocalSandbox(ws, wf.workflow.secrets, run.steps_path),
        run=run,
        plan=plan,
        state=state,
        step="train",
        env={"MODE": "fast", "BATCH": "16", "COPY": f"x{SECRET}y"},
    )
    return World(ws, home, run, scene)


def victim(tmp_path: Path) -> Path:
    """A host folder outside the workspace that nothing may show."""
    host = tmp_path / "host"
    host.mkdir(exist_ok=True)
    (host / "precious.txt").write_text("host-only-content\n")
    return host


def quickly(what: Callable[[], Any], seconds: float = 10) -> Any:
    """``what()`` on a thread, failing (not hanging) when it takes longer than ``seconds``."""
    out: list[Any] = []
    err: list[BaseException] = []

    def run() -> None:
        try:
            out.append(what())
        except BaseException as e:
            err.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds}s"
    if err:
        raise err[0]
    return out[0] if out else None


def refused_quickly(world: World, name: str, **args: Any) -> str:
    """The tool's refusal, which must come at once (a FIFO opened would block)."""
    message: str = quickly(lambda: world.refused(name, **args))
    return message


def children_searching() -> list[int]:
    """This process's search children still alive."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and b"agentflow.agent.search" in cmd:
            found.append(int(proc.name))
    return found


# --- the calls themselves ------------------------------------------------------------------


def test_every_tool_of_the_contract_is_there_and_wrong_calls_say_why(world: World) -> None:
    names = [t["name"] for t in LOOK_TOOLS]
    assert names[:8] == [
        "read_file", "list_dir", "grep", "read_log", "step_info", "sandbox_info", "http_get",
        "command_help",
    ]  # fmt: skip
    assert "search_runbooks" in names
    assert "the tools are read_file" in world.refused("rm_rf", path=".")
    assert "start_line" in world.refused("read_file", path="wf.yaml", start_line=0)
    assert "path" in world.refused("read_file")
    assert "recursive: not a field (the fields: path)" in world.refused(
        "list_dir", path=".", recursive=True
    )
    unknown = world.refused("step_info", step="nope")
    assert "unknown step 'nope'" in unknown
    assert "prepare, server, train, report" in unknown
    assert "unknown step" in world.refused("read_log", step="../../etc")


# --- read_file -----------------------------------------------------------------------------


def test_read_file_numbers_lines_and_reads_a_range(world: World) -> None:
    (world.workspace / "sub" / "config.py").write_text(
        "".join(f"value_{i} = {i}\n" for i in range(1, 31))
    )
    whole = world.call("read_file", path="sub/config.py")
    assert "    1| value_1 = 1\n" in whole
    assert "   30| value_30 = 30" in whole
    assert "the end of the file" in whole
    part = world.call("read_file", path="sub/config.py", start_line=12, end_line=14)
    assert part.splitlines()[1:] == [
        "   12| value_12 = 12",
        "   13| value_13 = 13",
        "   14| value_14 = 14",
    ]
    assert "value_15" not in part
    assert "ends before line 99" in world.refused("read_file", path="sub/config.py", start_line=99)
    assert "before start_line" in world.refused(
        "read_file", path="sub/config.py", start_line=5, end_line=2
    )
    assert "is a folder" in world.refused("read_file", path="sub")
    assert "no such file" in world.refused("read_file", path="sub/missing.py")


def test_a_huge_file_is_read_in_a_bounded_window(world: World) -> None:
    big = world.workspace / "big.txt"
    with big.open("w") as f:
        f.writelines(f"line {i} " + "x" * 40 + "\n" for i in range(1, 200_001))
    sparse = world.workspace / "sparse.txt"
    with sparse.open("wb") as f:
        f.write(b"a readable start\n" * 600)
        f.truncate(1 << 30)  # then 1 GiB of nothing
    tracemalloc.start()
    head = world.call("read_file", path="big.txt")
    far = world.call("read_file", path="big.txt", start_line=150_000)
    one = world.call("read_file", path="sparse.txt", start_line=2)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 << 20, f"{peak} bytes to read a window"
    assert "    1| line 1 x" in head
    assert "read_file with start_line=" in head  # says how to read on
    assert "150000| line 150000 x" in far
    assert "2| a readable start" in one
    long_line = world.workspace / "long.txt"
    long_line.write_text("y" * 100_000 + "\n")
    cut = world.call("read_file", path="long.txt")
    assert "line cut: 100000 characters" in cut


def test_a_binary_file_is_named_not_shown(world: World) -> None:
    (world.workspace / "model.bin").write_bytes(b"\x89PNG\x00\x01" * 1000)
    assert world.call("read_file", path="model.bin") == "model.bin: binary, 6000 bytes (not shown)"


@pytest.mark.parametrize(
    "path", ["../host/precious.txt", "a/../../host/precious.txt", "sub/../wf.yaml"]
)
def test_dot_dot_is_refused(world: World, tmp_path: Path, path: str) -> None:
    victim(tmp_path)
    for tool, args in (("read_file", {}), ("list_dir", {}), ("grep", {"pattern": "host"})):
        assert "'..' is not allowed" in world.refused(tool, path=path, **args)


def test_absolute_paths_are_refused_with_a_hint(world: World, tmp_path: Path) -> None:
    host = victim(tmp_path)
    message = world.refused("read_file", path=str(host / "precious.txt"))
    assert "relative to the workspace" in message
    assert "host-only-content" not in message
    assert "not an absolute one" in world.refused("read_file", path="/etc/passwd")
    # The workspace as the sandbox names it: the model is told the relative path.
    assert "'sub/x.py'" in world.refused("read_file", path="/workspace/sub/x.py")
    assert "not an absolute one" in world.refused("list_dir", path="/etc")


def test_links_are_never_followed(world: World, tmp_path: Path) -> None:
    host = victim(tmp_path)
    ws = world.workspace
    (ws / "passwd").symlink_to("/etc/passwd")
    (ws / "linked").symlink_to(host)  # a folder on the way is a link
    (ws / "sub" / "deeper").mkdir()
    (ws / "sub" / "deeper" / "up").symlink_to(host)
    assert "symbolic link" in world.refused("read_file", path="passwd")
    assert "linked is a symbolic link" in world.refused("read_file", path="linked/precious.txt")
    assert "symbolic link" in world.refused("read_file", path="sub/deeper/up/precious.txt")
    assert "symbolic link" in world.refused("list_dir", path="linked")
    assert "symbolic link" in world.refused("grep", pattern="host", path="linked")
    listing = world.call("list_dir", path=".")
    assert "link" in next(line for line in listing.splitlines() if line.endswith("linked"))
    found = world.call("grep", pattern="host-only|root:")
    assert "0 matching lines" in found
    assert "left out: 3 links" in found


def test_a_fifo_is_never_opened(world: World) -> None:
    os.mkfifo(world.workspace / "pipe")
    os.mkfifo(world.workspace / "sub" / "pipe2")
    assert "not a regular file" in refused_quickly(world, "read_file", path="pipe")
    assert "fifo" in quickly(lambda: world.call("list_dir", path="."))
    assert "0 matching lines" in quickly(lambda: world.call("grep", pattern="x", path="."))
    quickly(lambda: world.call("grep", pattern="x", path="sub"))


def _mount_bind(source: Path, target: Path) -> None:
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)


def test_agentflows_home_is_refused_by_identity_through_a_second_path(
    world: World, tmp_path: Path
) -> None:
    """The home (other runs' logs, checkpoints) bound into the workspace under another
    name is the same folder: refused by device and inode, whatever the path."""
    if os.geteuid() != 0:
        pytest.skip("a bind mount needs root")
    (world.home / "runs" / "other").mkdir(parents=True)
    (world.home / "runs" / "other" / "state.json").write_text('{"token": "home-only-content"}')
    inside = world.workspace / "data"
    inside.mkdir()
    _mount_bind(world.home, inside)
    try:
        assert safefs.identity(inside) in world.scene.hidden
        for tool, args in (
            ("read_file", {"path": "data/runs/other/state.json"}),
            ("list_dir", {"path": "data/runs"}),
            ("list_dir", {"path": "data"}),
            ("grep", {"pattern": "token", "path": "data"}),
        ):
            assert "agentflow's own folder" in world.refused(tool, **args), tool
        assert "data" not in world.call("list_dir", path=".").split()
        found = world.call("grep", pattern="home-only")
        assert "0 matching lines" in found
    finally:
        subprocess.run(["umount", "-l", str(inside)], check=False)


def test_the_home_inside_the_workspace_is_refused(tmp_path: Path, world: World) -> None:
    home = world.workspace / ".agentflow"
    (home / "runs").mkdir(parents=True)
    (home / "runs" / "log").write_text("home-only-content\n")
    scene = replace(world.scene, hidden=safefs.identities([home]))
    tools = Toolbox(scene)
    with pytest.raises(ToolError, match="agentflow's own folder"):
        tools.call("read_file", {"path": ".agentflow/runs/log"})
    assert ".agentflow" not in tools.call("list_dir", {"path": "."})
    assert "0 matching lines" in tools.call("grep", {"pattern": "home-only"})


# --- list_dir ------------------------------------------------------------------------------


def test_list_dir_shows_kinds_and_sizes_and_is_bounded(world: World) -> None:
    crowd = world.workspace / "crowd"
    crowd.mkdir()
    for i in range(3000):
        (crowd / f"f{i:05d}.txt").write_text("x" * (i % 7))
    (crowd / "a-dir").mkdir()
    listing = world.call("list_dir", path="crowd")
    assert listing.startswith("crowd: 3001 entries")
    assert "dir             -  a-dir/" in listing
    shown = len(listing.splitlines()) - 2
    assert 100 < shown <= 200
    assert f"[... and {3001 - shown} more]" in listing
    assert "file      6 bytes  f00006.txt" in listing
    assert "an empty folder" in world.call("list_dir", path="crowd/a-dir")
    assert "is not a folder" in world.refused("list_dir", path="wf.yaml/x")


# --- grep ----------------------------------------------------------------------------------


def test_grep_finds_lines_and_skips_what_it_must(world: World) -> None:
    ws = world.workspace
    (ws / "sub" / "train.py").write_text("import os\nlr = 0.1\nassert lr < 0.01, 'too high'\n")
    (ws / ".git").mkdir()
    (ws / ".git" / "config").write_text("assert in git\n")
    (ws / "node_modules").mkdir()
    (ws / "node_modules" / "x.js").write_text("assert in node\n")
    (ws / "weights.bin").write_bytes(b"\0assert\0" * 100)
    with (ws / "huge.log").open("w") as f:
        f.write("assert in a huge file\n" * 200_000)
    found = world.call("grep", pattern=r"assert\s+lr")
    assert "sub/train.py:3: assert lr < 0.01, 'too high'" in found
    assert "git" not in found.split("\n")[1]
    assert "left out:" in found
    assert "large" in found
    assert "binary" in found
    assert "1 matching lines" in found
    one = world.call("grep", pattern="lr", path="sub/train.py")
    assert "sub/train.py:2: lr = 0.1" in one
    assert "invalid regular expression" in world.refused("grep", pattern="(unclosed")
    assert "binary" in world.call("grep", pattern="x", path="weights.bin")


def test_grep_is_bounded_in_matches_and_line_length(world: World) -> None:
    many = world.workspace / "many.txt"
    many.write_text(("needle " + "z" * 2000 + "\n") * 900)
    found = world.call("grep", pattern="needle")
    assert f"stopped at {search.MATCHES} matches" in found
    first = found.splitlines()[1]
    assert first.startswith("many.txt:1: needle")
    assert len(first) < 400
    assert "more not shown" in found


def test_a_catastrophic_pattern_ends_within_the_time_limit(world: World) -> None:
    (world.workspace / "evil.txt").write_text(("a" * 40 + "!\n") * 3)
    began = time.monotonic()
    found = quickly(lambda: world.call("grep", pattern=r"(a+)+$"), seconds=15)
    took = time.monotonic() - began
    assert took < search.SECONDS + search.GRACE + 2, f"{took:.1f}s"
    assert "time limit" in found
    assert children_searching() == []  # the search's process is gone
    began = time.monotonic()
    in_log = world.log("train", ("b" * 40 + "!\n") * 3)
    assert in_log.exists()
    found = quickly(lambda: world.call("read_log", step="train", grep=r"(b|b)+$"), seconds=15)
    assert time.monotonic() - began < search.SECONDS + search.GRACE + 2
    assert "time limit" in found
    assert children_searching() == []


# --- secrets -------------------------------------------------------------------------------


def test_secrets_are_masked_in_files_logs_env_and_searches(world: World) -> None:
    ws = world.workspace
    (ws / ".env").write_text(f"API_KEY={SECRET}\nOTHER=1\n")
    world.log("train", f"starting\nusing key {SECRET} now\nTraceback: bad\n")
    shown = world.call("read_file", path=".env")
    assert "API_KEY=***" in shown
    assert "***" in world.call("read_log", step="train")
    # The pattern runs on masked lines: no match can confirm a guess at a secret's value.
    for pattern in ("s3cr3t", "Tok3n-8f", r"API_KEY=s\d", "8f2a91"):
        assert "0 matching lines" in world.call("grep", pattern=pattern), pattern
        assert "0 matching lines" in world.call("read_log", step="train", grep=pattern)
    assert ".env:1: API_KEY=***" in world.call("grep", pattern="API_KEY")
    info = world.call("step_info", step="train")
    assert '"COPY": "x***y"' in info  # a value that holds the secret
    server = world.call("step_info", step="server")
    assert '"API_KEY": "***"' in server  # a secret's name: its value is never shown
    assert "not-this-one" not in server


def test_a_secret_is_masked_before_anything_is_cut(world: World, tmp_path: Path) -> None:
    """Each cut (a line at 500 characters, a searched line at 2000, a body at 2000, a
    runbook section at 1500) comes after the masking: no piece of a secret is left."""
    ws = world.workspace
    piece = SECRET[:5]
    (ws / "long.txt").write_text("q" * 495 + SECRET + "\n")
    assert piece not in world.call("read_file", path="long.txt")
    (ws / "longer.txt").write_text("q" * 1990 + SECRET + "\n")
    found = world.call("grep", pattern=r"q.{4}$", path="longer.txt")
    assert "longer.txt:1: …" in found
    assert piece not in found
    (ws / ("n" * 195 + SECRET)).write_text("")
    assert piece not in world.call("list_dir", path=".")
    world.log("train", "q" * 495 + SECRET + "\n")
    assert piece not in world.call("read_log", step="train")
    (ws / "RUNBOOK.md").write_text("## Failure: disk\n" + "d " * 709 + SECRET + " more" * 99)
    scene = replace(world.scene, runbooks=[ws / "RUNBOOK.md"])
    assert piece not in Toolbox(scene).call("search_runbooks", {"query": "disk"})

    class Body(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"b" * 1995 + SECRET.encode() + b"\n")

        def log_message(self, format: str, *args: Any) -> None:
            return None

    with serving(Body) as port:
        page = world.call("http_get", url=f"http://127.0.0.1:{port}/")
    assert "bbbbb" in page
    assert piece not in page


# --- read_log ------------------------------------------------------------------------------


def test_read_log_reads_attempts_tail_head_around_and_grep(world: World) -> None:
    world.log("train", "first attempt: CUDA out of memory\n", attempt=1)
    world.log("train", "".join(f"epoch {i}\n" for i in range(1, 201)) + "ValueError: bad shape\n")
    latest = world.call("read_log", step="train")
    assert "train, attempt 2, failed" in latest
    assert "  201| ValueError: bad shape" in latest
    assert "  142| epoch 142" in latest
    assert "epoch 141\n" not in latest  # the last 60 lines
    assert "   3| epoch 3" in world.call("read_log", step="train", head=3)
    assert "epoch 4" not in world.call("read_log", step="train", head=3)
    around = world.call("read_log", step="train", around=100)
    assert "   85| epoch 85" in around
    assert "  115| epoch 115" in around
    assert "epoch 84\n" not in around
    assert "201: ValueError: bad shape" in world.call("read_log", step="train", grep="Error")
    assert "out of memory" in world.call("read_log", step="train", attempt=1)
    assert "has had 2 attempts" in world.refused("read_log", step="train", attempt=3)
    assert "has not run yet" in world.refused("read_log", step="report")
    assert "one of grep, tail" in world.refused("read_log", step="train", grep="x", tail=3)


def test_an_earlier_attempt_whose_log_is_gone_says_so(world: World) -> None:
    world.log("train", "the latest\n")
    message = world.refused("read_log", step="train", attempt=1)
    assert "attempt 1 is not kept" in message


def test_a_huge_log_is_read_bounded(world: World) -> None:
    lines = [f"step {i} loss=0.{i % 97}\n" for i in range(1, 400_001)]
    lines[123_456] = "RuntimeError: the root cause\n"
    world.log("train", "".join(lines))
    tracemalloc.start()
    tail = world.call("read_log", step="train", tail=5000)
    around = world.call("read_log", step="train", around=123_457)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 << 20
    assert tail.endswith("400000| step 400000 loss=0.69")
    assert "lines asked for do not fit" in tail
    assert "123457| RuntimeError: the root cause" in around
    found = world.call("read_log", step="train", grep="RuntimeError")
    assert "123457: RuntimeError: the root cause" in found
    many = world.call("read_log", step="train", grep="loss")
    assert f"stopped at {search.MATCHES} matches" in many


def test_a_planted_log_is_not_followed(world: World, tmp_path: Path) -> None:
    host = victim(tmp_path)
    folder = world.run.step_dir("train")
    folder.mkdir()
    (folder / "output.log").symlink_to(host / "precious.txt")
    assert "output.log not read: it is a symbolic link" in world.refused("read_log", step="train")
    assert "symbolic link" in world.refused("read_log", step="train", grep="host")
    (folder / "output.log").unlink()
    os.mkfifo(folder / "output.log")
    assert "not a regular file" in refused_quickly(world, "read_log", step="train")


def test_read_log_of_a_real_run_with_a_retry(af: Env) -> None:
    wf = af.write(
        """\
        version: 1
        name: flaky
        steps:
          - id: flaky
            run: |
              echo "attempt $AGENTFLOW_ATTEMPT"
              [ "$AGENTFLOW_ATTEMPT" = 2 ] || { echo "Error: try again"; exit 3; }
            retry: {limit: 1, backoff: {initial: 0s}}
        """
    )
    res = af.cli("run", str(wf), "--ci")
    assert res.returncode == 0, res.stdout + res.stderr
    run = Store(af.home).open(run_id_of(res.stdout))
    workflow = load_workflow(wf).workflow
    scene = Scene(
        workspace=af.workspace,
        workflow=workflow,
        redact=Redactor([]),
        hidden=safefs.identities([af.home]),
        run=run,
        plan=run.read_plan(),
        state=run.read_state(),
        step="flaky",
    )
    tools = Toolbox(scene)
    assert "attempt 2" in tools.call("read_log", {"step": "flaky"})
    first = tools.call("read_log", {"step": "flaky", "attempt": 1})
    assert "attempt 1" in first
    assert "Error: try again" in first
    assert "2: Error: try again" in tools.call(
        "read_log", {"step": "flaky", "attempt": 1, "grep": "Error"}
    )
    info = tools.call("step_info", {"step": "flaky"})
    assert '"status": "succeeded"' in info
    assert '"attempts": 2' in info


def test_read_log_without_a_run(world: World) -> None:
    scene = replace(world.scene, run=None, state=None)
    with pytest.raises(ToolError, match="no run yet"):
        Toolbox(scene).call("read_log", {"step": "train"})


# --- step_info -----------------------------------------------------------------------------


def test_step_info_says_what_the_step_is_and_what_depends_on_it(world: World) -> None:
    info = world.call("step_info", step="server")
    assert '"ready": {\n  "http": "http://127.0.0.1:8000/health"' in info
    assert '"dependents": [\n  "train"\n ]' in info
    assert '"downstream": [\n  "train",\n  "report"\n ]' in info
    assert '"needs": [\n  "prepare"\n ]' in info
    assert '"PORT": "8000"' in info
    assert "as written" in info
    assert '"service": true' in info
    train = world.call("step_info", step="train")
    assert '"run_override": "python3 train.py --epochs 1"' in train
    assert '"command": "python3 train.py --epochs 3"' in train
    assert '"env_overrides": {\n  "BATCH": "16"' in train
    assert '"env_is": "rendered, as the step gets it"' in train
    assert '"success": {\n  "files": [\n   "model.bin"' in train
    assert '"key": "loss"' in train
    assert '"status": "failed"' in train


def test_step_info_is_bounded(world: World) -> None:
    scene = replace(world.scene, env={f"VAR_{i}": "v" * 100 for i in range(500)})
    info = Toolbox(scene).call("step_info", {"step": "train"})
    assert len(info) <= RESULT_MAX
    assert "more characters not shown" in info


# --- sandbox_info --------------------------------------------------------------------------


@contextlib.contextmanager
def listening() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_sandbox_info_measures_the_local_sandbox(world: World) -> None:
    with listening() as port:
        info = world.call("sandbox_info")
    assert "backend: local" in info
    assert f"127.0.0.1:{port}" in info
    assert "free disk in the workdir:" in info
    assert "available of" in info
    assert "GPUs:" in info
    unstarted = Toolbox(replace(world.scene, sandbox=None)).call("sandbox_info", {})
    assert "not measured" in unstarted


# --- http_get ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://example.com/", "only loopback"),
        ("https://127.0.0.1/", "only http://"),
        ("http://127.0.0.1@example.com/", "only loopback"),
        ("http://localhost:80@example.com/", "only loopback"),
        ("http://127.0.0.2/", "only loopback"),
        ("http://localhost.example.com/", "only loopback"),
        ("http://0x7f000001/", "only loopback"),
        ("http://[::2]/", "only loopback"),
        ("file:///etc/passwd", "only http://"),
        ("http://127.0.0.1:99999/", "the port is not a number"),
        ("http://127.0.0.1/a b", "no spaces"),
        ("http://127.0.0.1/\r\nX-Evil: 1", "printable ASCII"),
    ],
)
def test_http_get_refuses_what_is_not_loopback(world: World, url: str, why: str) -> None:
    assert why in world.refused("http_get", url=url)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "http://example.com/elsewhere")
            self.end_headers()
            return
        body = b"hello from the service\n" + b"z" * 100_000
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Secret", SECRET)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextlib.contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler] | None = None) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler or _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_http_get_reads_a_local_server_and_follows_no_redirect(world: World) -> None:
    with serving() as port:
        page = world.call("http_get", url=f"http://127.0.0.1:{port}/health")
        moved = world.call("http_get", url=f"http://localhost:{port}/moved")
    assert "HTTP/1.0 200 OK" in page
    assert "Content-Type: text/plain" in page
    assert "hello from the service" in page
    assert "more characters read" in page
    assert "X-Secret" not in page  # a few headers only
    assert "302" in moved
    assert "Location: http://example.com/elsewhere" in moved
    assert "not followed" in moved
    assert "no answer" in world.call("http_get", url=f"http://127.0.0.1:{port}/")


def test_http_get_without_a_sandbox_asks_nothing(world: World) -> None:
    with serving() as port, pytest.raises(ToolError, match="no sandbox yet"):
        Toolbox(replace(world.scene, sandbox=None)).call(
            "http_get", {"url": f"http://127.0.0.1:{port}/"}
        )


def test_http_get_of_a_silent_server_ends_in_time(world: World) -> None:
    with listening() as port:  # accepts (the backlog), never answers
        began = time.monotonic()
        answer = world.call("http_get", url=f"http://127.0.0.1:{port}/")
    assert time.monotonic() - began < 6
    assert "no answer" in answer


# --- command_help --------------------------------------------------------------------------


def test_command_help_runs_in_the_step_folder_with_its_env(world: World) -> None:
    tool = world.workspace / "sub" / "tool.sh"
    tool.write_text(
        '#!/bin/sh\necho "usage: tool [--fast] (mode $MODE, in ${PWD##*/})"\n'
        f'echo "{SECRET}"\nyes line | head -n 5000\n'
    )
    tool.chmod(0o755)
    help_ = world.call("command_help", command="./tool.sh")
    assert help_.startswith("$ ./tool.sh --help\n")
    assert "usage: tool [--fast] (mode fast, in sub)" in help_
    assert "***" in help_
    assert "more characters not shown" in help_


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ("ls; rm -rf x", "';' is not allowed"),
        ("ls && id", "'&&' is not allowed"),
        ("cat /etc/passwd | head", "'|' is not allowed"),
        ("ls > out", "'>' is not allowed"),
        ("echo $(id)", "no command substitution"),
        ("echo `id`", "no command substitution"),
        ("ls\nid", "one line"),
        ("x" * 301, "at most 300"),
        ("", "give a command"),
        ("echo 'unclosed", "cannot be read"),
    ],
)
def test_command_help_refuses_what_is_not_one_command(world: World, command: str, why: str) -> None:
    assert why in world.refused("command_help", command=command)


def test_command_help_without_a_sandbox(world: World) -> None:
    with pytest.raises(ToolError, match="no sandbox yet"):
        Toolbox(replace(world.scene, sandbox=None)).call("command_help", {"command": "ls"})


# Outside Docker command_help runs on this machine, unapproved: plain words only.


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ("python3 -c print", "the option '-c' is not allowed"),
        ("python3 -c 'import os'", "is not a plain word"),
        ("bash -c id", "the option '-c' is not allowed"),
        ("perl -e print", "the option '-e' is not allowed"),
        ("node -e 1", "the option '-e' is not allowed"),
        ("find . -delete --help", "the option '-delete' is not allowed"),
        ("rm -rf x --help", "the option '-rf' is not allowed"),
        ("ls -h", "the option '-h' is not allowed"),
        ("-m json.tool", "the option '-m' is not allowed"),
        ("echo $HOME", "is not a plain word"),
        ('echo "x"', "is not a plain word"),
        ("ls *.py", "is not a plain word"),
        ("ls x?", "is not a plain word"),
        ("ls [ab]", "is not a plain word"),
        ("ls ~", "is not a plain word"),
        ("a b c d e f g", "the command has 7 words"),
        ("LD_PRELOAD=./x.so ls", "no VAR=value before the command"),
        ("python3 -m base64 /etc/passwd", "out of the step's folder"),
        ("dd if=/etc/passwd", "out of the step's folder"),
        ("cat ../wf.yaml", "out of the step's folder"),
        ("busybox killall no-such-program", "busybox"),
    ],
)
def test_command_help_on_this_machine_refuses_what_is_not_plain(
    world: World, command: str, why: str
) -> None:
    message = world.refused("command_help", command=command)
    assert why in message
    assert "at most 6 plain words" in message  # and what is allowed
    assert "python3 -m pkg.train" in message


def test_command_help_on_this_machine_runs_plain_commands(world: World) -> None:
    sub = world.workspace / "sub"
    (sub / "tinylm").mkdir()
    (sub / "tinylm" / "__init__.py").write_text("")
    (sub / "tinylm" / "train.py").write_text(
        "import argparse\nargparse.ArgumentParser().add_argument('--epochs').parse_args()\n"
    )
    (sub / "train.sh").write_text('#!/bin/sh\necho "train.sh got: $*"\n')
    (sub / "train.sh").chmod(0o755)
    shown = {
        "python3 -m tinylm.train": "--epochs",
        "python3 -m tinylm.train --help": "--epochs",
        "./train.sh": "train.sh got: --help",
        "./train.sh run fast": "train.sh got: run fast --help",
        "torchrun": "torchrun",  # run, whether it is installed or not
        "git commit": "git-commit",  # its manual, or that there is none
        "git help": "git-help",  # --help is added: a last word `help` is a word
    }
    for command, part in shown.items():
        result = world.call("command_help", command=command)
        asked = command.removesuffix(" --help")
        assert result.startswith(f"$ {asked} --help\n"), result
        assert part in result.lower(), result


def test_command_help_on_this_machine_reads_help_before_acting(world: World) -> None:
    victim = world.workspace / "sub" / "victim"
    victim.write_text("keep me\n")
    # `help` as the last word once meant "already asks for help": it is an argument.
    world.call("command_help", command="rm victim help")
    assert victim.exists()
    # A GNU program reads options after its arguments, unless POSIXLY_CORRECT is set.
    posix = replace(world.scene, env={**world.scene.env, "POSIXLY_CORRECT": "1"})
    Toolbox(posix).call("command_help", {"command": "rm victim"})
    assert victim.exists()


def test_command_help_on_this_machine_runs_no_shell_builtin(world: World) -> None:
    mark = world.workspace / "sub" / "mark.sh"
    mark.write_text("#!/bin/sh\ntouch marked\n")
    mark.chmod(0o755)
    # The shell's own `trap` would run ./mark.sh when the shell ends, --help or not.
    result = world.call("command_help", command="trap ./mark.sh EXIT")
    assert not (world.workspace / "sub" / "marked").exists()
    assert "not found" in result  # `exec trap`: no such program
    # The shell's own `kill` signals at once; a number is refused before anything runs.
    with subprocess.Popen(["sleep", "60"]) as sleeper:
        try:
            assert "no number" in world.refused("command_help", command=f"kill {sleeper.pid}")
            time.sleep(0.2)
            assert sleeper.poll() is None
        finally:
            sleeper.kill()


def test_command_help_on_this_machine_refuses_a_link_to_busybox(world: World) -> None:
    # On Alpine `killall` is busybox, whose applets do not wait for --help.
    (world.workspace / "sub" / "killall").symlink_to("/no/such/bin/busybox")
    assert "busybox" in world.refused("command_help", command="./killall python3")


# --- search_runbooks -----------------------------------------------------------------------


def test_search_runbooks_finds_the_sections_that_mention_the_words(
    world: World, tmp_path: Path
) -> None:
    ws = world.workspace
    (ws / "RUNBOOK.md").write_text(
        "# Runbook\n\n## Setup\nInstall things.\n\n## Failure modes\n\n"
        "### CUDA out of memory\nHalve BATCH and retry.\n\n"
        "### Port in use\nStop the stale server.\n"
    )
    (ws / "linked.md").symlink_to(victim(tmp_path) / "precious.txt")
    scene = replace(world.scene, runbooks=[ws / "RUNBOOK.md", ws / "linked.md"])
    found = Toolbox(scene).call("search_runbooks", {"query": "out of memory batch"})
    assert "### CUDA out of memory\nHalve BATCH and retry." in found
    assert "Stop the stale server" not in found
    assert "host-only" not in found
    assert "linked.md" in found  # not read, and says so
    assert "no runbooks" in world.call("search_runbooks", query="memory")


# --- Docker --------------------------------------------------------------------------------


PYTHON_IMAGE = "python:3.11-slim"


@pytest.fixture
def boxed(
    world: World, docker_client: docker.DockerClient, request: pytest.FixtureRequest
) -> Iterator[World]:
    """The world with a real Docker sandbox: busybox (no python3, no curl) unless the
    test asks for another image."""
    image = getattr(request, "param", TEST_IMAGE)
    config = SandboxConfig.model_validate({"backend": "docker", "image": image})
    box = DockerSandbox(
        config,
        run_id=f"tools-{os.getpid()}-{time.monotonic_ns() % 100000}",
        workflow="looked",
        workspace=world.workspace,
        steps_dir=world.run.steps_path,
        home=world.home,
    )
    box.start()
    try:
        yield replace(world, scene=replace(world.scene, sandbox=box))
    finally:
        box.close()


@pytest.mark.docker
def test_the_tools_look_inside_a_docker_sandbox(boxed: World) -> None:
    box = boxed.scene.sandbox
    assert box is not None
    code, out = box.exec(
        "mkdir -p /tmp/www && echo served-inside > /tmp/www/index.html && "
        "httpd -p 127.0.0.1:8080 -h /tmp/www",
        "/workspace",
        10,
    )
    assert code == 0, out
    info = boxed.call("sandbox_info")
    assert "backend: docker" in info
    assert "read-only root" in info
    assert "127.0.0.1:8080" in info
    assert "free disk in the workdir:" in info
    page = boxed.call("http_get", url="http://127.0.0.1:8080/")
    assert "200" in page
    assert "served-inside" in page
    # The host's own loopback has no such server: the request ran in the container.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", 8080), timeout=1).close()
    help_ = boxed.call("command_help", command="ls")
    assert help_.startswith("$ ls --help")
    assert "Usage: ls" in help_ or "usage: ls" in help_.lower()
    tool = boxed.workspace / "sub" / "noisy.sh"
    tool.write_text(f'echo "mode $MODE {SECRET}"; yes noise | head -n 100000\n')
    noisy = boxed.call("command_help", command="sh noisy.sh")
    assert "mode fast ***" in noisy
    assert "more characters not shown" in noisy
    # The container is the boundary: the rules of this machine do not apply there.
    assert "inline-inside" in boxed.call("command_help", command="sh -c 'echo inline-inside'")


@pytest.mark.docker
@pytest.mark.parametrize("boxed", [PYTHON_IMAGE], indirect=True)
def test_http_get_and_help_with_python_in_the_sandbox(boxed: World) -> None:
    box = boxed.scene.sandbox
    assert box is not None
    (boxed.workspace / "sub" / "index.html").write_text(f"from python {SECRET}\n")
    code, out = box.exec(
        "(python3 -m http.server 8081 --bind 127.0.0.1 >/dev/null 2>&1 &); sleep 1",
        "/workspace/sub",
        10,
    )
    assert code == 0, out
    page = boxed.call("http_get", url="http://localhost:8081/index.html")
    assert "HTTP/1.0 200 OK" in page
    assert "from python ***" in page
    assert "no answer" in boxed.call("http_get", url="http://127.0.0.1:8082/")
    help_ = boxed.call("command_help", command="python3 -m http.server")
    assert "(exit 0)" in help_
    assert "--bind ADDRESS" in help_


# --- the step's rendered workdir -----------------------------------------------------------


def test_commands_run_in_the_rendered_workdir(world: World) -> None:
    # `workdir: ${{ inputs.where }}` in a workflow: only the runner knows the folder.
    other = world.workspace / "other"
    other.mkdir()
    tool = other / "where.sh"
    tool.write_text('#!/bin/sh\necho "usage: where (in ${PWD##*/})"\n')
    tool.chmod(0o755)
    scene = replace(world.scene, workdir=str(other))
    assert "usage: where (in other)" in Toolbox(scene).call(
        "command_help", {"command": "./where.sh"}
    )


def test_a_rendered_workdir_that_is_not_there_is_said(world: World) -> None:
    scene = replace(world.scene, workdir=str(world.workspace / "gone"))
    tools = Toolbox(scene)
    help_ = tools.call("command_help", {"command": "ls"})
    assert "(not run: exit 127)" in help_
    assert "gone" in help_
    info = tools.call("sandbox_info", {})
    assert "not measured" in info
    assert "gone" in info  # the df of the step's folder, not the workspace's


@pytest.mark.docker
def test_commands_run_in_the_rendered_workdir_inside_docker(boxed: World) -> None:
    box = boxed.scene.sandbox
    assert box is not None
    (boxed.workspace / "other").mkdir()
    (boxed.workspace / "other" / "where.sh").write_text('echo "in ${PWD}"\n')
    code, out = box.exec(
        "mkdir -p /tmp/www && echo up > /tmp/www/index.html && httpd -p 127.0.0.1:8080 -h /tmp/www",
        "/workspace",
        10,
    )
    assert code == 0, out
    there = Toolbox(replace(boxed.scene, workdir="/workspace/other"))
    assert "in /workspace/other" in there.call("command_help", {"command": "sh where.sh"})
    gone = Toolbox(replace(boxed.scene, workdir="/workspace/gone"))
    assert "(not run: exit 126)" in gone.call("command_help", {"command": "ls"})
    # A GET needs no workdir: it is asked from the workspace, which is there.
    assert "200" in gone.call("http_get", {"url": "http://127.0.0.1:8080/"})
