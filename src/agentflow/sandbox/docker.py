"""The Docker sandbox: every step of a run executes in one locked-down container.

The container is started once per run (docker-py) and kept idle; each step's tmux window
runs ``docker exec -it CONTAINER sh wrapper.sh`` so that the window shows the step live,
while the tmux session itself stays on the host. Locked down by default: no network but
loopback, every capability dropped, ``no-new-privileges``, the caller's uid:gid, a read-only
root with a tmpfs ``/tmp``, limits from ``resources``. Only the workspace, the run's step
folders and the named mounts of the host are visible.

The host side of a step (the window's ``sh`` and the ``docker exec`` client) gets a fixed
environment: what the client needs (``CLIENT_ENV``) and the secrets. The step's variables
go only into the container, as ``docker exec -e NAME=VALUE``. Secrets never enter the
container's configuration (``docker inspect`` would show them) nor a command line:
``docker exec -e NAME`` forwards them from the exec client's environment.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import shutil
import signal as signals
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import docker
import docker.errors
from docker.models.containers import Container
from docker.types import DeviceRequest, Mount

from agentflow import handoff, safefs
from agentflow.errors import AgentflowError, EnvironmentProblem, UsageError
from agentflow.sandbox import (
    DEFAULT_PIDS,
    LOG_VAR,
    PROC_VAR,
    SWEEP_PASSES,
    Launch,
    bounded,
    keep_tail,
    marker,
)
from agentflow.sandbox import image as images
from agentflow.sandbox.image import DOCKER_ERRORS, LABEL_WORKFLOW
from agentflow.sandbox.image import first_line as _first_line
from agentflow.workflow.model import Sandbox as SandboxConfig

STEPS_MOUNT = "/agentflow/steps"
"""Where the run's ``steps/`` folder appears inside the container."""
ENV_SCRIPT = "env.sh"
"""The step's variables, in its folder, for its wrapper inside the container to source."""
SETTLE = 1.0
"""Seconds ``healthy`` gives a container still shown as running to settle (see there)."""
LABEL_RUN = "agentflow.run"
LABEL_HOME = "agentflow.home"
CLIENT_ENV = (
    "PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT", "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
)  # fmt: skip
"""What the ``docker`` client of a step's window gets of this process's environment."""
# An idle PID 2 under docker-init (PID 1 reaps orphans); exits at once on TERM.
_IDLE = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"]
# KILL, inside the container: the step's group ($1, 0 for none), then every process with
# the step's marker ($3: what left the group, by setsid or a daemon's double fork), again
# for children forked meanwhile; then, if the wrapper does not end within a second (its
# log drained), the log's readers that hold it up. One `docker exec`, as the container's
# user; its status says whether the group was there.
_KILL = f"""
d=$2; m=$3; g=1
[ "$1" = 0 ] || {{ kill -KILL -"$1" 2>/dev/null && g=0; }}
marked() {{
  left=
  for f in $(grep -lszxF "$1=$m" /proc/[0-9]*/environ 2>/dev/null); do
    f=${{f#/proc/}}; left="$left ${{f%/environ}}"
  done
  [ -n "$left" ]
}}
n=0
while [ "$n" -lt {SWEEP_PASSES} ] && marked {PROC_VAR}; do
  kill -KILL $left 2>/dev/null; n=$((n + 1))
done
n=0
while [ "$n" -lt 10 ] && [ ! -e "$d/exit_code" ]; do
  sleep 0.1 2>/dev/null || sleep 1; n=$((n + 1))
done
[ -e "$d/exit_code" ] || ! marked {LOG_VAR} || kill -KILL $left 2>/dev/null
exit "$g"
"""


def device_requests(
    gpus: int | Literal["all"] | None, pool: tuple[str, ...] | None
) -> list[DeviceRequest]:
    """The container's GPUs: the pool's, by id, when steps draw from it (each step is then
    given its own with ``CUDA_VISIBLE_DEVICES``); else ``sandbox.resources.gpus``, a count
    or ``all``; else none."""
    if pool:
        return [DeviceRequest(device_ids=list(pool), capabilities=[["gpu"]])]
    if gpus is None:
        return []
    count = -1 if gpus == "all" else int(gpus)
    return [DeviceRequest(count=count, capabilities=[["gpu"]])]


def connect(timeout: int = 5) -> docker.DockerClient:
    """A client of the local daemon; EnvironmentProblem (exit 4) when none answers."""
    try:
        client = docker.from_env(version="auto", timeout=timeout)
        client.ping()
    except DOCKER_ERRORS as e:
        raise EnvironmentProblem(
            f"no Docker daemon answers ({_first_line(e)}): start it (`sudo systemctl start "
            "docker`, or `sudo dockerd &`), or run with --sandbox local"
        ) from None
    return client


def daemon_answers() -> bool:
    try:
        connect(timeout=2).close()
    except EnvironmentProblem:
        return False
    return True


class DockerSandbox:
    name = "docker"

    def __init__(
        self,
        config: SandboxConfig,
        *,
        run_id: str,
        workflow: str,
        workspace: Path,
        steps_dir: Path,
        home: Path,
        log: Callable[[str], None] | None = None,
        build_log: Path | None = None,
        keep: bool = False,
        socket_dir: Path | None = None,
        gpus: tuple[str, ...] | None = None,
    ) -> None:
        self.config = config
        self.gpus = gpus
        """The pool's GPU ids, when steps draw from it: the container is given these."""
        self.run_id = run_id
        self.workflow = workflow
        self.workspace = workspace
        self.steps_dir = steps_dir
        self.home = home
        self.log = log or (lambda line: None)
        self.build_log = build_log
        self.keep = keep
        self.socket_dir = socket_dir
        """The folder of agentflow's tmux socket: hidden like the home when mounted."""
        self.container_name = f"agentflow-{run_id}"
        self.cli = shutil.which("docker")
        self._client: docker.DockerClient | None = None
        self._container: Container | None = None

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = connect()
        return self._client

    # --- the container ----------------------------------------------------------------------

    def start(self) -> None:
        """Re-attach to the run's container, or start one (building the image if asked)."""
        if self.cli is None:
            raise EnvironmentProblem(
                "the docker command is not installed (steps run through `docker exec`): "
                "install Docker's client"
            )
        existing = self._find()
        if existing is not None:
            try:
                if existing.status != "running":
                    existing.start()
                self._container = existing
                self.container_name = existing.name or self.container_name
                return
            except DOCKER_ERRORS as e:
                # A container the daemon cannot start again (after a daemon restart it may
                # have lost its network endpoint): a new one, the workspace is on the host.
                self.log(f"the run's container cannot start again ({_first_line(e)}): new one")
                try:
                    existing.remove(force=True)
                except DOCKER_ERRORS:  # it keeps its name: the new one takes another
                    self.container_name = f"agentflow-{self.run_id}-{secrets.token_hex(2)}"
        self._container = self._create(self.image())

    def _find(self) -> Container | None:
        found = self.client.containers.list(
            all=True, filters={"label": f"{LABEL_RUN}={self.run_id}"}
        )
        # A running one first: a container left broken by a daemon restart may remain.
        return sorted(found, key=lambda c: c.status != "running")[0] if found else None

    def image(self) -> str:
        """The image to run: ``image`` (pulled if missing), or built from ``build``."""
        return images.resolve(
            self.client,
            self.config,
            workspace=self.workspace,
            workflow=self.workflow,
            hidden=[self.home, *([self.socket_dir] if self.socket_dir else [])],
            writable=self._writable(),
            log=self.log,
            build_log=self.build_log,
        )

    def _create(self, image: str) -> Container:
        cfg = self.config
        res = cfg.resources
        kwargs: dict[str, Any] = {}
        if res.memory:
            kwargs["mem_limit"] = res.memory
        if res.cpus:
            kwargs["nano_cpus"] = int(res.cpus * 1e9)
        # A fork bomb must not take the host down: a process limit even when none is given.
        kwargs["pids_limit"] = res.pids or DEFAULT_PIDS
        if requests := device_requests(res.gpus, self.gpus):
            kwargs["device_requests"] = requests
        tmpfs = {"/tmp": "rw,exec,nosuid,nodev,size=1g"}
        mounts = self.mounts()
        # agentflow's own files (checkpoints, other runs, its tmux socket) inside a mounted
        # folder are hidden from the sandbox under an empty read-only tmpfs.
        hidden, pinned = self._hiding(mounts)
        tmpfs.update(dict.fromkeys(hidden, "ro,size=1k"))
        mounts += pinned
        try:
            return self.client.containers.run(
                image,
                entrypoint=_IDLE,  # whatever the image's ENTRYPOINT, the container idles
                command=[],
                name=self.container_name,
                detach=True,
                init=True,
                labels={
                    LABEL_RUN: self.run_id,
                    LABEL_WORKFLOW: self.workflow,
                    LABEL_HOME: str(self.home),
                },
                network_mode=cfg.network,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                user=f"{os.getuid()}:{os.getgid()}",
                read_only=True,
                tmpfs=tmpfs,
                mounts=mounts,
                working_dir=cfg.workdir,
                environment={"HOME": "/tmp"},
                **kwargs,
            )
        except DOCKER_ERRORS as e:
            raise EnvironmentProblem(
                f"cannot start the sandbox container from {image}: {_first_line(e)}"
            ) from None

    def mounts(self) -> list[Mount]:
        """The workspace, the run's step folders and the named mounts; nothing else. A
        source in the workspace is taken only as a real folder or file reached without a
        link: a step may have replaced it with a link to any host folder."""
        mounts = [
            Mount(target=self.config.workdir, source=str(self.workspace), type="bind"),
            Mount(target=STEPS_MOUNT, source=str(self.steps_dir), type="bind"),
        ]
        writable = self._writable()
        for i, m in enumerate(self.config.mounts):
            if not posixpath.isabs(m.target):
                raise UsageError(f"sandbox.mounts[{i}]: target {m.target!r} must be absolute")
            source = images.host_source(self.workspace, f"sandbox.mounts[{i}]", m.source, writable)
            mounts.append(
                Mount(target=m.target, source=str(source), type="bind", read_only=m.read_only)
            )
        return mounts

    def _writable(self) -> list[Path]:
        """The host folders the sandbox can write: a source inside one of them is checked
        like one inside the workspace (no link on the way)."""
        return [self.workspace] + [
            Path(os.path.normpath(self.workspace.absolute() / m.source))
            for m in self.config.mounts
            if not m.read_only
        ]

    def _hiding(self, mounts: list[Mount]) -> tuple[list[str], list[Mount]]:
        """Where agentflow's home and its tmux socket's folder appear inside the container
        (found by identity, device and inode, whatever path leads to them), to be covered
        by an empty tmpfs; and the folders between a mount's root and them, each bound
        onto itself: a mount point cannot be renamed, so a step cannot move the covered
        folder away and put one of its own where the host looks for its home."""
        folders = [self.home, self.socket_dir] if self.socket_dir else [self.home]
        targets: list[str] = []
        pinned: dict[str, Mount] = {}
        for m in mounts:
            if m["Target"] == STEPS_MOUNT:
                continue
            source = safefs.identity(Path(m["Source"]))
            # The workspace inside another mount is pinned too, itself included: the host
            # reads it by its path all run long, so a step must not rename it away.
            inner = (
                safefs.locate(self.workspace, source)
                if m["Target"] != self.config.workdir
                else None
            )
            if inner is not None:
                pinned.update(_pins(m, *inner, len(inner[1].parts)))
            for folder in folders:
                found = safefs.locate(folder, source)
                if found is None:
                    continue
                base, rel = found
                if not rel.parts:
                    raise UsageError(
                        f"agentflow's own folder {folder} is mounted into the sandbox as "
                        f"{m['Target']}: set AGENTFLOW_HOME (or AGENTFLOW_TMUX_SOCKET) elsewhere"
                    )
                targets.append(posixpath.join(m["Target"], *rel.parts))
                pinned.update(_pins(m, base, rel, len(rel.parts) - 1))
        taken = {m["Target"] for m in mounts} | set(targets) | {"/tmp"}
        # A target that is a mount already cannot be renamed either (and Docker refuses
        # two mounts at one place).
        return targets, [m for t, m in pinned.items() if t not in taken]

    # --- steps ------------------------------------------------------------------------------

    def workdir(self, relative: str | None) -> str:
        base = self.config.workdir
        return posixpath.normpath(posixpath.join(base, relative)) if relative else base

    def launch(
        self, step_dir: Path, workdir: str, env: dict[str, str], secrets: dict[str, str]
    ) -> Launch:
        assert self.cli is not None
        # No `-w`: the wrapper enters the workdir itself and says so when it cannot.
        argv = [self.cli, "exec", "-it"]
        for key in secrets:
            argv += ["-e", key]  # the value comes from the exec client's own environment
        # The step's variables go into the container only, in a script its wrapper sources
        # there: in the client's environment, LD_PRELOAD, BASH_ENV or DOCKER_HOST would
        # steer host processes, and on its command line `ps` would show them. Not secret
        # (`${{ env.SECRET }}` is refused at validation), so a file in the step's folder.
        safefs.write_text(step_dir / ENV_SCRIPT, step_dir.parent, handoff.script(env))
        step = f"{STEPS_MOUNT}/{step_dir.name}"
        wrapper = [f"{step}/wrapper.sh", workdir, marker(step), f"{step}/{ENV_SCRIPT}"]
        argv += [self.container_name, "sh", *wrapper]
        client = {k: os.environ[k] for k in CLIENT_ENV if k in os.environ}
        return Launch(argv, {**client, **secrets})

    def signal(self, step_id: str, pgid: int | None, signum: int) -> bool:
        """Signal the step's process group inside the container (killing the ``docker exec``
        client alone would leave the process running); KILL also sweeps what left it."""
        kill = signum == signals.SIGKILL
        if pgid is None and not kill:
            return False
        name = signals.Signals(signum).name.removeprefix("SIG")
        if kill:
            step = f"{STEPS_MOUNT}/{step_id}"
            argv = ["sh", "-c", _KILL, "sh", str(pgid or 0), step, marker(step)]
        else:
            argv = ["sh", "-c", f"kill -{name} -{pgid}"]
        try:
            container = self._container or self._find()
            if container is None:
                return False
            # As the container's user: the step's own uid may signal it without capabilities.
            code, _ = container.exec_run(argv)
        except DOCKER_ERRORS:
            return False
        return code == 0

    def exec(
        self, script: str, workdir: str, timeout: float, env: dict[str, str] | None = None
    ) -> tuple[int, str]:
        """Run a probe or check inside the container; only the end of its output is kept
        (streamed, so a command that prints without end costs bounded memory). The host
        waits at most ``timeout`` and a little: a command whose children hold its output
        open past the sandbox's own ``timeout`` is left behind, not waited for."""
        try:
            container = self._container or self._find()
            if container is None:
                return 125, "the sandbox container is gone"
            api = self.client.api
            exec_id = api.exec_create(
                container.id, bounded(script, timeout), workdir=workdir, environment=env or None
            )["Id"]
            stream = api.exec_start(exec_id, stream=True)
        except DOCKER_ERRORS as e:
            return 125, _first_line(e)
        kept = bytearray()
        failed: list[BaseException] = []

        def drain() -> None:
            try:
                for chunk in stream:
                    keep_tail(kept, chunk)
            except DOCKER_ERRORS as e:
                failed.append(e)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        reader.join(timeout + 10)
        if reader.is_alive():
            return 124, f"timed out after {timeout:g}s"
        try:
            if failed:
                raise failed[0]
            code = api.exec_inspect(exec_id).get("ExitCode")
        except DOCKER_ERRORS as e:
            return 125, _first_line(e)
        return int(code or 0), bytes(kept).decode("utf-8", errors="replace")

    def healthy(self) -> bool:
        """The daemon answers and the run's container runs. Docker shows a container it is
        killing as running for a moment after its processes died (under load, long enough
        for the runner to see the crash first): one still running is asked again for up to
        ``SETTLE`` seconds before it counts as there."""
        deadline = time.monotonic() + SETTLE
        while self._running():
            if time.monotonic() >= deadline:
                return True
            time.sleep(0.1)
        return False

    def _running(self) -> bool:
        try:
            container = self._container or self._find()
            if container is None:
                return False
            container.reload()
        except (*DOCKER_ERRORS, AgentflowError):
            return False
        return container.status == "running"

    def image_id(self) -> str | None:
        """The id (``sha256:…``) of the image the run's container runs, for cache keys: a
        rebuilt or re-pulled image under the same name is another image. None when
        there is no container to ask."""
        try:
            container = self._container or self._find()
            image = container.attrs.get("Image") if container is not None else None
        except DOCKER_ERRORS:
            return None
        return image if isinstance(image, str) else None

    def close(self) -> None:
        """Remove the run's container (unless asked to keep it)."""
        if self.keep:
            return
        container = self._container or self._find()
        if container is None:
            return
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
        self._container = None


def _pins(mount: Mount, base: Path, rel: Path, depth: int) -> dict[str, Mount]:
    """The first ``depth`` folders of ``rel`` below ``mount``'s root (``base`` on the
    host), each bound onto itself: a mount point cannot be renamed from inside."""
    pins = {}
    for n in range(1, depth + 1):
        inside = posixpath.join(mount["Target"], *rel.parts[:n])
        pins[inside] = Mount(
            target=inside,
            source=str(base.joinpath(*rel.parts[:n])),
            type="bind",
            read_only=bool(mount.get("ReadOnly")),
        )
    return pins


def reap(home: Path, live_runs: set[str]) -> list[str]:
    """Remove containers of this home's runs that are not live (finished or deleted), and
    of homes that no longer exist. Returns the names removed."""
    client = connect()
    removed = []
    for c in client.containers.list(all=True, filters={"label": LABEL_RUN}):
        labels = c.labels or {}
        own_home = labels.get(LABEL_HOME) == str(home)
        gone_home = not Path(labels.get(LABEL_HOME, "/nonexistent")).exists()
        if (own_home and labels.get(LABEL_RUN) not in live_runs) or gone_home:
            c.remove(force=True)
            removed.append(c.name or c.id or "?")
    return removed
