"""The runner's side of the machine's pool (``agentflow.pool``): a step that asks for
GPUs or CPUs draws them before it starts, or waits (``queued: no free GPU``); what an
attempt held goes back when it ends. Plain functions over the runner, like ``caching``."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import JsonValue

from agentflow.pool.devices import label
from agentflow.pool.ledger import Holding
from agentflow.runner.base import RunnerBase


@dataclass(frozen=True)
class Drawn:
    """What a step's attempt holds of the pool (None: it asks for nothing)."""

    holding: Holding | None = None

    def env(self, r: RunnerBase) -> dict[str, str]:
        """``CUDA_VISIBLE_DEVICES`` (and its order) for the attempt's GPUs."""
        if self.holding is None or r.pool is None:
            return {}
        return r.pool.env(self.holding)

    def pinned(self, r: RunnerBase, command: list[str]) -> list[str]:
        """The window's command, pinned to the attempt's CPUs."""
        if self.holding is None or r.pool is None:
            return command
        return r.pool.pinned(command, self.holding)

    def recorded(self) -> dict[str, object]:
        """The attempt's devices for its checkpoint record."""
        if self.holding is None:
            return {}
        return {"gpus": list(self.holding.gpus), "cpus": list(self.holding.cpus)}

    def event_data(self) -> dict[str, JsonValue] | None:
        """The attempt's devices for its ``step_started`` event (the report's attempts)."""
        if self.holding is None:
            return None
        return {"gpus": list(self.holding.gpus), "cpus": list(self.holding.cpus)}


def draw(r: RunnerBase, step_id: str, attempt: int) -> Drawn | None:
    """The devices for the step's next attempt; None when it must wait for them (its
    note then says so, once)."""
    pool = r.pool
    if pool is None or step_id not in pool.demand.asks:
        return Drawn()
    got = pool.draw(step_id, attempt)
    if got is not None:
        return Drawn(got)
    why = pool.waiting[step_id]
    if r.state.steps[step_id].message != f"queued: {why}":
        r._update(step_id, message=f"queued: {why}")
        r._emit("step_queued", step_id, message=why)
    return None


def settle(r: RunnerBase) -> None:
    """Give back what ended attempts held (a wake-up's first work, before steps start)."""
    pool = r.pool
    if pool is None:
        return
    for step_id in [k for k in pool.waiting if r.state.steps[k].status != "pending"]:
        del pool.waiting[step_id]
    if pool.held:
        steps = r.state.steps
        pool.settle({k: steps[k].attempts for k in pool.held if steps[k].status == "running"})


def restore(r: RunnerBase) -> None:
    """On resume: a step still running keeps the devices its attempt had."""
    pool = r.pool
    if pool is None:
        return
    for step_id in r.index.running:
        st = r.state.steps[step_id]
        if (st.gpus or st.cpus) and not pool.restore(step_id, st.attempts, st.gpus, st.cpus):
            r._emit(
                "pool_conflict", step_id,
                message=f"warning: {label(st.gpus, st.cpus)} was given to another step "
                "while this run was not driven; both now use it",
            )  # fmt: skip
    pool.forget_others()  # what attempts over by now held (they ended while undriven)


def give_all(r: RunnerBase) -> None:
    """The run ended or stopped: its devices go back to the pool."""
    if r.pool is not None:
        r.pool.give_all()
