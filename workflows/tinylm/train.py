"""Train the target (on the standard library's source) or the draft (on text the target
generated: distillation). Saves a checkpoint every N steps and resumes from the newest.

    python -m tinylm.train --role target --steps 300 --ckpt ckpt
    python -m tinylm.train --role draft --data data/gen.jsonl --steps 600 --ckpt ckpt

The target is a transformer (--d, --layers, --heads); the draft by default a window model
(--window, --emb, --hidden), which guesses a token for a few percent of a target pass.

Prints ``step 120/300 loss=2.3100`` lines (the workflow's progress pattern and its ``loss``
metric); the final model is ``<ckpt>/<role>.npz``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from tinylm.checkpoint import ARCHS, load, save
from tinylm.data import VOCAB, batches, corpus, encode
from tinylm.model import Adam, Config
from tinylm.window import WindowConfig


def checkpoints(folder: Path, role: str) -> list[tuple[int, Path]]:
    found = []
    for p in folder.glob(f"{role}-step-*.npz"):
        m = re.fullmatch(rf"{role}-step-(\d+)\.npz", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--role", choices=["target", "draft"], required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--ckpt", type=Path, default=Path("ckpt"))
    ap.add_argument("--data", type=Path, help="generated samples (jsonl) for the draft")
    ap.add_argument("--corpus-bytes", type=int, default=400_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument(
        "--arch", choices=sorted(ARCHS), help="default: transformer (target), window (draft)"
    )
    ap.add_argument("--window", type=int, default=12, help="window model: tokens of context")
    ap.add_argument("--emb", type=int, default=24, help="window model: embedding width")
    ap.add_argument("--hidden", type=int, default=256, help="window model: hidden units")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--lr", type=float, default=float(os.environ.get("TINYLM_LR", "3e-3")))
    ap.add_argument("--every", type=int, default=50, help="checkpoint every N steps")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    if args.role == "draft":
        if not args.data or not args.data.is_file():
            print(
                f"error: --data {args.data}: no generated samples (run generate first)",
                file=sys.stderr,
            )
            return 2
        text = "\n".join(
            json.loads(line)["text"] for line in args.data.read_text().splitlines() if line.strip()
        )
    else:
        text = corpus(args.corpus_bytes)
    tokens = np.array(encode(text), dtype=np.int64)
    if len(tokens) < args.length + 2:
        print(f"error: only {len(tokens)} tokens of training text", file=sys.stderr)
        return 2
    args.ckpt.mkdir(parents=True, exist_ok=True)
    arch = ARCHS[args.arch or ("transformer" if args.role == "target" else "window")]
    cfg: Config | WindowConfig
    if arch.config is WindowConfig:
        cfg = WindowConfig(vocab=VOCAB, window=args.window, emb=args.emb, hidden=args.hidden)
    else:
        cfg = Config(vocab=VOCAB, d=args.d, layers=args.layers, heads=args.heads, ctx=256)
    params = arch.init(cfg, args.seed)
    opt = Adam(params, args.lr)
    start = 0
    saved = checkpoints(args.ckpt, args.role)
    if saved:
        start, newest = saved[-1]
        params, saved_cfg, extra = load(newest)
        if saved_cfg != cfg:
            print(
                f"error: {newest} holds a different model ({saved_cfg}) from the one asked for"
                f" ({cfg}): delete {args.ckpt}/{args.role}-step-*.npz to start afresh,"
                " or ask for the saved model's sizes",
                file=sys.stderr,
            )
            return 2
        opt = Adam(params, args.lr)
        opt.t = int(extra.get("opt.t", np.array(start)))
        for k in params:
            if f"opt.m.{k}" in extra:
                opt.m[k], opt.v[k] = extra[f"opt.m.{k}"], extra[f"opt.v.{k}"]
        print(f"resuming from {newest.name} (step {start})", flush=True)
    began = time.time()
    loss = float("nan")
    for step in range(start + 1, args.steps + 1):
        # One generator per step: a resumed run sees the very batches an unbroken one would.
        rng = np.random.default_rng([args.seed, step])
        batch = batches(tokens, args.batch, args.length, rng)
        loss, grads = arch.loss_and_grads(params, cfg, batch)
        if not np.isfinite(loss):
            hint = "lower --lr (or TINYLM_LR), or resume from an earlier checkpoint"
            print(f"error: loss is {loss} at step {step}: {hint}", flush=True)
            return 3
        opt.step(params, grads)
        if step % 10 == 0 or step == args.steps:
            rate = (step - start) / max(1e-9, time.time() - began)
            print(f"step {step}/{args.steps} loss={loss:.4f} ({rate:.1f} steps/s)", flush=True)
        if step % args.every == 0 or step == args.steps:
            extra = {"opt.t": np.array(opt.t)}
            extra |= {f"opt.m.{k}": v for k, v in opt.m.items()}
            extra |= {f"opt.v.{k}": v for k, v in opt.v.items()}
            save(args.ckpt / f"{args.role}-step-{step}.npz", params, cfg, extra)
            for _, old in checkpoints(args.ckpt, args.role)[:-2]:
                old.unlink()  # keep the newest two
    save(args.ckpt / f"{args.role}.npz", params, cfg)
    print(
        f"done: {args.role} model at {args.ckpt / (args.role + '.npz')}, final loss {loss:.3f}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
