"""The runner's step index against the rule it replaces: after any sequence of changes,
what it says may start, must be skipped, runs, and whether the run is over, is what a
scan of every step says."""

from __future__ import annotations

import random
from datetime import timedelta

from agentflow.plan import PlannedStep
from agentflow.runner.index import BAD, StepIndex
from agentflow.state import FINAL, RunState, StepState, now

STATUSES = ["pending", "running", "succeeded", "failed", "skipped", "crashed"]


def _dag(n: int, rnd: random.Random) -> list[PlannedStep]:
    """``n`` steps in plan order, each needing up to three earlier ones."""
    steps = []
    for i in range(n):
        needs = sorted({f"s{rnd.randrange(i)}" for _ in range(rnd.randrange(4))} if i else set())
        steps.append(PlannedStep(id=f"s{i}", run="true", needs=needs))
    return steps


def _scan(planned: list[PlannedStep], state: RunState) -> tuple[list[str], list[str]]:
    """(may start, must be skipped), in plan order: the rule as the runner had it."""
    start, skip = [], []
    for p in planned:
        if state.steps[p.id].status != "pending":
            continue
        needs = [state.steps[n] for n in p.needs]
        if any(n.status in BAD for n in needs):
            skip.append(p.id)
        elif all(
            n.status == "succeeded" or (n.status == "running" and n.ready_at is not None)
            for n in needs
        ):
            start.append(p.id)
    return start, skip


def test_the_index_agrees_with_a_scan_after_random_changes() -> None:
    rnd = random.Random(18)
    planned = _dag(60, rnd)
    state = RunState(
        run_id="r",
        workflow="w",
        workflow_file="w.yaml",
        workspace=".",
        steps={p.id: StepState() for p in planned},
    )
    index = StepIndex(planned, state)
    for _ in range(2000):
        step_id = rnd.choice(planned).id
        status = rnd.choice(STATUSES)
        ready = now() if status == "running" and rnd.random() < 0.3 else None
        later = now() + timedelta(seconds=rnd.randrange(1, 100)) if rnd.random() < 0.2 else None
        state = state.with_step(step_id, status=status, ready_at=ready, not_before=later)
        index.changed(step_id, state.steps[step_id])
        start, skip = _scan(planned, state)
        # What the queues hand out, in plan order, is what may move; then queued again.
        moved = list(index.movable(lambda: False))
        assert moved == sorted(start + skip, key=index.order.__getitem__)
        assert [s for s in moved if index.lost[s]] == skip
        for s in moved:
            index.wanted(s)
        running = [k for k, v in state.steps.items() if v.status == "running"]
        assert sorted(index.running) == sorted(running)
        assert index.holding == {k for k in running if state.steps[k].ready_at is None}
        assert index.finished == all(v.status in FINAL for v in state.steps.values())
        pending = [(v.not_before, k) for k, v in state.steps.items() if v.status == "pending"]
        waits = [t for t, _ in pending if t is not None]
        assert index.next_not_before(state) == (min(waits) if waits else None)


def test_a_full_pool_hands_out_only_steps_to_skip() -> None:
    planned = [
        PlannedStep(id="a", run="true"),
        PlannedStep(id="b", run="true"),
        PlannedStep(id="c", run="true", needs=["a"]),
    ]
    state = RunState(
        run_id="r",
        workflow="w",
        workflow_file="w.yaml",
        workspace=".",
        steps={p.id: StepState() for p in planned},
    )
    index = StepIndex(planned, state)
    state = state.with_step("a", status="failed")
    index.changed("a", state.steps["a"])
    assert list(index.movable(lambda: True)) == ["c"]  # b waits for a place
    assert list(index.movable(lambda: False)) == ["b"]
