"""What only the Schwab adapter does: the order as sent on the wire, the login kept in mbx's own
token store and renewed by schwab-py's session, a refused renewal taking the broker down (never
an ambiguous order), and the account chosen by number."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from contracts import OrderStatus
from tests.builders import make_intent
from tests.contract.harness import SchwabHarness
from tests.fakes.schwab import FakeSchwab
from workers.domain.venue import VenueAuthFailed, VenueUnavailable
from workers.venues.schwab.tokens import TokenStore, expiry_warning
from workers.venues.schwab.venue import SchwabVenue, order_request

OPTION = {"symbol": "AAPL261218C00190000", "asset_class": "option", "quantity": "2"}


@pytest.fixture
async def h() -> AsyncIterator[SchwabHarness]:
    harness = await SchwabHarness.start()
    try:
        yield harness
    finally:
        await harness.close()


def test_orders_are_written_as_schwab_reads_them() -> None:
    limit = order_request(make_intent(symbol="AAPL", quantity="10", order_type="limit", limit_price="150.25"))
    assert limit == {
        "session": "NORMAL",
        "duration": "DAY",
        "orderType": "LIMIT",
        "orderStrategyType": "SINGLE",
        "price": "150.25",
        "orderLegCollection": [
            {"instruction": "BUY", "quantity": 10, "instrument": {"symbol": "AAPL", "assetType": "EQUITY"}}
        ],
    }
    buy = order_request(make_intent(**OPTION))["orderLegCollection"][0]
    assert buy["instrument"] == {"symbol": "AAPL  261218C00190000", "assetType": "OPTION"}  # root padded to 6
    assert buy["instruction"] == "BUY_TO_OPEN"
    sell = order_request(make_intent(**OPTION, side="sell"))["orderLegCollection"][0]
    assert sell["instruction"] == "SELL_TO_CLOSE"
    short = order_request(make_intent(**OPTION, side="sell", metadata={"position_effect": "open"}))
    assert short["orderLegCollection"][0]["instruction"] == "SELL_TO_OPEN"
    assert order_request(make_intent(time_in_force="gtc"))["duration"] == "GOOD_TILL_CANCEL"


async def test_the_order_id_comes_from_location_and_options_pay_per_contract(h: SchwabHarness) -> None:
    order = await h.venue.place_order(make_intent(**OPTION), "any")
    assert order.broker_order_id in h.fake.orders  # read back by the id in Location
    assert order.symbol == OPTION["symbol"] and order.asset_class == "option"
    assert order.status is OrderStatus.FILLED and order.fees == Decimal("1.30")  # $0.65 x 2
    assert ("POST", f"/trader/v1/accounts/{h.fake.account_hash}/orders") in h.fake.requests


async def test_fractions_and_crypto_are_refused_before_anything_is_sent(h: SchwabHarness) -> None:
    from workers.domain.venue import VenueRejected

    for intent in (make_intent(quantity="0.5"), make_intent(symbol="BTC-USD", asset_class="crypto", quantity="1")):
        with pytest.raises(VenueRejected) as refused:
            await h.venue.place_order(intent, intent.intent_id)
        assert not refused.value.order_specific  # another broker may take it
    assert h.fake.orders == {}


async def test_an_expired_access_token_is_renewed_and_kept_in_the_store(h: SchwabHarness) -> None:
    before = json.loads(h.store.path.read_text())
    h.fake.expire_access_tokens()
    await h.venue.get_account()
    assert h.fake.refreshes == 1
    after = json.loads(h.store.path.read_text())
    assert after["token"]["access_token"] != before["token"]["access_token"]
    assert after["token"]["access_token"] in h.fake.access_tokens
    assert after["creation_timestamp"] == before["creation_timestamp"]  # the 7 days do not restart
    assert stat.S_IMODE(os.stat(h.store.path).st_mode) == 0o600
    await h.venue.get_account()
    assert h.fake.refreshes == 1  # the new token is used, not renewed again


async def test_a_token_about_to_end_is_renewed_before_the_request(h: SchwabHarness) -> None:
    await h.venue.disconnect()
    stored = json.loads(h.store.path.read_text())
    stored["token"]["expires_at"] = int(time.time()) + 60  # within schwab-py's five minutes' leeway
    h.store.write(stored)
    unauthorized = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal unauthorized
        response = h.fake.handle(request)
        unauthorized += response.status_code == 401
        return response

    venue = SchwabVenue(h.fake.app_key, h.fake.app_secret, h.store, transport=httpx.MockTransport(handle))
    await venue.get_account()
    assert h.fake.refreshes == 1 and unauthorized == 0  # renewed first, never refused
    await venue.disconnect()


async def test_a_refused_renewal_takes_the_broker_down_and_sends_nothing(h: SchwabHarness) -> None:
    h.fake.switch_faults({"refresh_refused": True})
    h.fake.expire_access_tokens()
    intent = make_intent(quantity="3")
    with pytest.raises(VenueAuthFailed) as refused:  # unavailable, never ambiguous: safe to fail over
        await h.venue.place_order(intent, intent.intent_id)
    assert "refresh_token_authentication_error" in str(refused.value)
    assert "mbx auth schwab" in h.venue.down_because and not h.venue.is_connected
    assert h.fake.orders == {}
    stored = h.store.path.read_text()
    assert not any(json.loads(stored)["token"][k] in h.venue.down_because for k in ("access_token", "refresh_token"))

    # An operator logs in again: the next request reads the new login, and the broker is up.
    h.fake.switch_faults({"refresh_refused": False})
    h.store.save_login(h.fake.issue_tokens())
    placed = await h.venue.place_order(intent, intent.intent_id)
    assert placed.status is OrderStatus.FILLED and h.venue.is_connected


async def test_with_no_login_stored_the_broker_is_down_saying_what_to_run(tmp_path: Path) -> None:
    fake = FakeSchwab()
    store = TokenStore(tmp_path / "missing.json")
    venue = SchwabVenue(fake.app_key, fake.app_secret, store, transport=httpx.MockTransport(fake.handle))
    await venue.connect()
    assert not venue.is_connected
    assert str(store.path) in venue.down_because and "mbx auth schwab" in venue.down_because
    with pytest.raises(VenueAuthFailed):
        await venue.get_account()
    assert fake.requests == []


async def test_the_account_is_chosen_by_number_when_the_login_reaches_several(tmp_path: Path) -> None:
    fake = FakeSchwab()
    two = [
        {"accountNumber": "87654321", "hashValue": "OTHERHASH"},
        {"accountNumber": fake.account_number, "hashValue": fake.account_hash},
    ]

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/accountNumbers") and fake._authorized(request):
            return httpx.Response(200, json=two)
        return fake.handle(request)

    store = TokenStore(tmp_path / "token.json")
    store.save_login(fake.issue_tokens())
    unsure = SchwabVenue(fake.app_key, fake.app_secret, store, transport=httpx.MockTransport(handle))
    with pytest.raises(VenueUnavailable):
        await unsure.get_account()
    assert "...4321" in unsure.down_because and "...5678" in unsure.down_because
    assert "brokers.schwab.account_number" in unsure.down_because
    chosen = SchwabVenue(
        fake.app_key,
        fake.app_secret,
        store,
        account_number=fake.account_number,
        transport=httpx.MockTransport(handle),
    )
    assert (await chosen.get_account()).account_id == "schwab-...5678"
    await unsure.disconnect()
    await chosen.disconnect()


def test_the_login_warns_a_day_before_it_ends(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "token.json")
    assert store.expires_at() is None and expiry_warning(None) == ""
    store.write({"creation_timestamp": int(time.time()), "token": {}})
    assert expiry_warning(store.expires_at()) == ""
    store.write({"creation_timestamp": int(time.time() - timedelta(days=6, hours=12).total_seconds()), "token": {}})
    warning = expiry_warning(store.expires_at())
    assert "expires in 11h" in warning and "mbx auth schwab" in warning
    ended = datetime.now(UTC) - timedelta(minutes=1)
    assert "expired" in expiry_warning(ended)


async def test_the_adapter_carries_the_warning_its_heartbeat_sends(h: SchwabHarness) -> None:
    assert h.venue.warning == ""
    stored = h.store.read()
    stored["creation_timestamp"] = int(time.time() - timedelta(days=6, hours=20).total_seconds())
    h.store.write(stored)
    fresh = SchwabVenue(h.fake.app_key, h.fake.app_secret, h.store, transport=httpx.MockTransport(h.fake.handle))
    assert "the login expires in 3h 59m" in fresh.warning
    await fresh.get_account()  # still up meanwhile
    assert fresh.is_connected
    await fresh.disconnect()


def test_the_config_names_what_schwab_needs_and_it_trades_real_money() -> None:
    from workers.domain.config import ConfigError, parse_config
    from workers.venues.factory import check_config, live_refusal

    with pytest.raises(ConfigError) as unset:
        check_config(parse_config({"brokers": {"schwab": {"adapter": "schwab"}}}))
    assert "brokers.schwab.credentials.app_key" in str(unset.value) and "schwab adapter" in str(unset.value)
    with pytest.raises(ConfigError, match="account_number"):
        parse_config({"brokers": {"schwab": {"adapter": "schwab", "account_number": "12-34"}}})
    keys = {"app_key": "k", "app_secret": "s"}
    config = parse_config({"brokers": {"schwab": {"adapter": "schwab", "credentials": keys}}})
    check_config(config)
    assert "schwab would trade real money" in (live_refusal(config, allowed=False) or "")
