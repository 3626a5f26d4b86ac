"""The draft: a window model (a neural n-gram, Bengio et al. 2003) that predicts the next
token from the last ``window`` tokens through one hidden layer.

Why not a small transformer: on a CPU in numpy, a decoding pass costs mostly per-call
overhead, so a 1-layer transformer costs a quarter of the 4-layer target and eats the
gain. This model guesses a token in a handful of numpy calls (a few percent of a target
pass), the same asymmetry a GPU gives a small draft against a large target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

Array = np.ndarray


@dataclass(frozen=True)
class WindowConfig:
    vocab: int
    window: int = 12
    """How many previous tokens the draft sees."""
    emb: int = 24
    hidden: int = 256
    ctx: int = 256
    """The longest sequence a decoder holds (as for the target)."""


def init(cfg: WindowConfig, seed: int = 0) -> dict[str, Array]:
    rng = np.random.default_rng(seed)
    n_in = cfg.window * cfg.emb
    p = {
        # One more row: the padding before the first token.
        "emb": rng.normal(0, 0.1, (cfg.vocab + 1, cfg.emb)),
        "fc": rng.normal(0, 1 / np.sqrt(n_in), (n_in, cfg.hidden)),
        "fc_b": np.zeros(cfg.hidden),
        "out": rng.normal(0, 1 / np.sqrt(cfg.hidden), (cfg.hidden, cfg.vocab)),
        "out_b": np.zeros(cfg.vocab),
    }
    return {k: v.astype(np.float32) for k, v in p.items()}


def _windows(tokens: Array, cfg: WindowConfig) -> Array:
    """(batch, time) → (batch, time, window): the tokens up to and including each one."""
    pad = np.full((tokens.shape[0], cfg.window - 1), cfg.vocab, dtype=tokens.dtype)
    return sliding_window_view(np.concatenate([pad, tokens], axis=1), cfg.window, axis=1)


def loss_and_grads(
    p: dict[str, Array], cfg: WindowConfig, tokens: Array
) -> tuple[float, dict[str, Array]]:
    """Mean cross-entropy of predicting tokens[:, 1:] from what precedes them, and gradients
    (the same contract as the transformer's)."""
    ctx, y = _windows(tokens[:, :-1], cfg), tokens[:, 1:].reshape(-1)
    n = y.size
    idx = ctx.reshape(n, cfg.window)
    e = p["emb"][idx].reshape(n, -1)
    a = e @ p["fc"] + p["fc_b"]
    h = np.maximum(a, 0)
    logits = h @ p["out"] + p["out_b"]
    z = np.exp(logits - logits.max(-1, keepdims=True))
    probs = z / z.sum(-1, keepdims=True)
    loss = float(-np.log(probs[np.arange(n), y] + 1e-9).mean())

    dlogits = probs
    dlogits[np.arange(n), y] -= 1
    dlogits /= n
    g = {"out": h.T @ dlogits, "out_b": dlogits.sum(0)}
    da = (dlogits @ p["out"].T) * (a > 0)
    g["fc"], g["fc_b"] = e.T @ da, da.sum(0)
    de = (da @ p["fc"].T).reshape(n * cfg.window, cfg.emb)
    g["emb"] = np.zeros_like(p["emb"])
    np.add.at(g["emb"], idx.reshape(-1), de)
    return loss, {k: v.astype(np.float32) for k, v in g.items()}


class WindowDecoder:
    """The transformer Decoder's interface (feed, rollback, n) over a token buffer: the
    model has no cache to keep, only the tokens seen so far."""

    def __init__(self, p: dict[str, Array], cfg: WindowConfig) -> None:
        self.p, self.cfg = p, cfg
        # Padding first, so the window of the first token needs no special case.
        self.buf = np.full(cfg.window - 1 + cfg.ctx, cfg.vocab, np.int64)
        self.n = 0

    def rollback(self, n: int) -> None:
        self.n = n

    def feed(self, tokens: list[int]) -> Array:
        """Logits (len(tokens), vocab) for the positions of ``tokens``."""
        cfg, p, t, w = self.cfg, self.p, len(tokens), self.cfg.window
        if self.n + t > cfg.ctx:
            raise ValueError("the context is full")
        self.buf[w - 1 + self.n : w - 1 + self.n + t] = tokens
        self.n += t
        if t == 1:  # the hot path: one guess at a time
            idx = self.buf[self.n - 1 : self.n - 1 + w]
        else:
            idx = sliding_window_view(self.buf[self.n - t : self.n - 1 + w], w)
        e = p["emb"][idx].reshape(t, -1)
        return np.maximum(e @ p["fc"] + p["fc_b"], 0) @ p["out"] + p["out_b"]
