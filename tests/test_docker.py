"""The Docker sandbox, on a real daemon: lock-down, secrets, timeouts, crashes, resume, builds.

These run in CI (.ci/run starts dockerd and makes the images). On a laptop without a
Docker daemon they are skipped, and say so.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from agentflow.tmux import socket_path_for

from conftest import TEST_IMAGE, Env, run_id_of

pytestmark = pytest.mark.docker

IMAGE = TEST_IMAGE
ROOT = Path(__file__).resolve().parent.parent


def workflow(body: str, extra: str = "") -> str:
    return (
        f"version: 1\nname: boxed\n{extra}sandbox:\n  backend: docker\n  image: {IMAGE}\n"
        f"  resources: {{cpus: 1, memory: 256m, pids: 200}}\nsteps:\n{body}"
    )


def container_of(docker_client: docker.DockerClient, run_id: str) -> Any:
    found = docker_client.containers.list(all=True, filters={"label": f"agentflow.run={run_id}"})
    assert len(found) == 1, found
    return found[0]


def test_the_container_is_locked_down(af: Env, docker_client: docker.DockerClient) -> None:
    wf = af.write(
        workflow(
            """\
  - id: look
    run: |
      echo "uid=$(id -u) gid=$(id -g)"
      grep CapEff /proc/self/status
      ls /sys/class/net
      touch /root-is-writable 2>/dev/null && echo "root writable" || echo "root read-only"
      touch /tmp/tmp-ok && echo "tmp writable"
      echo made-here > made-by-step.txt
      ls /
  - id: hold
    needs: [look]
    run: sleep 30
"""
        )
    )
    proc = af.start("run", str(wf), "--run-id", "lock1")
    af.wait_for(lambda: af.state("lock1")["steps"]["hold"]["status"] == "running")
    c = container_of(docker_client, "lock1")
    host = c.attrs["HostConfig"]
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["ReadonlyRootfs"] is True
    assert host["NetworkMode"] == "none"
    assert host["Memory"] == 256 * 1024 * 1024
    assert host["PidsLimit"] == 200
    assert host["NanoCpus"] == 1_000_000_000
    assert c.attrs["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"
    assert c.labels["agentflow.workflow"] == "boxed"
    mounts = {m["Destination"]: m["Source"] for m in c.attrs["Mounts"]}
    assert mounts == {
        "/workspace": str(af.workspace),
        "/agentflow/steps": str(af.run_dir("lock1") / "steps"),
    }
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    log = (af.run_dir("lock1") / "steps" / "look" / "output.log").read_text()
    assert f"uid={os.getuid()} gid={os.getgid()}" in log
    assert "CapEff:\t0000000000000000" in log
    assert re.search(r"^lo$", log, re.M)
    assert "eth0" not in log
    assert "root read-only" in log
    assert "tmp writable" in log
    made = af.workspace / "made-by-step.txt"
    assert made.read_text() == "made-here\n"
    assert made.stat().st_uid == os.getuid()
    af.cli("stop", "lock1")


def test_a_secret_is_masked_and_found_nowhere(af: Env, docker_client: docker.DockerClient) -> None:
    secret = "s3cr3t-Value-42"
    wf = af.write(
        workflow(
            """\
  - id: leak
    run: |
      echo "the token is $API_TOKEN"
      echo "$API_TOKEN" > /tmp/copy
      cat /tmp/copy >&2
      exit 3
""",
            extra="secrets: [API_TOKEN]\n",
        )
    )
    af.env["API_TOKEN"] = secret
    res = af.cli("run", str(wf), "--run-id", "sec1", "--keep-sandbox")
    assert res.returncode == 1
    log = (af.run_dir("sec1") / "steps" / "leak" / "output.log").read_text()
    assert log == "the token is ***\n***\n"
    for path in af.run_dir("sec1").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in res.stdout + res.stderr
    env = container_of(docker_client, "sec1").attrs["Config"]["Env"]
    assert not any(secret in e for e in env), "not in the container's configuration"
    af.cli("stop", "sec1")


def test_a_missing_secret_stops_before_anything_starts(
    af: Env, docker_client: docker.DockerClient
) -> None:
    wf = af.write(workflow("  - id: a\n    run: 'true'\n", extra="secrets: [NOT_SET_HERE]\n"))
    af.env.pop("NOT_SET_HERE", None)
    res = af.cli("run", str(wf))
    assert res.returncode == 4
    assert "NOT_SET_HERE" in res.stderr
    assert not (af.home / "runs").exists() or not list((af.home / "runs").iterdir())


def test_a_timeout_leaves_no_process_in_the_container(
    af: Env, docker_client: docker.DockerClient
) -> None:
    wf = af.write(
        workflow(
            """\
  - id: slow
    timeout: 1s
    run: |
      sleep 300 &
      sleep 301
"""
        )
    )
    res = af.cli("run", str(wf), "--run-id", "to1", "--keep-sandbox")
    assert res.returncode == 1
    assert af.state("to1")["steps"]["slow"]["status"] == "timeout"
    _, out = container_of(docker_client, "to1").exec_run(["ps", "-o", "args"])
    assert b"sleep 30" not in out, out.decode()
    assert af.cli("stop", "to1").returncode == 0
    assert not docker_client.containers.list(all=True, filters={"label": "agentflow.run=to1"})


def test_container_killed_mid_step_is_crashed_then_rerun(
    af: Env, docker_client: docker.DockerClient
) -> None:
    wf = af.write(
        workflow(
            """\
  - id: victim
    retry: {limit: 1, backoff: {initial: 0s}}
    run: |
      echo "attempt $AGENTFLOW_ATTEMPT" >> attempts.txt
      [ "$AGENTFLOW_ATTEMPT" -gt 1 ] || sleep 60
"""
        )
    )
    proc = af.start("run", str(wf), "--run-id", "kill1")
    af.wait_for(lambda: (af.workspace / "attempts.txt").exists(), message="attempt 1")
    container_of(docker_client, "kill1").kill()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert (af.workspace / "attempts.txt").read_text() == "attempt 1\nattempt 2\n"
    kinds = [json.loads(line) for line in (af.run_dir("kill1") / "events.jsonl").open()]
    assert any(e.get("status") == "crashed" for e in kinds)
    assert not docker_client.containers.list(all=True, filters={"label": "agentflow.run=kill1"})


def test_resume_reattaches_to_the_live_container(
    af: Env, docker_client: docker.DockerClient
) -> None:
    wf = af.write(
        workflow(
            """\
  - id: long
    run: |
      echo started >> starts.txt
      while [ ! -e release ]; do sleep 0.1; done
  - id: after
    needs: [long]
    run: echo after >> starts.txt
"""
        )
    )
    proc = af.start("run", str(wf), "--run-id", "re1")
    af.wait_for(lambda: (af.workspace / "starts.txt").exists(), message="long started")
    before = container_of(docker_client, "re1").id
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = af.start("resume", "re1")
    af.wait_for(lambda: "run_resumed" in (af.run_dir("re1") / "events.jsonl").read_text())
    assert container_of(docker_client, "re1").id == before
    (af.workspace / "release").touch()
    out, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, out + err
    assert (af.workspace / "starts.txt").read_text() == "started\nafter\n"


def test_build_from_a_dockerfile_and_a_failed_build(
    af: Env, docker_client: docker.DockerClient
) -> None:
    (af.workspace / "img").mkdir()
    (af.workspace / "img" / "Dockerfile").write_text(
        f'FROM {IMAGE}\nARG WORD=none\nRUN echo "$WORD" > /baked\n'
    )
    body = "  - id: show\n    run: cat /baked\n"
    wf = af.write(
        "version: 1\nname: built\nsandbox:\n  backend: docker\n"
        "  build: {context: img, args: {WORD: baked-in}}\nsteps:\n" + body
    )
    res = af.cli("run", str(wf), "--run-id", "b1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert (af.run_dir("b1") / "steps" / "show" / "output.log").read_text() == "baked-in\n"
    assert "Successfully built" in (af.run_dir("b1") / "build.log").read_text()
    (af.workspace / "img" / "Dockerfile").write_text(f"FROM {IMAGE}\nRUN exit 42\n")
    res = af.cli("run", str(wf), "--run-id", "b2")
    assert res.returncode == 4
    assert "building agentflow/built:latest failed" in res.stderr
    assert "Traceback" not in res.stderr


def test_no_daemon_is_exit_4_and_auto_falls_back_to_local(af: Env) -> None:
    af.env["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"
    wf = af.write(workflow("  - id: a\n    run: echo ran-somewhere\n"))
    res = af.cli("run", str(wf))
    assert res.returncode == 4
    assert "no Docker daemon answers" in res.stderr
    assert "--sandbox local" in res.stderr
    auto = af.write(
        f"version: 1\nname: auto\nsandbox: {{image: {IMAGE}}}\nsteps:\n"
        "  - id: a\n    run: echo ran-here\n",
        "auto.yaml",
    )
    res = af.cli("run", str(auto))
    assert res.returncode == 0, res.stderr
    assert "no Docker daemon answers: steps run on this machine" in res.stderr
    assert af.state(run_id_of(res.stdout))["sandbox"] == "local"


def test_a_bad_mount_names_itself(af: Env, docker_client: docker.DockerClient) -> None:
    wf = af.write(
        workflow(
            "  - id: a\n    run: 'true'\n",
        ).replace(
            "  resources:", "  mounts: [{source: ./no-such-dir, target: /data}]\n  resources:"
        )
    )
    res = af.cli("run", str(wf))
    assert res.returncode == 2
    assert "sandbox.mounts[0].source: ./no-such-dir does not exist" in res.stderr
    assert not (af.home / "runs").exists(), "refused before a run directory exists"


def test_gc_reaps_containers_of_finished_runs(af: Env, docker_client: docker.DockerClient) -> None:
    wf = af.write(workflow("  - id: a\n    run: 'true'\n"))
    assert af.cli("run", str(wf), "--run-id", "gc1", "--keep-sandbox").returncode == 0
    assert container_of(docker_client, "gc1").status == "running"
    res = af.cli("gc")
    assert res.returncode == 0
    assert "agentflow-gc1" in res.stdout
    assert not docker_client.containers.list(all=True, filters={"label": "agentflow.run=gc1"})


def test_hello_workflow_runs_in_docker(af: Env, docker_client: docker.DockerClient) -> None:
    res = af.cli("run", str(ROOT / "workflows" / "hello.yaml"), "--sandbox", "docker", timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    state = af.state(run_id_of(res.stdout))
    assert state["sandbox"] == "docker"
    assert state["status"] == "succeeded"


def test_plan_shows_the_sandbox_and_its_relaxations(af: Env) -> None:
    wf = af.write(
        workflow("  - id: a\n    run: 'true'\n").replace("backend: docker", "network: host")
    )
    res = af.cli("plan", str(wf))
    assert res.returncode == 0
    assert "all capabilities dropped" in res.stdout
    assert "relaxed: network: host" in res.stdout


def test_a_service_probe_runs_inside_a_no_network_sandbox(
    af: Env, docker_client: docker.DockerClient
) -> None:
    wf = af.write(
        workflow(
            """\
  - id: server
    service: true
    run: |
      mkdir -p /tmp/www && echo hello-from-inside > /tmp/www/index.html
      sleep 1
      exec httpd -f -p 127.0.0.1:8080 -h /tmp/www
    ready: {http: "http://127.0.0.1:8080/", interval: 200ms, timeout: 30s}
  - id: tcp-user
    needs: [server]
    service: true
    run: sleep 60
    ready: {tcp: "127.0.0.1:8080", interval: 200ms, timeout: 10s}
  - id: docker_client
    needs: [tcp-user]
    run: wget -q -O - http://127.0.0.1:8080/
"""
        )
    )
    res = af.cli("run", str(wf), "--run-id", "svc1")
    assert res.returncode == 0, res.stdout + res.stderr
    steps = af.state("svc1")["steps"]
    assert steps["server"]["ready_at"] is not None
    assert steps["server"]["status"] == "succeeded"
    log = (af.run_dir("svc1") / "steps" / "docker_client" / "output.log").read_text()
    assert log == "hello-from-inside\n"
    # the host cannot reach it: the container has no network of its own
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", 8080), timeout=1).close()


def test_a_step_cannot_reach_the_host_through_agentflows_files(
    af: Env, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """The home inside the workspace is hidden, the tmux socket is elsewhere, and symlinks
    planted in the steps folder are not followed by the host."""
    victim = tmp_path / "host-file.txt"
    victim.write_text("host content\n")
    af.env["AGENTFLOW_HOME"] = str(af.workspace / ".agentflow")
    af.home = af.workspace / ".agentflow"
    wf = af.write(
        workflow(
            f"""\
  - id: plant
    run: |
      ls -A /workspace/.agentflow | wc -l > seen-home.txt
      ln -s {victim} /agentflow/steps/second/run.sh 2>/dev/null || {{
        mkdir -p /agentflow/steps/second && ln -s {victim} /agentflow/steps/second/run.sh; }}
      mkdir -p /agentflow/steps/third && ln -s {victim} /agentflow/steps/third/output.log
  - id: second
    needs: [plant]
    run: echo second ran
  - id: third
    needs: [second]
    run: echo third ran
"""
        )
    )
    res = af.cli("run", str(wf), "--run-id", "esc1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert (af.workspace / "seen-home.txt").read_text().strip() == "0"
    assert victim.read_text() == "host content\n", "the host file was not overwritten"
    junit = (af.run_dir("esc1") / "junit.xml").read_text()
    assert "host content" not in junit
    assert not str(socket_path_for(af.home)).startswith(str(af.workspace))
