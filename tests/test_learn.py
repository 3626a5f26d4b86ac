"""``agentflow learn``: from a run that recovered (the model's diagnosis, or a ``recover:``
rule) to a runbook entry and a rule, as a patch; applied, the rule makes a fresh run recover
with no model at all. The real CLI, the real anthropic SDK against a fake Messages API."""

from __future__ import annotations

import difflib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fake_anthropic import FakeAnthropic, Reply, tool_use

from conftest import Env, run_id_of

SYMPTOM = "ConnectionError: mirror.example.org refused the connection (errno 111)"

FLAKY = f"""\
version: 1
name: flaky
# The mirror step fails until it is pointed at the backup mirror.
defaults: {{on_failure: diagnose}}
steps:
  - id: fetch            # downloads the shards
    run: |
      echo "downloading shard 3"
      if [ "${{MIRROR:-}}" != "backup" ]; then
        echo "{SYMPTOM}"
        exit 1
      fi
      echo "fetched from $MIRROR"

  - id: use
    needs: [fetch]
    run: echo used
"""


def use_fake(af: Env, fake: FakeAnthropic) -> None:
    af.env["ANTHROPIC_API_KEY"] = "test-key"
    af.env["ANTHROPIC_BASE_URL"] = fake.url


def no_model(af: Env) -> None:
    af.env.pop("ANTHROPIC_API_KEY", None)
    af.env.pop("ANTHROPIC_BASE_URL", None)


def decision(action: str, diagnosis: str, **fields: Any) -> Reply:
    return tool_use("submit_decision", {"diagnosis": diagnosis, "action": action, **fields})


def events(af: Env, rid: str) -> list[dict[str, Any]]:
    lines = (af.run_dir(rid) / "events.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


def only_added(old: str, new: str) -> bool:
    """Whether ``new`` is ``old`` with lines added, none changed or removed."""
    ops = difflib.SequenceMatcher(None, old.splitlines(), new.splitlines()).get_opcodes()
    return {op for op, *_ in ops} <= {"equal", "insert"}


def run_with(af: Env, wf: Path, replies: list[Reply], *args: str) -> str:
    with FakeAnthropic(replies) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), "--ci", "--yes", *args)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not fake.replies, "every scripted decision was asked for"
    return run_id_of(res.stdout)


def test_a_diagnosed_fix_becomes_a_rule_that_recovers_a_fresh_run_without_the_model(
    af: Env,
) -> None:
    wf = af.write(FLAKY)
    original = wf.read_text()
    fix = decision(
        "retry_with_changes",
        "the primary mirror refuses connections; the backup mirror works",
        category="network",
        env={"MIRROR": "backup"},
    )
    rid = run_with(af, wf, [fix])

    res = af.cli("learn", rid)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.startswith(f"# agentflow learn {rid}: 1 recovery\n")
    assert f"# 1. fetch failed: {SYMPTOM}" in out
    assert "#    the model: retry with MIRROR=backup" in out
    # a runbook next to the workflow, named in docs:
    assert "diff --git a/wf.md b/wf.md\nnew file mode 100644\n--- /dev/null\n+++ b/wf.md" in out
    assert "+### Failure: ConnectionError (network) in fetch" in out
    assert "+- Symptom: `fetch` failed (exit code 1); its log has" in out
    assert f"+  `{SYMPTOM}`" in out  # the line as the log has it
    assert "+- Cause: the primary mirror refuses connections; the backup mirror works" in out
    assert "+- What to do: retry with `MIRROR=backup`." in out
    assert "+docs: [wf.md]" in out
    rule = (
        r"{match: 'ConnectionError: mirror\.example\.org refused the connection \(errno \d+\)',"
        ' action: retry, set_env: {MIRROR: "backup"}}'
    )
    assert f"+    recover:\n+      - {rule}  # agentflow learn: run {rid}\n" in out
    assert wf.read_text() == original  # printing changes nothing
    assert not (af.workspace / "wf.md").exists()

    # -o: a patch that patch -p1 takes, in the workflow's folder
    res = af.cli("learn", rid, "-o", "learned.patch")
    assert res.returncode == 0, res.stderr
    assert "wrote the patch to learned.patch" in res.stdout
    assert (af.workspace / "learned.patch").read_text() == out
    if shutil.which("patch"):
        check = subprocess.run(
            ["patch", "-p1", "--dry-run", "-i", "learned.patch"],
            cwd=af.workspace,
            capture_output=True,
            text=True,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr

    res = af.cli("learn", rid, "--apply")
    assert res.returncode == 0, res.stderr
    assert "wrote wf.md (new)" in res.stdout
    assert "wrote wf.yaml" in res.stdout
    assert "recover rule on fetch" in res.stdout
    runbook = (af.workspace / "wf.md").read_text()
    assert runbook.startswith("# flaky\n\n## Failure modes\n\n### Failure: ConnectionError")
    # The workflow's own text is kept: only lines were added.
    new = wf.read_text()
    assert only_added(original, new)
    assert "# The mirror step fails until" in new
    assert "- id: fetch            # downloads the shards" in new
    assert af.cli("validate", str(wf)).returncode == 0

    # A fresh run, with no API key and no diagnosis: the rule recovers it.
    no_model(af)
    res = af.cli("run", str(wf), "--ci", "--no-diagnose")
    assert res.returncode == 0, res.stdout + res.stderr
    fresh = run_id_of(res.stdout)
    kinds = [(e["kind"], e.get("step")) for e in events(af, fresh)]
    assert ("rule_matched", "fetch") in kinds
    assert not any(k in ("diagnosis", "command_proposed") for k, _ in kinds)
    assert af.state(fresh)["steps"]["fetch"]["attempts"] == 2
    assert "rule matched: recover rule 1 matched /ConnectionError" in res.stdout

    # With diagnosis on, the model is not asked either: the rule acts first.
    with FakeAnthropic([]) as fake:
        use_fake(af, fake)
        res = af.cli("run", str(wf), "--ci")
    assert res.returncode == 0, res.stdout + res.stderr
    assert fake.requests == []

    # Everything it learned is there now.
    res = af.cli("learn", rid)
    assert res.returncode == 0, res.stderr
    assert "nothing to propose" in res.stdout
    assert "wf.yaml has this rule on fetch already" in res.stdout
    assert "has changed since run" in res.stderr  # the file is not the one the run froze


RUNBOOK = """\
# queue

## Purpose
Submit the job to the queue.

## Failure modes

### Failure: queue full in submit
- Symptom: `submit` failed; its log has `queue is full`.
- Cause: too many jobs.
- What to do: wait and retry.

## Contacts
The platform team.
"""

QUEUE = """\
version: 1
name: queue
docs: [runbook.md]
steps:
  - id: submit
    run: |
      if [ -z "${SLOTS:-}" ]; then
        echo "submitting"
        echo "fork: Resource temporarily unavailable (pid 4242)"
        exit 1
      fi
      echo "submitted with $SLOTS slots"
    recover:
      - {match: 'Resource temporarily unavailable', action: retry, set_env: {SLOTS: "1"}}
"""


def rule_run(af: Env) -> tuple[Path, str]:
    """A run that a recover: rule got through (no model)."""
    (af.workspace / "runbook.md").write_text(RUNBOOK)
    wf = af.write(QUEUE)
    no_model(af)
    res = af.cli("run", str(wf), "--ci")
    assert res.returncode == 0, res.stdout + res.stderr
    return wf, run_id_of(res.stdout)


def test_a_rule_that_recovered_a_run_gets_a_runbook_entry_only(af: Env) -> None:
    wf, rid = rule_run(af)
    before = wf.read_text()
    res = af.cli("learn", rid)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "#    recover rule 1 (/Resource temporarily unavailable/): retry with SLOTS=1" in out
    assert "#    wf.yaml has this rule on submit already" in out
    assert "a/runbook.md" in out
    assert "wf.yaml b/wf.yaml" not in out  # the rule exists: only the runbook changes
    assert "+### Failure: fork: Resource temporarily unavailable (pid 4242) in submit" in out
    assert "+- Cause: not recorded: recover rule 1 handled it" in out

    res = af.cli("learn", rid, "--apply")
    assert res.returncode == 0, res.stderr
    assert "wrote runbook.md" in res.stdout
    assert "wf.yaml" not in res.stdout
    assert wf.read_text() == before
    runbook = (af.workspace / "runbook.md").read_text()
    # At the end of the failure modes, before the next section; the rest is untouched.
    entries = runbook.split("## Failure modes\n", 1)[1].split("## Contacts", 1)[0]
    assert entries.index("### Failure: queue full") < entries.index("### Failure: fork:")
    assert "`fork: Resource temporarily unavailable (pid 4242)`" in entries
    assert only_added(RUNBOOK, runbook)

    res = af.cli("learn", rid)
    assert res.returncode == 0
    assert "nothing to propose" in res.stdout
    assert "runbook.md describes this failure already" in res.stdout


def test_a_run_with_no_recovery_is_a_clear_error(af: Env) -> None:
    wf = af.write("version: 1\nname: fine\nsteps:\n  - id: a\n    run: echo ok\n")
    res = af.cli("run", str(wf), "--ci")
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    res = af.cli("learn", rid)
    assert res.returncode == 1
    assert res.stderr.strip() == (
        f"error: run {rid} recovered from nothing: no rule or diagnosis led to a success"
    )
    assert res.stdout == ""

    res = af.cli("learn", "no-such-run")
    assert res.returncode == 2
    assert "no run 'no-such-run'" in res.stderr
    assert "Traceback" not in res.stderr

    res = af.cli("learn", rid, "--apply", "-o", "x.patch")
    assert res.returncode == 2
    assert "not both" in res.stderr


TWO = """\
version: 1
name: two
defaults: {on_failure: diagnose}
steps:
  - id: a
    run: |
      [ -n "${A_OK:-}" ] || { echo "ValueError: a is not configured"; exit 1; }
  - id: b
    needs: [a]
    run: |
      [ -n "${B_OK:-}" ] || { echo "KeyError: 'b-token' missing from the vault"; exit 1; }
"""


def test_a_failure_the_model_fixed_twice_the_same_way_ranks_first(af: Env) -> None:
    wf = af.write(TWO)

    def fixes(a_value: str) -> list[Reply]:
        return [
            decision("retry_with_changes", "a needs A_OK", env={"A_OK": a_value}),
            decision("retry_with_changes", "b needs B_OK", env={"B_OK": "yes"}),
        ]

    first = run_with(af, wf, fixes("one"))
    second = run_with(af, wf, fixes("two"))  # b: the same fix again; a: another one

    res = af.cli("learn", second)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.startswith(f"# agentflow learn {second}: 2 recoveries, the most repeated first")
    assert out.index("# 1. b failed: KeyError") < out.index("# 2. a failed: ValueError")
    assert f"the model: retry with B_OK=yes; the same fix 2 times (runs {second}, {first})" in out
    assert "the model: retry with A_OK=two\n" in out
    # The runbook entries in that order too; each rule on its own step.
    assert out.index("+### Failure: KeyError in b") < out.index("+### Failure: ValueError in a")
    flat = out.replace("\n+  ", " ")  # the runbook's lines unwrapped
    assert f"It worked 2 times, in runs {second}, {first}." in flat
    assert f"It worked in run {second}: attempt 2 succeeded." in flat
    assert af.cli("learn", second, "--apply").returncode == 0
    learned = af.cli("validate", str(wf))
    assert learned.returncode == 0, learned.stderr
    text = wf.read_text()
    assert 'set_env: {A_OK: "two"}' in text.split("- id: b", 1)[0]
    assert 'set_env: {B_OK: "yes"}' in text.split("- id: b", 1)[1]


def test_a_changed_command_is_documented_but_not_a_rule(af: Env) -> None:
    wf = af.write(
        """\
version: 1
name: cmd
defaults: {on_failure: diagnose}
steps:
  - id: count
    run: wc -l < missing.txt
"""
    )
    fix = decision(
        "retry_with_changes", "missing.txt is never written", run="echo 0", category="bug"
    )
    rid = run_with(af, wf, [fix])
    res = af.cli("learn", rid)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "no rule: the fix changed the step's command" in out
    assert "+  -wc -l < missing.txt" in out  # the model's change, in the runbook
    assert "+  +echo 0" in out
    workflow_part = out.split("diff --git a/wf.yaml", 1)[1]
    assert "recover:" not in workflow_part
    assert "+docs: [wf.md]" in workflow_part  # the entry needs a runbook


def test_a_workflow_changed_or_moved_since_the_run(af: Env) -> None:
    wf, rid = rule_run(af)
    wf.write_text("# edited after the run\n" + wf.read_text())
    res = af.cli("learn", rid)
    assert res.returncode == 0, res.stderr
    assert "warning:" in res.stderr
    assert "has changed since run" in res.stderr
    assert "+### Failure: fork: Resource temporarily unavailable" in res.stdout
    assert "+- Symptom: `submit` failed (exit code 1); its log has" in res.stdout

    moved = af.workspace / "moved"
    moved.mkdir()
    for name in ("wf.yaml", "runbook.md"):
        (af.workspace / name).rename(moved / name)
    res = af.cli("learn", rid)
    assert res.returncode == 2
    assert "which is not there any more: give its new place with --workflow FILE" in res.stderr
    res = af.cli("learn", rid, "--workflow", "moved/wf.yaml", "--apply")
    assert res.returncode == 0, res.stderr
    assert "wrote moved/runbook.md" in res.stdout


@pytest.mark.parametrize(
    ("line", "match"),
    [
        (
            "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB",
            r"RuntimeError: CUDA out of memory\. Tried to allocate \d+\.\d+ GiB",
        ),
        ("job 0x7f3a2b9c failed [rank 3]", r"job 0x[0-9a-fA-F]+ failed \[rank \d+\]"),
    ],
)
def test_a_match_is_escaped_and_general(line: str, match: str) -> None:
    import re

    from agentflow.learn import match_for

    assert match_for(line) == match
    assert re.search(match, line.replace("2.00", "4.50").replace("3", "7"))
