"""``agentflow learn`` from the recovery agent's transcript (issue 15): run folders written
the way the runner writes them (``diagnosis`` events with the decision as data, the tool
calls before it, ``patch_applied``, ``rerun_scheduled``, ``inputs_changed``), learned
through the real CLI. A patch or a rerun that got a step through becomes an entry naming
the file and the fix, or the step to rerun; what did not end in a success is not learned."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from agentflow.plan import Plan, PlannedStep
from agentflow.state import RunState, StepState
from agentflow.store import Event, RunDir, Store

from conftest import Env

WORKFLOW = """\
version: 1
name: train
defaults: {on_failure: diagnose}
steps:
  - id: prepare
    run: python3 prepare.py
  - id: train
    needs: [prepare]
    run: python3 train.py
  - id: report
    needs: [train]
    run: python3 report.py
"""
COMMANDS = {
    "prepare": "python3 prepare.py",
    "train": "python3 train.py",
    "report": "python3 report.py",
}
DECISION_FIELDS = ("run", "env", "scope", "inputs", "patch", "rerun", "question", "wait")

OFF_BY_ONE = "AssertionError: warmup 11 must be below steps 10"
TRACEBACK = f"""\
loading config
Traceback (most recent call last):
  File "train.py", line 9, in <module>
    assert cfg.WARMUP < cfg.STEPS
{OFF_BY_ONE}
"""
TRAINED = "loading config\ntrained 10 steps\n"
PATCH = """\
--- a/config.py
+++ b/config.py
@@ -1,3 +1,3 @@
 STEPS = 10
-WARMUP = STEPS + 1
+WARMUP = STEPS - 1
 LR = 0.1
"""


@dataclass
class Recorded:
    """A run folder, its state, logs and events written as the runner writes them."""

    af: Env
    run: RunDir
    attempts: dict[str, int] = field(default_factory=dict)

    @property
    def rid(self) -> str:
        return self.run.run_id

    def event(self, kind: str, step: str | None = None, **fields: Any) -> None:
        attempt = self.attempts.get(step, 0) if step else None
        self.run.append_event(Event(kind=kind, step=step, attempt=attempt, **fields))

    def attempt(self, step: str, log: str, ok: bool) -> None:
        """One attempt of ``step``: it starts (the last one's files kept in attempt-N/),
        prints ``log`` and ends."""
        folder = self.run.step_dir(step)
        folder.mkdir(parents=True, exist_ok=True)
        n = self.attempts.get(step, 0) + 1
        if n > 1:
            (folder / f"attempt-{n - 1}").mkdir()
            (folder / "output.log").rename(folder / f"attempt-{n - 1}" / "output.log")
        self.attempts[step] = n
        self.event("step_started", step, status="running")
        (folder / "output.log").write_text(log)
        if ok:
            self.event("step_finished", step, status="succeeded", exit_code=0)
        else:
            self.event("step_finished", step, status="failed", exit_code=1, message="exit code 1")

    def tool(self, at: str, name: str, result: str, /, **args: Any) -> None:
        """A look-around call the model made while diagnosing step ``at``."""
        data = {"tool": name, "input": args, "result": result, "error": False}
        self.event("agent_tool", at, data=data)

    def decide(self, step: str, action: str, diagnosis: str, category: str, **fields: Any) -> None:
        """The model's decision: the message as before, the fields as data."""
        self.event("diagnosis_started", step, status="failed")
        data: dict[str, Any] = {"action": action, "diagnosis": diagnosis, "category": category}
        data |= {k: fields.get(k) for k in DECISION_FIELDS}
        data |= {"turns": 3, "tools": ["read_log", "read_file"], "usage": {"calls": 3}}
        message = f"{action}: {diagnosis} [{category}; 4321 tokens]"
        self.event("diagnosis", step, status="failed", message=message, data=data)

    def finish(self) -> str:
        steps = {s: StepState(status="succeeded", attempts=n) for s, n in self.attempts.items()}
        state = RunState(
            run_id=self.rid,
            workflow="train",
            workflow_file=str(self.af.workspace / "wf.yaml"),
            workspace=str(self.af.workspace),
            status="succeeded",
            steps=steps,
        )
        self.run.write_state(state)
        planned = [PlannedStep(id=s, run=c) for s, c in COMMANDS.items()]
        self.run.write_plan(Plan(workflow="train", planner="static", inputs={}, steps=planned))
        self.event("run_finished", status="succeeded")
        return self.rid


def recorded(af: Env, rid: str) -> Recorded:
    af.write(WORKFLOW)
    run = Store(af.home).create(rid)
    run.write_text("workflow.yaml", WORKFLOW)
    (run.path / "lock").unlink()
    rec = Recorded(af, run)
    rec.event("run_started", message="3 steps")
    return rec


def learn(af: Env, rid: str) -> str:
    res = af.cli("learn", rid)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def runbook_of(out: str) -> str:
    """The runbook's lines in the patch (without their ``+``)."""
    part = out.split("diff --git a/wf.md b/wf.md", 1)[1].split("diff --git a/wf.yaml", 1)[0]
    lines = [x[1:] for x in part.splitlines() if x.startswith("+") and not x.startswith("+++")]
    return "\n".join(lines)


def unwrapped(book: str) -> str:
    """The runbook's paragraphs on one line each."""
    return book.replace("\n  ", " ")


def test_a_patch_that_got_a_step_through_names_the_file_and_the_change(af: Env) -> None:
    rec = recorded(af, "patched")
    rec.attempt("prepare", "prepared\n", ok=True)
    rec.attempt("train", TRACEBACK, ok=False)
    rec.tool("train", "read_log", TRACEBACK, step="train")
    rec.tool("train", "read_file", "1: STEPS = 10\n2: WARMUP = STEPS + 1\n", path="config.py")
    rec.tool("train", "text", "WARMUP is one past STEPS.")
    rec.decide(
        "train",
        "retry_with_changes",
        "config.py sets WARMUP one past STEPS (an off-by-one); the assert in train.py shows it",
        "bug",
        patch=PATCH,
    )
    rec.event("patch_applied", "train", data={"files": ["config.py"], "patch": "patch-1.diff"})
    rec.event("retry_scheduled", "train", message="retry with the model's changes")
    rec.attempt("train", TRAINED, ok=True)
    rec.attempt("report", "report written\n", ok=True)
    rid = rec.finish()

    out = learn(af, rid)
    assert out.startswith(f"# agentflow learn {rid}: 1 recovery\n")
    assert f"# 1. train failed: {OFF_BY_ONE}" in out
    assert "#    the model: retry with a patch to config.py\n" in out
    assert "#    no rule: the fix changed files (config.py), which a recover: rule cannot do" in out
    raw = runbook_of(out)
    book = unwrapped(raw)
    assert "### Failure: AssertionError (bug) in train" in book
    assert f"- Symptom: `train` failed (exit code 1); its log has `{OFF_BY_ONE}`" in book
    assert "- Cause: config.py sets WARMUP one past STEPS (an off-by-one)" in book
    # Its own log is what every diagnosis reads first: not worth citing.
    assert "Found by reading `config.py`." in book
    assert "- What to do: retry with the change below to `config.py`." in book
    assert "It worked in run patched: attempt 2 succeeded." in book
    # The fix: the diff's changed lines, in a diff block.
    fix = "--- a/config.py\n+++ b/config.py\n-WARMUP = STEPS + 1\n+WARMUP = STEPS - 1\n```"
    assert "```diff\n  " + fix.replace("\n", "\n  ") in raw
    assert "WARMUP is one past STEPS" not in out  # the model's own words are not a source
    assert "recover:" not in out.split("diff --git a/wf.yaml", 1)[1]  # no rule can patch

    res = af.cli("learn", rid, "--apply")
    assert res.returncode == 0, res.stderr
    assert af.cli("validate", str(af.workspace / "wf.yaml")).returncode == 0
    assert "+WARMUP = STEPS - 1" in (af.workspace / "wf.md").read_text()


@pytest.mark.parametrize("recorded_for", ["train", None])
def test_a_rerun_of_an_upstream_step_is_learned_as_one(af: Env, recorded_for: str | None) -> None:
    """``rerun_scheduled`` recorded for the step that failed, or for the run."""
    bad_row = "ValueError: data/train.csv line 17: expected 4 columns, got 3"
    rec = recorded(af, "reran")
    rec.attempt("prepare", "prepared\n", ok=True)
    rec.attempt("train", f"loading data\n{bad_row}\n", ok=False)
    rec.tool("train", "read_file", "17: 0.1,0.2,0.3\n", path="data/train.csv", start_line=17)
    rec.tool("train", "read_log", "prepared\n", step="prepare")
    rec.decide(
        "train",
        "rerun",
        "prepare was cut short while writing data/train.csv; writing it again fixes the file",
        "data",
        rerun=["prepare"],
    )
    rec.event("rerun_scheduled", recorded_for, data={"steps": ["prepare", "train"]})
    rec.attempt("prepare", "prepared\n", ok=True)
    rec.attempt("train", "loading data\ntrained 10 steps\n", ok=True)
    rec.attempt("report", "report written\n", ok=True)
    rid = rec.finish()

    out = learn(af, rid)
    assert out.startswith(f"# agentflow learn {rid}: 1 recovery\n")
    assert f"# 1. train failed: {bad_row}" in out
    assert "#    the model: rerun prepare, then retry\n" in out
    assert "#    no rule: the fix reran prepare first, which a recover: rule cannot do" in out
    book = unwrapped(runbook_of(out))
    assert "### Failure: ValueError (data) in train" in book
    assert "- Cause: prepare was cut short while writing data/train.csv" in book
    assert "Found by reading `data/train.csv` and the log of `prepare`." in book
    assert "- What to do: rerun `prepare` (and the steps that need it), then retry `train`." in book
    assert "It worked in run reran: attempt 2 succeeded." in book
    assert "recover:" not in out.split("diff --git a/wf.yaml", 1)[1]


def test_an_investigation_that_failed_again_is_not_learned(af: Env) -> None:
    """The model's first decision only looked (a changed command that printed the config)
    and the step failed again; its second, a patch (and the command put back), got it
    through. Only the second is learned, and the probe is nowhere in the runbook."""
    probe = "cat config.py; python3 train.py"
    rec = recorded(af, "probed")
    rec.attempt("prepare", "prepared\n", ok=True)
    rec.attempt("train", TRACEBACK, ok=False)
    rec.tool("train", "grep", "train.py:9: assert", pattern="assert", path="train.py")
    rec.decide("train", "retry_with_changes", "show the config", "uncategorised", run=probe)
    proposal = f"--- planned\n+++ proposed\n@@ -1 +1 @@\n-{COMMANDS['train']}\n+{probe}\n"
    rec.event("command_proposed", "train", message=proposal)
    rec.event("retry_scheduled", "train", message="retry with the model's changes")
    rec.attempt("train", "STEPS = 10\nWARMUP = STEPS + 1\n" + TRACEBACK, ok=False)
    rec.tool("train", "read_file", "1: STEPS = 10\n", path="config.py", start_line=1)
    rec.decide(
        "train",
        "retry_with_changes",
        "WARMUP is one past STEPS",
        "bug",
        patch=PATCH,
        run=COMMANDS["train"],
    )
    back = f"--- planned\n+++ proposed\n@@ -1 +1 @@\n-{probe}\n+{COMMANDS['train']}\n"
    rec.event("command_proposed", "train", message=back)
    rec.event("patch_applied", "train", data={"files": ["config.py"], "patch": "patch-3.diff"})
    rec.event("retry_scheduled", "train", message="retry with the model's changes")
    rec.attempt("train", TRAINED, ok=True)
    rec.attempt("report", "report written\n", ok=True)
    rid = rec.finish()

    out = learn(af, rid)
    assert out.startswith(f"# agentflow learn {rid}: 1 recovery\n")
    assert "#    the model: retry with a patch to config.py\n" in out
    assert "cat config.py" not in out
    assert "show the config" not in out
    assert "searching" not in out  # what the first decision looked at is not cited
    book = unwrapped(runbook_of(out))
    assert "- Cause: WARMUP is one past STEPS" in book
    assert "It worked in run probed: attempt 3 succeeded." in book
    assert "Found by reading `config.py`." in book

    # A run whose investigation failed and that a person then got through: nothing.
    rec = recorded(af, "escalated")
    rec.attempt("prepare", "prepared\n", ok=True)
    rec.attempt("train", TRACEBACK, ok=False)
    rec.decide("train", "retry_with_changes", "show the config", "uncategorised", run=probe)
    rec.event("command_proposed", "train", message=proposal)
    rec.event("retry_scheduled", "train", message="retry with the model's changes")
    rec.attempt("train", TRACEBACK, ok=False)
    rec.decide("train", "escalate", "a person must fix config.py", "bug", question="fix it?")
    rec.event("escalated", "train", status="blocked", message="a person must decide")
    rec.event("run_resumed", message="0 steps were running")
    rec.attempt("train", TRAINED, ok=True)
    rec.attempt("report", "report written\n", ok=True)
    rid = rec.finish()
    res = af.cli("learn", rid)
    assert res.returncode == 1
    assert "recovered from nothing" in res.stderr
    assert not (af.workspace / "wf.md").exists()


def test_a_change_for_the_dependents_or_the_inputs_is_not_a_one_step_rule(af: Env) -> None:
    read_only = "OSError: [Errno 30] Read-only file system: '/data/ckpt'"
    too_big = "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    rec = recorded(af, "scoped")
    rec.attempt("prepare", "prepared\n", ok=True)
    rec.attempt("train", f"saving\n{read_only}\n", ok=False)
    rec.tool("train", "sandbox_info", "read-only root; mounts: /work (rw)")
    rec.decide(
        "train",
        "retry_with_changes",
        "/data is read-only in the sandbox; report reads the checkpoints too",
        "environment",
        env={"CKPT_DIR": "/work/ckpt"},
        scope="downstream",
    )
    rec.event("retry_scheduled", "train", message="retry with the model's changes")
    rec.attempt("train", "saving\nsaved\n", ok=True)
    rec.attempt("report", f"evaluating\n{too_big}\n", ok=False)
    rec.decide(
        "report",
        "retry_with_changes",
        "the evaluation batch does not fit",
        "resources",
        inputs={"batch_size": 8},
    )
    rec.event("inputs_changed", "report", data={"inputs": {"batch_size": 8}})
    rec.event("retry_scheduled", "report", message="retry with the model's changes")
    rec.attempt("report", "evaluating\nreport written\n", ok=True)
    rid = rec.finish()

    out = learn(af, rid)
    assert "#    the model: retry with CKPT_DIR=/work/ckpt for the step and its dependents" in out
    assert "#    the model: retry with the input batch_size=8 for the rest of the run" in out
    book = unwrapped(runbook_of(out))
    assert (
        "- What to do: retry with `CKPT_DIR=/work/ckpt` for `train` and every step that needs "
        "it. A `recover:` rule sets the environment of one step only: to keep it, set it in "
        "the workflow's `env:`." in book
    )
    assert (
        "- What to do: retry with the input `batch_size=8` for the rest of the run. A "
        "`recover:` rule cannot change inputs: to keep it, change the input's default (or "
        "`--set batch_size=8`)." in book
    )
    assert "Found by looking at the sandbox." in book
    assert "recover:" not in out.split("diff --git a/wf.yaml", 1)[1]


def test_the_models_wait_goes_into_the_rule(af: Env) -> None:
    limited = "HTTPError: 429 Too Many Requests for url https://hub.example.org/shards"
    rec = recorded(af, "waited")
    rec.attempt("prepare", f"downloading\n{limited}\n", ok=False)
    rec.decide("prepare", "retry", "the hub rate-limits us; a minute later it serves", "network",
               wait="1m")  # fmt: skip
    rec.event("retry_scheduled", "prepare", message="the model: retry")
    rec.attempt("prepare", "downloading\nprepared\n", ok=True)
    rec.attempt("train", TRAINED, ok=True)
    rec.attempt("report", "report written\n", ok=True)
    rid = rec.finish()
    out = learn(af, rid)
    assert "#    the model: retry as is, 1m later" in out
    assert "action: retry, wait: 1m}  # agentflow learn: run waited" in out


def test_what_the_model_wrote_is_quoted_safely(af: Env) -> None:
    """The model's patch and values come from a step's output: in the proposal they stay
    inside their block and on their lines, without control sequences, and bounded."""
    lines = "".join(f"-x{i} = 0\n+x{i} = 1\n" for i in range(20))
    patch = (
        "--- a/config.py\n+++ b/config.py\n@@ -1,21 +1,21 @@\n"
        "-print('```')\n+print('````\x1b]0;owned\x07')  # " + "y" * 300 + "\n" + lines
    )
    rec = recorded(af, "hostile")
    rec.attempt("prepare", "prepared\n", ok=True)
    rec.attempt("train", TRACEBACK, ok=False)
    rec.decide(
        "train",
        "retry_with_changes",
        "config.py\x1b[2J is wrong",
        "bug",
        patch=patch,
        env={"MODE": "safe\ndiff --git a/evil b/evil"},
    )
    rec.event("patch_applied", "train", data={"files": ["config.py"], "patch": "patch-1.diff"})
    rec.event("retry_scheduled", "train", message="retry with the model's changes")
    rec.attempt("train", TRAINED, ok=True)
    rec.attempt("report", "report written\n", ok=True)
    rid = rec.finish()

    out = learn(af, rid)
    assert "#    the model: retry with a patch to config.py and MODE=safe …\n" in out
    assert "\x1b" not in out
    assert [x for x in out.splitlines() if x.startswith("diff --git")] == [
        "diff --git a/wf.md b/wf.md",
        "diff --git a/wf.yaml b/wf.yaml",
    ]
    raw = runbook_of(out)
    assert "  `````diff\n  --- a/config.py\n  +++ b/config.py\n  -print('```')\n" in raw
    assert "+print('````')  # yyy" in raw  # the sequence gone, the text kept
    block = raw.split("`````diff\n", 1)[1].split("\n  `````", 1)[0].splitlines()
    assert len(block) == 25  # 24 changed lines (headers included), then what was left out
    assert block[-1] == "  # [... 20 more changed lines]"
    assert max(len(x) for x in block) <= 2 + 160
    assert "config.py is wrong" in unwrapped(raw)
