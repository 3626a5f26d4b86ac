"""Editing a workflow file by inserting text where it belongs (its comments and layout
stay), checked by loading the result with agentflow's own loader."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import yaml

from agentflow.errors import WorkflowError
from agentflow.workflow import format_duration, parse_workflow
from agentflow.workflow.model import RecoverRule
from agentflow.workflow.yamlpos import BoundedLoader


class EditFailed(Exception):
    """The targeted insertion did not give the intended workflow."""


def flow_rule(rule: RecoverRule) -> str:
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
    item = f"- {flow_rule(rule)}  # {note}"
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
        items = [f"{indent}- {flow_rule(r)}" for r in old] + [indent + item]
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
