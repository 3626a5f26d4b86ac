"""Errors agentflow reports to its user.

Every error that reaches the command line is an ``AgentflowError``: the CLI prints its
message on one line (red, prefixed ``error:``) and exits with its ``exit_code``. Anything
else escaping is a bug in agentflow.

    AgentflowError                      exit 1
    ├── UsageError                      exit 2   bad arguments, unknown run id
    │   └── WorkflowError               exit 2   invalid workflow file (one line per problem)
    ├── PlanError                       exit 2   the workflow cannot be planned (task: with no LLM)
    ├── RunLockedError                  exit 2   another agentflow process drives this run
    ├── StateError                      exit 1   a run directory is damaged
    ├── LLMError (agent/llm.py)         exit 1   the model could not be asked, or its answer used
    │   ├── BudgetExceeded              exit 1   the token budget (planner.budget) is spent
    │   └── LoopExhausted (agent/loop)  exit 1   turns, deadline or budget reached before a decision
    └── EnvironmentProblem              exit 4   tmux, Docker or a file is missing
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BLOCKED = 3
EXIT_ENVIRONMENT = 4


class AgentflowError(Exception):
    """Base of every error shown to the user; ``str(err)`` is the whole message."""

    exit_code = EXIT_FAILED


class UsageError(AgentflowError):
    """The command line asked for something that does not make sense."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class Problem:
    """One problem found in a workflow file, located as precisely as we can."""

    file: str
    line: int | None
    column: int | None
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        # One problem, one line: a key or value with a newline must not break that.
        return f"{where}: {' '.join(self.message.splitlines())}"


class WorkflowError(UsageError):
    """The workflow file is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class PlanError(AgentflowError):
    """The workflow is valid but cannot be turned into a plan."""

    exit_code = EXIT_USAGE


class RunLockedError(AgentflowError):
    """Another agentflow process holds the run's lock."""

    exit_code = EXIT_USAGE


class StateError(AgentflowError):
    """A run directory or its checkpoint cannot be read."""


class EnvironmentProblem(AgentflowError):
    """Something agentflow needs on this machine is missing (tmux, a Docker daemon, ...)."""

    exit_code = EXIT_ENVIRONMENT


def first_line(e: BaseException) -> str:
    """An error's first line (its message may go on with details), or its type's name."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
