"""The runner's side of the step cache: a step's key when it is about to launch, taking
its result from the cache instead of running it, and keeping a succeeded step's result.
Plain functions over the runner (not one more mixin): the cache itself is ``cache.py``."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import JsonValue

from agentflow import artifacts, cache
from agentflow.plan import PlannedStep
from agentflow.runner.base import RunnerBase
from agentflow.settings import settings
from agentflow.state import now
from agentflow.workflow.model import Step


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


def key_of(r: RunnerBase, step_id: str) -> str | None:
    """The step's cache key, as computed at its latest launch (or now, for a step that
    succeeded before a resume); None when it cannot be keyed (an input glob matches a
    link, or too much)."""
    if step_id not in r.cache_keys:
        r.cache_keys[step_id] = _compute_key(r, step_id)
    return r.cache_keys[step_id]


def _compute_key(r: RunnerBase, step_id: str) -> str | None:
    step = r.s.workflow.step(step_id)
    planned = r.s.plan.step(step_id)
    needs: dict[str, JsonValue] = {}
    for need in planned.needs:
        k = key_of(r, need)
        if k is None:
            return None
        needs[need] = k
    env = r._step_env(step)
    spec = r.s.workflow.cache_of(step)
    patterns = [r._render(p, env) for p in spec.inputs] if spec else []
    try:
        files = cache.hash_inputs(patterns, r.s.workspace, r.hidden, settings().cache_max)
    except cache.NotCacheable as e:
        r._emit("cache_skipped", step_id, message=f"not cached: {e}")
        return None
    command = r._render(r.state.steps[step_id].run_override or planned.run, env)
    # Secrets by name only: a hash of a short secret could be guessed back.
    material: dict[str, JsonValue] = {
        "step": step_id,
        "command": r.redactor(command),
        "env": {k: r.redactor(v) for k, v in sorted(env.items())},
        "secrets": list[JsonValue](sorted(r.s.secrets)),
        "image": image_of(r),
        "inputs": dict(sorted(r._inputs().items())),
        "needs": needs,
        "files": dict(files),
        "declared": _declared(step),
    }
    return cache.digest(material)


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
    why = f"cached from {entry.run_id}"
    r._update(
        planned.id, status="succeeded", cached_from=entry.run_id, outputs=entry.outputs,
        started_at=now(), finished_at=now(), exit_code=None, message=why,
    )  # fmt: skip
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
