"""Reference prices from Coinbase's public market data: the best bid and ask of a product from
its ticker (``GET /api/v3/brokerage/market/products/{product}/ticker``, no keys needed; 10
public requests a second per IP), cached and bounded as every quote source is. Crypto pairs
only: any other symbol has no quote here."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import httpx

from workers.domain.quotes import Quote
from workers.venues.http import make_client, send
from workers.venues.quote_cache import CachedQuotes

BASE_URL = "https://api.coinbase.com"
SOURCE = "coinbase"


class CoinbaseQuoteSource(CachedQuotes):
    name = SOURCE

    def __init__(
        self,
        *,
        base_url: str = BASE_URL,
        requests_per_minute: int = 300,
        cache_s: float = 1.0,
        timeout_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        client = make_client(base_url.rstrip("/"), timeout_s, transport=transport)
        super().__init__(client, requests_per_minute=requests_per_minute, cache_s=cache_s)

    def covers(self, symbol: str) -> bool:
        return "-" in symbol  # a crypto pair

    async def _fetch(self, symbol: str) -> Quote | None:
        path = f"/api/v3/brokerage/market/products/{symbol}/ticker"
        response = await send(self._http, "coinbase market data", "GET", path, params={"limit": 1})
        if response.status_code in (400, 404):
            return None
        response.raise_for_status()
        body = response.json()
        bid, ask = Decimal(str(body.get("best_bid") or 0)), Decimal(str(body.get("best_ask") or 0))
        if bid <= 0 or ask <= 0:
            return None
        return Quote(symbol, bid, ask, datetime.now(UTC), SOURCE)  # the book as it stands now
