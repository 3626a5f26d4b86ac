"""``junit.xml``: one test case per step, for CI viewers (Jenkins, GitLab, GitHub
actions that read JUnit): a failure with the tail of the log per failed step, the
attempts and the log in ``system-out``."""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from pathlib import Path

from agentflow.report.model import Attempt, Report, StepReport
from agentflow.report.text import human_duration, log_tail
from agentflow.state import UNSUCCESSFUL
from agentflow.textsafe import VALUE_LIMIT, printable

LOG_LINES = 60
"""Lines of the log in each case (whole logs stay in the run directory)."""


def junit_xml(report: Report) -> str:
    """The report as JUnit XML (the common schema: testsuites > testsuite > testcase)."""
    kinds = [_kind(s) for s in report.steps]
    totals = {
        "tests": str(len(report.steps)),
        "failures": str(kinds.count("failure")),
        "errors": str(kinds.count("error")),
        "skipped": str(kinds.count("skipped")),
        "time": f"{report.duration_s or 0:.3f}",
    }
    suites = ET.Element("testsuites", {"name": "agentflow", **totals})
    suite = ET.SubElement(
        suites,
        "testsuite",
        {
            "name": report.workflow,
            **totals,
            # The schema's timestamp has no zone: UTC, like the run's files.
            "timestamp": report.created_at.strftime("%Y-%m-%dT%H:%M:%S"),
            "hostname": socket.gethostname(),
        },
    )
    props = ET.SubElement(suite, "properties")
    for name, value in [
        ("run_id", report.run_id),
        ("status", report.status),
        *((f"input.{k}", str(v)) for k, v in report.inputs.items()),
    ]:
        ET.SubElement(props, "property", name=name, value=printable(value, VALUE_LIMIT))
    for step, kind in zip(report.steps, kinds, strict=True):
        suite.append(_case(report, step, kind))
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def _kind(s: StepReport) -> str:
    """``failure`` for a step that went wrong, ``error`` for one that needs a person,
    ``skipped`` for one that did not run (or runs still), '' for a pass."""
    if s.status in UNSUCCESSFUL:
        return "failure"
    if s.status == "blocked":
        return "error"
    if s.status in ("skipped", "pending", "running"):
        return "skipped"
    return ""


def _case(report: Report, s: StepReport, kind: str) -> ET.Element:
    case = ET.Element("testcase", classname=report.workflow, name=s.id, time=f"{s.time_s or 0:.3f}")
    log = log_tail(Path(s.log), LOG_LINES)
    if kind in ("failure", "error"):
        message = f"{s.status}: {printable(s.message, VALUE_LIMIT)}".rstrip(": ")
        if s.exit_code is not None and "exit code" not in message:
            message += f" (exit code {s.exit_code})"
        ET.SubElement(case, kind, message=message, type=s.status).text = log
    elif kind == "skipped":
        why = s.message or ("still running" if s.status == "running" else "not run")
        ET.SubElement(case, "skipped", message=printable(why, VALUE_LIMIT))
    attempts = [_attempt_line(a) for a in s.history]
    out = "\n".join([*attempts, f"log: {s.log}", "", log]) if attempts else log
    ET.SubElement(case, "system-out").text = out
    return case


def _attempt_line(a: Attempt) -> str:
    """``attempt 1: failed, exit code 7, 432ms``, with the reason when the code is not it."""
    parts = [f"attempt {a.number}: {a.status}"]
    if a.exit_code is not None:
        parts.append(f"exit code {a.exit_code}")
    if a.finished_at is not None:
        parts.append(human_duration((a.finished_at - a.started_at).total_seconds()))
    line = ", ".join(parts)
    if a.message and "exit code" not in a.message:
        line += f" ({printable(a.message, VALUE_LIMIT)})"
    return line
