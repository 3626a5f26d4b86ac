"""The only module that talks to the model: one request at a time, tokens and cost counted.

``anthropic`` is imported here, lazily: importing it costs about two seconds, which
commands that never call the model must not pay.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentflow.agent import pricing
from agentflow.errors import AgentflowError, EnvironmentProblem, UsageError
from agentflow.settings import settings
from agentflow.state import Usage
from agentflow.workflow.model import Workflow

DEFAULT_MODEL = "claude-sonnet-4-5"
MAX_RETRIES = 4
"""The SDK's own retries (with back-off, honouring retry-after) for 429, 529, 5xx and
connection errors, before the error reaches the user."""
CHARS_PER_TOKEN = 4
"""A request's size is estimated before it is sent (the budget is a hard cap)."""
DEPTH_MAX = 40
"""Levels an answer may nest (a tool's input of JSON in JSON…)."""
REPLAY_MAX = 64 * 2**20
"""Bytes of an ``AGENTFLOW_LLM_REPLAY`` file."""
MIN_ANSWER_TOKENS = 256
"""The least room for an answer worth asking for."""


class LLMError(AgentflowError):
    """The model could not be asked, or its answer could not be used (exit 1)."""


class BudgetExceeded(LLMError):
    """The run's token budget (``planner.budget``) is spent."""


@dataclass(frozen=True)
class Turn:
    """One answer of the model: its content blocks (as the Messages API writes them:
    ``text`` and ``tool_use`` dicts, ready to be sent back) and what it cost."""

    content: list[dict[str, Any]]
    stop_reason: str | None
    usage: Usage

    def tool_uses(self) -> list[dict[str, Any]]:
        return [b for b in self.content if b.get("type") == "tool_use"]

    def text(self) -> str:
        return "\n".join(str(b.get("text", "")) for b in self.content if b.get("type") == "text")


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
        self.usage = Usage()
        """What this client's calls cost, by kind of token."""
        self._client: Any = None
        self._lock = threading.Lock()

    @staticmethod
    def check_key() -> None:
        config = settings()
        if not config.anthropic_api_key and config.llm_replay is None:
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

    def turn(
        self,
        system: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        choice: dict[str, Any],
        *,
        cache: bool = False,
        timeout: float | None = None,
        time_left: float | None = None,
    ) -> Turn:
        """One request with ``tools`` offered and ``choice`` as the tool choice. With
        ``cache``, the fixed prefix (tools and system) and the conversation so far are
        marked for the prompt cache, so that each turn of a loop pays for its news only.
        ``timeout`` bounds each try; ``time_left`` (seconds), the tries together."""
        max_tokens = self._room(system, messages, tools)
        sent_system: Any = system
        if cache:
            sent_system = [{"type": "text", "text": system, "cache_control": EPHEMERAL}]
            messages = _cache_last(messages)
        request = {
            "model": self.model,
            "max_tokens": max_tokens,
            "system": sent_system,
            "messages": messages,
            "tools": tools,
            "tool_choice": choice,
        }
        config = settings()
        if config.llm_replay is not None:
            return self._account(self._replayed(config.llm_replay), max_tokens)
        answer = self._create(request, timeout, time_left)
        if config.llm_record is not None:
            _record(config.llm_record, request, answer)
        return self._account(answer, max_tokens)

    def _create(
        self, request: dict[str, Any], timeout: float | None, time_left: float | None
    ) -> dict[str, Any]:
        """The API's answer to ``request`` as JSON, or LLMError saying what to do."""
        import anthropic

        options: dict[str, Any] = {}
        if timeout is not None:
            options["timeout"] = max(1.0, timeout)
        client = self.client()
        retries = MAX_RETRIES
        if time_left is not None:
            # The SDK's retries each take up to the timeout: only as many as time allows.
            retries = min(MAX_RETRIES, max(0, int(time_left // max(1.0, timeout or 120.0)) - 1))
            client = client.with_options(max_retries=retries)
        try:
            response = client.messages.create(**request, **options)
        except anthropic.AuthenticationError:
            raise EnvironmentProblem(
                "the Anthropic API refused the key in ANTHROPIC_API_KEY: check it"
            ) from None
        except anthropic.APIStatusError as e:
            if e.status_code in (408, 409, 429) or e.status_code >= 500:
                raise LLMError(
                    f"the Anthropic API answered {e.status_code} after {retries} retries "
                    f"({_message(e)}): try again later, or run a saved plan with --plan"
                ) from None
            # Refused as asked (400 "prompt is too long", 404 an unknown model): trying
            # again would not help, so nothing was retried.
            raise LLMError(
                f"the Anthropic API refused the request ({e.status_code}: {_message(e)}): "
                "check planner.model and the workflow's runbooks (their size), or run a "
                "saved plan with --plan"
            ) from None
        except anthropic.APITimeoutError:
            raise LLMError(
                f"the model did not answer in time ({options.get('timeout', 120.0):.0f}s a "
                f"request, {retries} retries)"
            ) from None
        except anthropic.APIConnectionError as e:
            where = settings().anthropic_base_url or "the Anthropic API"
            raise LLMError(
                f"cannot reach {where} ({type(e).__name__}) after {retries} retries: "
                "check the network, or run a saved plan with --plan"
            ) from None
        except RecursionError:
            # JSON nested thousands deep: the SDK's parser recurses once per level.
            raise LLMError(
                "the model's answer is nested too deeply to read: try again, or run a saved "
                "plan with --plan"
            ) from None
        try:
            answer: dict[str, Any] = response.model_dump(mode="json", exclude_none=True)
        except (ValueError, RecursionError):  # past what pydantic serialises (~250 levels)
            return {"usage": response.usage.model_dump(), "too_deep": True}
        return answer

    def _account(self, answer: dict[str, Any], max_tokens: int) -> Turn:
        """The answer counted against the budget, as a Turn."""
        u = answer.get("usage") or {}
        usage = pricing.usage(
            self.model,
            int(u.get("input_tokens") or 0),
            int(u.get("output_tokens") or 0),
            int(u.get("cache_read_input_tokens") or 0),
            int(u.get("cache_creation_input_tokens") or 0),
        )
        with self._lock:  # diagnoses of several steps may run at once
            self.used += usage.tokens
            self.usage += usage
        if answer.get("stop_reason") == "max_tokens":
            raise LLMError(
                f"the model's answer was cut at {max_tokens} tokens before it finished: "
                "raise planner.max_tokens (or planner.budget)"
            )
        content = [b for b in answer.get("content") or [] if isinstance(b, dict)]
        if answer.get("too_deep") or _depth(content) > DEPTH_MAX:
            # Sent back in the next request, it would be past what the SDK serialises.
            raise LLMError(f"the model's answer is nested deeper than {DEPTH_MAX} levels")
        return Turn(content, answer.get("stop_reason"), usage)

    def _replayed(self, path: Path) -> dict[str, Any]:
        """The next recorded answer: one cursor per file for the whole process, so that
        planning and the diagnoses after it take their answers in the recorded order."""
        with _REPLAY_LOCK:
            key = str(path.resolve())
            if key not in _REPLAYS:
                try:
                    lines = _read_replay(path).splitlines()
                    _REPLAYS[key] = [json.loads(line)["response"] for line in lines if line]
                except (OSError, ValueError, KeyError, TypeError) as e:
                    raise LLMError(f"{path}: cannot replay it ({e})") from None
            left = _REPLAYS[key]
            if not left:
                raise LLMError(f"{path}: no recorded answer left to replay")
            answer: dict[str, Any] = left.pop(0)
        return answer

    def _room(
        self, system: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> int:
        """The ``max_tokens`` of the next request: the configured one, cut to what the
        budget leaves after the request's estimated size; BudgetExceeded when too little
        is left for an answer (the budget is a cap, not a check before each call)."""
        left = self.remaining()
        if left is None:
            return self.max_tokens
        text = system + json.dumps(messages, default=str) + json.dumps(tools)
        room = left - len(text) // CHARS_PER_TOKEN
        if room < min(MIN_ANSWER_TOKENS, self.max_tokens):
            raise BudgetExceeded(
                f"the run's token budget ({self.budget}) is spent: {max(0, left)} tokens "
                f"are left, and the next request needs about {len(text) // CHARS_PER_TOKEN}"
            )
        return min(self.max_tokens, room)


EPHEMERAL = {"type": "ephemeral"}
_REPLAYS: dict[str, list[dict[str, Any]]] = {}
"""The answers left to replay, by file (``AGENTFLOW_LLM_REPLAY``)."""
_REPLAY_LOCK = threading.Lock()


def _record(path: Path, request: dict[str, Any], answer: dict[str, Any]) -> None:
    """One JSON line: the request as sent (masked already) and the answer. Appended to a
    regular file only, never through a link (a step that could plant one would have the
    host append text it controls to any file)."""
    line = json.dumps({"request": request, "response": answer}, ensure_ascii=False) + "\n"
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        raise LLMError(f"AGENTFLOW_LLM_RECORD {path}: cannot append to it ({e.strerror})") from None
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise LLMError(f"AGENTFLOW_LLM_RECORD {path} is not a regular file")
        f.write(line)


def check_record(workflow: Workflow, workspace: Path) -> None:
    """``AGENTFLOW_LLM_RECORD`` must lie where no step can write: outside the workspace and
    the workflow's writable mounts (UsageError, before anything runs)."""
    record = settings().llm_record
    if record is None:
        return
    where = Path(os.path.realpath(record))
    writable = [workspace] + [
        workspace / m.source for m in workflow.sandbox.mounts if not m.read_only
    ]
    for folder in writable:
        real = Path(os.path.realpath(folder))
        if where == real or real in where.parents:
            raise UsageError(
                f"AGENTFLOW_LLM_RECORD {record} lies in {folder}, which steps can write: "
                "put it elsewhere"
            )


def _read_replay(path: Path) -> str:
    """The replay file's text: a regular file reached without a link, of bounded size."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise LLMError(f"AGENTFLOW_LLM_REPLAY {path}: cannot read it ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise LLMError(f"AGENTFLOW_LLM_REPLAY {path} is not a regular file")
        data = f.read(REPLAY_MAX + 1)
    if len(data) > REPLAY_MAX:
        raise LLMError(f"AGENTFLOW_LLM_REPLAY {path} is larger than {REPLAY_MAX // 2**20} MiB")
    return data.decode("utf-8", errors="replace")


def _depth(value: object, level: int = 0) -> int:
    """How deeply ``value`` nests (stops counting past DEPTH_MAX)."""
    if level > DEPTH_MAX:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def _cache_last(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with a cache breakpoint on the last block (a copy: the loop's own list
    stays as it was, so that breakpoints do not pile up past the API's four)."""
    if not messages:
        return messages
    last = dict(messages[-1])
    content = last["content"]
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    content = [dict(b) for b in content]
    content[-1]["cache_control"] = EPHEMERAL
    last["content"] = content
    return [*messages[:-1], last]


def _message(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:200]
    return str(e)[:200]
