"""An order intent flows through real JetStream into real Postgres."""

from __future__ import annotations

import json
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import DeadLetter, ExecutionReport
from contracts.client import MbxClient
from tests.builders import CRYPTO, FRACTIONAL, NOTIONAL, OPTION, intent_payload, make_intent
from tests.conftest import Pipeline, eventually, fetch_all
from workers.domain.config import parse_config

pytestmark = pytest.mark.integration


async def publish_json(nc: NatsClient, payload: dict[str, Any], strategy: str = "strat1") -> Any:
    """Publish like a client in another language: plain nats-py, JSON, the dedup header."""
    return await nc.jetstream().publish(
        f"mbx.orders.intent.{strategy}",
        json.dumps(payload).encode(),
        headers={"Nats-Msg-Id": payload["intent_id"]},
    )


async def final_order(db: AsyncEngine, intent_id: str) -> list[Any]:
    async def check() -> list[Any]:
        rows = await fetch_all(db, "SELECT * FROM orders WHERE intent_id = :i", i=intent_id)
        return rows if rows and all(r["status"] in ("filled", "rejected") for r in rows) else []

    return await eventually(check)


async def test_plain_nats_intent_ends_as_route_order_and_fill_in_postgres(
    pipeline: Pipeline, nc: NatsClient, db: AsyncEngine
) -> None:
    """The documented JSON, published with plain nats-py, is routed, filled and persisted."""
    payload = intent_payload(intent_id="strat1-000042", strategy_id="strat1")
    payload["intent_id"] = make_intent().intent_id  # unique per run, same shape as strat1-000042
    ack = await publish_json(nc, payload)
    assert ack.stream == "ORDERS"

    [order] = await final_order(db, payload["intent_id"])
    assert order["broker_name"] == "alpaca"
    assert order["status"] == "filled"
    assert order["filled_quantity"] == 10
    assert order["client_order_id"] == payload["intent_id"]
    assert order["broker_order_id"].startswith("alpaca-")

    [route] = await eventually(
        lambda: fetch_all(db, "SELECT * FROM multi_broker_routes WHERE intent_id = :i", i=payload["intent_id"])
    )
    assert route["broker_name"] == "alpaca"
    assert route["rule"] == "default:equity"
    assert route["attempt"] == 1
    assert "coinbase" in {e["broker"] for e in route["decision"]["excluded"]}

    [fill] = await eventually(
        lambda: fetch_all(db, "SELECT * FROM trade_logs WHERE intent_id = :i", i=payload["intent_id"])
    )
    assert fill["broker_name"] == "alpaca"
    assert fill["quantity"] == 10
    assert fill["price"] == order["average_price"]


async def test_same_intent_id_published_twice_yields_exactly_one_order(
    pipeline: Pipeline, nc: NatsClient, db: AsyncEngine
) -> None:
    """JetStream drops the second copy; one order at the broker, one row of each kind in Postgres."""
    payload = intent_payload()
    first = await publish_json(nc, payload)
    second = await publish_json(nc, payload)
    assert not first.duplicate
    assert second.duplicate
    assert second.seq == first.seq

    await final_order(db, payload["intent_id"])
    # Give any stray second execution time to show up before counting.
    follow_up = intent_payload()
    await publish_json(nc, follow_up)
    await final_order(db, follow_up["intent_id"])

    orders = await fetch_all(db, "SELECT * FROM orders WHERE intent_id = :i", i=payload["intent_id"])
    routes = await fetch_all(db, "SELECT * FROM multi_broker_routes WHERE intent_id = :i", i=payload["intent_id"])
    fills = await fetch_all(db, "SELECT * FROM trade_logs WHERE intent_id = :i", i=payload["intent_id"])
    assert (len(orders), len(routes), len(fills)) == (1, 1, 1)
    at_broker = [
        o
        for o in await pipeline.venues[orders[0]["broker_name"]].book.all()
        if o.client_order_id == payload["intent_id"]
    ]
    assert len(at_broker) == 1


@pytest.mark.parametrize(
    ("overrides", "broker", "rule"),
    [
        (CRYPTO, "coinbase", "default:crypto"),
        (OPTION, "schwab", "default:option"),
        (FRACTIONAL, "robinhood", "default:fractional"),
        (NOTIONAL, "robinhood", "default:fractional"),
        ({"broker": "ibkr"}, "ibkr", "preference"),
    ],
    ids=["crypto-coinbase", "option-schwab", "fractional-robinhood", "notional-robinhood", "preference-ibkr"],
)
async def test_smart_defaults_and_preference_pick_the_broker(
    pipeline: Pipeline, nc: NatsClient, db: AsyncEngine, overrides: dict[str, Any], broker: str, rule: str
) -> None:
    """Each default rule sends its kind of order to its broker, and the order fills there."""
    payload = intent_payload(**overrides)
    await publish_json(nc, payload)
    [order] = await final_order(db, payload["intent_id"])
    assert (order["broker_name"], order["status"]) == (broker, "filled")
    [route] = await fetch_all(db, "SELECT rule FROM multi_broker_routes WHERE intent_id = :i", i=payload["intent_id"])
    assert route["rule"] == rule


async def dead_letters(nc: NatsClient, stage: str) -> list[DeadLetter]:
    sub = await nc.jetstream().subscribe(f"mbx.dlq.{stage}", ordered_consumer=True)
    letters = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.3)
            except TimeoutError:
                break
            letters.append(DeadLetter.model_validate_json(msg.data))
    finally:
        await sub.unsubscribe()
    return letters


async def test_malformed_and_invalid_intents_are_dead_lettered_and_the_next_intent_executes(
    pipeline: Pipeline, nc: NatsClient, db: AsyncEngine
) -> None:
    """Bad input never crashes the router: each lands on mbx.dlq.router with its reason."""
    js = nc.jetstream()
    garbage_id = make_intent().intent_id
    await js.publish("mbx.orders.intent.strat1", b"{not json", headers={"Nats-Msg-Id": garbage_id})
    invalid = intent_payload(quantity="-5")
    await publish_json(nc, invalid)
    wrong_subject = intent_payload(strategy_id="other")
    await publish_json(nc, wrong_subject, strategy="strat1")

    valid = intent_payload()
    await publish_json(nc, valid)
    [order] = await final_order(db, valid["intent_id"])
    assert order["status"] == "filled"

    async def ours() -> dict[str, DeadLetter]:
        letters = await dead_letters(nc, "router")
        wanted = {garbage_id, invalid["intent_id"], wrong_subject["intent_id"]}
        found = {dl.original_headers.get("Nats-Msg-Id", ""): dl for dl in letters}
        return {k: v for k, v in found.items() if k in wanted} if wanted <= found.keys() else {}

    found = await eventually(ours)
    assert "Invalid JSON" in found[garbage_id].error
    assert found[garbage_id].payload == "{not json"
    assert "quantity" in found[invalid["intent_id"]].error
    assert "does not match" in found[wrong_subject["intent_id"]].error
    for letter in found.values():
        assert letter.original_subject == "mbx.orders.intent.strat1"
        assert letter.stage == "router"
        assert letter.delivery_count == 1


async def test_intent_no_broker_can_take_is_rejected_visibly(
    start_pipeline: Any, nc: NatsClient, db: AsyncEngine
) -> None:
    """With every option broker disabled an option intent ends rejected, on the bus and in Postgres."""
    config = parse_config(
        {
            "brokers": {
                "schwab": {"enabled": False},
                "ibkr": {"enabled": False},
                "alpaca": {"enabled": False},
                "robinhood": {"enabled": False},
                "coinbase": {"enabled": True},
            }
        }
    )
    await start_pipeline(config)
    payload = intent_payload(**OPTION)
    await publish_json(nc, payload)
    [order] = await final_order(db, payload["intent_id"])
    assert order["broker_name"] is None
    assert order["status"] == "rejected"
    assert "coinbase does not trade option" in order["reason"]
    assert "schwab is not enabled" in order["reason"]


async def test_client_submits_and_waits_for_the_final_report(pipeline: Pipeline, servers: Any) -> None:
    """The Python client publishes with the dedup header and returns route and final report."""
    intent = make_intent(symbol="MSFT", quantity="3")
    async with MbxClient.connect(servers.nats_url) as client:
        tracker = await client.submit_and_wait(intent, timeout=10)
        again = await client.submit(intent)
    final = tracker.terminal
    assert isinstance(final, ExecutionReport)
    assert (final.status, final.broker, final.filled_quantity) == ("filled", "alpaca", 3)
    assert [r.broker for r in tracker.routes] == ["alpaca"]
    assert again.duplicate


async def test_client_streams_one_strategys_routes_reports_and_fills(pipeline: Pipeline, servers: Any) -> None:
    """subscribe_strategy delivers that strategy's events and nothing of other strategies."""
    import asyncio

    mine = make_intent(strategy_id="watcher")
    other = make_intent(strategy_id="someone-else")
    routes: list[Any] = []
    reports: list[Any] = []
    fills: list[Any] = []
    async with MbxClient.connect(servers.nats_url) as client:
        subs = await client.subscribe_strategy(
            "watcher", on_route=routes.append, on_report=reports.append, on_fill=fills.append
        )
        await client.submit(other)
        await client.submit(mine)

        async def complete() -> bool:
            return any(r.final for r in reports) and bool(fills)

        await eventually(complete)
        await asyncio.sleep(0.2)  # let any stray event of the other strategy arrive before asserting
        for sub in subs:
            await sub.unsubscribe()
    assert {r.intent_id for r in routes} == {mine.intent_id}
    assert {r.intent_id for r in reports} == {mine.intent_id}
    assert [f.intent_id for f in fills] == [mine.intent_id]
    assert [r.status for r in reports] == ["accepted", "filled"]
