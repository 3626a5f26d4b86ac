"""Running one workload with one tool: agentflow through its real CLI (``agentflow run --ci``
in a private home, as the other benchmarks do), the peers from their own virtualenv
(``bench/.peers-venv``, made from ``bench/peers-requirements.txt``, so agentflow's .venv is
untouched), and the floors: bare tmux windows, ``xargs -P``, ``docker exec``.

Each run is a fresh process group in a fresh folder, killed whole at its timeout. Prefect
and Dagster keep one home each for the whole comparison (their databases made once, in the
warm-up, as a user's would be), offline: Prefect's ephemeral server on SQLite, no API URL,
no telemetry.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import peers_gen as gen
from common import AGENTFLOW, private_home
from overhead import DOCKER_LOOP, TMUX_LOOP, _baseline_container

HERE = Path(__file__).resolve().parent
VENV = HERE / ".peers-venv"
REQUIREMENTS = HERE / "peers-requirements.txt"
PEERS = ["snakemake", "prefect", "luigi", "dagster"]
TOOLS = ["agentflow", *PEERS, "floor"]
DROPPED_ENV = ("TMUX", "TMUX_PANE", "CI", "GITHUB_ACTIONS", "AGENTFLOW_TMUX_SOCKET")
PREFECT_ENV = {
    "PREFECT_SERVER_EPHEMERAL_ENABLED": "true",
    # A loaded 2-core machine can take longer than the default 20 s to start it.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_UI_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "DO_NOT_TRACK": "1",
}


@dataclass(frozen=True)
class Outcome:
    """One measurement: wall seconds, or why there is none (``timeout``, ``failed``)."""

    wall: float | None
    status: str = "ok"
    detail: str = ""


def floor_name(w: gen.Workload) -> str:
    if w.docker:
        return f"{w.size} `docker exec`"
    if w.parallel == 1:
        return f"{w.size} tmux window{'s' if w.size > 1 else ''}, each awaited"
    return f"`xargs -P{w.parallel}`"


def ensure_venv(venv: Path = VENV, requirements: Path = REQUIREMENTS) -> Path:
    """The peers' virtualenv, made or brought up to the pinned versions when they changed."""
    stamp = venv / ".installed"
    if stamp.exists() and stamp.stat().st_mtime >= requirements.stat().st_mtime:
        return venv
    print(f"installing the peers into {venv} (a few minutes, once)", flush=True)
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-r", str(requirements)], check=True)
    stamp.touch()
    return venv


def versions(venv: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json;"
        f"print(json.dumps({{p: m.version(p) for p in {PEERS!r}}}))"
    )
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True
    )
    found: dict[str, str] = json.loads(out.stdout)
    return found


def run_timed(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> Outcome:
    """Wall time of ``argv`` in a process group of its own; the group is killed after it
    ends (nothing left running) or at ``timeout``. Its output goes to ``cwd/bench.log``."""
    log = cwd / "bench.log"
    with log.open("wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            code = proc.wait(timeout)
            wall = time.perf_counter() - t0
        except subprocess.TimeoutExpired:
            code, wall = None, timeout
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if code is None:
        return Outcome(None, "timeout", f"> {timeout:g} s")
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        return Outcome(None, "failed", f"exit {code}: " + " | ".join(tail)[-400:])
    return Outcome(wall)


class Bench:
    """What the comparison keeps for its whole length: a scratch folder, the Prefect and
    Dagster homes, a tmux socket folder and the floor's container. A context manager: all
    of it is gone on exit."""

    def __init__(self, venv: Path, timeout: float, docker: bool) -> None:
        self.venv, self.timeout, self.docker = venv, timeout, docker
        self.root = Path(tempfile.mkdtemp(prefix="agentflow-peers-"))
        self.container = ""
        base = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
        base = {k: v for k, v in base.items() if not k.startswith(("PREFECT_", "DAGSTER_"))}
        base["PATH"] = f"{venv / 'bin'}{os.pathsep}{base.get('PATH', '')}"
        self.env = base
        prefect_home = self.root / "prefect-home"
        dagster_home = self.root / "dagster-home"
        for d in (prefect_home, dagster_home):
            d.mkdir()
        (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        self.env_for = {
            "prefect": {**base, **PREFECT_ENV, "PREFECT_HOME": str(prefect_home)},
            "dagster": {**base, "DAGSTER_HOME": str(dagster_home)},
        }

    def __enter__(self) -> Bench:
        if self.docker:
            self.container = _baseline_container()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.container:
            subprocess.run(["docker", "rm", "-f", self.container], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def runs(self, tool: str, w: gen.Workload) -> bool:
        """Whether ``tool`` has this row: the Docker rows are agentflow's and the floor's."""
        return (w.peers or tool in ("agentflow", "floor")) and (self.docker or not w.docker)

    def measure(self, tool: str, w: gen.Workload) -> Outcome:
        if tool == "agentflow":
            return self._agentflow(w)
        work = Path(tempfile.mkdtemp(prefix=f"{tool}-", dir=self.root))
        try:
            if tool == "floor":
                return self._floor(w, work)
            py = str(self.venv / "bin" / "python")
            env = self.env_for.get(tool, self.env)
            if tool == "snakemake":
                (work / "Snakefile").write_text(gen.snakefile(w))
                argv = [str(self.venv / "bin" / "snakemake"), *gen.snakemake_args(w)]
            else:
                script = {"prefect": gen.prefect_script, "luigi": gen.luigi_script}.get(
                    tool, gen.dagster_script
                )(w)
                (work / "flow.py").write_text(script)
                argv = [py, "flow.py"]
            return run_timed(argv, work, env, self.timeout)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _agentflow(self, w: gen.Workload) -> Outcome:
        with private_home() as h:
            wf = h.write("wf.yaml", gen.agentflow_file(w))
            argv = [AGENTFLOW, "run", str(wf), "--ci", "--run-id", "b"]
            return run_timed(argv, h.work, h.env, self.timeout)

    def _floor(self, w: gen.Workload, work: Path) -> Outcome:
        if w.docker:
            argv = ["bash", "-c", DOCKER_LOOP, "floor", self.container, str(w.size)]
        elif w.parallel == 1:
            # A short socket path: tmux's is limited to about 100 bytes.
            sock = Path(tempfile.mkdtemp(prefix="afp-", dir="/tmp")) / "s"
            try:
                argv = ["bash", "-c", TMUX_LOOP, "floor", str(sock), str(w.size)]
                return run_timed(argv, work, self.env, self.timeout)
            finally:
                subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True)
                shutil.rmtree(sock.parent, ignore_errors=True)
        else:
            argv = ["bash", "-c", gen.xargs_floor(w)]
        return run_timed(argv, work, self.env, self.timeout)
