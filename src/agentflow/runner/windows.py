"""The steps' tmux windows: opened without waiting for tmux (the server makes them one
at a time, a few milliseconds each, while the runner goes on), recorded as tmux answers,
and closed past the last ``WINDOWS_KEPT`` ended ones."""

from __future__ import annotations

import signal
from collections.abc import Iterable

from agentflow import stepfiles
from agentflow.errors import EnvironmentProblem
from agentflow.runner.base import WINDOWS_KEPT, RunnerBase
from agentflow.tmux_control import ControlError


class Windows(RunnerBase):
    """Opening, recording and closing the steps' windows."""

    def _begin_window(self, step_id: str, argv: list[str]) -> None:
        """Open the attempt's window: sent without waiting when a control client can,
        recorded by ``_windows_begun``; otherwise made and recorded now."""
        ticket = self.s.tmux.begin_window(self.session, step_id, argv, self.s.workspace)
        if ticket is None:
            self._window_made(step_id, self._new_window(step_id, argv))
        else:
            self.beginning[step_id] = (ticket, argv)

    def _new_window(self, step_id: str, argv: list[str]) -> str:
        try:
            return self.s.tmux.new_window(self.session, step_id, argv, self.s.workspace)
        except EnvironmentProblem:
            # The tmux server or session went away (killed, or the machine's tmux
            # restarted): make it again and try once more; a second failure is the
            # environment's.
            self._ensure_session()
            return self.s.tmux.new_window(self.session, step_id, argv, self.s.workspace)

    def _window_made(self, step_id: str, window: str) -> None:
        st = self.state.steps[step_id]
        if st.status == "running" and not st.window:
            self._update(step_id, window=window)
        else:  # (ended meanwhile, and its window already looked for by name)
            self._keep_window(window)

    def _windows_begun(self, wait: bool = False, steps: Iterable[str] | None = None) -> None:
        """Record the windows tmux made since the launch pass sent for them: those that
        came (``wait``: all of ``steps``, or all, waited for). A refused one is made
        again the slow way; one whose answer was lost with the control client is looked
        for by its name, as after a crash between a launch and its window."""
        if not self.beginning:
            return
        due = self.beginning.keys() if steps is None else set(steps)
        for step_id, (ticket, argv) in list(self.beginning.items()):
            try:
                window = self.s.tmux.window_begun(ticket, wait and step_id in due)
            except EnvironmentProblem:
                window = self._new_window(step_id, argv)
            except ControlError:
                self.beginning.clear()
                self.panes_due = True
                return
            if window is not None:
                del self.beginning[step_id]
                self._window_made(step_id, window)

    def _keep_window(self, window: str | None) -> None:
        """The ended attempt's window stays for people to read, as do the windows of the
        ``WINDOWS_KEPT`` attempts that ended last; an older one is closed."""
        if not window:
            return
        self.kept_windows.append(window)
        while len(self.kept_windows) > WINDOWS_KEPT:
            self.s.tmux.kill_window(self.kept_windows.popleft())  # (gone already: fine)

    def _signal(self, step_id: str, signum: int) -> None:
        pgid = stepfiles.pid(self.s.run.step_dir(step_id))
        if self.s.sandbox.signal(step_id, pgid, signum) or pgid is not None:
            return
        # Not started yet: closing the window ends the wrapper itself.
        self._windows_begun(wait=True, steps=[step_id])
        window = self.state.steps[step_id].window
        if window and signum == signal.SIGKILL:
            self.s.tmux.kill_window(window)
