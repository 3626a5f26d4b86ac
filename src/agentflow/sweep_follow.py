"""Following a sweep: starting its runs (at most ``parallel`` at once), watching them from
their directories, recording each as it ends, and stopping them all.

Everything is derived from the record and the runs on disk, never from this process's
memory: following again (after Ctrl-C then ``c``, or in a later ``resume`` after the
follower was killed) starts only what never began, re-attaches to runs that go on, starts
a detached orchestrator again for a run whose orchestrator is gone, and leaves finished
runs alone. Each combination has one run, ``<sweep-id>-N``, whatever happens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from agentflow.errors import AgentflowError, StateError, first_line
from agentflow.orchestrator import request_stop
from agentflow.state import UNSUCCESSFUL, RunState
from agentflow.store import RunDir, Store
from agentflow.sweep import Member, SweepRecord, save_record, score_of

ENDED = {"succeeded", "failed", "blocked", "pruned"}
"""Member statuses that are final: a resume leaves these runs alone (``pruned``: a trial of
a search stopped early, see ``agentflow.search``)."""

Launch = Callable[[Member, str], None]
"""Plans and starts the run of a member under the given run id (a detached orchestrator)."""
Redrive = Callable[[str], None]
"""Starts a detached orchestrator again for an existing run (it resumes the run)."""


@dataclass
class Look:
    """What the follower saw of the sweep's runs at its last look."""

    states: dict[int, RunState] = field(default_factory=dict)
    """Each started member's run state, by member index."""


class Sweep:
    """Starts the members' runs, follows them, records how each ended."""

    def __init__(
        self,
        store: Store,
        record: SweepRecord,
        launch: Launch,
        redrive: Redrive,
        say: Callable[[Member, str], None],
        poll: float = 0.5,
    ) -> None:
        self.store = store
        self.record = record
        self.launch = launch
        self.redrive = redrive
        self.say = say
        self.poll = poll
        self.look = Look()
        self._seen: dict[int, dict[str, str]] = {}
        self._orphan_seen: set[int] = set()
        self._mine: set[int] = set()
        """Members this process launched or took over, and follows."""

    def save(self) -> None:
        save_record(self.store.home, self.record)

    def follow(self, refresh: Callable[[], None] = lambda: None) -> SweepRecord:
        """Until every member's run has ended. Safe to call again after an interruption."""
        self.record.status, self.record.message, self.record.finished_at = "running", None, None
        self.save()
        for member in self.record.members:
            if member.index in self._mine:
                continue  # followed again after Ctrl-C then `c`: nothing to take over
            if member.status in ("running", "interrupted") or (
                member.status == "pending" and self._began(member)
            ):
                self._take_over(member)
        while True:
            self._start_waiting()
            for member in self.record.members:
                if member.status == "running":
                    self._check(member)
            refresh()
            if not self.unfinished():
                break
            time.sleep(self.poll)
        self.record.conclude()
        self.save()
        return self.record

    def unfinished(self) -> bool:
        """Runs to start or to follow still (a search: trials not yet asked, too)."""
        return any(m.status in ("pending", "running") for m in self.record.members)

    def run_id(self, member: Member) -> str:
        return f"{self.record.sweep_id}-{member.index}"

    def _began(self, member: Member) -> bool:
        """Its run's directory has a checkpoint (a launch cut short may have made it)."""
        path = self.store.runs / self.run_id(member)
        return any((path / name).is_file() for name in ("state.json", "state.json.prev"))

    def _take_over(self, member: Member) -> None:
        """A run this sweep started before: followed if driven or over, else driven again."""
        member.run_id = self.run_id(member)
        run = self.store.open(member.run_id)
        try:
            state = run.read_state()
        except StateError as e:
            self._ended(member, "failed", first_line(e))
            return
        if run.lock_holder() is None and state.status not in ENDED:
            try:
                self.redrive(member.run_id)
            except AgentflowError as e:
                self._ended(member, "interrupted", f"could not drive it again: {first_line(e)}")
                return
            self.say(member, f"run {member.run_id} goes on (its orchestrator started again)")
        else:
            self.say(member, f"following run {member.run_id} ({state.status})")
        member.status = "running"
        self._mine.add(member.index)
        self.save()

    def _start_waiting(self) -> None:
        running = sum(m.status == "running" for m in self.record.members)
        for member in self.record.members:
            if running >= self.record.parallel:
                return
            if member.status != "pending":
                continue
            member.run_id = self.run_id(member)
            try:
                self.launch(member, member.run_id)
            except AgentflowError as e:
                # A combination that cannot even start (a bad value) fails alone.
                self._ended(member, "failed", f"could not start: {first_line(e)}")
                continue
            member.status = "running"
            self._mine.add(member.index)
            running += 1
            self.say(member, f"started run {member.run_id}")
            self.save()

    def _check(self, member: Member) -> None:
        assert member.run_id is not None
        run = self.store.open(member.run_id)
        try:
            state = run.read_state()
        except StateError:
            return  # being rewritten: the next look
        self.look.states[member.index] = state
        self._step_changes(member, state)
        if run.lock_holder() is not None:
            self._orphan_seen.discard(member.index)
            return
        if state.status == "running":
            # Nobody drives it: looked at twice, so that an orchestrator between its
            # start and its lock is not taken for a dead one.
            if member.index not in self._orphan_seen:
                self._orphan_seen.add(member.index)
                return
            self._record(member, run, state, "interrupted", "its orchestrator is gone")
            return
        self._record(member, run, state, state.status, None)

    def _step_changes(self, member: Member, state: RunState) -> None:
        """A line per step that started or ended since the last look."""
        seen = self._seen.setdefault(member.index, {})
        first = not seen
        for step_id, st in state.steps.items():
            if seen.get(step_id) != st.status:
                if not first and st.status != "pending":
                    self.say(member, f"step {step_id} {st.status}")
                seen[step_id] = st.status

    def _record(
        self, member: Member, run: RunDir, state: RunState, status: str, why: str | None
    ) -> None:
        failed = [f"{k} {st.status}" for k, st in state.steps.items() if st.status in UNSUCCESSFUL]
        message = why or ", ".join(failed) or state.message
        outputs = {k: st.outputs for k, st in state.steps.items()}
        member.score = score_of(outputs, self.record.objective)
        self._ended(member, status, message)

    def _ended(self, member: Member, status: str, message: str | None) -> None:
        member.status, member.message = status, message
        shown = status + (f" ({message})" if message else "")
        objective = self.record.objective
        if member.score is not None and objective is not None:
            shown += f", {objective.metric}={member.score:g}"
        self.say(member, shown)
        self.save()

    def detach(self, why: str) -> SweepRecord:
        """Stop following: the runs go on in tmux, what never began waits for ``resume``."""
        self.record.conclude()
        going = sum(m.status == "running" for m in self.record.members)
        waiting = sum(m.status == "pending" for m in self.record.members)
        self.record.message = f"{why}: {going} run(s) go on, {waiting} not started"
        self.save()
        return self.record

    def stop_all(self) -> SweepRecord:
        """Stop every running run of the sweep (as ``agentflow stop`` does), at once."""
        going = [m for m in self.record.members if m.status == "running" and m.run_id]

        def stop(member: Member) -> None:
            assert member.run_id is not None
            run = self.store.open(member.run_id)
            try:
                request_stop(run)
            except AgentflowError as e:
                self.say(member, f"could not stop: {first_line(e)}")

        with ThreadPoolExecutor(max_workers=max(1, len(going))) as pool:
            list(pool.map(stop, going))
        for member in going:
            run = self.store.open(member.run_id or "")
            state = run.read_state()
            status = state.status if state.status in ENDED else "interrupted"
            self._record(member, run, state, status, None if status in ENDED else "stopped")
        self.record.conclude()
        waiting = sum(m.status == "pending" for m in self.record.members)
        self.record.message = f"stopped: {len(going)} run(s) stopped, {waiting} not started"
        self.save()
        return self.record
