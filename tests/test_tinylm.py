"""The speculator example's model package (workflows/tinylm): gradients, the decoding
cache, lossless speculative decoding, and resuming training from a checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
sys.path.insert(0, str(WORKFLOWS))

from tinylm.model import Config, Decoder, init, load, loss_and_grads  # noqa: E402
from tinylm.speculative import Stats, greedy, speculative  # noqa: E402


def test_gradients_match_finite_differences() -> None:
    cfg = Config(vocab=11, d=16, layers=2, heads=2, ctx=8)
    rng = np.random.default_rng(3)
    p = {k: v.astype(np.float64) + rng.normal(0, 0.05, v.shape) for k, v in init(cfg, 1).items()}
    tokens = np.random.default_rng(0).integers(0, 11, (3, 7))
    _, grads = loss_and_grads(p, cfg, tokens)
    for name in ("emb", "pos", "out", "lnf_g", "0.qkv", "0.proj", "1.fc", "1.fc2_b", "0.ln1_g"):
        idx = tuple(int(rng.integers(0, s)) for s in p[name].shape)
        old = p[name][idx]
        p[name][idx] = old + 1e-5
        up, _ = loss_and_grads(p, cfg, tokens)
        p[name][idx] = old - 1e-5
        down, _ = loss_and_grads(p, cfg, tokens)
        p[name][idx] = old
        numeric = (up - down) / 2e-5
        assert grads[name][idx] == pytest.approx(numeric, rel=1e-3, abs=1e-7), name


def test_the_cache_gives_the_same_logits_one_token_or_many_at_a_time() -> None:
    cfg = Config(vocab=11, d=16, layers=2, heads=2, ctx=16)
    p = init(cfg, 2)
    seq = [1, 2, 3, 4, 5, 6, 7]
    a = Decoder(p, cfg)
    together = np.concatenate([a.feed(seq[:3]), a.feed(seq[3:])])
    b = Decoder(p, cfg)
    apart = np.concatenate([b.feed([t]) for t in seq])
    np.testing.assert_allclose(together, apart, rtol=1e-4, atol=1e-5)


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


def test_a_perfect_draft_is_always_accepted() -> None:
    cfg = Config(vocab=20, d=32, layers=2, heads=2, ctx=256)
    p = init(cfg, 1)
    stats = Stats()
    out = speculative(Decoder(p, cfg), Decoder(p, cfg), [1, 2, 3], 60, 4, stats)
    assert out == greedy(Decoder(p, cfg), [1, 2, 3], 60)
    assert stats.acceptance == 1.0


def train(tmp: Path, steps: int, ckpt: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tinylm.train", "--role", "target", "--steps", str(steps),
         "--d", "16", "--layers", "1", "--heads", "2", "--batch", "4", "--length", "16",
         "--corpus-bytes", "20000", "--every", "5", "--ckpt", str(tmp / ckpt)],
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
