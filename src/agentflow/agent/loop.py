"""The agent loop the planner and the diagnosis share: the model looks around with
read-only tools as often as it likes, within hard caps, and ends by calling its action tool.

Caps: a number of turns, a deadline (each request's timeout is cut to what is left), and
the run's token budget (``LLM``). Past a cap the loop raises ``LoopExhausted`` with what
the model found so far, and the caller escalates. An answer in plain words is kept (it is
what the model found) and the model is asked to call a tool; an invalid action gets repair
rounds with the problems listed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentflow.agent.llm import LLM, BudgetExceeded, LLMError
from agentflow.agent.tools import RESULT_MAX, ToolError
from agentflow.state import Usage

CALLS_PER_TURN = 8
"""Look-around calls run from one answer (the rest are answered "not run")."""
EVENT_RESULT_MAX = 1500
"""Characters of a tool result kept in the events and the report (the model saw more)."""


class Tools(Protocol):
    """Look-around tools: their schemas, and a call that returns a bounded result."""

    def schemas(self) -> list[dict[str, Any]]: ...

    def call(self, name: str, args: dict[str, Any]) -> str: ...


@dataclass(frozen=True, kw_only=True)
class Limits:
    """The hard caps of one loop."""

    turns: int = 16
    """Requests to the model, repair rounds included."""
    seconds: float = 480.0
    """Wall-clock time for the whole loop."""
    request_timeout: float = 120.0
    """Seconds one request may take (cut to what is left of ``seconds``)."""


@dataclass(frozen=True)
class Step:
    """One entry of the transcript: a tool the model called and what it got, or words it
    said (``tool`` is ``"text"``)."""

    tool: str
    input: dict[str, Any]
    result: str
    error: bool = False

    def event_data(self) -> dict[str, Any]:
        result = self.result
        if len(result) > EVENT_RESULT_MAX:
            result = result[:EVENT_RESULT_MAX] + f"\n[... {len(self.result)} characters]"
        return {"tool": self.tool, "input": self.input, "result": result, "error": self.error}


@dataclass
class Outcome:
    """The action the model chose, how it got there, and what it cost."""

    action: dict[str, Any]
    transcript: list[Step] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    turns: int = 0


class LoopExhausted(LLMError):
    """A cap was reached before the model chose an action; what it found so far is kept."""

    def __init__(self, message: str, transcript: list[Step], usage: Usage) -> None:
        super().__init__(message)
        self.transcript = transcript
        self.usage = usage

    def found(self) -> str:
        """What the model said and looked at, in a line or two, for the escalation."""
        said = [s.result for s in self.transcript if s.tool == "text" and s.result.strip()]
        looked = [s.tool for s in self.transcript if s.tool != "text"]
        parts = []
        if said:
            parts.append("it said: " + said[-1].strip().splitlines()[0][:300])
        if looked:
            parts.append(f"it looked with {len(looked)} tool calls ({', '.join(looked[-5:])})")
        return "; ".join(parts) or "it found nothing yet"


class ToolLoop:
    """``ToolLoop(llm, tools, action, check).run(system, prompt)``."""

    def __init__(
        self,
        llm: LLM,
        tools: Tools | None,
        action: dict[str, Any],
        check: Callable[[dict[str, Any]], list[str]],
        limits: Limits | None = None,
        observe: Callable[[Step], None] | None = None,
    ) -> None:
        self.llm = llm
        self.tools = tools
        self.action = action
        self.check = check
        """What is wrong with an action's input (empty: it is used)."""
        self.limits = limits or Limits()
        self.observe = observe
        """Told of each transcript step as it happens (for a live view)."""

    def run(self, system: str, prompt: str) -> Outcome:
        name = self.action["name"]
        looks = self.tools.schemas() if self.tools is not None else []
        offered = [*looks, self.action]
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
        out = Outcome(action={})
        start = time.monotonic()
        for turn_no in range(1, self.limits.turns + 1):
            left = self.limits.seconds - (time.monotonic() - start)
            if left <= 0:
                raise self._exhausted(f"no action within {self.limits.seconds:.0f}s", out)
            last = turn_no == self.limits.turns or not looks
            # The last turn (or a loop without tools) must end with the action.
            choice = {"type": "tool", "name": name} if last else {"type": "any"}
            try:
                turn = self.llm.turn(
                    system,
                    messages,
                    offered,
                    choice,
                    cache=bool(looks),
                    timeout=min(left, self.limits.request_timeout),
                    time_left=left,
                )
            except BudgetExceeded as e:
                raise self._exhausted(str(e), out) from None
            out.turns = turn_no
            out.usage += turn.usage
            messages.append({"role": "assistant", "content": turn.content})
            text = turn.text().strip()
            if text:
                self._record(out, Step("text", {}, text))
            uses = turn.tool_uses()
            if not uses:
                messages.append(
                    {"role": "user", "content": f"Answer by calling a tool; end with {name}."}
                )
                continue
            results, chosen = self._answer(uses, out, start + self.limits.seconds)
            if chosen is not None:
                out.action = chosen
                return out
            messages.append({"role": "user", "content": results})
            if time.monotonic() >= start + self.limits.seconds:
                raise self._exhausted(f"no action within {self.limits.seconds:.0f}s", out)
        raise self._exhausted(f"no valid action after {self.limits.turns} turns", out)

    def _answer(
        self, uses: list[dict[str, Any]], out: Outcome, deadline: float
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """The tool results of one turn, or the action when a valid one was called. Each
        call gets a result (the API wants one per call), but past ``CALLS_PER_TURN`` or
        the loop's deadline a look-around is not run."""
        results = []
        looked = 0
        for use in uses:
            tool, args = str(use.get("name")), use.get("input")
            args = args if isinstance(args, dict) else {}
            if tool != self.action["name"] and (
                looked >= CALLS_PER_TURN or time.monotonic() >= deadline
            ):
                result, error = (
                    f"not run: at most {CALLS_PER_TURN} tool calls a turn, within the loop's time",
                    True,
                )
            elif tool == self.action["name"]:
                problems = self.check(args)
                if not problems:
                    return [], args
                result = (
                    "The answer is invalid:\n- "
                    + "\n- ".join(problems)
                    + f"\nCall {tool} again with a corrected answer."
                )
                error = True
            else:
                looked += 1
                result, error = self._look(tool, args)
            self._record(out, Step(tool, args, result, error))
            results.append(
                {
                    "type": "tool_result",
                    "tool_use_id": use.get("id"),
                    "content": result,
                    **({"is_error": True} if error else {}),
                }
            )
        return results, None

    def _look(self, tool: str, args: dict[str, Any]) -> tuple[str, bool]:
        if self.tools is None:
            return f"unknown tool {tool!r}", True
        try:
            result = self.tools.call(tool, args)
        except ToolError as e:
            return str(e)[:RESULT_MAX], True
        except Exception as e:  # a tool's own bug must not end the diagnosis
            return f"the tool failed: {type(e).__name__}: {str(e)[:300]}", True
        return result[:RESULT_MAX], False

    def _record(self, out: Outcome, step: Step) -> None:
        out.transcript.append(step)
        if self.observe is not None:
            self.observe(step)

    def _exhausted(self, why: str, out: Outcome) -> LoopExhausted:
        return LoopExhausted(why, out.transcript, out.usage)


def shown(args: dict[str, Any]) -> str:
    """A tool call's input on one line, for people."""
    return json.dumps(args, ensure_ascii=False)[:200]
