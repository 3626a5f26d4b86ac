"""Load a workflow file: YAML → ``Workflow``, with every problem located by line and column.

Parsing keeps the position of every key and value, so that pydantic's errors (located by a
path like ``('steps', 2, 'timeout')``) and our own checks (cycles, unknown ``needs``) can
both point at the line a person must edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from agentflow.errors import Problem, WorkflowError
from agentflow.workflow.checks import find_cycle, semantic_problems
from agentflow.workflow.locate import Locator, one_per_number
from agentflow.workflow.model import Workflow
from agentflow.workflow.support import unsupported
from agentflow.workflow.types import UNITS_REQUIRED
from agentflow.workflow.yamlpos import parse_yaml


@dataclass(frozen=True)
class WorkflowFile:
    """A validated workflow and where it came from."""

    path: Path
    """The file, absolute."""
    text: str
    """The file's text as read (frozen into each run's directory)."""
    workflow: Workflow

    @property
    def base_dir(self) -> Path:
        """The folder the workflow's relative paths start from."""
        return self.path.parent


def load_workflow(path: Path | str) -> WorkflowFile:
    """Read and validate a workflow file; raises WorkflowError listing every problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WorkflowError([Problem(str(path), None, None, "no such file")]) from None
    except IsADirectoryError:
        raise WorkflowError([Problem(str(path), None, None, "is a folder, not a file")]) from None
    except UnicodeDecodeError as e:
        msg = f"not UTF-8 text (byte {e.start}): is this a workflow file?"
        raise WorkflowError([Problem(str(path), None, None, msg)]) from None
    except OSError as e:
        raise WorkflowError([Problem(str(path), None, None, e.strerror or str(e))]) from None
    workflow = parse_workflow(text, str(path), base_dir=p.resolve().parent)
    return WorkflowFile(p.resolve(), text, workflow)


def parse_workflow(
    text: str, filename: str, base_dir: Path | None = None, *, bare_seconds: bool = False
) -> Workflow:
    """Validate workflow text; ``base_dir`` (when given) is where ``docs:`` are looked up.
    ``bare_seconds``: a duration without unit is seconds, as before units were required
    (for a run's frozen copy of its workflow, accepted when the run started)."""
    data, positions = parse_yaml(text, filename)
    located = Locator(filename, positions)
    try:
        workflow = Workflow.model_validate(data, context={UNITS_REQUIRED: not bare_seconds})
    except ValidationError as e:
        found = {located.pydantic(err) for err in one_per_number(e.errors())}
        raise WorkflowError(
            sorted(found, key=lambda p: (p.line or 0, p.column or 0, p.message))
        ) from None
    problems = list(semantic_problems(workflow, located, base_dir))
    problems += [located.at(loc, msg) for loc, msg in unsupported(workflow)]
    if problems:
        raise WorkflowError(sorted(problems, key=lambda p: (p.line or 0, p.column or 0)))
    return workflow


def workflow_problems(workflow: Workflow, filename: str) -> list[Problem]:
    """The problems a file holding ``workflow`` would have beyond one key at a time (ids,
    needs, cycles, expressions), for a workflow made in memory: a plan's steps added to
    the file's (no positions: each problem says ``steps[i]``)."""
    located = Locator(filename, {})
    problems = list(semantic_problems(workflow, located, None))
    return problems + [located.at(loc, msg) for loc, msg in unsupported(workflow)]


__all__ = ["WorkflowFile", "find_cycle", "load_workflow", "parse_workflow", "workflow_problems"]
