"""A broker's bad day costs no order (issue 28): `mbx up` as processes with a real adapter
against its fake broker on loopback, through one scripted bad day of 100+ intents.

The day, on a timeline (``tests/fakes/timeline.py``) of about a minute: market orders throughout;
resting limit orders, some answered ``pending_new``; a 5xx burst before and one after an order is
accepted; replies slower than ``request_timeout_s``; the stream down while resting orders fill
(in part for two); a cancel of those and of untouched ones; the key refused for 20 s; kept-alive
connections the server closed; where the broker has trading days, GTC orders through
``done_for_day`` and filled the next "day"; last, a 429 to a placement with the broker's own
reset semantics (Alpaca: ``X-RateLimit-Reset`` is the end of its 60 s window, here placed at a
window's start, so about a minute away) while 26 more intents arrive.

Checks, all made and reported together: every intent ends as its story says (market orders
filled, at the broker or where they failed over to; resting orders filled or cancelled with
their filled quantity); exactly one final report each; no dead letter; at most one order per
intent at the fake and none for an intent that ended elsewhere; the fills in Postgres are the
fake's; the fake refused no request for exceeding the limit mbx knows (its documented one,
counted by the fake; the scripted 429 apart) nor for coming before a 429's reset; every failover
gives one of the reasons ``rate_limited``, ``broker_down``, ``daily_order_cap``; and no route of
the 429 burst waited for the reset (each ended within ``max_queue_wait_s`` plus 8 s).

Kept short (about 90 s per adapter beside start-up): ``request_timeout_s`` is 1.5 s and slow
replies take 3 s (the issue's "2-10 s past the timeout"). Alpaca's rate window is not
compressed: a 429's reset a minute away is what is tested. Before the burst, one order must
fill at the broker again (else the burst would test nothing there; noted as a problem).
Failovers land at a simulated broker. Run one
adapter alone with ``pytest tests/chaos/test_bad_day.py -k alpaca``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import CancelRequest, DeadLetter
from tests.builders import CRYPTO, intent_payload
from tests.chaos.outcome import all_final
from tests.chaos.test_stack_process import log_tails, mbx_up
from tests.conftest import fetch_all
from tests.fakes.alpaca import FakeAlpaca, FakeFaults
from tests.fakes.coinbase import FakeCoinbase
from tests.fakes.rate_window import FixedWindow, TokenBucket
from tests.fakes.robinhood import FakeRobinhood
from tests.fakes.schwab import FakeSchwab
from tests.fakes.serve import serve
from tests.fakes.stream import serve_stream, serve_user_stream
from tests.fakes.timeline import Step, Timeline
from workers.platform.bus import read_stream
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings
from workers.venues.robinhood.venue import client_order_id as robinhood_client_id
from workers.venues.schwab.tokens import TokenStore

pytestmark = pytest.mark.integration

STRATEGY = "badday"
WINDOW_S, WINDOW_REQUESTS = 60.0, 200
"""Alpaca's documented limit, kept by the fake and known to mbx as the broker's own."""
RECOVERY_S = 15.0
REQUEST_TIMEOUT_S, SLOW_REPLY_S = 1.5, 3.0
KEY_REFUSED_S = 20.0
MAX_QUEUE_WAIT_S = 2.0
SCHWAB_DAILY_CAP = 90
"""Order calls a day at the fake Schwab (it documents 4,000), reached in the 429 burst."""
SETTLE_S = 8.0
"""Time for a failover, the next broker's fill and the report to reach Postgres."""
FAILOVER_REASONS = {"rate_limited", "broker_down", "daily_order_cap"}
KEY_ID, SECRET = "PKBADDAYTEST01", "bad-day-secret-5d2a"


@dataclass
class Resting:
    """A limit order far from the market, worked by the test at the fake."""

    intent_id: str
    quantity: Decimal
    limit_price: Decimal
    story: str
    """``fill`` (while the stream is down), ``partial_cancel``, ``cancel`` or ``gtc`` (through
    ``done_for_day``, filled the next day)."""

    @property
    def final(self) -> tuple[str, Decimal]:
        return {
            "fill": ("filled", self.quantity),
            "gtc": ("filled", self.quantity),
            "partial_cancel": ("cancelled", self.quantity / 2),
            "cancel": ("cancelled", Decimal(0)),
        }[self.story]


@dataclass
class Book:
    """The intents of the day, by story."""

    market_kinds: list[dict[str, Any]]
    """The market orders' fields, in turn."""
    resting_kind: dict[str, Any]
    """The resting orders' fields (symbol, asset class, time in force, quantity)."""
    unique_sizes: bool = False
    """Each market order one share larger than the last (no two of the same shape)."""
    payloads: list[dict[str, Any]] = field(default_factory=list)
    resting: list[Resting] = field(default_factory=list)
    phase: dict[str, str] = field(default_factory=dict)
    """The timeline step each intent was published at."""
    published: dict[str, float] = field(default_factory=dict)
    """When each intent was published (UNIX seconds)."""

    def market(self, n: int, phase: str) -> list[dict[str, Any]]:
        made = []
        for _ in range(n):
            kind = self.market_kinds[len(self.payloads) % len(self.market_kinds)]
            if self.unique_sizes:
                kind = kind | {"quantity": str(Decimal(kind["quantity"]) + len(self.payloads))}
            made.append(self._add(intent_payload(strategy_id=STRATEGY, **kind), phase))
        return made

    def limit(self, story: str) -> dict[str, Any]:
        price = Decimal("0.50") + Decimal(len(self.resting)) / 100  # unique, far under the market
        kind = self.resting_kind | ({"time_in_force": "gtc"} if story == "gtc" else {})
        payload = intent_payload(strategy_id=STRATEGY, order_type="limit", limit_price=str(price), **kind)
        self.resting.append(Resting(payload["intent_id"], Decimal(kind["quantity"]), price, story))
        return self._add(payload, "resting")

    def _add(self, payload: dict[str, Any], phase: str) -> dict[str, Any]:
        self.payloads.append(payload)
        self.phase[payload["intent_id"]] = phase
        return payload

    @property
    def ids(self) -> list[str]:
        return [p["intent_id"] for p in self.payloads]

    def expected(self) -> dict[str, tuple[str, Decimal]]:
        by_id = {r.intent_id: r.final for r in self.resting}
        return {p["intent_id"]: by_id.get(p["intent_id"], ("filled", Decimal(p["quantity"]))) for p in self.payloads}

    def story(self, name: str) -> list[Resting]:
        return [r for r in self.resting if r.story == name]


@dataclass
class Day:
    """What the day's steps act through: the bus, the fake, and the book."""

    nc: NatsClient
    settings: Settings
    book: Book
    db: AsyncEngine
    broker: str
    notes: list[str] = field(default_factory=list)
    """What a step saw that the checks report."""

    async def publish(self, payloads: list[dict[str, Any]]) -> None:
        js = self.nc.jetstream()
        for payload in payloads:
            self.book.published[payload["intent_id"]] = time.time()
            await js.publish(
                self.settings.subjects.intent(STRATEGY),
                json.dumps(payload).encode(),
                headers={"Nats-Msg-Id": payload["intent_id"]},
            )

    async def cancel(self, resting: list[Resting]) -> None:
        js = self.nc.jetstream()
        for r in resting:
            request = CancelRequest(
                message_id=f"cancel-{r.intent_id}",
                correlation_id=r.intent_id,
                intent_id=r.intent_id,
                strategy_id=STRATEGY,
                reason="bad-day test",
            )
            await js.publish(
                self.settings.subjects.cancel(STRATEGY),
                request.model_dump_json().encode(),
                headers={"Nats-Msg-Id": request.message_id},
            )


@dataclass
class Venue:
    """One adapter's side of the day: its config, its fake and what the fake knows."""

    config: str
    env: dict[str, str]
    book: Book
    fallback: str
    """The simulated broker failovers land at."""
    fails_over: bool
    """Whether the scripted 429's reset is past ``max_queue_wait_s`` (routes must fail over)."""
    lock: threading.Lock
    """Held by the fake's server while it answers a request."""
    steps: Callable[[Day], list[Step]]
    placed: Callable[[], list[str]]
    """Client order ids of every order at the fake (one per order)."""
    fills: Callable[[], list[tuple[str, Decimal, Decimal]]]
    """(broker order id, quantity, price) of every execution at the fake."""
    counters: Callable[[], dict[str, Any]]
    """The fake's rate window and scripted faults: ``refused`` counts 429s for exceeding the limit."""
    placed_by_order_id: bool = False
    """``placed`` gives broker order ids (a broker with no client order ids: Schwab)."""


async def resting_at_broker(
    day: Day, story: str, lock: threading.Lock, find: Callable[[list[Resting]], list[str | None]]
) -> list[str]:
    """The broker order ids of the resting orders of ``story`` once all are working at the
    fake (they may wait for the rate budget; ``find`` gives None for one not there yet). Those
    still missing after 30 s are noted, and the day goes on without them."""
    resting = day.book.story(story)
    deadline = time.monotonic() + 30
    while True:
        with lock:
            found = find(resting)
        if all(found) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    missing = [r.intent_id for r, o in zip(resting, found, strict=True) if o is None]
    if missing:
        day.notes.append(f"resting orders ({story}) not working at the broker 30 s on: {missing}")
    return [o for o in found if o]


@contextlib.asynccontextmanager
async def alpaca_venue() -> AsyncIterator[Venue]:
    """Alpaca: equities; a 60 s window of 200 requests whose 429 resets at the window's end."""
    fake = FakeAlpaca(KEY_ID, SECRET, cash=Decimal(10**12), window=FixedWindow(WINDOW_REQUESTS, WINDOW_S))
    book = Book(
        [{"symbol": s, "quantity": str(q)} for s, q in (("AAPL", 3), ("MSFT", 2), ("NVDA", 5), ("SPY", 1))],
        {"symbol": "KO", "quantity": "4", "time_in_force": "day"},
    )
    async with serve_stream(fake) as stream:
        with serve(fake.handle) as (url, lock):

            def find(resting: list[Resting]) -> list[str | None]:
                found = [fake.by_client_id.get(r.intent_id) for r in resting]
                return [o if o and fake.orders[o]["status"] != "pending_new" else None for o in found]

            async def worked(day: Day, story: str) -> list[str]:
                return await resting_at_broker(day, story, lock, find)

            async def fill_while_stream_down(day: Day) -> None:
                with lock:
                    fake.faults.stream_down = True
                await stream.drop()
                for story, part in (("fill", None), ("partial_cancel", Decimal("0.5"))):
                    for order_id in await worked(day, story):
                        with lock:
                            order = fake.orders[order_id]
                            fake.trade(order_id, None if part is None else Decimal(order["qty"]) * part)

            def align(at: float) -> None:
                assert fake.window is not None
                fake.window.end_current_at(at)

            async def next_day_fills(day: Day) -> None:
                with lock:
                    fake.next_day()
                for order_id in await worked(day, "gtc"):
                    with lock:
                        fake.trade(order_id)

            yield Venue(
                config=(
                    f"    adapter: alpaca\n    base_url: {url}\n    stream_url: {stream.url}\n"
                    '    credentials: {api_key: "${ALPACA_API_KEY}", secret_key: "${ALPACA_SECRET_KEY}"}\n'
                ),
                env={"ALPACA_API_KEY": KEY_ID, "ALPACA_SECRET_KEY": SECRET},
                book=book,
                fallback="schwab",
                fails_over=True,
                lock=lock,
                steps=lambda day: day_steps(
                    day,
                    fake.faults,
                    fill_while_stream_down,
                    stream=True,
                    next_day=(fake.end_day, next_day_fills),
                    align=align,
                ),
                placed=lambda: [o["client_order_id"] for o in fake.orders.values()],
                fills=lambda: [(a["order_id"], Decimal(a["qty"]), Decimal(a["price"])) for a in fake.activities],
                counters=lambda: (
                    fake.window.stats() | {"scripted_429s": fake.faults.rate_limited_sent} if fake.window else {}
                ),
            )


def day_steps(
    day: Day,
    faults: FakeFaults,
    fill_resting: Callable[[Day], Awaitable[None]],
    *,
    stream: bool,
    next_day: tuple[Callable[[], None], Callable[[Day], Awaitable[None]]] | None,
    align: Callable[[float], None] | None,
) -> list[Step]:
    """The bad day at a broker. ``fill_resting`` fills resting orders at the fake (with the
    stream down, where the broker has one: ``stream``). ``next_day``: its end of day
    and what the next day does (GTC orders resume and fill), where the broker has trading days;
    ``align``: places the burst of 429s at the start of a rate window (given its UNIX time),
    where the broker's windows are fixed."""
    book = day.book

    def switch(**changes: Any) -> Callable[[], object]:
        return lambda: faults.switch(changes)

    def publish(n: int, phase: str, **changes: Any) -> Callable[[], object]:
        def act() -> Awaitable[None]:
            faults.switch(changes)
            return day.publish(book.market(n, phase))

        return act

    def resting() -> Awaitable[None]:
        faults.switch({"pending_new_next": 6, "pending_new_s": 1.5})
        stories = ("fill",) * 4 + ("partial_cancel",) * 2 + ("cancel",) * 2 + (("gtc",) * 4 if next_day else ())
        return day.publish([book.limit(s) for s in stories])

    def cancels() -> Awaitable[None]:
        return day.cancel(book.story("partial_cancel") + book.story("cancel"))

    async def back_at_the_broker() -> None:
        """One market order, to see the broker take orders again before the 429 burst; what
        happened is noted (a broker still shunned here means the burst tests nothing there)."""
        [payload] = book.market(1, "recovered")
        await day.publish([payload])
        deadline = time.monotonic() + RECOVERY_S
        while time.monotonic() < deadline:
            rows = await fetch_all(
                day.db,
                "SELECT broker_name, status FROM orders WHERE intent_id = :i ORDER BY attempt",
                i=payload["intent_id"],
            )
            if rows and rows[-1]["status"] == "filled":
                if rows[-1]["broker_name"] != day.broker:
                    day.notes.append(f"after the key came back, an order went to {rows[-1]['broker_name']}: {rows}")
                return
            await asyncio.sleep(0.2)
        day.notes.append(f"after the key came back, an order was not filled within {RECOVERY_S} s")

    async def burst() -> None:
        """A 429 to the next placement at a fresh window's start, so its reset is a window away,
        while 20 intents arrive."""
        if align:
            align(time.time() + 0.2)
            await asyncio.sleep(0.4)
        faults.switch({"rate_limited_orders_next": 1})
        await day.publish(book.market(20, "rate_limited"))

    steps = [
        Step(0, "calm: 30 market orders", publish(30, "calm")),
        Step(1, "12 resting orders, 6 answered pending_new", resting),
        Step(4, "5xx burst before accepting, 8 market orders", publish(8, "5xx_before", server_errors_next=3)),
        Step(7, "5xx after accepting, 4 market orders", publish(4, "5xx_after", server_errors_after_accept=2)),
        Step(10, "slow replies, 4 market orders", publish(4, "slow", slow_replies=2, slow_reply_s=SLOW_REPLY_S)),
        Step(13, ("stream down; " if stream else "") + "resting orders fill (half of two)", lambda: fill_resting(day)),
        *([Step(19, "stream back", switch(stream_down=False))] if stream else []),
        Step(21, "cancel the partly filled and the untouched resting orders", cancels),
        Step(23, "idle connections closed, 6 market orders", publish(6, "idle_closed", idle_closes_next=3)),
        Step(26, "key refused, 10 market orders", publish(10, "key_refused", auth_expired=True)),
        Step(26 + KEY_REFUSED_S, "key accepted again", switch(auth_expired=False)),
    ]  # fmt: skip
    if next_day:
        end_day, next_day_fills = next_day
        steps += [
            Step(48, "the day ends: GTC orders done_for_day", end_day),
            Step(50, "the next day: GTC orders fill", lambda: next_day_fills(day)),
        ]
    return [
        *steps,
        Step(52, "an order at the broker again", back_at_the_broker),
        Step(53, "a 429 to a placement at a window's start (its reset a window away), 20 market orders", burst),
        Step(56, "6 last market orders", publish(6, "rate_limited")),
    ]


@contextlib.asynccontextmanager
async def coinbase_venue() -> AsyncIterator[Venue]:
    """Coinbase Advanced Trade: crypto; 30 private requests a second, refilled continuously, so
    a 429's ``x-ratelimit-reset`` is a second or two away (routes wait for it, no failover); no
    trading days (every limit order is GTC, none is ``done_for_day``)."""
    fake = FakeCoinbase(bucket=TokenBucket(rate=30, burst=30))
    book = Book(
        [CRYPTO, CRYPTO | {"symbol": "ETH-USD", "quantity": "0.2"}, CRYPTO | {"symbol": "SOL-USD", "quantity": "3"}],
        CRYPTO | {"quantity": "0.4", "time_in_force": "gtc"},
    )
    async with serve_user_stream(fake) as stream:
        with serve(fake.handle) as (url, lock):

            def find(resting: list[Resting]) -> list[str | None]:
                found = [fake.by_client_id.get(r.intent_id) for r in resting]
                return [o if o and fake.orders[o]["status"] == "OPEN" else None for o in found]

            async def worked(day: Day, story: str) -> list[str]:
                return await resting_at_broker(day, story, lock, find)

            async def fill_while_stream_down(day: Day) -> None:
                with lock:
                    fake.faults.stream_down = True
                await stream.drop()
                for story, part in (("fill", None), ("partial_cancel", Decimal("0.5"))):
                    for order_id in await worked(day, story):
                        with lock:
                            [configured] = fake.orders[order_id]["order_configuration"].values()
                            size = Decimal(configured["base_size"])
                            fake.trade(order_id, None if part is None else size * part)

            yield Venue(
                config=(
                    f"    adapter: coinbase\n    base_url: {url}\n    stream_url: {stream.url}\n"
                    '    credentials: {api_key: "${COINBASE_API_KEY}", api_secret: "${COINBASE_API_SECRET}"}\n'
                ),
                env={"COINBASE_API_KEY": fake.key_name, "COINBASE_API_SECRET": fake.private_key},
                book=book,
                fallback="alpaca",
                fails_over=False,
                lock=lock,
                steps=lambda day: day_steps(
                    day, fake.faults, fill_while_stream_down, stream=True, next_day=None, align=None
                ),
                placed=lambda: [o["client_order_id"] for o in fake.orders.values()],
                fills=lambda: [(f["order_id"], Decimal(f["size"]), Decimal(f["price"])) for f in fake.fills],
                counters=lambda: (
                    fake.bucket.stats() | {"scripted_429s": fake.faults.rate_limited_sent} if fake.bucket else {}
                ),
            )


@contextlib.asynccontextmanager
async def robinhood_venue() -> AsyncIterator[Venue]:
    """Robinhood's Crypto Trading API: crypto; 100 requests a minute, bursts to 300 (a token
    bucket), so a 429's reset is about a second away (routes wait, no failover); no stream
    (fills are polled), no trading days. Client order ids are ``uuid5`` of the intent ids."""
    fake = FakeRobinhood(bucket=TokenBucket(rate=100 / 60, burst=300))
    book = Book(
        [CRYPTO, CRYPTO | {"symbol": "ETH-USD", "quantity": "0.2"}, CRYPTO | {"symbol": "DOGE-USD", "quantity": "50"}],
        CRYPTO | {"quantity": "0.4", "time_in_force": "gtc"},
    )
    with serve(fake.handle) as (url, lock):

        def find(resting: list[Resting]) -> list[str | None]:
            return [fake.by_client_id.get(robinhood_client_id(r.intent_id)) for r in resting]

        async def worked(day: Day, story: str) -> list[str]:
            return await resting_at_broker(day, story, lock, find)

        async def fill_resting(day: Day) -> None:
            for story, part in (("fill", None), ("partial_cancel", Decimal("0.5"))):
                for order_id in await worked(day, story):
                    with lock:
                        size = Decimal(fake.orders[order_id]["limit_order_config"]["asset_quantity"])
                        fake.trade(order_id, None if part is None else size * part)

        def placed() -> list[str]:
            ours = {robinhood_client_id(i): i for i in book.ids}
            return [ours.get(o["client_order_id"], o["client_order_id"]) for o in fake.orders.values()]

        yield Venue(
            config=(
                f"    adapter: robinhood_crypto\n    base_url: {url}\n"
                '    credentials: {api_key: "${ROBINHOOD_API_KEY}", private_key: "${ROBINHOOD_PRIVATE_KEY}"}\n'
            ),
            env={"ROBINHOOD_API_KEY": fake.api_key, "ROBINHOOD_PRIVATE_KEY": fake.private_key},
            book=book,
            fallback="coinbase",
            fails_over=False,
            lock=lock,
            steps=lambda day: day_steps(day, fake.faults, fill_resting, stream=False, next_day=None, align=None),
            placed=placed,
            fills=lambda: [
                (o["id"], Decimal(e["quantity"]), Decimal(e["effective_price"]))
                for o in fake.orders.values()
                for e in o["executions"]
            ],
            counters=lambda: (
                fake.bucket.stats() | {"scripted_429s": fake.faults.rate_limited_sent} if fake.bucket else {}
            ),
        )


@contextlib.asynccontextmanager
async def schwab_venue(root: Path) -> AsyncIterator[Venue]:
    """Schwab: equities; 120 requests a minute (its 429 names no reset), and a daily order cap
    made small (``SCHWAB_DAILY_CAP`` order calls, known to mbx) so the day reaches it at the
    burst: new orders past 90% of it fail over with ``daily_order_cap``. No client order ids:
    the fake's orders are attributed by mbx's broker order ids, resting ones found by their
    unique limit price. Every market order has a size of its own (identical orders would queue
    behind each other's shape lock). No stream, no trading days here."""
    fake = FakeSchwab(cash=Decimal(10**12), window=FixedWindow(120, 60.0), orders_per_day=SCHWAB_DAILY_CAP)
    TokenStore(root / "schwab-token.json").save_login(fake.issue_tokens())
    book = Book(
        [{"symbol": s, "quantity": str(q)} for s, q in (("AAPL", 3), ("MSFT", 2), ("NVDA", 5), ("SPY", 1))],
        {"symbol": "KO", "quantity": "4", "time_in_force": "day"},
        unique_sizes=True,
    )
    with serve(fake.handle) as (url, lock):

        def find(resting: list[Resting]) -> list[str | None]:
            by_price = {Decimal(str(o["price"])): k for k, o in fake.orders.items() if o.get("price") is not None}
            return [by_price.get(r.limit_price) for r in resting]

        async def worked(day: Day, story: str) -> list[str]:
            return await resting_at_broker(day, story, lock, find)

        async def fill_resting(day: Day) -> None:
            for story, part in (("fill", None), ("partial_cancel", Decimal("0.5"))):
                for order_id in await worked(day, story):
                    with lock:
                        size = Decimal(str(fake.orders[order_id]["quantity"]))
                        fake.trade(order_id, None if part is None else size * part)

        yield Venue(
            config=(
                f"    adapter: schwab\n    base_url: {url}\n    orders_per_day: {SCHWAB_DAILY_CAP}\n"
                '    credentials: {app_key: "${SCHWAB_APP_KEY}", app_secret: "${SCHWAB_APP_SECRET}"}\n'
            ),
            env={
                "SCHWAB_APP_KEY": fake.app_key,
                "SCHWAB_APP_SECRET": fake.app_secret,
                "MBX_SCHWAB_TOKEN_FILE": str(root / "schwab-token.json"),
            },
            book=book,
            fallback="alpaca",
            fails_over=True,
            lock=lock,
            steps=lambda day: day_steps(day, fake.faults, fill_resting, stream=False, next_day=None, align=None),
            placed=lambda: list(fake.orders),
            placed_by_order_id=True,
            fills=lambda: [
                (str(o["orderId"]), Decimal(str(leg["quantity"])), Decimal(str(leg["price"])))
                for o in fake.orders.values()
                for a in o["orderActivityCollection"]
                for leg in a["executionLegs"]
            ],
            counters=lambda: (
                (fake.window.stats() if fake.window else {})
                | {"order_calls": fake.order_calls, "over_daily_cap": fake.over_daily_cap}
            ),
        )


VENUES: dict[str, Callable[[Path], contextlib.AbstractAsyncContextManager[Venue]]] = {
    "alpaca": lambda _root: alpaca_venue(),
    "coinbase": lambda _root: coinbase_venue(),
    "robinhood": lambda _root: robinhood_venue(),
    "schwab": schwab_venue,
}


def write_config(path: Path, broker: str, venue: Venue) -> None:
    path.write_text(
        "brokers:\n"
        f"  {broker}:\n{venue.config}"
        f"    request_timeout_s: {REQUEST_TIMEOUT_S}\n"
        f"  {venue.fallback}:\n"  # simulated: where failovers land
        "    rate_limit: {requests: 100000, per_seconds: 1}\n"
        "    orders_per_day: 1000000000\n"
        "    paper_cash: 1000000000000\n"
        "routing:\n"
        f"  max_queue_wait_s: {MAX_QUEUE_WAIT_S}\n"
        "  rules:\n"
        f"    - {{name: resting-at-{broker}, match: {{order_type: [limit]}}, require: [{broker}]}}\n"
        f"    - {{name: {broker}-first, prefer: [{broker}]}}\n"
    )


@pytest.mark.timeout(420)
@pytest.mark.parametrize("broker", list(VENUES))
async def test_a_bad_day_at_the_broker_loses_doubles_and_dead_letters_nothing(
    broker: str, tmp_path: Path, servers: Any, isolated: Settings
) -> None:
    """Through the scripted bad day, every intent ends as its story says, exactly once, with no
    dead letter, and mbx never provokes a 429 by exceeding the limit it knows."""
    async with VENUES[broker](tmp_path) as venue:
        book = venue.book
        config = tmp_path / "bad-day.yaml"
        write_config(config, broker, venue)
        env_vars = {
            "MBX_NATS_URL": servers.nats_url,
            "MBX_DATABASE_URL": isolated.database_url or "",
            "MBX_SUBJECT_PREFIX": isolated.subject_prefix,
            "MBX_CONFIG_FILE": str(config),
            "MBX_LIVE": "1",
            **venue.env,
        }
        with mbx_up(tmp_path, **env_vars) as (up, _stack, _env):
            nc = await nats.connect(servers.nats_url)
            db = make_engine(isolated.database_url or "", pool_size=1)
            day = Day(nc, isolated, book, db, broker)
            timeline = Timeline(venue.steps(day), venue.lock)
            try:
                await first_order_fills(day, db, broker, tmp_path)
                await timeline.run()
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    if await all_final(db, book.ids):
                        break
                    await asyncio.sleep(0.5)
                if not await all_final(db, book.ids):  # the checks below say which and why
                    print(
                        f"not all intents final: {await unfinished(db, nc, isolated, book)}\n{log_tails(tmp_path, 25)}"
                    )
                await check_the_day(nc, db, isolated, book, broker, venue, timeline, day.notes)
            finally:
                await nc.close()
                await db.dispose()
            up.terminate()
            assert up.wait(30) == 0


async def first_order_fills(day: Day, db: Any, broker: str, home: Path) -> None:
    """The stack is up and routes to ``broker``: a first market order fills there (it is one of
    the day's intents)."""
    [payload] = day.book.market(1, "first")
    await day.publish([payload])
    deadline = time.monotonic() + 60
    while True:
        rows = await fetch_all(
            db, "SELECT broker_name, status FROM orders WHERE intent_id = :i", i=payload["intent_id"]
        )
        if rows and rows[0]["status"] == "filled":
            assert rows[0]["broker_name"] == broker
            return
        assert time.monotonic() < deadline, f"the first order did not fill: {rows}\n{log_tails(home, 25)}"
        await asyncio.sleep(0.2)


async def dead_letters(nc: NatsClient, settings: Settings) -> list[DeadLetter]:
    stored = await read_stream(nc.jetstream(), settings.subjects.stream_name("DLQ"), settings.subjects.dlq("*"))
    return [DeadLetter.model_validate_json(m.data) for m in stored]


async def unfinished(db: Any, nc: NatsClient, settings: Settings, book: Book) -> str:
    rows = await fetch_all(
        db,
        "SELECT intent_id, broker_name, status, filled_quantity, reason FROM orders WHERE intent_id = ANY(:ids) "
        "AND status NOT IN ('filled', 'cancelled', 'rejected', 'failed', 'expired')",
        ids=book.ids,
    )
    stored = {
        r["intent_id"]
        for r in await fetch_all(db, "SELECT intent_id FROM orders WHERE intent_id = ANY(:ids)", ids=book.ids)
    }
    missing = [(i, book.phase[i]) for i in book.ids if i not in stored]
    letters = await dead_letters(nc, settings)
    return (
        f"{len(rows)} not final, e.g. {[(dict(r), book.phase[r['intent_id']]) for r in rows[:6]]}; "
        f"{len(missing)} with no order row, e.g. {missing[:6]}; {len(letters)} dead letters, e.g. "
        f"{[(d.original_subject, d.error, d.delivery_count) for d in letters[:6]]}"
    )


async def check_the_day(
    nc: NatsClient,
    db: AsyncEngine,
    settings: Settings,
    book: Book,
    broker: str,
    venue: Venue,
    timeline: Timeline,
    day_notes: list[str],
) -> None:
    """Every check of the day; all are made, and what fails is reported together (each names
    its evidence), so one run tells which parts of the day a broker's adapter gets wrong."""
    ids, expected = book.ids, book.expected()
    problems: list[str] = list(day_notes)

    letters = await dead_letters(nc, settings)
    if letters:
        problems.append(
            f"{len(letters)} dead letters: "
            + str([(d.original_subject, d.correlation_id, book.phase.get(d.correlation_id), d.error) for d in letters])
        )

    # One order row per intent and broker it was routed to; the last attempt's is its outcome.
    rows = await fetch_all(
        db,
        "SELECT intent_id, broker_name, broker_order_id, status, filled_quantity, reason, attempt, updated_at "
        "FROM orders WHERE intent_id = ANY(:ids) ORDER BY intent_id, attempt",
        ids=ids,
    )
    final = {r["intent_id"]: r for r in rows}
    if len(final) != len(ids):
        problems.append(f"{len(ids) - len(final)} intents have no order row")
    wrong = [
        (r["intent_id"], book.phase[r["intent_id"]], r["broker_name"], r["status"], str(r["filled_quantity"]),
         expected[r["intent_id"]], r["reason"])
        for r in final.values()
        if (r["status"], Decimal(r["filled_quantity"])) != expected[r["intent_id"]]
    ]  # fmt: skip
    if wrong:
        by_phase = Counter(w[1] for w in wrong)
        problems.append(f"{len(wrong)} intents ended otherwise than their story ({dict(by_phase)}), e.g. {wrong[:6]}")

    finals: Counter[str] = Counter()
    for stored in await read_stream(
        nc.jetstream(), settings.subjects.stream_name("EXECUTIONS"), f"{settings.subject_prefix}.exec.>"
    ):
        report = json.loads(stored.data)
        if report.get("final"):
            finals[report["intent_id"]] += 1
    not_one = {i: finals[i] for i in ids if finals[i] != 1}
    if not_one:
        problems.append(f"not exactly one final report: {dict(list(not_one.items())[:8])} ({len(not_one)} intents)")

    with venue.lock:
        placed, at_fake_fills, counters = Counter(venue.placed()), venue.fills(), venue.counters()
    if venue.placed_by_order_id:  # attributed by the broker order ids mbx recorded
        owners = {r["broker_order_id"]: r["intent_id"] for r in rows if r["broker_name"] == broker}
        unknown = [o for o in placed if o not in owners]
        if unknown:
            problems.append(f"{len(unknown)} orders at the broker that mbx has no record of: {unknown[:8]}")
        placed = Counter(owners[o] for o in placed.elements() if o in owners)
    doubled = {c: n for c, n in placed.items() if n > 1}
    if doubled:
        problems.append(f"more than one order for an intent at the broker: {doubled}")
    here = {r["intent_id"] for r in rows if r["broker_name"] == broker and r["broker_order_id"]}
    elsewhere = {i: r["broker_name"] for i, r in final.items() if r["broker_name"] != broker}
    if set(placed) & set(elsewhere):
        problems.append(
            f"intents that ended elsewhere also have an order at the broker: {set(placed) & set(elsewhere)}"
        )
    if set(placed) - set(elsewhere) != here:
        problems.append(
            f"orders at the broker differ from mbx's record: {sorted((set(placed) - set(elsewhere)) ^ here)}"
        )

    stored_fills = await fetch_all(
        db,
        "SELECT broker_order_id, quantity, price FROM trade_logs WHERE broker_name = :b AND intent_id = ANY(:ids)",
        b=broker,
        ids=ids,
    )
    ours = Counter((r["broker_order_id"], Decimal(r["quantity"]), Decimal(r["price"])) for r in stored_fills)
    theirs = Counter(at_fake_fills)
    if ours != theirs:
        problems.append(
            f"fills in Postgres differ from the broker's ({sum(ours.values())} vs {sum(theirs.values())}): "
            f"only in Postgres {list((ours - theirs).elements())[:4]}, only at the broker "
            f"{list((theirs - ours).elements())[:4]}"
        )

    if counters.get("refused") or counters.get("before_reset") or counters.get("over_daily_cap"):
        problems.append(
            "the broker refused requests (429) for exceeding the limit mbx knows (`refused`), for coming "
            f"before a 429's reset (`before_reset`) or past the daily order cap (`over_daily_cap`): {counters}"
        )

    failovers = await fetch_all(
        db,
        "SELECT intent_id, reason_code FROM failover_events WHERE failed_broker = :b AND intent_id = ANY(:ids)",
        b=broker,
        ids=ids,
    )
    reasons: dict[str, set[str]] = defaultdict(set)
    for f in failovers:
        reasons[f["intent_id"]].add(f["reason_code"])
    unexplained = {i: (book.phase[i], sorted(r)) for i, r in reasons.items() if not r <= FAILOVER_REASONS}
    if unexplained:
        problems.append(f"failovers without one of the reasons {sorted(FAILOVER_REASONS)}: {unexplained}")
    # The 429's reset was most of a window away: a route that had to wait for it went back to
    # the router at once; none waited for the reset.
    waited = {
        i: round(final[i]["updated_at"].timestamp() - book.published[i], 1)
        for i in ids
        if book.phase[i] == "rate_limited" and i in final
        and final[i]["updated_at"].timestamp() - book.published[i] > MAX_QUEUE_WAIT_S + SETTLE_S
    }  # fmt: skip
    if venue.fails_over and waited:
        problems.append(
            f"{len(waited)} routes of the 429 burst took longer than max_queue_wait_s ({MAX_QUEUE_WAIT_S} s) + "
            f"{SETTLE_S} s to end (seconds: {waited}); where the burst ended: "
            f"{dict(Counter(final[i]['broker_name'] for i in ids if book.phase[i] == 'rate_limited' and i in final))}; "
            f"failovers: {dict(Counter(c for i, r in reasons.items() if book.phase[i] == 'rate_limited' for c in r))}"
        )

    assert problems == [], f"{broker}'s bad day:\n- " + "\n- ".join(problems) + f"\n{timeline.ran}"
