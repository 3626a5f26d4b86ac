"""The runner's side of the step cache: a step's key when it is about to launch, taking
its result from the cache instead of running it, and keeping a succeeded step's result.
Plain functions over the runner (not one more mixin): the cache itself is ``cache.py``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import JsonValue

from agentflow import artifacts, cache, series
from agentflow.plan import PlannedStep
from agentflow.runner.base import RunnerBase
from agentflow.runner.metering import summaries
from agentflow.settings import settings
from agentflow.state import FINAL, now
from agentflow.store import valid_run_id
from agentflow.template import Ref, input_names, strings_in, substitute
from agentflow.workflow.model import Step

NOT_NEEDED = "not needed: its dependents came from the cache"
"""Why a service was not started: every step that needs it took its result from the cache."""


def _home(r: RunnerBase) -> Path:
    return r.s.run.path.parent.parent


def image_of(r: RunnerBase) -> str:
    """What the step runs on: a Docker sandbox's image id (a rebuilt image is another),
    else the sandbox's name (``local``)."""
    image_id = getattr(r.s.sandbox, "image_id", None)
    if callable(image_id):
        found = image_id()
        if isinstance(found, str) and found:
            return found
    return r.s.sandbox.name


def key_of(r: RunnerBase, step_id: str, memo: dict[str, str | None] | None = None) -> str | None:
    """The step's cache key, as computed at its latest launch (or now, for a step that
    succeeded before a resume); None when it cannot be keyed (an input glob matches a
    link, or too much). ``memo``: keys worked out ahead of a launch (a service deciding
    whether it is needed), kept apart from the launches' own and said nothing about."""
    keys = r.cache_keys if memo is None else memo
    if step_id not in keys:
        keys[step_id] = _compute_key(r, step_id, keys, quiet=memo is not None)
    return keys[step_id]


def inputs_read(r: RunnerBase, step_id: str) -> list[str]:
    """The inputs a step refers to (``${{ inputs.NAME }}``): in its command or task, env,
    workdir, probe, checks, outputs, artifacts, cache globs and recover rules, in what the
    plan wrote for it, and in the workflow's env (which every step gets). Only these are
    in its key: an input that only a later step reads (a sweep's ``k``) leaves it alone,
    and one that an earlier step reads changes it through that step's key (``needs``)."""
    step = r.s.workflow.step(step_id)
    planned = r.s.plan.step(step_id)
    spec = r.s.workflow.cache_of(step)
    where: list[object] = [
        step.model_dump(exclude={"description"}),
        planned.model_dump(include={"run", "ready", "success"}),
        dict(r.s.workflow.env),
        spec.model_dump() if spec else None,
    ]
    names: set[str] = set()
    for text in strings_in(where):
        names |= input_names(text)
    known = r._inputs()
    return sorted(n for n in names if n in known)


def _compute_key(
    r: RunnerBase, step_id: str, keys: dict[str, str | None], *, quiet: bool
) -> str | None:
    step = r.s.workflow.step(step_id)
    planned = r.s.plan.step(step_id)
    needs: dict[str, JsonValue] = {}
    for need in planned.needs:
        k = key_of(r, need, keys if quiet else None)
        if k is None:
            return None
        needs[need] = k
    env = _key_env(r, step)
    spec = r.s.workflow.cache_of(step)
    patterns = [r._render(p, env) for p in spec.inputs] if spec else []
    try:
        files = cache.hash_inputs(patterns, r.s.workspace, r.hidden, settings().cache_max)
    except cache.NotCacheable as e:
        if not quiet:
            r._emit("cache_skipped", step_id, message=f"not cached: {e}")
        return None
    command = _keyed(r, r.state.steps[step_id].run_override or planned.run, env)
    # Secrets by name only: a hash of a short secret could be guessed back.
    material: dict[str, JsonValue] = {
        "step": step_id,
        "command": r.redactor(command),
        "env": {k: r.redactor(v) for k, v in sorted(env.items())},
        "secrets": list[JsonValue](sorted(r.s.secrets)),
        "image": image_of(r),
        "inputs": {name: r._inputs()[name] for name in inputs_read(r, step_id)},
        "needs": needs,
        "files": dict(files),
        "declared": _declared(step),
    }
    return cache.digest(material)


def _key_env(r: RunnerBase, step: Step) -> dict[str, str]:
    """The step's environment as its key sees it: ``_step_env``, with ``_keyed``."""
    env: dict[str, str] = {}
    for key, value in [*r.s.workflow.env.items(), *step.env.items()]:
        env[key] = _keyed(r, value, env)
    env.update(r.state.steps[step.id].env_overrides)
    return env


def _keyed(r: RunnerBase, text: str, env: dict[str, str]) -> str:
    """``text`` rendered for a key: ports and a service's outputs kept as written. Where a
    server listens changes from run to run (and is not known before it is ready, when a
    service asks whether it is needed); the server itself is in the key, by ``needs``."""

    def lookup(ref: Ref) -> str | None:
        if ref.kind == "ports":
            return None
        if ref.kind == "steps" and ref.names[0] in r.services:
            return None
        return r._render(f"${{{{ {ref.text} }}}}", env)

    return substitute(text, lookup)


def _declared(step: Step) -> JsonValue:
    """What the step says it produces and how it is checked: a change to these is a
    different result."""
    return {
        "outputs": {k: v.model_dump(by_alias=True) for k, v in step.outputs.items()},
        "artifacts": list(step.artifacts),
        "success": step.success.model_dump() if step.success else None,
    }


def take_from_cache(r: RunnerBase, planned: PlannedStep) -> bool:
    """Whether the step's result came from the cache (then it is ``succeeded`` with
    ``cached_from``, and does not run). Its key is computed afresh at every launch."""
    step = r.s.workflow.step(planned.id)
    if r.s.workflow.cache_of(step) is None:
        return False
    r.cache_keys.pop(planned.id, None)
    key = key_of(r, planned.id)
    st = r.state.steps[planned.id]
    if key is None or st.fresh or r.state.no_cache:
        return False
    home = _home(r)
    entry = cache.lookup(home, key)
    if entry is None:
        return False
    try:
        restored = cache.restore(home, entry, r.s.workspace, r.hidden)
    except OSError as e:
        restored = False
        r._emit("cache_miss", planned.id, message=f"cannot restore its files ({e})")
    if not restored:
        return False
    # The restored files are this run's artifacts too: copied and listed in its manifest,
    # through the same collector as a step that ran (the report and history read them).
    problem = r._collect_artifacts(step)
    if problem is not None:
        r._emit("cache_miss", planned.id, message=problem)
        return False
    why = f"cached from {entry.run_id}"
    r._update(
        planned.id, status="succeeded", cached_from=entry.run_id, outputs=entry.outputs,
        started_at=now(), finished_at=now(), exit_code=None, message=why,
    )  # fmt: skip
    _carry_series(r, planned.id, entry.run_id)
    r.schedule.changed()
    data: dict[str, JsonValue] = {
        "run": entry.run_id, "key": key, "files": len(entry.files), "size": entry.size,
    }  # fmt: skip
    r._emit("step_cached", planned.id, status="succeeded", message=why, data=data)
    return True


def store_result(r: RunnerBase, step_id: str) -> None:
    """Keep a succeeded ``cache:`` step's result (outputs, artifacts, output files) under
    the key its launch computed; never one whose outputs or files hold a secret's value."""
    step = r.s.workflow.step(step_id)
    key = r.cache_keys.get(step_id)
    st = r.state.steps[step_id]
    if r.s.workflow.cache_of(step) is None or key is None or st.cached_from:
        return
    why = r.uncacheable.get(step_id)
    try:
        if why is not None:
            raise cache.NotCacheable(why)
        sources = _sources(r, step)
        cfg = settings()
        entry = cache.store(
            _home(r), key, step_id, r.state.run_id, st.outputs, sources, cfg.cache_max,
            [*r.s.secrets.values(), cfg.anthropic_api_key or ""],
        )  # fmt: skip
    except cache.NotCacheable as e:
        r._emit("cache_skipped", step_id, message=f"not cached: {e}")
        return
    except OSError as e:  # the cache's own disk (full): the run goes on
        r._emit("cache_skipped", step_id, message=f"not cached: {e.strerror or e}")
        return
    if entry is not None:
        r._emit("cache_stored", step_id, message=f"{len(entry.files)} file(s), {entry.size} B")


def _sources(r: RunnerBase, step: Step) -> list[cache.Source]:
    """The files a cached result restores: the step's artifacts (this run's copies) and
    the files its outputs are read from (in the workspace)."""
    found: list[cache.Source] = []
    kept = artifacts.read_manifest(r.s.run).steps.get(step.id)
    for a in kept.files if kept else []:
        if not a.copied or a.stored is None:
            raise cache.NotCacheable(f"artifact {a.path} is over the copy limit")
        found.append(cache.Source(a.path, r.s.run.path / a.stored, r.s.run.path))
    env = r._step_env(step)
    host_dir = r._where(step, env).host_dir
    for output in step.outputs.values():
        name = output.file or output.json_file
        if name is None:
            continue
        path = Path(os.path.normpath(host_dir / r._render(name, env)))
        if not path.is_relative_to(r.s.workspace):
            raise cache.NotCacheable(f"output file {name} is outside the workspace")
        found.append(cache.Source(path.relative_to(r.s.workspace).as_posix(), path, r.s.workspace))
    return found


# --- services nobody needs ------------------------------------------------------------


def skip_unneeded_service(
    r: RunnerBase, planned: PlannedStep
) -> Literal["start", "wait", "skipped"]:
    """Whether a service about to start is needed. ``start``: a step that needs it will
    run (or cannot be known to come from the cache). ``skipped``: every step that needs it
    took its result from the cache just now (or has nothing more to do in this run), so it
    is ``skipped`` and never started. ``wait``: it stays pending until that can be told —
    a step that needs it waits on other steps too, and its key needs their results."""
    if r.state.no_cache:
        return "start"
    dependents = [p for p in r.s.plan.steps if planned.id in p.needs]
    left = [p for p in dependents if r.state.steps[p.id].status not in FINAL]
    if not left:
        # Another service of theirs was the one to find them in the cache.
        if dependents and all(r.state.steps[p.id].cached_from for p in dependents):
            return _skip(r, planned.id)
        return "start"  # (nobody needs it any more: as before, it starts and ends with the run)
    waiting = False
    for p in left:
        st = r.state.steps[p.id]
        busy = p.id in r.diagnoses or p.id in r.holds
        cacheable = r.s.workflow.cache_of(r.s.workflow.step(p.id)) is not None
        if st.status != "pending" or busy or st.fresh or not cacheable:
            return "start"
        if not _knowable(r, p, planned.id):
            waiting = True
    if waiting:
        return "wait"
    home = _home(r)
    for p in left:
        memo = {k: v for k, v in r.cache_keys.items() if k != p.id}
        key = key_of(r, p.id, memo)
        if key is None or cache.lookup(home, key) is None:
            return "start"
    for p in left:
        if not take_from_cache(r, p):
            return "start"  # (its entry went meanwhile: it runs, with the service)
    return _skip(r, planned.id)


def _skip(r: RunnerBase, service: str) -> Literal["skipped"]:
    r._update(service, status="skipped", message=NOT_NEEDED)
    r._emit("step_skipped", service, status="skipped", message=NOT_NEEDED)
    return "skipped"


def _knowable(r: RunnerBase, dependent: PlannedStep, service: str) -> bool:
    """Whether a step's key can be worked out before it launches: what it needs besides
    the service has succeeded (its outputs are in the key), or is another service whose
    own needs have (a service's key is its command and its needs' keys)."""
    for need in dependent.needs:
        if need == service or r.state.steps[need].status == "succeeded":
            continue
        if not r.s.workflow.step(need).service:
            return False
        if any(r.state.steps[n].status != "succeeded" for n in r.s.plan.step(need).needs):
            return False
    return True


def _carry_series(r: RunnerBase, step_id: str, from_run: str) -> None:
    """A cached step's metric curves are those of the run it came from (kept in that run's
    ``metrics/``, written by agentflow, not the step), when that run is still there."""
    if not valid_run_id(from_run):
        return
    data = series.load(r.s.run.path.parent / from_run, step_id)
    if not data.series:
        return
    # Only the values: where reading stopped belongs to the other run's files.
    kept = series.StepSeries(series=data.series)
    series.save(r.s.run.path, step_id, kept)
    r.meters.pop(step_id, None)
    r._update(step_id, metrics=summaries(kept))
