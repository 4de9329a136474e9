"""Chaos: at least 100 SIGKILLs across the router, every executor and the aggregator, each
aimed at a moment the worker has just fetched work (two killers at once, on different workers),
while a mixed book flows: market orders at
all five brokers, identical Schwab orders (no client order ids there), and resting limit
orders that fill partly at the broker and are then either filled or cancelled.

Every worker is a process of its own, restarted at once after each kill. The simulated brokers
keep their books, and their request logs, in NATS KV, so both outlive the executor processes.
Afterwards: every intent is terminal with the status its story calls for, exactly one order
per intent at the brokers (none lost, none doubled), fills that add up everywhere, one final
report per intent, and no placement ever repeated without a lookup that found nothing first.

``test_a_blind_resubmission_is_caught`` removes the executor's lookup and shows the request-log
check fails, so the check can fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient

from contracts import BrokerName, CancelRequest
from tests.builders import intent_payload
from tests.chaos.fleet import Fleet
from tests.chaos.outcome import (
    STRATEGY,
    Book,
    Resting,
    all_final,
    books,
    check_outcome,
    prepare,
    publish,
    unfinished,
    write_config,
)
from tests.conftest import eventually
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings, load_config
from workers.venues.simulated.book import KvOrderBook, repeated_without_lookup
from workers.venues.simulated.venue import SimulatedVenue

pytestmark = pytest.mark.integration

KILLS = 100
RATE = 8.0
"""Intents published per second while the kills go on."""
MAX_INTENTS = 3200
"""A bound on the flow, far above what 100 kills need: about 850 on two cores alone, but 1,600
were not enough once while ``make test`` ran the other tests beside it (kills come slower when
the cores are shared). Kills happen only while work is in flight, so the flow lasts as long as
the kills do."""
SETTLE_S = 240.0
"""Time the last intents get to end once the kills stop (a killed router's batch comes back
after its consumer's 30 s ack wait)."""


async def work_the_resting_orders(nc: NatsClient, settings: Settings, book: Book, done: asyncio.Event) -> None:
    """The market reaches each resting order: half of it fills at the broker; then the rest
    fills too, or the strategy asks mbx to cancel it (after the partial fill is in the book,
    so the broker never has two writers of one order at once). Each step is done once and
    retried on the next pass if it failed (a loaded machine times reads out), so one failure
    never strands the orders after it."""
    venues = {b: SimulatedVenue(b, book=kv) for b, kv in books(nc, settings).items()}
    seen = dict.fromkeys(BrokerName, 0)
    found: dict[str, tuple[BrokerName, str]] = {}  # intent id -> (broker, broker order id)
    while not done.is_set():
        for broker, venue in venues.items():
            kv_book = venue.book
            assert isinstance(kv_book, KvOrderBook)
            try:
                async for position, order in kv_book.changes(seen[broker]):
                    seen[broker] = position
                    resting = book.resting.get(order.limit_price) if order.limit_price is not None else None
                    if resting is not None and resting.intent_id not in found:
                        found[resting.intent_id] = (broker, order.broker_order_id)
            except Exception as exc:
                print(f"resting orders: reading {broker}'s book failed ({exc!r}); trying again", flush=True)
        for resting in list(book.resting.values()):  # the publisher adds to it meanwhile
            if resting.handled or resting.intent_id not in found:
                continue
            broker, order_id = found[resting.intent_id]
            try:
                await step(nc, settings, venues[broker], resting, order_id)
            except Exception as exc:
                print(f"resting orders: {resting.intent_id} failed a step ({exc!r}); trying again", flush=True)
        await asyncio.sleep(0.3)


async def step(nc: NatsClient, settings: Settings, venue: SimulatedVenue, resting: Resting, order_id: str) -> None:
    """The next step for one resting order: half of it fills, then the rest fills or mbx is
    asked to cancel it."""
    if resting.steps == 0:
        await venue.trade(order_id, resting.quantity / 2)
        resting.steps = 1
    if resting.fill_rest:
        await venue.trade(order_id)
    else:
        cancel = CancelRequest(
            message_id=f"cancel-{resting.intent_id}",
            correlation_id=resting.intent_id,
            intent_id=resting.intent_id,
            strategy_id=STRATEGY,
            reason="chaos test",
        )
        await nc.jetstream().publish(
            settings.subjects.cancel(STRATEGY),
            cancel.model_dump_json().encode(),
            headers={"Nats-Msg-Id": cancel.message_id},
        )
    resting.handled = True


@pytest.mark.timeout(900)
async def test_a_hundred_kills_in_flight_lose_and_double_nothing(isolated: Settings, tmp_path: Path) -> None:
    settings = isolated
    config_file = tmp_path / "chaos.yaml"
    write_config(settings, config_file)
    nc = await nats.connect(settings.nats_url or "")
    db = make_engine(settings.database_url or "", pool_size=2)
    await prepare(settings, config_file, nc)
    fleet = Fleet(settings, config_file, tmp_path, nc.jetstream())
    book = Book()
    rng = random.Random(20261130)
    done = asyncio.Event()
    resting_task = asyncio.create_task(work_the_resting_orders(nc, settings, book, done))
    await fleet.start_all()

    async def publish_steadily(stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not stop.is_set() and len(book.payloads) < MAX_INTENTS:
            await publish(nc, settings, book.next())
            await asyncio.sleep(max(0.0, started + len(book.payloads) / RATE - loop.time()))

    try:
        stop_publishing = asyncio.Event()
        publisher = asyncio.create_task(publish_steadily(stop_publishing))
        await asyncio.sleep(3.0)  # the fleet is up and busy
        loop = asyncio.get_running_loop()
        began = loop.time()
        killed = [0]

        async def killer(workers: list[Any], seed: int) -> None:
            """Kills among ``workers`` until the fleet has had ``KILLS``; two run at once, on
            different workers, so two processes are often down together."""
            own = random.Random(seed)
            while killed[0] < KILLS:
                own.shuffle(workers)
                for worker in workers:
                    if killed[0] >= KILLS:
                        break
                    if await fleet.kill_in_flight(worker, own):
                        killed[0] += 1
                        if killed[0] % 10 == 0:
                            at = loop.time() - began
                            print(f"{at:6.1f}s {killed[0]} kills, {len(book.payloads)} intents", flush=True)
                assert not publisher.done(), (
                    f"the flow of intents ended ({len(book.payloads)}) after only {killed[0]} kills: "
                    "nothing is left in flight to kill"
                    + (f"; the publisher failed: {publisher.exception()!r}" if publisher.exception() else "")
                )

        await asyncio.gather(killer(fleet.workers[0::2], rng.random()), killer(fleet.workers[1::2], rng.random()))
        stop_publishing.set()
        await publisher

        print(f"{loop.time() - began:6.1f}s kills done; waiting for every intent to end", flush=True)
        deadline = loop.time() + SETTLE_S
        while not (await all_final(db, book.ids) and all(r.handled for r in book.resting.values())):
            if loop.time() >= deadline:
                left = await unfinished(db, book, nc, settings)
                raise AssertionError(f"not every intent ended: {left}\n{fleet.log_tail()}")
            assert not resting_task.done(), f"the resting-order worker stopped: {resting_task.exception()!r}"
            await fleet.restart_exited()
            await asyncio.sleep(1.0)
        print(f"{loop.time() - began:6.1f}s every intent ended", flush=True)
        await asyncio.sleep(3.0)  # a late duplicate would show by now
    finally:
        done.set()
        await fleet.stop_all()
        resting_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await resting_task

    try:
        kills_by_worker = {w.name: w.kills for w in fleet.workers}
        assert sum(kills_by_worker.values()) >= KILLS
        assert min(kills_by_worker.values()) >= 5, f"some worker was hardly killed: {kills_by_worker}"
        await check_outcome(nc, db, settings, book)
    finally:
        await nc.close()
        await db.dispose()


async def test_a_blind_resubmission_is_caught(
    start_pipeline: Any, isolated: Settings, nc: NatsClient, tmp_path: Path
) -> None:
    """The same request-log check, on an executor whose lookup is removed and which dies right
    after placing an order: its restart places that order again without looking, and the
    check names it."""
    config_file = tmp_path / "chaos.yaml"
    write_config(isolated, config_file)
    await start_pipeline(load_config(config_file), executors=False, own_settings=isolated)
    log = tmp_path / "blind.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MBX_")}
    env |= {
        "MBX_NATS_URL": isolated.nats_url or "",
        "MBX_SUBJECT_PREFIX": isolated.subject_prefix,
        "MBX_CONFIG_FILE": str(config_file),
        "MBX_SIM_REQUEST_LOG": "1",
        "MBX_LOG_LEVEL": "WARNING",
    }
    argv = [sys.executable, "-m", "tests.chaos.blind_executor", "worker", "executor", "--broker", "alpaca"]
    with log.open("ab") as out:
        dying = await asyncio.create_subprocess_exec(
            *argv, env=env | {"MBX_FAILPOINTS": "after_place:3"}, stdout=out, stderr=out
        )
        payloads = [intent_payload(strategy_id=STRATEGY) for _ in range(5)]
        for payload in payloads:
            await publish(nc, isolated, payload)
        assert await asyncio.wait_for(dying.wait(), 60) == 137, log.read_text()
        restarted = await asyncio.create_subprocess_exec(*argv, env=env, stdout=out, stderr=out)
    try:
        book = KvOrderBook(nc.jetstream, isolated.topology.sim_book_bucket(BrokerName.ALPACA))

        async def blind() -> dict[str, int]:
            return repeated_without_lookup(await book.requests())

        found = await eventually(blind, timeout=60)
        assert set(found) <= {p["intent_id"] for p in payloads}
    finally:
        restarted.send_signal(signal.SIGTERM)
        await restarted.wait()
