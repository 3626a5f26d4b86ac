"""The runner: drives one run from its plan to its end, and picks it up again after a crash.

It starts steps in dependency order (up to ``max_parallel`` at once), each in its own tmux
window through the sandbox's wrapper, then sleeps until the earliest deadline. A step's
window signals a tmux channel when the step ends, which wakes the runner at once; what
happened is then read from the step's folder (``exit_code``), never from the screen.
Every change is saved (a record appended to ``state.log``, compacted into
``state.json`` now and then: ``agentflow.checkpointer``) before anything else happens.

The parts: ``base`` (state and plumbing), ``watch`` (running steps), ``outcome`` (ended
attempts and recovery), ``launch`` (starting steps); ``Runner`` is the loop.
"""

from __future__ import annotations

import contextlib
import signal
import time
from datetime import datetime, timedelta

from agentflow import history
from agentflow.errors import AgentflowError, first_line
from agentflow.monitor import Waker
from agentflow.pool.run import WAIT_POLL
from agentflow.report import Report, write_reports
from agentflow.runner import pooling
from agentflow.runner.launch import Launching
from agentflow.runner.porting import hold_ports, release_ports
from agentflow.runner.setup import (
    STOP_REASON_MAX,
    STOP_REQUEST,
    InterruptChoice,
    Observer,
    RunSetup,
)
from agentflow.runner.watch import Watching
from agentflow.state import RunState, now
from agentflow.textsafe import clip_words, one_line

__all__ = ["STOP_REASON_MAX", "STOP_REQUEST", "InterruptChoice", "Observer", "RunSetup", "Runner"]

PANES_BACKSTOP = 1.0
"""Seconds after which the runner looks at the windows of running steps even when no
window is known to have died (a wake-up lost, a window whose end tmux never saw)."""
ENV_WAIT = 2.0
"""Seconds a runner that leaves waits for its steps' windows to read their environment."""
SHORT = 360
"""The longest a run's failure line gets when the sandbox cannot start (the daemon's
whole answer is in the ``run_finished`` event's ``data.error``)."""


class Runner(Watching, Launching):
    """Drives one run: the loop, and its end."""

    def start(self) -> RunState:
        """Drive a new run (its state already has every step pending)."""
        self._save()
        n = len(self.state.steps)
        self._emit("run_started", message=f"{n} step{'s' if n != 1 else ''}")
        return self._drive()

    def resume(self) -> RunState:
        """Drive a run again after its orchestrator stopped or died."""
        self._resuming = True
        # A service stopped at the end of the run starts again for steps that still need it.
        for step in self.s.workflow.steps:
            st = self.state.steps[step.id]
            if step.service and st.status == "succeeded" and not self._dependents_done(step.id):
                self.state = self.state.with_step(step.id, status="pending", message=None)
        self._save()
        pooling.restore(self)  # a step still running keeps its devices
        running = list(self.index.running)
        self._emit("run_resumed", message=f"{len(running)} steps were running")
        return self._drive()

    def _drive(self) -> RunState:
        try:
            self.s.sandbox.start()
        except AgentflowError as e:
            # No sandbox, no run: say so in the checkpoint (not "running" with nobody there).
            # The error itself is told once, whole, as the command's `error:` on stderr; the
            # run's line only says what happened, the checkpoint keeps it cut at a word
            # (for status and the history), and the event keeps the whole text.
            full = f"the sandbox could not start: {str(e).strip()}"
            lines = full.splitlines()
            first = lines[0].rstrip(": ") + (" …" if len(lines) > 1 else "")
            message = clip_words(first, SHORT)
            self.state = self.state.with_run(status="failed", finished_at=now(), message=message)
            self._save()
            said = "the sandbox could not start (the error follows)"
            self._emit("run_finished", status="failed", message=said, data={"error": full})
            self._record(write_reports(self.s.run, self.state, self.s.junit, self.s.workflow))
            raise
        hold_ports(self)
        self._ensure_session()
        waker = Waker(
            lambda: self.s.tmux.waiter(self.channel),
            self.s.run.path / "steps" / ".wake",
        )
        self.wake = waker.wake
        try:
            with waker.signals():
                while True:
                    while not waker.interrupted:
                        changed_before = self.schedule.last
                        self._collect_diagnoses()
                        # The windows are looked at when one died unreported, and at the
                        # periodic check (a backstop); a step's FIFO alone needs no look.
                        due = time.monotonic() >= self.panes_looked + PANES_BACKSTOP
                        self.panes_due = waker.channel_woke or due
                        waker.channel_woke = False
                        self._check_running()
                        self._resuming = False
                        self._start_ready()
                        # What the ended attempts leave (their FIFOs, the environment
                        # scripts their windows read) goes once their dependents started.
                        self._release_env(self.index.running)
                        self._tidy_ended()
                        if self._done():
                            return self._finish()
                        if self.schedule.last == changed_before:
                            self.schedule.checked()
                        self.checkpoint.commit()  # this wake-up's changes: one fdatasync
                        self._sleep(waker)
                    choice = self._interrupt_choice(waker.by_ctrl_c)
                    if choice == "continue":
                        waker.interrupted = False
                        self.windows_due = True
                        continue
                    if choice == "stop":
                        self.stop(self._stop_reason())
                    else:
                        self._detach()
                    return self.state
        finally:
            waker.close()
            self._drop_env()
            self.s.tmux.close_control()
            self._tidy_all()

    def _sleep(self, waker: Waker) -> None:
        """Sleep until there is something to do. tmux's reply alone (a window made) is
        recorded, and the sleep goes on: no pass over the steps for it."""
        until = self._next_wake()
        while True:
            replies = self.s.tmux.replies_due() if self.beginning else None
            waker.sleep((until - now()).total_seconds(), replies)
            if not waker.by_replies_only or waker.interrupted:
                break
            self._windows_begun()
        self.windows_due = not waker.by_fifo_only
        self.woken = waker.ended

    def _drop_env(self) -> None:
        """Remove the environment scripts read meanwhile, after a short wait for the
        windows (of a run left running) that have not read theirs yet; one still unread
        is left for the next orchestrator of the run (it adopts and removes it)."""
        deadline = time.monotonic() + ENV_WAIT
        while True:
            self._release_env([k for k, v in self.state.steps.items() if v.status == "running"])
            if not self.handoff.keys() or time.monotonic() >= deadline:
                return
            time.sleep(0.02)

    def _interrupt_choice(self, by_ctrl_c: bool) -> InterruptChoice:
        """`agentflow stop` (its request file) stops; Ctrl-C asks the person at the
        terminal; SIGTERM, or Ctrl-C where nobody can be asked, detaches."""
        if (self.s.run.path / STOP_REQUEST).exists():
            return "stop"
        if by_ctrl_c and self.s.on_interrupt is not None:
            return self.s.on_interrupt()
        return "detach"

    def _stop_reason(self) -> str:
        try:
            with open(self.s.run.path / STOP_REQUEST, encoding="utf-8", errors="replace") as f:
                given = one_line(f.read(STOP_REASON_MAX), STOP_REASON_MAX)
        except OSError:
            return "stopped by Ctrl-C"
        return given or "stopped by `agentflow stop`"

    def _done(self) -> bool:
        return self.index.finished

    def _next_wake(self) -> datetime:
        # The running steps and the earliest back-off only: never every step.
        times = [self.schedule.next_check()]
        for step_id in self.index.running:
            st = self.state.steps[step_id]
            times += [t for t, _ in self._deadlines(step_id, st)]
            if step_id in self.clocks:
                times.append(self.clocks[step_id].next)
            if step_id in self.next_probe and st.ready_at is None:
                times.append(self.next_probe[step_id])
        later = self.index.next_not_before(self.state)
        if later is not None:
            times.append(later)
        times += [asked.deadline for asked in self.diagnoses.values()]
        if self.pool is not None and self.pool.waiting:  # another run may free a device
            times.append(now() + timedelta(seconds=WAIT_POLL))
        return min(times)

    def _finish(self) -> RunState:
        self._windows_begun(wait=True)
        self._count_usage()
        outcome = self.state.outcome()
        self.state = self.state.with_run(status=outcome, finished_at=now(), message=self.aborting)
        self._save()
        pooling.give_all(self)
        self._emit("run_finished", status=outcome, message=self.aborting)
        self.s.sandbox.close()
        release_ports(self)
        self._record(write_reports(self.s.run, self.state, self.s.junit, self.s.workflow))
        return self.state

    def _record(self, report: Report) -> None:
        """Save the run's summary in the home's history. That must never fail or lose
        the run: a problem is a warning event, and the run's own files are complete."""
        home = self.s.run.path.parent.parent
        try:
            history.record(home, history.summarize(self.s.run, self.state, report))
        except Exception as e:
            why = first_line(e)
            with contextlib.suppress(AgentflowError):
                self._emit("history_not_saved", message=f"warning: {why}")

    def _detach(self) -> None:
        message = "agentflow stopped watching; running steps go on in tmux"
        self._windows_begun(wait=True)  # (a resume finds each window by its id)
        self._count_usage()
        self.state = self.state.with_run(status="interrupted", message=message)
        self._save()
        self._emit("run_interrupted", status="interrupted", message=message)

    def stop(self, reason: str) -> None:
        """Stop every running step (TERM, then KILL after the grace period), close the
        run's tmux session, and mark the run interrupted."""
        for step_id in list(self.diagnoses):  # the model's answer is no longer wanted
            self._undiagnosed(step_id)
        self._windows_begun(wait=True)
        running = list(self.index.running)
        for step_id in running:
            self._update(step_id, kill_reason="stop", kill_sent_at=now(), message=reason)
            self._signal(step_id, signal.SIGTERM)
        deadline = time.monotonic() + self.s.kill_grace
        while running and time.monotonic() < deadline:
            running = [k for k in running if self._exit_code(k)[0] is None]
            time.sleep(0.05)
        for step_id in running:
            self._signal(step_id, signal.SIGKILL)
        time.sleep(0.1 if running else 0)
        for step_id, st in self.state.steps.items():
            if st.status == "running":
                code, ended = self._exit_code(step_id)
                self._update(
                    step_id, status="failed", exit_code=code, finished_at=ended or now(),
                    message=reason, kill_reason=None, kill_sent_at=None,
                )  # fmt: skip
                self._emit(
                    "step_finished", step_id, status="failed", exit_code=code, message=reason
                )
        self._tidy_all()  # (now: a detached run's orchestrator ends with its session)
        self.s.sandbox.close()
        pooling.give_all(self)
        self._count_usage()  # (what answers no longer wanted cost so far)
        self.state = self.state.with_run(status="interrupted", finished_at=now(), message=reason)
        self._save()
        self._emit("run_stopped", status="interrupted", message=reason)
        release_ports(self)
        self._record(write_reports(self.s.run, self.state, self.s.junit, self.s.workflow))
        with contextlib.suppress(FileNotFoundError):
            (self.s.run.path / STOP_REQUEST).unlink()
        # Last: in a detached run the session holds this orchestrator's own window, and
        # this process dies with it (SIGHUP); everything is on disk by now.
        self.s.tmux.kill_session(self.session)
