"""Text ↔ tokens, and the corpus: the Python standard library's own source files, which
every machine with Python has."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np

CHARS = "\n\t" + "".join(chr(c) for c in range(32, 127))
VOCAB = len(CHARS) + 1  # the last id stands for any other character
_INDEX = {c: i for i, c in enumerate(CHARS)}


def encode(text: str) -> list[int]:
    return [_INDEX.get(c, VOCAB - 1) for c in text]


def decode(tokens: list[int]) -> str:
    return "".join(CHARS[t] if t < len(CHARS) else "?" for t in tokens)


def corpus(max_bytes: int) -> str:
    """The first ``max_bytes`` of the standard library's top-level modules, in name order
    (the same text on every machine with the same Python)."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for path in sorted(lib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        size += len(text)
        if size >= max_bytes:
            break
    return "".join(parts)[:max_bytes]


def batches(tokens: np.ndarray, batch: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """A random batch of windows of ``length + 1`` tokens."""
    starts = rng.integers(0, len(tokens) - length - 1, batch)
    return np.stack([tokens[s : s + length + 1] for s in starts])
