"""``agentflow learn``: turn the failures a run recovered from into a runbook entry and a
``recover:`` rule, as a patch a person reviews.

A recovery is a failed attempt, a decision about it (a ``recover:`` rule that matched, or
the model's diagnosis with ``on_failure: diagnose``) and the next attempt of the step
succeeding (or, for a ``skip``, the run succeeding). All of it is read from the run's
``events.jsonl``, its frozen ``workflow.yaml`` and the attempts' logs.

For each recovery: the symptom is one line of the failed attempt's log (the last one that
looks like an error and is not in the log of the attempt that succeeded), the rule's
``match`` that line escaped (numbers, hex ids and the run's own folder made general), and
the fix the decision:
``retry`` with the model's ``env`` as ``set_env``, a plain ``retry``, or ``skip``. A change
of command cannot be a rule: the runbook entry shows it and says so.

The workflow file is edited by inserting text where the step is (its comments and layout
stay), and the result must load, with agentflow's own loader, to exactly the workflow plus
the rule; otherwise nothing is proposed for it and the rule is shown to add by hand.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import re
import stat
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from agentflow.agent import logscan
from agentflow.errors import AgentflowError, UsageError, WorkflowError
from agentflow.runbook import read as runbook_text
from agentflow.state import UNSUCCESSFUL, RunState
from agentflow.store import Event, RunDir, Store
from agentflow.textsafe import printable
from agentflow.verify import tail
from agentflow.workflow import Workflow, format_duration, parse_workflow
from agentflow.workflow.load import BoundedLoader
from agentflow.workflow.model import RecoverRule

MATCH_BYTES = 64 * 1024
"""How much of a failed attempt's log a ``recover:`` rule is matched against."""
LONGEST_MATCH = 100
"""A symptom line longer than this gives a ``match`` of its start only."""

_DIAGNOSIS = re.compile(
    r"(?P<action>\w+): (?P<diagnosis>.*) \[(?P<category>[^\[\]]*); \d+ tokens\]", re.DOTALL
)
_RULE = re.compile(r"recover rule (\d+) matched")
_ENV_LINE = re.compile(r"\+env ([A-Za-z_][A-Za-z0-9_]*)=(.*)")
_EXCEPTION = re.compile(r"\b([A-Z][A-Za-z0-9_]*(?:Error|Exception|Fault|Exit))\b")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FAILURE_SECTION = re.compile(r"failure|known (issue|problem)|troubleshoot", re.IGNORECASE)
_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")


class NothingToLearn(AgentflowError):
    """The run has no failure that a rule or a diagnosis turned into a success."""


# --- what happened in a run ----------------------------------------------------------------


@dataclass(frozen=True)
class Fix:
    """What was decided about a failed attempt, and carried out."""

    source: Literal["model", "rule"]
    action: Literal["retry", "skip"]
    set_env: dict[str, str] = field(default_factory=dict)
    command_diff: str | None = None
    """The model's change of the step's command (a diff), when it made one."""
    diagnosis: str | None = None
    category: str | None = None
    rule: RecoverRule | None = None
    """The rule that matched (``source == "rule"``), as the run's workflow had it."""
    rule_number: int | None = None

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...], str | None]:
        """What makes two fixes the same: what was done, whoever decided it."""
        return self.action, tuple(sorted(self.set_env.items())), self.command_diff

    def describe(self) -> str:
        who = (
            "the model"
            if self.source == "model"
            else f"recover rule {self.rule_number}"
            + (f" (/{self.rule.match}/)" if self.rule else "")
        )
        return f"{who}: {self.what()}"

    def what(self) -> str:
        if self.action == "skip":
            return "skip the step"
        changes = []
        if self.command_diff:
            changes.append("a changed command")
        if self.set_env:
            changes.append(", ".join(f"{k}={v}" for k, v in self.set_env.items()))
        return "retry with " + " and ".join(changes) if changes else "retry as is"


@dataclass(frozen=True)
class Recovery:
    """A failed attempt of a step, and the fix that got the step (or the run) through."""

    run_id: str
    step: str
    attempt: int
    """The attempt that failed."""
    status: str
    message: str | None
    """The step's note for that attempt (``exit code 1``)."""
    fix: Fix


@dataclass
class _Pending:
    attempt: int
    status: str
    message: str | None
    rule_number: int | None = None
    diagnosis: dict[str, str] | None = None
    proposal: str | None = None
    retry_message: str | None = None


def find_recoveries(
    run_id: str, events: list[Event], workflow: Callable[[], Workflow | None], succeeded: bool
) -> list[Recovery]:
    """The recoveries in one run's events, in order. ``workflow`` gives the run's own
    workflow (read only when a rule's content is needed)."""
    pending: dict[str, _Pending] = {}
    found: list[Recovery] = []
    skips: list[Recovery] = []
    for e in events:
        if e.step is None:
            continue
        p = pending.get(e.step)
        if e.kind == "step_finished":
            if e.status in UNSUCCESSFUL:
                pending[e.step] = _Pending(e.attempt or 0, e.status or "failed", e.message)
            elif e.status == "succeeded":
                pending.pop(e.step, None)
                if p is not None and p.retry_message is not None and e.attempt == p.attempt + 1:
                    fix = _fix(p, e.step, workflow)
                    if fix is not None:
                        found.append(Recovery(run_id, e.step, p.attempt, p.status, p.message, fix))
            continue
        if p is None:
            continue
        if e.kind == "rule_matched":
            m = _RULE.search(e.message or "")
            p.rule_number = int(m.group(1)) if m else None
        elif e.kind == "diagnosis":
            m = _DIAGNOSIS.fullmatch(e.message or "")
            p.diagnosis = m.groupdict() if m else None
        elif e.kind == "command_proposed":
            p.proposal = e.message or ""
        elif e.kind == "retry_scheduled":
            p.retry_message = e.message or ""
        elif e.kind == "step_skipped":
            fix = _fix(p, e.step, workflow, skip=True)
            if fix is not None:
                skips.append(Recovery(run_id, e.step, p.attempt, p.status, p.message, fix))
            pending.pop(e.step, None)
        elif e.kind in ("escalated", "step_requeued"):
            pending.pop(e.step, None)  # a person decides, or a resume reruns it: no fix
    # A skip got the run through only if the run succeeded.
    return found + skips if succeeded else found


def _fix(
    p: _Pending, step: str, workflow: Callable[[], Workflow | None], skip: bool = False
) -> Fix | None:
    action: Literal["retry", "skip"] = "skip" if skip else "retry"
    if p.rule_number is not None:
        wf = workflow()
        rule = None
        if wf is not None:
            with contextlib.suppress(KeyError, IndexError):
                rule = wf.step(step).recover[p.rule_number - 1]
        if rule is None:
            return None
        return Fix("rule", action, dict(rule.set_env), rule=rule, rule_number=p.rule_number)
    d = p.diagnosis
    if d is None:
        return None  # the retry policy, or a person: nothing was decided about this failure
    category = d["category"] if d["category"] != "uncategorised" else None
    if d["action"] == "skip" and skip:
        return Fix("model", "skip", diagnosis=d["diagnosis"], category=category)
    if skip or d["action"] not in ("retry", "retry_with_changes"):
        return None
    env, diff = _model_changes(p.proposal or "", p.retry_message or "")
    return Fix("model", "retry", env, diff or None, diagnosis=d["diagnosis"], category=category)


def _model_changes(proposal: str, retry_message: str) -> tuple[dict[str, str], str]:
    """The environment and the command diff of a ``command_proposed`` event: the diff,
    then one ``+env NAME=VALUE`` line per variable; ``retry_scheduled`` shows the same
    variables as ``(env A=1, B=2)``, which tells them from a diff line that looks alike."""
    lines = proposal.splitlines()
    shown = re.search(r"\(env (.*)\)\s*$", retry_message, re.DOTALL)
    env_lines: list[tuple[str, str]] = []
    for line in reversed(lines):
        m = _ENV_LINE.fullmatch(line)
        if not m:
            break
        env_lines.insert(0, (m.group(1), m.group(2)))
    count = 0
    if shown:
        for k in range(len(env_lines), 0, -1):
            if ", ".join(f"{n}={v}" for n, v in env_lines[-k:]) == shown.group(1):
                count = k
                break
    env = dict(env_lines[len(env_lines) - count :]) if count else {}
    diff = "\n".join(lines[: len(lines) - count]).strip("\n")
    return env, diff


# --- the symptom ----------------------------------------------------------------------------


def attempt_log(run: RunDir, state: RunState, step: str, attempt: int) -> Path:
    folder = run.step_dir(step)
    st = state.steps.get(step)
    if st is not None and attempt < st.attempts:
        folder = folder / f"attempt-{attempt}"
    return folder / "output.log"


def _clean(line: str) -> str:
    return printable(line).strip()


def symptom_line(
    failed: str, succeeded: str | None, pattern: str | None = None, volatile: tuple[str, ...] = ()
) -> str | None:
    """The line of a failed attempt's log that shows the failure: the last that ``pattern``
    matches; else, of its last 200 lines, the last that looks like an error and that the
    attempt that succeeded did not print (numbers aside), else the last it did not print,
    else the last that looks like an error."""
    lines = [c for c in (_clean(x) for x in failed.splitlines()) if c]
    if pattern is not None:
        hits = [x for x in lines if re.search(pattern, x)]
        if hits:
            return hits[-1]
        m = re.search(pattern, failed, re.MULTILINE)
        return _clean(m.group(0).splitlines()[0]) if m and m.group(0).strip() else None
    lines = lines[-200:]

    def new(line: str) -> bool:
        return not succeeded or not re.search(match_for(line, volatile), succeeded, re.MULTILINE)

    errors = [x for x in lines if logscan.ERROR.search(x)]
    for group in ([x for x in errors if new(x)], [x for x in lines if new(x)], errors):
        if group:
            return group[-1]
    return None


_TOKEN = re.compile(
    r"\x00|0x[0-9a-fA-F]+|\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b|\d+|.",
    re.DOTALL,
)


def match_for(line: str, volatile: tuple[str, ...] = ()) -> str:
    """A ``match`` for ``line``: its text escaped, with numbers, hex ids and the
    ``volatile`` parts (the run's own folder and id) made general, cut to its start when
    long."""
    text = line.replace("\x00", "")
    for v in sorted((v for v in volatile if v), key=len, reverse=True):
        text = text.replace(v, "\x00")
    if len(text) > LONGEST_MATCH:
        cut = text.rfind(" ", 0, LONGEST_MATCH)
        text = text[: cut if cut > LONGEST_MATCH // 2 else LONGEST_MATCH].rstrip()
    out: list[str] = []
    for m in _TOKEN.finditer(text):
        t = m.group(0)
        if t == "\x00":
            out.append(".*")
        elif t.startswith("0x") and len(t) > 2:
            out.append(r"0x[0-9a-fA-F]+")
        elif len(t) >= 8 and not t.isdigit():
            out.append(r"[0-9a-fA-F]+")
        elif t.isdigit():
            out.append(r"\d+")
        elif t in "\\.^$*+?{}[]|()":
            out.append("\\" + t)
        elif ord(t) < 0x20 or ord(t) == 0x7F:
            out.append(f"\\x{ord(t):02x}")
        else:
            out.append(t)
    return "".join(out)


# --- candidates -----------------------------------------------------------------------------


@dataclass
class Candidate:
    """One fix to learn: the latest recovery of its kind in the run, and how often the same
    fix of the same step got a run of this workflow through."""

    recovery: Recovery
    seen_in: list[str]
    """The runs (this one included) where the same step was fixed the same way."""
    times: int
    symptom: str | None = None
    rule: RecoverRule | None = None
    """The rule to propose (None: none can be, see ``notes``)."""
    notes: list[str] = field(default_factory=list)


def _runs_of(store: Store, name: str, skip: str) -> list[tuple[RunDir, RunState]]:
    out = []
    for other in store.list():
        if other.run_id == skip:
            continue
        try:
            st = other.read_state()
        except AgentflowError:
            continue
        if st.workflow == name:
            out.append((other, st))
    return out


def _frozen(run: RunDir) -> Callable[[], Workflow | None]:
    cache: list[Workflow | None] = []

    def read() -> Workflow | None:
        if not cache:
            try:
                text = run.workflow_path.read_text(encoding="utf-8")
                cache.append(parse_workflow(text, str(run.workflow_path)))
            except (OSError, WorkflowError):
                cache.append(None)
        return cache[0]

    return read


def rank(store: Store, run: RunDir, state: RunState) -> list[Candidate]:
    """The run's recoveries, one per step and fix, the most repeated first (counted over
    every run of the workflow in this home), then in the order they happened."""
    mine = find_recoveries(run.run_id, run.read_events(), _frozen(run), state.status == "succeeded")
    if not mine:
        going = f" (it is {state.status}: try again when it is over)" if not state.finished else ""
        raise NothingToLearn(
            f"run {run.run_id} recovered from nothing: no rule or diagnosis led to a success"
            + going
        )
    groups: dict[tuple[object, ...], Candidate] = {}
    for r in mine:
        key = (r.step, r.fix.key)
        if key in groups:
            groups[key].recovery = r  # the latest: its log is the freshest
            groups[key].times += 1
        else:
            groups[key] = Candidate(r, [run.run_id], 1)
    for other, st in _runs_of(store, state.workflow, run.run_id):
        theirs = find_recoveries(
            other.run_id, other.read_events(), _frozen(other), st.status == "succeeded"
        )
        for r in theirs:
            c = groups.get((r.step, r.fix.key))
            if c is not None:
                c.times += 1
                if other.run_id not in c.seen_in:
                    c.seen_in.append(other.run_id)
    order = list(groups.values())
    return sorted(order, key=lambda c: -c.times)  # stable: ties keep the run's order


# --- editing the workflow file --------------------------------------------------------------


class EditFailed(Exception):
    """The targeted insertion did not give the intended workflow."""


def _flow_rule(rule: RecoverRule) -> str:
    """A rule as one line of YAML (a flow mapping), ``match`` single-quoted."""
    parts = [f"match: '{rule.match.replace(chr(39), chr(39) * 2)}'", f"action: {rule.action}"]
    if rule.set_env:
        env = ", ".join(
            f"{k}: {json.dumps(v, ensure_ascii=False)}" for k, v in rule.set_env.items()
        )
        parts.append(f"set_env: {{{env}}}")
    if rule.wait:
        parts.append(f"wait: {format_duration(rule.wait)}")
    if rule.message:
        parts.append(f"message: {json.dumps(rule.message, ensure_ascii=False)}")
    if rule.limit != 1:
        parts.append(f"limit: {rule.limit}")
    return "{" + ", ".join(parts) + "}"


def _content_end(text: str, node: yaml.Node) -> int:
    """Where the last character of ``node``'s own text is (exclusive): not the comments and
    blank lines a block collection's end takes in."""
    if isinstance(node, yaml.MappingNode) and not node.flow_style and node.value:
        return _content_end(text, node.value[-1][1])
    if isinstance(node, yaml.SequenceNode) and not node.flow_style and node.value:
        return _content_end(text, node.value[-1])
    return len(text[: node.end_mark.index].rstrip())


def _insert_after_line(text: str, index: int, new_lines: list[str]) -> str:
    """``text`` with ``new_lines`` inserted after the line holding ``index``."""
    nl = text.find("\n", index)
    if nl == -1:
        text += "\n"
        nl = len(text) - 1
    return text[: nl + 1] + "".join(line + "\n" for line in new_lines) + text[nl + 1 :]


def _get(node: yaml.Node, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return k, v
    return None


def _root(text: str) -> yaml.MappingNode:
    try:
        node = yaml.compose(text, Loader=BoundedLoader)
    except yaml.YAMLError as e:
        raise EditFailed(f"YAML: {e}") from None
    if not isinstance(node, yaml.MappingNode) or node.flow_style:
        raise EditFailed("the file is not a block mapping")
    return node


def _checked(new: str, filename: str, expected: dict[str, Any]) -> str:
    try:
        got = parse_workflow(new, filename).model_dump()
    except WorkflowError as e:
        raise EditFailed(str(e)) from None
    if got != expected:
        raise EditFailed("the edited file loads to something else")
    return new


def add_rule(text: str, filename: str, step_id: str, rule: RecoverRule, note: str) -> str:
    """``text`` with ``rule`` appended to the ``recover:`` of step ``step_id``, inserted
    where the step is; checked by loading the result. EditFailed when it cannot be done
    without rewriting the file."""
    expected = parse_workflow(text, filename).model_dump()
    index = next(i for i, s in enumerate(expected["steps"]) if s["id"] == step_id)
    expected["steps"][index]["recover"].append(rule.model_dump())
    root = _root(text)
    steps = _get(root, "steps")
    if steps is None or not isinstance(steps[1], yaml.SequenceNode):
        raise EditFailed("no list of steps")
    step = steps[1].value[index]
    if not isinstance(step, yaml.MappingNode) or step.flow_style or not step.value:
        raise EditFailed(f"step {step_id} is not written as a block mapping")
    item = f"- {_flow_rule(rule)}  # {note}"
    tries: list[Callable[[], str]] = []
    recover = _get(step, "recover")
    if recover is not None:
        key, value = recover
        if isinstance(value, yaml.SequenceNode) and not value.flow_style and value.value:
            line = " " * value.start_mark.column + item
            end = _content_end(text, value)
            tries.append(lambda: _insert_after_line(text, end, [line]))
        # Any other form (a flow list): the key's value written again as a block list.
        indent = " " * (key.start_mark.column + 2)
        old = parse_workflow(text, filename).steps[index].recover
        items = [f"{indent}- {_flow_rule(r)}" for r in old] + [indent + item]
        start, stop = key.start_mark.index, _content_end(text, value)
        tries.append(lambda: text[:start] + "recover:\n" + "\n".join(items) + text[stop:])
    else:
        col = step.start_mark.column
        lines = [" " * col + "recover:", " " * (col + 2) + item]
        step_end = _content_end(text, step)
        tries.append(lambda: _insert_after_line(text, step_end, lines))
        # After the step's first key (its id, usually), when its end is hard to tell.
        first_end = _content_end(text, step.value[0][1])
        tries.append(lambda: _insert_after_line(text, first_end, lines))
    problem = ""
    for attempt in tries:
        try:
            return _checked(attempt(), filename, expected)
        except EditFailed as e:
            problem = str(e)
    raise EditFailed(problem)


def add_doc(text: str, filename: str, doc: str) -> str:
    """``text`` with ``docs: [doc]`` (the workflow has no runbook yet): after its
    ``description``, else its ``name``; checked by loading the result."""
    expected = parse_workflow(text, filename).model_dump()
    expected["docs"] = [doc]
    root = _root(text)
    line = f"docs: [{doc}]" if re.fullmatch(r"[\w./-]+", doc) else f"docs: [{json.dumps(doc)}]"
    existing = _get(root, "docs")
    if existing is not None:
        value = existing[1]
        new = (
            text[: value.start_mark.index]
            + line.removeprefix("docs: ")
            + text[value.end_mark.index :]
        )
        return _checked(new, filename, expected)
    after = _get(root, "description") or _get(root, "name")
    if after is None:
        raise EditFailed("no name")
    col = root.start_mark.column
    new = _insert_after_line(text, _content_end(text, after[1]), [" " * col + line])
    return _checked(new, filename, expected)


# --- the runbook ----------------------------------------------------------------------------


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
        out.append(f"  `{_flow_rule(rule)}`")
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


# --- the proposal ---------------------------------------------------------------------------


@dataclass
class Change:
    """One file, before (None: it is new) and after."""

    path: Path
    old: str | None
    new: str
    what: list[str] = field(default_factory=list)


@dataclass
class Proposal:
    run_id: str
    workflow: Path
    """The workflow file the proposal is for."""
    root: Path
    """Where the patch applies (``git apply`` / ``patch -p1``): the top of the git
    repository holding the workflow, else the workflow's folder."""
    candidates: list[Candidate]
    changes: list[Change]
    warnings: list[str]

    def header(self) -> str:
        """What the patch is about, as ``#`` lines (``git apply`` and ``patch`` skip them)."""
        n = len(self.candidates)
        order = ", the most repeated first" if n > 1 else ""
        out = [f"# agentflow learn {self.run_id}: {n} recover{'ies' if n > 1 else 'y'}{order}"]
        for i, c in enumerate(self.candidates, 1):
            r = c.recovery
            out.append(f"# {i}. {r.step} {r.status}: {c.symptom or '(no log line)'}")
            same = ""
            if c.times > 1:
                runs = ", ".join(c.seen_in)
                same = f"; the same fix {c.times} times (run{'s' * (len(c.seen_in) > 1)} {runs})"
            out.append(f"#    {r.fix.describe()}{same}")
            out += [f"#    {note}" for note in c.notes]
        if self.changes:
            out.append(
                f"# apply: agentflow learn {self.run_id} --apply; or save this with -o FILE, "
                f"then `git apply FILE` (or `patch -p1 < FILE`) in {self.root}"
            )
        return "\n".join(out) + "\n"

    def patch(self) -> str:
        """A unified diff of every change, with ``a/`` and ``b/`` paths from ``root``."""
        out = []
        for ch in self.changes:
            rel = os.path.relpath(ch.path, self.root)
            old = (ch.old or "").splitlines(keepends=True)
            new = ch.new.splitlines(keepends=True)
            for lines in (old, new):
                if lines and not lines[-1].endswith("\n"):
                    lines[-1] += "\n\\ No newline at end of file\n"
            out.append(f"diff --git a/{rel} b/{rel}\n")
            if ch.old is None:
                out.append("new file mode 100644\n")
            out += difflib.unified_diff(
                old, new, "/dev/null" if ch.old is None else f"a/{rel}", f"b/{rel}"
            )
        return "".join(out)

    def apply(self) -> None:
        """Write the changed files (the runbooks first: the workflow names them)."""
        for ch in self.changes:  # the runbook comes first
            current = ch.path.read_text(encoding="utf-8") if ch.path.exists() else None
            if current != ch.old:
                raise UsageError(f"{ch.path} changed while the patch was made: run learn again")
            _write(ch.path, ch.new)


def _write(path: Path, text: str) -> None:
    """Replace ``path`` at once (a temporary file renamed over it), keeping its mode. The
    folder is a workspace a step could write: the temporary name is made new (``O_EXCL``,
    never through a planted link), and the rename replaces a link, never follows it."""
    st = path.lstat() if path.is_symlink() or path.exists() else None
    mode = st.st_mode & 0o7777 if st and stat.S_ISREG(st.st_mode) else 0o644
    tmp = path.with_name(f".{path.name}.learn.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _runbook_text(path: Path, workspace: Path) -> str | None:
    """A runbook's text through the guarded path (a step may have made it a link to a
    host file, which would be copied into the patch); None when there is none."""
    try:
        return runbook_text(path, workspace)
    except FileNotFoundError:
        return None


def _git_root(folder: Path) -> Path:
    for p in (folder, *folder.parents):
        if (p / ".git").exists():
            return p
    return folder


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def propose(store: Store, run_id: str, workflow_file: Path | None = None) -> Proposal:
    """Everything ``agentflow learn RUN_ID`` proposes; raises with one line when it cannot."""
    run = store.open(run_id)
    state = run.read_state()
    candidates = rank(store, run, state)
    warnings: list[str] = []
    path = (workflow_file or Path(state.workflow_file)).resolve()
    if not path.is_file():
        raise UsageError(
            f"run {run.run_id} was started from {path}, which is not there any more: "
            "give its new place with --workflow FILE"
        )
    text = path.read_text(encoding="utf-8")
    frozen = run.workflow_path.read_text(encoding="utf-8") if run.workflow_path.exists() else None
    if frozen is not None and _sha(frozen) != _sha(text):
        warnings.append(
            f"{path} has changed since run {run.run_id} (it differs from the copy the run "
            "froze): the patch is against the file as it is now"
        )
    current = parse_workflow(text, str(path), base_dir=path.parent)
    if current.name != state.workflow:
        raise UsageError(
            f"{path} is the workflow '{current.name}'; run {run.run_id} ran '{state.workflow}'"
        )
    runbooks = [path.parent / d for d in current.docs]
    runbook = runbooks[0] if runbooks else path.parent / f"{path.stem}.md"
    rb_old = _runbook_text(runbook, path.parent)
    texts = [t for t in (_runbook_text(p, path.parent) for p in runbooks) if t is not None]
    wf_text, rb_text = text, rb_old or ""
    wf_change = Change(path, text, text)
    rb_change = Change(runbook, rb_old, rb_text)
    for c in candidates:
        _describe(c, run, state)
        r = c.recovery
        if r.step not in {s.id for s in current.steps}:
            c.notes.append(f"step {r.step} is not in {path.name} any more: nothing proposed")
            continue
        step = current.step(r.step)
        rule = c.rule or r.fix.rule
        pattern = rule.match if rule is not None else match_for(c.symptom or "")
        if c.rule is not None and _has_rule(step.recover, c.rule, c, run, state):
            c.notes.append(f"{path.name} has this rule on {r.step} already")
            c.rule = None
        elif c.rule is not None:
            note = f"agentflow learn: run {r.run_id}"
            try:
                wf_text = add_rule(wf_text, str(path), r.step, c.rule, note)
                current = parse_workflow(wf_text, str(path))
                wf_change.what.append(f"recover rule on {r.step}: {_flow_rule(c.rule)}")
            except EditFailed as e:
                c.notes.append(
                    f"cannot insert the rule into {path.name} ({e}); add it to the "
                    f"recover: of {r.step} by hand: - {_flow_rule(c.rule)}"
                )
        if documented([*texts, rb_text], pattern, c.symptom):
            c.notes.append(f"{runbook.name} describes this failure already")
            continue
        block = entry(c, 3)
        rb_text = add_entry(rb_text, block, current.name)
        rb_change.what.append(f"runbook entry: {block.splitlines()[0].lstrip('# ')}")
    if rb_text != (rb_old or "") and not current.docs:
        doc = os.path.relpath(runbook, path.parent)
        try:
            wf_text = add_doc(wf_text, str(path), doc)
            wf_change.what.append(f"docs: [{doc}]")
        except EditFailed as e:
            warnings.append(f"cannot add `docs: [{doc}]` to {path.name} ({e}): add it by hand")
    wf_change.new, rb_change.new = wf_text, rb_text
    changes = [ch for ch in (rb_change, wf_change) if ch.new != (ch.old or "")]
    return Proposal(run.run_id, path, _git_root(path.parent), candidates, changes, warnings)


def _describe(c: Candidate, run: RunDir, state: RunState) -> None:
    """The candidate's symptom line, and the rule to propose for it."""
    r, fix = c.recovery, c.recovery.fix
    failed = tail(attempt_log(run, state, r.step, r.attempt), MATCH_BYTES)
    after = None
    if fix.action == "retry":
        after = tail(attempt_log(run, state, r.step, r.attempt + 1), MATCH_BYTES)
    if fix.rule is not None:
        c.symptom = symptom_line(failed, after, fix.rule.match)
        c.rule = fix.rule
        return
    volatile = (str(run.path.resolve()), str(run.path), run.run_id)
    c.symptom = symptom_line(failed, after, volatile=volatile)
    if fix.command_diff:
        c.notes.append(
            "no rule: the fix changed the step's command, which a recover: rule cannot do"
        )
        return
    if c.symptom is None:
        c.notes.append(
            f"no rule: no line of the failed log tells this failure apart ({r.status}); "
            "a status is for retry: {on: [...]}, a wrong result for success:"
        )
        return
    pattern = match_for(c.symptom, volatile)
    if not re.search(pattern, failed, re.MULTILINE):
        pattern = _plain(c.symptom)
        if not re.search(pattern, failed, re.MULTILINE):  # control codes inside the line
            c.notes.append("no rule: the line, cleaned up, is not in the log as written")
            return
    if after is not None and re.search(pattern, after, re.MULTILINE):
        c.notes.append(
            "no rule: the line is in the log of the attempt that succeeded too, so a rule "
            "matching it would match any failure"
        )
        return
    c.rule = RecoverRule(match=pattern, action=fix.action, set_env=fix.set_env)


def _plain(line: str) -> str:
    return "".join("\\" + ch if ch in "\\.^$*+?{}[]|()" else ch for ch in line)


def _has_rule(
    rules: list[RecoverRule], new: RecoverRule, c: Candidate, run: RunDir, state: RunState
) -> bool:
    """Whether the step has this rule already: the same one, or one that matches the
    failed attempt's log and does the same."""
    r = c.recovery
    failed = tail(attempt_log(run, state, r.step, r.attempt), MATCH_BYTES)
    for old in rules:
        same = (old.action, old.set_env, old.wait) == (new.action, new.set_env, new.wait)
        if not same:
            continue
        if old.match == new.match:
            return True
        with contextlib.suppress(re.error):
            if re.search(old.match, failed, re.MULTILINE):
                return True
    return False
