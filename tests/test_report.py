"""Reports of real runs: report.md, the ``report`` command, junit.xml."""

from __future__ import annotations

import json
import re
import signal
import xml.etree.ElementTree as ET
from pathlib import Path

from junitparser import Error, Failure, JUnitXml, Skipped
from pydantic import TypeAdapter

from agentflow.report import Report
from agentflow.report.jsonfile import report_json
from agentflow.textsafe import json_bytes

from conftest import Env, run_id_of

# A service, a step that fails once and is retried, a step that fails for good (printing
# colour codes, a bell and markup), and a step skipped because of it.
MIXED = r"""
version: 1
name: mixed
inputs:
  layers: {default: 2}
steps:
  - id: serve
    service: true
    run: |
      sleep 0.3; echo "listening"; exec sleep 300
    ready: {log: "listening", timeout: 20s, interval: 100ms}
  - id: flaky
    needs: [serve]
    retry: {limit: 2, backoff: {initial: 100ms}, on: [failed]}
    run: |
      n=$(cat count 2>/dev/null || echo 0); echo $((n+1)) > count
      echo "attempt $((n+1))"; sleep 0.4
      [ "$n" -ge 1 ] || { echo "flaky failure" >&2; exit 7; }
      echo '{"speedup": 1.5}' > results.json
    success:
      metrics: {speedup: {file: results.json, key: speedup, min: 1.2}}
    outputs: {speedup: {json: results.json, key: speedup}}
  - id: broken
    needs: [flaky]
    run: |
      printf 'loading\r\033[31mTraceback <oops> & "stuff"\033[0m\a\n'
      sleep 1
      echo "ValueError: bad | value"; exit 3
  - id: after
    needs: [broken]
    run: echo never
"""


def run_mixed(af: Env) -> str:
    res = af.cli("run", str(af.write(MIXED)))
    assert res.returncode == 1, res.stdout + res.stderr
    return run_id_of(res.stdout)


def section(report: str, title: str) -> str:
    """The text of one ``## title`` section of report.md."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", report, re.M | re.S)
    assert m, f"no section {title!r} in:\n{report}"
    return m.group(1)


def test_report_md_and_json_tell_what_happened(af: Env) -> None:
    rid = run_mixed(af)
    report = (af.run_dir(rid) / "report.md").read_text()
    head = report.split("\n## ")[0]
    assert head.startswith("# mixed: failed")
    assert f"- run: `{rid}`" in head
    assert "- status: **failed**: broken failed: exit code 3" in head
    assert re.search(r"- started: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", head)
    assert re.search(r"- ended: .*\(took [\d.]+m?s\)", head)
    assert "- steps: 4 (1 failed, 1 skipped, 2 succeeded)" in head
    assert "- inputs: `layers=2`" in head
    assert f"- resume: `agentflow resume {rid}`" in head

    steps = section(report, "Steps").strip().splitlines()
    assert len({len(line) for line in steps}) == 1, "columns line up in plain text"
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in steps
    }
    assert rows["serve (service)"][0] == "✔ succeeded"
    assert rows["serve (service)"][4].startswith("ready after")
    assert rows["flaky"][:2] == ["✔ succeeded", "2"]
    assert rows["broken"][0] == "✘ failed"
    assert rows["broken"][3:] == ["3", "exit code 3"]
    assert rows["after"][0] == "↷ skipped"
    assert rows["after"][4] == "needs broken, which failed"

    assert re.search(r"\| flaky +\| speedup +\| 1\.5 +\|", section(report, "Outputs"))
    metrics = section(report, "Metrics")
    assert re.search(
        r"\| flaky +\| speedup +\| results\.json: speedup +\| ≥ 1\.2 +\| passed", metrics
    )
    decisions = section(report, "Retries and decisions")
    assert re.search(r"\*\*flaky\*\* \(attempt 1\) retry scheduled: retry 1/2 in", decisions)

    failed = section(report, "Failed steps")
    assert "### broken: failed, exit code 3" in failed
    assert "steps/broken/output.log" in failed
    # The log's end, cleaned: the last redraw of a line, no colour codes, no bell.
    assert 'Traceback <oops> & "stuff"\nValueError: bad | value' in failed
    assert "loading" not in failed
    assert "\x1b" not in report
    assert "\x07" not in report

    timeline = section(report, "Timeline")
    lines = timeline.strip().strip("`").strip().splitlines()
    assert re.match(r"\d\d:\d\d:\d\d +\+\S+ +run +started: 4 steps", lines[0])
    assert any(re.search(r"serve +service ready", line) for line in lines)
    assert re.search(r"run +failed", lines[-1])
    assert sum("started (attempt" in line for line in lines) == 4  # serve, flaky x2, broken

    # report.json: the same, for tools, with each attempt
    data = json.loads((af.run_dir(rid) / "report.json").read_text())
    steps = {s["id"]: s for s in data["steps"]}
    assert [a["status"] for a in steps["flaky"]["history"]] == ["failed", "succeeded"]
    assert [a["exit_code"] for a in steps["flaky"]["history"]] == [7, 0]
    assert steps["serve"]["history"][0]["ready_at"] is not None
    assert steps["serve"]["service"] is True
    assert steps["after"]["history"] == []
    assert steps["flaky"]["metrics"][0]["result"] == "passed"
    assert steps["flaky"]["metrics"][0]["detail"] == "speedup = 1.5"  # measured, not only bounds
    assert (af.run_dir(rid) / "report.html").exists()  # written at the end of every run
    assert "ValueError: bad | value" in steps["broken"]["log_tail"]
    assert steps["flaky"]["log_tail"] is None  # only for steps that went wrong
    assert data["counts"] == {"failed": 1, "skipped": 1, "succeeded": 2}
    # Written a step and an event at a time, the file is the whole report dumped at once.
    report_value = Report.model_validate_json((af.run_dir(rid) / "report.json").read_bytes())
    whole = json_bytes(TypeAdapter(Report).dump_json(report_value, indent=2))
    assert (af.run_dir(rid) / "report.json").read_bytes() == whole
    assert b"".join(report_json(report_value)) == whole


def test_report_command_prints_the_report_again(af: Env) -> None:
    wf = af.write("version: 1\nname: one\nsteps:\n  - id: only\n    run: echo hi; exit 4\n")
    res = af.cli("run", str(wf))
    assert res.returncode == 1, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    res = af.cli("report", rid)
    assert res.returncode == 0, res.stderr
    saved = (af.run_dir(rid) / "report.md").read_text()
    assert res.stdout.splitlines()[:3] == saved.splitlines()[:3]
    for title in ("Steps", "Failed steps", "Timeline"):
        assert section(res.stdout, title) == section(saved, title)
    assert "- resume: `agentflow resume" in res.stdout
    out = af.workspace / "out" / "r.md"
    res = af.cli("report", rid[:8], "-o", str(out))  # a unique prefix is enough
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(out)
    assert out.read_text().startswith("# one: failed")


def test_report_of_an_unknown_run_is_a_one_line_error(af: Env) -> None:
    res = af.cli("report", "nope")
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1
    assert "no run 'nope'" in res.stderr
    assert "Traceback" not in res.stderr


def test_report_of_a_running_then_orphaned_run(af: Env) -> None:
    wf = af.write(
        """\
        version: 1
        name: slow
        steps:
          - id: quick
            run: echo quick
          - id: waits
            needs: [quick]
            run: while [ ! -e release ]; do sleep 0.05; done
        """
    )
    proc = af.start("run", str(wf), "--run-id", "live1")
    af.wait_for(lambda: af.state("live1")["steps"]["waits"]["status"] == "running")
    res = af.cli("report", "live1")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("# slow: running")
    assert "- ended: not yet" in res.stdout
    assert "resume" not in section(res.stdout, "Steps") + res.stdout.split("## ")[0]
    assert re.search(r"\| waits +\| ▶ running +\| +1 \|", res.stdout)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = af.cli("report", "live1")
    assert res.stdout.startswith("# slow: orphaned")
    assert "- resume: `agentflow resume live1`" in res.stdout
    html = af.cli("report", "live1", "--html")
    assert html.returncode == 0, html.stderr
    page = Path(html.stdout.strip()).read_text()
    assert 'data-step="waits" data-attempt="1" data-status="running"' in page


def test_junit_has_one_case_per_step_and_viewers_accept_it(af: Env, tmp_path: Path) -> None:
    junit = tmp_path / "ci" / "junit.xml"
    res = af.cli("run", str(af.write(MIXED)), "--junit", str(junit))
    assert res.returncode == 1
    rid = run_id_of(res.stdout)
    assert junit.read_text() == (af.run_dir(rid) / "junit.xml").read_text()
    ET.parse(junit)  # well-formed: no control characters from the logs

    xml = JUnitXml.fromfile(str(junit))
    suites = list(xml)
    assert len(suites) == 1
    suite = suites[0]
    assert suite.name == "mixed"
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (4, 1, 0, 1)
    assert suite.timestamp
    assert suite.time > 0
    props = {p.name: p.value for p in suite.properties()}
    assert props == {"run_id": rid, "status": "failed", "input.layers": "2"}
    cases = {c.name: c for c in suite}
    assert list(cases) == ["serve", "flaky", "broken", "after"]
    assert all(c.classname == "mixed" for c in cases.values())
    assert cases["serve"].is_passed
    assert cases["flaky"].is_passed

    (failure,) = cases["broken"].result
    assert isinstance(failure, Failure)
    assert failure.type == "failed"
    assert failure.message == "failed: exit code 3"
    assert 'Traceback <oops> & "stuff"' in failure.text
    assert "ValueError: bad | value" in failure.text
    assert cases["broken"].time >= 1

    (skipped,) = cases["after"].result
    assert isinstance(skipped, Skipped)
    assert skipped.message == "needs broken, which failed"
    assert not any(isinstance(r, Error) for c in cases.values() for r in c.result)

    flaky_out = cases["flaky"].system_out or ""
    assert re.match(r"attempt 1: failed, exit code 7, [\d.]+m?s\n", flaky_out)
    assert re.search(r"^attempt 2: succeeded, exit code 0, [\d.]+m?s$", flaky_out, re.M)
    assert flaky_out.endswith("\n\nattempt 2")  # then the log


def test_the_metrics_table_names_the_file_the_check_read(af: Env) -> None:
    """The file of a metric check is rendered as the runner rendered it (issue 17: the
    table showed `${{ run.id }}`)."""
    wf = af.write(
        """\
version: 1
name: rendered
inputs:
  tag: {default: a}
env:
  OUT: out-${{ inputs.tag }}
steps:
  - id: make
    run: |
      mkdir -p "$OUT"; echo '{"acc": 0.9}' > "$OUT/eval-$AGENTFLOW_RUN_ID.json"
    success:
      metrics:
        acc: {file: "${{ env.OUT }}/eval-${{ run.id }}.json", key: acc, min: 0.5}
"""
    )
    res = af.cli("run", str(wf), "--run-id", "m1", "--set", "tag=b7", "--ci")
    assert res.returncode == 0, res.stdout + res.stderr
    metrics = section((af.run_dir("m1") / "report.md").read_text(), "Metrics")
    assert re.search(
        r"\| make +\| acc +\| out-b7/eval-m1\.json: acc +\| ≥ 0\.5 +\| passed", metrics
    )
    assert "${{" not in metrics
    data = json.loads((af.run_dir("m1") / "report.json").read_text())
    assert data["steps"][0]["metrics"][0]["file"] == "out-b7/eval-m1.json"
    html = (af.run_dir("m1") / "report.html").read_text()
    assert "<code>out-b7/eval-m1.json</code>" in html
    again = af.cli("report", "m1")
    assert "out-b7/eval-m1.json: acc" in again.stdout
