"""The workflow file format, version 1, as pydantic models.

These models are the format's single definition: loading validates against them, and
``agentflow schema`` prints their JSON Schema. Every model forbids unknown keys.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    model_validator,
)

from agentflow.byid import ById
from agentflow.template import EXPRESSION as _EXPRESSION
from agentflow.template import references
from agentflow.workflow.base import Model
from agentflow.workflow.metric import Metric
from agentflow.workflow.notify import Notify
from agentflow.workflow.search import Search
from agentflow.workflow.types import Duration, Env, EnvName, StepId, parse_size

Scalar = str | int | float | bool


def _input_shorthand(value: Any) -> Any:
    # `inputs: {layers: 2}` is short for `inputs: {layers: {default: 2}}`.
    if isinstance(value, str | int | float | bool) or value is None:
        return {"default": value}
    return value


class Input(Model):
    """A parameter of the workflow, overridable with ``--set name=value``."""

    default: Scalar | None = None
    """The value used when ``--set`` does not give one; no default means the input is required."""
    description: str | None = None
    """What the input means (for people, and for the LLM planner)."""
    type: Literal["string", "integer", "number", "boolean"] | None = None
    """The type a ``--set`` value is converted to; by default the type of ``default``."""
    choices: list[Scalar] | None = None
    """The only values allowed."""

    @property
    def kind(self) -> Literal["string", "integer", "number", "boolean"]:
        """The input's type: ``type``, else the type of ``default``."""
        if self.type is not None:
            return self.type
        if isinstance(self.default, bool):
            return "boolean"
        if isinstance(self.default, int):
            return "integer"
        if isinstance(self.default, float):
            return "number"
        return "string"


class Build(Model):
    """How to build the sandbox image from a Dockerfile."""

    context: str = "."
    """The build context, relative to the workflow file's directory."""
    dockerfile: str = "Dockerfile"
    """The Dockerfile, relative to the context."""
    args: Env = Field(default_factory=dict)
    """Build arguments (``--build-arg``)."""


class Mount(Model):
    """A host folder made visible inside the sandbox."""

    source: str
    """The host path, relative to the workflow file's directory."""
    target: str
    """The absolute path inside the sandbox."""
    read_only: bool = False
    """Mount it read-only."""


def _size(text: str) -> str:
    parse_size(text)  # a ValueError for a size no machine has (it would overflow)
    return text


class Resources(Model):
    """Limits for the sandbox."""

    cpus: float | None = Field(default=None, gt=0)
    """CPU cores the sandbox may use (on a step of the local sandbox: CPUs of the machine's
    pool the step is pinned to, rounded up)."""
    memory: (
        Annotated[
            str,
            Field(pattern=r"^\d+(\.\d+)?[kmgtKMGT]?[bB]?$"),
            AfterValidator(_size),
        ]
        | None
    ) = None
    """Memory limit, like ``4g`` or ``512m``."""
    pids: int | None = Field(default=None, gt=0)
    """The most processes the sandbox may hold."""
    gpus: int | Literal["all"] | None = None
    """GPUs to hand to the sandbox (a count, or ``all``); on a step of the local or Docker
    sandbox, a count is drawn from the machine's pool (``AGENTFLOW_GPUS``) for each attempt,
    and ``all`` is the whole machine, outside the pool."""
    nodes: int | None = Field(default=None, gt=0)
    """Machines for one step (Slurm only: the job's ``--nodes``; the step's command runs on
    the first and starts its own tasks on the others, e.g. with ``srun`` or ``torchrun``)."""


class SlurmContainer(Model):
    """Run each step's job in ``sandbox.image``, by the site's container plug-in."""

    runtime: Literal["pyxis", "apptainer"]
    """``pyxis`` (``srun --container-image``, with enroot) or ``apptainer``
    (``apptainer exec``)."""


class Slurm(Model):
    """Where and how steps run as Slurm jobs (``sandbox.backend: slurm``)."""

    partition: str | None = None
    """``--partition``; the cluster's default partition when not given."""
    account: str | None = None
    """``--account`` to charge."""
    time: Duration | None = None
    """``--time``: Slurm's own limit for each step's job (give ``timeout`` too, so that
    agentflow stops the step first and can retry it)."""
    options: list[str] = Field(default_factory=list)
    """More ``srun`` options, passed as written (``["--exclusive", "--qos=high"]``)."""
    container: SlurmContainer | None = None
    """Run steps in ``sandbox.image`` through the site's container runtime."""


class Sandbox(Model):
    """Where steps run."""

    backend: Literal["auto", "docker", "local", "slurm"] = "auto"
    """``docker``, ``local`` (on this machine, in the workflow's folder), ``slurm`` (each
    step a job on a Slurm cluster) or ``auto`` (Docker when a daemon answers, else local
    with a warning)."""
    image: str | None = None
    """The image to run steps in."""
    build: Build | None = None
    """Build the image from a Dockerfile instead of naming one."""
    workdir: str = "/workspace"
    """Where the workflow's folder is mounted inside the sandbox (read-write)."""
    mounts: list[Mount] = Field(default_factory=list)
    """More host folders to make visible."""
    network: Literal["none", "bridge", "host"] = "none"
    """``none`` keeps only loopback inside the sandbox."""
    resources: Resources = Field(default_factory=Resources)
    """Limits on CPUs, memory, processes; GPUs. With Slurm: what each step's job asks for,
    unless the step has ``resources`` of its own."""
    slurm: Slurm | None = None
    """Partition, account, time limit, extra options and containers of the Slurm sandbox."""

    @model_validator(mode="after")
    def _one_image_source(self) -> Sandbox:
        if self.image and self.build:
            raise ValueError("give either `image` or `build`, not both")
        if self.backend == "slurm":
            if self.build:
                raise ValueError(
                    "the slurm backend cannot build an image: build and push it, then name it "
                    "in `image`"
                )
            if self.image and not (self.slurm and self.slurm.container):
                raise ValueError(
                    "with the slurm backend, `image` needs `slurm: {container: {runtime: "
                    "pyxis}}` (or apptainer): how your cluster runs containers"
                )
        if self.backend == "docker" and not (self.image or self.build):
            raise ValueError("the docker backend needs `image` or `build`")
        if not self.workdir.startswith("/"):
            raise ValueError(f"workdir must be an absolute path, got {self.workdir!r}")
        for m in self.mounts:
            if not m.target.startswith("/"):
                raise ValueError(f"mount target must be an absolute path, got {m.target!r}")
        return self


class Planner(Model):
    """Who turns the workflow into concrete commands."""

    type: Literal["static", "anthropic"] = "static"
    """``static`` runs ``run:`` steps as written; ``anthropic`` asks a model to write ``task:``
    steps."""
    model: str | None = None
    """The model name (else ``AGENTFLOW_MODEL``)."""
    max_tokens: int = Field(default=4096, gt=0)
    """The most tokens one answer of the model may have."""
    budget: int | None = Field(default=None, gt=0)
    """The most tokens the whole run may spend on the model."""
    turns: int = Field(default=16, ge=1, le=100)
    """The most requests of one agent loop (planning, or one diagnosis): the model looks
    around with its tools, then must decide; repair rounds count."""
    deadline: Duration = Field(default=480.0, gt=0, le=3600)
    """How long one agent loop may take in all; past it the step is escalated with what
    the model found so far."""


class Backoff(Model):
    """How long to wait between attempts: ``initial × factor^n``, at most ``max``, with jitter."""

    initial: Duration = 5.0
    """The wait before the second attempt."""
    # Bounded with Retry.limit so that initial × factor^n stays a float (10^100 does).
    factor: float = Field(default=2.0, ge=1, le=10)
    """How much the wait grows with each attempt."""
    max: Duration = 300.0
    """The longest wait."""


RetryOn = Literal["failed", "crashed", "timeout", "stalled"]


def _every_outcome() -> list[RetryOn]:
    return ["failed", "crashed", "timeout", "stalled"]


class Retry(Model):
    """When and how often to run a step again."""

    limit: int = Field(default=0, ge=0, le=100)
    """How many more attempts after the first."""
    backoff: Backoff = Field(default_factory=Backoff)
    """The wait between attempts."""
    on: list[RetryOn] = Field(default_factory=_every_outcome)
    """Which outcomes are retried."""
    exit_codes: list[int] | None = None
    """Retry a failed step only for these exit codes (default: any)."""


OnFailure = Literal["abort", "continue", "diagnose"]


def _cache_glob(pattern: str) -> str:
    if not pattern.strip():
        raise ValueError("a cache input pattern cannot be empty")
    if pattern.startswith("/") or ".." in pattern.split("/"):
        raise ValueError(
            f"{pattern!r}: cache inputs are read from the workspace: give a path or glob "
            "relative to the workflow's folder, without `..`"
        )
    list(references(pattern))  # a TemplateSyntaxError (a ValueError) for an unknown form
    return pattern


class Cache(Model):
    """Take the step's result from an earlier run (same home) whose step had the same key:
    its command, env, image, inputs, the keys of the steps it needs, and the content of
    the files ``inputs`` matches."""

    inputs: list[Annotated[str, AfterValidator(_cache_glob)]] = Field(default_factory=list)
    """Files the step reads: paths or globs (``*``, ``?``, ``[...]``, ``**``) relative to
    the workspace; a folder means every file in it. A change in any of them runs the step
    again."""


class Defaults(Model):
    """Settings every step gets unless it says otherwise."""

    timeout: Duration | None = None
    """Kill a step that runs longer than this."""
    retry: Retry | None = None
    """The retry policy."""
    on_failure: OnFailure | None = None
    """What a failed step does to the run."""
    stall_timeout: Duration | None = None
    """Treat a step that prints nothing for this long as stalled."""
    cache: Cache | None = None
    """Cache every step (but services) this way unless it has its own ``cache``."""


class Probe(Model):
    """A check that passes when a service is ready; give exactly one kind."""

    http: str | None = None
    """A URL that answers 2xx."""
    tcp: str | None = None
    """``host:port`` that accepts a connection."""
    command: str | None = None
    """A command that exits 0."""
    log: str | None = None
    """A regular expression that a line of the step's output matches."""
    file: str | None = None
    """A file that exists."""
    timeout: Duration = 300.0
    """Give up after this long: the step fails."""
    interval: Duration = 1.0
    """Time between two probes."""
    owned: bool = True
    """Local sandbox: an ``http`` or ``tcp`` probe of a loopback port (or a probe that names
    one of the step's ``ports``) passes only when the step's own processes listen on it,
    never another run's server. ``false`` for a server the step has something else start
    (``docker run -p``, a system service)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> Probe:
        kinds = [k for k in ("http", "tcp", "command", "log", "file") if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError("give exactly one of http, tcp, command, log, file")
        if self.log:
            _check_regex(self.log)
        # An expression (`${{ ports.http }}`) is filled in before each probe, and the
        # result checked again then.
        if self.tcp and not re.fullmatch(r"[^:\s]+:\d{1,5}", _EXPRESSION.sub("1", self.tcp)):
            raise ValueError(f"tcp: expected host:port, got {self.tcp!r}")
        return self


class Expect(Model):
    """What a healthy run of the step looks like; drives the sleep-and-check schedule."""

    @model_validator(mode="after")
    def _valid_pattern(self) -> Expect:
        if self.progress:
            _check_regex(self.progress)
            if not 1 <= re.compile(self.progress).groups <= 2:
                raise ValueError("progress: give two groups (done, total) or one (a percentage)")
        return self

    duration: Duration | None = None
    """How long the step usually takes."""
    progress: str | None = None
    """A regular expression over output lines with two groups, done and total (or one, a
    percentage)."""
    metrics: dict[StepId, Metric] = Field(default_factory=dict)
    """Numbers to follow over the run (``{loss: 'loss=([0-9.eE+-]+)'}``), kept as series
    for the live view, ``status`` and the report; their last values become outputs."""


class MetricCheck(Model):
    """A number read from a JSON file, checked against bounds."""

    file: str
    """The JSON file, relative to the step's folder in the workspace."""
    key: str
    """The key; dots go into nested objects (``eval.speedup``)."""
    min: float | None = None
    """The smallest allowed value."""
    max: float | None = None
    """The largest allowed value."""


class Success(Model):
    """Checks after a step exits 0; any failing check fails the step."""

    @model_validator(mode="after")
    def _valid_pattern(self) -> Success:
        if self.log:
            _check_regex(self.log)
        return self

    files: list[str] = Field(default_factory=list)
    """Files that must exist and be non-empty."""
    command: str | None = None
    """A command that must exit 0."""
    log: str | None = None
    """A regular expression that must match a line of the output."""
    metrics: dict[str, MetricCheck] = Field(default_factory=dict)
    """Numbers that must lie within bounds."""


class Output(Model):
    """A value the step produces for later steps; give exactly one source."""

    json_file: str | None = Field(default=None, alias="json")
    """A JSON file to read ``key`` from."""
    key: str | None = None
    """The key in the JSON file (dots go into nested objects)."""
    file: str | None = None
    """A file whose whole content (stripped) is the value."""
    log: str | None = None
    """A regular expression over the output; the first group of the last match is the value."""
    value: str | None = None
    """The value itself, with its expressions filled in (``http://127.0.0.1:${{ ports.http
    }}``): how a service hands its ports to the steps that need it."""

    model_config = ConfigDict(populate_by_name=True)

    @model_validator(mode="after")
    def _one_source(self) -> Output:
        sources = [s for s in (self.json_file, self.file, self.log, self.value) if s]
        if len(sources) != 1:
            raise ValueError("give exactly one of json, file, log, value")
        if self.json_file and not self.key:
            raise ValueError("`json` needs a `key`")
        if self.log:
            _check_regex(self.log)
            if re.compile(self.log).groups < 1:
                raise ValueError("log: the value is the first group: put one in the pattern")
        return self


class RecoverRule(Model):
    """A known failure mode: when the failed attempt's log matches, do this."""

    match: str
    """A regular expression searched in the tail of the failed attempt's log."""
    action: Literal["retry", "skip", "abort", "escalate"]
    """What to do."""
    set_env: Env = Field(default_factory=dict)
    """Environment to set for the next attempt (with ``retry``)."""
    wait: Duration | None = None
    """Wait this long before the next attempt (with ``retry``)."""
    message: str | None = None
    """What to tell the person (with ``escalate``)."""
    limit: int = Field(default=1, ge=1)
    """How often the rule may retry one step in a run (with ``retry``)."""

    @model_validator(mode="after")
    def _valid_pattern(self) -> RecoverRule:
        _check_regex(self.match)
        return self


def _check_regex(pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"invalid regular expression {pattern!r}: {e}") from None


def _one_or_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _artifact_pattern(pattern: str) -> str:
    if not pattern.strip():
        raise ValueError("an artifact pattern cannot be empty")
    if pattern.startswith("/"):
        raise ValueError(
            f"{pattern!r}: artifacts are read from the workspace: give a path relative to "
            "the step's folder, not an absolute one"
        )
    list(references(pattern))  # a TemplateSyntaxError (a ValueError) for an unknown form
    return pattern


ArtifactPattern = Annotated[str, AfterValidator(_artifact_pattern)]

PortName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


def _unique_ports(names: list[str]) -> list[str]:
    twice = [n for i, n in enumerate(names) if n in names[:i]]
    if twice:
        raise ValueError(f"port {twice[0]!r} is listed twice: each name gets one port")
    return names


class Step(Model):
    """One unit of work: a command (``run``) or a description for the planner (``task``)."""

    id: StepId
    """Unique name; used for the tmux window, the step's folder and references."""
    description: str | None = None
    """What the step is for (read by people and the planner)."""
    needs: Annotated[list[StepId], BeforeValidator(_one_or_list)] = Field(default_factory=list)
    """Steps that must succeed (or, for services, be ready) first."""
    run: str | None = None
    """The shell script to run (bash where the sandbox has it, else sh)."""
    task: str | None = None
    """Plain words for the LLM planner, which writes the command."""
    workdir: str | None = None
    """Where to run, relative to the workflow's folder."""
    env: Env = Field(default_factory=dict)
    """Environment variables for this step."""
    timeout: Duration | None = None
    """Kill the step's processes after this long."""
    retry: Retry | None = None
    """When and how often to run the step again."""
    on_failure: OnFailure | None = None
    """``continue`` (default: dependents are skipped, other branches go on), ``abort`` (stop
    the run) or ``diagnose`` (ask the model)."""
    stall_timeout: Duration | None = None
    """Treat the step as stalled when it prints nothing for this long."""
    service: bool = False
    """A long-running server: done when ready, stopped when the run ends."""
    ready: Probe | None = None
    """When a service is ready."""
    expect: Expect | None = None
    """Expected duration and progress pattern."""
    success: Success | None = None
    """Checks that prove the step did its job."""
    outputs: dict[StepId, Output] = Field(default_factory=dict)
    """Values later steps read as ``${{ steps.<id>.outputs.<name> }}``."""
    resources: Resources | None = None
    """What this step's job asks Slurm for (cpus, memory, gpus, nodes), instead of
    ``sandbox.resources``; on the local and Docker sandboxes only ``gpus`` and ``cpus``,
    drawn from the machine's pool for each attempt."""
    artifacts: Annotated[list[ArtifactPattern], BeforeValidator(_one_or_list)] = Field(
        default_factory=list
    )
    """Files to keep with the run when the step succeeds: paths or globs (``*``, ``?``,
    ``[...]``, ``**``), relative to the step's folder in the workspace; a folder means every
    file in it. Each is copied into the run directory (or, above
    ``AGENTFLOW_ARTIFACT_COPY_MAX``, recorded by size and sha256); a pattern that matches
    no file fails the step."""
    recover: list[RecoverRule] = Field(default_factory=list)
    """Known failure modes and what to do about them."""
    cache: Cache | None = None
    """Reuse the result of an earlier run's step with the same key instead of running
    (``--no-cache`` turns it off for a run)."""
    ports: Annotated[list[PortName], AfterValidator(_unique_ports)] = Field(default_factory=list)
    """Names of TCP ports the step needs (``[http]``): agentflow picks a free loopback port
    for each, held for the run (no other run of the home gets it; the same after a
    resume), and fills it in as ``${{ ports.NAME }}`` in the step's ``run``, ``env``,
    ``ready``, ``success`` and ``outputs`` (an ``outputs`` ``value`` hands it on)."""

    @model_validator(mode="after")
    def _run_or_task(self) -> Step:
        if self.run is None and self.task is None:
            raise ValueError("a step needs `run` (a command) or `task` (for the LLM planner)")
        if self.run is not None and self.task is not None:
            raise ValueError("a step has either `run` or `task`, not both")
        if self.ready and not self.service:
            raise ValueError("`ready` is for services: add `service: true`")
        if self.cache and self.service:
            raise ValueError("`cache` is not for services: a service has no result to keep")
        return self

    @property
    def output_names(self) -> set[str]:
        """What ``${{ steps.<id>.outputs.<name> }}`` can read: the declared outputs and the
        last values of ``expect.metrics``."""
        return set(self.outputs) | set(self.expect.metrics if self.expect else ())


class Objective(Model):
    """Which run of a sweep is best."""

    metric: str
    """An output name of some step."""
    goal: Literal["maximize", "minimize"] = "maximize"
    """Whether larger or smaller is better."""


class Workflow(Model):
    """A workflow file (version 1)."""

    version: Literal[1]
    """The format version; always 1."""
    name: StepId
    """The workflow's name (used in run ids)."""
    description: str | None = None
    """One line on what the workflow does."""
    goal: str | None = None
    """Free text for the LLM planner."""
    docs: list[str] = Field(default_factory=list)
    """Runbooks (paths relative to the workflow file) for the planner and recovery."""
    inputs: dict[
        Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")],
        Annotated[Input, BeforeValidator(_input_shorthand)],
    ] = Field(default_factory=dict)
    """Parameters, overridable with ``--set name=value``."""
    env: Env = Field(default_factory=dict)
    """Environment variables for every step."""
    secrets: list[EnvName] = Field(default_factory=list)
    """Names of environment variables handed to steps and masked everywhere."""
    sandbox: Sandbox = Field(default_factory=Sandbox)
    """Where steps run."""
    planner: Planner = Field(default_factory=Planner)
    """Who turns steps into commands."""
    defaults: Defaults = Field(default_factory=Defaults)
    """Settings every step gets unless it says otherwise."""
    max_parallel: int = Field(default=4, ge=1)
    """The most steps running at once."""
    max_consecutive_failures: int = Field(default=5, ge=1)
    """The run-wide breaker: after this many failed attempts in a row (any steps), nothing
    is retried any more."""
    steps: list[Step] = Field(min_length=1)
    """The steps."""
    matrix: dict[str, list[Any]] | None = None
    """A sweep: one run per combination of these input values."""
    objective: Objective | None = None
    """How to rank the runs of a sweep."""
    max_parallel_runs: int = Field(default=1, ge=1)
    """The most runs of a sweep at once."""
    search: Search | None = None
    """An adaptive search over inputs (``agentflow search``), against the ``objective``."""
    notify: Notify | None = None
    """Who is told when a run ends, fails or waits for a person (``--notify URL`` adds a
    webhook)."""

    _by_id: ById[Step] = PrivateAttr(default_factory=ById)

    def step(self, step_id: str) -> Step:
        return self._by_id.find(self.steps, step_id)

    # Effective settings: the step's own, else the workflow's defaults, else built-in.

    # A service runs as long as the run needs it and may be quiet: the defaults' timeout
    # and stall_timeout are not for services, only their own.

    def timeout_of(self, step: Step) -> float | None:
        if step.timeout is not None or step.service:
            return step.timeout
        return self.defaults.timeout

    def retry_of(self, step: Step) -> Retry:
        return step.retry or self.defaults.retry or Retry()

    def on_failure_of(self, step: Step) -> OnFailure:
        return step.on_failure or self.defaults.on_failure or "continue"

    def cache_of(self, step: Step) -> Cache | None:
        if step.service:
            return None
        return step.cache or self.defaults.cache

    def stall_timeout_of(self, step: Step) -> float | None:
        if step.stall_timeout is not None or step.service:
            return step.stall_timeout
        return self.defaults.stall_timeout
