"""A small decoder-only transformer in numpy: training (forward and backward by hand) and
decoding with a key/value cache, for one token or several at once.

Pre-LayerNorm blocks (x + attn(ln(x)), x + mlp(ln(x))), learned positions, ReLU MLP, a
final LayerNorm and an output projection. Small enough to train on a CPU in a minute or
two; deep enough that one decoding pass costs far more than a 1-layer draft's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Array = np.ndarray


@dataclass(frozen=True)
class Config:
    vocab: int
    d: int = 128
    layers: int = 4
    heads: int = 4
    ctx: int = 128
    """The longest sequence (positions) the model knows."""


def init(cfg: Config, seed: int = 0) -> dict[str, Array]:
    rng = np.random.default_rng(seed)
    d = cfg.d
    p: dict[str, Array] = {
        "emb": rng.normal(0, 0.02, (cfg.vocab, d)),
        "pos": rng.normal(0, 0.01, (cfg.ctx, d)),
        "lnf_g": np.ones(d),
        "lnf_b": np.zeros(d),
        "out": rng.normal(0, 0.02, (d, cfg.vocab)),
    }
    scale = 0.02 / np.sqrt(2 * cfg.layers)  # residual branches start small
    for i in range(cfg.layers):
        p[f"{i}.ln1_g"] = np.ones(d)
        p[f"{i}.ln1_b"] = np.zeros(d)
        p[f"{i}.qkv"] = rng.normal(0, 0.02, (d, 3 * d))
        p[f"{i}.proj"] = rng.normal(0, scale, (d, d))
        p[f"{i}.ln2_g"] = np.ones(d)
        p[f"{i}.ln2_b"] = np.zeros(d)
        p[f"{i}.fc"] = rng.normal(0, 0.02, (d, 4 * d))
        p[f"{i}.fc_b"] = np.zeros(4 * d)
        p[f"{i}.fc2"] = rng.normal(0, scale, (4 * d, d))
        p[f"{i}.fc2_b"] = np.zeros(d)
    return {k: v.astype(np.float32) for k, v in p.items()}


# --- building blocks (forward returns a cache for backward) ---------------------------------


def _ln(x: Array, g: Array, b: Array) -> tuple[Array, tuple[Array, Array, Array]]:
    mu = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    inv = 1.0 / np.sqrt(var + 1e-5)
    xhat = (x - mu) * inv
    return xhat * g + b, (xhat, inv, g)


def _ln_back(dy: Array, cache: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
    xhat, inv, g = cache
    dg = (dy * xhat).reshape(-1, xhat.shape[-1]).sum(0)
    db = dy.reshape(-1, dy.shape[-1]).sum(0)
    dxhat = dy * g
    n = xhat.shape[-1]
    dx = (
        inv
        / n
        * (n * dxhat - dxhat.sum(-1, keepdims=True) - xhat * (dxhat * xhat).sum(-1, keepdims=True))
    )
    return dx, dg, db


def _softmax(x: Array) -> Array:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _split(x: Array, heads: int) -> Array:
    b, t, d = x.shape
    return x.reshape(b, t, heads, d // heads).transpose(0, 2, 1, 3)


def _merge(x: Array) -> Array:
    b, h, t, dh = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * dh)


def loss_and_grads(
    p: dict[str, Array], cfg: Config, tokens: Array
) -> tuple[float, dict[str, Array]]:
    """Mean cross-entropy of predicting tokens[:, 1:] from tokens[:, :-1], and gradients.
    ``tokens``: int array (batch, time+1)."""
    x_in, y = tokens[:, :-1], tokens[:, 1:]
    B, T = x_in.shape
    H, d = cfg.heads, cfg.d
    dh = d // H
    mask = np.triu(np.full((T, T), -1e9, dtype=np.float32), 1)
    x = p["emb"][x_in] + p["pos"][:T]
    caches = []
    for i in range(cfg.layers):
        h1, ln1 = _ln(x, p[f"{i}.ln1_g"], p[f"{i}.ln1_b"])
        qkv = h1 @ p[f"{i}.qkv"]
        q, k, v = (_split(a, H) for a in np.split(qkv, 3, axis=-1))
        att = _softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh) + mask)
        o = _merge(att @ v)
        x2 = x + o @ p[f"{i}.proj"]
        h2, ln2 = _ln(x2, p[f"{i}.ln2_g"], p[f"{i}.ln2_b"])
        a = h2 @ p[f"{i}.fc"] + p[f"{i}.fc_b"]
        r = np.maximum(a, 0)
        x3 = x2 + r @ p[f"{i}.fc2"] + p[f"{i}.fc2_b"]
        caches.append((h1, ln1, q, k, v, att, o, h2, ln2, a, r))
        x = x3
    hf, lnf = _ln(x, p["lnf_g"], p["lnf_b"])
    logits = hf @ p["out"]
    probs = _softmax(logits)
    n = B * T
    loss = float(-np.log(probs.reshape(n, -1)[np.arange(n), y.reshape(-1)] + 1e-9).mean())

    g: dict[str, Array] = {}
    dlogits = probs
    dlogits.reshape(n, -1)[np.arange(n), y.reshape(-1)] -= 1
    dlogits /= n
    g["out"] = hf.reshape(n, d).T @ dlogits.reshape(n, -1)
    dx, g["lnf_g"], g["lnf_b"] = _ln_back(dlogits @ p["out"].T, lnf)
    for i in reversed(range(cfg.layers)):
        h1, ln1, q, k, v, att, o, h2, ln2, a, r = caches[i]
        # MLP branch
        g[f"{i}.fc2_b"] = dx.reshape(n, d).sum(0)
        g[f"{i}.fc2"] = r.reshape(n, -1).T @ dx.reshape(n, d)
        da = (dx @ p[f"{i}.fc2"].T) * (a > 0)
        g[f"{i}.fc_b"] = da.reshape(n, -1).sum(0)
        g[f"{i}.fc"] = h2.reshape(n, d).T @ da.reshape(n, -1)
        dh2 = da @ p[f"{i}.fc"].T
        dln, g[f"{i}.ln2_g"], g[f"{i}.ln2_b"] = _ln_back(dh2, ln2)
        dx = dx + dln
        # attention branch
        g[f"{i}.proj"] = o.reshape(n, d).T @ dx.reshape(n, d)
        do = _split(dx @ p[f"{i}.proj"].T, H)
        datt = do @ v.transpose(0, 1, 3, 2)
        dv = att.transpose(0, 1, 3, 2) @ do
        ds = att * (datt - (datt * att).sum(-1, keepdims=True)) / np.sqrt(dh)
        dq = ds @ k
        dk = ds.transpose(0, 1, 3, 2) @ q
        dqkv = np.concatenate([_merge(dq), _merge(dk), _merge(dv)], axis=-1)
        g[f"{i}.qkv"] = h1.reshape(n, d).T @ dqkv.reshape(n, -1)
        dh1 = dqkv @ p[f"{i}.qkv"].T
        dln, g[f"{i}.ln1_g"], g[f"{i}.ln1_b"] = _ln_back(dh1, ln1)
        dx = dx + dln
    g["pos"] = np.zeros_like(p["pos"])
    g["pos"][:T] = dx.sum(0)
    g["emb"] = np.zeros_like(p["emb"])
    np.add.at(g["emb"], x_in.reshape(-1), dx.reshape(n, d))
    return loss, {k: v.astype(np.float32) for k, v in g.items()}


class Adam:
    """Adam with a warm-up; its moments are saved with checkpoints."""

    def __init__(self, p: dict[str, Array], lr: float = 3e-3) -> None:
        self.lr = lr
        self.t = 0
        self.m = {k: np.zeros_like(v) for k, v in p.items()}
        self.v = {k: np.zeros_like(v) for k, v in p.items()}

    def step(self, p: dict[str, Array], g: dict[str, Array], warmup: int = 20) -> None:
        self.t += 1
        lr = self.lr * min(1.0, self.t / warmup)
        b1, b2 = 0.9, 0.99
        for k in p:
            self.m[k] = b1 * self.m[k] + (1 - b1) * g[k]
            self.v[k] = b2 * self.v[k] + (1 - b2) * g[k] * g[k]
            mh = self.m[k] / (1 - b1**self.t)
            vh = self.v[k] / (1 - b2**self.t)
            p[k] -= (lr * mh / (np.sqrt(vh) + 1e-8)).astype(np.float32)


# --- decoding with a key/value cache ----------------------------------------------------------


class Decoder:
    """Incremental decoding: feed tokens (one, or several at once to verify a guess), get
    the logits after each; ``rollback`` forgets the last positions (rejected guesses)."""

    def __init__(self, p: dict[str, Array], cfg: Config) -> None:
        self.p, self.cfg = p, cfg
        shape = (cfg.layers, cfg.heads, cfg.ctx, cfg.d // cfg.heads)
        self.k = np.zeros(shape, np.float32)
        self.v = np.zeros(shape, np.float32)
        self.n = 0

    def rollback(self, n: int) -> None:
        self.n = n

    def feed(self, tokens: list[int]) -> Array:
        """Logits (len(tokens), vocab) for the positions of ``tokens``."""
        p, cfg = self.p, self.cfg
        t = len(tokens)
        start = self.n
        if start + t > cfg.ctx:
            raise ValueError("the context is full")
        H, dh = cfg.heads, cfg.d // cfg.heads
        x = p["emb"][tokens] + p["pos"][start : start + t]
        mask = np.triu(np.full((t, start + t), -1e9, np.float32), start + 1)
        for i in range(cfg.layers):
            h1, _ = _ln(x, p[f"{i}.ln1_g"], p[f"{i}.ln1_b"])
            qkv = h1 @ p[f"{i}.qkv"]
            q, k, v = (a.reshape(t, H, dh).transpose(1, 0, 2) for a in np.split(qkv, 3, axis=-1))
            self.k[i, :, start : start + t] = k
            self.v[i, :, start : start + t] = v
            keys = self.k[i, :, : start + t]
            vals = self.v[i, :, : start + t]
            att = _softmax(q @ keys.transpose(0, 2, 1) / np.sqrt(dh) + mask)
            o = (att @ vals).transpose(1, 0, 2).reshape(t, cfg.d)
            x = x + o @ p[f"{i}.proj"]
            h2, _ = _ln(x, p[f"{i}.ln2_g"], p[f"{i}.ln2_b"])
            x = (
                x
                + np.maximum(h2 @ p[f"{i}.fc"] + p[f"{i}.fc_b"], 0) @ p[f"{i}.fc2"]
                + p[f"{i}.fc2_b"]
            )
        hf, _ = _ln(x, p["lnf_g"], p["lnf_b"])
        self.n = start + t
        return hf @ p["out"]
