"""Routing that sees the brokers' queues: a broker whose queued orders would keep a new one
waiting past ``routing.max_queue_wait_s`` is left out while another can take the order; the
expected wait is part of every candidate's latency and breaks ties before priority."""

from __future__ import annotations

from decimal import Decimal

from contracts import BrokerName, RouteDecision
from tests.builders import FRACTIONAL, make_intent
from workers.domain.config import MbxConfig, parse_config, seconds_per_order
from workers.router.backlog import STALE_S, Backlog
from workers.router.rules import MarketView, route
from workers.router.scoring import Weights, rank_columns

EVERY_BROKER = {"brokers": {str(b): {} for b in BrokerName}}


def decide(queued: dict[BrokerName, int], config: MbxConfig | None = None, **intent: str) -> RouteDecision:
    market = MarketView(reference_price=Decimal(100), queued=queued)
    decision = route(make_intent(**intent), config or parse_config(EVERY_BROKER), market=market)
    assert isinstance(decision, RouteDecision)
    return decision


def test_an_order_costs_a_broker_one_request_of_its_budget_or_two_without_client_ids() -> None:
    assert seconds_per_order(BrokerName.ALPACA, None) == 60 / (0.9 * 200)
    assert seconds_per_order(BrokerName.SCHWAB, None) == 2 * 60 / (0.9 * 120)  # it lists before it places
    raised = parse_config({"brokers": {"alpaca": {"rate_limit": {"requests": 100, "per_seconds": 1, "share": 0.5}}}})
    assert seconds_per_order(BrokerName.ALPACA, raised) == 1 / 50


def test_the_default_stands_while_its_queue_is_short() -> None:
    decision = decide({BrokerName.ALPACA: 5})  # 5 x 0.33 s: 1.7 s, under 2 s
    assert (decision.broker, decision.rule) == (BrokerName.ALPACA, "default:equity")
    [alpaca] = [c for c in decision.candidates if c.broker is BrokerName.ALPACA]
    assert abs(alpaca.expected_wait_ms - 5 * seconds_per_order(BrokerName.ALPACA, None) * 1000) < 1e-6
    assert alpaca.expected_latency_ms == 15.0 + alpaca.expected_wait_ms


def test_a_default_broker_with_a_long_queue_gives_way_and_the_decision_says_why() -> None:
    decision = decide({BrokerName.ALPACA: 7})  # 2.3 s of Alpaca's 200 a minute
    assert decision.broker is not BrokerName.ALPACA
    assert decision.rule == "score"
    [why] = [e for e in decision.excluded if e.broker is BrokerName.ALPACA]
    assert why.reason_code == "queue_wait"
    assert "7 orders queued, about 2.3s" in why.reason and "routing.max_queue_wait_s is 2s" in why.reason
    assert BrokerName.ALPACA not in decision.fallback_chain


def test_with_no_limit_on_the_wait_the_default_takes_every_order() -> None:
    config = parse_config(EVERY_BROKER | {"routing": {"max_queue_wait_s": None}})
    decision = decide({BrokerName.ALPACA: 500}, config)
    assert decision.broker is BrokerName.ALPACA
    assert not [e for e in decision.excluded if e.reason_code == "queue_wait"]


def test_when_every_broker_that_can_take_it_has_a_long_queue_the_order_waits_at_the_shortest() -> None:
    """Fractional equities go only to Robinhood and Alpaca: both long, the order still goes, to the
    shorter wait (never refused for waiting)."""
    decision = decide({BrokerName.ROBINHOOD: 30, BrokerName.ALPACA: 40}, **FRACTIONAL)
    assert decision.broker is BrokerName.ALPACA  # 40 x 0.33 s = 13 s, against 30 x 2.1 s = 63 s
    assert decision.rule == "queue" and "alpaca's is the shortest (about 13.3s)" in decision.reason
    assert {e.broker for e in decision.excluded if e.reason_code == "queue_wait"} == set()
    waits = {c.broker: c.expected_wait_ms for c in decision.candidates}
    assert waits[BrokerName.ALPACA] < waits[BrokerName.ROBINHOOD]


def test_equal_totals_go_to_the_shorter_wait_before_the_better_priority() -> None:
    rows = rank_columns(
        [BrokerName.ROBINHOOD, BrokerName.IBKR],
        [Decimal(0), Decimal(0)],
        [100.0, 100.0],
        [0.5, 0.5],
        [0, 5],  # robinhood first by priority
        Weights(cost=0.5, speed=0.0, fill=0.5),  # speed does not count: the totals tie
        [4000.0, 0.0],
    )
    assert rows[0]["total"] == rows[1]["total"]
    assert [r["broker"] for r in rows] == [BrokerName.IBKR, BrokerName.ROBINHOOD]


def test_the_queue_is_the_last_reading_plus_the_routes_decided_since_it_began() -> None:
    now = [100.0]
    backlog = Backlog(clock=lambda: now[0])
    backlog.routed(BrokerName.ALPACA)
    assert backlog.queued(BrokerName.ALPACA) == 1  # nothing read yet: its own routes at least
    began = backlog.begin_reading()
    backlog.routed(BrokerName.ALPACA)  # decided while the consumer was being read
    backlog.routed(BrokerName.ALPACA)
    backlog.observe(BrokerName.ALPACA, 4, began)  # the executor's consumer: 4 not yet acked
    assert backlog.queued(BrokerName.ALPACA) == 6
    assert backlog.snapshot() == {BrokerName.ALPACA: 6}
    now[0] += STALE_S + 1  # the reading is old: no longer trusted
    assert backlog.queued(BrokerName.ALPACA) == 0
    assert backlog.snapshot() == {}


def test_the_drain_rate_is_measured_only_while_a_queue_waits_and_goes_stale() -> None:
    now = [0.0]
    backlog = Backlog(clock=lambda: now[0])
    backlog.observe(BrokerName.SCHWAB, 0, backlog.begin_reading(), acked=100)
    now[0] = 1.0
    backlog.observe(BrokerName.SCHWAB, 50, backlog.begin_reading(), acked=140)
    assert backlog.seconds_per_order(BrokerName.SCHWAB) is None  # no queue waited before: not measured
    now[0] = 2.0
    backlog.observe(BrokerName.SCHWAB, 60, backlog.begin_reading(), acked=150)  # 10 in a second
    assert backlog.seconds_per_order(BrokerName.SCHWAB) == 0.1
    now[0] = 3.0
    backlog.observe(BrokerName.SCHWAB, 70, backlog.begin_reading(), acked=150)  # none: stalled
    assert abs(backlog.seconds_per_order(BrokerName.SCHWAB) - 1 / 7) < 1e-9  # averaged, not zeroed
    now[0] = 4.0
    backlog.observe(BrokerName.SCHWAB, 0, backlog.begin_reading(), acked=220)  # caught up
    assert backlog.seconds_per_order(BrokerName.SCHWAB) is None  # the slow rate is forgotten
    now[0] = 5.0
    backlog.observe(BrokerName.SCHWAB, 5, backlog.begin_reading(), acked=225)
    now[0] = 6.0
    backlog.observe(BrokerName.SCHWAB, 5, backlog.begin_reading(), acked=245)
    assert backlog.seconds_per_order(BrokerName.SCHWAB) == 0.05
    now[0] += STALE_S + 1
    assert backlog.seconds_per_order(BrokerName.SCHWAB) is None


def test_executors_slower_than_the_rate_limit_make_the_wait_longer() -> None:
    """Limits raised (the rate allows thousands a second), but Schwab's executor has handled ten
    orders a second: 30 queued are 3 s, past the 2 s a default may keep an option waiting."""
    raised = {"rate_limit": {"requests": 100_000, "per_seconds": 1}}
    config = parse_config({"brokers": {str(b): raised for b in BrokerName}})
    queued = {BrokerName.SCHWAB: 30}
    option = {"symbol": "AAPL  270115C00200000", "asset_class": "option", "quantity": "2"}
    by_limit = route(make_intent(**option), config, market=MarketView(reference_price=Decimal(5), queued=queued))
    assert isinstance(by_limit, RouteDecision) and by_limit.broker is BrokerName.SCHWAB
    measured = MarketView(reference_price=Decimal(5), queued=queued, drain={BrokerName.SCHWAB: 0.1})
    slow = route(make_intent(**option), config, market=measured)
    assert isinstance(slow, RouteDecision) and slow.broker is not BrokerName.SCHWAB  # the best score of the rest
    [why] = [e for e in slow.excluded if e.broker is BrokerName.SCHWAB]
    assert why.reason_code == "queue_wait" and "about 3.0s" in why.reason
