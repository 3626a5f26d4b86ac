"""The speculator example's model package (workflows/tinylm): gradients, the decoding
cache, lossless speculative decoding, and resuming training from a checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
sys.path.insert(0, str(WORKFLOWS))

from tinylm import window  # noqa: E402
from tinylm.checkpoint import load  # noqa: E402
from tinylm.model import Config, Decoder, init, loss_and_grads  # noqa: E402
from tinylm.speculative import Stats, greedy, speculative  # noqa: E402


def check_gradients(loss_fn: Any, p: dict[str, np.ndarray], names: list[str]) -> None:
    rng = np.random.default_rng(3)
    p = {k: v.astype(np.float64) + rng.normal(0, 0.05, v.shape) for k, v in p.items()}
    tokens = np.random.default_rng(0).integers(0, 11, (3, 7))
    _, grads = loss_fn(p, tokens)
    for name in names:
        idx = tuple(int(rng.integers(0, s)) for s in p[name].shape)
        old = p[name][idx]
        p[name][idx] = old + 1e-5
        up, _ = loss_fn(p, tokens)
        p[name][idx] = old - 1e-5
        down, _ = loss_fn(p, tokens)
        p[name][idx] = old
        numeric = (up - down) / 2e-5
        assert grads[name][idx] == pytest.approx(numeric, rel=1e-3, abs=1e-7), name


def test_transformer_gradients_match_finite_differences() -> None:
    cfg = Config(vocab=11, d=16, layers=2, heads=2, ctx=8)
    names = ["emb", "pos", "out", "lnf_g", "0.qkv", "0.proj", "1.fc", "1.fc2_b", "0.ln1_g"]
    check_gradients(lambda p, t: loss_and_grads(p, cfg, t), init(cfg, 1), names)


def test_window_draft_gradients_match_finite_differences() -> None:
    cfg = window.WindowConfig(vocab=11, window=3, emb=4, hidden=8)
    names = ["emb", "fc", "fc_b", "out", "out_b"]
    check_gradients(lambda p, t: window.loss_and_grads(p, cfg, t), window.init(cfg, 1), names)


def test_the_cache_gives_the_same_logits_one_token_or_many_at_a_time() -> None:
    cfg = Config(vocab=11, d=16, layers=2, heads=2, ctx=16)
    p = init(cfg, 2)
    seq = [1, 2, 3, 4, 5, 6, 7]
    a = Decoder(p, cfg)
    together = np.concatenate([a.feed(seq[:3]), a.feed(seq[3:])])
    b = Decoder(p, cfg)
    apart = np.concatenate([b.feed([t]) for t in seq])
    np.testing.assert_allclose(together, apart, rtol=1e-4, atol=1e-5)


def test_the_window_draft_gives_the_same_logits_one_token_or_many_at_a_time() -> None:
    cfg = window.WindowConfig(vocab=11, window=3, emb=4, hidden=8, ctx=16)
    p = window.init(cfg, 2)
    seq = [1, 2, 3, 4, 5, 6, 7]
    a = window.WindowDecoder(p, cfg)
    together = np.concatenate([a.feed(seq[:3]), a.feed(seq[3:])])
    b = window.WindowDecoder(p, cfg)
    apart = np.concatenate([b.feed([t]) for t in seq])
    np.testing.assert_allclose(together, apart, rtol=1e-5, atol=1e-6)
    # The first token's window is padding before it, as in training.
    tokens = np.array([seq])
    e = p["emb"][window._windows(tokens, cfg)].reshape(len(seq), -1)
    trained = np.maximum(e @ p["fc"] + p["fc_b"], 0) @ p["out"] + p["out_b"]
    np.testing.assert_allclose(apart, trained, rtol=1e-5, atol=1e-6)
    b.rollback(2)  # forget 3..7: the next token's window is (1, 2, 9)
    fresh = window.WindowDecoder(p, cfg).feed([1, 2, 9])[-1:]
    np.testing.assert_allclose(b.feed([9]), fresh, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_speculative_decoding_is_lossless(k: int) -> None:
    tcfg = Config(vocab=20, d=32, layers=2, heads=2, ctx=256)
    dcfg = Config(vocab=20, d=16, layers=1, heads=2, ctx=256)
    target, draft = init(tcfg, 1), init(dcfg, 2)
    prompt = [1, 2, 3, 4, 5]
    plain = greedy(Decoder(target, tcfg), prompt, 80)
    stats = Stats()
    fast = speculative(Decoder(target, tcfg), Decoder(draft, dcfg), prompt, 80, k, stats)
    assert fast == plain
    assert stats.proposed > 0


@pytest.mark.parametrize("k", [1, 3, 6])
def test_speculative_decoding_with_the_window_draft_is_lossless(k: int) -> None:
    tcfg = Config(vocab=20, d=32, layers=2, heads=2, ctx=256)
    dcfg = window.WindowConfig(vocab=20, window=4, emb=8, hidden=16)
    target, draft = init(tcfg, 1), window.init(dcfg, 2)
    prompt = [1, 2, 3, 4, 5]
    plain = greedy(Decoder(target, tcfg), prompt, 80)
    stats = Stats()
    fast = speculative(
        Decoder(target, tcfg), window.WindowDecoder(draft, dcfg), prompt, 80, k, stats
    )
    assert fast == plain
    assert stats.proposed > 0


def test_a_perfect_draft_is_always_accepted() -> None:
    cfg = Config(vocab=20, d=32, layers=2, heads=2, ctx=256)
    p = init(cfg, 1)
    stats = Stats()
    out = speculative(Decoder(p, cfg), Decoder(p, cfg), [1, 2, 3], 60, 4, stats)
    assert out == greedy(Decoder(p, cfg), [1, 2, 3], 60)
    assert stats.acceptance == 1.0


def train(tmp: Path, steps: int, ckpt: str, *more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tinylm.train", "--role", "target", "--steps", str(steps),
         "--d", "16", "--layers", "1", "--heads", "2", "--batch", "4", "--length", "16",
         "--corpus-bytes", "20000", "--every", "5", "--ckpt", str(tmp / ckpt), *more],
        cwd=WORKFLOWS, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_training_resumes_from_the_newest_checkpoint_and_matches_an_unbroken_run(
    tmp_path: Path,
) -> None:
    first = train(tmp_path, 10, "resumed")
    assert first.returncode == 0, first.stderr
    second = train(tmp_path, 20, "resumed")
    assert second.returncode == 0, second.stderr
    assert "resuming from target-step-10.npz (step 10)" in second.stdout
    assert "step 10/20" not in second.stdout  # the first ten steps were not done again
    straight = train(tmp_path, 20, "straight")
    assert straight.returncode == 0, straight.stderr
    a, _, _ = load(tmp_path / "resumed" / "target.npz")
    b, _, _ = load(tmp_path / "straight" / "target.npz")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("arch", ["transformer", "window"])
def test_a_checkpoint_of_another_model_is_refused_with_what_to_do(
    tmp_path: Path, arch: str
) -> None:
    assert train(tmp_path, 5, "ckpt", "--arch", arch).returncode == 0
    other = ["--d", "32"] if arch == "transformer" else ["--hidden", "32"]
    res = train(tmp_path, 10, "ckpt", "--arch", arch, *other)
    assert res.returncode == 2
    assert "target-step-5.npz holds a different model" in res.stderr
    assert "delete" in res.stderr
    assert "Traceback" not in res.stderr
    assert (tmp_path / "ckpt" / "target-step-5.npz").exists()  # nothing was lost


def test_the_window_draft_resumes_like_the_transformer(tmp_path: Path) -> None:
    first = train(tmp_path, 10, "resumed", "--arch", "window")
    second = train(tmp_path, 20, "resumed", "--arch", "window")
    straight = train(tmp_path, 20, "straight", "--arch", "window")
    assert first.returncode == second.returncode == straight.returncode == 0
    assert "resuming from target-step-10.npz (step 10)" in second.stdout
    a, cfg, _ = load(tmp_path / "resumed" / "target.npz")
    b, _, _ = load(tmp_path / "straight" / "target.npz")
    assert isinstance(cfg, window.WindowConfig)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
