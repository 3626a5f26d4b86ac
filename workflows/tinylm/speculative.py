"""Greedy decoding, alone and speculative: the draft proposes k tokens, the target checks
them all in one batched pass, the longest agreeing prefix is kept plus the target's own
next token. The output is exactly the target's greedy output (lossless)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Decoder(Protocol):
    """What decoding needs of a model (tinylm.model.Decoder, tinylm.window.WindowDecoder)."""

    n: int
    """How many positions the model has read."""

    def feed(self, tokens: list[int]) -> np.ndarray: ...

    def rollback(self, n: int) -> None: ...


@dataclass
class Stats:
    proposed: int = 0
    accepted: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


def greedy(target: Decoder, prompt: list[int], n: int) -> list[int]:
    target.rollback(0)
    logits = target.feed(prompt)
    out: list[int] = []
    for _ in range(n):
        tok = int(np.argmax(logits[-1]))
        out.append(tok)
        logits = target.feed([tok])
    return out


def speculative(
    target: Decoder, draft: Decoder, prompt: list[int], n: int, k: int, stats: Stats
) -> list[int]:
    """Each round, for the sequence S so far, both models have seen all of S but its last
    token. The draft guesses k tokens one at a time; the target reads S's last token and
    the k guesses in a single pass, which gives its own choice after each of them."""
    target.rollback(0)
    draft.rollback(0)
    target.feed(prompt[:-1])
    draft.feed(prompt[:-1])
    last = prompt[-1]
    out: list[int] = []
    while len(out) < n:
        seen = target.n  # len(S) - 1
        guess: list[int] = []
        tok = last
        for _ in range(k):
            tok = int(np.argmax(draft.feed([tok])[-1]))
            guess.append(tok)
        choices = np.argmax(target.feed([last, *guess]), axis=-1)  # one pass for k+1 tokens
        accepted = 0
        while accepted < k and guess[accepted] == int(choices[accepted]):
            accepted += 1
        expected = int(choices[accepted])  # the target's own token after the kept guesses
        stats.proposed += k
        stats.accepted += accepted
        # Both keep S, its last token and the kept guesses; ``expected`` is the new last.
        target.rollback(seen + 1 + accepted)
        if accepted == k:
            draft.feed([guess[-1]])  # the draft never read its own last guess
        else:
            draft.rollback(seen + 1 + accepted)
        out.extend(guess[:accepted])
        out.append(expected)
        last = expected
    return out[:n]
