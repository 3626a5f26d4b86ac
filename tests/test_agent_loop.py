"""The agent loop through the real anthropic SDK against the fake Messages API: looking
around, repair rounds, words without a tool, the caps (turns, time, budget), the prompt
cache and the cost."""

from __future__ import annotations

import time
from typing import Any

import pytest

from agentflow.agent.llm import LLM, LLMError
from agentflow.agent.loop import Limits, LoopExhausted, ToolLoop
from agentflow.agent.tools import ToolError
from fake_anthropic import FakeAnthropic, Reply, answer, call, error, text

ACTION = {
    "name": "finish",
    "description": "the answer",
    "input_schema": {"type": "object", "properties": {"value": {"type": "integer"}}},
}


class Notes:
    """A tiny real toolbox: one tool that reads a note by name."""

    def __init__(self, notes: dict[str, str]) -> None:
        self.notes = notes
        self.calls: list[str] = []

    def schemas(self) -> list[dict[str, Any]]:
        return [
            {
                "name": "read_note",
                "description": "a note by name",
                "input_schema": {"type": "object", "properties": {"name": {"type": "string"}}},
            }
        ]

    def call(self, name: str, args: dict[str, Any]) -> str:
        self.calls.append(args.get("name", ""))
        time.sleep(float(args.get("sleep", 0)))
        if args.get("name") not in self.notes:
            raise ToolError(f"no note {args.get('name')!r}: notes are {', '.join(self.notes)}")
        return self.notes[args["name"]] * int(args.get("times", 1))


def positive(data: dict[str, Any]) -> list[str]:
    value = data.get("value")
    return [] if isinstance(value, int) and value > 0 else ["value must be a positive integer"]


@pytest.fixture
def fake_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")


def loop(fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> ToolLoop:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
    llm = LLM("claude-sonnet-4-5", 1000, kw.pop("budget", None))
    tools = kw.pop("tools", Notes({"a": "the answer is 42"}))
    return ToolLoop(llm, tools, ACTION, positive, kw.pop("limits", None))


def test_the_model_looks_then_acts_and_the_result_reaches_it(
    fake_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    replies = [
        answer(text("I will read note a."), call("read_note", {"name": "a"})),
        answer(call("finish", {"value": 42}), requires=("the answer is 42",), cache=(500, 0)),
    ]
    with FakeAnthropic(replies) as fake:
        out = loop(fake, monkeypatch).run("system", "what is the answer?")
    assert not fake.unmet
    assert out.action == {"value": 42}
    assert [(s.tool, s.result) for s in out.transcript] == [
        ("text", "I will read note a."),
        ("read_note", "the answer is 42"),
    ]
    assert out.turns == 2
    # Two calls, each 900 in and 120 out; the second read 500 from the cache.
    assert (out.usage.calls, out.usage.input_tokens, out.usage.cache_read_tokens) == (2, 1800, 500)
    assert out.usage.cost_usd == pytest.approx((1800 * 3 + 240 * 15 + 500 * 0.3) / 1e6)
    first, second = (r["body"] for r in fake.requests)
    assert first["tool_choice"] == {"type": "any"}
    assert first["system"][0]["cache_control"] == {"type": "ephemeral"}  # the fixed prefix
    # The conversation so far is marked for the cache, once, on its last block.
    marks = str(second["messages"]).count("cache_control")
    assert marks == 1
    assert second["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}


def test_a_wrong_tool_call_and_an_invalid_action_get_their_reasons_and_another_turn(
    fake_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    replies = [
        answer(call("read_note", {"name": "zz"})),
        answer(call("finish", {"value": -1}), requires=("notes are a",)),
        answer(call("finish", {"value": 7}), requires=("value must be a positive integer",)),
    ]
    with FakeAnthropic(replies) as fake:
        out = loop(fake, monkeypatch).run("system", "go")
    assert not fake.unmet
    assert out.action == {"value": 7}
    assert [s.error for s in out.transcript] == [True, True]


def test_words_without_a_tool_are_kept_and_the_model_is_asked_to_call_one(
    fake_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    replies = [
        answer(text("The cause is a missing file."), stop_reason="end_turn"),
        answer(call("finish", {"value": 1}), requires=("Answer by calling a tool",)),
    ]
    with FakeAnthropic(replies) as fake:
        out = loop(fake, monkeypatch).run("system", "go")
    assert not fake.unmet
    assert out.transcript[0].result == "The cause is a missing file."


def test_past_the_turn_limit_the_last_turn_can_only_act_and_then_it_escalates(
    fake_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    looking = [answer(text(f"look {i}"), call("read_note", {"name": "a"})) for i in range(3)]
    with FakeAnthropic(looking) as fake:
        lp = loop(fake, monkeypatch, limits=Limits(turns=3))
        with pytest.raises(LoopExhausted) as caught:
            lp.run("system", "go")
    choices = [r["body"]["tool_choice"] for r in fake.requests]
    assert choices == [{"type": "any"}, {"type": "any"}, {"type": "tool", "name": "finish"}]
    e = caught.value
    assert "no valid action after 3 turns" in str(e)
    assert "it said: look 2" in e.found()
    assert "3 tool calls" in e.found()
    assert e.usage.calls == 3


def test_the_deadline_cuts_a_slow_request_and_ends_the_loop(
    fake_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = [answer(call("read_note", {"name": "a"}), delay=3) for _ in range(5)]
    with FakeAnthropic(slow) as fake:
        lp = loop(fake, monkeypatch, limits=Limits(seconds=1))
        began = time.monotonic()
        with pytest.raises(LLMError) as caught:
            lp.run("system", "go")
    took = time.monotonic() - began
    assert "did not answer in time (1s a request, 0 retries)" in str(caught.value)
    # The request's timeout was what was left of the loop's time, and the SDK was given
    # no retry it had no time for: one request, about a second.
    assert len(fake.requests) == 1
    assert fake.requests[0]["headers"].get("x-stainless-timeout") in ("1", "1.0")
    assert took < 3


def test_the_budget_ends_the_loop_with_what_was_found(
    fake_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    replies = [answer(call("read_note", {"name": "a", "times": 2000}), tokens=(1500, 100))]
    with FakeAnthropic(replies) as fake:
        lp = loop(fake, monkeypatch, budget=2400)
        with pytest.raises(LoopExhausted) as caught:
            lp.run("system", "go")
    assert len(fake.requests) == 1  # the second would not fit: never sent
    assert "token budget (2400) is spent" in str(caught.value)
    assert "1 tool calls (read_note)" in caught.value.found()


def test_rate_limits_and_overload_are_retried_and_a_cut_answer_says_what_to_raise(
    fake_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    replies: list[Reply] = [
        error(429, "rate_limit_error"),
        error(529, "overloaded_error"),
        answer(call("finish", {"value": 3})),
    ]
    with FakeAnthropic(replies) as fake:
        assert loop(fake, monkeypatch).run("system", "go").action == {"value": 3}
    cut = answer(text("half an answ"), stop_reason="max_tokens")
    with FakeAnthropic([cut]) as fake, pytest.raises(LLMError) as caught:
        loop(fake, monkeypatch).run("system", "go")
    assert "cut at" in str(caught.value)
    assert "planner.max_tokens" in str(caught.value)


def test_one_answer_runs_at_most_8_looks_and_none_past_the_deadline(
    fake_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    many = answer(*[call("read_note", {"name": "a"}) for _ in range(10)])
    with FakeAnthropic([many, answer(call("finish", {"value": 1}))]) as fake:
        notes = Notes({"a": "A"})
        out = loop(fake, monkeypatch, tools=notes).run("system", "go")
    assert len(notes.calls) == 8
    results = [r["content"] for r in fake.requests[1]["body"]["messages"][-1]["content"]]
    assert len(results) == 10  # every call answered, as the API wants
    assert results[-1].startswith("not run: at most 8 tool calls a turn")
    assert out.action == {"value": 1}
    slow = answer(*[call("read_note", {"name": "a", "sleep": 0.6}) for _ in range(5)])
    with FakeAnthropic([slow]) as fake:
        notes = Notes({"a": "A"})
        with pytest.raises(LoopExhausted, match="no action within 1s"):
            loop(fake, monkeypatch, tools=notes, limits=Limits(seconds=1)).run("system", "go")
    assert len(notes.calls) == 2  # the rest were past the loop's time


def test_an_answer_nested_past_what_can_be_sent_back_is_an_error(
    fake_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep: dict[str, Any] = {}
    for _ in range(300):
        deep = {"x": deep}
    for levels in (50, 300):  # (past 250, what the SDK's models serialise)
        nested = deep
        for _ in range(300 - levels):
            nested = nested["x"]
        with (
            FakeAnthropic([answer(call("read_note", nested))]) as fake,
            pytest.raises(LLMError, match="nested deeper than 40 levels"),
        ):
            loop(fake, monkeypatch).run("system", "go")
