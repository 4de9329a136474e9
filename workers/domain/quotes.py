"""Reference prices: the quote-source protocol, and when a quote may be used.

The router prices every order from a ``QuoteSource`` chosen by config (``market_data.source``,
or one per asset class with ``market_data.sources``, composed by ``QuotesByAssetClass``):
the notional it checks against the risk limits, the fees it estimates and the reference price
that execution quality measures slippage against. A quote that is missing or older than
``market_data.max_age_s`` is never used in its place: ``assess`` says so, and routing then
falls back to the intent's own limit price or rejects the order (``no_reference_price``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from contracts import AssetClass, ReferenceQuote
from workers.domain.instruments import asset_class_of

TWO = Decimal(2)


@dataclass(frozen=True, slots=True)
class Quote:
    """Best bid and ask of a symbol at one moment, and who said so."""

    symbol: str
    bid: Decimal
    ask: Decimal
    at: datetime
    source: str = ""

    @property
    def mid(self) -> Decimal:
        return (self.bid + self.ask) / TWO


class QuoteSource(Protocol):
    """Where reference prices come from (the simulator, a broker's market data, ...)."""

    @property
    def name(self) -> str: ...

    async def quote(self, symbol: str) -> Quote | None:
        """The latest quote of ``symbol``, or None when the source has none. A source that
        cannot be reached raises; the router treats that like a missing quote."""
        ...


class QuotesByAssetClass:
    """One quote source per asset class, as one ``QuoteSource``: a symbol is asked of the source
    of the asset class its form names (``asset_class_of``: ``BTC-USD`` crypto, an OCC symbol an
    option, else equity), and of ``default`` when its class has none of its own."""

    def __init__(self, default: QuoteSource, by_asset: Mapping[AssetClass, QuoteSource]) -> None:
        self.default = default
        self.by_asset = dict(by_asset)
        named: dict[str, str] = {str(asset): source.name for asset, source in sorted(self.by_asset.items())}
        if set(named) != set(AssetClass):
            named["other"] = default.name
        self._name = ",".join(f"{asset}={name}" for asset, name in named.items())

    @property
    def name(self) -> str:
        return self._name

    def source_for(self, asset: AssetClass) -> QuoteSource:
        return self.by_asset.get(asset, self.default)

    async def quote(self, symbol: str) -> Quote | None:
        return await self.source_for(asset_class_of(symbol)).quote(symbol)


@dataclass(frozen=True, slots=True)
class PriceCheck:
    """What the router may do with the quote it got for one order."""

    price: Decimal | None
    """The mid price to use, or None when there is no usable quote."""
    quote: ReferenceQuote | None
    """The quote as the decision records it (also when it is too old to use)."""
    problem: str = ""
    """Why there is no usable price (empty when ``price`` is set)."""


def assess(symbol: str, quote: Quote | None, max_age_s: float, now: datetime, error: str = "") -> PriceCheck:
    """Decide whether ``quote`` may price an order of ``symbol`` at ``now``."""
    if quote is None:
        why = f"no quote for {symbol}" + (f" ({error})" if error else "")
        return PriceCheck(None, None, why)
    age_s = max((now - quote.at).total_seconds(), 0.0)
    recorded = ReferenceQuote(
        source=quote.source, bid=quote.bid, ask=quote.ask, mid=quote.mid, at=quote.at, age_ms=round(age_s * 1000, 3)
    )
    if age_s > max_age_s:
        why = f"the {quote.source} quote for {symbol} is {age_s:.1f}s old (market_data.max_age_s is {max_age_s:g})"
        return PriceCheck(None, recorded, why)
    if quote.bid <= 0 or quote.ask <= 0 or quote.ask < quote.bid:
        return PriceCheck(None, recorded, f"the {quote.source} quote for {symbol} is crossed or empty")
    return PriceCheck(quote.mid, recorded)
