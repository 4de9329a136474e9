"""Reference prices: a fresh quote prices the order, a stale or missing one never does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from contracts import OrderType, RouteDecision
from tests.builders import NOTIONAL, make_intent
from workers.domain.config import parse_config
from workers.domain.quotes import Quote, assess
from workers.router.rules import MarketView, Rejection, route

NOW = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)
LIMITED = parse_config({"risk": {"max_order_notional": 5000}})


def quote(age_s: float, bid: str = "99.98", ask: str = "100.02") -> Quote:
    return Quote("AAPL", Decimal(bid), Decimal(ask), NOW - timedelta(seconds=age_s), "test-feed")


def market_at(q: Quote | None, max_age_s: float = 5.0, error: str = "") -> MarketView:
    check = assess("AAPL", q, max_age_s, NOW, error)
    return MarketView(reference_price=check.price, price_check=check)


def test_a_fresh_quote_prices_the_order_and_the_decision_records_it() -> None:
    """The mid price is the reference price; the quote's source, bid, ask and age are recorded."""
    decision = route(make_intent(quantity="10"), LIMITED, market=market_at(quote(age_s=1.5)))
    assert isinstance(decision, RouteDecision)
    assert decision.reference_price == Decimal(100)
    assert decision.quote is not None
    assert decision.quote.source == "test-feed"
    assert (decision.quote.bid, decision.quote.ask, decision.quote.mid) == (
        Decimal("99.98"),
        Decimal("100.02"),
        Decimal(100),
    )
    assert decision.quote.age_ms == 1500.0


def test_a_stale_quote_rejects_a_market_order_with_no_reference_price() -> None:
    """A market order sized in shares whose quote is older than max_age_s is rejected."""
    outcome = route(make_intent(quantity="10"), LIMITED, market=market_at(quote(age_s=12), max_age_s=5))
    assert isinstance(outcome, Rejection)
    assert outcome.reason_code == "no_reference_price"
    assert "12.0s old" in outcome.reason
    assert "market_data.max_age_s is 5" in outcome.reason


def test_no_quote_at_all_rejects_a_market_order_with_no_reference_price() -> None:
    """No quote (the source had none, or could not be reached) is never replaced by a made-up price."""
    outcome = route(make_intent(quantity="10"), LIMITED, market=market_at(None, error="feed: ConnectError"))
    assert isinstance(outcome, Rejection)
    assert outcome.reason_code == "no_reference_price"
    assert "no quote for AAPL (feed: ConnectError)" in outcome.reason


def test_a_limit_price_stands_in_for_a_stale_quote_and_the_limits_still_apply() -> None:
    """With a stale quote a limit order is priced at its limit: within the limit it routes, with
    no reference price and the stale quote recorded; over the limit it is denied."""
    stale = market_at(quote(age_s=30))
    small = make_intent(quantity="10", order_type=OrderType.LIMIT, limit_price="101")
    decision = route(small, LIMITED, market=stale)
    assert isinstance(decision, RouteDecision)
    assert decision.reference_price is None
    assert decision.quote is not None
    assert decision.quote.age_ms == 30_000.0
    assert "priced at its limit price" in decision.reason
    large = make_intent(quantity="100", order_type=OrderType.LIMIT, limit_price="101")  # $10,100 > $5,000
    denied = route(large, LIMITED, market=stale)
    assert isinstance(denied, Rejection)
    assert denied.reason_code == "max_order_notional"


def test_a_dollar_amount_order_needs_no_quote_to_be_checked() -> None:
    """An order sized in dollars has its notional without a price: it routes, saying so."""
    decision = route(make_intent(**NOTIONAL), LIMITED, market=market_at(None))
    assert isinstance(decision, RouteDecision)
    assert decision.reference_price is None
    assert "no quote for AAPL" in decision.reason


def test_a_crossed_quote_is_not_used() -> None:
    """A quote whose ask is below its bid is recorded but not used."""
    check = assess("AAPL", quote(age_s=0, bid="101", ask="99"), 5, NOW)
    assert check.price is None
    assert "crossed" in check.problem
