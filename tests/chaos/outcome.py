"""What the chaos tests publish and what they check afterwards: a mixed book of intents (market
orders at every broker, identical Schwab orders, resting limit orders with a story), and the
outcome every one of them must have at the brokers, on the bus and in Postgres."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import BrokerName, DeadLetter
from contracts.client import publish_retrying
from tests.builders import CRYPTO, FRACTIONAL, OPTION, intent_payload
from tests.conftest import fetch_all, unthrottled
from workers.domain.config import config_to_json, parse_config
from workers.executor.same_shape import SameShapeGuard
from workers.platform.bus import BUS_UNAVAILABLE, ensure_streams, jetstream, read_stream
from workers.platform.live_config import write_live_config
from workers.platform.settings import Settings, load_config
from workers.venues.simulated.book import KvOrderBook, Request, repeated_without_lookup

STRATEGY = "chaosbot"

# Market orders at every broker (Schwab's identical in shape), and resting limit orders that are
# partly filled at the broker, then filled (even) or cancelled (odd).
MARKET_KINDS: list[dict[str, Any]] = [
    {"symbol": "AAPL"},
    CRYPTO,
    OPTION | {"quantity": "1"},
    FRACTIONAL,
    {"symbol": "IBM", "broker": "ibkr"},
    {"symbol": "ETH-USD", "asset_class": "crypto", "time_in_force": None, "quantity": "0.2"},
    {"symbol": "SPY", "broker": "schwab", "quantity": "7"},
    {"symbol": "NVDA", "side": "sell", "position_effect": "open"},  # a short sale, at a margin account
]
RESTING_KINDS: list[dict[str, Any]] = [
    {"symbol": "MSFT", "quantity": "10"},
    {"symbol": "SOL-USD", "asset_class": "crypto", "time_in_force": "gtc", "quantity": "2"},
    {"symbol": "KO", "quantity": "10", "broker": "ibkr"},
    {"symbol": "PEP", "quantity": "10", "broker": "schwab"},
    {"symbol": "F", "quantity": "0.5", "broker": "robinhood"},
]


@dataclass
class Resting:
    """A limit order far from the market: the test trades half of it at the broker, then the
    rest (``fill_rest``) or asks mbx to cancel it."""

    intent_id: str
    quantity: Decimal
    fill_rest: bool
    handled: bool = False
    steps: int = 0

    @property
    def final(self) -> tuple[str, Decimal]:
        half = self.quantity / 2
        return ("filled", self.quantity) if self.fill_rest else ("cancelled", half)


class Book:
    """The intents of this run, generated as they are published."""

    def __init__(self, *, resting: bool = True) -> None:
        """``resting=False``: market orders only (every intent ends filled by itself)."""
        self.run = uuid.uuid4().hex[:6]
        self.payloads: list[dict[str, Any]] = []
        self.resting: dict[Decimal, Resting] = {}  # by limit price: unique, found at every broker
        self.with_resting = resting

    def next(self) -> dict[str, Any]:
        i = len(self.payloads)
        intent_id = f"wk{self.run}-{i:04d}"
        if self.with_resting and i % 3 == 2:
            r = len(self.resting)
            kind = RESTING_KINDS[r % len(RESTING_KINDS)]
            limit = Decimal("0.50") + Decimal(r) / 100
            payload = intent_payload(
                intent_id=intent_id, strategy_id=STRATEGY, order_type="limit", limit_price=str(limit), **kind
            )
            self.resting[limit] = Resting(intent_id, Decimal(kind["quantity"]), fill_rest=r % 2 == 0)
        else:
            kind = MARKET_KINDS[(i - i // 3 if self.with_resting else i) % len(MARKET_KINDS)]
            payload = intent_payload(intent_id=intent_id, strategy_id=STRATEGY, **kind)
        self.payloads.append(payload)
        return payload

    @property
    def ids(self) -> list[str]:
        return [p["intent_id"] for p in self.payloads]

    def expected(self) -> dict[str, tuple[str, Decimal]]:
        """Each intent's final status and filled quantity."""
        by_id = {r.intent_id: r.final for r in self.resting.values()}
        return {p["intent_id"]: by_id.get(p["intent_id"], ("filled", Decimal(p["quantity"]))) for p in self.payloads}


def write_config(settings: Settings, path: Path, heartbeat_timeout_s: float = 30) -> None:
    """Every broker enabled, unthrottled, rich, a margin account (the mixed sells open shorts); by
    default a broker is down only after 30 s of silence, so a restarted executor keeps its orders
    (what is tested is crash safety, not failover)."""
    config = unthrottled(
        parse_config(
            {
                "brokers": {str(b): {"account_type": "margin"} for b in BrokerName},
                "routing": {"heartbeat_timeout_s": heartbeat_timeout_s},
            }
        )
    )
    path.write_text(config_to_json(config).decode())  # JSON is YAML


async def prepare(settings: Settings, config_file: Path, nc: NatsClient) -> None:
    """Streams and the live config, as `mbx up` makes them: asked again while a cluster that has
    just started cannot answer yet."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        try:
            await ensure_streams(jetstream(nc), settings.subjects)
            await write_live_config(jetstream(nc), settings.subjects, load_config(config_file))
            return
        except BUS_UNAVAILABLE:
            if asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(0.5)


async def publish(nc: NatsClient, settings: Settings, payload: dict[str, Any]) -> None:
    """Through the client library's retry: the same Nats-Msg-Id again while the stream does not
    answer (a cluster electing a leader), stored once."""
    await publish_retrying(
        nc.jetstream(),
        settings.subjects.intent(STRATEGY),
        json.dumps(payload).encode(),
        {"Nats-Msg-Id": payload["intent_id"]},
        timeout=2.0,
    )


def books(nc: NatsClient, settings: Settings) -> dict[BrokerName, KvOrderBook]:
    return {b: KvOrderBook(nc.jetstream, settings.topology.sim_book_bucket(b)) for b in BrokerName}


async def unfinished(db: AsyncEngine, book: Book, nc: NatsClient, settings: Settings) -> str:
    """What has not ended yet, for the failure message: each intent's order rows as stored, and
    the dead letters."""
    rows = await fetch_all(
        db,
        "SELECT intent_id, broker_name, status, filled_quantity, report_seq, updated_at FROM orders "
        "WHERE intent_id = ANY(:ids) AND status NOT IN ('filled', 'cancelled', 'rejected', 'failed', 'expired')",
        ids=book.ids,
    )
    stored = {
        r["intent_id"]
        for r in await fetch_all(db, "SELECT intent_id FROM orders WHERE intent_id = ANY(:ids)", ids=book.ids)
    }
    missing = [i for i in book.ids if i not in stored]
    waiting = [r.intent_id for r in book.resting.values() if not r.handled]
    letters = [
        DeadLetter.model_validate_json(m.data)
        for m in await read_stream(nc.jetstream(), settings.subjects.stream_name("DLQ"), settings.subjects.dlq("*"))
    ]
    unsettled = await fetch_all(
        db,
        "SELECT o.intent_id, o.filled_quantity, (SELECT coalesce(sum(t.quantity), 0) FROM trade_logs t "
        "WHERE t.intent_id = o.intent_id) AS traded FROM orders o WHERE o.intent_id = ANY(:ids) AND o.status = "
        "'filled' AND o.filled_quantity <> (SELECT coalesce(sum(t.quantity), 0) FROM trade_logs t "
        "WHERE t.intent_id = o.intent_id)",
        ids=book.ids,
    )
    return (
        f"{len(unsettled)} filled with fills missing in trade_logs, e.g. {[dict(r) for r in unsettled[:5]]}; "
        f"{len(rows)} not final, e.g. {[dict(r) for r in rows[:8]]}; {len(missing)} with no order row, e.g. "
        f"{missing[:8]}; resting orders not yet worked: {waiting[:8]}; {len(letters)} dead letters, e.g. "
        f"{[(d.original_subject, d.error, d.delivery_count) for d in letters[:8]]}"
    )


async def _fill_trail(nc: NatsClient, db: AsyncEngine, settings: Settings, intent_ids: list[str]) -> str:
    """For a failure message: each intent's fills as stored, on the bus and at the broker."""
    stored = await fetch_all(
        db,
        "SELECT intent_id, fill_id, broker_order_id, quantity FROM trade_logs WHERE intent_id = ANY(:ids)",
        ids=intent_ids,
    )
    on_bus = [
        json.loads(m.data)
        for m in await read_stream(
            nc.jetstream(), settings.subjects.stream_name("EXECUTIONS"), f"{settings.subject_prefix}.fills.>"
        )
    ]
    at_brokers = [
        o for book in books(nc, settings).values() for o in await book.all() if o.client_order_id in intent_ids
    ]
    published = [(f["intent_id"], f["fill_id"], f["quantity"]) for f in on_bus if f.get("intent_id") in intent_ids]
    placed = [(o.client_order_id, o.status, [(f.fill_id, str(f.quantity)) for f in o.fills]) for o in at_brokers]
    letters = [
        (d.original_subject, d.error, d.delivery_count)
        for m in await read_stream(nc.jetstream(), settings.subjects.stream_name("DLQ"), settings.subjects.dlq("*"))
        for d in [DeadLetter.model_validate_json(m.data)]
    ]
    return (
        f"trade_logs {[(r['intent_id'], r['fill_id'], str(r['quantity'])) for r in stored]}; "
        f"fills on the bus {published}; at the brokers {placed}; dead letters {letters[:5]}"
    )


async def all_final(db: AsyncEngine, ids: list[str]) -> bool:
    """Every intent has a final order row whose fills are all in ``trade_logs``: a fill and its
    report travel apart (a killed aggregator's batch comes back only after its consumer's ack
    wait), so a final status alone does not mean Postgres has settled."""
    rows = await fetch_all(
        db,
        "SELECT o.intent_id FROM orders o WHERE o.intent_id = ANY(:ids) AND o.status IN ('filled', 'cancelled', "
        "'rejected', 'failed', 'expired') AND o.filled_quantity = "
        "(SELECT coalesce(sum(t.quantity), 0) FROM trade_logs t WHERE t.intent_id = o.intent_id)",
        ids=ids,
    )
    return len({r["intent_id"] for r in rows}) == len(ids)


async def check_outcome(
    nc: NatsClient, db: AsyncEngine, settings: Settings, book: Book, *, kills_in_flight: bool = True
) -> None:
    """Every intent as its story says in Postgres, exactly one order each at the brokers, one
    final report each, and no placement repeated without a lookup first; with
    ``kills_in_flight``, executors must have had to look orders up (the kills hit work in hand)."""
    ids, expected = book.ids, book.expected()

    # Postgres: one order row per intent, with the status and filled quantity its story calls
    # for, and fills that add up to it.
    rows = await fetch_all(
        db,
        "SELECT o.intent_id, o.broker_name, o.broker_order_id, o.status, o.filled_quantity, "
        "count(*) OVER (PARTITION BY o.intent_id) AS n, "
        "(SELECT coalesce(sum(t.quantity), 0) FROM trade_logs t WHERE t.intent_id = o.intent_id) AS traded "
        "FROM orders o WHERE o.intent_id = ANY(:ids)",
        ids=ids,
    )
    assert len(rows) == len(ids), f"{len(rows)} order rows for {len(ids)} intents"
    wrong = [
        (
            r["intent_id"],
            r["status"],
            r["filled_quantity"],
            expected[r["intent_id"]],
            f"rows {r['n']}, traded {r['traded']}",
        )
        for r in rows
        if (r["status"], Decimal(r["filled_quantity"])) != expected[r["intent_id"]]
        or r["n"] != 1
        or Decimal(r["traded"]) != Decimal(r["filled_quantity"])
    ]
    if wrong:
        raise AssertionError(
            f"{len(wrong)} intents ended otherwise than their story, e.g. {wrong[:5]}; "
            + await _fill_trail(nc, db, settings, [w[0] for w in wrong[:3]])
        )
    by_intent = {r["intent_id"]: r for r in rows}

    # The brokers: exactly one order per intent (none lost, none doubled), as mbx recorded it.
    kv_books = books(nc, settings)
    at_brokers: Counter[str] = Counter()
    mismatched = []
    for broker, kv_book in kv_books.items():
        guard = SameShapeGuard(
            nc.jetstream,
            settings.topology.shape_locks_bucket,
            settings.topology.attributions_bucket,
            str(broker),
        )
        for order in await answered(kv_book.all):
            owner = order.client_order_id or await guard.owner(order.broker_order_id) or f"unattributed {order}"
            at_brokers[owner] += 1
            row = by_intent.get(owner)
            if (
                row is None
                or row["broker_order_id"] != order.broker_order_id
                or (Decimal(row["filled_quantity"]) != order.filled_quantity)
            ):
                mismatched.append((owner, order.broker_order_id, order.status, order.filled_quantity))
    doubled = {i: n for i, n in at_brokers.items() if n > 1}
    assert not doubled, f"placed more than once: {doubled}"
    assert set(at_brokers) == set(ids), f"orders missing at the brokers: {sorted(set(ids) - set(at_brokers))[:5]}"
    assert not mismatched, f"{len(mismatched)} broker orders differ from mbx's record, e.g. {mismatched[:5]}"
    assert {str(r["broker_name"]) for r in rows} == {str(b) for b in BrokerName}

    # The bus: exactly one final report per intent.
    finals: dict[str, int] = defaultdict(int)
    executions = settings.subjects.stream_name("EXECUTIONS")
    for stored in await answered(lambda: read_stream(nc.jetstream(), executions, f"{settings.subject_prefix}.exec.>")):
        report = json.loads(stored.data)
        if report.get("final"):
            finals[report["intent_id"]] += 1
    assert {i: finals.get(i, 0) for i in ids if finals.get(i, 0) != 1} == {}

    # The brokers' request logs: a placement was repeated only after a lookup found nothing,
    # and the kills did make executors look (redeliveries of work in hand).
    requests: list[Request] = []
    for kv_book in kv_books.values():
        log = await answered(kv_book.requests)
        blind = repeated_without_lookup(log)
        assert blind == {}, f"placed again without a lookup that found nothing: {blind}; " + "; ".join(
            f"{cid}: {[(r.kind, r.found) for r in log if r.client_order_id == cid]}" for cid in list(blind)[:5]
        )
        requests += log
    kinds = Counter(r.kind for r in requests)
    assert kinds["place"] >= len(ids)
    assert kinds["lookup"] > 0 or not kills_in_flight, (
        "no executor ever had to look an order up: the kills missed the work in hand"
    )


async def answered(read: Any, tries: int = 30) -> Any:
    """``read()`` once the bus answers it: right after a cluster lost and got back nodes, a
    bucket's stream may still be electing its leader (503, no responders) for a few seconds."""
    for _ in range(tries - 1):
        try:
            return await read()
        except BUS_UNAVAILABLE:
            await asyncio.sleep(1.0)
    return await read()
