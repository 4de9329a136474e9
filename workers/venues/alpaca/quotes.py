"""Reference prices from Alpaca's market data API: the latest quote of a stock, an option (OCC
symbol) or a crypto pair, each cached for ``cache_s`` and asked for at most
``requests_per_minute`` times a minute, so routing a burst never floods the data API (its own
limit, separate from trading's: 200 a minute on the free plan).

A quote the source cannot get (limit reached, the API unreachable or refusing the keys) is
None: the router then routes as it does without a quote (docs/routing.md, "Reference prices").
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx

from workers.domain.instruments import is_option
from workers.domain.quotes import Quote
from workers.venues.http import make_client, parse_time, send
from workers.venues.options import compact
from workers.venues.quote_cache import CachedQuotes

DATA_URL = "https://data.alpaca.markets"
SOURCE = "alpaca"


class AlpacaQuoteSource(CachedQuotes):
    name = SOURCE

    def __init__(
        self,
        key_id: str,
        secret_key: str,
        *,
        base_url: str = DATA_URL,
        feed: str = "iex",
        requests_per_minute: int = 180,
        cache_s: float = 1.0,
        timeout_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"APCA-API-KEY-ID": key_id, "APCA-API-SECRET-KEY": secret_key}
        client = make_client(base_url.rstrip("/"), timeout_s, headers=headers, transport=transport)
        super().__init__(client, requests_per_minute=requests_per_minute, cache_s=cache_s)
        self._feed = feed

    async def _fetch(self, symbol: str) -> Quote | None:
        if symbol.endswith("-USD") or "/" in symbol:
            pair = symbol.replace("-", "/")
            body = await self._get("/v1beta3/crypto/us/latest/quotes", symbols=pair)
            raw = (body.get("quotes") or {}).get(pair) if body else None
        elif is_option(symbol):
            occ = compact(symbol)
            body = await self._get("/v1beta1/options/quotes/latest", symbols=occ, feed="indicative")
            raw = (body.get("quotes") or {}).get(occ) if body else None
        else:
            body = await self._get(f"/v2/stocks/{symbol}/quotes/latest", feed=self._feed)
            raw = body.get("quote") if body else None
        return _quote(symbol, raw) if raw else None

    async def _get(self, path: str, **params: Any) -> dict[str, Any] | None:
        response = await send(self._http, "alpaca market data", "GET", path, params=params)
        if response.status_code in (400, 404, 422):  # an unknown symbol: no quote
            return None
        response.raise_for_status()
        body = response.json()
        return body if isinstance(body, dict) else None


def _quote(symbol: str, raw: dict[str, Any]) -> Quote | None:
    bid, ask = Decimal(str(raw.get("bp", 0))), Decimal(str(raw.get("ap", 0)))
    at = parse_time(raw.get("t"))
    if at is None or bid <= 0 or ask <= 0:
        return None  # one side missing (a halted or closed market): not a usable quote
    return Quote(symbol, bid, ask, at, SOURCE)
