"""An image that cannot be pulled (issue 17): the run's failure is printed once, cut at
a word with ``…``, and the daemon's whole answer is in the run's events. A real pull on
the real daemon, of a registry that cannot resolve (``.invalid``): it fails at once,
with a network or without."""

from __future__ import annotations

import json
from typing import Any

from agentflow.textsafe import clip_words

from conftest import Env

# Long enough (the daemon repeats it) that the run's line must be cut.
IMAGE = "agentflow-test.invalid/" + "/".join(["nonexistent-image-of-issue-17"] * 6) + ":1"


def test_a_failed_pull_is_told_once_cut_at_a_word_with_the_whole_in_the_events(
    af: Env, docker_client: Any
) -> None:
    wf = af.write(
        f"version: 1\nname: pull\nsandbox: {{backend: docker, image: '{IMAGE}'}}\n"
        "steps:\n  - id: a\n    run: echo hi\n"
    )
    res = af.cli("run", str(wf), "--run-id", "p1", "--ci", timeout=120)
    assert res.returncode == 4, res.stdout + res.stderr
    shown = res.stdout + res.stderr
    assert shown.count("cannot be pulled") == 1, shown
    assert "error:" not in shown
    (line,) = [x for x in res.stdout.splitlines() if "cannot be pulled" in x]
    said = line.split("failed: ", 1)[1]
    assert said.endswith("…")

    events = [json.loads(x) for x in (af.run_dir("p1") / "events.jsonl").read_text().splitlines()]
    (end,) = [e for e in events if e["kind"] == "run_finished"]
    whole = end["data"]["error"]
    assert end["message"] == said
    assert len(whole) > len(said)
    head = said.removesuffix("…")
    assert whole.startswith(head)
    assert whole[len(head)] in " ,;:(", (
        f"cut inside a word: {head[-20:]!r}|{whole[len(head) :][:20]!r}"
    )
    # The daemon's own reason, whole, without the request's URL before it.
    assert "lookup agentflow-test.invalid" in whole
    assert "http+docker://" not in whole
    assert "build it with `docker build -t`, or give `sandbox.build`" in said
    assert af.state("p1")["message"] == said


def test_clip_words_cuts_at_a_word_boundary() -> None:
    assert clip_words("short enough", 20) == "short enough"
    assert clip_words("dial tcp: lookup registry-1.docker.io on 10.0.0.1", 30) == (
        "dial tcp: lookup…"
    )
    assert clip_words("x" * 50, 10) == "x" * 9 + "…"  # one long word: cut inside it
    assert len(clip_words("word " * 100, 61)) <= 61
