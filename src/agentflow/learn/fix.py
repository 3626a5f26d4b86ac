"""A fix: what was decided about a failed attempt and carried out (by a ``recover:`` rule
or the model), how it reads, and whether a rule can do it again."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from agentflow.textsafe import one_line
from agentflow.workflow import format_duration
from agentflow.workflow.model import RecoverRule


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
    wait: float | None = None
    """Seconds the model said to wait before the retry."""
    scope: Literal["step", "downstream"] = "step"
    """``downstream``: ``set_env`` was set for the step and every step that needs it."""
    inputs: dict[str, str] = field(default_factory=dict)
    """Inputs changed for the rest of the run (values as text)."""
    files: tuple[str, ...] = ()
    """The files the model's patch changed."""
    fix_lines: tuple[str, ...] = ()
    """The patch's changed lines, bounded (``transcript.changed_lines``)."""
    rerun: tuple[str, ...] = ()
    """Upstream steps run again before the step's retry."""
    found_by: tuple[str, ...] = ()
    """What the model looked at before it decided (``reading `config.py```)."""

    @property
    def key(self) -> tuple[object, ...]:
        """What makes two fixes the same: what was done, whoever decided it."""
        return (
            self.action,
            tuple(sorted(self.set_env.items())),
            self.command_diff,
            self.wait,
            self.scope,
            tuple(sorted(self.inputs.items())),
            self.files,
            self.fix_lines,
            self.rerun,
        )

    def describe(self) -> str:
        who = (
            "the model"
            if self.source == "model"
            else f"recover rule {self.rule_number}"
            + (f" (/{self.rule.match}/)" if self.rule else "")
        )
        return f"{who}: {self.what()}"

    def what(self) -> str:
        """The fix in a few words, on one line: it heads the patch, where a line break
        in a value the model wrote would start a hunk of its own."""
        if self.action == "skip":
            return "skip the step"
        changes = []
        if self.command_diff:
            changes.append("a changed command")
        if self.files:
            changes.append("a patch to " + ", ".join(self.files))
        if self.set_env:
            env = ", ".join(one_line(f"{k}={v}", 100) for k, v in self.set_env.items())
            changes.append(env + (" for the step and its dependents" if self.downstream else ""))
        if self.inputs:
            shown = ", ".join(one_line(f"{k}={v}", 100) for k, v in self.inputs.items())
            s = "s" if len(self.inputs) > 1 else ""
            changes.append(f"the input{s} {shown} for the rest of the run")
        did = f"rerun {', '.join(self.rerun)}, then retry" if self.rerun else "retry"
        text = did + (
            " with " + " and ".join(changes) if changes else "" if self.rerun else " as is"
        )
        return text + (f", {format_duration(self.wait)} later" if self.wait else "")

    @property
    def downstream(self) -> bool:
        return self.scope == "downstream" and bool(self.set_env)

    def why_no_rule(self, step: str) -> str | None:
        """Why this fix cannot be a ``recover:`` rule (a rule retries one step with its
        environment set), or None when it can."""
        cannot = "which a recover: rule cannot do"
        if self.command_diff:
            return f"the fix changed the step's command, {cannot}"
        if self.files:
            return f"the fix changed files ({', '.join(self.files)}), {cannot}"
        if self.rerun:
            return f"the fix reran {', '.join(self.rerun)} first, {cannot}"
        if self.inputs:
            return f"the fix changed the run's inputs, {cannot}"
        if self.downstream:
            return (
                f"the fix set the environment of {step} and the steps that need it; "
                "a recover: rule sets one step's only"
            )
        return None
