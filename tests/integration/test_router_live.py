"""The router on a real server: preview, live config from KV, kill switches, allocation limits."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import BrokerName, ExposureSnapshot, RoutePreview
from tests.builders import CRYPTO, FRACTIONAL, OPTION, intent_payload, make_intent
from tests.conftest import Pipeline, eventually, fetch_all, simulated_venue
from tests.integration.test_walking_skeleton import final_order, publish_json
from workers.domain.config import MbxConfig, config_to_json, parse_config
from workers.domain.keys import CONFIG_KEY
from workers.entry import build_executor_worker
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings
from workers.venues.simulated.quotes import QuoteModel

pytestmark = pytest.mark.integration


async def preview(nc: NatsClient, subject: str = "mbx.api.route.preview", **overrides: Any) -> RoutePreview:
    reply = await nc.request(subject, make_intent(**overrides).model_dump_json().encode(), timeout=5)
    return RoutePreview.model_validate_json(reply.data)


async def put_config(nc: NatsClient, config: MbxConfig) -> int:
    kv = await nc.jetstream().key_value("mbx_config")
    return int(await kv.put(CONFIG_KEY, config_to_json(config)))


async def test_preview_returns_the_full_breakdown_and_places_nothing(
    pipeline: Pipeline, nc: NatsClient, db: AsyncEngine
) -> None:
    """Every candidate's scores, the excluded brokers and the rule; no route, no order."""
    answer = await preview(nc, **CRYPTO)
    decision = answer.decision
    assert decision is not None
    assert decision.broker is BrokerName.COINBASE
    assert decision.rule == "default:crypto"
    assert {c.broker for c in decision.candidates} == {
        BrokerName.COINBASE,
        BrokerName.ALPACA,
        BrokerName.ROBINHOOD,
        BrokerName.IBKR,
    }
    assert all(c.estimated_fee > 0 for c in decision.candidates)
    assert [e.broker for e in decision.excluded] == [BrokerName.SCHWAB]
    assert decision.config_version > 0
    assert await fetch_all(db, "SELECT 1 FROM multi_broker_routes WHERE intent_id = :i", i=decision.intent_id) == []
    assert all(o.client_order_id != decision.intent_id for o in await pipeline.venues[BrokerName.COINBASE].book.all())


async def test_preview_of_an_invalid_intent_says_what_is_wrong(pipeline: Pipeline, nc: NatsClient) -> None:
    reply = await nc.request("mbx.api.route.preview", b'{"intent_id": "x"}', timeout=5)
    answer = RoutePreview.model_validate_json(reply.data)
    assert answer.decision is None
    assert "strategy_id" in answer.error


async def test_a_rule_written_to_kv_changes_the_next_decision_without_restart(
    pipeline: Pipeline, nc: NatsClient
) -> None:
    """Within a second of the KV write the router decides by the new rule and version."""
    before = await preview(nc)
    assert before.decision is not None and before.decision.broker is BrokerName.ALPACA
    revision = await put_config(
        nc,
        parse_config(
            {"routing": {"rules": [{"name": "aapl-to-ibkr", "match": {"symbol": ["AAPL"]}, "prefer": ["ibkr"]}]}}
        ),
    )

    async def switched() -> RoutePreview | None:
        answer = await preview(nc)
        return answer if answer.decision and answer.decision.broker is BrokerName.IBKR else None

    after = await eventually(switched, timeout=1.0)
    assert after.decision is not None
    assert (after.decision.rule, after.decision.config_version) == ("rule:aapl-to-ibkr", revision)


async def test_weights_written_to_kv_change_the_ranking(pipeline: Pipeline, nc: NatsClient) -> None:
    """Cost-only weights rank the cheapest broker first; speed-only the fastest. Fill scores
    measured from earlier tests' orders (this session's database) are left out, so every broker
    has the same prior fill score and a fill-heavy weighting ties."""

    async def top(weights: dict[str, float]) -> BrokerName:
        routing = {"weights": weights, "min_fill_samples": 10**9}
        revision = await put_config(nc, parse_config({"routing": routing}))

        async def applied() -> RoutePreview | None:
            answer = await preview(nc, **CRYPTO)
            return answer if answer.decision and answer.decision.config_version == revision else None

        answer = await eventually(applied, timeout=1.0)
        assert answer.decision is not None
        return answer.decision.candidates[0].broker

    assert await top({"cost": 1.0, "speed": 0.0, "fill": 0.0}) is BrokerName.ALPACA  # 0.25% vs 1.2% / 0.85%
    assert await top({"cost": 0.0, "speed": 1.0, "fill": 0.0}) is BrokerName.ALPACA  # 15 ms vs 100 ms
    assert await top({"cost": 0.1, "speed": 0.0, "fill": 0.9}) is BrokerName.ALPACA  # tie on fill: cost decides


async def test_an_invalid_config_is_refused_with_a_reason_and_the_old_one_stays(
    pipeline: Pipeline, nc: NatsClient
) -> None:
    kv = await nc.jetstream().key_value("mbx_config")
    good = await put_config(nc, parse_config({"routing": {"weights": {"cost": 0.5, "speed": 0.25, "fill": 0.25}}}))
    await eventually(lambda: _version_is(nc, good), timeout=1.0)
    bad = json.loads(config_to_json(MbxConfig()))
    bad["routing"]["weights"] = {"cost": 0.9, "speed": 0.9, "fill": 0.9}
    await kv.put(CONFIG_KEY, json.dumps(bad).encode())

    async def refused() -> str:
        try:
            entry = await kv.get("trading.status")
        except Exception:
            return ""
        return (entry.value or b"").decode()

    reason = await eventually(refused, timeout=2.0)
    assert "routing.weights: cost + speed + fill must be 1" in reason
    answer = await preview(nc)
    assert answer.decision is not None and answer.decision.config_version == good


async def _version_is(nc: NatsClient, version: int) -> bool:
    answer = await preview(nc)
    return answer.decision is not None and answer.decision.config_version == version


async def test_kill_switch_on_a_broker_stops_routes_to_it(pipeline: Pipeline, nc: NatsClient, db: AsyncEngine) -> None:
    """With alpaca killed, equity orders go elsewhere and alpaca gets nothing."""
    revision = await put_config(nc, parse_config({"risk": {"kill_switches": {"brokers": ["alpaca"]}}}))
    await eventually(lambda: _version_is(nc, revision), timeout=1.0)
    payload = intent_payload()
    await publish_json(nc, payload)
    [order] = await final_order(db, payload["intent_id"])
    assert order["broker_name"] != "alpaca"
    [route] = await fetch_all(
        db, "SELECT decision FROM multi_broker_routes WHERE intent_id = :i", i=payload["intent_id"]
    )
    assert {"broker": "alpaca", "reason_code": "kill_switch", "reason": "alpaca is halted by a kill switch"} in (
        route["decision"]["excluded"]
    )
    assert all(o.client_order_id != payload["intent_id"] for o in await pipeline.venues[BrokerName.ALPACA].book.all())


async def test_global_kill_switch_rejects_with_a_reason(pipeline: Pipeline, nc: NatsClient, db: AsyncEngine) -> None:
    await put_config(nc, parse_config({"risk": {"kill_switches": {"all": True}}}))
    await eventually(lambda: _rejected_preview(nc), timeout=1.0)
    payload = intent_payload()
    await publish_json(nc, payload)
    [order] = await final_order(db, payload["intent_id"])
    assert (order["broker_name"], order["status"]) == (None, "rejected")
    assert "global kill switch" in order["reason"]


async def _rejected_preview(nc: NatsClient) -> bool:
    answer = await preview(nc)
    return answer.rejection_code == "kill_switch"


async def test_max_broker_allocation_reroutes_an_order_that_would_breach_it(
    start_pipeline: Any, isolated: Settings, nc: NatsClient
) -> None:
    """Alpaca already holds 79% of a $100k portfolio: a $5k equity order goes to another broker.

    Its own subjects and buckets: an intent an earlier test left on the shared stream, routed to
    Alpaca here, would count as in-flight at Alpaca and push even a small order past 80% (seen
    once in a full run)."""
    await start_pipeline(own_settings=isolated)
    subjects = isolated.subjects
    kv = await nc.jetstream().key_value(subjects.exposure_bucket)
    snapshot = ExposureSnapshot(portfolio_value=Decimal(100_000), by_broker={BrokerName.ALPACA: Decimal(79_000)})
    await kv.put("current", snapshot.model_dump_json().encode())
    quantity = int(Decimal(5000) / QuoteModel().mid("AAPL")) + 1  # just over $5k at the router's price

    async def rerouted() -> RoutePreview | None:
        answer = await preview(nc, subjects.route_preview, quantity=str(quantity))
        return answer if answer.decision and answer.decision.broker is not BrokerName.ALPACA else None

    answer = await eventually(rerouted, timeout=2.0)
    assert answer.decision is not None
    excluded = {e.broker: e for e in answer.decision.excluded}
    assert excluded[BrokerName.ALPACA].reason_code == "max_broker_allocation"
    small = await preview(nc, subjects.route_preview, quantity="1")
    assert small.decision is not None and small.decision.broker is BrokerName.ALPACA


async def test_a_stopped_executor_takes_its_broker_out_of_routing(
    start_pipeline: Any, nc: NatsClient, db: AsyncEngine
) -> None:
    """The executor reports its broker disconnected on stop; the router routes equity elsewhere."""
    pipeline = await start_pipeline()
    [alpaca] = [w for w in pipeline.workers if w.name == "executor-alpaca"]
    await alpaca.stop()
    pipeline.workers.remove(alpaca)

    async def avoided() -> RoutePreview | None:
        answer = await preview(nc)
        return answer if answer.decision and answer.decision.broker is not BrokerName.ALPACA else None

    answer = await eventually(avoided, timeout=2.0)
    assert answer.decision is not None
    down = {e.broker: e for e in answer.decision.excluded}[BrokerName.ALPACA]
    assert (down.reason_code, down.reason) == ("down", "alpaca is down: the alpaca executor stopped")
    payload = intent_payload()
    await publish_json(nc, payload)
    [order] = await final_order(db, payload["intent_id"])
    assert order["broker_name"] != "alpaca" and order["status"] == "filled"


async def test_a_rule_added_at_runtime_applies_to_the_next_decision(pipeline: Pipeline, nc: NatsClient) -> None:
    """add_rule_live appends to the live config with compare-and-set; the router picks it up."""
    from workers.domain.config import RoutingRule
    from workers.platform.bus import jetstream
    from workers.platform.settings import Settings
    from workers.router.api import add_rule_live

    revision = await add_rule_live(
        jetstream(nc),
        Settings().subjects,
        RoutingRule(name="msft-to-schwab", match={"symbol": ["MSFT"]}, prefer=["schwab"]),
    )

    async def applied() -> RoutePreview | None:
        answer = await preview(nc, symbol="MSFT")
        return answer if answer.decision and answer.decision.config_version == revision else None

    answer = await eventually(applied, timeout=1.0)
    assert answer.decision is not None
    assert (answer.decision.broker, answer.decision.rule) == (BrokerName.SCHWAB, "rule:msft-to-schwab")


async def test_intents_sent_before_any_heartbeat_wait_for_the_brokers_and_go_to_the_smart_defaults(
    isolated: Settings, start_pipeline: Callable[..., Awaitable[Pipeline]], nc: NatsClient
) -> None:
    """Right after start-up no executor has reported yet: brokers are *starting*, not down, so
    intents wait for their heartbeats (routing.startup_grace_s) and then go where they would
    have gone anyway, instead of to whichever broker happened to report first."""
    pipeline = await start_pipeline(own_settings=isolated, executors=False)
    payloads = [intent_payload(), intent_payload(**CRYPTO), intent_payload(**OPTION), intent_payload(**FRACTIONAL)]
    js = nc.jetstream()
    for payload in payloads:
        await js.publish(
            isolated.subjects.intent("strat1"),
            json.dumps(payload).encode(),
            headers={"Nats-Msg-Id": payload["intent_id"]},
        )

    async def held() -> bool:
        info = await js.consumer_info(isolated.subjects.stream_name("ORDERS"), "router")
        return info.num_ack_pending == len(payloads)  # every one in hand, none decided

    await eventually(held)
    executors = [
        build_executor_worker(isolated, b, simulated_venue(b, pipeline.config), pipeline.config) for b in BrokerName
    ]
    for executor in executors:
        await executor.start()
    engine = make_engine(isolated.database_url or "", pool_size=1)
    try:

        async def routed() -> dict[str, str] | None:
            rows = await fetch_all(engine, "SELECT intent_id, broker_name FROM multi_broker_routes")
            return {r["intent_id"]: r["broker_name"] for r in rows} if len(rows) == len(payloads) else None

        brokers = await eventually(routed, timeout=20)
        assert [brokers[p["intent_id"]] for p in payloads] == ["alpaca", "coinbase", "schwab", "robinhood"]
    finally:
        await engine.dispose()
        for executor in executors:
            await executor.stop()
