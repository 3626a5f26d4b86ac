"""The workflow file: its format (``model``) and its loader (``load``)."""

from agentflow.workflow.load import WorkflowFile, find_cycle, load_workflow, parse_workflow
from agentflow.workflow.model import Retry, Step, Workflow
from agentflow.workflow.types import format_duration, parse_duration

__all__ = [
    "Retry",
    "Step",
    "Workflow",
    "WorkflowFile",
    "find_cycle",
    "format_duration",
    "load_workflow",
    "parse_duration",
    "parse_workflow",
]
