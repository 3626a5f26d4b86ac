"""What the runner knows about its steps without looking at every one: each step's count
of needs not yet met, the steps that can move (start or be skipped) in plan order, the
running ones, and counts by status. Kept up to date one changed step at a time, so a
wake-up costs what changed, not the size of the workflow (issue 18).

It is derived from the run's state and nothing else: ``changed`` is told every change of
a step, and a whole new state (a resume) builds a new index."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime

from agentflow.plan import PlannedStep
from agentflow.state import FINAL, RunState, StepState

BAD = FINAL - {"succeeded"}
"""A need in one of these will never be met in this run: its dependents are skipped."""


def _meets(st: StepState) -> bool:
    """Whether a step meets the needs of its dependents: succeeded, or a ready service."""
    return st.status == "succeeded" or (st.status == "running" and st.ready_at is not None)


class StepIndex:
    """The runner's step bookkeeping, in O(1) per changed step (and per dependent)."""

    def __init__(self, planned: Sequence[PlannedStep], state: RunState) -> None:
        self.order = {p.id: i for i, p in enumerate(planned)}
        self.ids = [p.id for p in planned]
        self.needs = {p.id: list(p.needs) for p in planned}
        self.dependents: dict[str, list[str]] = {p.id: [] for p in planned}
        for p in planned:
            for n in p.needs:
                self.dependents[n].append(p.id)
        self.statuses: Counter[str] = Counter()
        self.unfinished = 0
        """Steps not in a FINAL status."""
        self.running: dict[str, None] = {}
        """Running steps (a dict: an ordered set)."""
        self.holding: set[str] = set()
        """Running steps that hold a place (a ready service does not)."""
        self.unmet: dict[str, int] = {}
        """Needs of each step not met yet (not succeeded, not a ready service)."""
        self.lost: dict[str, int] = {}
        """Needs of each step that ended without success (the step will be skipped)."""
        self._met: dict[str, bool] = {}
        self._bad: dict[str, bool] = {}
        self._status: dict[str, str] = {}
        self._ready = _Queue()
        """Pending steps whose needs are all met (they may start), by plan position."""
        self._doomed = _Queue()
        """Pending steps with a need that ended without success (to be skipped)."""
        self._later: list[tuple[datetime, str]] = []
        """Pending steps' ``not_before``, earliest first (stale entries dropped lazily)."""
        for step_id in self.ids:
            st = state.steps[step_id]
            self._met[step_id] = _meets(st)
            self._bad[step_id] = st.status in BAD
        for step_id in self.ids:
            self.unmet[step_id] = sum(1 for n in self.needs[step_id] if not self._met[n])
            self.lost[step_id] = sum(1 for n in self.needs[step_id] if self._bad[n])
            self._status[step_id] = ""
            self._enter(step_id, state.steps[step_id])

    def _enter(self, step_id: str, st: StepState) -> None:
        """Count the step in its (new) status and queue it when it may move."""
        self._status[step_id] = st.status
        self.statuses[st.status] += 1
        if st.status not in FINAL:
            self.unfinished += 1
        if st.status == "running":
            self.running[step_id] = None
            if st.ready_at is None:
                self.holding.add(step_id)
        elif st.status == "pending":
            self.wanted(step_id)
            if st.not_before is not None:
                heapq.heappush(self._later, (st.not_before, step_id))

    def _leave(self, step_id: str) -> None:
        old = self._status[step_id]
        self.statuses[old] -= 1
        if old not in FINAL:
            self.unfinished -= 1
        self.running.pop(step_id, None)
        self.holding.discard(step_id)

    def changed(self, step_id: str, st: StepState) -> None:
        """One step's state changed (to ``st``): O(1), plus O(its dependents) when whether
        it meets their needs changed."""
        self._leave(step_id)
        self._enter(step_id, st)
        met, bad = _meets(st), st.status in BAD
        if met != self._met[step_id]:
            self._met[step_id] = met
            for d in self.dependents[step_id]:
                self.unmet[d] += -1 if met else 1
                self.wanted(d)
        if bad != self._bad[step_id]:
            self._bad[step_id] = bad
            for d in self.dependents[step_id]:
                self.lost[d] += 1 if bad else -1
                self.wanted(d)

    def wanted(self, step_id: str) -> None:
        """Queue the step for the next pass if it may move (again)."""
        if self._status[step_id] != "pending":
            return
        if self.lost[step_id] > 0:
            self._doomed.put(self.order[step_id])
        elif self.unmet[step_id] == 0:
            self._ready.put(self.order[step_id])

    def _may_start(self, step_id: str) -> bool:
        pending = self._status[step_id] == "pending"
        return pending and self.unmet[step_id] == 0 and self.lost[step_id] == 0

    def _must_skip(self, step_id: str) -> bool:
        return self._status[step_id] == "pending" and self.lost[step_id] > 0

    def movable(self, full: Callable[[], bool]) -> Iterator[str]:
        """The steps that may move, in plan order, each taken off its queue as it is
        given (one the runner leaves pending goes back with ``wanted``, after the pass).
        Steps queued meanwhile, always later in plan order, come in this same pass; once
        ``full()``, only the steps to skip do."""
        while True:
            doomed = self._doomed.peek()
            ready = None if full() else self._ready.peek()
            if doomed is None and ready is None:
                return
            if ready is None or (doomed is not None and doomed < ready):
                step_id = self.ids[self._doomed.pop()]
                if self._must_skip(step_id):
                    yield step_id
            else:
                step_id = self.ids[self._ready.pop()]
                if self._may_start(step_id):
                    yield step_id

    def pending(self) -> list[str]:
        """Every pending step, in plan order (O(n): for an abort, once)."""
        return [s for s in self.ids if self._status[s] == "pending"]

    def next_not_before(self, state: RunState) -> datetime | None:
        """The earliest ``not_before`` of a pending step."""
        while self._later:
            when, step_id = self._later[0]
            st = state.steps[step_id]
            if st.status == "pending" and st.not_before == when:
                return when
            heapq.heappop(self._later)
        return None

    @property
    def finished(self) -> bool:
        """Every step has nothing more to do (``RunState.finished``, in O(1))."""
        return self.unfinished == 0


class _Queue:
    """Plan positions, smallest first, each at most once."""

    def __init__(self) -> None:
        self._heap: list[int] = []
        self._in: set[int] = set()

    def put(self, i: int) -> None:
        if i not in self._in:
            self._in.add(i)
            heapq.heappush(self._heap, i)

    def peek(self) -> int | None:
        return self._heap[0] if self._heap else None

    def pop(self) -> int:
        i = heapq.heappop(self._heap)
        self._in.discard(i)
        return i
