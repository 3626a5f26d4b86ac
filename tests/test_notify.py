"""Notifications from real runs (real tmux, the real console script) to a real HTTP
receiver on this machine, and to a command."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agentflow.notify import Notification, Notifier, Targets
from agentflow.notify.deliver import DeliveryError, run_command
from agentflow.redact import Redactor
from agentflow.state import RunState, StepState
from agentflow.store import Event, Store

from conftest import Env, group_alive, run_id_of

SECRET = "s3cr3t-tok-9f2e"


class Receiver:
    """A webhook receiver: answers with ``codes`` in turn (then 200), keeps every body."""

    def __init__(self, codes: list[int] | None = None, hold: bool = False) -> None:
        self.codes = list(codes or [])
        self.release = threading.Event()
        """Until set, a held receiver keeps each request waiting (at most 60 s)."""
        if not hold:
            self.release.set()
        self.held = 0
        self.tries: list[int] = []
        self.bodies: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.arrived:
                    receiver.held += 1
                receiver.release.wait(60)
                with receiver.arrived:
                    code = receiver.codes.pop(0) if receiver.codes else 200
                    receiver.tries.append(code)
                    if code == 200:
                        receiver.raw.append(data.decode())
                        receiver.bodies.append(json.loads(data))
                    receiver.arrived.notify_all()
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T0/secret-path"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, n: int, timeout: float = 60) -> list[dict[str, Any]]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.bodies) >= n, timeout), self.bodies
            return list(self.bodies)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def events(af: Env, rid: str) -> list[dict[str, Any]]:
    lines = (af.run_dir(rid) / "events.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


FAILING = """\
    version: 1
    name: failing
    secrets: [API_TOKEN]
    steps:
      - id: prepare
        run: echo ready
      - id: train
        needs: prepare
        run: |
          echo "token $API_TOKEN"
          python3 trian.py
    """

BLOCKING = """\
    version: 1
    name: blocking
    steps:
      - id: fetch
        run: |
          echo "HTTP 403: denied"
          exit 1
        recover:
          - match: "HTTP 403"
            action: escalate
            message: "the token was refused: renew it"
    """


def test_a_failing_run_notifies_its_failure_with_the_cause_and_no_secret(
    af: Env, receiver: Receiver
) -> None:
    af.env["API_TOKEN"] = SECRET
    wf = af.write(FAILING)
    res = af.cli("run", str(wf), "--notify", receiver.url)
    assert res.returncode == 1, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    (note,) = receiver.wait(1)
    assert note["event"] == "failure"
    assert note["run_id"] == rid
    assert note["workflow"] == "failing"
    assert note["status"] == "failed"
    assert note["step"] == "train"
    assert "exit code 2" in note["message"]
    assert "trian.py" in note["message"]
    assert note["text"].startswith("❌ agentflow run ")
    assert "failed" in note["text"]
    assert note["report"] == str(af.run_dir(rid) / "report.md")
    assert SECRET not in receiver.raw[0]
    assert "***" in note["message"]
    # The URL is kept private with the run; events name its site, never its path.
    assert (af.run_dir(rid) / "notify.json").stat().st_mode & 0o077 == 0
    sent = [e for e in events(af, rid) if e["kind"] == "notified"]
    assert [e["message"] for e in sent] == [f"failure → webhook {receiver.url[:22]}"]
    assert "secret-path" not in (af.run_dir(rid) / "events.jsonl").read_text()


def test_a_blocked_run_notifies_once_and_resume_keeps_the_url(af: Env, receiver: Receiver) -> None:
    wf = af.write(BLOCKING)
    res = af.cli("run", str(wf), "--notify", receiver.url)
    assert res.returncode == 3, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    (note,) = receiver.wait(1)
    assert note["event"] == "blocked"
    assert note["step"] == "fetch"
    assert "the token was refused: renew it" in note["message"]
    assert f"agentflow resume {rid}" in note["text"]
    # The run's end (blocked) is not told again: the escalation was.
    assert [e["kind"] for e in events(af, rid)].count("notified") == 1
    res = af.cli("resume", rid)  # no --notify: the run kept it
    assert res.returncode == 3, res.stdout + res.stderr
    notes = receiver.wait(2)
    assert [n["event"] for n in notes] == ["blocked", "blocked"]


def test_the_workflow_webhook_from_the_environment_tells_the_end(
    af: Env, receiver: Receiver
) -> None:
    af.env["HOOK_URL"] = receiver.url
    wf = af.write(
        """\
        version: 1
        name: fine
        notify:
          webhook: ${{ env.HOOK_URL }}
        steps:
          - id: a
            run: echo done
        """
    )
    res = af.cli("run", str(wf))
    assert res.returncode == 0, res.stdout + res.stderr
    (note,) = receiver.wait(1)
    assert note["event"] == "end"
    assert note["status"] == "succeeded"
    assert note["run_id"] == run_id_of(res.stdout)


def test_on_chooses_the_events(af: Env, receiver: Receiver) -> None:
    wf = af.write(
        """\
        version: 1
        name: quiet
        notify:
          on: [stall, failure]
        steps:
          - id: slow
            stall_timeout: 1s
            run: sleep 30
          - id: fine
            run: echo ok
        """
    )
    res = af.cli("run", str(wf), "--notify", receiver.url)
    assert res.returncode == 1, res.stdout + res.stderr
    notes = receiver.wait(2)
    assert [n["event"] for n in notes] == ["stall", "failure"]
    assert notes[0]["step"] == "slow"
    assert "stall_timeout" in notes[0]["message"]


def test_a_dead_receiver_does_not_fail_the_run_and_is_recorded(af: Env) -> None:
    with socket.socket() as s:  # a port nobody listens on any more
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    wf = af.write("version: 1\nname: fine\nsteps:\n  - id: a\n    run: echo done\n")
    res = af.cli("run", str(wf), "--ci", "--notify", f"http://127.0.0.1:{port}/x")
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    assert af.state(rid)["status"] == "succeeded"
    (failed,) = [e for e in events(af, rid) if e["kind"] == "notification_failed"]
    assert failed["message"].startswith(
        f"warning: the end notification to webhook http://127.0.0.1:{port} failed"
    )
    assert "after 4 tries" in failed["message"]
    assert "notification failed: warning: the end notification" in res.stdout


def test_a_receiver_that_fails_first_gets_it_on_a_retry(af: Env) -> None:
    flaky = Receiver([500, 503])
    try:
        wf = af.write("version: 1\nname: fine\nsteps:\n  - id: a\n    run: echo done\n")
        res = af.cli("run", str(wf), "--notify", flaky.url)
        assert res.returncode == 0, res.stdout + res.stderr
        (note,) = flaky.wait(1)
        assert note["event"] == "end"
        assert flaky.tries == [500, 503, 200]
        kinds = [e["kind"] for e in events(af, run_id_of(res.stdout))]
        assert "notified" in kinds
        assert "notification_failed" not in kinds
    finally:
        flaky.close()


def test_a_receiver_that_hangs_never_holds_the_runner_up(af: Env) -> None:
    """The blocked notification hangs in the receiver; meanwhile the runner still stops
    the other step at its timeout (a runner that waited for the receiver could not: it
    would sit out 5 s a try, four tries)."""
    stuck = Receiver(hold=True)
    wf = af.write(
        """\
        version: 1
        name: hang
        steps:
          - id: esc
            run: echo 'HTTP 403'; exit 1
            recover: [{match: 'HTTP 403', action: escalate}]
          - id: slow
            timeout: 2s
            run: sleep 60
        """
    )
    proc = af.start("run", str(wf), "--ci", "--run-id", "hang-1", "--notify", stuck.url)
    try:
        af.wait_for(lambda: af.state("hang-1")["steps"]["slow"]["status"] == "timeout", 15)
        assert stuck.held >= 1
        assert stuck.bodies == []  # still held: nothing was answered yet
        stuck.release.set()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 3, out + err
        (note,) = stuck.wait(1)
        assert note["event"] == "blocked"
        assert note["step"] == "esc"
    finally:
        proc.kill()
        proc.communicate()
        stuck.close()


def test_a_command_gets_the_notification_in_its_environment_and_stdin(af: Env) -> None:
    wf = af.write(
        """\
        version: 1
        name: cmd
        notify:
          command: |
            # busy the first time: tried again
            test -e tried || { touch tried; echo busy >&2; exit 3; }
            cat > note.json; env | grep '^AGENTFLOW_' | sort > note.env
        steps:
          - id: bad
            run: |
              echo '$(touch pwned) `touch pwned2`; touch pwned3'
              exit 7
        """
    )
    res = af.cli("run", str(wf))
    assert res.returncode == 1, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    note = json.loads((af.workspace / "note.json").read_text())
    assert note["event"] == "failure"
    assert note["run_id"] == rid
    env = (af.workspace / "note.env").read_text()
    assert "AGENTFLOW_EVENT=failure\n" in env
    assert f"AGENTFLOW_RUN_ID={rid}\n" in env
    assert "AGENTFLOW_STEP=bad\n" in env
    assert "AGENTFLOW_MESSAGE=bad: exit code 7 | $(touch pwned)" in env
    # What the step wrote reached the command as data, never as shell code.
    assert not list(af.workspace.glob("pwned*"))
    kinds = [e["kind"] for e in events(af, rid)]
    assert "notified" in kinds
    assert "notification_failed" not in kinds


def test_a_command_that_fails_says_why_and_one_that_hangs_is_killed(tmp_path: Path) -> None:
    note = Notification(
        text="t", event="end", run_id="r", workflow="w", status="succeeded", report="r.md"
    )
    with pytest.raises(DeliveryError, match=r"^exit code 3: no pager here$"):
        run_command("echo starting; echo 'no pager here' >&2; exit 3", note, tmp_path, 10)
    with pytest.raises(DeliveryError, match="killed"):
        run_command("echo $$ > group; sleep 300 & wait", note, tmp_path, 1)
    # The command's whole process group went, the sleep it left in the background too
    # (SIGKILL was sent to the group; a loaded machine may take a moment to carry it out).
    pgid = int((tmp_path / "group").read_text())
    deadline = time.monotonic() + 10
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not group_alive(pgid)


def test_a_detached_run_notifies_from_its_own_orchestrator(af: Env, receiver: Receiver) -> None:
    wf = af.write("version: 1\nname: bg\nsteps:\n  - id: a\n    run: sleep 1\n")
    res = af.cli("run", str(wf), "--detach", "--run-id", "bg-1", "--notify", receiver.url)
    assert res.returncode == 0, res.stdout + res.stderr
    (note,) = receiver.wait(1)
    assert note["event"] == "end"
    assert note["run_id"] == "bg-1"


def test_every_run_of_a_sweep_notifies_with_notify_given_once(af: Env, receiver: Receiver) -> None:
    wf = af.write(
        "version: 1\nname: sw\ninputs:\n  n: {default: 0}\n"
        "steps:\n  - id: a\n    run: echo ${{ inputs.n }}\n"
    )
    res = af.cli("run", str(wf), "--ci", "--matrix", "n=1,2", "--notify", receiver.url)
    assert res.returncode == 0, res.stdout + res.stderr
    notes = receiver.wait(2)
    assert sorted(n["event"] for n in notes) == ["end", "end"]
    assert len({n["run_id"] for n in notes}) == 2  # one from each run, by its own orchestrator


def test_a_bad_webhook_is_a_located_error(af: Env) -> None:
    wf = af.write(
        "version: 1\nname: x\nnotify:\n  webhook: ftp://example.com\n"
        "steps:\n  - id: a\n    run: 'true'\n"
    )
    res = af.cli("validate", str(wf))
    assert res.returncode == 2
    assert "wf.yaml:4" in res.stderr + res.stdout
    assert "http://" in res.stderr + res.stdout
    af.write("version: 1\nname: x\nsteps:\n  - id: a\n    run: 'true'\n", "ok.yaml")
    res = af.cli("run", "ok.yaml", "--notify", "example.com")
    assert res.returncode == 2
    assert "'example.com' is not an http:// or https:// URL" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (af.home / "runs").exists()


def test_step_text_is_masked_cleaned_bounded_and_cannot_mention(tmp_path: Path) -> None:
    """What a step wrote, in a notification: secrets masked, escapes gone, length bounded,
    and Slack's mentions and links escaped in ``text``."""
    run = Store(tmp_path).create("r-1")
    notifier = Notifier(Targets(), run, Redactor([SECRET]))
    state = RunState(
        run_id="r-1", workflow="w", workflow_file="w.yaml", workspace=str(tmp_path),
        sandbox="local", steps={"s": StepState()},
    )  # fmt: skip
    said = f"<!channel> \x1b[31m{SECRET}\x1b[0m <http://evil|click> " + "x" * 5000
    event = Event(kind="escalated", step="s", status="blocked", message=said)
    note = notifier.notification(event, state)
    assert note is not None
    assert note.message is not None
    assert SECRET not in note.model_dump_json()
    assert "***" in note.message
    assert "\x1b" not in note.model_dump_json()
    assert len(note.message) < 700
    assert len(note.text) < 700
    assert "<!channel>" not in note.text
    assert "&lt;!channel&gt;" in note.text
    assert "<http" not in note.text


def test_a_question_unanswered_at_the_terminal_is_a_blocked_notification(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A person asked to approve a changed command who does not answer (gone for the
    night) is told; one who answers at once (``--yes``) is not."""
    run = Store(tmp_path).create("r-2")
    notifier = Notifier(Targets(webhooks=(receiver.url,)), run, Redactor([]), ask_notice=0.2)
    state = RunState(
        run_id="r-2", workflow="w", workflow_file="w.yaml", workspace=str(tmp_path),
        sandbox="local", steps={"s": StepState()},
    )  # fmt: skip
    at_once = notifier.watching(lambda step, old, new: True, lambda: state)
    assert at_once("s", "old", "new") is True
    answered = threading.Event()

    def person(step: str, old: str, new: str) -> bool:
        answered.wait(60)  # the answer comes once the notification has arrived
        return False

    slow = notifier.watching(person, lambda: state)
    done = threading.Thread(target=lambda: slow("s", "old", "new"))
    done.start()
    (note,) = receiver.wait(1)
    answered.set()
    done.join()
    notifier.close()
    assert note["event"] == "blocked"
    assert note["step"] == "s"
    assert "waits for an answer at the terminal" in note["message"]
    assert len(receiver.bodies) == 1  # the question answered at once sent nothing
