"""The runbook entry for a candidate (Symptom, Cause, What to do), and where it goes in
a runbook."""

from __future__ import annotations

import contextlib
import re
import textwrap

from agentflow.learn.fix import Fix
from agentflow.learn.rank import Candidate
from agentflow.learn.transcript import LINE_CHARS, found_by, md_code
from agentflow.learn.yaml_edit import flow_rule
from agentflow.textsafe import one_line, printable
from agentflow.workflow import format_duration

DIAGNOSIS_CHARS = 600
"""Characters of the model's diagnosis in an entry's Cause."""

_EXCEPTION = re.compile(r"\b([A-Z][A-Za-z0-9_]*(?:Error|Exception|Fault|Exit))\b")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FAILURE_SECTION = re.compile(r"failure|known (issue|problem)|troubleshoot", re.IGNORECASE)
_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")


def _wrap(first: str, text: str) -> list[str]:
    return textwrap.wrap(
        text,
        width=90,
        initial_indent=first,
        subsequent_indent="  ",
        break_long_words=False,
        break_on_hyphens=False,
    )


def entry(c: Candidate, level: int) -> str:
    """The runbook entry for a candidate: heading, Symptom, Cause, What to do."""
    r, fix = c.recovery, c.recovery.fix
    line = c.symptom or ""
    # A shell's error starts with the script's path, in the run's folder: not a name.
    short = re.sub(r"^\S*/\S+: (line \d+: )?", "", line) or line
    exc = _EXCEPTION.search(short)
    words = short.split()
    label = exc.group(1) if exc else " ".join(words[:6]) + (" …" if len(words) > 6 else "")
    label = label or r.status
    if fix.category and fix.category.lower() not in label.lower():
        label += f" ({fix.category})"
    how = f"{r.status} ({r.message})" if r.message and r.message != r.status else r.status
    out = [f"{'#' * level} Failure: {label} in {r.step}"]
    if line:
        shown = line if len(line) <= 200 else line[:200]
        out.append(f"- Symptom: `{r.step}` {how}; its log has")
        out.append(f"  {md_code(shown)}{' …' if len(line) > 200 else ''}")
    else:
        out.append(f"- Symptom: `{r.step}` {how}, with no line in its log that says why.")
    if fix.source == "model":
        said = " ".join(printable(fix.diagnosis or "", DIAGNOSIS_CHARS).split())
        cause = said.rstrip(".") or "not given"
        by = f"the model's diagnosis in run {r.run_id}"
        cause += f" ({by}; category: {fix.category})." if fix.category else f" ({by})."
        cause += f" {found}" if (found := found_by(list(fix.found_by))) else ""
    else:
        cause = (
            f"not recorded: recover rule {fix.rule_number} handled it in run {r.run_id} "
            "without a diagnosis. Write down why it happens."
        )
    out += _wrap("- Cause: ", cause)
    todo = _todo(r.step, fix, r.run_id)
    if c.times > 1:
        runs = ", ".join(c.seen_in)
        proof = f"It worked {c.times} times, in run{'s' * (len(c.seen_in) > 1)} {runs}."
    elif fix.action == "retry":
        proof = f"It worked in run {r.run_id}: attempt {r.attempt + 1} succeeded."
    else:
        proof = f"It worked in run {r.run_id}: the run succeeded without the step."
    out += _wrap("- What to do: ", f"{todo} {proof}")
    if fix.command_diff:
        out += _fenced("The model's change, approved in that run:", fix.command_diff.splitlines())
    if fix.fix_lines:
        out += _fenced("The model's patch, applied in that run:", list(fix.fix_lines))
    rule = c.rule or fix.rule
    if rule is not None:
        out.append(f"  The `recover:` rule of `{r.step}`:")
        out.append(f"  `{flow_rule(rule)}`")
    return "\n".join(out) + "\n"


def _fenced(title: str, lines: list[str]) -> list[str]:
    """``lines`` (the model's, printable and cut) as a diff block under ``title``, fenced
    with more backticks than any line has in a row: no line can end the block."""
    shown = [one_line(x, LINE_CHARS) if x.strip() else "" for x in lines]
    longest = max((len(m) for x in shown for m in re.findall(r"`+", x)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"  {title}", f"  {fence}diff", *[f"  {x}".rstrip() for x in shown], f"  {fence}"]


def _listed(values: tuple[str, ...] | list[str]) -> str:
    return ", ".join(md_code(v) for v in values)


# What to do to keep a change a `recover:` rule cannot make.
_KEEP_COMMAND = (
    "A `recover:` rule cannot change a command: if the change should stay, make it in the "
    "step's `run:`."
)
_KEEP_FILES = (
    "A `recover:` rule cannot change files: run {run} applied this patch to the workspace; "
    "keep it if it is right."
)
_KEEP_ENV = (
    "A `recover:` rule sets the environment of one step only: to keep it, set it in the "
    "workflow's `env:`."
)
_KEEP_INPUTS = "A `recover:` rule cannot change inputs: to keep {it}, change {default} (or {sets})."
_KEEP_RERUN = (
    "A `recover:` rule cannot rerun other steps: a `success:` check on {steps} would catch a "
    "bad result where it is made."
)


def _todo(step: str, fix: Fix, run_id: str) -> str:
    """What to do, and why a ``recover:`` rule cannot do it when it cannot."""
    if fix.action == "skip":
        return "skip the step: the run succeeded without it."
    parts = _changes(step, fix, run_id)
    changes = " and ".join(change for change, _ in parts)
    if fix.rerun:
        them = "them" if len(fix.rerun) > 1 else "it"
        did = f"rerun {_listed(fix.rerun)} (and the steps that need {them}), then retry `{step}`"
        text = f"{did} with {changes}." if changes else f"{did}."
        parts.append(("", _KEEP_RERUN.format(steps=_listed(fix.rerun))))
    else:
        text = f"retry with {changes}." if changes else "retry as is (the failure is transient)."
    if fix.wait:
        text = f"wait {format_duration(fix.wait)}, then {text}"
    return " ".join([text, *(keep for _, keep in parts if keep)])


def _changes(step: str, fix: Fix, run_id: str) -> list[tuple[str, str | None]]:
    """Each change the retry was made with, and what to do to keep it (None: the rule
    keeps it)."""
    out: list[tuple[str, str | None]] = []
    if fix.command_diff:
        out.append(("the changed command below", _KEEP_COMMAND))
    if fix.files:
        out.append((f"the change below to {_listed(fix.files)}", _KEEP_FILES.format(run=run_id)))
    if fix.set_env:
        env = _listed([one_line(f"{k}={v}", 100) for k, v in fix.set_env.items()])
        if fix.downstream:
            out.append((f"{env} for `{step}` and every step that needs it", _KEEP_ENV))
        else:
            out.append((env, None))
    if fix.inputs:
        values = [one_line(f"{k}={v}", 100) for k, v in fix.inputs.items()]
        sets = md_code(" ".join(f"--set {v}" for v in values))
        if len(values) == 1:
            change, keep = (
                "the input",
                _KEEP_INPUTS.format(it="it", default="the input's default", sets=sets),
            )
        else:
            change, keep = (
                "the inputs",
                _KEEP_INPUTS.format(it="them", default="their defaults", sets=sets),
            )
        out.append((f"{change} {_listed(values)} for the rest of the run", keep))
    return out


def add_entry(text: str, block: str, name: str) -> str:
    """``text`` (a runbook, '' for a new one) with ``block`` at the end of its failure-modes
    section (a heading that says failure, outside code blocks); else in a new
    ``## Failure modes`` at its end. ``block`` starts with a level-3 heading: it is moved
    one level below the section's."""
    lines = text.splitlines()
    headings: list[tuple[int, int, str]] = []  # (line, level, title)
    fence: str | None = None
    for i, line in enumerate(lines):
        m = _FENCE.match(line)
        if m:
            mark = m.group(1)
            if fence is None:
                fence = mark
            elif mark[0] == fence[0] and len(mark) >= len(fence) and not line.strip()[len(mark) :]:
                fence = None
            continue
        if fence is None and (h := _HEADING.match(line)):
            headings.append((i, len(h.group(1)), h.group(2)))
    section = next(
        ((i, lv) for i, lv, t in headings if _FAILURE_SECTION.search(t) and lv <= 3), None
    )
    if section is None:
        if not text.strip():
            title = f"# {name}\n\n## Failure modes\n\n"
            return title + block
        return text.rstrip("\n") + "\n\n## Failure modes\n\n" + block
    start, level = section
    end = next((i for i, lv, _ in headings if i > start and lv <= level), len(lines))
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    deeper = "#" * min(6, level + 1)
    block = re.sub(r"^###", deeper, block, count=1)
    new = [*lines[:end], "", *block.rstrip("\n").splitlines()]
    rest = lines[end:]
    if rest:
        new += ["", *rest] if rest[0].strip() else rest
    return "\n".join(new) + "\n"


def documented(texts: list[str], pattern: str, line: str | None) -> bool:
    """Whether a runbook already has the failure: a line the ``match`` finds, or the
    symptom line itself."""
    for text in texts:
        if line and line in text:
            return True
        with contextlib.suppress(re.error):
            if re.search(pattern, text, re.MULTILINE):
                return True
    return False
