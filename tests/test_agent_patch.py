"""The model's patch against real files: hunks in order, bounded work and memory while
checking, every file error a one-line PatchError, and writes that are all or nothing and
never overwrite what changed since (``agent.patch``; ``runner.agentic`` for the runs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentflow import safefs
from agentflow.agent.patch import FILE_MAX, PATCH_MAX, Change, PatchError, prepare, write
from fake_anthropic import FakeAnthropic, Reply, answer, call

from conftest import Env, fill, run_id_of


def diff(path: str, *hunks: str) -> str:
    return f"--- a/{path}\n+++ b/{path}\n" + "".join(hunks)


def new_file(path: str, text: str) -> str:
    lines = text.splitlines(keepends=True)
    return f"--- /dev/null\n+++ b/{path}\n@@ -0,0 +1,{len(lines)} @@\n" + "".join(
        f"+{line}" for line in lines
    )


def refused(patch: str, ws: Path, hidden: frozenset[safefs.Identity] = frozenset()) -> str:
    """The reason ``prepare`` gives (a PatchError of one line, never another error)."""
    with pytest.raises(PatchError) as e:
        prepare(patch, ws, hidden)
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    path.mkdir()
    return path


# --- checking: hunks in order, bounded ------------------------------------------------------


def test_hunks_apply_in_order_and_a_misordered_patch_is_refused(ws: Path) -> None:
    (ws / "app.cfg").write_text("a = 1\nX\nb = 2\n")
    ordered = diff("app.cfg", "@@ -1 +1 @@\n-a = 1\n+a = 9\n", "@@ -3 +3 @@\n-b = 2\n+b = 3\n")
    assert prepare(ordered, ws)[0].after == "a = 9\nX\nb = 3\n"
    # The second hunk above the first (GNU patch: "misordered hunks! output would be
    # garbled"): refused, not applied to the text the first hunk already consumed.
    backwards = diff("app.cfg", "@@ -3 +3 @@\n-b = 2\n+b = 3\n", "@@ -1 +1 @@\n-a = 1\n+a = 9\n")
    assert "in the order of the file" in refused(backwards, ws)
    # Two hunks may not both claim one line either.
    twice = diff("app.cfg", "@@ -2 +2 @@\n-X\n+Y\n", "@@ -2 +2 @@\n X\n")
    assert "hunk 2" in refused(twice, ws)


def test_context_only_hunks_cannot_repeat_a_big_file(ws: Path) -> None:
    # A file of ~1 MiB, and 60 pairs of hunks that each span it: each hunk matched
    # anywhere, the "after" would be 60 copies of the file (a 1 GB one at full patch size).
    (ws / "f.txt").write_text("a\n" + ("x" * 5200 + "\n") * 198 + "b\n")
    patch = diff("f.txt", *["@@ -200 +200 @@\n b\n@@ -1 +1 @@\n a\n"] * 60)
    tracemalloc.start()
    try:
        reason = refused(patch, ws)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "in the order of the file" in reason
    assert peak < 16 * 1024 * 1024, f"checking the patch took {peak // 2**20} MiB"


def test_the_patched_file_is_bounded_like_the_file(ws: Path) -> None:
    (ws / "big.txt").write_text("x" * (FILE_MAX - 100) + "\n")
    grow = diff("big.txt", "@@ -1,0 +2,40 @@\n" + ("+" + "y" * 99 + "\n") * 40)
    assert "would be larger than 1024 KiB" in refused(grow, ws)
    assert len(prepare(new_file("small.txt", "y\n" * 40), ws)[0].after) == 80


class TooSlow(Exception):
    pass


def _too_slow(signum: int, frame: Any) -> None:
    raise TooSlow


def test_many_hunks_against_a_million_line_file_are_checked_quickly(ws: Path) -> None:
    # A marker every 200 lines, the rest empty: ~1M lines in 1 MiB; a patch of as many
    # context-only hunks as fit, each a marker whose header says line 1. Each hunk is
    # searched near the end of the one before, one window of its own length a try.
    chunks, n = [], 0
    while (n + 1) * 204 < FILE_MAX:
        chunks.append("\n" * 199 + f"{n}\n")
        n += 1
    text = "".join(chunks)
    (ws / "f.txt").write_text(text)
    hunks, size = [], 0
    for i in range(n):
        hunk = f"@@ -1 +1 @@\n {i}\n"
        if size + len(hunk) > PATCH_MAX - 100:
            break
        hunks.append(hunk)
        size += len(hunk)
    assert text.count("\n") > 1_000_000
    assert len(hunks) > 3000
    old = signal.signal(signal.SIGALRM, _too_slow)
    signal.setitimer(signal.ITIMER_REAL, 10)  # (the unbounded check took ~45 minutes)
    try:
        changes = prepare(diff("f.txt", *hunks), ws)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert changes == [Change("f.txt", text, text)]


def test_an_insertion_without_context_goes_after_the_line_its_header_names(ws: Path) -> None:
    # `diff -U0` writes "@@ -2,0 +3 @@" for a line added after line 2 (as patch reads it).
    (ws / "f.txt").write_text("1\n2\n3\n")
    assert prepare(diff("f.txt", "@@ -2,0 +3 @@\n+x\n"), ws)[0].after == "1\n2\nx\n3\n"
    assert prepare(diff("f.txt", "@@ -3,0 +4 @@\n+x\n"), ws)[0].after == "1\n2\n3\nx\n"


def test_lines_are_split_at_newlines_only_as_the_diff_is(ws: Path) -> None:
    # A form feed (as in GNU-style sources) or a lone \r is part of its line.
    (ws / "f.py").write_text("a = 1\n\x0c\nb = 2\r# c\n")
    patch = diff("f.py", "@@ -1,3 +1,3 @@\n a = 1\n \x0c\n-b = 2\r# c\n+b = 3\r# c\n")
    assert prepare(patch, ws)[0].after == "a = 1\n\x0c\nb = 3\r# c\n"


# --- checking: file errors ----------------------------------------------------------------


def test_os_errors_while_checking_are_one_line_patch_errors(ws: Path) -> None:
    (ws / "a.txt").write_text("one\n")
    long = "A" * 300
    assert "File name too long" in refused(new_file(long, "x\n"), ws)
    assert "File name too long" in refused(diff(long, "@@ -1 +1 @@\n-x\n+y\n"), ws)
    assert "not a folder" in refused(new_file("a.txt/new", "x\n"), ws)
    assert "not a folder" in refused(diff("a.txt/b", "@@ -1 +1 @@\n-x\n+y\n"), ws)
    assert "not a path inside the workspace" in refused(new_file(".", "x\n"), ws)


def test_the_home_and_links_are_refused_when_checking(ws: Path, tmp_path: Path) -> None:
    home = ws / ".agentflow"  # the default home: .agentflow in the workflow's folder
    (home / "runs").mkdir(parents=True)
    (home / "runs" / "x").write_text("x\n")
    hidden = safefs.identities([home])
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.txt").write_text("keep\n")
    (ws / "link.txt").symlink_to(outside / "x.txt")
    (ws / "dir").symlink_to(outside)
    assert "agentflow's own folder" in refused(new_file(".agentflow", "x\n"), ws, hidden)
    assert "agentflow's own folder" in refused(new_file(".agentflow/runs/x", "x\n"), ws, hidden)
    edit = diff(".agentflow/runs/x", "@@ -1 +1 @@\n-x\n+y\n")
    assert "agentflow's own folder" in refused(edit, ws, hidden)
    assert "symbolic link" in refused(diff("link.txt", "@@ -1 +1 @@\n-keep\n+gone\n"), ws)
    assert "symbolic link" in refused(new_file("dir/new.txt", "gone\n"), ws)
    assert "symbolic link" in refused(diff("dir/x.txt", "@@ -1 +1 @@\n-keep\n+gone\n"), ws)
    assert (outside / "x.txt").read_text() == "keep\n"
    assert sorted(p.name for p in outside.iterdir()) == ["x.txt"]
    assert [p.name for p in (home / "runs").iterdir()] == ["x"]


# --- writing: all or nothing, only over what was checked -----------------------------------


def litter(ws: Path) -> list[str]:
    return sorted(p.name for p in ws.iterdir() if "agentflow-patch" in p.name)


@pytest.fixture
def small_ws(tmp_path: Path) -> Iterator[Path]:
    """A workspace on a 4 MB tmpfs (to fill), unmounted at the end whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        (mount / "ws").mkdir()
        yield mount / "ws"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


BIG = "".join(f"row {i}\n" for i in range(40_000))  # ~370 KiB


def test_a_write_that_fails_halfway_puts_back_what_it_wrote(small_ws: Path) -> None:
    ws = small_ws
    (ws / "a.txt").write_text("one\n")
    (ws / "b.txt").write_text(BIG)
    changes = prepare(
        diff("a.txt", "@@ -1 +1 @@\n-one\n+CHANGED\n")
        + diff("b.txt", "@@ -1 +1 @@\n-row 0\n+CHANGED\n"),
        ws,
    )
    fill(ws.parent / "ballast", leave=64 * 1024)  # room for a.txt's new copy, not b.txt's
    with pytest.raises(PatchError) as e:
        write(changes, ws)
    assert (
        str(e.value) == "b.txt could not be written (No space left on device): nothing was changed"
    )
    assert (ws / "a.txt").read_text() == "one\n"
    assert (ws / "b.txt").read_text() == BIG
    assert litter(ws) == []
    (ws.parent / "ballast").unlink()
    assert write(changes, ws) == []  # with room, it is written
    assert (ws / "a.txt").read_text() == "CHANGED\n"


def test_a_file_changed_since_the_check_fails_the_whole_patch(ws: Path) -> None:
    (ws / "a.txt").write_text("one\n")
    (ws / "b.txt").write_text("two\n")
    patch = diff("a.txt", "@@ -1 +1 @@\n-one\n+ONE\n") + diff("b.txt", "@@ -1 +1 @@\n-two\n+TWO\n")
    changes = prepare(patch + new_file("c.txt", "three\n"), ws)
    inode = (ws / "a.txt").stat().st_ino
    (ws / "b.txt").write_text("two\nand a line a step wrote meanwhile\n")
    with pytest.raises(PatchError, match=r"^b\.txt changed since the patch was checked"):
        write(changes, ws)
    assert (ws / "a.txt").stat().st_ino == inode  # not even rewritten for a moment
    assert (ws / "b.txt").read_text() == "two\nand a line a step wrote meanwhile\n"
    assert not (ws / "c.txt").exists()
    # A new file that appeared since the check is not overwritten either.
    changes = prepare(new_file("c.txt", "three\n"), ws)
    (ws / "c.txt").write_text("a step's\n")
    with pytest.raises(PatchError, match=r"c\.txt changed since"):
        write(changes, ws)
    assert (ws / "c.txt").read_text() == "a step's\n"
    assert litter(ws) == []


def test_undo_leaves_a_file_changed_after_the_patch_alone(ws: Path) -> None:
    (ws / "a.txt").write_text("one\n")
    (ws / "b.txt").write_text("two\n")
    patch = diff("a.txt", "@@ -1 +1 @@\n-one\n+ONE\n") + diff("b.txt", "@@ -1 +1 @@\n-two\n+TWO\n")
    changes = prepare(patch + new_file("c.txt", "three\n") + new_file("d.txt", "four\n"), ws)
    assert write(changes, ws) == []
    (ws / "b.txt").write_text("TWO\nanother step's line\n")
    (ws / "d.txt").write_text("four, edited\n")
    assert write(changes, ws, undo=True) == ["b.txt", "d.txt"]
    assert (ws / "a.txt").read_text() == "one\n"
    assert (ws / "b.txt").read_text() == "TWO\nanother step's line\n"
    assert not (ws / "c.txt").exists()
    assert (ws / "d.txt").read_text() == "four, edited\n"


def test_a_link_or_the_home_planted_after_the_check_is_not_written(
    ws: Path, tmp_path: Path
) -> None:
    (ws / "a.txt").write_text("one\n")
    outside = tmp_path / "outside.txt"
    outside.write_text("one\n")
    changes = prepare(diff("a.txt", "@@ -1 +1 @@\n-one\n+gone\n"), ws)
    (ws / "a.txt").unlink()
    (ws / "a.txt").symlink_to(outside)  # same text, but a link now
    with pytest.raises(PatchError, match=r"a\.txt changed since"):
        write(changes, ws)
    assert (ws / "a.txt").is_symlink()
    assert outside.read_text() == "one\n"
    # The folder swapped for agentflow's home (found by identity, whatever its name).
    home = ws / ".agentflow"
    home.mkdir()
    (home / "x").write_text("one\n")
    (ws / "sub").mkdir()
    (ws / "sub" / "x").write_text("one\n")
    hidden = safefs.identities([home])
    changes = prepare(diff("sub/x", "@@ -1 +1 @@\n-one\n+gone\n"), ws, hidden)
    (ws / "sub").rename(ws / "sub.old")
    home.rename(ws / "sub")
    with pytest.raises(PatchError, match="agentflow's own folder"):
        write(changes, ws, hidden=hidden)
    assert (ws / "sub" / "x").read_text() == "one\n"
    assert sorted(p.name for p in (ws / "sub").iterdir()) == ["x"]


# --- in a run ------------------------------------------------------------------------------

WF = """\
version: 1
name: patched
defaults: {on_failure: diagnose}
steps:
  - id: s
    run: %s
"""


def decide(action: str, **fields: Any) -> Reply:
    return answer(call("submit_decision", {"diagnosis": "d", "action": action, **fields}))


def run(
    af: Env, command: str, replies: list[Reply]
) -> tuple[subprocess.CompletedProcess[str], str]:
    wf = af.write(WF % json.dumps(command))
    with FakeAnthropic(replies) as fake:
        af.env["ANTHROPIC_API_KEY"] = "test-key"
        af.env["ANTHROPIC_BASE_URL"] = fake.url
        res = af.cli("run", str(wf), "--yes", "--ci")
    assert not fake.replies, res.stdout + res.stderr
    return res, run_id_of(res.stdout)


def events(af: Env, rid: str, kind: str) -> list[dict[str, Any]]:
    lines = (af.run_dir(rid) / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["kind"] == kind]


def test_a_run_does_not_keep_half_a_patch(af: Env) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(af.workspace)], check=True
    )
    try:
        (af.workspace / "a.txt").write_text("one\n")
        (af.workspace / "b.txt").write_text(BIG)
        patch = diff("a.txt", "@@ -1 +1 @@\n-one\n+CHANGED\n") + diff(
            "b.txt", "@@ -1 +1 @@\n-row 0\n+CHANGED\n"
        )
        fill(af.workspace / ".ballast", leave=64 * 1024)
        res, rid = run(af, "false", [decide("retry_with_changes", patch=patch)])
        assert res.returncode == 3, res.stdout + res.stderr
        st = af.state(rid)["steps"]["s"]
        assert st["status"] == "blocked"
        said = "b.txt could not be written (No space left on device): nothing was changed"
        assert said in st["message"]
        assert (af.workspace / "a.txt").read_text() == "one\n"
        assert not events(af, rid, "patch_applied")
    finally:
        subprocess.run(["umount", "-l", str(af.workspace)], check=False)


def test_a_failed_retry_leaves_a_file_changed_after_the_patch(af: Env) -> None:
    (af.workspace / "F").write_text("line\n")
    (af.workspace / "G").write_text("line\n")
    patch = diff("F", "@@ -1 +1 @@\n-line\n+PATCHED\n") + diff(
        "G", "@@ -1 +1 @@\n-line\n+PATCHED\n"
    )
    replies = [decide("retry_with_changes", patch=patch), decide("escalate", question="?")]
    # The retry appends to F (as a step may write a file the patch changed), then fails.
    res, rid = run(af, "if grep -q PATCHED F; then echo more >> F; fi; exit 1", replies)
    assert res.returncode == 3, res.stdout + res.stderr
    assert (af.workspace / "F").read_text() == "PATCHED\nmore\n"
    assert (af.workspace / "G").read_text() == "line\n"
    [reverted] = events(af, rid, "patch_reverted")
    assert reverted["message"] == (
        "the patch did not fix it: G restored; F changed after the patch: left as it is"
    )
    assert reverted["data"] == {"files": ["G"], "changed": ["F"]}
