"""Sample continuations from the served target: the draft's training data.

    python -m tinylm.generate --url http://127.0.0.1:8765 --samples 200 --out data/gen.jsonl

Prints ``40/200 samples``; resumes an interrupted file (the samples already there are kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from tinylm.data import corpus


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", default="http://127.0.0.1:8765")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--length", type=int, default=96)
    ap.add_argument("--out", type=Path, default=Path("data/gen.jsonl"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--temperature", type=float, default=0.0, help="0: the target's greedy choice")
    args = ap.parse_args(argv)
    text = corpus(400_000)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    have = len(args.out.read_text().splitlines()) if args.out.exists() else 0
    with args.out.open("a") as f:
        for i in range(have, args.samples):
            rng = np.random.default_rng([args.seed, i])  # sample i is the same after a resume
            start = int(rng.integers(0, len(text) - 64))
            prompt = text[start : start + 32]
            body = json.dumps(
                {"prompt": prompt, "n": args.length, "temperature": args.temperature, "seed": i}
            ).encode()
            req = urllib.request.Request(
                f"{args.url}/generate", body, {"content-type": "application/json"}
            )
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    sample = json.loads(resp.read())["text"]
            except (urllib.error.URLError, OSError) as e:
                why = f"the target server at {args.url} did not answer ({e})"
                print(
                    f"error: {why}: is serve-target ready?",
                    file=sys.stderr,
                )
                return 3
            f.write(json.dumps({"prompt": prompt, "text": prompt + sample}) + "\n")
            f.flush()
            if (i + 1) % 10 == 0 or i + 1 == args.samples:
                print(f"{i + 1}/{args.samples} samples", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
