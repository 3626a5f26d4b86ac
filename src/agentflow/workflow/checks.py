"""The checks beyond one key at a time: ids, needs and cycles, inputs, sweeps, Slurm,
expressions and the ports they name."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from pathlib import Path

from agentflow.errors import Problem
from agentflow.template import TemplateSyntaxError, references, strings_in
from agentflow.workflow.locate import Locator
from agentflow.workflow.model import Resources, Step, Workflow
from agentflow.workflow.search import search_problems
from agentflow.workflow.support import changed_keys
from agentflow.workflow.yamlpos import Loc


def semantic_problems(
    workflow: Workflow, located: Locator, base_dir: Path | None
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
    yield from (located.at(loc, msg) for loc, msg in search_problems(workflow))
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


def _sweep_problems(workflow: Workflow, located: Locator) -> Iterator[Problem]:
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


def _slurm_problems(workflow: Workflow, located: Locator) -> Iterator[Problem]:
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


def _input_problems(workflow: Workflow, located: Locator) -> Iterator[Problem]:
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


def _template_problems(workflow: Workflow, located: Locator) -> Iterator[Problem]:
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
    located: Locator,
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
    name: str, loc: Loc, step: Step | None, located: Locator
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
