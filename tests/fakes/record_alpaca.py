"""Record fresh Alpaca payloads from a paper account, to compare with the fake's golden files
(`make record-alpaca`). Optional and manual: the tests never need the network.

With ALPACA_API_KEY and ALPACA_SECRET_KEY set to *paper* keys it reads the account and the
positions, places one limit buy of 1 share of AAPL at 1.00 USD (far from the market: it rests),
finds it by client order id, cancels it, reads the fill activities and the latest quote, and
writes each answer to `tests/fakes/golden/alpaca/recorded/`. Account and order identifiers are
replaced before writing; keys are only ever in request headers.

Usage: python -m tests.fakes.record_alpaca [--base-url URL] [--data-url URL] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx

PAPER = "https://paper-api.alpaca.markets"
DATA = "https://data.alpaca.markets"
OUT = Path(__file__).parent / "golden" / "alpaca" / "recorded"
HIDDEN = ("account_number", "id", "asset_id", "order_id", "client_order_id")


def scrub(value: Any) -> Any:
    """The payload with identifiers that belong to the account replaced by placeholders."""
    if isinstance(value, dict):
        return {k: (f"<{k}>" if k in HIDDEN and isinstance(v, str) else scrub(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def record(base_url: str, data_url: str, out: Path, key: str, secret: str) -> list[Path]:
    headers = {"APCA-API-KEY-ID": key, "APCA-API-SECRET-KEY": secret}
    written: list[Path] = []
    out.mkdir(parents=True, exist_ok=True)

    def keep(name: str, response: httpx.Response) -> Any:
        response.raise_for_status()
        body = response.json() if response.content else None
        path = out / f"{name}.json"
        path.write_text(json.dumps(scrub(body), indent=2, sort_keys=True) + "\n")
        written.append(path)
        print(f"recorded {path.name} ({response.status_code})")
        return body

    with httpx.Client(base_url=base_url, headers=headers, timeout=10.0) as trading:
        keep("account", trading.get("/v2/account"))
        keep("positions", trading.get("/v2/positions"))
        cid = f"mbx-record-{uuid.uuid4().hex[:12]}"
        order = {"symbol": "AAPL", "qty": "1", "side": "buy", "type": "limit", "time_in_force": "day"}
        placed = keep(
            "order_placed", trading.post("/v2/orders", json=order | {"limit_price": "1.00", "client_order_id": cid})
        )
        keep("order_by_client_id", trading.get("/v2/orders:by_client_order_id", params={"client_order_id": cid}))
        cancel = trading.delete(f"/v2/orders/{placed['id']}")
        print(f"cancel answered {cancel.status_code}")
        keep("order_cancelled", trading.get(f"/v2/orders/{placed['id']}"))
        keep("fill_activities", trading.get("/v2/account/activities/FILL", params={"page_size": 5}))
    with httpx.Client(base_url=data_url, headers=headers, timeout=10.0) as data:
        keep("stock_latest_quote", data.get("/v2/stocks/AAPL/quotes/latest", params={"feed": "iex"}))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default=PAPER)
    parser.add_argument("--data-url", default=DATA)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    key, secret = os.environ.get("ALPACA_API_KEY"), os.environ.get("ALPACA_SECRET_KEY")
    if not key or not secret:
        print("set ALPACA_API_KEY and ALPACA_SECRET_KEY to paper-account keys to record", file=sys.stderr)
        return 2
    if "paper" not in args.base_url and "127.0.0.1" not in args.base_url:
        print(f"refusing to record against {args.base_url}: use the paper endpoint", file=sys.stderr)
        return 2
    try:
        record(args.base_url, args.data_url, args.out, key, secret)
    except httpx.HTTPError as exc:
        print(f"recording failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
