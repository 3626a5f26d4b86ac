"""Following a search: a sweep (``sweep_follow.Sweep``) whose members are asked from the
study as room frees up, whose running trials are given the metric series their pruning step
reports, and whose trials the pruner finds clearly worse are stopped (as ``agentflow stop``
does) and end ``pruned``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agentflow import series
from agentflow.errors import AgentflowError, StateError, first_line
from agentflow.orchestrator import request_stop
from agentflow.search.study import Trials, open_study
from agentflow.store import Store
from agentflow.sweep import Member, SweepRecord
from agentflow.sweep_follow import ENDED, Launch, Redrive, Sweep
from agentflow.workflow.model import Workflow
from agentflow.workflow.search import pruning_step


class SearchFollow(Sweep):
    """A sweep of trials asked one by one, pruned while they run."""

    def __init__(
        self,
        store: Store,
        record: SweepRecord,
        workflow: Workflow,
        launch: Launch,
        redrive: Redrive,
        say: Callable[[Member, str], None],
        poll: float = 0.5,
    ) -> None:
        super().__init__(store, record, launch, redrive, say, poll)
        search, objective, info = workflow.search, workflow.objective, record.search
        assert search is not None
        assert objective is not None
        assert info is not None
        # --trials and --parallel of the command line are the record's.
        search = search.model_copy(update={"trials": info.trials, "parallel": record.parallel})
        self.search = search
        self.trials = Trials(open_study(Path(info.study), search, objective), search, objective,
                             record)  # fmt: skip
        self.prune_step = pruning_step(workflow, search.prune) if search.prune else None

    def unfinished(self) -> bool:
        return super().unfinished() or len(self.record.members) < self.record.planned()

    def _start_waiting(self) -> None:
        busy = sum(m.status in ("pending", "running") for m in self.record.members)
        while busy < self.record.parallel and len(self.record.members) < self.record.planned():
            member = self.trials.ask()
            self.record.members.append(member)
            self.save()  # named in the record before its run exists (see Trials._reconcile)
            busy += 1
        super()._start_waiting()

    def _check(self, member: Member) -> None:
        if self.prune_step is not None and member.run_id is not None:
            self._report(member)
        if member.status == "running":
            super()._check(member)

    def _report(self, member: Member) -> None:
        """New values of the pruning metric to the trial; a stop when it says prune."""
        prune = self.search.prune
        assert prune is not None
        assert self.prune_step is not None
        assert member.run_id is not None
        path = self.store.runs / member.run_id
        found = series.load(path, self.prune_step).series.get(prune.metric)
        if found is None:
            return
        for point in found.points:
            step = int(point.step)
            if self.trials.report(member, step, point.v):
                self._prune(member, f"at step {step}, {prune.metric} {point.v:g}")
                return

    def _prune(self, member: Member, why: str) -> None:
        assert member.run_id is not None
        run = self.store.open(member.run_id)
        try:
            stopped = request_stop(run, reason=f"pruned by search {self.record.sweep_id}: {why}")
            state = run.read_state()
        except (AgentflowError, StateError) as e:
            self.say(member, f"could not prune: {first_line(e)}")
            return
        if not stopped and state.status in ENDED:
            return  # it ended on its own meanwhile: recorded as it ended
        self._record(member, run, state, "pruned", why)

    def _ended(self, member: Member, status: str, message: str | None) -> None:
        super()._ended(member, status, message)
        if status in ENDED:
            self.trials.tell(member)
