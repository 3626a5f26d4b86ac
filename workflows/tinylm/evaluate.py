"""Measure greedy speculative decoding against the target alone, in this process, on the
same prompts: acceptance rate, tokens/s of both, the speedup, and whether the outputs are
identical token for token (they must be: speculative decoding is lossless).

    python -m tinylm.evaluate --target ckpt/target.npz --draft ckpt/draft.npz --k 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from tinylm.checkpoint import arch_of, decoder, load
from tinylm.data import corpus, encode
from tinylm.speculative import Stats, greedy, speculative


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--target", type=Path, default=Path("ckpt/target.npz"))
    ap.add_argument("--draft", type=Path, default=Path("ckpt/draft.npz"))
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("results.json"))
    args = ap.parse_args(argv)
    for p in (args.target, args.draft):
        if not p.is_file():
            print(f"error: no model at {p}: train it first", file=sys.stderr)
            return 2
    tp, tcfg, _ = load(args.target)
    dp, dcfg, _ = load(args.draft)
    text = corpus(400_000)
    step = len(text) // (args.prompts + 1)
    prompts = [encode(text[i * step : i * step + 32]) for i in range(1, args.prompts + 1)]
    target, draft, target2 = decoder(tp, tcfg), decoder(dp, dcfg), decoder(tp, tcfg)
    greedy(target, prompts[0], 8)  # warm up both paths
    speculative(target2, draft, prompts[0], 8, args.k, Stats())
    # Both decoders on each prompt in turn, several rounds, the fastest time of each: a
    # busy machine slows a round, not one method.
    best_plain = [float("inf")] * len(prompts)
    best_fast = [float("inf")] * len(prompts)
    plain: list[list[int]] = []
    fast: list[list[int]] = []
    stats = Stats()
    for round_ in range(args.rounds):
        for i, p in enumerate(prompts):
            t0 = time.perf_counter()
            a = greedy(target, p, args.tokens)
            best_plain[i] = min(best_plain[i], time.perf_counter() - t0)
            s = Stats()
            t0 = time.perf_counter()
            b = speculative(target2, draft, p, args.tokens, args.k, s)
            best_fast[i] = min(best_fast[i], time.perf_counter() - t0)
            if round_ == 0:
                plain.append(a)
                fast.append(b)
                stats.proposed += s.proposed
                stats.accepted += s.accepted
    t_plain, t_fast = sum(best_plain), sum(best_fast)
    n = args.prompts * args.tokens
    results = {
        "speedup": round(t_plain / t_fast, 3),
        "acceptance_rate": round(stats.acceptance, 3),
        "lossless": plain == fast,
        "k": args.k,
        "tokens": n,
        "target_tokens_per_s": round(n / t_plain, 1),
        "speculative_tokens_per_s": round(n / t_fast, 1),
        "target": {"arch": arch_of(tcfg), **asdict(tcfg)},
        "draft": {"arch": arch_of(dcfg), **asdict(dcfg)},
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    if not results["lossless"]:
        print("error: speculative output differs from the target's greedy output", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
