"""The only module that talks to the model: one forced tool call at a time, tokens counted.

``anthropic`` is imported here, lazily: importing it costs about two seconds, which
commands that never call the model must not pay.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agentflow.errors import AgentflowError, EnvironmentProblem
from agentflow.settings import settings

DEFAULT_MODEL = "claude-sonnet-4-5"
MAX_RETRIES = 4
"""The SDK's own retries (with back-off, honouring retry-after) for 429, 529, 5xx and
connection errors, before the error reaches the user."""
CHARS_PER_TOKEN = 4
"""A request's size is estimated before it is sent (the budget is a hard cap)."""
MIN_ANSWER_TOKENS = 256
"""The least room for an answer worth asking for."""


class LLMError(AgentflowError):
    """The model could not be asked, or its answer could not be used (exit 1)."""


class BudgetExceeded(LLMError):
    """The run's token budget (``planner.budget``) is spent."""


@dataclass(frozen=True)
class ToolCall:
    """The model's answer: the input it gave the tool, and what the call cost."""

    input: dict[str, Any]
    tool_use_id: str
    input_tokens: int
    output_tokens: int

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class LLM:
    """A Messages API client with a token budget. The API key comes from
    ``ANTHROPIC_API_KEY``, the endpoint from ``ANTHROPIC_BASE_URL`` when set, the model from
    the workflow's ``planner.model``, else ``AGENTFLOW_MODEL``, else a default."""

    def __init__(
        self, model: str | None, max_tokens: int, budget: int | None, used: int = 0
    ) -> None:
        self.model = model or settings().model or DEFAULT_MODEL
        self.max_tokens = max_tokens
        self.budget = budget
        self.used = used
        self._client: Any = None

    @staticmethod
    def check_key() -> None:
        if not settings().anthropic_api_key:
            raise EnvironmentProblem(
                "the anthropic planner needs ANTHROPIC_API_KEY: export it, run a saved plan "
                "with --plan, or use --planner static (task: steps then need a run: command)"
            )

    def client(self) -> Any:
        if self._client is None:
            self.check_key()
            import anthropic  # lazily: ~2 s

            config = settings()
            self._client = anthropic.Anthropic(
                api_key=config.anthropic_api_key,
                base_url=config.anthropic_base_url,
                max_retries=MAX_RETRIES,
                timeout=120.0,
            )
        return self._client

    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self.used

    def call_tool(
        self, system: str, messages: list[dict[str, Any]], tool: dict[str, Any]
    ) -> ToolCall:
        """One request that must answer by calling ``tool``."""
        max_tokens = self._room(system, messages, tool)
        import anthropic

        try:
            response = self.client().messages.create(
                model=self.model,
                max_tokens=max_tokens,
                system=system,
                messages=messages,
                tools=[tool],
                tool_choice={"type": "tool", "name": tool["name"]},
            )
        except anthropic.AuthenticationError:
            raise EnvironmentProblem(
                "the Anthropic API refused the key in ANTHROPIC_API_KEY: check it"
            ) from None
        except anthropic.APIStatusError as e:
            if e.status_code in (408, 409, 429) or e.status_code >= 500:
                raise LLMError(
                    f"the Anthropic API answered {e.status_code} after {MAX_RETRIES} retries "
                    f"({_message(e)}): try again later, or run a saved plan with --plan"
                ) from None
            # Refused as asked (400 "prompt is too long", 404 an unknown model): trying
            # again would not help, so nothing was retried.
            raise LLMError(
                f"the Anthropic API refused the request ({e.status_code}: {_message(e)}): "
                "check planner.model and the workflow's runbooks (their size), or run a "
                "saved plan with --plan"
            ) from None
        except anthropic.APIConnectionError as e:
            where = settings().anthropic_base_url or "the Anthropic API"
            raise LLMError(
                f"cannot reach {where} ({type(e).__name__}) after {MAX_RETRIES} retries: "
                "check the network, or run a saved plan with --plan"
            ) from None
        except RecursionError:
            # JSON nested thousands deep: the SDK's parser recurses once per level.
            raise LLMError(
                "the model's answer is nested too deeply to read: try again, or run a saved "
                "plan with --plan"
            ) from None
        usage = response.usage
        self.used += usage.input_tokens + usage.output_tokens
        if response.stop_reason == "max_tokens":
            raise LLMError(
                f"the model's answer was cut at {max_tokens} tokens before it finished: "
                "raise planner.max_tokens (or planner.budget)"
            )
        for block in response.content:
            if block.type == "tool_use" and block.name == tool["name"]:
                return ToolCall(
                    dict(block.input), block.id, usage.input_tokens, usage.output_tokens
                )
        raise LLMError(f"the model answered without calling {tool['name']}")

    def _room(self, system: str, messages: list[dict[str, Any]], tool: dict[str, Any]) -> int:
        """The ``max_tokens`` of the next request: the configured one, cut to what the
        budget leaves after the request's estimated size; BudgetExceeded when too little
        is left for an answer (the budget is a cap, not a check before each call)."""
        left = self.remaining()
        if left is None:
            return self.max_tokens
        text = system + json.dumps(messages, default=str) + json.dumps(tool)
        room = left - len(text) // CHARS_PER_TOKEN
        if room < min(MIN_ANSWER_TOKENS, self.max_tokens):
            raise BudgetExceeded(
                f"the run's token budget ({self.budget}) is spent: {max(0, left)} tokens "
                f"are left, and the next request needs about {len(text) // CHARS_PER_TOKEN}"
            )
        return min(self.max_tokens, room)


def _message(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:200]
    return str(e)[:200]
