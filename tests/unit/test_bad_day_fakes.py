"""The fake brokers' bad-day behaviour, as the brokers document it (tests/chaos/test_bad_day.py
relies on it): Alpaca's 429 resets at its window's end and the window stays closed till then;
an order accepted with a 5xx reply exists; ``pending_new`` becomes ``new``; a GTC order goes
``done_for_day`` and works again the next day; Schwab refuses order calls past its daily cap;
a token bucket refuses past its burst and names when the next request is admitted."""

from __future__ import annotations

import json
import math
import time
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.fakes.alpaca import FakeAlpaca
from tests.fakes.rate_window import FixedWindow, TokenBucket
from tests.fakes.schwab import FakeSchwab

KEYS = {"APCA-API-KEY-ID": "fake-key-id", "APCA-API-SECRET-KEY": "fake-secret-key"}


def alpaca(fake: FakeAlpaca, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    content = json.dumps(body).encode() if body is not None else b""
    return fake.handle(httpx.Request(method, f"http://fake{path}", headers=KEYS, content=content))


def order(cid: str, **fields: Any) -> dict[str, Any]:
    return {"client_order_id": cid, "symbol": "AAPL", "side": "buy", "type": "market", "qty": "1"} | fields


def test_a_429_at_alpaca_resets_at_the_windows_end_and_the_window_stays_closed_till_then() -> None:
    """A scripted 429 to a placement names the window's end; a request before it is refused and
    counted apart from the window's own refusals."""
    start = time.time() - 5
    fake = FakeAlpaca(window=FixedWindow(200, 60.0, start=start))
    assert alpaca(fake, "GET", "/v2/account").status_code == 200  # not a placement: no 429
    fake.switch_faults({"rate_limited_orders_next": 1})
    refused = alpaca(fake, "POST", "/v2/orders", order("c1"))
    assert refused.status_code == 429
    assert int(refused.headers["X-RateLimit-Reset"]) == math.ceil(start + 60)  # the window's end
    again = alpaca(fake, "GET", "/v2/account")
    assert again.status_code == 429
    assert fake.window is not None
    assert (fake.window.refused, fake.window.before_reset, fake.faults.rate_limited_sent) == (0, 1, 1)
    assert fake.orders == {}


def test_alpacas_window_refuses_the_request_past_its_limit() -> None:
    fake = FakeAlpaca(window=FixedWindow(3, 60.0))
    answers = [alpaca(fake, "GET", "/v2/account").status_code for _ in range(4)]
    assert answers == [200, 200, 200, 429]
    assert fake.window is not None and (fake.window.refused, fake.window.peak) == (1, 4)


def test_moving_a_windows_end_keeps_its_count() -> None:
    window = FixedWindow(10, 60.0, start=1000.0)
    for _ in range(4):
        window.admit(now=1010.0)
    window.end_current_at(1030.0, now=1010.0)
    assert window.remaining(now=1020.0) == 6
    assert window.reset_at(now=1020.0) == 1030
    assert window.remaining(now=1031.0) == 10


def test_an_order_answered_with_a_5xx_after_acceptance_exists_at_alpaca() -> None:
    fake = FakeAlpaca()
    fake.switch_faults({"server_errors_after_accept": 1})
    assert alpaca(fake, "POST", "/v2/orders", order("c1")).status_code == 500
    assert [o["client_order_id"] for o in fake.orders.values()] == ["c1"]
    fake.switch_faults({"server_errors_next": 1})
    assert alpaca(fake, "POST", "/v2/orders", order("c2")).status_code == 503
    assert len(fake.orders) == 1  # a 5xx before the broker reads the request: nothing done


def test_a_resting_alpaca_order_is_pending_new_then_new_and_a_gtc_one_survives_the_day() -> None:
    fake = FakeAlpaca()
    fake.switch_faults({"pending_new_next": 1, "pending_new_s": 0.0})
    placed = alpaca(fake, "POST", "/v2/orders", order("c1", type="limit", limit_price="1.00", time_in_force="gtc"))
    assert placed.json()["status"] == "pending_new"
    order_id = placed.json()["id"]
    assert alpaca(fake, "GET", f"/v2/orders/{order_id}").json()["status"] == "new"
    fake.trade(order_id, Decimal("0.5"))
    fake.end_day()
    assert fake.orders[order_id]["status"] == "done_for_day"
    fake.next_day()
    assert fake.orders[order_id]["status"] == "partially_filled"
    fake.trade(order_id)
    assert fake.orders[order_id]["status"] == "filled"


def test_a_day_order_expires_at_the_end_of_the_day() -> None:
    fake = FakeAlpaca()
    placed = alpaca(fake, "POST", "/v2/orders", order("c1", type="limit", limit_price="1.00"))
    fake.end_day()
    assert fake.orders[placed.json()["id"]]["status"] == "expired"


def test_a_reused_connection_the_server_closed_drops_the_request_unread() -> None:
    fake = FakeAlpaca()
    fake.switch_faults({"idle_closes_next": 1})
    fresh = httpx.Request("POST", "http://fake/v2/orders", headers=KEYS, content=json.dumps(order("c1")).encode())
    assert fake.handle(fresh).status_code == 200
    reused = httpx.Request(
        "POST",
        "http://fake/v2/orders",
        headers=KEYS,
        content=json.dumps(order("c2")).encode(),
        extensions={"reused_connection": True},
    )
    with pytest.raises(httpx.RemoteProtocolError):
        fake.handle(reused)
    assert [o["client_order_id"] for o in fake.orders.values()] == ["c1"]


def test_schwab_refuses_order_calls_past_its_daily_cap() -> None:
    fake = FakeSchwab(cash=Decimal(10**9), orders_per_day=2)
    token = fake.issue_tokens()["access_token"]
    path = f"http://fake/trader/v1/accounts/{fake.account_hash}/orders"
    body = {
        "orderType": "MARKET",
        "session": "NORMAL",
        "duration": "DAY",
        "orderStrategyType": "SINGLE",
        "orderLegCollection": [
            {"instruction": "BUY", "quantity": 1, "instrument": {"symbol": "AAPL", "assetType": "EQUITY"}}
        ],
    }
    answers = [
        fake.handle(
            httpx.Request("POST", path, headers={"Authorization": f"Bearer {token}"}, content=json.dumps(body))
        ).status_code
        for _ in range(3)
    ]
    assert answers == [201, 201, 429]
    assert (fake.order_calls, fake.over_daily_cap, len(fake.orders)) == (2, 1, 2)


def test_a_token_bucket_refuses_past_its_burst_and_names_the_next_admission() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, _at=100.0)
    assert [bucket.admit(now=100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.reset_in(now=100.0) == pytest.approx(0.5)
    assert bucket.admit(now=100.5)
    assert bucket.refused == 1
