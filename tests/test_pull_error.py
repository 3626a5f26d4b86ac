"""An image that cannot be pulled (issue 17): the error is printed once, whole, on stderr;
the checkpoint keeps it cut at a word with ``…``, the run's events whole. A real pull on
the real daemon, of a registry that cannot resolve (``.invalid``): it fails at once,
with a network or without."""

from __future__ import annotations

import json
import re
from typing import Any

from agentflow.textsafe import clip_words

from conftest import Env

# Long enough (the daemon repeats it) that the run's line must be cut.
IMAGE = "agentflow-test.invalid/" + "/".join(["nonexistent-image-of-issue-17"] * 6) + ":1"


def test_a_failed_pull_is_told_once_whole_and_kept_cut_at_a_word(
    af: Env, docker_client: Any
) -> None:
    wf = af.write(
        f"version: 1\nname: pull\nsandbox: {{backend: docker, image: '{IMAGE}'}}\n"
        "steps:\n  - id: a\n    run: echo hi\n"
    )
    res = af.cli("run", str(wf), "--run-id", "p1", "--ci", timeout=120)
    assert res.returncode == 4, res.stdout + res.stderr
    shown = res.stdout + res.stderr
    # Told once, whole, where errors go (stderr, `error:`); the run's line says what happened.
    assert shown.count("cannot be pulled") == 1, shown
    (error,) = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert "cannot be pulled" in error
    assert "build it with `docker build -t`, or give `sandbox.build`" in error
    assert "lookup agentflow-test.invalid" in error  # the daemon's own reason, whole
    assert "http+docker://" not in error  # without the request's URL before it
    assert re.search(r"run +failed: the sandbox could not start \(the error follows\)", res.stdout)

    events = [json.loads(x) for x in (af.run_dir("p1") / "events.jsonl").read_text().splitlines()]
    (end,) = [e for e in events if e["kind"] == "run_finished"]
    whole = end["data"]["error"]
    assert "lookup agentflow-test.invalid" in whole
    # The checkpoint (status, history) keeps it cut at a word, never inside one.
    kept = af.state("p1")["message"]
    assert kept.endswith("…")
    head = kept.removesuffix("…")
    assert whole.startswith(head)
    assert whole[len(head)] in " ,;:(", (
        f"cut inside a word: {head[-20:]!r}|{whole[len(head) :][:20]!r}"
    )


def test_clip_words_cuts_at_a_word_boundary() -> None:
    assert clip_words("short enough", 20) == "short enough"
    assert clip_words("dial tcp: lookup registry-1.docker.io on 10.0.0.1", 30) == (
        "dial tcp: lookup…"
    )
    assert clip_words("x" * 50, 10) == "x" * 9 + "…"  # one long word: cut inside it
    assert len(clip_words("word " * 100, 61)) <= 61
