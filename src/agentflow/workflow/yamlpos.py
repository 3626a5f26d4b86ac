"""YAML with positions: a workflow file's text → plain values, with the line and column of
every key and value, under limits on nesting and aliases."""

from __future__ import annotations

from typing import Any

import yaml

from agentflow.errors import Problem, WorkflowError
from agentflow.workflow.yamlhints import colon_hint

Loc = tuple[str | int, ...]
"""Where a value is in the file: its path of keys and list indexes."""

MAX_DEPTH = 64
"""The deepest nesting of lists and mappings a workflow file may have (real ones use
fewer than 10); deeper, composing it would exhaust Python's stack."""
MAX_ALIASES = 1000
"""The most aliases (``*name``) one file may use."""
MAX_EXPANSION = 1_000_000
"""How much aliases may add to a file, in characters of the values they repeat (plus one
per list or mapping): a few nested aliases can otherwise stand for gigabytes."""


class YAMLLimitError(yaml.YAMLError):
    """A file over one of the loader's limits (depth, aliases, expansion), and where."""

    def __init__(self, problem: str, mark: Any) -> None:
        self.problem = problem
        self.line: int | None = mark.line + 1 if mark is not None else None
        self.column: int | None = mark.column + 1 if mark is not None else None
        super().__init__(f"line {self.line}, column {self.column}: {problem}")


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, whose composer refuses a file over ``MAX_DEPTH``,
    ``MAX_ALIASES`` or ``MAX_EXPANSION``, located at the offending value. The limits are
    checked while the document is composed, where an alias is still only a reference to
    its anchor's node: before anything is expanded into Python values or recursed into."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self._added = 0
        self._sizes: dict[int, int] = {}
        """The expanded size of each node composed so far, by id (the tree keeps them)."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in the stubs
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            self._aliases += 1
            # An alias of a node still being composed (it contains itself) counts as 1;
            # the builder refuses it.
            self._added += self._sizes.get(id(node), 1)
            if self._aliases > MAX_ALIASES:
                raise YAMLLimitError(f"more than {MAX_ALIASES} aliases (*name)", event.start_mark)
            if self._added > MAX_EXPANSION:
                raise YAMLLimitError(
                    f"aliases (*name) expand the file by more than {MAX_EXPANSION:,} "
                    "characters: write the values out, or use fewer aliases",
                    event.start_mark,
                )
            return node
        if self._depth >= MAX_DEPTH:
            raise YAMLLimitError(
                f"values nested more than {MAX_DEPTH} levels deep", event.start_mark
            )
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._sizes[id(node)] = self._size(node)
        return node

    def _size(self, node: yaml.Node | None) -> int:
        if isinstance(node, yaml.ScalarNode):
            return 1 + len(node.value)
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            return 1
        return 1 + sum(self._sizes.get(id(child), 1) for child in children)


class Position:
    """Where a node starts: what is read of a node's position once it is composed. A
    PyYAML ``Mark`` (two a node) holds six attributes in a dict; at 10,000 steps the
    marks of the tree were about 24 MB of a 10,000-step file's load, which the process
    keeps (Python does not give such pages back)."""

    __slots__ = ("column", "line", "name")

    def __init__(self, mark: Any) -> None:
        self.name: str = mark.name
        self.line: int = mark.line
        self.column: int = mark.column

    def get_snippet(self) -> None:
        return None

    def __str__(self) -> str:  # as a ``Mark`` says it, in an error's text
        return f'  in "{self.name}", line {self.line + 1}, column {self.column + 1}'


class LeanLoader(BoundedLoader):
    """``BoundedLoader`` whose nodes keep only where they start (``Position``): for a
    workflow's values and their lines, not for editing the text (``learn.yaml_edit``)."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        node = super().compose_node(parent, index)
        if node is not None and not isinstance(node.start_mark, Position):  # (an alias: done)
            node.start_mark = Position(node.start_mark)
            node.end_mark = None
        return node


def parse_yaml(text: str, filename: str) -> tuple[Any, dict[Loc, tuple[int, int]]]:
    try:
        node = yaml.compose(text, Loader=LeanLoader)
    except YAMLLimitError as e:
        raise WorkflowError([Problem(filename, e.line, e.column, f"YAML: {e.problem}")]) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = " ".join(s for s in (e.context, e.problem) if s)
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        if line is not None and col is not None and "mapping values" in (e.problem or ""):
            what += colon_hint(text, line, col)
        raise WorkflowError([Problem(filename, line, col, f"YAML syntax error: {what}")]) from None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        col = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        msg = f"YAML error: character {e.character!r} is not allowed in a YAML file"
        raise WorkflowError([Problem(filename, line, col, msg)]) from None
    except yaml.YAMLError as e:
        raise WorkflowError([Problem(filename, None, None, f"YAML error: {e}")]) from None
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")):
        msg = "the file is empty: a workflow needs at least `version: 1`, `name` and `steps`"
        raise WorkflowError([Problem(filename, 1, 1, msg)])
    if not isinstance(node, yaml.MappingNode):
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        msg = "a workflow file must be a mapping of keys (version, name, steps, …)"
        raise WorkflowError([Problem(filename, line, col, msg)])
    builder = _Builder(filename)
    data = builder.build(node, ())
    if builder.problems:
        raise WorkflowError(builder.problems)
    return data, builder.positions


_STANDARD_TAGS = {
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")
}
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class _Builder:
    """YAML nodes → plain Python values, recording each key's and value's position.

    Only plain data is accepted: keys are read as written (so ``on:`` stays the word "on",
    not YAML 1.1's boolean), dates stay text, and tags, merge keys and self-referring
    aliases become located problems instead of exceptions."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.positions: dict[Loc, tuple[int, int]] = {}
        self.problems: list[Problem] = []
        self._scalars = yaml.SafeLoader("")  # only its scalar construction is used
        self._path: set[int] = set()

    def _problem(self, node: yaml.Node, message: str) -> None:
        mark = node.start_mark
        self.problems.append(Problem(self.filename, mark.line + 1, mark.column + 1, message))

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.positions.setdefault(loc, (node.start_mark.line + 1, node.start_mark.column + 1))
        if id(node) in self._path:
            self._problem(node, "this alias refers to the value that contains it")
            return None
        self._path.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, loc)
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
            return self._scalar(node)
        finally:
            self._path.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self._problem(key_node, "merge keys (<<) are not supported: write the keys out")
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._problem(key_node, "a key must be a plain word")
                continue
            key = str(key_node.value)
            if key in out:
                self._problem(key_node, f"duplicate key {key!r}")
                continue
            # A key's own position wins over its value's: that is the line to edit.
            mark = key_node.start_mark
            self.positions[(*loc, key)] = (mark.line + 1, mark.column + 1)
            out[key] = self.build(value_node, (*loc, key))
        return out

    def _scalar(self, node: yaml.Node) -> Any:
        if node.tag == _TIMESTAMP:
            return str(node.value)  # a date is text to us, not a datetime
        if node.tag not in _STANDARD_TAGS:
            self._problem(node, f"unsupported YAML tag {node.tag!r}: use plain values")
            return None
        try:
            return self._scalars.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, AttributeError, OverflowError) as e:
            self._problem(node, f"cannot read the value {node.value!r} ({type(e).__name__})")
            return None
