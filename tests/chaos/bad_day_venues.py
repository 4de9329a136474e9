"""Each real adapter's side of the bad day (tests/chaos/test_bad_day.py): its fake broker served
on loopback, the book of intents it trades, how the test works its resting orders, and what the
fake counts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.builders import CRYPTO
from tests.chaos.bad_day import Book, Day, Resting, Venue, day_steps, resting_at_broker
from tests.conftest import fetch_all
from tests.fakes.alpaca import FakeAlpaca
from tests.fakes.coinbase import FakeCoinbase
from tests.fakes.ibkr import FakeGateway
from tests.fakes.ibkr_bridge import BRIDGE_ENV, serve_gateway_thread
from tests.fakes.rate_window import FixedWindow, TokenBucket
from tests.fakes.robinhood import FakeRobinhood
from tests.fakes.schwab import FakeSchwab
from tests.fakes.serve import serve
from tests.fakes.stream import serve_stream, serve_user_stream
from tests.fakes.timeline import Step
from workers.venues.robinhood.venue import client_order_id as robinhood_client_id
from workers.venues.schwab.tokens import TokenStore

WINDOW_S, WINDOW_REQUESTS = 60.0, 200
"""Alpaca's documented limit, kept by the fake and known to mbx as the broker's own."""
SCHWAB_DAILY_CAP = 40
"""Order calls a day at the fake Schwab (it documents 4,000), reached in the day's second half:
about 30 calls come before the 429 burst (the router sends orders elsewhere while Schwab is down
after a 503, or has more queued than ``max_queue_wait_s`` covers), so the burst meets the stop at
90 % (36). The resting orders, which only Schwab may take, are placed in the first second."""
SCHWAB_PER_MINUTE = ROBINHOOD_PER_MINUTE = 1200
"""The request limits the test's Schwab app and Robinhood account get (see their venues)."""
KEY_ID, SECRET = "PKBADDAYTEST01", "bad-day-secret-5d2a"


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
    """Robinhood's Crypto Trading API: crypto; a token bucket (documented: 100 requests a
    minute, bursts to 300), so a 429's reset is about a second away (routes wait, no failover);
    no stream (fills are polled), no trading days. Client order ids are ``uuid5`` of the intent
    ids. The test's account gets ``ROBINHOOD_PER_MINUTE`` a minute, told to mbx and kept by the
    fake: at 100 a minute mbx would rightly send most of the day elsewhere, testing nothing."""
    fake = FakeRobinhood(bucket=TokenBucket(rate=ROBINHOOD_PER_MINUTE / 60, burst=300))
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
                f"    rate_limit: {{requests: {ROBINHOOD_PER_MINUTE}, per_seconds: 60}}\n"
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
    """Schwab: equities; a request window (its 429 names no reset; sources disagree on the
    limit, 120 a minute or order calls only, set per app: the test's app gets
    ``SCHWAB_PER_MINUTE``, told to mbx and kept by the fake), and a daily order cap
    made small (``SCHWAB_DAILY_CAP`` order calls, known to mbx) so the day reaches it: new
    orders past 90% of it must fail over with ``daily_order_cap``. No client order ids:
    the fake's orders are attributed by mbx's broker order ids, resting ones found by their
    unique limit price. Every market order has a size of its own (identical orders would queue
    behind each other's shape lock). No stream, no trading days here."""
    fake = FakeSchwab(
        cash=Decimal(10**12), window=FixedWindow(SCHWAB_PER_MINUTE, 60.0), orders_per_day=SCHWAB_DAILY_CAP
    )
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
                f"    rate_limit: {{requests: {SCHWAB_PER_MINUTE}, per_seconds: 60}}\n"
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
            expected_reasons={"daily_order_cap"},
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


IBKR_MESSAGES_PER_SECOND = 50
"""TWS's documented pacing, kept by the fake gateway and known to mbx as the broker's own."""
IBKR_CATCH_UP_S = 3.5
"""How soon after 1102 the fills made while IB was lost must be in Postgres: before the idle
connections' step (23 s), whose reconnection would find them whatever mbx did after 1102."""
IBKR_EXECUTOR = "tests.chaos.ibkr_executor"
"""The workers' module at IBKR: the real CLI, its ib_async client reaching the test's gateway."""
IBKR_STEPS = {
    "5xx burst before accepting": "the API connection drops as each of the next 3 orders arrives, before "
    "the gateway reads it: nothing is placed, and mbx cannot tell (it looks the order up by orderRef)",
    "5xx after accepting": "the next 2 orders are taken (and fill), then the connection drops before any answer",
    "slow replies": "the next 2 orders' openOrder, orderStatus and executions come 3 s late, past request_timeout_s",
    "12 resting orders, 6 answered pending_new": "pending_new is PreSubmitted: 6 stay so for 1.5 s, then Submitted",
    "stream down": "error 1100 (the gateway lost IB, its login holds): fills made meanwhile are never pushed, "
    "then or after 1102; the executor must ask for them",
    "stream back": "error 1102, connectivity restored, data maintained",
    "idle connections closed": "no pool of connections to a socket API: the gateway closes the idle API "
    "connection 3 times, 1.5 s apart; mbx must connect again before it sends",
    "key refused": "an API client has no key of its own: the gateway's login ends (its daily restart, a "
    "competing session), so it drops the API connection and refuses new ones",
    "key accepted again": "the gateway is logged in again and takes API connections",
    "done_for_day": "IB has no done_for_day: at the close working DAY orders are cancelled, GTC ones held PreSubmitted",
    "the next day": "the GTC orders are Submitted again at the open, then fill",
    "a 429 to a placement": "a scripted error 100 (pacing) to the next placement, which IB drops; error 100 names no "
    "reset (mbx pauses 1 s, under max_queue_wait_s: the routes wait, none fails over)",
}
"""What each step of the day (named for an HTTP broker) is at IB; every HTTP step has one."""


class IbkrDayFaults:
    """The day's fault switches (``FakeFaults`` names) as IB shows them: ``IBKR_STEPS``."""

    def __init__(self, gateway: FakeGateway) -> None:
        self.gateway = gateway
        self._drops: set[asyncio.Task[None]] = set()

    def switch(self, changes: dict[str, Any]) -> dict[str, Any]:
        for name, value in changes.items():
            if name == "auth_expired":  # the key refused: the gateway's login ends
                self.gateway.switch_faults({"outage": value})
            elif name == "stream_down":
                self.gateway.lose_ib() if value else self.gateway.restore_ib()
            elif name == "idle_closes_next":
                drops = asyncio.get_running_loop().create_task(self.gateway.drop_when_idle(value))
                self._drops.add(drops)
                drops.add_done_callback(self._drops.discard)
            else:  # the gateway's own faults, by the same names (tests/fakes/ibkr.py says how IB shows them)
                self.gateway.switch_faults({name: value})
        return dict(self.gateway.faults.__dict__)


def ibkr_steps(steps: list[Step]) -> list[Step]:
    """The day's steps, each named with what it is at IB (a step with no IB meaning is an error,
    never skipped in silence)."""
    named = []
    for step in steps:
        meanings = [m for key, m in IBKR_STEPS.items() if key in step.name]
        plain = step.name.startswith(("calm", "cancel", "an order at the broker", "6 last"))
        assert meanings or plain, f"the bad day's step {step.name!r} has no IBKR meaning (IBKR_STEPS)"
        named.append(Step(step.at_s, step.name + "".join(f" [IBKR: {m}]" for m in meanings), step.action))
    return named


@contextlib.asynccontextmanager
async def ibkr_venue() -> AsyncIterator[Venue]:
    """Interactive Brokers: equities through ib_async to a fake TWS/IB Gateway in the test,
    reached across processes (``tests/fakes/ibkr_bridge.py``; the workers run as
    ``IBKR_EXECUTOR``). A socket API, not HTTP: every step is what it is at IB (``IBKR_STEPS``).
    The gateway paces each API client at 50 messages a rolling second (error 100 past it,
    counted as ``refused``); ib_async throttles at 45. ``orderRef`` carries the intent id."""
    gateway = FakeGateway(cash=Decimal(10**12), message_limit=IBKR_MESSAGES_PER_SECOND)
    book = Book(
        [{"symbol": s, "quantity": str(q)} for s, q in (("AAPL", 3), ("MSFT", 2), ("NVDA", 5), ("SPY", 1))],
        {"symbol": "KO", "quantity": "4", "time_in_force": "day"},
    )
    with serve_gateway_thread(gateway) as (address, lock):

        def find(resting: list[Resting]) -> list[str | None]:
            working = {p.order.orderRef: k for k, p in gateway.orders.items() if p.status == "Submitted"}
            return [str(working[r.intent_id]) if r.intent_id in working else None for r in resting]

        async def worked(day: Day, story: str) -> list[str]:
            return await resting_at_broker(day, story, lock, find)

        async def fill_while_ib_is_lost(day: Day) -> None:
            with lock:
                gateway.lose_ib()
            for story, part in (("fill", None), ("partial_cancel", Decimal("0.5"))):
                for order_id in await worked(day, story):
                    with lock:
                        placed = gateway.orders[int(order_id)]
                        size = Decimal(str(placed.order.totalQuantity))
                        gateway.trade(int(order_id), None if part is None else size * part)

        async def next_day_fills(day: Day) -> None:
            with lock:
                gateway.next_day()
            for order_id in await worked(day, "gtc"):
                with lock:
                    gateway.trade(int(order_id))

        async def found_after_1102(day: Day) -> None:
            """The fills made while IB was lost reach Postgres soon after 1102, before any later
            step reconnects (a reconnection's synchronisation would find them anyway)."""
            stories = day.book.story("fill") + day.book.story("partial_cancel")
            deadline = time.monotonic() + IBKR_CATCH_UP_S
            while True:
                with lock:
                    at_ib = {p.order.orderRef: p.filled for p in gateway.orders.values()}
                rows = await fetch_all(
                    day.db,
                    "SELECT intent_id, filled_quantity FROM orders WHERE intent_id = ANY(:ids)",
                    ids=[r.intent_id for r in stories],
                )
                ours = {r["intent_id"]: Decimal(r["filled_quantity"]) for r in rows}
                behind = {r.intent_id: (ours.get(r.intent_id), at_ib[r.intent_id]) for r in stories
                          if r.intent_id in at_ib and ours.get(r.intent_id) != at_ib[r.intent_id]}  # fmt: skip
                if not behind or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            if behind:
                day.notes.append(
                    f"fills made while IB was lost (1100) not in Postgres {IBKR_CATCH_UP_S} s after 1102 "
                    f"(intent: (mbx, IB)): {behind}"
                )

        yield Venue(
            config="    adapter: ibkr\n    gateway: {host: 127.0.0.1, port: 4002, client_id: 11}\n",
            env={"MBX_WORKER_MODULE": IBKR_EXECUTOR, BRIDGE_ENV: address},
            book=book,
            fallback="alpaca",
            fails_over=False,
            lock=lock,  # type: ignore[arg-type]  # an RLock: the gateway's own timers take it too
            steps=lambda day: [
                *ibkr_steps(
                    day_steps(
                        day,
                        IbkrDayFaults(gateway),  # type: ignore[arg-type]  # the day's switches, as IB shows them
                        fill_while_ib_is_lost,
                        stream=True,
                        next_day=(gateway.end_day, next_day_fills),
                        align=None,
                    )
                ),
                Step(19, "IBKR: the fills made while IB was lost reach Postgres", lambda: found_after_1102(day)),
            ],
            placed=lambda: [p.order.orderRef for p in gateway.orders.values()],
            fills=lambda: [
                (str(p.order.orderId), Decimal(str(e.shares)), Decimal(str(e.price)))
                for p in gateway.orders.values()
                for e, _ in p.executions
            ],
            counters=lambda: gateway.rate_stats() | {"idle_drops": gateway.idle_drops},
        )
        with lock:
            print(f"the fake gateway's counters: {gateway.rate_stats() | {'idle_drops': gateway.idle_drops}}")


VENUES: dict[str, Callable[[Path], contextlib.AbstractAsyncContextManager[Venue]]] = {
    "alpaca": lambda _root: alpaca_venue(),
    "coinbase": lambda _root: coinbase_venue(),
    "robinhood": lambda _root: robinhood_venue(),
    "schwab": schwab_venue,
    "ibkr": lambda _root: ibkr_venue(),
}
