"""Starting steps: which are ready (dependencies, places, back-off), and launching one
in its tmux window through the sandbox's wrapper; ending services when nothing needs them."""

from __future__ import annotations

import errno
import signal
from dataclasses import dataclass
from datetime import timedelta

from pydantic import JsonValue

from agentflow import handoff, stepfiles
from agentflow.errors import AgentflowError
from agentflow.monitor import (
    StepClock,
)
from agentflow.plan import PlannedStep
from agentflow.runner import pooling
from agentflow.runner.caching import skip_unneeded_service, take_from_cache
from agentflow.runner.index import BAD
from agentflow.runner.windows import Windows
from agentflow.sandbox import wrapper_script
from agentflow.state import FINAL, now
from agentflow.tmux import COMMAND_MAX

_MACHINE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.ENOMEM})
"""Errors of the machine, not of anything a step did: they stop the run (resumable)."""

SANDBOX_RETRY = 5.0
"""Seconds between tries to bring back a sandbox that went away."""
SANDBOX_PATIENCE = 180.0
"""How long a run waits for its sandbox to come back before it stops with the error."""


@dataclass(frozen=True)
class Opening:
    """An attempt recorded as started, whose window the launch pass opens at its end."""

    step_id: str
    argv: list[str]
    event_data: dict[str, JsonValue] | None


class Launching(Windows):
    """Starting the steps that can start."""

    def _end_services(self) -> None:
        """Once every other step is over, stop the services (they are done, not failed)."""
        if not self.services:
            return
        # Counted, not looked at: the steps not over are the services' own, or none.
        services_open = sum(1 for k in self.services if self.state.steps[k].status not in FINAL)
        if self.index.unfinished > services_open:
            return
        for step_id in self.services:
            st = self.state.steps[step_id]
            if st.status == "pending":
                why = "no step needs it any more"
                self._update(step_id, status="skipped", message=why)
                self._emit("step_skipped", step_id, status="skipped", message=why)
            elif st.status == "running" and st.kill_reason is None:
                self._update(step_id, kill_reason="end", kill_sent_at=now())
                self._emit("service_stopping", step_id, message="the run is over")
                self._signal(step_id, signal.SIGTERM)

    def _sandbox_down(self, step_id: str, error: AgentflowError) -> None:
        """The sandbox went away under the run (a Docker daemon restarting): the step
        waits and the sandbox is tried again, for a while, before the run gives up."""
        first = self._sandbox_down_since or now()
        self._sandbox_down_since = first
        waited = (now() - first).total_seconds()
        if waited > SANDBOX_PATIENCE:
            raise error
        why = str(error).splitlines()[0]
        self._update(step_id, not_before=now() + timedelta(seconds=SANDBOX_RETRY))
        self._emit(
            "sandbox_unavailable", step_id, message=f"{why}; trying again in {SANDBOX_RETRY:g}s"
        )

    def _start_ready(self) -> None:
        """Start what can start, up to ``max_parallel``, and skip what never will: the
        steps the index queued (their needs changed), in plan order, in one pass."""
        self._end_services()
        pooling.settle(self)  # devices of ended attempts, back before steps draw them
        ix = self.index
        if self.aborting:
            for step_id in ix.pending():
                if step_id not in self.diagnoses and step_id not in self.holds:
                    why = f"run aborted: {self.aborting}"
                    self._update(step_id, status="skipped", message=why)
                    self._emit("step_skipped", step_id, status="skipped", message=why)
            return
        # A ready service holds no place: it only waits for its users.
        taken = [len(ix.holding)]  # (a launch that failed at once took its place too)
        limit = self.s.workflow.max_parallel
        kept: list[str] = []  # left pending: queued again after the pass
        opening: list[Opening] = []  # started by this pass: their windows open at its end
        for step_id in ix.movable(lambda: taken[0] >= limit):
            if step_id in self.diagnoses or step_id in self.holds:
                kept.append(step_id)  # (a step the model is looking at waits for its answer)
                continue
            if ix.lost[step_id]:
                need = next(n for n in ix.needs[step_id] if self.state.steps[n].status in BAD)
                why = f"needs {need}, which {self.state.steps[need].status}"
                self._update(step_id, status="skipped", message=why)
                self._emit("step_skipped", step_id, status="skipped", message=why)
                continue
            st = self.state.steps[step_id]
            if st.not_before is not None and now() < st.not_before:
                kept.append(step_id)
                continue
            if self._launch(self.planned[step_id], opening):
                taken[0] += 1
            if self.state.steps[step_id].status == "pending":
                kept.append(step_id)  # (a service waiting to know, a sandbox away)
        self._open_windows(opening)
        for step_id in kept:
            ix.wanted(step_id)

    def _open_windows(self, opening: list[Opening]) -> None:
        """Start the attempts the pass made ready, in their windows, after one sync that
        puts all their records on disk: a launch is never done on a change that is not
        (killed in between, a resume finds each attempt, by its exit code or as crashed,
        instead of starting it again as new)."""
        if not opening:
            return
        self.checkpoint.commit()
        for o in opening:
            self._begin_window(o.step_id, o.argv)
            self.clocks[o.step_id] = StepClock(self.expected.get(o.step_id))
            self.schedule.changed()
            self._emit("step_started", o.step_id, status="running", data=o.event_data)

    def _cannot_launch(self, step_id: str, attempt: int, why: str) -> None:
        """The attempt cannot start: the step fails, saying why, and the run goes on with
        what does not need it."""
        self._tidy(step_id)
        self._update(
            step_id, status="failed", attempts=attempt, started_at=now(), finished_at=now(),
            exit_code=None, message=why,
        )  # fmt: skip
        self._emit("step_finished", step_id, status="failed", message=why)

    def _launch(self, planned: PlannedStep, opening: list[Opening]) -> bool:
        """Make the step's attempt ready to start (its window added to ``opening``), or take
        it from the cache, or fail it; False when it is left pending without taking a place
        (a service that waits to know whether it is needed)."""
        if not self._sandbox_checked:
            try:
                self.s.sandbox.start()  # idempotent: re-attaches, or starts a new one
            except AgentflowError as e:
                self._sandbox_down(planned.id, e)
                return True
            self._sandbox_checked = True
            self._sandbox_down_since = None
        if take_from_cache(self, planned):
            return True
        step = self.s.workflow.step(planned.id)
        # A service starts only for a step that will run (not one the cache answers).
        if step.service:
            verdict = skip_unneeded_service(self, planned)
            if verdict != "start":
                return verdict == "skipped"
        st = self.state.steps[planned.id]
        attempt = st.attempts + 1
        drawn = pooling.draw(self, planned.id, attempt)
        if drawn is None:
            return False  # no free GPU (or CPU): it waits, holding no place
        step_dir = self.s.run.step_dir(planned.id)
        env = self._step_env(step)
        env.update(drawn.env(self))
        command = self._render(st.run_override or planned.run, env, planned.id)
        header = f"# agentflow step {planned.id}, attempt {attempt}, run {self.state.run_id}\n"
        if planned.id in self.tidy_soon:
            self._tidy(planned.id)  # the attempt before, ended in this wake-up
        self.untidy.add(planned.id)
        try:
            stepfiles.prepare(step_dir, st.attempts, f"{header}{command}\n", wrapper_script())
        except OSError as e:
            if e.errno in _MACHINE_ERRORS:
                raise  # the machine's problem (a full disk): the run stops, to be resumed
            # What a step can do to its folder (make it unwritable, plant something that
            # will not go): this step fails, the run goes on.
            self._cannot_launch(planned.id, attempt, f"its folder cannot be made ready ({e})")
            return True
        env.update(
            AGENTFLOW_RUN_ID=self.state.run_id,
            AGENTFLOW_STEP=planned.id,
            AGENTFLOW_ATTEMPT=str(attempt),
        )
        secrets = dict(self.s.secrets)
        if secrets:
            # Values go only to the step's environment; the wrapper masks them in its output.
            env["AGENTFLOW_SECRETS"] = " ".join(secrets)
        # A secret wins over an `env` or `set_env` of its name (as it always has), and the
        # two stay apart: the sandbox hands the step's variables only to the step.
        env = {k: v for k, v in env.items() if k not in secrets}
        workdir = self._workdir(step, env)
        launch = self.s.sandbox.launch(step_dir, workdir, env, secrets)
        if why := handoff.too_big({**launch.env, **env}):
            self._cannot_launch(planned.id, attempt, why)
            return True
        # The window gets tmux's fixed environment; the host-side variables of the step
        # (yours and the secrets in the local sandbox, the client's and the secrets in
        # Docker) come in a script it sources, held by this process until it has.
        script = self.handoff.put(planned.id, launch.env)
        pinned = drawn.pinned(self, launch.command)
        if launch.sources_env:
            argv = [*pinned, script]
        else:
            argv = ["/bin/sh", "-c", '. "$0" && exec "$@"', script, *pinned]
        args = self.s.tmux.window_args(self.session, planned.id, argv, self.s.workspace)
        size = self.s.tmux.command_size(args)
        if size > COMMAND_MAX:
            # A workspace or workdir path too long for tmux's message.
            self.handoff.release(planned.id)
            self._cannot_launch(
                planned.id, attempt,
                f"its command takes {size} bytes, more than tmux passes to a window "
                f"({COMMAND_MAX}): use a shorter workdir",
            )  # fmt: skip
            return True
        if st.window:
            self.s.tmux.kill_window(st.window)  # (not waited for)
        self._update(
            planned.id, status="running", attempts=attempt, started_at=now(),
            finished_at=None, exit_code=None, window=None, message=None, kill_reason=None,
            kill_sent_at=None, not_before=None, ready_at=None, progress=None, output_bytes=0,
            last_output_at=None, fresh=False, cached_from=None, **drawn.recorded(),
        )  # fmt: skip
        opening.append(Opening(planned.id, argv, drawn.event_data()))
        return True
