"""The model's patch against real files: hunks in order, bounded work and memory while
checking, every file error a one-line PatchError (``agent.patch``)."""

from __future__ import annotations

import signal
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from agentflow import safefs
from agentflow.agent.patch import FILE_MAX, PATCH_MAX, Change, PatchError, prepare


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
