"""The sandbox boundary, process lifetime and the log: every process a step starts ends
with the step (at its end, its timeout, a crash, `agentflow stop`), also after `setsid` or
a daemon's double fork; and output lost on the way to output.log (a full disk) is
recorded and shown, not silent.

Each test's processes sleep for numbers of seconds made for the test (its tag), so that
they are found by their command line, whatever the mechanism that should have ended them.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentflow.store import RunDir

from conftest import TEST_IMAGE, Env, fill

DOCKER = f"sandbox: {{backend: docker, image: {TEST_IMAGE}}}\n"
LOCAL = "sandbox: {backend: local}\n"


@pytest.fixture
def tag() -> Iterator[str]:
    """Digits no other test's sleeps use; whatever sleeps with them is killed at the end."""
    tag = str(random.randint(10**6, 10**7 - 1))
    yield tag
    for pid in leftovers(tag):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def leftovers(tag: str) -> list[int]:
    """Live processes on this machine with an argument that is one of the tag's numbers
    (the tag and a digit), or the tag itself."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")  # zombie: ""
        except OSError:
            continue
        if any(a.startswith(tag) and a[len(tag) :] in ("", *"0123456789") for a in args):
            found.append(int(cmdline.parent.name))
    return found


def in_container(docker_client: Any, run_id: str, tag: str) -> list[str]:
    """The processes of the run's (kept) container whose arguments hold the tag."""
    (box,) = docker_client.containers.list(filters={"label": f"agentflow.run={run_id}"})
    _, out = box.exec_run(["ps", "-o", "args"])
    return [line for line in out.decode().splitlines() if tag in line]


def spawner(tag: str) -> str:
    """A script whose first attempt leaves the step's process group three ways and then
    sleeps; a later attempt lists what is left of them (in the sandbox) and ends."""
    return f"""\
      if [ "$AGENTFLOW_ATTEMPT" -gt 1 ]; then
        grep -lszx -e '{tag}[0-9]' /proc/[0-9]*/cmdline > leftovers.txt || true
        exit 0
      fi
      setsid sh -c 'sleep {tag}1' &
      ( setsid sleep {tag}2 </dev/null >/dev/null 2>&1 & ) &
      nohup sh -c 'sleep {tag}3 & sleep {tag}4' >/dev/null 2>&1 &
      sleep {tag}5
"""


def timed_out_and_retried(af: Env, tag: str, sandbox: str) -> str:
    wf = af.write(
        f"""\
version: 1
name: spawn
{sandbox}steps:
  - id: spawn
    timeout: 2s
    retry: {{limit: 1, backoff: {{initial: 0s}}, on: [timeout]}}
    run: |
{spawner(tag)}"""
    )
    res = af.cli("run", str(wf), "--run-id", "sp", "--keep-sandbox")
    assert res.returncode == 0, res.stdout + res.stderr
    st = af.state("sp")["steps"]["spawn"]
    assert (st["status"], st["attempts"]) == ("succeeded", 2)
    return (af.workspace / "leftovers.txt").read_text()


def test_a_timeout_ends_what_left_the_group_before_the_retry(af: Env, tag: str) -> None:
    """setsid, a double fork and nohup: none of them outlives the timed-out attempt (its
    retry finds none), nor the run."""
    assert timed_out_and_retried(af, tag, LOCAL) == ""
    assert leftovers(tag) == []


@pytest.mark.docker
def test_a_timeout_in_docker_ends_what_left_the_group_before_the_retry(
    af: Env, tag: str, docker_client: Any
) -> None:
    assert timed_out_and_retried(af, tag, DOCKER) == ""
    assert in_container(docker_client, "sp", tag) == []


def ended_with_children(af: Env, tag: str, sandbox: str) -> None:
    wf = af.write(
        f"""\
version: 1
name: ends
{sandbox}steps:
  - id: quick
    run: |
      setsid sh -c 'sleep {tag}1' &
      ( setsid sleep {tag}2 </dev/null >/dev/null 2>&1 & ) &
      sleep 0.5  # out of the group by now
      echo done
  - id: look
    needs: [quick]
    run: grep -lszx -e '{tag}[0-9]' /proc/[0-9]*/cmdline > leftovers.txt || true
"""
    )
    res = af.cli("run", str(wf), "--run-id", "end", "--keep-sandbox")
    assert res.returncode == 0, res.stdout + res.stderr
    assert (af.workspace / "leftovers.txt").read_text() == ""


def test_a_step_that_ends_takes_its_setsid_children_with_it(af: Env, tag: str) -> None:
    """One child keeps the step's output open (the step would never end), one is a
    daemon (it would run on unseen): both go when the script ends."""
    ended_with_children(af, tag, LOCAL)
    assert leftovers(tag) == []


@pytest.mark.docker
def test_a_step_in_docker_that_ends_takes_its_setsid_children_with_it(
    af: Env, tag: str, docker_client: Any
) -> None:
    ended_with_children(af, tag, DOCKER)
    assert in_container(docker_client, "end", tag) == []


def wrapper_killed(af: Env, tag: str, sandbox: str) -> None:
    """The step kills its own wrapper: nobody sweeps but the host, when it finds the
    attempt crashed."""
    wf = af.write(
        f"""\
version: 1
name: crash
{sandbox}steps:
  - id: victim
    run: |
      setsid sh -c 'sleep {tag}1' &
      sleep 0.2
      kill -KILL $PPID
      sleep {tag}2
"""
    )
    res = af.cli("run", str(wf), "--run-id", "cr", "--keep-sandbox")
    assert res.returncode == 1, res.stdout + res.stderr
    assert af.state("cr")["steps"]["victim"]["status"] == "crashed"


def test_a_step_whose_wrapper_died_is_swept_by_the_host(af: Env, tag: str) -> None:
    wrapper_killed(af, tag, LOCAL)
    assert leftovers(tag) == []
    log = str(af.run_dir("cr") / "steps" / "victim" / "output.log")
    assert leftovers(log) == [], "the log's reader is gone too"


@pytest.mark.docker
def test_a_step_in_docker_whose_wrapper_died_is_swept_by_the_host(
    af: Env, tag: str, docker_client: Any
) -> None:
    wrapper_killed(af, tag, DOCKER)
    assert in_container(docker_client, "cr", tag) == []
    (box,) = docker_client.containers.list(filters={"label": "agentflow.run=cr"})
    _, out = box.exec_run(["ps", "-o", "args"])
    assert b"tee" not in out, out.decode()


def stopped(af: Env, tag: str, sandbox: str) -> None:
    af.write(
        f"""\
version: 1
name: stopme
{sandbox}steps:
  - id: long
    run: |
      setsid sh -c 'sleep {tag}1' &
      echo started
      sleep {tag}2
"""
    )
    res = af.cli("run", "wf.yaml", "--detach", "--run-id", "st", "--keep-sandbox")
    assert res.returncode == 0, res.stdout + res.stderr
    log = af.run_dir("st") / "steps" / "long" / "output.log"
    af.wait_for(lambda: "started" in log.read_text(), message="the step started its child")
    res = af.cli("stop", "st")
    assert res.returncode == 0, res.stdout + res.stderr
    assert af.state("st")["steps"]["long"]["status"] == "failed"
    # Nothing that blocks a copy of the run (`cp -r` waits on a FIFO) is left in it.
    folder = af.run_dir("st") / "steps" / "long"
    af.wait_for(lambda: not (folder / "fifo").exists(), message="the step's FIFO removed")


def test_stop_of_a_detached_run_ends_the_setsid_child(af: Env, tag: str) -> None:
    stopped(af, tag, LOCAL)
    assert leftovers(tag) == []


@pytest.mark.docker
def test_stop_of_a_detached_run_in_docker_ends_the_setsid_child(
    af: Env, tag: str, docker_client: Any
) -> None:
    stopped(af, tag, DOCKER)
    assert in_container(docker_client, "st", tag) == []


# --- a full disk loses output: recorded, shown ----------------------------------------------


def disk_filled_by_output(af: Env, sandbox: str, ballast_inside: str) -> None:
    """The step prints 600 kB where 16 kB are free; then it frees the space (removes the
    ballast) and ends well: the loss is an event and the step's note, in the checkpoint
    and the report, and the run's files are whole."""
    wf = af.write(
        f"""\
version: 1
name: full
{sandbox}steps:
  - id: big
    run: |
      while [ ! -e go ]; do sleep 0.05; done
      head -c 600000 /dev/zero | tr '\\0' x
      echo
      rm -f {ballast_inside}
      echo after
"""
    )
    proc = af.start("run", str(wf), "--run-id", "full", "--ci")
    steps = af.run_dir("full") / "steps"
    af.wait_for(lambda: (steps / "big" / "pid").exists(), message="big started")
    fill(steps / "ballast", leave=16384)
    (af.workspace / "go").touch()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    note = "output.log is incomplete: a write failed (disk full?)"
    run = RunDir(af.run_dir("full"))
    state = run.read_state()
    assert state.status == "succeeded"
    assert (state.steps["big"].status, state.steps["big"].message) == ("succeeded", note)
    lost = [e for e in run.read_events() if e.kind == "output_incomplete"]
    assert [(e.step, e.attempt, e.message) for e in lost] == [("big", 1, note)]
    assert 0 < (steps / "big" / "output.log").stat().st_size < 600000
    left = {p.name for p in (steps / "big").iterdir()}
    assert {"output_incomplete", "exit_code"} <= left
    assert not {"fifo", "output_incomplete.tmp"} & left, "the host tidied the wrapper's files"
    assert note in (run.path / "report.md").read_text()
    af.env["COLUMNS"] = "200"
    assert note in af.cli("status", "full").stdout
    for line in (run.path / "events.jsonl").read_text().splitlines():
        json.loads(line)  # whole lines, every one


def test_output_lost_on_a_full_disk_is_recorded(small_disk: Path, af: Env) -> None:
    assert af.home == small_disk
    disk_filled_by_output(af, LOCAL, str(af.run_dir("full") / "steps" / "ballast"))


@pytest.mark.docker
def test_output_lost_on_a_full_disk_in_docker_is_recorded(
    small_disk: Path, af: Env, docker_client: Any
) -> None:
    disk_filled_by_output(af, DOCKER, "/agentflow/steps/ballast")


def test_the_wrapper_makes_its_fifo_when_something_else_stands_there(tmp_path: Path) -> None:
    """The host makes the step's FIFO with its folder; a file or link put at its name
    meanwhile is replaced by the wrapper (never followed), and the step runs as ever."""
    from agentflow import stepfiles
    from agentflow.sandbox import wrapper_script

    outside = tmp_path / "outside"
    outside.write_text("kept\n")
    for planted in ("file", "link"):
        step = tmp_path / "steps" / planted
        step.parent.mkdir(exist_ok=True)
        stepfiles.prepare(step, 0, "echo hello\nexit 3\n", wrapper_script())
        assert (step / "fifo").is_fifo(), "made by the host"
        (step / "fifo").unlink()
        if planted == "file":
            (step / "fifo").write_text("x")
        else:
            (step / "fifo").symlink_to(outside)
        done = subprocess.run(
            ["/bin/sh", str(step / "wrapper.sh"), str(tmp_path)],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert done.returncode == 3, done.stderr
        assert (step / "output.log").read_text() == "hello\n"
        assert stepfiles.exit_code(step)[0] == 3
        assert outside.read_text() == "kept\n"
        stepfiles.tidy(step)
        assert not (step / "fifo").exists()
        assert not (step / "output_incomplete.tmp").exists()
