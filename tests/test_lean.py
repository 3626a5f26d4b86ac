"""LeanModel: the models a run holds by the thousand keep no per-instance set of the
fields their input named, and stay correct values."""

from __future__ import annotations

import pytest
from pydantic import ConfigDict

from agentflow.lean import LeanModel
from agentflow.state import StepState
from agentflow.store import Event


def test_a_step_read_back_keeps_no_set_of_its_fields() -> None:
    full = StepState(status="running", attempts=2).model_dump_json()
    step = StepState.model_validate_json(full)
    assert step.model_fields_set == set()
    changed = step.model_copy(update={"status": "succeeded", "exit_code": 0})
    assert changed.model_fields_set == set()
    # The values are whole, and a copy is a copy.
    assert (changed.status, changed.exit_code, changed.attempts) == ("succeeded", 0, 2)
    assert step.status == "running"
    assert step.exit_code is None
    assert StepState.model_validate_json(changed.model_dump_json()) == changed


def test_events_dump_every_field_as_before() -> None:
    e = Event.model_validate_json('{"kind": "step_started", "step": "a", "attempt": 1}')
    assert e.model_fields_set == set()
    assert set(e.model_dump()) == set(Event.model_fields)
    assert e.model_dump(exclude_none=True).keys() == {"ts", "kind", "step", "attempt"}


def test_a_model_that_can_change_cannot_share_the_set() -> None:
    with pytest.raises(TypeError, match="must be frozen"):

        class Mutable(LeanModel):
            model_config = ConfigDict(frozen=False)
            x: int = 0
