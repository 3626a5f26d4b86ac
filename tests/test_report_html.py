"""The HTML report: one self-contained page, well-formed, with a bar per attempt; rendered
for real in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agentflow.report.palette import COLOURS, READY
from agentflow.state import RunState, StepState
from agentflow.store import Event, Store
from test_report import MIXED

from conftest import Env, run_id_of

VOID = {"meta", "br", "hr", "img", "input", "link", "col", "wbr", "source", "area", "base"}
# Elements of the inline SVG that close themselves (<line/>), as XML allows in HTML's SVG.
SELF_CLOSING = {"line", "rect", "circle", "polygon", "path"}


class TagChecker(HTMLParser):
    """Every element closed, in order: the page is well-formed."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID | SELF_CLOSING:
            self.problems.append(f"<{tag}/> is not a void element")

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()


def well_formed(page: str) -> None:
    checker = TagChecker()
    checker.feed(page)
    checker.close()
    assert checker.problems == []
    assert checker.stack == []


def svg_of(page: str) -> ET.Element:
    """The chart, parsed as XML (stricter than a browser)."""
    m = re.search(r"<svg .*?</svg>", page, re.S)
    assert m
    return ET.fromstring(m.group(0))


def bars(svg: ET.Element) -> list[tuple[str, int, str, str]]:
    """(step, attempt, status, colour) of each bar."""
    return [
        (
            r.attrib["data-step"],
            int(r.attrib["data-attempt"]),
            r.attrib["data-status"],
            r.attrib["fill"],
        )
        for r in svg.iter("rect")
        if r.get("class") == "bar"
    ]


def test_html_report_has_the_chart_and_every_section(af: Env) -> None:
    res = af.cli("run", str(af.write(MIXED)))
    rid = run_id_of(res.stdout)
    res = af.cli("report", rid, "--html")
    assert res.returncode == 0, res.stderr
    path = Path(res.stdout.strip())
    assert path == af.run_dir(rid) / "report.html"
    page = path.read_text()
    well_formed(page)
    assert page.startswith("<!DOCTYPE html>")
    # Self-contained: nothing fetched, nothing run.
    assert "http://" not in page
    assert "https://" not in page
    for needle in ("<script", "<link", " src=", "url("):
        assert needle not in page
    for title in ("Timeline", "Steps", "Outputs", "Metrics", "Retries and decisions"):
        assert f"<h2>{title}</h2>" in page
    assert "<h2>Failed steps</h2>" in page

    svg = svg_of(page)
    assert bars(svg) == [
        ("serve", 1, "succeeded", COLOURS["succeeded"]),
        ("flaky", 1, "failed", COLOURS["failed"]),
        ("flaky", 2, "succeeded", COLOURS["succeeded"]),
        ("broken", 1, "failed", COLOURS["failed"]),
    ]
    rows = [g.attrib["data-step"] for g in svg.iter("g") if g.get("class") == "step"]
    assert rows == ["serve", "flaky", "broken", "after"]
    ready = [p for p in svg.iter("polygon") if p.get("class") == "ready"]
    assert len(ready) == 1
    assert ready[0].attrib["fill"] == READY
    assert len([w for w in svg.iter("line") if w.get("class") == "wait"]) == 1  # flaky's retry
    ticks = [t.text for t in svg.iter("text") if t.get("class") == "tick"]
    assert ticks[0] == "0"
    assert len(ticks) >= 3
    # The chart's bars lie in time order along x.
    xs = {
        (r.attrib["data-step"], r.attrib["data-attempt"]): float(r.attrib["x"])
        for r in svg.iter("rect")
        if r.get("class") == "bar"
    }
    assert xs[("serve", "1")] < xs[("flaky", "1")] < xs[("flaky", "2")] < xs[("broken", "1")]

    # The failed step's log, escaped (and cleaned of colour codes).
    assert "Traceback &lt;oops&gt; &amp; &quot;stuff&quot;" in page
    assert "<oops>" not in page
    assert "\x1b" not in page
    assert "retry 1/2 in" in page

    out = af.workspace / "pages" / "mixed.html"
    res = af.cli("report", rid, "--html", "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(out)
    assert out.read_text().count('class="bar"') == 4


def synthetic_run(af: Env, count: int) -> str:
    """A finished run of ``count`` steps (each a second long, every tenth retried once),
    written through the real store as the runner would."""
    store = Store(af.home)
    run = store.create("wide")
    t0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    steps: dict[str, StepState] = {}
    events = [Event(ts=t0, kind="run_started", message=f"{count} steps")]
    for i in range(count):
        step_id = f"step-{i:03d}-" + "x" * (i % 40)  # some ids longer than the label column
        start = t0 + timedelta(seconds=i * 0.5)
        tries = 2 if i % 10 == 0 else 1
        for n in range(1, tries + 1):
            begin = start + timedelta(seconds=(n - 1) * 1.5)
            status = "failed" if n < tries or i % 37 == 5 else "succeeded"
            events.append(
                Event(ts=begin, kind="step_started", step=step_id, attempt=n, status="running")
            )
            events.append(
                Event(ts=begin + timedelta(seconds=1), kind="step_finished", step=step_id,
                      attempt=n, status=status, exit_code=0 if status == "succeeded" else 1)
            )  # fmt: skip
        end = begin + timedelta(seconds=1)
        steps[step_id] = StepState(
            status=status, attempts=tries, exit_code=0 if status == "succeeded" else 1,
            started_at=begin, finished_at=end,
        )  # fmt: skip
    finished = max(s.finished_at for s in steps.values() if s.finished_at)
    events.append(Event(ts=finished, kind="run_finished", status="failed"))
    state = RunState(
        run_id="wide", workflow="wide", workflow_file="wide.yaml", workspace=str(af.workspace),
        status="failed", created_at=t0, finished_at=finished, steps=steps,
    )  # fmt: skip
    run.write_state(state)
    for e in events:
        run.append_event(e)
    return run.run_id


def test_html_report_stays_readable_for_one_step_and_for_200(af: Env) -> None:
    res = af.cli(
        "run", str(af.write("version: 1\nname: one\nsteps:\n  - id: only\n    run: echo hi\n"))
    )
    one = af.cli("report", run_id_of(res.stdout), "--html")
    assert one.returncode == 0, one.stderr
    small = svg_of(Path(one.stdout.strip()).read_text())
    assert [b[:3] for b in bars(small)] == [("only", 1, "succeeded")]

    rid = synthetic_run(af, 200)
    wide = af.cli("report", rid, "--html")
    assert wide.returncode == 0, wide.stderr
    page = Path(wide.stdout.strip()).read_text()
    well_formed(page)
    big = svg_of(page)
    assert len([g for g in big.iter("g") if g.get("class") == "step"]) == 200
    assert len(bars(big)) == 220  # every tenth step tried twice
    ticks = list(dict.fromkeys(t.text for t in big.iter("text") if t.get("class") == "tick"))
    assert ticks == ["0", "15s", "30s", "45s", "1m", "1m15s", "1m30s"]  # of 1m40s
    # Same width and row height whatever the count: the page grows, the text never shrinks.
    _, _, w1, h1 = (float(v) for v in small.attrib["viewBox"].split())
    _, _, w200, h200 = (float(v) for v in big.attrib["viewBox"].split())
    assert w1 == w200
    row = 26
    assert h200 - h1 == pytest.approx(199 * row + 28 - 8)  # and an axis at the bottom too
    # Long ids are cut to fit the label column; the hover title has them whole.
    labels = [t for t in big.iter("text") if t.get("class") == "label"]
    shown = [t.find("title").tail or "" for t in labels]  # type: ignore[union-attr]
    assert max(len(x) for x in shown) <= 24
    assert sum(x.endswith("…") for x in shown) > 50
    assert all(
        x.rstrip("…") in (t.findtext("title") or "") for t, x in zip(labels, shown, strict=True)
    )
    assert len(page) < 1_000_000

    md = af.cli("report", rid)
    table = [
        line
        for line in md.stdout.split("## Steps")[1].split("##")[0].splitlines()
        if line.startswith("|")
    ]
    assert len(table) == 202  # header, rule, 200 steps
    assert len({len(line) for line in table}) == 1


def chromium() -> str | None:
    return next(
        (
            p
            for name in ("chromium", "chromium-browser", "google-chrome")
            if (p := shutil.which(name))
        ),
        None,
    )


def screenshot(page: Path, png: Path, profile: Path) -> Image.Image:
    browser = chromium()
    if browser is None:
        pytest.skip(
            "no chromium binary on PATH to render the page in "
            "(scripts/chromium-setup installs Debian's chromium)"
        )
    subprocess.run(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1280,900",
         page.as_uri()],
        capture_output=True, timeout=90, check=True,
    )  # fmt: skip
    return Image.open(png).convert("RGB")


def longest_run(img: Image.Image, colour: str, tolerance: int = 24) -> int:
    """The widest horizontal stretch of pixels of about ``colour``."""
    want = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
    near = (np.abs(np.asarray(img, dtype=np.int16) - want) <= tolerance).all(axis=2)
    best = 0
    for row in near[near.any(axis=1)]:
        edges = np.diff(np.concatenate(([0], row.astype(np.int8), [0])))
        best = max(best, int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max()))
    return best


def test_html_report_renders_in_chromium(af: Env, tmp_path: Path) -> None:
    res = af.cli("run", str(af.write(MIXED)))
    rid = run_id_of(res.stdout)
    res = af.cli("report", rid, "--html")
    assert res.returncode == 0, res.stderr
    img = screenshot(Path(res.stdout.strip()), tmp_path / "shot.png", tmp_path / "profile")
    assert img.size == (1280, 900)
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None
    assert len(colours) > 200, "a blank or nearly blank page"
    # The bars, not only the badges: a badge is at most ~120 pixels wide; the service's bar
    # spans most of the chart, the failed step's a third of it.
    assert longest_run(img, COLOURS["succeeded"]) > 400
    assert longest_run(img, COLOURS["failed"]) > 150
    assert longest_run(img, READY) >= 8  # the ready marker
