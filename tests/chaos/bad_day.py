"""The bad day of tests/chaos/test_bad_day.py: the intents and their stories, what the day's
steps act through, and the steps themselves, on the timeline of ``tests/fakes/timeline.py``."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import CancelRequest
from tests.builders import intent_payload
from tests.conftest import fetch_all
from tests.fakes.alpaca import FakeFaults
from tests.fakes.timeline import Step
from workers.platform.settings import Settings

STRATEGY = "badday"
RECOVERY_S = 15.0
"""How long an order may take to fill at the broker again before the 429 burst."""
SLOW_REPLY_S = 3.0
"""A slow reply's delay: past the ``request_timeout_s`` the test configures."""
KEY_REFUSED_S = 20.0
PUBLISH_SPACING_S = 0.25


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

    async def publish(self, payloads: list[dict[str, Any]], spacing_s: float = PUBLISH_SPACING_S) -> None:
        """Publish ``payloads`` one every ``spacing_s``, as a strategy sends them (a whole phase
        at once would queue at the broker's rate budget and go elsewhere, testing nothing)."""
        js = self.nc.jetstream()
        for n, payload in enumerate(payloads):
            if n:
                await asyncio.sleep(spacing_s)
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
    expected_reasons: set[str] = field(default_factory=set)
    """Failover reasons the day must produce at this broker (Schwab: its daily order cap)."""


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

    worked = asyncio.Event()

    async def fill() -> None:
        await fill_resting(day)
        worked.set()

    async def cancels() -> None:
        await worked.wait()  # a partly filled order is cancelled after its part filled
        await day.cancel(book.story("partial_cancel") + book.story("cancel"))

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
                    routes = await fetch_all(
                        day.db,
                        "SELECT broker_name, rule, decision->'excluded' AS excluded FROM multi_broker_routes "
                        "WHERE intent_id = :i ORDER BY attempt",
                        i=payload["intent_id"],
                    )
                    day.notes.append(
                        f"after the key came back, an order went to {rows[-1]['broker_name']}: {rows}; "
                        f"its routes: {[dict(r) for r in routes]}"
                    )
                return
            await asyncio.sleep(0.2)
        day.notes.append(f"after the key came back, an order was not filled within {RECOVERY_S} s")

    async def burst() -> None:
        """A 429 to the next placement at a fresh window's start, so its reset is a window away,
        while 40 intents arrive."""
        if align:
            align(time.time() + 0.2)
            await asyncio.sleep(0.4)
        faults.switch({"rate_limited_orders_next": 1})
        await day.publish(book.market(40, "rate_limited"), spacing_s=0.05)

    steps = [
        Step(0, "calm: 10 market orders", publish(10, "calm")),
        Step(1, "12 resting orders, 6 answered pending_new", resting),
        Step(4, "5xx burst before accepting, 8 market orders", publish(8, "5xx_before", server_errors_next=3)),
        Step(7, "5xx after accepting, 4 market orders", publish(4, "5xx_after", server_errors_after_accept=2)),
        Step(10, "slow replies, 4 market orders", publish(4, "slow", slow_replies=2, slow_reply_s=SLOW_REPLY_S)),
        Step(13, ("stream down; " if stream else "") + "resting orders fill (half of two)", fill),
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
        Step(53, "a 429 to a placement at a window's start (its reset a window away), 40 market orders", burst),
        Step(56, "6 last market orders", publish(6, "rate_limited")),
    ]
