"""The peers comparison's workloads, and each one written natively for each tool: an
agentflow workflow, a Snakefile, and a Prefect, a Luigi and a Dagster script. Text only
(nothing here runs a tool), so ``tests/test_bench_peers.py`` can check the files.

Every step is one shell process (``true``, ``sleep 2``); the orchestrators differ only in
how they launch it, await it and record it. A workload is a list of ``(id, run, needs)``
steps in dependency order and how many may run at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from common import StepSpec, chain, workflow


@dataclass(frozen=True)
class Workload:
    """One row of the table."""

    key: str
    name: str
    steps: list[StepSpec]
    parallel: int
    docker: bool = False
    per_step_from: str = ""
    """The 1-step workload whose time is subtracted for the ms/step figure (start-up out):
    ``(t(n) - t(1)) / (n - 1)``; empty for no per-step figure."""
    peers: bool = True
    """Whether the peers run it (not the Docker rows: only agentflow has that sandbox)."""

    @property
    def size(self) -> int:
        return len(self.steps)


def independent(n: int, run: str, prefix: str = "p") -> list[StepSpec]:
    return [(f"{prefix}{i}", run, []) for i in range(n)]


def workloads(quick: bool) -> list[Workload]:
    """The rows, smaller with ``quick`` (a smoke check of the harness, not a figure)."""
    n_chain, width, secs, n_many = (20, 8, 1, 100) if quick else (100, 32, 2, 1000)
    return [
        Workload("one", "1 step (start-up)", chain(1), 1),
        Workload("chain", f"{n_chain}-step chain", chain(n_chain), 1, False, "one"),
        Workload(
            "sleep",
            f"{width} × `sleep {secs}`, {width} at once",
            independent(width, f"sleep {secs}"),
            width,
        ),
        Workload(
            "many",
            f"{n_many:,} independent steps, 16 at once",
            independent(n_many, "true"),
            16,
            False,
            "one",
        ),
        Workload("docker_one", "1 step, Docker (start-up)", chain(1), 1, True, "", False),
        Workload(
            "docker_chain",
            f"{n_chain}-step chain, Docker",
            chain(n_chain),
            1,
            True,
            "docker_one",
            False,
        ),
    ]


def sinks(steps: list[StepSpec]) -> list[str]:
    """The steps no other step needs: what a target-driven tool is asked to build."""
    needed = {n for _, _, needs in steps for n in needs}
    return [sid for sid, _, _ in steps if sid not in needed]


# --- agentflow -----------------------------------------------------------------------------


def agentflow_file(w: Workload) -> str:
    return workflow(w.key, w.steps, max_parallel=w.parallel, docker=w.docker)


# --- Snakemake: one rule per step, a touched marker file as its output ------------------------


def snakefile(w: Workload) -> str:
    def done(sid: str) -> str:
        return json.dumps(f"done/{sid}")

    lines = [f"rule all:\n    input: [{', '.join(done(s) for s in sinks(w.steps))}]\n"]
    for sid, run, needs in w.steps:
        lines.append(f"rule {sid}:")
        if needs:
            lines.append(f"    input: [{', '.join(done(n) for n in needs)}]")
        lines.append(f"    output: touch({done(sid)})")
        # Snakemake formats the command with str.format: braces doubled to stay literal.
        lines.append(f"    shell: {json.dumps(run.replace('{', '{{').replace('}', '}}'))}\n")
    return "\n".join(lines)


def snakemake_args(w: Workload) -> list[str]:
    return ["--snakefile", "Snakefile", "--cores", str(w.parallel), "--quiet", "all"]


# --- Python peers: the steps as data, the tool's own constructs around them ----------------

_STEPS = "STEPS = json.loads({data!r})\nPARALLEL = {parallel}\n"


def _data(w: Workload) -> str:
    return _STEPS.format(data=json.dumps(w.steps), parallel=w.parallel)


PREFECT = '''"""{name}: Prefect, one task per step, a thread pool of PARALLEL."""
import json
import subprocess

from prefect import flow, task
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

{data}

@task(task_run_name="{{sid}}")
def step(sid: str, run: str) -> None:
    subprocess.run(run, shell=True, check=True)


@flow(name="bench", task_runner=ThreadPoolTaskRunner(max_workers=PARALLEL))
def bench() -> None:
    if PARALLEL == 1:  # a chain: each task called in turn, as a sequential flow is written
        for sid, run, _ in STEPS:
            step(sid, run)
        return
    futures = {{}}
    for sid, run, needs in STEPS:
        futures[sid] = step.submit(sid, run, wait_for=[futures[n] for n in needs])
    wait(list(futures.values()))
    for f in futures.values():
        f.result()


if __name__ == "__main__":
    bench()
'''


def prefect_script(w: Workload) -> str:
    return PREFECT.format(name=w.name, data=_data(w))


LUIGI = '''"""{name}: Luigi, one task per step, a marker file as its output, PARALLEL workers."""
import json
import subprocess
import sys

import luigi

{data}
BY_ID = {{sid: (run, needs) for sid, run, needs in STEPS}}


class Step(luigi.Task):
    sid = luigi.Parameter()

    def requires(self):
        return [Step(sid=n) for n in BY_ID[self.sid][1]]

    def output(self):
        return luigi.LocalTarget(f"done/{{self.sid}}")

    def run(self):
        subprocess.run(BY_ID[self.sid][0], shell=True, check=True)
        with self.output().open("w"):
            pass


if __name__ == "__main__":
    targets = [Step(sid=s) for s in {sinks!r}]
    ok = luigi.build(targets, workers=PARALLEL, local_scheduler=True, log_level="WARNING")
    sys.exit(0 if ok else 1)
'''


def luigi_script(w: Workload) -> str:
    return LUIGI.format(name=w.name, data=_data(w), sinks=sinks(w.steps))


DAGSTER = '''"""{name}: Dagster, one op per step (Nothing dependencies); the in-process executor for
a chain, the multiprocess executor (max_concurrent PARALLEL) otherwise."""
import json
import subprocess
import sys

from dagster import DagsterInstance, In, Nothing, execute_job, job, op, reconstructable

{data}


def make_op(sid, run, needs):
    @op(name=sid, ins={{n: In(Nothing) for n in needs}})
    def _op() -> None:
        subprocess.run(run, shell=True, check=True)

    return _op


OPS = {{sid: make_op(sid, run, needs) for sid, run, needs in STEPS}}


@job
def bench():
    made = {{}}
    for sid, _, needs in STEPS:
        made[sid] = OPS[sid](**{{n: made[n] for n in needs}})


if __name__ == "__main__":
    executor = (
        {{"in_process": {{}}}}
        if PARALLEL == 1
        else {{"multiprocess": {{"max_concurrent": PARALLEL}}}}
    )
    with DagsterInstance.get() as instance:
        result = execute_job(
            reconstructable(bench),
            instance=instance,
            run_config={{"execution": {{"config": executor}}}},
        )
    sys.exit(0 if result.success else 1)
'''


def dagster_script(w: Workload) -> str:
    return DAGSTER.format(name=w.name, data=_data(w))


# --- the floors: the bare minimum, no orchestrator ---------------------------------------------


def xargs_floor(w: Workload) -> str:
    """The shell command running the steps with ``xargs -P``, each one process and nothing
    else (no shell around it): the steps of a parallel row all run the same command."""
    runs = {run for _, run, _ in w.steps}
    if len(runs) != 1:
        raise ValueError(f"{w.key}: the xargs floor needs one command for every step")
    return f"seq {w.size} | xargs -P{w.parallel} -I{{}} {runs.pop()}"
