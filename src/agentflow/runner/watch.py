"""Watching running steps: exit codes and dead windows, new output (progress, stall
timer), readiness probes of services, and deadlines."""

from __future__ import annotations

import signal
import time
from collections.abc import Collection
from dataclasses import replace
from datetime import datetime, timedelta

from agentflow import stepfiles
from agentflow.monitor import (
    StepClock,
)
from agentflow.runner import porting
from agentflow.runner.outcome import Outcomes
from agentflow.sandbox import Job, Scheduler
from agentflow.state import StepState, now
from agentflow.tmux import Pane
from agentflow.verify import OutputError, probe, read_outputs
from agentflow.workflow.model import Step
from agentflow.workflow.types import format_duration

LOOPBACK = "127.0.0.1"
"""Where a service listens for its dependents on the local and Docker sandboxes (one
machine, one container per run)."""


class Watching(Outcomes):
    """The cheap, deterministic checks of running steps."""

    def _deadlines(self, step_id: str, st: StepState) -> list[tuple[datetime, str]]:
        """When agentflow must act on a running step, and why: ``kill`` (the grace after
        TERM is over), ``timeout``, ``stall``, ``not_ready``."""
        if st.kill_sent_at is not None:
            return [(st.kill_sent_at + timedelta(seconds=self.s.kill_grace), "kill")]
        if st.started_at is None:
            return []
        step = self.s.workflow.step(step_id)
        out = []
        timeout = self.s.workflow.timeout_of(step)
        if timeout is not None:
            out.append((st.started_at + timedelta(seconds=timeout), "timeout"))
        stall = self.s.workflow.stall_timeout_of(step)
        if stall is not None:
            out.append(((st.last_output_at or st.started_at) + timedelta(seconds=stall), "stall"))
        if step.service and step.ready and st.ready_at is None:
            out.append((st.started_at + timedelta(seconds=step.ready.timeout), "not_ready"))
        return out

    def _check_running(self) -> None:
        running = sorted(self.index.running, key=self.index.order.__getitem__)
        if not running:
            return
        self._windows_begun()  # (the answers tmux gave meanwhile, not waited for)
        # Woken by wrappers alone: only the steps they named can have ended (a window
        # that died without an exit code says so through tmux, a wake-up of its own, or
        # the periodic check finds it); the others are only watched.
        named = None if self.windows_due else self.woken
        ask = running if named is None else [k for k in running if k in named]
        ends = {k: e for k in ask if (e := self._end(k)) is not None}
        over = set(ends)
        # An attempt is recorded as ended with its window: the ones tmux has not
        # answered for yet (it made them, since their wrappers ran) are waited for.
        self._windows_begun(wait=True, steps=over)
        left = set(running) - over
        # One tmux call for all steps, and only when a step has not recorded its end and
        # a window may have died without saying so: the usual wake-up (a step's wrapper
        # wrote its exit code) needs none.
        looked = bool(left) and (
            self.panes_due
            or self._resuming
            or any(not self.state.steps[k].window and k not in self.beginning for k in left)
        )
        panes = self.s.tmux.panes(self.session) if looked else {}
        if looked:
            self.panes_looked = time.monotonic()
        box = self.s.sandbox
        jobs = box.jobs(running) if isinstance(box, Scheduler) else {}  # one query for all
        for step_id in running:
            st = self.state.steps[step_id]
            job = jobs.get(step_id)
            if job is not None and job.verdict is not None and st.kill_reason is None:
                status, why = job.verdict  # the scheduler ended it, whatever its exit code
                self._ended_by_scheduler(step_id, status, f"Slurm job {job.id} {job.state}: {why}")
                continue
            if job is not None and job.settling and st.kill_reason is None:
                self.schedule.changed()  # look again soon: it is about to say how it ended
                continue
            if job is not None:
                self._follow_job(step_id, job)
            if named is not None and step_id not in named:
                if job is None or not job.pending:
                    self._watch(step_id)
                continue
            # An end not found above is looked for again: handling the steps before it
            # takes time (a crash's KILL sweep waits for its wrapper), and an end written
            # meanwhile must meet the hangup check here.
            end = ends.get(step_id) or self._end(step_id)
            if end is not None:
                self._recorded_end(step_id, end)
                continue
            if not looked:  # its window lives: no word of its death, none due
                if job is None or not job.pending:
                    self._watch(step_id)
                continue
            if step_id in self.beginning:  # its window is being made
                self._watch(step_id)
                continue
            pane = panes.get(st.window or "")
            if pane is None and not st.window and self._launch_cut_short(step_id, panes):
                continue
            if pane is None or pane.dead or pane.name != step_id:
                # The exit code is written before the window can die; look once more.
                end = self._end(step_id)
                if end is not None:
                    self._recorded_end(step_id, end)
                elif st.kill_reason is not None:
                    # Killed by agentflow before its wrapper could write (a cancelled job):
                    # the reason for the kill says how it ended.
                    self._attempt_ended(step_id, 128 + signal.SIGKILL, None)
                else:
                    why = "its tmux window is gone" if pane is None else "its wrapper died"
                    self._crashed(step_id, f"{why} without recording an exit code")
                continue
            if job is not None and job.pending:
                continue  # waiting in the queue: no output, no deadline, no probe yet
            self._watch(step_id)

    def _recorded_end(self, step_id: str, end: stepfiles.End) -> None:
        """An attempt whose wrapper recorded its end: lost with its window when that went
        first (a hangup agentflow did not send), else ended with its exit code."""
        if end.hung_up and self.state.steps[step_id].kill_reason is None:
            self._crashed(step_id, "its tmux window went away (SIGHUP): tmux was killed?")
        else:
            self._attempt_ended(step_id, end.code, end.written)

    def _release_env(self, running: Collection[str]) -> None:
        """Drop the environment scripts the steps' windows have read (their wrapper
        recorded its pid) or will never read (the attempt is over)."""
        for step_id in self.handoff.keys():  # noqa: SIM118 (not a dict)
            if (
                step_id not in running
                or stepfiles.pid(self.s.run.step_dir(step_id)) is not None
                or self._exit_code(step_id)[0] is not None
            ):
                self.handoff.release(step_id)

    def _launch_cut_short(self, step_id: str, panes: dict[str, Pane]) -> bool:
        """The orchestrator died between checkpointing a launch and recording its window.
        A live window of the step's name is that attempt: watched from now on. No window
        and no sign of the wrapper: the attempt never began, and starts again as itself."""
        found = next((p for p in panes.values() if p.name == step_id and not p.dead), None)
        if found is not None:
            self._update(step_id, window=found.window_id)
            return True
        if stepfiles.pid(self.s.run.step_dir(step_id)) is not None:
            return False  # it began, and its window is gone: a crash, as any other
        st = self.state.steps[step_id]
        self._update(step_id, status="pending", attempts=st.attempts - 1, started_at=None)
        self._emit("step_requeued", step_id, message="its launch was cut short: starting it")
        return True

    def _follow_job(self, step_id: str, job: Job) -> None:
        """A job in the queue: say why it waits, and count the step's time (its timeout,
        stall timer) from when it starts to run, not from when it was submitted."""
        st = self.state.steps[step_id]
        if job.pending:
            note = f"queued in Slurm (job {job.id}, {job.reason or job.state})"
            if st.message != note:
                self._emit("step_queued", step_id, message=note)
            self._update(step_id, started_at=now(), last_output_at=None, message=note)
        elif st.message and st.message.startswith("queued in Slurm"):
            self._update(step_id, message=None, started_at=now())
            self._emit("job_started", step_id, message=f"Slurm job {job.id} on {job.nodes}")

    def _watch(self, step_id: str) -> None:
        """The cheap, deterministic check of one running step: new output (progress,
        stall timer), the readiness probe of a service, and its deadlines."""
        st = self.state.steps[step_id]
        clock = self.clocks.setdefault(step_id, StepClock(self.expected.get(step_id)))
        deadlines = self._deadlines(step_id, st)
        if clock.due() or any(t <= now() for t, _ in deadlines):
            clock.looked(self._look_at_output(step_id))
        step = self.s.workflow.step(step_id)
        if step.service and self.state.steps[step_id].ready_at is None:
            self._probe(step_id, step)
        st = self.state.steps[step_id]
        for deadline, why in self._deadlines(step_id, st):
            if deadline <= now():
                self._act_on_deadline(step_id, st, why)
                break

    def _probe(self, step_id: str, step: Step) -> None:
        if step.ready is None:  # a service without a probe is ready once started
            self._became_ready(step_id, step, "started (no readiness probe)")
            return
        due = self.next_probe.get(step_id)
        if due is not None and now() < due:
            return
        env = self._step_env(step)
        where = self._where(step, env)
        if isinstance(self.s.sandbox, Scheduler):  # probe where the service runs: its node
            where = replace(where, box=self.s.sandbox.executor(step_id))
        ready = self._rendered(step.ready, env, step_id)
        check = probe(ready, where)
        self.next_probe[step_id] = now() + timedelta(seconds=step.ready.interval)
        self.last_probe[step_id] = check.detail
        if check.ok and not porting.refused(self, step, ready):
            self._became_ready(step_id, step, check.detail)

    def _became_ready(self, step_id: str, step: Step, detail: str) -> None:
        st = self.state.steps[step_id]
        waited = (now() - st.started_at).total_seconds() if st.started_at else 0.0
        host = self.s.sandbox.host(step_id) if isinstance(self.s.sandbox, Scheduler) else LOOPBACK
        self._update(step_id, ready_at=now(), outputs={"host": host})
        self.next_probe.pop(step_id, None)
        self.schedule.changed()
        self._emit("service_ready", step_id, message=f"{detail} after {format_duration(waited)}")
        if step.outputs:
            try:
                env = self._step_env(step)
                rendered = {k: self._rendered(v, env, step_id) for k, v in step.outputs.items()}
                outputs = read_outputs(rendered, self._where(step, env))
            except OutputError as e:
                self._emit("output_missing", step_id, message=str(e))
            else:
                outputs = {"host": host, **{k: self.redactor(v) for k, v in outputs.items()}}
                self._update(step_id, outputs=outputs)

    def _act_on_deadline(self, step_id: str, st: StepState, why: str) -> None:
        step = self.s.workflow.step(step_id)
        if why == "kill":
            self._signal(step_id, signal.SIGKILL)
            self._update(step_id, kill_sent_at=now() + timedelta(seconds=3600))
            return
        if why == "timeout":
            limit = self.s.workflow.timeout_of(step) or 0
            message = f"ran longer than its timeout ({format_duration(limit)})"
        elif why == "stall":
            limit = self.s.workflow.stall_timeout_of(step) or 0
            message = f"printed nothing for {format_duration(limit)} (stall_timeout)"
        else:
            assert step.ready is not None
            last = self.last_probe.get(step_id, "no probe answered")
            message = f"not ready after {format_duration(step.ready.timeout)}: {last}"
        self._update(step_id, kill_reason=why, kill_sent_at=now(), message=message)
        self._emit(why, step_id, message=f"{message}: stopping it")
        self._signal(step_id, signal.SIGTERM)
