"""The runner's shared state and plumbing: the checkpoint writes, events, signals, and how
a step's environment and folders are worked out (what it is given: ``runner.setup``)."""

from __future__ import annotations

import os
import shlex
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from pydantic import BaseModel, JsonValue

from agentflow import artifacts, safefs, stepfiles
from agentflow.agent.diagnose import Diagnosis
from agentflow.artifacts import ArtifactError, Collector
from agentflow.checkpointer import Checkpointer
from agentflow.handoff import Handoff
from agentflow.monitor import (
    READ_LIMIT,
    CheckSchedule,
    StepClock,
    eta_seconds,
    learned_durations,
    parse_progress,
)
from agentflow.pool.run import RunPool
from agentflow.redact import Redactor
from agentflow.runner import metering
from agentflow.runner.index import StepIndex
from agentflow.runner.setup import Observer, RunSetup
from agentflow.settings import settings
from agentflow.state import FINAL, Progress, RunState, StepStatus, now
from agentflow.store import Event
from agentflow.template import Ref, scalar_text, substitute
from agentflow.tmux import wake_channel
from agentflow.verify import Where
from agentflow.workflow.model import Scalar, Step

M = TypeVar("M", bound=BaseModel)

SOFT = frozenset({"window", "output_bytes", "last_output_at", "progress"})
"""Step fields a run finds again by itself after a crash of the machine (the window by its
name, the rest by reading the output): their changes wait for another change's sync."""
WINDOWS_KEPT = 100
"""The windows of this many ended attempts stay open to be read (the newest): tmux's cost
of a new window grows with the windows its session holds (35 ms each at 3,000, 8.5 ms at
none, measured), so a 10,000-step run cannot keep them all. Every log is in ``output.log``."""
MAX_DECISIONS_PER_STEP = 3
MAX_DECISIONS_PER_RUN = 10
SANDBOX_LOSSES = 3
"""How many times a step's attempt may go down with its sandbox without counting."""
DIAGNOSIS_DEADLINE = 600.0
"""Seconds a diagnosis may take before the step is escalated without the model's answer."""


@dataclass(frozen=True)
class Asked:
    """A diagnosis under way: how the attempt ended, and the model's answer to come."""

    status: StepStatus
    message: str | None
    deadline: datetime
    answer: Future[Diagnosis]
    asked_at: datetime = field(default_factory=now)


class RunnerBase:
    """State and plumbing every part of the runner uses."""

    def __init__(self, setup: RunSetup, state: RunState, observer: Observer) -> None:
        self.s = setup
        self._state = state
        self.observer = observer
        self.checkpoint = Checkpointer(setup.run)
        """Saves the state: records in state.log, snapshots in state.json."""
        self.session = state.run_id
        self.channel = wake_channel(self.session)
        self.schedule = CheckSchedule()
        self.windows_due = True
        """Whether this wake-up must look at the steps' tmux windows (False when only a
        step's wrapper woke the runner, having recorded its end)."""
        self.woken: set[str] = set()
        """The steps whose wrappers woke the runner (when ``windows_due`` is False)."""
        self.index = StepIndex(setup.plan.steps, state)
        """Counts, queues and the running set, kept with every change of a step."""
        self._indexed = state.steps
        self.untidy: set[str] = set()
        """Steps whose folder may hold what a wrapper leaves for the host (``_tidy``)."""
        self.tidy_soon: set[str] = set()
        """Ended attempts whose folders are tidied after the wake-up's launches
        (``_tidy_ended``): the steps waiting on them start first."""
        self.beginning: dict[str, tuple[int, list[str]]] = {}
        """Steps whose window tmux is still making: its ``new-window``'s ticket and argv."""
        self.kept_windows: deque[str] = deque()
        """The windows of ended attempts, oldest first (``WINDOWS_KEPT`` of them stay)."""
        self._dirty: set[str] | None = None
        """The steps ``_update`` changed since the last save; None: not known (a whole
        state was given), the save compares them all."""
        self.planned = {p.id: p for p in setup.plan.steps}
        self.services = [s.id for s in setup.workflow.steps if s.service]
        self.pool = RunPool(setup.pool, setup.run) if setup.pool else None
        """This run's share of the machine's GPUs and CPUs (``agentflow.pool``)."""
        # agentflow's own key too: whatever quotes it (a step's log, the model's transcript).
        own = settings().anthropic_api_key or ""
        self.redactor = Redactor([*setup.secrets.values(), own])
        self.aborting: str | None = None
        self._resuming = False
        self._sandbox_checked = True
        self._sandbox_down_since: datetime | None = None
        self.clocks: dict[str, StepClock] = {}
        self.sandbox_losses: dict[str, int] = {}
        """Attempts of each step that went down with their sandbox (not counted as tries)."""
        self.usage_base = state.usage
        """What the model had cost the run before this runner (the diagnoser's client
        counts from zero)."""
        self.diagnoses: dict[str, Asked] = {}
        """Steps whose failure the model is looking at, off the runner's thread."""
        self.holds: dict[str, Future[list[str]]] = {}
        """Steps that wait for something done off the runner's thread (other runs being
        stopped at the model's request)."""
        self.wake: Callable[[], None] = lambda: None
        """Wakes the runner from its sleep (a diagnosis answered)."""
        # Never read from a workspace, by identity: agentflow's home (other runs' logs) and
        # its tmux socket's folder, wherever they lie and whatever path leads to them.
        self.hidden = safefs.identities(
            [setup.run.path.parent.parent, setup.tmux.socket_path.parent]
        )
        self.panes_due = True
        """Whether ``_check_running`` asks tmux about the windows (see ``Runner._drive``)."""
        self.panes_looked = 0.0
        """When it last did (``time.monotonic``)."""
        self.handoff = Handoff(setup.tmux.socket_path.parent / "env", self.session)
        """The environment scripts of the steps whose windows have not read them yet."""
        self.cache_keys: dict[str, str | None] = {}
        """Each step's cache key as its latest launch computed it (None: not cacheable)."""
        self.uncacheable: dict[str, str] = {}
        """Steps whose result must not be cached in this run, and why (a secret's value)."""
        self.next_probe: dict[str, datetime] = {}
        self.meters: dict[str, metering.Meter] = {}
        """Each step's metric series (``expect.metrics``), loaded at its first look."""
        self.last_probe: dict[str, str] = {}
        learned = learned_durations(setup.run.path.parent, state.workflow, state.run_id)
        self.expected: dict[str, float] = {}
        for step in setup.workflow.steps:
            duration = step.expect.duration if step.expect else None
            if duration is None:
                duration = learned.get(step.id)
            if duration is not None:
                self.expected[step.id] = duration

    @property
    def state(self) -> RunState:
        return self._state

    @state.setter
    def state(self, state: RunState) -> None:
        # Steps changed other than through `_update` (a resume prepared, a whole state
        # given): the index is built again from them (O(n), rare).
        self._state = state
        if state.steps is not self._indexed:
            self.index = StepIndex(self.s.plan.steps, state)
            self._indexed = state.steps
            self._dirty = None

    def _tidy(self, step_id: str) -> None:
        """Remove the FIFO (and reserve) the step's wrapper leaves for the host: when its
        attempt has ended, when it could not start, and for every step still untidy when
        this orchestrator goes (a FIFO in a run's folder blocks `cp -r` of it)."""
        stepfiles.tidy(self.s.run.step_dir(step_id))
        self.untidy.discard(step_id)
        self.tidy_soon.discard(step_id)

    def _tidy_ended(self) -> None:
        """``_tidy`` the attempts that ended in this wake-up (after its launches)."""
        for step_id in sorted(self.tidy_soon):
            self._tidy(step_id)

    def _tidy_all(self) -> None:
        """``_tidy`` every step still untidy: this orchestrator goes (a FIFO still open
        stays open where it is open)."""
        for step_id in list(self.untidy):
            self._tidy(step_id)

    def _exit_code(self, step_id: str) -> tuple[int | None, datetime | None]:
        return stepfiles.exit_code(self.s.run.step_dir(step_id))

    def _end(self, step_id: str) -> stepfiles.End | None:
        return stepfiles.end(self.s.run.step_dir(step_id))

    def _dependents_done(self, service: str) -> bool:
        return all(
            self.state.steps[s.id].status in FINAL
            for s in self.s.workflow.steps
            if service in s.needs
        )

    def _planned_run(self, step_id: str) -> str:
        return self.s.plan.step(step_id).run

    def _step_env(self, step: Step) -> dict[str, str]:
        """The step's environment. Like shell assignments: ${{ env.X }} reads what is set
        above it (the workflow's env, then the step's, in the order written), else the
        caller's environment; then what a recover: rule or the model set for later attempts."""
        env: dict[str, str] = {}
        for key, value in [*self.s.workflow.env.items(), *step.env.items()]:
            env[key] = self._render(value, env, step.id)
        env.update(self.state.steps[step.id].env_overrides)
        return env

    def _rendered(self, model: M, env: dict[str, str], step: str | None = None) -> M:
        """A ready/success/outputs block with its ${{ }} expressions filled in (``step``:
        whose ``${{ ports.NAME }}``)."""

        def walk(value: object) -> object:
            if isinstance(value, str):
                return self._render(value, env, step)
            if isinstance(value, dict):
                return {k: walk(v) for k, v in value.items()}
            if isinstance(value, list):
                return [walk(v) for v in value]
            return value

        return type(model).model_validate(walk(model.model_dump(by_alias=True)))

    def _workdir(self, step: Step, env: dict[str, str]) -> str:
        """The step's working directory inside the sandbox."""
        return self.s.sandbox.workdir(self._render(step.workdir, env) if step.workdir else None)

    def _where(self, step: Step, env: dict[str, str]) -> Where:
        """The step's folder inside the sandbox and on the host (for probes and checks),
        and its environment (commands of probes and checks see what the step sees)."""
        host_dir = self.s.workspace
        if step.workdir:
            host_dir = self.s.workspace / self._render(step.workdir, {})
        return Where(
            box=self.s.sandbox,
            workdir=self._workdir(step, {}),
            host_dir=host_dir,
            root=self.s.workspace,
            log=self.s.run.step_dir(step.id) / "output.log",
            steps=self.s.run.steps_path,
            env=env,  # not the secrets: checks do not need them
            hidden=self.hidden,
        )

    def _inputs(self) -> dict[str, Scalar]:
        """The run's inputs, with what the model changed for the rest of the run."""
        return {**self.s.plan.inputs, **self.state.input_overrides}

    def _render(self, text: str, env: dict[str, str], step: str | None = None) -> str:
        """``text`` with its expressions filled in; ``${{ ports.NAME }}`` only with the
        ``step`` it belongs to (else kept as written: a cache key stays the same)."""

        def lookup(ref: Ref) -> str | None:
            if ref.kind == "ports":
                port = self.state.steps[step].ports.get(ref.names[0]) if step else None
                return None if port is None else str(port)
            if ref.kind == "inputs":
                value = self._inputs().get(ref.names[0])
                return None if value is None else scalar_text(value)
            if ref.kind == "env":
                return env.get(ref.names[0], os.environ.get(ref.names[0], ""))
            if ref.kind == "run":
                return self.state.run_id
            return self.state.steps[ref.names[0]].outputs.get(ref.names[1], "")

        return substitute(text, lookup)

    def _ensure_session(self) -> None:
        log = self.s.run.log_path
        log.touch()
        # The session's first window shows the orchestrator's log, for whoever attaches.
        command = shlex.join(["tail", "-n", "+1", "-F", str(log)])
        self.s.tmux.ensure_session(self.session, self.s.workspace, command)
        self.s.tmux.open_control(self.session)

    def _update(self, step_id: str, **changes: object) -> None:
        message = changes.get("message")
        if isinstance(message, str):  # what a check found may quote a secret's value
            changes["message"] = self.redactor(message)
        self._state = self._state.with_step(step_id, **changes)
        self.index.changed(step_id, self._state.steps[step_id])
        self._indexed = self._state.steps
        if self._dirty is not None:
            self._dirty.add(step_id)
        # A step about to start is made durable by the launch itself, once for all the
        # steps it starts (``Launching._open_windows``). What the run finds again by itself
        # (its window by name, its output by reading) waits for the next sync another
        # change needs: one sync a step in a chain, not two.
        self._save(soft=changes.keys() <= SOFT)

    def _save(self, *, soft: bool = False) -> None:
        changed, self._dirty = self._dirty, set()
        problem = self.checkpoint.save(self.state, soft=soft, changed=changed)
        self.observer.update(self.state)
        if problem:
            self._emit("checkpoint_log_damaged", message=f"warning: {problem}")

    def _emit(
        self,
        kind: str,
        step: str | None = None,
        *,
        status: str | None = None,
        exit_code: int | None = None,
        message: str | None = None,
        data: dict[str, JsonValue] | None = None,
    ) -> None:
        attempt = self.state.steps[step].attempts if step else None
        message = self.redactor(message) if message else message
        event = Event(
            kind=kind,
            step=step,
            attempt=attempt,
            status=status,
            exit_code=exit_code,
            message=message,
            data=self.redactor.deep(data) if data else None,
        )
        self.s.run.append_event(event)
        self.observer.event(event, self.state)

    def _look_at_output(self, step_id: str, *, final: bool = False) -> bool:
        """Read what the step printed since the last look (the end of it, at most
        READ_LIMIT); update its progress, ETA and metric series. True when there was new
        output. ``final``: the attempt has ended (an unfinished last line counts)."""
        st = self.state.steps[step_id]
        new = stepfiles.new_output(self.s.run.step_dir(step_id), st.output_bytes, READ_LIMIT)
        metrics = metering.look(self, step_id, final=final)
        if new is None:
            if metrics is not None:  # values from a JSON-lines file alone
                self._update(step_id, metrics=metrics)
            return False
        step = self.s.workflow.step(step_id)
        # When the output was written, not when we looked: the stall timer is exact.
        changes: dict[str, object] = {"output_bytes": new.size, "last_output_at": new.written}
        if metrics is not None:
            changes["metrics"] = metrics
        found = parse_progress(new.text, step.expect.progress if step.expect else None)
        if found is not None:
            done, total = found
            progress = Progress(done=done, total=total)
            elapsed = (now() - st.started_at).total_seconds() if st.started_at else 0.0
            eta = eta_seconds(progress.fraction, elapsed)
            changes["progress"] = progress.model_copy(update={"eta_s": eta})
        elif step_id in self.expected and (st.progress is None or st.progress.total == 0):
            # No progress in the output: the ETA is what is left of the expected duration.
            elapsed = (now() - st.started_at).total_seconds() if st.started_at else 0.0
            left = max(0.0, self.expected[step_id] - elapsed)
            changes["progress"] = Progress(done=0, total=0, eta_s=left)
        self._update(step_id, **changes)
        return True

    def _collect_artifacts(self, step: Step) -> str | None:
        """Keep the step's ``artifacts`` with the run (its attempt succeeded so far); what
        went wrong, or None. The manifest and an ``artifacts`` event record them."""
        if not step.artifacts:
            return None
        env = self._step_env(step)
        patterns = [self._render(p, env) for p in step.artifacts]
        home = self.s.run.path.parent.parent
        collector = Collector(
            root=self.s.workspace,
            step_dir=self._where(step, env).host_dir,
            dest=self.s.run.path / artifacts.COPY_DIR / step.id,
            copy_max=settings().artifact_copy_max,
            exclude=(home,),
        )
        try:
            files, skipped = collector.collect(patterns)
            collected = artifacts.StepArtifacts(
                attempt=self.state.steps[step.id].attempts,
                collected_at=now(),
                patterns=patterns,
                files=files,
                skipped=skipped,
            )
            artifacts.save(self.s.run, step.id, collected, self.redactor)
        except ArtifactError as e:
            return str(e)
        except OSError as e:  # the manifest cannot be written (a full disk)
            return f"artifacts: cannot record them in the run directory ({e.strerror or e})"
        self._emit("artifacts", step.id, message=artifacts.summary(collected))
        return None
