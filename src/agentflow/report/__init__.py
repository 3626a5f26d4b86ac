"""Reports of a run, made from its checkpoint and events: ``report.md`` for people,
``report.json`` for tools, ``junit.xml`` for CI, and on request one HTML page.

``build`` turns a run into a ``Report`` (``model``); each format renders that value and
nothing else (``markdown``, ``junit``, ``html`` with its ``gantt`` chart), so a report can be
made again at any time, for a run that ended, runs, or was left behind.
"""

from __future__ import annotations

from pathlib import Path

from agentflow.report.build import build_report
from agentflow.report.html import html_page, html_parts
from agentflow.report.jsonfile import report_json
from agentflow.report.junit import junit_xml
from agentflow.report.markdown import markdown
from agentflow.report.model import Report, StepReport
from agentflow.state import RunState
from agentflow.store import RunDir
from agentflow.workflow import Workflow

__all__ = [
    "Report",
    "StepReport",
    "build_report",
    "html_page",
    "junit_xml",
    "markdown",
    "write_reports",
]


def write_reports(
    run: RunDir, state: RunState, junit: Path | None = None, workflow: Workflow | None = None
) -> Report:
    """Write the reports into the run directory (and the JUnit file to ``junit``);
    ``workflow``: the run's, when the caller has it (the frozen file is not read again)."""
    report = build_report(run, state, workflow=workflow)
    # The values as written (JSON escapes C0 controls; json_bytes the rest a terminal
    # heeds). Made as bytes a step at a time, and the page a section at a time: at 10,000
    # steps each text held whole (and again encoded) was most of the orchestrator's peak
    # memory.
    run.write_chunks("report.json", report_json(report))
    run.write_text("report.md", markdown(report))
    run.write_chunks("report.html", html_parts(report))
    xml = junit_xml(report)
    run.write_text("junit.xml", xml)
    if junit is not None:
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit.write_text(xml, encoding="utf-8")
    return report
