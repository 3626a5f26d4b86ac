"""Planners turn a workflow into a ``Plan``.

``Planner`` is the seam: ``static`` (no model, every step runs as written) here, an LLM
planner behind the same protocol.
"""

from __future__ import annotations

from typing import Protocol

from agentflow.plan import Plan
from agentflow.planner.inputs import resolve_inputs
from agentflow.planner.static import StaticPlanner
from agentflow.workflow.load import WorkflowFile
from agentflow.workflow.model import Scalar


class Planner(Protocol):
    """Makes a plan for a workflow with the given input values."""

    name: str

    def plan(self, wf: WorkflowFile, inputs: dict[str, Scalar]) -> Plan: ...


def make_plan(wf: WorkflowFile, overrides: dict[str, str], planner: Planner | None = None) -> Plan:
    """Resolve inputs (``--set`` overrides on defaults) and plan with ``planner``."""
    inputs = resolve_inputs(wf, overrides)
    return (planner or StaticPlanner()).plan(wf, inputs)


__all__ = ["Planner", "StaticPlanner", "make_plan", "resolve_inputs"]
