"""Load a workflow file: YAML → ``Workflow``, with every problem located by line and column.

Parsing keeps the position of every key and value, so that pydantic's errors (located by a
path like ``('steps', 2, 'timeout')``) and our own checks (cycles, unknown ``needs``) can
both point at the line a person must edit.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from agentflow.errors import Problem, WorkflowError
from agentflow.template import TemplateSyntaxError, references, strings_in
from agentflow.workflow.model import Resources, Step, Workflow
from agentflow.workflow.support import changed_keys, unsupported
from agentflow.workflow.types import UNITS_REQUIRED
from agentflow.workflow.yamlhints import colon_hint, mapping_hint

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class WorkflowFile:
    """A validated workflow and where it came from."""

    path: Path
    """The file, absolute."""
    text: str
    """The file's text as read (frozen into each run's directory)."""
    workflow: Workflow

    @property
    def base_dir(self) -> Path:
        """The folder the workflow's relative paths start from."""
        return self.path.parent


def load_workflow(path: Path | str) -> WorkflowFile:
    """Read and validate a workflow file; raises WorkflowError listing every problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WorkflowError([Problem(str(path), None, None, "no such file")]) from None
    except IsADirectoryError:
        raise WorkflowError([Problem(str(path), None, None, "is a folder, not a file")]) from None
    except UnicodeDecodeError as e:
        msg = f"not UTF-8 text (byte {e.start}): is this a workflow file?"
        raise WorkflowError([Problem(str(path), None, None, msg)]) from None
    except OSError as e:
        raise WorkflowError([Problem(str(path), None, None, e.strerror or str(e))]) from None
    workflow = parse_workflow(text, str(path), base_dir=p.resolve().parent)
    return WorkflowFile(p.resolve(), text, workflow)


def parse_workflow(
    text: str, filename: str, base_dir: Path | None = None, *, bare_seconds: bool = False
) -> Workflow:
    """Validate workflow text; ``base_dir`` (when given) is where ``docs:`` are looked up.
    ``bare_seconds``: a duration without unit is seconds, as before units were required
    (for a run's frozen copy of its workflow, accepted when the run started)."""
    data, positions = _parse_yaml(text, filename)
    located = _Locator(filename, positions)
    try:
        workflow = Workflow.model_validate(data, context={UNITS_REQUIRED: not bare_seconds})
    except ValidationError as e:
        found = {located.pydantic(err) for err in _one_per_number(e.errors())}
        raise WorkflowError(
            sorted(found, key=lambda p: (p.line or 0, p.column or 0, p.message))
        ) from None
    problems = list(_semantic_problems(workflow, located, base_dir))
    problems += [located.at(loc, msg) for loc, msg in unsupported(workflow)]
    if problems:
        raise WorkflowError(sorted(problems, key=lambda p: (p.line or 0, p.column or 0)))
    return workflow


def workflow_problems(workflow: Workflow, filename: str) -> list[Problem]:
    """The problems a file holding ``workflow`` would have beyond one key at a time (ids,
    needs, cycles, expressions), for a workflow made in memory: a plan's steps added to
    the file's (no positions: each problem says ``steps[i]``)."""
    located = _Locator(filename, {})
    problems = list(_semantic_problems(workflow, located, None))
    return problems + [located.at(loc, msg) for loc, msg in unsupported(workflow)]


# --- YAML with positions -------------------------------------------------------------------


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


def _parse_yaml(text: str, filename: str) -> tuple[Any, dict[Loc, tuple[int, int]]]:
    try:
        node = yaml.compose(text, Loader=BoundedLoader)
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


# --- locating problems ----------------------------------------------------------------------


class _Locator:
    def __init__(self, filename: str, positions: dict[Loc, tuple[int, int]]) -> None:
        self.filename = filename
        self.positions = positions

    def at(self, loc: Loc, message: str, label: Loc | None = None) -> Problem:
        """A problem at ``loc`` (or the nearest enclosing place that has a position),
        described as being in ``label`` (default: ``loc``)."""
        probe = loc
        while probe not in self.positions and probe:
            probe = probe[:-1]
        line, col = self.positions.get(probe, (None, None))
        where = _describe(loc if label is None else label)
        return Problem(self.filename, line, col, f"{where}{message}")

    def pydantic(self, err: Mapping[str, Any]) -> Problem:
        loc = _loc_of(err)
        kind = err["type"]
        msg = str(err["msg"]).removeprefix("Value error, ")
        if kind == "extra_forbidden":
            key = str(loc[-1])
            allowed = _allowed_keys(loc[:-1])
            hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            known = f"; known keys: {', '.join(sorted(allowed))}" if allowed and not hint else ""
            return self.at(loc, f"unknown key '{key}'{suggestion}{known}", label=loc[:-1])
        if kind == "missing":
            return self.at(loc[:-1], f"missing required key '{loc[-1]}'")
        if kind == "string_pattern_mismatch":
            msg = f"{err['input']!r} is not allowed here: {_pattern_hint(err)}"
        elif kind == "literal_error":
            msg = f"{err['input']!r} is not allowed: {msg[0].lower()}{msg[1:]}"
            choices = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
            hint = difflib.get_close_matches(str(err["input"]), choices, n=1, cutoff=0.6)
            if hint:
                msg += f" (did you mean '{hint[0]}'?)"
        elif kind == "too_short" and loc == ("steps",):
            msg = "a workflow needs at least one step"
        else:
            msg = f"{msg[0].lower()}{msg[1:]}" if msg else msg
            if "input" in err and (kind.endswith("_type") or kind == "finite_number"):
                msg += f", got {_short(err['input'])}"
            if kind == "string_type":
                msg += mapping_hint(err.get("input"))
        return self.at(loc, msg)


def _one_per_number(errors: list[Any]) -> list[Any]:
    """A NaN or infinity where a scalar goes is one problem, not one per type it is not."""
    finite = {_loc_of(err) for err in errors if err["type"] == "finite_number"}
    return [e for e in errors if e["type"] == "finite_number" or _loc_of(e) not in finite]


def _loc_of(err: Mapping[str, Any]) -> Loc:
    return tuple(x for x in err["loc"] if not _is_internal(x))


def _is_internal(part: Any) -> bool:
    # pydantic adds the name of a union member or a function validator to some locations.
    return isinstance(part, str) and (
        part in {"str", "int", "float", "bool", "list[...]", "dict[...]", "[key]"}
        or part.startswith(("function-", "literal[", "list[", "dict["))
    )


def _pattern_hint(err: Mapping[str, Any]) -> str:
    pattern = err.get("ctx", {}).get("pattern", "")
    if "A-Za-z][A-Za-z0-9_-]{0,62}" in pattern:
        return "an id starts with a letter, then letters, digits, - or _ (at most 63)"
    if "A-Za-z_][A-Za-z0-9_]*" in pattern:
        return "use letters, digits and _ only, not starting with a digit"
    return f"it must match {pattern}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(loc: Loc) -> str:
    """``('steps', 2, 'timeout')`` → ``"steps[2].timeout: "``."""
    if not loc:
        return ""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out + ": "


def _allowed_keys(loc: Loc) -> list[str]:
    """The keys allowed in the mapping at ``loc``, by walking the models' annotations."""
    current: Any = Workflow
    for part in loc:
        current = _child_type(current, part)
        if current is None:
            return []
    model = _model_in(current)
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _child_type(annotation: Any, part: str | int) -> Any:
    model = _model_in(annotation)
    if model is not None and isinstance(part, str):
        for name, field in model.model_fields.items():
            if part in (name, field.alias):
                return field.annotation
        return None
    for arg in _flatten(annotation):
        origin = typing.get_origin(arg)
        if origin is list and isinstance(part, int):
            return typing.get_args(arg)[0]
        if origin is dict and isinstance(part, str):
            return typing.get_args(arg)[1]
    return None


def _flatten(annotation: Any) -> Iterator[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        yield from _flatten(typing.get_args(annotation)[0])
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _flatten(arg)
    else:
        yield annotation


def _model_in(annotation: Any) -> type[BaseModel] | None:
    for arg in _flatten(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


# --- checks beyond one key at a time --------------------------------------------------------


def _semantic_problems(
    workflow: Workflow, located: _Locator, base_dir: Path | None
) -> Iterator[Problem]:
    ids = [s.id for s in workflow.steps]
    seen: dict[str, int] = {}
    for i, step in enumerate(workflow.steps):
        if step.id in seen:
            yield located.at(
                ("steps", i, "id"),
                f"duplicate step id '{step.id}' (first used by steps[{seen[step.id]}])",
            )
        else:
            seen[step.id] = i
        for j, need in enumerate(step.needs):
            if need == step.id:
                yield located.at(("steps", i, "needs", j), f"step '{step.id}' needs itself")
            elif need not in seen and need not in ids:
                hint = difflib.get_close_matches(need, ids, n=1)
                tail = (
                    f" (did you mean '{hint[0]}'?)"
                    if hint
                    else f"; steps are: {', '.join(dict.fromkeys(ids))}"
                )
                yield located.at(("steps", i, "needs", j), f"unknown step '{need}'{tail}")
    cycle = find_cycle(workflow.steps)
    if cycle:
        first = ids.index(cycle[0])
        yield located.at(
            ("steps", first, "needs"), f"dependency cycle: {' → '.join([*cycle, cycle[0]])}"
        )
    yield from _input_problems(workflow, located)
    yield from _template_problems(workflow, located)
    yield from _slurm_problems(workflow, located)
    yield from _sweep_problems(workflow, located)
    if base_dir is not None:
        for i, mount in enumerate(workflow.sandbox.mounts):
            if not (base_dir / mount.source).exists():
                yield located.at(
                    ("sandbox", "mounts", i, "source"),
                    f"{mount.source} does not exist (looked for {base_dir / mount.source})",
                )
        for i, doc in enumerate(workflow.docs):
            if not (base_dir / doc).is_file():
                yield located.at(("docs", i), f"runbook '{doc}' not found next to the workflow")


def _sweep_problems(workflow: Workflow, located: _Locator) -> Iterator[Problem]:
    """A matrix names inputs, with lists of values; an objective names a step output."""
    known = ", ".join(workflow.inputs) or "none are declared"

    def check_name(loc: Loc, name: str) -> Iterator[Problem]:
        if name not in workflow.inputs:
            hint = difflib.get_close_matches(name, list(workflow.inputs), n=1)
            tail = f" (did you mean '{hint[0]}'?)" if hint else f" (inputs: {known})"
            yield located.at(loc, f"the matrix names '{name}', which is no input{tail}")

    for key, values in (workflow.matrix or {}).items():
        if key in ("include", "exclude"):
            for j, entry in enumerate(values):
                if not isinstance(entry, dict) or not entry:
                    yield located.at(("matrix", key, j), f"each {key} entry maps inputs to values")
                    continue
                for name in entry:
                    yield from check_name(("matrix", key, j, name), str(name))
            continue
        yield from check_name(("matrix", key), key)
        if not values:
            yield located.at(("matrix", key), f"'{key}' has no values to sweep over")
    objective = workflow.objective
    named = any(objective.metric in s.output_names for s in workflow.steps) if objective else True
    if objective is not None and not named:
        outputs = sorted({o for s in workflow.steps for o in s.output_names}) or ["none"]
        yield located.at(
            ("objective", "metric"),
            f"no step has an output '{objective.metric}' to rank runs by "
            f"(outputs: {', '.join(outputs)})",
        )


def _slurm_problems(workflow: Workflow, located: _Locator) -> Iterator[Problem]:
    """Keys that only a job per step can honour, on a sandbox that has none."""
    box = workflow.sandbox
    if box.backend == "slurm":
        asks: list[tuple[Loc, Resources | None]] = [
            (("sandbox", "resources", "gpus"), box.resources)
        ]
        asks += [(("steps", i, "resources", "gpus"), s.resources) for i, s in
                 enumerate(workflow.steps) if s.resources is not None]  # fmt: skip
        for loc, res in asks:
            if res is not None and res.gpus == "all":
                yield located.at(loc, "`gpus: all` has no meaning on a cluster: give a count")
        return
    for i, step in enumerate(workflow.steps):
        # gpus and cpus are drawn from the machine's pool (agentflow.pool); the rest are a
        # job's limits.
        limits = changed_keys(step.resources) - {"gpus", "cpus"} if step.resources else set()
        for key in sorted(limits):
            yield located.at(
                ("steps", i, "resources", key),
                f"a step's `{key}` needs `sandbox.backend: slurm` (a job per step); "
                "for docker, set sandbox.resources",
            )
    if box.slurm is not None:
        yield located.at(("sandbox", "slurm"), "`slurm` applies only with `backend: slurm`")
    if box.resources.nodes is not None:
        yield located.at(
            ("sandbox", "resources", "nodes"), "`nodes` applies only with `backend: slurm`"
        )


def find_cycle(steps: list[Step]) -> list[str] | None:
    """A dependency cycle as a list of step ids, or None."""
    needs = {s.id: [n for n in s.needs if n != s.id] for s in steps}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in needs.get(node, []):
            if nxt not in needs:
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt) :]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for s in steps:
        if s.id not in state:
            found = visit(s.id)
            if found:
                # Print in run order (a needs b: b runs first).
                return list(reversed(found))
    return None


_INPUT_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str, int, float),  # `default: 1` of a string input means "1"
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def _input_problems(workflow: Workflow, located: _Locator) -> Iterator[Problem]:
    for name, spec in workflow.inputs.items():
        if spec.type and spec.default is not None:
            ok = isinstance(spec.default, _INPUT_TYPES[spec.type])
            if isinstance(spec.default, bool) and spec.type != "boolean":
                ok = False
            if not ok:
                yield located.at(
                    ("inputs", name, "default"),
                    f"default {spec.default!r} is not of type {spec.type}",
                )
        if (
            spec.choices is not None
            and spec.default is not None
            and spec.default not in spec.choices
        ):
            yield located.at(
                ("inputs", name, "default"),
                f"default {spec.default!r} is not one of the choices {spec.choices}",
            )


def _template_problems(workflow: Workflow, located: _Locator) -> Iterator[Problem]:
    by_id = {s.id: s for s in workflow.steps}
    texts: list[tuple[Loc, str, Step | None]] = [
        (("env", k), v, None) for k, v in workflow.env.items()
    ]
    for i, step in enumerate(workflow.steps):
        for key in ("run", "task", "workdir"):
            value = getattr(step, key)
            if value:
                texts.append((("steps", i, key), value, step))
        texts += [(("steps", i, "env", k), v, step) for k, v in step.env.items()]
        texts += [(("steps", i, "artifacts", j), p, step) for j, p in enumerate(step.artifacts)]
        for key in ("ready", "success", "outputs"):
            block = getattr(step, key)
            if block:
                dumped = (
                    {k: v.model_dump(by_alias=True) for k, v in block.items()}
                    if isinstance(block, dict)
                    else block.model_dump(by_alias=True)
                )
                texts += [(("steps", i, key), text, step) for text in strings_in(dumped)]
    for loc, text, owner in texts:
        try:
            refs = list(references(text))
        except TemplateSyntaxError as e:
            yield located.at(loc, str(e))
            continue
        for ref in refs:
            if ref.kind == "env" and ref.names[0] in workflow.secrets:
                name = ref.names[0]
                yield located.at(
                    loc,
                    f"${{{{ env.{name} }}}} would write the secret {name} into files: "
                    f"use ${name} (the step's environment has it)",
                )
            if ref.kind == "inputs" and ref.names[0] not in workflow.inputs:
                known = ", ".join(workflow.inputs) or "none are declared"
                yield located.at(loc, f"unknown input '{ref.names[0]}' (inputs: {known})")
            elif ref.kind == "steps":
                yield from _step_ref_problems(ref.names, loc, owner, by_id, located)
            elif ref.kind == "ports":
                yield from _port_ref_problems(ref.names[0], loc, owner, located)


def _step_ref_problems(
    names: tuple[str, ...],
    loc: Loc,
    step: Step | None,
    by_id: dict[str, Step],
    located: _Locator,
) -> Iterator[Problem]:
    target, output = names
    if step is None:
        yield located.at(
            loc, "the workflow's env cannot read step outputs: set it in the env of the step"
        )
        return
    if target not in by_id:
        yield located.at(loc, f"unknown step '{target}' in ${{{{ steps.{target}... }}}}")
        return
    implicit = output == "host" and by_id[target].service  # where the service listens
    if output not in by_id[target].output_names and not implicit:
        yield located.at(loc, f"step '{target}' declares no output '{output}' (add it to outputs)")
        return
    if target not in _ancestors(step.id, by_id):
        yield located.at(
            loc,
            f"step '{step.id}' reads an output of '{target}' but does not need it: add it to needs",
        )


PORT_KEYS = ("run", "task", "env", "ready", "success", "outputs")
"""Where ``${{ ports.NAME }}`` is filled in: the step's own command and checks."""


def _port_ref_problems(
    name: str, loc: Loc, step: Step | None, located: _Locator
) -> Iterator[Problem]:
    if step is None or loc[2] not in PORT_KEYS:
        yield located.at(
            loc,
            f"${{{{ ports.{name} }}}} works in a step's run, env, ready, success and outputs "
            "only: hand it to other steps through an output (`value:`)",
        )
    elif name not in step.ports:
        asked = ", ".join(step.ports)
        hint = difflib.get_close_matches(name, step.ports, n=1)
        tail = f" (did you mean '{hint[0]}'?)" if hint else f" (it asks for: {asked})"
        yield located.at(
            loc,
            f"step '{step.id}' asks for no port '{name}'"
            + (tail if asked else ": add `ports: [" + name + "]` to the step"),
        )


def _ancestors(step_id: str, by_id: dict[str, Step]) -> set[str]:
    seen: set[str] = set()
    todo = list(by_id[step_id].needs)
    while todo:
        cur = todo.pop()
        if cur in seen or cur not in by_id:
            continue
        seen.add(cur)
        todo.extend(by_id[cur].needs)
    return seen
