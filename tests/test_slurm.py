"""The Slurm sandbox, on a real one-node cluster (slurmctld and slurmd on localhost, which
scripts/slurm-setup starts; .ci/run does it): each step a job started from its tmux window,
one squeue per check, scancel for timeouts and stops, Slurm's own endings as statuses,
resume, services on their node. Skipped, and saying so, where no cluster answers; in CI
they must run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from agentflow.sandbox.slurm import resource_options, slurm_time
from agentflow.workflow.model import Resources

from conftest import Env

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module", autouse=True)
def cluster() -> None:
    sinfo = shutil.which("sinfo")
    answer = (
        subprocess.run([sinfo, "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
        if sinfo
        else None
    )
    if answer is None or answer.returncode != 0 or not answer.stdout.strip():
        why = "Slurm is not installed" if sinfo is None else f"sinfo: {answer and answer.stderr}"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Slurm tests, but no cluster answers ({why})")
        pytest.skip(f"no Slurm cluster answers here ({why}); scripts/slurm-setup starts one")


def jobs_of(run_id: str, *, settled: bool = False) -> dict[str, str]:
    """Job name → state, for the run's jobs Slurm still remembers; ``settled`` waits (up to
    30 s) for jobs that ended to leave COMPLETING, which a loaded slurmctld takes a while to
    do after the step's own end (what agentflow judges by)."""
    deadline = time.monotonic() + 30
    found = _jobs_of(run_id)
    while settled and "COMPLETING" in found.values() and time.monotonic() < deadline:
        time.sleep(0.2)
        found = _jobs_of(run_id)
    return found


def _jobs_of(run_id: str) -> dict[str, str]:
    out = subprocess.run(
        ["squeue", "-h", "--states=all", "-o", "%j|%T"], capture_output=True, text=True, check=True
    ).stdout
    found = {}
    for line in out.splitlines():
        name, state = line.split("|")
        if name.startswith(f"agentflow.{run_id}."):
            found[name.split(".", 2)[2]] = state
    return found


def workflow(steps: str, sandbox: str = "") -> str:
    return f"version: 1\nname: onslurm\nsandbox:\n  backend: slurm\n{sandbox}steps:\n{steps}"


def test_resources_and_time_become_srun_options() -> None:
    res = Resources(cpus=1.5, memory="2g", gpus=2, nodes=3)
    assert resource_options(res) == ["--nodes=3", "--cpus-per-task=2", "--mem=2048M", "--gpus=2"]
    assert slurm_time(90) == "0-00:01:30"
    assert slurm_time(2 * 86400 + 3661.2) == "2-01:01:02"


def test_hello_runs_each_step_as_a_job_with_its_resources(af: Env) -> None:
    af.write(
        workflow(
            """\
  - id: first
    run: echo "job $SLURM_JOB_ID named $SLURM_JOB_NAME"
  - id: second
    needs: [first]
    resources: {cpus: 2}
    run: echo "cpus $SLURM_CPUS_PER_TASK"; for i in 1 2 3; do echo "part $i/3"; done
    expect: {progress: 'part (\\d+)/(\\d+)'}
""",
            "  resources: {cpus: 1, memory: 128m}\n  slurm: {time: 5m}\n",
        )
    )
    res = af.cli("run", "wf.yaml", "--ci", "--run-id", "hello")
    assert res.returncode == 0, res.stdout + res.stderr
    first = (af.run_dir("hello") / "steps" / "first" / "output.log").read_text()
    assert "named agentflow.hello.first" in first
    second = (af.run_dir("hello") / "steps" / "second" / "output.log").read_text()
    assert "cpus 2" in second  # the step's own resources, not the sandbox's
    assert af.state("hello")["steps"]["second"]["progress"]["done"] == 3
    assert jobs_of("hello", settled=True) == {"first": "COMPLETED", "second": "COMPLETED"}
    assert af.state("hello")["sandbox"] == "slurm"


def test_a_failing_step_fails_with_its_exit_code(af: Env) -> None:
    af.write(workflow("  - id: bad\n    run: echo broken; exit 7\n"))
    res = af.cli("run", "wf.yaml", "--ci", "--run-id", "bad")
    assert res.returncode == 1
    st = af.state("bad")["steps"]["bad"]
    assert st["status"] == "failed"
    assert st["exit_code"] == 7
    assert jobs_of("bad", settled=True) == {"bad": "FAILED"}


def test_a_timeout_cancels_the_job(af: Env) -> None:
    af.write(workflow("  - id: slow\n    run: echo started; sleep 120\n    timeout: 2s\n"))
    began = time.monotonic()
    res = af.cli("run", "wf.yaml", "--ci", "--run-id", "slow", timeout=90)
    assert res.returncode == 1
    assert time.monotonic() - began < 40
    st = af.state("slow")["steps"]["slow"]
    assert st["status"] == "timeout"
    assert jobs_of("slow")["slow"] != "RUNNING"  # the job is over, not left on the cluster


def test_scancel_from_outside_is_a_crash_and_is_retried(af: Env) -> None:
    af.write(
        workflow(
            """\
  - id: victim
    run: echo "attempt $AGENTFLOW_ATTEMPT"; if [ "$AGENTFLOW_ATTEMPT" = 1 ]; then sleep 120; fi
    retry: {limit: 1, backoff: {initial: 1s}}
"""
        )
    )
    proc = af.start("run", "wf.yaml", "--ci", "--run-id", "cx")
    af.wait_for(lambda: jobs_of("cx").get("victim") == "RUNNING", timeout=30, message="job")
    subprocess.run(["scancel", "--name=agentflow.cx.victim"], check=True)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, out + err
    assert "crashed: Slurm job" in out
    assert "CANCELLED" in out
    st = af.state("cx")["steps"]["victim"]
    assert st["status"] == "succeeded"
    assert st["attempts"] == 2


def test_resume_after_sigkill_reattaches_to_a_running_job(af: Env) -> None:
    af.write(
        workflow(
            """\
  - id: train
    run: for i in $(seq 1 8); do echo "epoch $i/8"; sleep 0.5; done; echo done >> runs.txt
  - id: after
    needs: [train]
    run: echo after
"""
        )
    )
    proc = af.start("run", "wf.yaml", "--ci", "--run-id", "rs")
    af.wait_for(lambda: jobs_of("rs").get("train") == "RUNNING", timeout=30, message="job")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert jobs_of("rs")["train"] in ("RUNNING", "COMPLETING", "COMPLETED")  # it goes on
    res = af.cli("resume", "rs", "--ci", timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (af.workspace / "runs.txt").read_text() == "done\n"  # trained once, not twice
    steps = af.state("rs")["steps"]
    assert steps["train"]["attempts"] == 1
    assert steps["after"]["status"] == "succeeded"


def test_a_service_is_probed_on_its_node_and_dependents_get_its_host(af: Env) -> None:
    port = 21000 + os.getpid() % 2000
    af.write(
        workflow(
            f"""\
  - id: serve
    service: true
    run: exec python3 -m http.server {port} --bind 0.0.0.0
    ready: {{http: "http://127.0.0.1:{port}/", timeout: 60s, interval: 500ms}}
  - id: client
    needs: [serve]
    run: python3 -c "import urllib.request as u; print(u.urlopen('http://${{{{ steps.serve.outputs.host }}}}:{port}/').status)"
"""  # noqa: E501
        )
    )
    res = af.cli("run", "wf.yaml", "--ci", "--run-id", "svc", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    steps = af.state("svc")["steps"]
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    assert steps["serve"]["outputs"]["host"] == host  # the job's node, from Slurm
    assert "200" in (af.run_dir("svc") / "steps" / "client" / "output.log").read_text()
    assert jobs_of("svc")["serve"] != "RUNNING"  # stopped at the end of the run


def test_stop_cancels_the_runs_jobs(af: Env) -> None:
    af.write(workflow("  - id: a\n    run: sleep 120\n  - id: b\n    run: sleep 120\n"))
    proc = af.start("run", "wf.yaml", "--ci", "--run-id", "st")
    af.wait_for(
        lambda: set(jobs_of("st").values()) == {"RUNNING"} and len(jobs_of("st")) == 2,
        timeout=30,
        message="jobs",
    )
    assert af.cli("stop", "st").returncode == 0
    proc.wait(timeout=30)
    assert "RUNNING" not in jobs_of("st").values()
