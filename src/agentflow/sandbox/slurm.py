"""The Slurm sandbox: each step's attempt is a Slurm job.

The step's tmux window runs ``srun … sh wrapper.sh``: the job's output streams into the
window (a person attaches as anywhere else) and the same wrapper as on the other sandboxes
records the job's exit code in the step's folder, which must therefore be on a filesystem
the cluster's nodes share at the same path (as the workspace must). Jobs are named
``agentflow.<run>.<step>``: the runner asks about all of a run's running steps with one
``squeue`` per check, cancels and signals with ``scancel --name``, and reads what ended a
job that neither the step nor agentflow ended (a node failure, a preemption, a cancel from
outside, Slurm's time limit) from its state. Slurm keeps ended jobs in ``squeue`` for
``MinJobAge`` (300 s by default); a job ended longer ago is judged by its exit code alone.

Containers, where the site has them: ``slurm.container.runtime`` ``pyxis`` (``srun
--container-image``, with enroot) or ``apptainer`` (``apptainer exec``), with the image in
``sandbox.image`` and the workspace at ``sandbox.workdir`` inside.
"""

from __future__ import annotations

import getpass
import math
import os
import re
import shlex
import shutil
import signal as signals
import subprocess
from pathlib import Path

from agentflow.errors import EnvironmentProblem
from agentflow.sandbox import Job, Launch, Verdict, bounded, run_bounded
from agentflow.sandbox.local import DROP_ENV, LocalSandbox
from agentflow.verify import Executor
from agentflow.workflow.model import Resources, Workflow
from agentflow.workflow.types import parse_size

PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
"""Slurm's states of a job that waits to run."""

VERDICTS: dict[str, Verdict] = {
    "NODE_FAIL": ("crashed", "its node failed"),
    "BOOT_FAIL": ("crashed", "its node failed to boot"),
    "PREEMPTED": ("crashed", "it was preempted"),
    "CANCELLED": ("crashed", "it was cancelled outside agentflow (scancel?)"),
    "REVOKED": ("crashed", "it was revoked"),
    "TIMEOUT": ("timeout", "it reached Slurm's time limit (slurm.time)"),
    "DEADLINE": ("timeout", "it reached its deadline"),
    "OUT_OF_MEMORY": ("failed", "it ran out of memory (raise resources.memory)"),
}
"""States in which Slurm, not the step, ended the job. COMPLETED and FAILED are not here:
the step ended itself, and its exit code says how."""

CONTAINER_STEPS = "/agentflow/steps"
QUERY_TIMEOUT = 30.0


def job_name(run_id: str, step_id: str) -> str:
    return f"agentflow.{run_id}.{step_id}"


def slurm_time(seconds: float) -> str:
    """``--time`` as ``D-HH:MM:SS`` (Slurm reads a bare number as minutes)."""
    s = math.ceil(seconds)
    return f"{s // 86400}-{s % 86400 // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def resource_options(res: Resources) -> list[str]:
    """``srun`` options asking for ``res`` (Slurm's default unit of memory is MiB)."""
    opts = []
    if res.nodes is not None:
        opts.append(f"--nodes={res.nodes}")
    if res.cpus is not None:
        opts.append(f"--cpus-per-task={math.ceil(res.cpus)}")
    if res.memory is not None:
        opts.append(f"--mem={math.ceil(parse_size(res.memory) / 2**20)}M")
    if isinstance(res.gpus, int):
        opts.append(f"--gpus={res.gpus}")
    return opts


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise EnvironmentProblem(
            f"the slurm sandbox needs `{name}` on PATH: run agentflow on a machine of the "
            "cluster (a login node), or pick another sandbox with --sandbox"
        )
    return path


class SlurmSandbox:
    name = "slurm"

    def __init__(self, workflow: Workflow, run_id: str, workspace: Path, steps_dir: Path) -> None:
        self.workflow = workflow
        self.config = workflow.sandbox
        self.slurm = workflow.sandbox.slurm
        self.run_id = run_id
        self.workspace = workspace
        self.steps_dir = steps_dir
        self.local = LocalSandbox(workspace, workflow.secrets)
        self.user = getpass.getuser()
        self._seen: dict[str, Job] = {}
        """The last check's answer: probes and hosts need no query of their own."""

    # --- the Sandbox protocol -------------------------------------------------------------

    def start(self) -> None:
        """Check that the cluster answers, before the first job."""
        _tool("srun")
        done = self._slurm([_tool("sinfo"), "-h", "-o", "%P"])
        if done.returncode != 0:
            why = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no answer"
            raise EnvironmentProblem(f"the Slurm cluster does not answer (sinfo: {why})")

    def workdir(self, relative: str | None) -> str:
        if self._container is None:
            return self.local.workdir(relative)
        base = self.config.workdir.rstrip("/") or "/"
        return f"{base}/{relative}" if relative else base

    def launch(
        self, step_dir: Path, workdir: str, env: dict[str, str], secrets: dict[str, str]
    ) -> Launch:
        step_id = step_dir.name
        wrapper = ["sh", self._step_path(step_dir) + "/wrapper.sh", workdir]
        argv = self._srun(step_id) + self._in_container(with_env(env, wrapper), workdir)
        # srun hands the job its own environment (--export=ALL, Slurm's default): this
        # process's and the secrets. Not the step's: it is set by `env` in the job (inside
        # the container, if any), since srun on this host would obey SLURM_* and
        # LD_PRELOAD naming a file a step wrote.
        full = {k: v for k, v in os.environ.items() if k not in DROP_ENV}
        full.update(secrets)
        return Launch(argv, full)

    def signal(self, step_id: str, pgid: int | None, signum: int) -> bool:
        """TERM, INT, …: to the job's tasks (the wrapper passes it on to the step's group);
        KILL: the job is cancelled. A job still waiting in the queue is cancelled either way."""
        name = job_name(self.run_id, step_id)
        base = [_tool("scancel"), f"--user={self.user}", f"--name={name}"]
        if signum == signals.SIGKILL:
            return self._slurm(base).returncode == 0
        self._slurm([*base, "--state=PENDING"])
        sig = signals.Signals(signum).name.removeprefix("SIG")
        return self._slurm([*base, f"--signal={sig}"]).returncode == 0

    def exec(
        self, script: str, workdir: str, timeout: float, env: dict[str, str] | None = None
    ) -> tuple[int, str]:
        """Checks after a step: on this machine (shared filesystem), or in a short job
        when steps run in a container (the check needs what the image has)."""
        if self._container is None:
            return self.local.exec(script, workdir, timeout, env)
        argv = self._srun("check", time=timeout) + self._in_container(
            with_env(env, bounded(script, timeout)), workdir
        )
        return _run(argv, timeout + 60)

    def healthy(self) -> bool:
        return True  # Slurm says itself how a job ended (node failure, preemption)

    def close(self) -> None:
        """Cancel what is left of the run's jobs (a service, a step agentflow gave up on)."""
        jobs = self._slurm(
            [_tool("squeue"), "-h", f"--user={self.user}", "-o", "%i|%j"], check=False
        )
        prefix = job_name(self.run_id, "")
        ids = [
            line.split("|", 1)[0]
            for line in jobs.stdout.splitlines()
            if line.partition("|")[2].startswith(prefix)
        ]
        if ids:
            self._slurm([_tool("scancel"), *ids])

    # --- the Scheduler protocol -----------------------------------------------------------

    def jobs(self, step_ids: list[str]) -> dict[str, Job]:
        """One ``squeue`` for all: the newest job of each step's name, ended ones included."""
        if not step_ids:
            return {}
        names = {job_name(self.run_id, s): s for s in step_ids}
        done = self._slurm(
            [_tool("squeue"), "-h", "--states=all", f"--user={self.user}",
             f"--name={','.join(names)}", "-o", "%i|%j|%T|%N|%r"],
            check=False,
        )  # fmt: skip
        found: dict[str, Job] = {}
        for line in done.stdout.splitlines():
            parts = line.split("|")
            if len(parts) != 5 or parts[1] not in names:
                continue
            job_id, name, state, nodes, reason = parts
            state = state.split()[0].rstrip("+")  # "CANCELLED by 0" in some versions
            step = names[name]
            if step in found and _newer(found[step].id, job_id):
                continue  # an earlier attempt's job, still remembered by Slurm
            found[step] = Job(
                id=job_id,
                state=state,
                nodes="" if nodes in ("", "(null)") else nodes,
                reason="" if reason in ("None", "(null)") else reason,
                pending=state in PENDING,
                settling=state == "COMPLETING",
                verdict=VERDICTS.get(state),
            )
        self._seen.update(found)
        return found

    def _job(self, step_id: str) -> Job | None:
        return self._seen.get(step_id) or self.jobs([step_id]).get(step_id)

    def executor(self, step_id: str) -> Executor:
        job = self._job(step_id)
        if job is None or job.pending or job.verdict is not None:
            return self
        return _InJob(self, job.id)

    def host(self, step_id: str) -> str:
        job = self._job(step_id)
        if job is None or not job.nodes:
            return "127.0.0.1"
        names = self._slurm([_tool("scontrol"), "show", "hostnames", job.nodes], check=False)
        first = names.stdout.split()
        return first[0] if first else job.nodes

    # --- helpers --------------------------------------------------------------------------

    @property
    def _container(self) -> str | None:
        return self.slurm.container.runtime if self.slurm and self.slurm.container else None

    def _step_path(self, step_dir: Path) -> str:
        return f"{CONTAINER_STEPS}/{step_dir.name}" if self._container else str(step_dir)

    def _srun(self, step_id: str, time: float | None = None) -> list[str]:
        step = next((s for s in self.workflow.steps if s.id == step_id), None)
        res = step.resources if step and step.resources else self.config.resources
        argv = [_tool("srun"), f"--job-name={job_name(self.run_id, step_id)}", "--ntasks=1"]
        argv += ["--unbuffered", "--kill-on-bad-exit=1"]
        if self.slurm and self.slurm.partition:
            argv.append(f"--partition={self.slurm.partition}")
        if self.slurm and self.slurm.account:
            argv.append(f"--account={self.slurm.account}")
        limit = time if time is not None else (self.slurm.time if self.slurm else None)
        if limit is not None:
            argv.append(f"--time={slurm_time(limit)}")
        argv += resource_options(res)
        if self.slurm:
            argv += self.slurm.options
        if self._container == "pyxis":
            mounts = f"{self.workspace}:{self.config.workdir},{self.steps_dir}:{CONTAINER_STEPS}"
            argv += [f"--container-image={self.config.image}", f"--container-mounts={mounts}"]
        return argv

    def _in_container(self, command: list[str], workdir: str) -> list[str]:
        if self._container == "pyxis":
            return ["sh", "-c", f'cd {shlex.quote(workdir)} && exec "$@"', "sh", *command]
        if self._container == "apptainer":
            return [
                "apptainer", "exec",
                "--bind", f"{self.workspace}:{self.config.workdir}",
                "--bind", f"{self.steps_dir}:{CONTAINER_STEPS}",
                "--pwd", workdir, str(self.config.image), *command,
            ]  # fmt: skip
        return command

    def _slurm(self, argv: list[str], check: bool = False) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=QUERY_TIMEOUT,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except (subprocess.TimeoutExpired, OSError) as e:
            return subprocess.CompletedProcess(argv, 1, "", str(e))


class _InJob:
    """Runs a probe inside a running job (``srun --jobid --overlap``): where the service
    listens, on its node."""

    def __init__(self, box: SlurmSandbox, job_id: str) -> None:
        self.box = box
        self.job_id = job_id

    def exec(
        self, script: str, workdir: str, timeout: float, env: dict[str, str] | None = None
    ) -> tuple[int, str]:
        argv = [_tool("srun"), f"--jobid={self.job_id}", "--overlap", "--ntasks=1",
                "--nodes=1", "--quiet"]  # fmt: skip
        argv += self.box._in_container(with_env(env, bounded(script, timeout)), workdir)
        return _run(argv, timeout + 30)


def with_env(env: dict[str, str] | None, command: list[str]) -> list[str]:
    """``command`` run by ``env NAME=VALUE …``: the variables reach only the job's process,
    not the srun client on this host (names are checked: none starts with ``-``)."""
    return ["env", *(f"{k}={v}" for k, v in env.items()), *command] if env else command


def _run(argv: list[str], timeout: float) -> tuple[int, str]:
    return run_bounded(argv, timeout, dict(os.environ))


def _newer(a: str, b: str) -> bool:
    """Whether job id ``a`` is newer than ``b`` (ids grow; array jobs look like 12_3)."""
    key = [int(x) for x in re.findall(r"\d+", a)], [int(x) for x in re.findall(r"\d+", b)]
    return key[0] > key[1]
