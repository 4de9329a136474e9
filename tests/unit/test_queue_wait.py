"""Routing that sees the brokers' queues: a broker whose queued orders would keep a new one
waiting past ``routing.max_queue_wait_s`` is left out while another can take the order; the
expected wait is part of every candidate's latency and breaks ties before priority."""

from __future__ import annotations

import json
from decimal import Decimal
from types import SimpleNamespace

import pytest
from nats.aio.msg import Msg

from contracts import BrokerName, RouteDecision
from tests.builders import CRYPTO, FRACTIONAL, intent_payload, make_intent
from workers.domain.config import MbxConfig, parse_config, seconds_per_order
from workers.router.backlog import STALE_S, Backlog
from workers.router.handlers import RouterHandlers
from workers.router.registry import BrokerHealth
from workers.router.rules import MarketView, route
from workers.router.scoring import Weights, rank_columns

EVERY_BROKER = {"brokers": {str(b): {} for b in BrokerName}}


def decide(queued: dict[BrokerName, int], config: MbxConfig | None = None, **intent: str) -> RouteDecision:
    market = MarketView(reference_price=Decimal(100), queued=queued)
    decision = route(make_intent(**intent), config or parse_config(EVERY_BROKER), market=market)
    assert isinstance(decision, RouteDecision)
    return decision


def test_an_order_costs_a_broker_one_request_of_its_budget_or_two_without_client_ids() -> None:
    # The executors' token rate: 0.9 of the limit less the burst, minted over the window and a
    # lease's lifetime (workers/domain/rates.py), so the router expects what they will do.
    assert abs(seconds_per_order(BrokerName.ALPACA, None) - 60.1 / (180 - 9)) < 1e-12
    assert abs(seconds_per_order(BrokerName.SCHWAB, None) - 2 * 60.1 / (108 - 5)) < 1e-12  # it lists first
    raised = parse_config({"brokers": {"alpaca": {"rate_limit": {"requests": 100, "per_seconds": 1, "share": 0.5}}}})
    assert abs(seconds_per_order(BrokerName.ALPACA, raised) - 1.1 / (50 - 2)) < 1e-12


def test_the_default_stands_while_its_queue_is_short() -> None:
    decision = decide({BrokerName.ALPACA: 5})  # 5 x 0.35 s: 1.8 s, under 2 s
    assert (decision.broker, decision.rule) == (BrokerName.ALPACA, "default:equity")
    [alpaca] = [c for c in decision.candidates if c.broker is BrokerName.ALPACA]
    assert abs(alpaca.expected_wait_ms - 5 * seconds_per_order(BrokerName.ALPACA, None) * 1000) < 1e-6
    assert alpaca.expected_latency_ms == 15.0 + alpaca.expected_wait_ms


def test_a_default_broker_with_a_long_queue_gives_way_and_the_decision_says_why() -> None:
    decision = decide({BrokerName.ALPACA: 7})  # 2.5 s of Alpaca's 200 a minute
    assert decision.broker is not BrokerName.ALPACA
    assert decision.rule == "score"
    [why] = [e for e in decision.excluded if e.broker is BrokerName.ALPACA]
    assert why.reason_code == "queue_wait"
    assert "7 orders queued, about 2.5s" in why.reason and "routing.max_queue_wait_s is 2s" in why.reason
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
    assert decision.broker is BrokerName.ALPACA  # 40 x 0.35 s = 14 s, against 30 x 2.2 s = 65 s
    assert decision.rule == "queue" and "alpaca would send it soonest (in about 14.4s)" in decision.reason
    assert {e.broker for e in decision.excluded if e.reason_code == "queue_wait"} == set()
    waits = {c.broker: c.expected_wait_ms for c in decision.candidates}
    assert waits[BrokerName.ALPACA] < waits[BrokerName.ROBINHOOD]


def test_past_the_limit_the_order_goes_where_it_would_be_sent_soonest_not_to_the_shorter_queue() -> None:
    """Robinhood's one queued order (2.2 s) is a shorter wait than Alpaca's seven (2.5 s), but the
    order's own turn costs 2.2 s more there and 0.35 s at Alpaca: Alpaca sends it sooner."""
    decision = decide({BrokerName.ROBINHOOD: 1, BrokerName.ALPACA: 7}, **FRACTIONAL)
    waits = {c.broker: c.expected_wait_ms for c in decision.candidates}
    assert waits[BrokerName.ROBINHOOD] < waits[BrokerName.ALPACA]
    assert (decision.broker, decision.rule) == (BrokerName.ALPACA, "queue")
    assert "alpaca would send it soonest (in about 2.8s)" in decision.reason


def test_long_queues_decide_even_when_every_broker_is_also_near_its_rate_limit() -> None:
    """In a burst the heartbeats say every busy broker's budget is nearly spent. That must not
    hide the queues: with Robinhood 20 s behind and Alpaca 7 s, the fractional order goes to
    Alpaca, not to Robinhood by default (a rebalance once sent 35 orders there that way)."""
    spent = BrokerHealth(up=True, reason="", latency_ms=10.0, rate_limit_headroom=0.0)
    market = MarketView(
        reference_price=Decimal(100),
        queued={BrokerName.ROBINHOOD: 9, BrokerName.ALPACA: 20},
        health={BrokerName.ROBINHOOD: spent, BrokerName.ALPACA: spent},
    )
    decision = route(make_intent(**FRACTIONAL), parse_config(EVERY_BROKER), market=market)
    assert isinstance(decision, RouteDecision)
    assert (decision.broker, decision.rule) == (BrokerName.ALPACA, "queue")


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


def test_the_queue_is_the_last_reading_plus_the_routes_it_does_not_hold() -> None:
    now = [100.0]
    backlog = Backlog(clock=lambda: now[0])
    backlog.routed(BrokerName.ALPACA)
    backlog.stored(BrokerName.ALPACA, 10)  # in the stream at sequence 10
    backlog.routed(BrokerName.ALPACA)  # decided, still being journaled and published
    assert backlog.queued(BrokerName.ALPACA) == 2  # nothing read yet: its own routes at least
    began = backlog.begin_reading(12)  # the routes stream ends at 12 before the consumer is read
    backlog.routed(BrokerName.ALPACA)  # decided while the consumer was being read
    backlog.routed(BrokerName.ALPACA)
    backlog.observe(BrokerName.ALPACA, 4, began)  # the executor's consumer: 4 not yet acked
    # The 4 read (the route at 10 among them), the one on its way, and the two decided since.
    assert backlog.queued(BrokerName.ALPACA) == 7
    # The one on its way was stored at 11, before the reading: its acknowledgement came late
    # (a router busy deciding a burst reads acknowledgements late), but the reading holds it.
    backlog.stored(BrokerName.ALPACA, 11)
    assert backlog.queued(BrokerName.ALPACA) == 6
    backlog.stored(BrokerName.ALPACA, 13)  # stored after: not in the reading, counted once still
    assert backlog.queued(BrokerName.ALPACA) == 6
    backlog.abandoned(BrokerName.ALPACA)  # its publish failed: it is not queued anywhere
    assert backlog.snapshot() == {BrokerName.ALPACA: 5}
    backlog.observe(BrokerName.ALPACA, 3, backlog.begin_reading(13))  # the next reading holds 13
    assert backlog.queued(BrokerName.ALPACA) == 3
    now[0] += STALE_S + 1  # the reading is old: no longer trusted
    assert backlog.queued(BrokerName.ALPACA) == 0
    assert backlog.snapshot() == {}


def test_the_drain_rate_is_measured_only_while_a_queue_waits_and_goes_stale() -> None:
    now = [0.0]
    backlog = Backlog(clock=lambda: now[0])

    def read(at: float, pending: int, acked: int) -> float | None:
        now[0] = at
        backlog.observe(BrokerName.SCHWAB, pending, backlog.begin_reading(0), acked=acked)
        return backlog.seconds_per_order(BrokerName.SCHWAB)

    assert read(0.0, 0, 100) is None
    assert read(1.0, 50, 140) is None  # a queue from now on: nothing measured yet
    assert read(1.25, 55, 142) is None  # a quarter second says too little
    assert read(2.0, 60, 150) == pytest.approx(1 / 11)  # 10 acked in a second, and the one under way
    assert read(3.0, 70, 179) == pytest.approx(2 / 40)  # 39 acked in two seconds, and the one under way
    assert read(5.0, 70, 179) == pytest.approx(4 / 40)  # stalled since: the rate falls over the window
    assert read(9.0, 80, 179) == pytest.approx(6 / 1)  # the readings of the last 5 s: nothing acked in 6 s
    assert read(10.0, 0, 220) is None  # caught up: the slow rate is forgotten
    assert read(11.0, 5, 225) is None
    assert read(13.0, 5, 265) == pytest.approx(2 / 41)
    now[0] += STALE_S + 1
    assert backlog.seconds_per_order(BrokerName.SCHWAB) is None


def test_a_broker_allowed_an_order_every_two_seconds_is_not_measured_slow_for_it() -> None:
    """Robinhood places one order in 2.2 s: most quarter-second readings see none acked. Over
    the window it is as fast as its limit allows, not ten seconds an order."""
    now = [0.0]
    backlog = Backlog(clock=lambda: now[0])
    acked = 0
    for step in range(1, 41):  # ten seconds of readings, an ack every 2.2 s
        now[0] = step * 0.25
        acked = int(now[0] / 2.2)
        backlog.observe(BrokerName.ROBINHOOD, 8, backlog.begin_reading(0), acked=acked)
        measured = backlog.seconds_per_order(BrokerName.ROBINHOOD)
        assert measured is None or measured <= 2.5


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


def test_until_its_drain_is_measured_an_order_costs_a_broker_a_fiftieth_of_a_second() -> None:
    """Limits raised: the rate says nothing about what Schwab's executors place. 90 queued
    (1.8 s) keep the default; 150 (3 s) do not, before a burst piles more there unmeasured."""
    raised = {"rate_limit": {"requests": 100_000, "per_seconds": 1}}
    config = parse_config({"brokers": {str(b): raised for b in BrokerName}})
    option = {"symbol": "AAPL  270115C00200000", "asset_class": "option", "quantity": "2"}
    market = MarketView(reference_price=Decimal(5), queued={BrokerName.SCHWAB: 90})
    kept = route(make_intent(**option), config, market=market)
    assert isinstance(kept, RouteDecision) and kept.broker is BrokerName.SCHWAB
    market = MarketView(reference_price=Decimal(5), queued={BrokerName.SCHWAB: 150})
    moved = route(make_intent(**option), config, market=market)
    assert isinstance(moved, RouteDecision) and moved.broker is not BrokerName.SCHWAB
    [why] = [e for e in moved.excluded if e.broker is BrokerName.SCHWAB]
    assert why.reason_code == "queue_wait" and "about 3.0s" in why.reason


def test_a_batch_of_intents_is_decided_scarcest_first() -> None:
    """Fractional equities (Alpaca and Robinhood: 3.3 orders a second together) before equities
    (IBKR takes 38 a second too: 43), before crypto (Coinbase's 26 more: 67); an unreadable
    intent first of all, so its handler refuses it at once. Otherwise the order of arrival."""
    kinds = [{}, FRACTIONAL, CRYPTO, {}, FRACTIONAL]
    msgs = [
        Msg(_client=None, subject="mbx.intents.s", data=json.dumps(intent_payload(intent_id=f"i-{k}", **kind)).encode())  # type: ignore[arg-type]
        for k, kind in enumerate(kinds)
    ]
    msgs.append(Msg(_client=None, subject="mbx.intents.s", data=b"{not json"))  # type: ignore[arg-type]
    handlers = SimpleNamespace(state=SimpleNamespace(config=parse_config(EVERY_BROKER)))
    arranged = RouterHandlers.scarcest_first(handlers, msgs)  # type: ignore[arg-type]
    ids = [json.loads(m.data)["intent_id"] if m.data.startswith(b'{"') else "unreadable" for m in arranged]
    assert ids == ["unreadable", "i-1", "i-4", "i-0", "i-3", "i-2"]
