"""Carrying out what the model decided: changes (a command, env for the step or
everything after it, inputs for the rest of the run, a patch to workspace files and its
undo, other runs to stop), rerunning upstream steps, skip. Every change to what runs is
shown and approved first: the model's words never run unseen."""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from datetime import timedelta
from typing import Any

from pydantic import JsonValue

from agentflow import safefs
from agentflow.agent import patch
from agentflow.agent.decision import Decision, Rules
from agentflow.agent.patch import PatchError
from agentflow.planner.static import render_inputs
from agentflow.recovery import Decision as RecoveryDecision
from agentflow.runner.recovering import Recovering
from agentflow.state import DONE, StepStatus, now, rerun_changes, with_dependents
from agentflow.workflow.model import Step


class Acting(Recovering):
    """The model's decisions, carried out on the runner's thread."""

    def _rules(self, step_id: str) -> Rules:
        return Rules(
            step=step_id,
            statuses={k: v.status for k, v in self.state.steps.items()},
            upstream=frozenset(self._upstream(step_id)),
            inputs=self._inputs(),
            specs=dict(self.s.workflow.inputs),
            env_names=frozenset(self._step_env(self.s.workflow.step(step_id))),
            secrets=frozenset(self.s.secrets),
            workspace=self.s.workspace,
            hidden=self.hidden,
            run_id=self.state.run_id,
            runs=self.s.run.path.parent,
        )

    def _upstream(self, step_id: str) -> set[str]:
        found: set[str] = set()
        todo = list(self.s.workflow.step(step_id).needs)
        while todo:
            need = todo.pop()
            if need not in found:
                found.add(need)
                todo += self.s.workflow.step(need).needs
        return found

    def _downstream(self, step_id: str) -> list[str]:
        """Every step that needs ``step_id``, directly or not, in the plan's order."""
        return [s.id for s in self.s.plan.steps if step_id in self._upstream(s.id)]

    def _approved(self, step_id: str, old: str, new: str) -> bool:
        """A person (or --yes) approved; else the step is escalated and False."""
        approve = self.s.approve
        if approve is not None and approve(step_id, old, new):
            return True
        why = "needs approval" if approve is None else "was refused"
        self._escalate(
            step_id,
            f"the model's change {why}: see the proposal in the events "
            "(approve with --yes, or in a terminal)",
        )
        return False

    def _skip(self, step_id: str, step: Step, status: StepStatus, d: Decision) -> None:
        """A skipped step does not fail the run, and the steps that need it are skipped
        with it: a person must agree to that (the model may not turn a run green)."""
        after = self._downstream(step_id)
        shown = f"skip {step_id}" + (
            f" and the steps that need it: {', '.join(after)}" if after else ""
        )
        skipped: list[JsonValue] = [step_id, *after]
        self._emit("command_proposed", step_id, message=shown + "\n", data={"skip": skipped})
        if not self._approved(step_id, f"run {step_id}\n", shown + "\n"):
            return
        why = f"the model: skip ({d.diagnosis})"
        self._apply(step_id, step, status, RecoveryDecision("skip", why))

    def _change(self, step_id: str, d: Decision, wait: float) -> None:
        """A retry with the model's changes, once a person (or --yes) approved them all:
        the model's words never run unseen."""
        st = self.state.steps[step_id]
        old = st.run_override or self._planned_run(step_id)
        new = d.run if d.run and d.run.strip() != old.strip() else None
        env = d.env or {}
        targets = [step_id] + (self._downstream(step_id) if d.scope == "downstream" else [])
        inputs = {k: v for k, v in (d.inputs or {}).items() if self._inputs().get(k) != v}
        try:
            edits = patch.prepare(d.patch, self.s.workspace, self.hidden) if d.patch else []
        except PatchError as e:
            self._escalate(step_id, f"the model's patch cannot be applied: {e}")
            return
        diff = difflib.unified_diff(_lines(old), _lines(new or old), "planned", "proposed")
        shown = f"# env for {', '.join(targets)}\n" if env and len(targets) > 1 else ""
        shown += "".join(diff) + "".join(f"+env {k}={v}\n" for k, v in env.items())
        if inputs:  # (before the diff: the env lines end the proposal, as learn reads it)
            shown = (
                "# inputs for the rest of the run\n"
                + "".join(f"+input {k}={json.dumps(v)}\n" for k, v in inputs.items())
                + shown
            )
        if d.patch:
            shown = f"# patch to {', '.join(patch.files(edits))}\n{d.patch.rstrip()}\n" + shown
        stops = list(d.stop_runs or [])
        if stops:
            shown = "".join(f"# stop agentflow run {rid}\n" for rid in stops) + shown
        self._emit("command_proposed", step_id, message=shown)
        proposal = (new or old) + "".join(f"\n# env {k}={v}" for k, v in env.items())
        if inputs:
            proposal += "".join(f"\n# input {k}={json.dumps(v)}" for k, v in inputs.items())
        if d.patch:
            proposal += "\n# patch:\n" + "".join(f"# {line}\n" for line in d.patch.splitlines())
        proposal += "".join(f"\n# stop agentflow run {rid}" for rid in stops)
        if not self._approved(step_id, old, proposal):
            return
        if edits and not self._patched(step_id, d.patch or "", edits):
            return
        if inputs:
            self._change_inputs(step_id, inputs)
        if stops:
            self._stop_runs(step_id, stops)
        for target in targets:
            tst = self.state.steps[target]
            if env and tst.status not in DONE:
                self._update(target, env_overrides={**tst.env_overrides, **env})
        changes: dict[str, object] = {
            "status": "pending",
            "not_before": now() + timedelta(seconds=wait),
            "message": "retry with the model's changes",
        }
        if new is not None:
            changes["run_override"] = new
        self._update(step_id, **changes)
        what = [f"env {', '.join(f'{k}={v}' for k, v in env.items())}"] if env else []
        what += [f"inputs {', '.join(inputs)}"] if inputs else []
        what += [f"patch to {', '.join(patch.files(edits))}"] if edits else []
        self._emit(
            "retry_scheduled",
            step_id,
            message="retry with the model's changes" + (f" ({'; '.join(what)})" if what else ""),
        )

    def _patched(self, step_id: str, text: str, edits: list[patch.Change]) -> bool:
        """Apply an approved patch: saved in the step's folder for people, its undo in the
        run directory (out of the step's reach), then written. False: escalated."""
        attempt = self.state.steps[step_id].attempts
        name = f"patch-{attempt}.diff"
        undo = f"undo-{step_id}-{attempt}.json"
        try:
            self.s.run.write_text(
                undo, json.dumps([{"path": c.path, "before": c.before, "after": c.after}
                                  for c in edits])
            )  # fmt: skip
            patch.write(edits, self.s.workspace, hidden=self.hidden)
        except (OSError, PatchError) as e:  # (write puts back what it wrote: all or nothing)
            self._escalate(step_id, f"the model's patch could not be written: {e}")
            return False
        try:  # the copy for people is a courtesy: the step's folder is the step's to spoil
            safefs.write_text(self.s.run.step_dir(step_id) / name, self.s.run.steps_path, text)
        except OSError:
            name = ""
        self._update(step_id, patch_undo=undo)
        self._emit(
            "patch_applied",
            step_id,
            message=f"patched {', '.join(patch.files(edits))}",
            data={"files": list(patch.files(edits)), "patch": name},
        )
        return True

    def _patch_result(self, step_id: str, *, succeeded: bool) -> None:
        """After the attempt that followed a patch: a fix that did not work is taken back
        (the next diagnosis starts from the files as they were)."""
        undo = self.state.steps[step_id].patch_undo
        if undo is None:
            return
        self._update(step_id, patch_undo=None)
        if succeeded:
            return
        try:
            records = json.loads((self.s.run.path / undo).read_text())
            edits = [patch.Change(r["path"], r["before"], r["after"]) for r in records]
            left = patch.write(edits, self.s.workspace, undo=True, hidden=self.hidden)
        except (OSError, ValueError, KeyError, TypeError) as e:  # (PatchError is a ValueError)
            self._emit("patch_reverted", step_id, message=f"could not take the patch back: {e}")
            return
        # A file changed after the patch (by the retry, another step) keeps that change.
        restored = [p for p in patch.files(edits) if p not in left]
        said = [f"{', '.join(restored)} restored"] if restored else []
        said += [f"{p} changed after the patch: left as it is" for p in left]
        data: dict[str, JsonValue] = {"files": list(restored)}
        if left:
            data["changed"] = list(left)
        self._emit(
            "patch_reverted",
            step_id,
            message=f"the patch did not fix it: {'; '.join(said)}",
            data=data,
        )

    def _change_inputs(self, step_id: str, inputs: dict[str, Any]) -> None:
        """New input values for the rest of the run: probes and checks render them when
        they run; the commands of steps still to run are rendered again now (a command the
        planner wrote, or one approved earlier, has its values in it and stays as it is)."""
        merged = {**self._inputs(), **inputs}
        self.state = self.state.with_run(input_overrides={**self.state.input_overrides, **inputs})
        rendered = []
        for planned in self.s.plan.steps:
            pst = self.state.steps[planned.id]
            if pst.status in DONE or pst.status == "running" or planned.source != "workflow":
                continue
            run = self.s.workflow.step(planned.id).run
            if run is None or pst.run_override is not None:
                continue  # (a command approved earlier is kept as it was approved)
            new = render_inputs(run, merged)
            if new != planned.run:
                self._update(planned.id, run_override=new)
                rendered.append(planned.id)
        self._save()
        self._emit(
            "inputs_changed",
            step_id,
            message="inputs "
            + ", ".join(f"{k}={json.dumps(v)}" for k, v in inputs.items())
            + (f"; commands of {', '.join(rendered)} rendered again" if rendered else ""),
            data={"inputs": inputs, "rendered": list(rendered)},
        )

    def _stop_runs(self, step_id: str, runs: list[str]) -> None:
        """Stop other runs of this home (approved), as `agentflow stop` does, on a thread:
        the step waits for them, the runner does not."""
        home = self.s.run.path.parent.parent

        def stop() -> list[str]:
            said = []
            for rid in runs:
                env = {**os.environ, "AGENTFLOW_HOME": str(home)}
                try:
                    done = subprocess.run(
                        [sys.executable, "-m", "agentflow", "stop", rid],
                        env=env, capture_output=True, text=True, timeout=90, check=False,
                    )  # fmt: skip
                    out = (done.stdout + done.stderr).strip().splitlines()
                    said.append(out[-1] if out else f"run {rid}: exit {done.returncode}")
                except (OSError, subprocess.TimeoutExpired) as e:
                    said.append(f"run {rid}: {e}")
            self.wake()
            return said

        self.holds[step_id] = _background(stop)
        self._emit("runs_stopping", step_id, message=f"stopping {', '.join(runs)}",
                   data={"runs": [*runs]})  # fmt: skip

    def _collect_holds(self) -> None:
        for step_id, held in list(self.holds.items()):
            if not held.done():
                continue
            del self.holds[step_id]
            try:
                said = held.result()
            except Exception as e:  # a thread's own bug: the retry goes on
                said = [f"{type(e).__name__}: {e}"]
            self._emit("runs_stopped", step_id, message="; ".join(said)[:500])

    def _rerun(self, step_id: str, d: Decision) -> None:
        """Run succeeded upstream steps again, and everything that needs them (the failed
        step with them): they are commands that ran before, so no approval is needed."""
        names = list(d.rerun or [])
        reset = with_dependents({p.id: p.needs for p in self.s.plan.steps}, names)
        busy = [s for s in reset if self.state.steps[s].status == "running"]
        if busy:
            self._escalate(step_id, f"the model asked to rerun {', '.join(names)}, "
                           f"but {', '.join(busy)} is running")  # fmt: skip
            return
        for target in reset:
            # For real: a result taken from the cache would be the one the model doubts.
            self._update(target, **rerun_changes(f"rerun: asked by the model for {step_id}"))
        self.schedule.changed()
        self._emit(
            "rerun_scheduled",
            step_id,
            message=f"rerun {', '.join(reset)}: {d.diagnosis}",
            data={"steps": list[JsonValue](reset)},
        )


def _background(fn: Callable[[], list[str]]) -> Future[list[str]]:
    done: Future[list[str]] = Future()

    def run() -> None:
        try:
            done.set_result(fn())
        except BaseException as e:
            done.set_exception(e)

    threading.Thread(target=run, name="agentflow-stop-runs", daemon=True).start()
    return done


def _lines(text: str) -> list[str]:
    return (text if text.endswith("\n") else text + "\n").splitlines(keepends=True)
