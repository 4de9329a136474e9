"""Chaos (issue 30): the parent-order worker is SIGKILLed at least 30 times, each time just after it
fetched work, while 50 parents (split, TWAP, TWAP with split, iceberg) are worked, and the
nats-server itself is SIGKILLed and restarted once mid-way.

Every worker is a process of its own (``Fleet`` with the parent-order worker), on a nats-server of
this test's own with ``sync_interval: always``: the simulated brokers keep their books in its KV,
and a broker keeps its book whatever happens to our NATS, so the server must not lose what it
acknowledged (the lazy-fsync profile is ``test_nats_server_crash``'s subject, with in-memory
books). Afterwards, from the bus, the KV journal, the brokers' books and Postgres: every parent
has exactly one final report and filled; its children are exactly the intents stored for it,
each stored once, placed once, filled once, one ``orders`` row each, with fills adding up to the
parent's quantity; TWAP and iceberg parents have every slice; no parent is left active and
nothing went to the dead-letter stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import DeadLetter, OrderIntent, ParentReport, ParentStatus
from tests.builders import intent_payload
from tests.chaos.fleet import Fleet, WorkerProcess
from tests.chaos.outcome import STRATEGY, books, prepare, publish, write_config
from tests.conftest import fetch_all, new_database
from tests.servers import Servers
from workers.devstack.nats import EmbeddedNats
from workers.domain.parents import schedule
from workers.executor.same_shape import SameShapeGuard
from workers.parents.journal import ParentJournal
from workers.platform.bus import read_stream
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings
from workers.venues.simulated.book import repeated_without_lookup

pytestmark = pytest.mark.integration

PARENTS = 50
PUBLISH_OVER_S = 18.0
KILLS = 30
"""Kills that must land."""
KILL_UP_TO = 36
"""Kills aimed for, a margin above ``KILLS``. Not more: a worker killed every half second, as
soon as it fetched anything, spends its life starting up and no parent ever ends."""
SERVER_DOWN_AT = 25
"""The nats-server is killed just before this parent is published."""
DOWN_FOR_S = 4.0
SETTLE_S = 120.0
"""Time the parents get to end once every one is published and the kills are done."""


def parent_book(run: str) -> list[dict[str, Any]]:
    """Market buys of equities that four brokers take: split across brokers, TWAP (5 to 10
    slices over 10 to 20 s, the later parents the longer ones, so work stays in flight for the
    kills), TWAP with each slice split, and icebergs showing a quarter."""
    payloads = []
    for i in range(PARENTS):
        kind = i % 4
        quantity = 40 + 4 * (i % 7)
        if kind == 0:
            execution: dict[str, Any] = {"split": {}}
            symbol = "AAPL"
        elif kind == 1:
            execution = {"twap": {"duration_s": 10 + 10 * i // PARENTS, "slices": 5 + i % 6}}
            symbol = "MSFT"
        elif kind == 2:
            execution = {"twap": {"duration_s": 10 + 10 * i // PARENTS, "slices": 6}, "split": {}}
            symbol = "NVDA"
        else:
            execution = {"iceberg": {"display_quantity": str(quantity // 4)}}
            symbol = "KO"
        payloads.append(
            intent_payload(
                intent_id=f"pk{run}-{i:03d}",
                strategy_id=STRATEGY,
                symbol=symbol,
                quantity=str(quantity),
                execution=execution,
            )
        )
    return payloads


@pytest.fixture
async def crashable_nats(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "nats", sync_always=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def own_settings(crashable_nats: EmbeddedNats, servers: Servers, tmp_path: Path) -> Settings:
    name = f"pk{uuid.uuid4().hex[:10]}"
    url = await new_database(servers, name)
    return Settings(
        nats_url=crashable_nats.url, database_url=url, subject_prefix=name, data_dir=tmp_path, config_file=None
    )


async def final_reports(nc: NatsClient, settings: Settings) -> dict[str, list[ParentReport]]:
    stored = await read_stream(
        nc.jetstream(), settings.subjects.stream_name("EXECUTIONS"), settings.subjects.parent_report("*", STRATEGY)
    )
    finals: dict[str, list[ParentReport]] = defaultdict(list)
    for msg in stored:
        report = ParentReport.model_validate_json(msg.data)
        if report.final:
            finals[report.intent_id].append(report)
    return finals


async def kill_parents_worker(fleet: Fleet, worker: WorkerProcess, ended: asyncio.Event, log: list[float]) -> None:
    """Kill the parent-order worker in flight ``KILL_UP_TO`` times, or until every parent has ended
    (``KILLS`` at least must land: checked afterwards)."""
    rng = random.Random(20260530)
    began = time.monotonic()
    while len(log) < KILL_UP_TO and not ended.is_set():
        if await fleet.kill_in_flight(worker, rng):
            log.append(time.monotonic() - began)
            if len(log) % 10 == 0:
                print(f"{log[-1]:6.1f}s {len(log)} kills", flush=True)


@pytest.mark.timeout(420)
async def test_thirty_parent_worker_kills_and_a_server_restart_send_every_child_once(
    crashable_nats: EmbeddedNats, own_settings: Settings, tmp_path: Path
) -> None:
    settings = own_settings
    config_file = tmp_path / "chaos.yaml"
    write_config(settings, config_file)
    nc = await nats.connect(settings.nats_url or "", max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    db = make_engine(settings.database_url or "", pool_size=2)
    await prepare(settings, config_file, nc)
    fleet = Fleet(settings, config_file, tmp_path, nc.jetstream(), with_parents=True)
    [worker] = fleet.replicas_of("parents")
    payloads = parent_book(uuid.uuid4().hex[:6])
    ids = [p["intent_id"] for p in payloads]
    kill_times: list[float] = []
    ended = asyncio.Event()
    restarted_server = False
    loop = asyncio.get_running_loop()
    await fleet.start_all()
    killer: asyncio.Task[None] | None = None
    try:
        await fleet.ready()
        began = loop.time()
        killer = asyncio.create_task(kill_parents_worker(fleet, worker, ended, kill_times))
        for i, payload in enumerate(payloads):
            if i == SERVER_DOWN_AT:
                assert crashable_nats.proc is not None
                crashable_nats.proc.kill()
                crashable_nats.proc.wait(10)
                await asyncio.sleep(DOWN_FOR_S)
                crashable_nats.start()
                restarted_server = True
            await publish(nc, settings, payload)
            await asyncio.sleep(max(0.0, began + (i + 1) * PUBLISH_OVER_S / PARENTS - loop.time()))
        print(f"{loop.time() - began:6.1f}s {PARENTS} parents published, {worker.kills} kills", flush=True)

        deadline = loop.time() + SETTLE_S
        while True:
            finals = await final_reports(nc, settings)
            if all(i in finals for i in ids) and killer.done():
                break
            if all(i in finals for i in ids) and not ended.is_set():
                ended.set()  # nothing left in flight: no kill could land any more
                print(f"{loop.time() - began:6.1f}s every parent ended; {worker.kills} kills", flush=True)
            if loop.time() >= deadline:
                missing = [i for i in ids if i not in finals]
                raise AssertionError(
                    f"{len(missing)} parents without a final report, e.g. {missing[:5]}; "
                    f"{worker.kills} kills\n{fleet.log_tail()}"
                )
            await fleet.restart_exited()
            await asyncio.sleep(1.0)
        await killer
        print(f"{loop.time() - began:6.1f}s kills done and every parent ended; {worker.kills} kills", flush=True)
        await asyncio.sleep(3.0)  # a late duplicate would show by now
    finally:
        ended.set()
        if killer is not None and not killer.done():
            killer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await killer
        print(f"{loop.time() - began:6.1f}s kills done and every parent ended; {worker.kills} kills", flush=True)
        await fleet.stop_all()

    try:
        assert restarted_server
        await check_parents(nc, db, settings, payloads, worker.kills)
    finally:
        await nc.close()
        await db.dispose()


async def check_parents(
    nc: NatsClient, db: AsyncEngine, settings: Settings, payloads: list[dict[str, Any]], kills: int
) -> None:
    js = nc.jetstream()
    parents = {p["intent_id"]: OrderIntent.model_validate(p) for p in payloads}
    assert kills >= KILLS, f"only {kills} kills of the parent-order worker landed"

    # The bus: exactly one final report per parent, and every parent filled (nothing here may fall
    # short: every broker is unthrottled, rich and up, and market orders fill at once).
    finals = await final_reports(nc, settings)
    twice = {i: [r.status for r in rs] for i, rs in finals.items() if len(rs) != 1}
    assert not twice, f"parents with several final reports: {twice}"
    assert set(finals) == set(parents)
    final = {i: rs[0] for i, rs in finals.items()}
    short = {
        i: (r.status, r.filled_quantity, r.reason) for i, r in final.items() if r.status is not ParentStatus.FILLED
    }
    assert not short, f"{len(short)} parents did not fill: {short}"

    # The children: exactly the intents stored for each parent on the strategy's intent subject,
    # each stored once, with quantities adding up to the parent's and every slice there.
    stored: Counter[str] = Counter()
    stored_children: dict[str, dict[str, OrderIntent]] = defaultdict(dict)
    for msg in await read_stream(js, settings.subjects.stream_name("ORDERS"), settings.subjects.intent(STRATEGY)):
        intent = OrderIntent.model_validate_json(msg.data)
        parent = intent.metadata.get("parent")
        if parent is not None:
            stored[intent.intent_id] += 1
            stored_children[parent][intent.intent_id] = intent
    assert not {i: n for i, n in stored.items() if n > 1}, "a child intent was stored more than once"
    child_quantity: dict[str, Decimal] = {}
    parent_of: dict[str, str] = {}
    for parent_id, parent in parents.items():
        report = final[parent_id]
        children = {c.intent_id: c for c in report.children}
        assert set(children) == set(stored_children[parent_id]), parent_id
        assert report.filled_quantity == parent.quantity, parent_id
        assert sum(c.quantity for c in children.values()) == parent.quantity, parent_id
        unfilled = [c for c in children.values() if c.status != "filled" or c.filled_quantity != c.quantity]
        assert not unfilled, f"{parent_id} reported filled with children not filled: {unfilled}"
        slices = len(schedule(parent, datetime.now(UTC)))
        assert {c.slice_number for c in children.values()} == set(range(slices)), parent_id
        for child in stored_children[parent_id].values():
            assert child.quantity == children[child.intent_id].quantity
            child_quantity[child.intent_id] = children[child.intent_id].quantity
            parent_of[child.intent_id] = parent_id
    assert sum(1 for r in final.values() if r.execution and r.execution.split and len(r.children) > 1) > 0

    # The brokers: each child placed exactly once, filled there, and never placed again without
    # a lookup that found nothing first.
    placed: Counter[str] = Counter()
    for broker, book in books(nc, settings).items():
        guard = SameShapeGuard(
            nc.jetstream, settings.topology.shape_locks_bucket, settings.topology.attributions_bucket, str(broker)
        )
        for order in await book.all():
            owner = order.client_order_id or await guard.owner(order.broker_order_id) or f"unattributed {order}"
            placed[owner] += 1
            assert owner in child_quantity, f"an order at {broker} that no child owns: {owner}"
            assert order.filled_quantity == child_quantity[owner], (owner, order)
        blind = repeated_without_lookup(await book.requests())
        assert blind == {}, f"placed again at {broker} without a lookup that found nothing: {blind}"
    assert {i: n for i, n in placed.items() if n != 1} == {}
    assert set(placed) == set(child_quantity), f"children never placed: {sorted(set(child_quantity) - set(placed))}"

    # Postgres: one filled orders row per child, linked to its parent, with fills adding up.
    rows = await fetch_all(
        db,
        "SELECT o.intent_id, o.parent_intent_id, o.status, o.filled_quantity, "
        "count(*) OVER (PARTITION BY o.intent_id) AS n, "
        "(SELECT coalesce(sum(t.quantity), 0) FROM trade_logs t WHERE t.intent_id = o.intent_id) AS traded "
        "FROM orders o WHERE o.intent_id = ANY(:ids)",
        ids=list(child_quantity),
    )
    assert len(rows) == len(child_quantity), f"{len(rows)} order rows for {len(child_quantity)} children"
    off = [
        dict(r)
        for r in rows
        if r["n"] != 1
        or r["status"] != "filled"
        or Decimal(r["traded"]) != child_quantity[r["intent_id"]]
        or Decimal(r["filled_quantity"]) != child_quantity[r["intent_id"]]
        or r["parent_intent_id"] != parent_of[r["intent_id"]]
    ]
    assert not off, f"{len(off)} child order rows disagree, e.g. {off[:3]}"
    traded: dict[str, Decimal] = defaultdict(Decimal)
    for r in rows:
        traded[parent_of[r["intent_id"]]] += Decimal(r["traded"])
    assert traded == {i: r.filled_quantity for i, r in final.items()}

    # The journal: no parent left active; and nothing went to the dead-letter stream.
    journal = ParentJournal(nc.jetstream, settings.topology.parents_bucket)
    assert await journal.active() == []
    letters = [
        DeadLetter.model_validate_json(m.data)
        for m in await read_stream(js, settings.subjects.stream_name("DLQ"), settings.subjects.dlq("*"))
    ]
    assert not letters, [(d.original_subject, d.error) for d in letters[:5]]
    print(f"{len(child_quantity)} children of {len(parents)} parents, {kills} kills", flush=True)
