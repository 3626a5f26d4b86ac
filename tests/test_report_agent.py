"""What the model did and cost, in the reports and the history: the run's tokens by kind
and estimated cost, each diagnosis's figures and decision, and the agent's transcript (the
tool calls before each decision), escaped and masked: the transcript quotes what steps
wrote, which is hostile text."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

from agentflow import history
from agentflow.state import RunState, StepState, Usage
from agentflow.store import Event, Store
from test_report import section
from test_report_html import well_formed

from conftest import Env

SECRET = "tok-s3cr3t-4f9a7b21"
HOSTILE = (
    "Traceback (most recent call last):\n"
    "```\n"
    "</details><script>alert(1)</script>\n"
    "# not a heading\n"
    "[click](http://evil.example) <img src=x onerror=alert(2)> | cell\n"
    "````\n"
    "AssertionError: 9 != 10"
)
WORKFLOW = """\
version: 1
name: agentic
secrets: [API_TOKEN]
steps:
  - id: fit
    run: python train.py
  - id: serve
    run: python serve.py
"""
RUN_USAGE = Usage(
    calls=6,
    input_tokens=4200,
    output_tokens=1310,
    cache_read_tokens=18000,
    cache_write_tokens=2600,
    cost_usd=0.0731,
)
FIT_USAGE = {
    "calls": 3,
    "input_tokens": 1200,
    "output_tokens": 345,
    "cache_read_tokens": 2800,
    "cache_write_tokens": 222,
    "cost_usd": 0.012345,
}
SERVE_USAGE = {
    "calls": 2,
    "input_tokens": 900,
    "output_tokens": 80,
    "cache_read_tokens": 1500,
    "cache_write_tokens": 0,
    "cost_usd": 0.0041,
}


def tool(
    step: str, ts: datetime, name: str, args: dict[str, Any], result: str, error: bool = False
) -> Event:
    data: dict[str, Any] = {"tool": name, "input": args, "result": result, "error": error}
    return Event(ts=ts, kind="agent_tool", step=step, data=data)


def agentic_run(af: Env) -> str:
    """A finished run as the runner records one: two diagnoses with their tool calls (one
    decision, one cap reached), an older diagnosis without data, and the run's usage."""
    store = Store(af.home)
    run = store.create("agentic")
    run.workflow_path.write_text(WORKFLOW)
    t0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)

    def at(s: float) -> datetime:
        return t0 + timedelta(seconds=s)

    decision = {
        "action": "retry_with_changes",
        "diagnosis": "config.py has an off-by-one in n_layers",
        "category": "config",
        "run": None,
        "env": None,
        "scope": None,
        "inputs": None,
        "patch": "--- a/config.py\n+++ b/config.py\n@@ -1 +1 @@\n-n = 9\n+n = 10\n",
        "rerun": None,
        "question": None,
        "wait": None,
        "turns": 4,
        "tools": ["read_log", "read_file", "grep"],
        "usage": FIT_USAGE,
    }
    events = [
        Event(ts=at(0), kind="run_started", message="2 steps"),
        Event(ts=at(1), kind="step_started", step="fit", attempt=1, status="running"),
        Event(ts=at(3), kind="step_finished", step="fit", attempt=1, status="failed", exit_code=1),
        tool("fit", at(4), "read_log", {"step": "fit", "tail": 50}, HOSTILE),
        # recorded unmasked (as by a path that forgot to mask): the report masks it
        tool("fit", at(5), "read_file", {"path": "config.py"}, f"1: TOKEN = '{SECRET}'\n2: n = 9"),
        tool("fit", at(6), "text", {}, "The config is off by one."),
        tool("fit", at(7), "grep", {"pattern": "(unclosed"}, "bad pattern", error=True),
        Event(
            ts=at(8),
            kind="diagnosis",
            step="fit",
            attempt=1,
            data=decision,
            message="retry_with_changes: config.py has an off-by-one [config; 4567 tokens]",
        ),
        Event(ts=at(9), kind="step_started", step="fit", attempt=2, status="running"),
        Event(ts=at(10), kind="step_finished", step="fit", attempt=2, status="succeeded"),
        Event(ts=at(11), kind="step_started", step="serve", attempt=1, status="running"),
        Event(ts=at(12), kind="step_finished", step="serve", attempt=1, status="failed"),
        tool("serve", at(13), "http_get", {"url": "http://127.0.0.1:8000/health"}, "200 OK"),
        Event(
            ts=at(14),
            kind="agent_exhausted",
            step="serve",
            attempt=1,
            data={"reason": "the turn limit (2)", "tools": ["http_get"], "usage": SERVE_USAGE},
        ),
        # a diagnosis recorded before events had data
        Event(ts=at(15), kind="diagnosis", step="serve", attempt=1, message="escalate: unsure"),
        Event(ts=at(16), kind="run_finished", status="blocked"),
    ]
    state = RunState(
        run_id="agentic", workflow="agentic", workflow_file="wf.yaml",
        workspace=str(af.workspace), status="blocked", created_at=t0, finished_at=at(16),
        tokens_used=RUN_USAGE.tokens, decisions=2, usage=RUN_USAGE,
        steps={
            "fit": StepState(status="succeeded", attempts=2, exit_code=0,
                             started_at=at(9), finished_at=at(10)),
            "serve": StepState(status="blocked", attempts=1, exit_code=1,
                               started_at=at(11), finished_at=at(12)),
        },
    )  # fmt: skip
    run.write_state(state)
    for e in events:
        run.append_event(e)
    af.env["API_TOKEN"] = SECRET  # as the orchestrator that writes the reports has it
    return run.run_id


# What the runner does when a run ends: write the reports, record the run in the history.
AT_THE_END = """\
import sys
from agentflow import history
from agentflow.report import write_reports
from agentflow.store import Store

store = Store()
run = store.open(sys.argv[1])
state = run.read_state()
report = write_reports(run, state)
history.record(store.home, history.summarize(run, state, report))
"""


def end_run(af: Env, run_id: str) -> None:
    res = subprocess.run(
        [sys.executable, "-c", AT_THE_END, run_id],
        env=af.env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr


class Rendered(HTMLParser):
    """The elements of a page and the text inside ``<pre>``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.pre: list[str] = []
        self._in_pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "pre":
            self._in_pre += 1
            self.pre.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre":
            self._in_pre -= 1

    def handle_data(self, data: str) -> None:
        if self._in_pre:
            self.pre[-1] += data


def rendered(page: str) -> Rendered:
    parsed = Rendered()
    parsed.feed(page)
    parsed.close()
    return parsed


def test_report_md_shows_the_models_cost_and_transcript_escaped(af: Env) -> None:
    rid = agentic_run(af)
    res = af.cli("report", rid)
    assert res.returncode == 0, res.stderr
    md = res.stdout
    model = section(md, "Model")
    assert "- calls: 6" in model
    assert (
        "- tokens: 26,110 tokens (input 4,200, output 1,310, cache read 18,000, "
        "cache write 2,600)" in model
    )
    assert "- cost: $0.0731 (estimated from list prices)" in model
    fit = next(line for line in model.splitlines() if line.startswith("| fit"))
    assert [c.strip() for c in fit.split("|")[1:-1]] == [
        "fit", "1", "retry_with_changes", "3", "1,200", "345", "2,800", "222", "$0.0123",
    ]  # fmt: skip
    serve = [line for line in model.splitlines() if line.startswith("| serve")]
    assert [c.strip() for c in serve[0].split("|")[1:-1]] == [
        "serve", "1", "gave up (escalated)", "2", "900", "80", "1,500", "0", "$0.0041",
    ]  # fmt: skip
    # The older diagnosis without data still reports, its figures not recorded.
    assert [c.strip() for c in serve[1].split("|")[1:-1]][2:] == [
        "escalate", "", "", "", "", "", "not recorded",
    ]  # fmt: skip

    assert "### fit (attempt 1): retry_with_changes" in model
    assert "- diagnosis: config.py has an off-by-one in n_layers" in model
    assert "- used: 3 calls, 4,567 tokens (input 1,200, output 345, cache read 2,800" in model
    assert "- cost: $0.0123 (estimated)" in model
    assert "- turns: 4" in model
    assert "### serve (attempt 1): gave up (escalated)" in model
    assert "- why it stopped: the turn limit (2)" in model
    assert "<details><summary>transcript: 4 tool calls</summary>" in model
    assert "<details><summary>transcript: 1 tool call</summary>" in model
    assert '1. read_log {"step": "fit", "tail": 50}' in model
    assert '2. read_file {"path": "config.py"}' in model
    assert "   The config is off by one." in model
    assert '4. grep (error) {"pattern": "(unclosed"}' in model
    assert SECRET not in md
    assert "1: TOKEN = '***'" in model

    # Rendered as GitHub would (CommonMark with HTML): the hostile result is text in a
    # code block inside its <details>; it adds no element, heading or link of its own.
    page = MarkdownIt("commonmark").render(md)
    parsed = rendered(page)
    assert not {"script", "img", "a"} & set(parsed.tags)
    assert parsed.tags.count("h1") == 1  # the report's title only
    assert parsed.tags.count("details") == 2
    shown = next(p for p in parsed.pre if "read_log" in p)
    for line in HOSTILE.splitlines():
        assert f"   {line}\n" in shown
    assert "not a heading" not in re.sub(r"<pre>.*?</pre>", "", page, flags=re.S)


def test_report_html_and_json_show_the_models_cost_and_transcript(af: Env) -> None:
    rid = agentic_run(af)
    res = af.cli("report", rid, "--html")
    assert res.returncode == 0, res.stderr
    page = (af.run_dir(rid) / "report.html").read_text()
    well_formed(page)
    model = page.split("<h2>Model</h2>", 1)[1].split("</section>", 1)[0]
    assert "<dt>calls</dt><dd>6</dd>" in model
    assert "$0.0731 (estimated from list prices)" in model
    assert '<td class="num">$0.0123</td>' in model
    assert "<details><summary>transcript: 4 tool calls</summary>" in model
    parsed = rendered(page)
    assert not {"script", "img"} & set(parsed.tags)
    assert any("</details><script>alert(1)</script>" in p for p in parsed.pre)
    assert "&lt;/details&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in model
    assert "<code>read_log</code> <code>{&quot;step&quot;: &quot;fit&quot;" in model
    assert '<span class="error">error</span>' in model
    assert SECRET not in page

    end_run(af, rid)
    data = json.loads((af.run_dir(rid) / "report.json").read_text())
    llm = data["llm"]
    assert llm["usage"] == RUN_USAGE.model_dump()
    assert llm["tokens_used"] == 26110
    fit, serve, old = llm["diagnoses"]
    assert (fit["kind"], fit["step"], fit["attempt"]) == ("diagnosis", "fit", 1)
    assert fit["action"] == "retry_with_changes"
    assert fit["category"] == "config"
    assert fit["decision"]["patch"].startswith("--- a/config.py")
    assert fit["turns"] == 4
    assert fit["tools"] == ["read_log", "read_file", "grep"]
    assert fit["usage"] == FIT_USAGE
    assert [c["tool"] for c in fit["transcript"]] == ["read_log", "read_file", "text", "grep"]
    assert fit["transcript"][0]["input"] == {"step": "fit", "tail": 50}
    assert fit["transcript"][0]["result"] == HOSTILE  # kept as written: it is data here
    assert fit["transcript"][3]["error"] is True
    assert (serve["kind"], serve["reason"], serve["usage"]) == (
        "agent_exhausted", "the turn limit (2)", SERVE_USAGE,
    )  # fmt: skip
    assert [c["tool"] for c in serve["transcript"]] == ["http_get"]
    assert (old["kind"], old["usage"], old["transcript"]) == ("diagnosis", None, [])
    assert SECRET not in (af.run_dir(rid) / "report.json").read_text()
    assert SECRET not in (af.run_dir(rid) / "report.md").read_text()


def test_history_records_and_shows_what_the_model_cost(af: Env) -> None:
    rid = agentic_run(af)
    end_run(af, rid)
    res = af.cli("history")
    assert res.returncode == 0, res.stderr
    head, row = res.stdout.splitlines()[:2]
    assert re.search(r"\btokens +cost\b", head), res.stdout
    assert re.search(r"\b26110 +\$0\.07\b", row), res.stdout
    data = json.loads(af.cli("history", "--json").stdout)
    assert data[0]["usage"] == RUN_USAGE.model_dump()
    with sqlite3.connect(af.home / "history.db") as conn:
        cost, calls, cached = conn.execute(
            "SELECT cost_usd, model_calls, cache_read_tokens FROM runs WHERE run_id = ?", (rid,)
        ).fetchone()
    assert (cost, calls, cached) == (0.0731, 6, 18000)
    res = af.cli("compare", rid, rid)
    assert re.search(r"^cost +\$0\.07 +\$0\.07 *$", res.stdout, re.M), res.stdout


def test_runs_from_before_the_usage_still_report_and_list(af: Env, tmp_path: Path) -> None:
    # A history of schema 1 with a run in it, as an older agentflow left it.
    af.home.mkdir(parents=True)
    raw = sqlite3.connect(af.home / "history.db")
    raw.executescript(history.MIGRATIONS[0])
    raw.execute(
        "INSERT INTO runs VALUES ('old-1', 'w', 'w.yaml', NULL, 'succeeded', NULL, 'local', "
        "'static', '{}', '2026-01-01T00:00:00.000000+00:00', NULL, 1.5, 1234, "
        "'2026-01-01T00:00:02.000000+00:00')"
    )
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()
    res = af.cli("history")
    assert res.returncode == 0, res.stderr
    assert "cost" not in res.stdout.splitlines()[0]
    assert re.search(r"^old-1 .* 1234 ", res.stdout, re.M), res.stdout
    data = json.loads(af.cli("history", "--json").stdout)
    assert (data[0]["tokens_used"], data[0]["usage"]) == (1234, None)
    with sqlite3.connect(af.home / "history.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == history.SCHEMA_VERSION == 2

    # A run of an older agentflow: tokens counted, no usage by kind, no event data.
    store = Store(af.home)
    run = store.create("older")
    t0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    run.write_state(
        RunState(
            run_id="older", workflow="w", workflow_file="w.yaml", workspace=str(af.workspace),
            status="failed", created_at=t0, finished_at=t0 + timedelta(seconds=5),
            tokens_used=812, steps={"s": StepState(status="failed", attempts=1, exit_code=2)},
        )
    )  # fmt: skip
    run.append_event(Event(ts=t0, kind="diagnosis", step="s", message="abort: it is broken"))
    res = af.cli("report", "older")
    assert res.returncode == 0, res.stderr
    model = section(res.stdout, "Model")
    assert "- tokens: 812 (not recorded by kind)" in model
    assert "- cost:" not in model  # no figure made up
    assert "$" not in model
    assert "### s: abort" in model  # the action, read from its message
    assert "(no tool calls recorded)" in model
