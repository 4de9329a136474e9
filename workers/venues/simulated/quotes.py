"""Simulated prices: a stable mid per symbol, derived from the symbol itself, with a fixed spread.

Every simulated broker fills at these prices, and ``SimulatedQuoteSource`` gives the router the
same ones (``market_data.source: simulated``, the default of `make run`). They are paper
prices: never use them to trade real money.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

from workers.domain.quotes import Quote

CENT = Decimal("0.01")
SOURCE = "simulated"


class QuoteModel:
    """A stable mid price per symbol, derived from the symbol itself, with a fixed spread."""

    def __init__(self, spread_bps: Decimal = Decimal(2)) -> None:
        self.spread_bps = spread_bps

    def mid(self, symbol: str) -> Decimal:
        digest = int.from_bytes(hashlib.sha256(symbol.encode()).digest()[:4], "big")
        if symbol.endswith("-USD"):  # crypto pairs trade at larger prices
            return (Decimal(1000) + Decimal(digest % 6_000_000) / 100).quantize(CENT)
        return (Decimal(5) + Decimal(digest % 50_000) / 100).quantize(CENT)

    def quote(self, symbol: str) -> Quote:
        mid = self.mid(symbol)
        half = (mid * self.spread_bps / Decimal(20_000)).quantize(Decimal("0.0001"), ROUND_HALF_UP)
        half = max(half, Decimal("0.0001"))
        return Quote(symbol, mid - half, mid + half, datetime.now(UTC), SOURCE)


class SimulatedQuoteSource:
    """The router's quote source on paper: always a fresh quote from ``QuoteModel``."""

    name = SOURCE

    def __init__(self, model: QuoteModel | None = None) -> None:
        self.model = model or QuoteModel()

    async def quote(self, symbol: str) -> Quote | None:
        return self.model.quote(symbol)
