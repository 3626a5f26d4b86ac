"""What a model call costs, estimated from list prices (USD per million tokens).

Prices change and differ by contract: the figures are an estimate for a person's budget,
never a bill. A model not listed is priced as the default family (Sonnet), and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentflow.state import Usage


@dataclass(frozen=True)
class Price:
    """USD per million tokens. Cache writes (5-minute) cost 1.25× input, reads 0.1×."""

    input: float
    output: float

    @property
    def cache_write(self) -> float:
        return self.input * 1.25

    @property
    def cache_read(self) -> float:
        return self.input * 0.1


# By the start of the model's name, most specific first.
PRICES: tuple[tuple[str, Price], ...] = (
    ("claude-opus-4-5", Price(5.0, 25.0)),
    ("claude-opus-4", Price(15.0, 75.0)),
    ("claude-3-opus", Price(15.0, 75.0)),
    ("claude-haiku-4", Price(1.0, 5.0)),
    ("claude-3-5-haiku", Price(0.8, 4.0)),
    ("claude-3-haiku", Price(0.25, 1.25)),
    ("claude-sonnet", Price(3.0, 15.0)),
    ("claude-3", Price(3.0, 15.0)),
)
DEFAULT = Price(3.0, 15.0)


def price_of(model: str) -> Price:
    for prefix, price in PRICES:
        if model.startswith(prefix):
            return price
    return DEFAULT


def usage(
    model: str, input_tokens: int, output_tokens: int, cache_read: int = 0, cache_write: int = 0
) -> Usage:
    """One call's usage with its estimated cost."""
    p = price_of(model)
    cost = (
        input_tokens * p.input
        + output_tokens * p.output
        + cache_read * p.cache_read
        + cache_write * p.cache_write
    ) / 1_000_000
    return Usage(
        calls=1,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        cost_usd=round(cost, 6),
    )
