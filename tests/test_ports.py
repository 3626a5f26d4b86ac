"""Ports (``ports:``): each run's service gets a port of its own, held in the home's ledger
and kept in the checkpoint; a readiness probe answered by someone else's server fails the
step, naming that process. Real runs, real servers, real sockets."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentflow import ports
from agentflow.errors import RunLockedError, WorkflowError
from agentflow.store import hold_lock
from agentflow.workflow.load import parse_workflow

from conftest import Env

# A server that answers every GET with the id of the run it belongs to.
SERVER = """\
exec python3 -c '
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ["AGENTFLOW_RUN_ID"].encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()'
"""

FETCH = (
    "python3 -c 'import sys, urllib.request as u; "
    'print("got", sys.argv[1], u.urlopen(sys.argv[1], timeout=5).read().decode())\' '
    "${{ steps.serve.outputs.url }}\n"
)


def service_workflow(before_server: str = "", before_fetch: str = "") -> str:
    """``serve`` (a port named http, its probe, its url as an output) and ``client``,
    which fetches it; each may wait for a file first."""
    server = textwrap.indent(before_server + SERVER, " " * 6)
    fetch = textwrap.indent(before_fetch + FETCH, " " * 6)
    return (
        "version: 1\nname: svc\nsandbox: {backend: local}\nsteps:\n"
        "  - id: serve\n    service: true\n    ports: [http]\n"
        '    env: {PORT: "${{ ports.http }}"}\n'
        f"    run: |\n{server}"
        '    ready: {http: "http://127.0.0.1:${{ ports.http }}/", interval: 0.1s, timeout: 20s}\n'
        '    outputs: {url: {value: "http://127.0.0.1:${{ ports.http }}/"}}\n'
        "  - id: client\n    needs: [serve]\n"
        f"    run: |\n{fetch}"
        "    outputs: {got: {log: 'got (\\S+ \\S+)'}}\n"
    )


WAIT_FOR_RELEASE = "while [ ! -e release ]; do sleep 0.05; done\n"


def test_two_runs_at_once_each_talk_to_their_own_server(af: Env) -> None:
    wf = af.write(service_workflow(before_fetch=WAIT_FOR_RELEASE))
    runs = {rid: af.start("run", str(wf), "--ci", "--run-id", rid) for rid in ("one", "two")}
    try:
        # Both servers up at once, both clients waiting: the moment two runs collided.
        af.wait_for(
            lambda: all(af.state(r)["steps"]["serve"]["ready_at"] for r in runs),
            message="both services ready",
        )
        held = ports.held(af.home)
        assert sorted(h.run for h in held.values()) == ["one", "two"]
        (af.workspace / "release").touch()
        for proc in runs.values():
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, out + err
    finally:
        for proc in runs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    port_of = {r: af.state(r)["steps"]["serve"]["ports"]["http"] for r in runs}
    assert port_of["one"] != port_of["two"]
    for rid, port in port_of.items():
        got = af.state(rid)["steps"]["client"]["outputs"]["got"]
        assert got == f"http://127.0.0.1:{port}/ {rid}"  # its own server, by run id
    assert ports.held(af.home) == {}  # given back when each run ended


@pytest.fixture
def outside_server() -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A server no run started, on a port of its own choosing."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import http.server as h; s = h.HTTPServer(('127.0.0.1', 0), "
            "h.SimpleHTTPRequestHandler); print(s.server_port, flush=True); s.serve_forever()",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield proc, int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()


def test_a_probe_answered_by_someone_elses_server_fails_the_step(
    af: Env, outside_server: tuple[subprocess.Popen[str], int]
) -> None:
    server, port = outside_server
    wf = af.write(
        f"""\
        version: 1
        name: foreign
        sandbox: {{backend: local}}
        steps:
          - id: serve
            service: true
            run: sleep 30
            ready: {{http: "http://localhost:{port}/", interval: 0.1s, timeout: 20s}}
          - id: client
            needs: [serve]
            run: echo never
        """
    )
    result = af.cli("run", str(wf), "--ci", "--run-id", "f1")
    assert result.returncode != 0, result.stdout
    state = af.state("f1")
    assert state["steps"]["serve"]["status"] == "failed"
    assert state["steps"]["serve"]["ready_at"] is None  # never reported ready
    message = state["steps"]["serve"]["message"]
    assert message.startswith(f"ready: port {port} is held by pid {server.pid} (")
    assert message.endswith(", not by step serve")
    assert "import http.server" in message  # the holder's command line
    assert state["steps"]["client"]["status"] == "skipped"
    assert f"held by pid {server.pid}" in result.stdout

    # `owned: false`: a server the step has something else start is taken as it is.
    af.write(
        (af.workspace / "wf.yaml")
        .read_text()
        .replace("timeout: 20s}", "timeout: 20s, owned: false}")
        .replace("echo never", "echo fine")
    )
    result = af.cli("run", str(wf), "--ci", "--run-id", "f2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert af.state("f2")["steps"]["client"]["status"] == "succeeded"


def test_ports_are_the_same_after_a_resume_of_a_killed_run(af: Env) -> None:
    # The server starts only once `go` exists: the run is killed before, with its port
    # chosen and the service's first attempt under way.
    wf = af.write(service_workflow(before_server="while [ ! -e go ]; do sleep 0.05; done\n"))
    proc = af.start("run", str(wf), "--ci", "--run-id", "k1")
    serve_dir = af.run_dir("k1") / "steps" / "serve"
    af.wait_for(lambda: (serve_dir / "pid").exists(), message="serve started")
    port = af.state("k1")["steps"]["serve"]["ports"]["http"]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The service goes too (as if the machine had lost it): the resume starts it again,
    # with the port from the checkpoint.
    os.killpg(int((serve_dir / "pid").read_text()), signal.SIGKILL)
    af.wait_for(lambda: (serve_dir / "exit_code").exists(), message="serve's end recorded")
    (af.workspace / "go").touch()
    resumed = af.cli("resume", "k1", "--ci")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    state = af.state("k1")
    assert state["steps"]["serve"]["attempts"] == 2
    assert state["steps"]["serve"]["ports"] == {"http": port}
    assert state["steps"]["client"]["outputs"]["got"] == f"http://127.0.0.1:{port}/ k1"
    assert "port_shared" not in (af.run_dir("k1") / "events.jsonl").read_text()


def test_the_ledger_gives_back_a_dead_runs_ports_and_never_a_live_runs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for rid in ("live", "dead"):
        (home / "runs" / rid).mkdir(parents=True)

    def busy(pid: int | None) -> Exception:
        return RunLockedError(f"held by {pid}")

    with hold_lock(home / "runs" / "live" / "lock", busy):
        live = ports.hold(home, "live", {"serve": ["http", "admin"]}, {})
        dead = ports.hold(home, "dead", {"serve": ["http"]}, {})
        # `dead` holds no lock: the next allocation finds it dead and forgets its port.
        other = ports.hold(home, "other", {"s": ["p"]}, {})
        ledger = ports.held(home)
        assert sorted({h.run for h in ledger.values()}) == ["live", "other"]
        mine = set(live.ports["serve"].values())
        assert len(mine) == 2
        assert other.ports["s"]["p"] not in mine
        assert dead.ports["serve"]["http"] not in ledger
        # A resume of `dead` keeps its port (the checkpoint's) and holds it again.
        again = ports.hold(home, "dead", {"serve": ["http"]}, dead.ports)
        assert again.ports == dead.ports
        assert again.new == {}
        # (`other` holds no lock either: found dead in turn)
        assert {h.run for h in ports.held(home).values()} == {"live", "dead"}
    ports.release(home, "live")
    assert {h.run for h in ports.held(home).values()} == {"dead"}
    saved = json.loads((home / ports.LEDGER).read_text())
    assert set(saved["ports"]) == {str(p) for p in ports.held(home)}

    # A live run that got the dead run's port meanwhile keeps it; the dead run's resume
    # keeps its own too, and says so.
    port = dead.ports["serve"]["http"]
    (home / "runs" / "next").mkdir()
    with hold_lock(home / "runs" / "next" / "lock", busy):
        ports.hold(home, "next", {"web": ["http"]}, {"web": {"http": port}})
        resumed = ports.hold(home, "dead", {"serve": ["http"]}, dead.ports)
        assert resumed.ports == dead.ports
        assert resumed.shared == [
            f"port {port} (serve.http) was given to run next (web.http) while this run was "
            "not driven"
        ]


def test_a_port_the_step_did_not_ask_for_is_a_load_error(af: Env) -> None:
    text = service_workflow().replace(
        '${{ ports.http }}/", interval', '${{ ports.nope }}/", interval'
    )
    wf = af.write(text)
    result = af.cli("validate", str(wf))
    assert result.returncode == 2
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "ports.nope" in t)
    assert result.stderr == (
        f"error: {wf}:{line}:5: steps[0].ready: step 'serve' asks for no port 'nope' "
        "(it asks for: http)\n"
    )

    def problems(text: str) -> list[str]:
        with pytest.raises(WorkflowError) as info:
            parse_workflow(text, "wf.yaml")
        return [str(p) for p in info.value.problems]

    twice = service_workflow().replace("ports: [http]", "ports: [http, http]")
    assert problems(twice) == [
        "wf.yaml:7:5: steps[0].ports: port 'http' is listed twice: each name gets one port"
    ]
    typo = service_workflow().replace('PORT: "${{ ports.http }}', 'PORT: "${{ ports.htp }}')
    assert problems(typo) == [
        "wf.yaml:8:11: steps[0].env.PORT: step 'serve' asks for no port 'htp' "
        "(did you mean 'http'?)"
    ]
    other = service_workflow().replace(
        "needs: [serve]\n", "needs: [serve]\n    env: {P: '${{ ports.http }}'}\n"
    )
    assert problems(other) == [
        "wf.yaml:22:11: steps[1].env.P: step 'client' asks for no port 'http': add "
        "`ports: [http]` to the step"
    ]
    top = service_workflow().replace("steps:\n", "env: {P: '${{ ports.http }}'}\nsteps:\n", 1)
    assert problems(top) == [
        "wf.yaml:4:7: env.P: ${{ ports.http }} works in a step's run, env, ready, success and "
        "outputs only: hand it to other steps through an output (`value:`)"
    ]


def test_a_server_on_every_address_passes_a_tcp_probe_of_localhost(af: Env) -> None:
    # http.server binds `::` (both families) or 0.0.0.0: the step's own socket all the same.
    wf = af.write(
        """\
        version: 1
        name: wild
        sandbox: {backend: local}
        steps:
          - id: serve
            service: true
            ports: [http]
            run: exec python3 -m http.server ${{ ports.http }}
            ready: {tcp: "localhost:${{ ports.http }}", interval: 0.1s, timeout: 20s}
          - id: client
            needs: [serve]
            run: echo fine
        """
    )
    result = af.cli("run", str(wf), "--ci", "--run-id", "w1")
    assert result.returncode == 0, result.stdout + result.stderr
    port = af.state("w1")["steps"]["serve"]["ports"]["http"]
    assert f"connect localhost:{port}: ok" in result.stdout


def test_a_cached_step_that_reads_a_services_port_is_taken_from_the_cache(af: Env) -> None:
    # The port changes from run to run; the client's key must not: it is keyed by the
    # service (its command, its `ports:` as written), not by where the service listened.
    text = service_workflow().replace("  - id: client\n", "  - id: client\n    cache: {}\n")
    wf = af.write(text)
    first = af.cli("run", str(wf), "--ci", "--run-id", "c1")
    assert first.returncode == 0, first.stdout + first.stderr
    second = af.cli("run", str(wf), "--ci", "--run-id", "c2")
    assert second.returncode == 0, second.stdout + second.stderr
    state = af.state("c2")
    assert state["steps"]["client"]["cached_from"] == "c1"
    assert state["steps"]["serve"]["status"] == "skipped"  # nothing needed it
    port = af.state("c1")["steps"]["serve"]["ports"]["http"]
    assert state["steps"]["client"]["outputs"]["got"] == f"http://127.0.0.1:{port}/ c1"
