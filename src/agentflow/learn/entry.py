"""The runbook entry for a candidate (Symptom, Cause, What to do), and where it goes in
a runbook."""

from __future__ import annotations

import contextlib
import re
import textwrap

from agentflow.learn.rank import Candidate
from agentflow.learn.recoveries import Fix
from agentflow.learn.yaml_edit import flow_rule

_EXCEPTION = re.compile(r"\b([A-Z][A-Za-z0-9_]*(?:Error|Exception|Fault|Exit))\b")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FAILURE_SECTION = re.compile(r"failure|known (issue|problem)|troubleshoot", re.IGNORECASE)
_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")


def _code(text: str) -> str:
    """``text`` as Markdown inline code."""
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


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
        out.append(f"  {_code(shown)}{' …' if len(line) > 200 else ''}")
    else:
        out.append(f"- Symptom: `{r.step}` {how}, with no line in its log that says why.")
    if fix.source == "model":
        cause = (fix.diagnosis or "").strip().rstrip(".") or "not given"
        by = f"the model's diagnosis in run {r.run_id}"
        cause += f" ({by}; category: {fix.category})." if fix.category else f" ({by})."
    else:
        cause = (
            f"not recorded: recover rule {fix.rule_number} handled it in run {r.run_id} "
            "without a diagnosis. Write down why it happens."
        )
    out += _wrap("- Cause: ", cause)
    todo = _todo(fix)
    if c.times > 1:
        runs = ", ".join(c.seen_in)
        proof = f"It worked {c.times} times, in run{'s' * (len(c.seen_in) > 1)} {runs}."
    elif fix.action == "retry":
        proof = f"It worked in run {r.run_id}: attempt {r.attempt + 1} succeeded."
    else:
        proof = f"It worked in run {r.run_id}: the run succeeded without the step."
    out += _wrap("- What to do: ", f"{todo} {proof}")
    if fix.command_diff:
        out.append("  The model's change, approved in that run:")
        out.append("  ```diff")
        out += [f"  {x}".rstrip() for x in fix.command_diff.splitlines()]
        out.append("  ```")
    rule = c.rule or fix.rule
    if rule is not None:
        out.append(f"  The `recover:` rule of `{r.step}`:")
        out.append(f"  `{flow_rule(rule)}`")
    return "\n".join(out) + "\n"


def _todo(fix: Fix) -> str:
    if fix.action == "skip":
        return "skip the step: the run succeeded without it."
    if fix.command_diff:
        return (
            "retry with the changed command below"
            + (
                f" and {', '.join(f'`{k}={v}`' for k, v in fix.set_env.items())}"
                if fix.set_env
                else ""
            )
            + ". A `recover:` rule cannot change a command: if the change should stay, make it "
            "in the step's `run:`."
        )
    if fix.set_env:
        return "retry with " + ", ".join(f"`{k}={v}`" for k, v in fix.set_env.items()) + "."
    return "retry as is (the failure is transient)."


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
