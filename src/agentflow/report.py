"""Reports written when a run ends: ``report.md``, ``report.json``, ``junit.xml``."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from agentflow.display import describe
from agentflow.state import UNSUCCESSFUL, RunState
from agentflow.store import Event, RunDir
from agentflow.verify import tail
from agentflow.workflow.types import format_duration

_LOG_TAIL_BYTES = 4000


class StepReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    status: str
    attempts: int
    exit_code: int | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    outputs: dict[str, str]
    message: str | None
    log: str


class Report(BaseModel):
    """``report.json``: the run's outcome in a form tools can read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str
    workflow: str
    status: str
    message: str | None
    inputs: dict[str, str | int | float | bool]
    created_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    steps: list[StepReport]
    events: list[Event]


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


def build_report(run: RunDir, state: RunState) -> Report:
    steps = [
        StepReport(
            id=step_id,
            status=st.status,
            attempts=st.attempts,
            exit_code=st.exit_code,
            started_at=st.started_at,
            finished_at=st.finished_at,
            duration_s=_seconds(st.started_at, st.finished_at),
            outputs=st.outputs,
            message=st.message,
            log=str(run.step_dir(step_id) / "output.log"),
        )
        for step_id, st in state.steps.items()
    ]
    return Report(
        run_id=state.run_id,
        workflow=state.workflow,
        status=state.status,
        message=state.message,
        inputs=state.inputs,
        created_at=state.created_at,
        finished_at=state.finished_at,
        duration_s=_seconds(state.created_at, state.finished_at),
        steps=steps,
        events=run.read_events(),
    )


def write_reports(run: RunDir, state: RunState, junit: Path | None = None) -> Report:
    """Write the three reports into the run directory (and the JUnit file to ``junit``)."""
    report = build_report(run, state)
    run.write_text("report.json", report.model_dump_json(indent=2))
    run.write_text("report.md", markdown(report))
    xml = junit_xml(run, report)
    run.write_text("junit.xml", xml)
    if junit is not None:
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit.write_text(xml, encoding="utf-8")
    return report


def _fmt(seconds: float | None) -> str:
    return "" if seconds is None else format_duration(seconds)


def markdown(report: Report) -> str:
    lines = [
        f"# {report.workflow}: {report.status}",
        "",
        f"- run: `{report.run_id}`",
        f"- started: {report.created_at.astimezone():%Y-%m-%d %H:%M:%S}",
        f"- duration: {_fmt(report.duration_s)}",
    ]
    if report.message:
        lines.append(f"- note: {report.message}")
    if report.inputs:
        lines.append("- inputs: " + ", ".join(f"`{k}={v}`" for k, v in report.inputs.items()))
    lines += ["", "## Steps", "", "| step | status | attempts | time | exit | note |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for s in report.steps:
        exit_code = "" if s.exit_code is None else str(s.exit_code)
        note = (s.message or "").replace("|", "\\|")
        lines.append(
            f"| {s.id} | {s.status} | {s.attempts} | {_fmt(s.duration_s)} | {exit_code} | {note} |"
        )
    lines += ["", "## Timeline", ""]
    for e in report.events:
        lines.append(f"- {e.ts.astimezone():%H:%M:%S} **{e.step or 'run'}** {describe(e)}")
    return "\n".join(lines) + "\n"


def junit_xml(run: RunDir, report: Report) -> str:
    """One test case per step; failures carry the message and the tail of the log."""
    failures = sum(1 for s in report.steps if s.status in UNSUCCESSFUL)
    skipped = sum(1 for s in report.steps if s.status in ("skipped", "pending", "blocked"))
    suite = ET.Element(
        "testsuite",
        name=report.workflow,
        tests=str(len(report.steps)),
        failures=str(failures),
        errors="0",
        skipped=str(skipped),
        time=f"{report.duration_s or 0:.3f}",
        timestamp=report.created_at.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    for s in report.steps:
        case = ET.SubElement(
            suite, "testcase", classname=report.workflow, name=s.id, time=f"{s.duration_s or 0:.3f}"
        )
        if s.status in UNSUCCESSFUL:
            message = f"{s.status}: {s.message or ''}".strip(": ")
            failure = ET.SubElement(case, "failure", message=message, type=s.status)
            failure.text = tail(run.step_dir(s.id) / "output.log", _LOG_TAIL_BYTES)
        elif s.status in ("skipped", "pending", "blocked"):
            ET.SubElement(case, "skipped", message=s.message or s.status)
        out = ET.SubElement(case, "system-out")
        out.text = tail(run.step_dir(s.id) / "output.log", _LOG_TAIL_BYTES)
    suites = ET.Element("testsuites")
    suites.append(suite)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
