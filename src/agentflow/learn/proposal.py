"""The proposal of ``agentflow learn``: the runbook and workflow changes for a run's
candidates, as a patch to review or written in place."""

from __future__ import annotations

import difflib
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from agentflow.errors import UsageError
from agentflow.learn.entry import add_entry, documented, entry
from agentflow.learn.rank import Candidate, describe, has_rule, rank
from agentflow.learn.symptom import match_for
from agentflow.learn.yaml_edit import EditFailed, add_doc, add_rule, flow_rule
from agentflow.runbook import read as runbook_text
from agentflow.store import Store
from agentflow.workflow import parse_workflow


@dataclass
class Change:
    """One file, before (None: it is new) and after."""

    path: Path
    old: str | None
    new: str
    what: list[str] = field(default_factory=list)


@dataclass
class Proposal:
    run_id: str
    workflow: Path
    """The workflow file the proposal is for."""
    root: Path
    """Where the patch applies (``git apply`` / ``patch -p1``): the top of the git
    repository holding the workflow, else the workflow's folder."""
    candidates: list[Candidate]
    changes: list[Change]
    warnings: list[str]

    def header(self) -> str:
        """What the patch is about, as ``#`` lines (``git apply`` and ``patch`` skip them)."""
        n = len(self.candidates)
        order = ", the most repeated first" if n > 1 else ""
        out = [f"# agentflow learn {self.run_id}: {n} recover{'ies' if n > 1 else 'y'}{order}"]
        for i, c in enumerate(self.candidates, 1):
            r = c.recovery
            out.append(f"# {i}. {r.step} {r.status}: {c.symptom or '(no log line)'}")
            same = ""
            if c.times > 1:
                runs = ", ".join(c.seen_in)
                same = f"; the same fix {c.times} times (run{'s' * (len(c.seen_in) > 1)} {runs})"
            out.append(f"#    {r.fix.describe()}{same}")
            out += [f"#    {note}" for note in c.notes]
        if self.changes:
            out.append(
                f"# apply: agentflow learn {self.run_id} --apply; or save this with -o FILE, "
                f"then `git apply FILE` (or `patch -p1 < FILE`) in {self.root}"
            )
        return "\n".join(out) + "\n"

    def patch(self) -> str:
        """A unified diff of every change, with ``a/`` and ``b/`` paths from ``root``."""
        out = []
        for ch in self.changes:
            rel = os.path.relpath(ch.path, self.root)
            old = (ch.old or "").splitlines(keepends=True)
            new = ch.new.splitlines(keepends=True)
            for lines in (old, new):
                if lines and not lines[-1].endswith("\n"):
                    lines[-1] += "\n\\ No newline at end of file\n"
            out.append(f"diff --git a/{rel} b/{rel}\n")
            if ch.old is None:
                out.append("new file mode 100644\n")
            out += difflib.unified_diff(
                old, new, "/dev/null" if ch.old is None else f"a/{rel}", f"b/{rel}"
            )
        return "".join(out)

    def apply(self) -> None:
        """Write the changed files (the runbooks first: the workflow names them)."""
        for ch in self.changes:  # the runbook comes first
            current = ch.path.read_text(encoding="utf-8") if ch.path.exists() else None
            if current != ch.old:
                raise UsageError(f"{ch.path} changed while the patch was made: run learn again")
            _write(ch.path, ch.new)


def _write(path: Path, text: str) -> None:
    """Replace ``path`` at once (a temporary file renamed over it), keeping its mode. The
    folder is a workspace a step could write: the temporary name is made new (``O_EXCL``,
    never through a planted link), and the rename replaces a link, never follows it."""
    st = path.lstat() if path.is_symlink() or path.exists() else None
    mode = st.st_mode & 0o7777 if st and stat.S_ISREG(st.st_mode) else 0o644
    tmp = path.with_name(f".{path.name}.learn.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _runbook_text(path: Path, workspace: Path) -> str | None:
    """A runbook's text through the guarded path (a step may have made it a link to a
    host file, which would be copied into the patch); None when there is none."""
    try:
        return runbook_text(path, workspace)
    except FileNotFoundError:
        return None


def _git_root(folder: Path) -> Path:
    for p in (folder, *folder.parents):
        if (p / ".git").exists():
            return p
    return folder


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def propose(store: Store, run_id: str, workflow_file: Path | None = None) -> Proposal:
    """Everything ``agentflow learn RUN_ID`` proposes; raises with one line when it cannot."""
    run = store.open(run_id)
    state = run.read_state()
    candidates = rank(store, run, state)
    warnings: list[str] = []
    path = (workflow_file or Path(state.workflow_file)).resolve()
    if not path.is_file():
        raise UsageError(
            f"run {run.run_id} was started from {path}, which is not there any more: "
            "give its new place with --workflow FILE"
        )
    text = path.read_text(encoding="utf-8")
    frozen = run.workflow_path.read_text(encoding="utf-8") if run.workflow_path.exists() else None
    if frozen is not None and _sha(frozen) != _sha(text):
        warnings.append(
            f"{path} has changed since run {run.run_id} (it differs from the copy the run "
            "froze): the patch is against the file as it is now"
        )
    current = parse_workflow(text, str(path), base_dir=path.parent)
    if current.name != state.workflow:
        raise UsageError(
            f"{path} is the workflow '{current.name}'; run {run.run_id} ran '{state.workflow}'"
        )
    runbooks = [path.parent / d for d in current.docs]
    runbook = runbooks[0] if runbooks else path.parent / f"{path.stem}.md"
    rb_old = _runbook_text(runbook, path.parent)
    texts = [t for t in (_runbook_text(p, path.parent) for p in runbooks) if t is not None]
    wf_text, rb_text = text, rb_old or ""
    wf_change = Change(path, text, text)
    rb_change = Change(runbook, rb_old, rb_text)
    for c in candidates:
        describe(c, run, state)
        r = c.recovery
        if r.step not in {s.id for s in current.steps}:
            c.notes.append(f"step {r.step} is not in {path.name} any more: nothing proposed")
            continue
        step = current.step(r.step)
        rule = c.rule or r.fix.rule
        pattern = rule.match if rule is not None else match_for(c.symptom or "")
        if c.rule is not None and has_rule(step.recover, c.rule, c, run, state):
            c.notes.append(f"{path.name} has this rule on {r.step} already")
            c.rule = None
        elif c.rule is not None:
            note = f"agentflow learn: run {r.run_id}"
            try:
                wf_text = add_rule(wf_text, str(path), r.step, c.rule, note)
                current = parse_workflow(wf_text, str(path))
                wf_change.what.append(f"recover rule on {r.step}: {flow_rule(c.rule)}")
            except EditFailed as e:
                c.notes.append(
                    f"cannot insert the rule into {path.name} ({e}); add it to the "
                    f"recover: of {r.step} by hand: - {flow_rule(c.rule)}"
                )
        if documented([*texts, rb_text], pattern, c.symptom):
            c.notes.append(f"{runbook.name} describes this failure already")
            continue
        block = entry(c, 3)
        rb_text = add_entry(rb_text, block, current.name)
        rb_change.what.append(f"runbook entry: {block.splitlines()[0].lstrip('# ')}")
    if rb_text != (rb_old or "") and not current.docs:
        doc = os.path.relpath(runbook, path.parent)
        try:
            wf_text = add_doc(wf_text, str(path), doc)
            wf_change.what.append(f"docs: [{doc}]")
        except EditFailed as e:
            warnings.append(f"cannot add `docs: [{doc}]` to {path.name} ({e}): add it by hand")
    wf_change.new, rb_change.new = wf_text, rb_text
    changes = [ch for ch in (rb_change, wf_change) if ch.new != (ch.old or "")]
    return Proposal(run.run_id, path, _git_root(path.parent), candidates, changes, warnings)
