"""Chaos at cluster level: three nats-servers and two processes of every worker while 500 mixed
intents flow. The node leading the ORDERS stream is SIGKILLed (as a lost host) and restarted,
then the node leading EXECUTIONS, then one process of every worker (router, each executor,
aggregator). Every stream and KV bucket is kept on all three nodes (``MBX_STREAM_REPLICAS=3``);
the strategy publishes through the client library's retry.

The routing config keeps the default heartbeat timeout (5 s): an election that holds up the
executors' heartbeats must not pass for a broker outage (the router holds intents while brokers
are *unsure*, it does not reject them). Paper cash and rate limits are ample, so afterwards every
intent has ended filled, exactly once: one order at its broker (Schwab's by attribution), one
final report on the bus, one ``orders`` row with fills that add up. Printed: how long each stream
went without a leader, the longest stall (no intent ended in Postgres while some were open) and
the longest time from an intent's publish to its final state.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.chaos.fleet import Fleet
from tests.chaos.outcome import Book, all_final, check_outcome, prepare, publish, unfinished, write_config
from tests.conftest import fetch_all, new_database
from tests.servers import Servers
from workers.devstack.nats import EmbeddedNats, EmbeddedNatsCluster
from workers.domain.config import RoutingConfig
from workers.platform.bus import use_replicas
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings

pytestmark = pytest.mark.integration

NODES = 3
REPLICAS = 2
INTENTS = 500
RATE = 10.0
"""Intents published per second (the fleet's 14 processes and three servers share two cores)."""
DOWN_FOR = 5
"""Seconds (at RATE: intents) a killed node or worker stays down."""
KILL_ORDERS_LEADER_AT = 80
KILL_EXECUTIONS_LEADER_AT = 200
KILL_REPLICAS_AT = 320
SETTLE_S = 180.0
"""Time the last intents get to end: a killed router's or aggregator's messages come back after
its consumer's 30 s ack wait."""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedNatsCluster]:
    nodes = EmbeddedNatsCluster(tmp_path / "nats", size=NODES)
    nodes.start()
    use_replicas(NODES)  # what this process creates (streams, the config bucket) lives on every node
    try:
        yield nodes
    finally:
        use_replicas(1)
        nodes.stop()


@pytest.fixture
async def cluster_settings(cluster: EmbeddedNatsCluster, servers: Servers) -> Settings:
    database = await new_database(servers, f"cl{uuid.uuid4().hex[:10]}")
    return Settings(nats_url=cluster.url, database_url=database, stream_replicas=NODES)


async def quiet(_exc: Exception) -> None:
    """Connection errors while a node is down are expected; nats-py would print them."""


@dataclass
class Watch:
    """What the test saw: each stream's time without a leader, and the longest stall."""

    elections: dict[str, float] = field(default_factory=dict)
    longest_stall_s: float = 0.0
    stall_ended_at_s: float = 0.0
    """When the longest stall ended, in seconds from the first intent."""
    ended: int = 0
    began: float = field(default_factory=time.monotonic)
    published: dict[str, float] = field(default_factory=dict)
    """Each intent's publish time (epoch seconds)."""


async def longest_to_final(db: AsyncEngine, watch: Watch) -> tuple[float, str]:
    """The longest time from an intent's publish to its final order row, and that intent."""
    rows = await fetch_all(
        db, "SELECT intent_id, updated_at FROM orders WHERE intent_id = ANY(:ids)", ids=list(watch.published)
    )
    took = {r["intent_id"]: r["updated_at"].timestamp() - watch.published[r["intent_id"]] for r in rows}
    slowest = max(took, key=took.__getitem__)
    return round(took[slowest], 1), slowest


async def leader(nc: NatsClient, stream: str) -> str | None:
    with contextlib.suppress(Exception):
        info = await nc.jetstream(timeout=1.0).stream_info(stream)
        return info.cluster.leader if info.cluster else None
    return None


async def kill_leader(nc: NatsClient, cluster: EmbeddedNatsCluster, stream: str, watch: Watch) -> EmbeddedNats:
    """SIGKILL the node leading ``stream``; record how long the stream was without a leader."""
    name = await leader(nc, stream)
    assert name, f"{stream} has no leader before the kill"
    node = cluster.node(name)
    node.kill()
    killed_at = time.monotonic()
    print(f"{time.monotonic() - watch.began:5.1f}s killed {name}, leader of {stream}", flush=True)

    async def elect() -> None:
        while True:
            now = await leader(nc, stream)
            if now not in (None, name):
                break
            await asyncio.sleep(0.1)
        watch.elections[stream] = round(time.monotonic() - killed_at, 1)
        print(f"{stream}: new leader {now} after {watch.elections[stream]} s", flush=True)

    asyncio.get_running_loop().create_task(elect())
    return node


async def follow_endings(db: AsyncEngine, book: Book, watch: Watch, done: asyncio.Event) -> None:
    """The longest time no intent ended while some were open (sampled every half second), from
    the first that ended."""
    last_change: float | None = None
    while not done.is_set():
        ids = book.ids
        rows = await fetch_all(
            db,
            "SELECT count(*) AS n FROM orders WHERE intent_id = ANY(:ids) AND status IN "
            "('filled', 'cancelled', 'rejected', 'failed', 'expired')",
            ids=ids,
        )
        ended, now = int(rows[0]["n"]), time.monotonic()
        if ended and last_change is None:
            last_change = now
        if last_change is not None and (ended != watch.ended or ended == len(ids)):
            if now - last_change > watch.longest_stall_s:
                watch.longest_stall_s = round(now - last_change, 1)
                watch.stall_ended_at_s = round(now - watch.began, 1)
            watch.ended, last_change = ended, now
        await asyncio.sleep(0.5)


@pytest.mark.timeout(600)
async def test_a_cluster_loses_nodes_and_workers_and_every_intent_fills_exactly_once(
    cluster: EmbeddedNatsCluster, cluster_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two leader kills and a kill of one process of every worker delay intents; none is lost,
    doubled or rejected: each fills exactly once."""
    settings = cluster_settings
    config_file = tmp_path / "cluster.yaml"
    # The default heartbeat timeout: an election must not pass for a broker outage.
    write_config(settings, config_file, heartbeat_timeout_s=RoutingConfig().heartbeat_timeout_s)
    nc = await nats.connect(servers=cluster.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2, error_cb=quiet)
    db = make_engine(settings.database_url or "", pool_size=2)
    await prepare(settings, config_file, nc)
    fleet = Fleet(settings, config_file, tmp_path, nc.jetstream(), replicas=REPLICAS)
    book = Book(resting=False)
    watch = Watch()
    done = asyncio.Event()
    follower = asyncio.create_task(follow_endings(db, book, watch, done))
    await fleet.start_all()
    await fleet.ready()
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        watch.began = time.monotonic()
        down: list[EmbeddedNats] = []
        for i in range(INTENTS):
            if i == KILL_ORDERS_LEADER_AT:
                down.append(await kill_leader(nc, cluster, settings.subjects.stream_name("ORDERS"), watch))
            elif i == KILL_EXECUTIONS_LEADER_AT:
                down.append(await kill_leader(nc, cluster, settings.subjects.stream_name("EXECUTIONS"), watch))
            elif i == KILL_REPLICAS_AT:
                for kind in fleet.kinds:
                    await fleet.kill(fleet.replicas_of(kind)[0])
                print(f"killed one process of each of {len(fleet.kinds)} workers", flush=True)
            elif i in (KILL_ORDERS_LEADER_AT + DOWN_FOR * RATE, KILL_EXECUTIONS_LEADER_AT + DOWN_FOR * RATE):
                await asyncio.to_thread(cluster.restart, down.pop())
            elif i == KILL_REPLICAS_AT + DOWN_FOR * RATE:
                await fleet.restart_exited()
            payload = book.next()
            await publish(nc, settings, payload)
            watch.published[payload["intent_id"]] = time.time()
            await asyncio.sleep(max(0.0, started + (i + 1) / RATE - loop.time()))

        deadline = loop.time() + SETTLE_S
        while not await all_final(db, book.ids):
            if loop.time() >= deadline:
                left = await unfinished(db, book, nc, settings)
                raise AssertionError(f"not every intent ended: {left}\n{fleet.log_tail()}")
            await asyncio.sleep(1.0)
        await asyncio.sleep(3.0)  # a late duplicate would show by now
    finally:
        done.set()
        await fleet.stop_all()
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await follower

    try:
        # Every intent's expected outcome is a fill (market orders, ample cash and rate limits).
        await check_outcome(nc, db, settings, book, kills_in_flight=False)
        slowest_s, slowest = await longest_to_final(db, watch)
        streams = {settings.subjects.stream_name(s) for s in ("ORDERS", "EXECUTIONS")}
        assert set(watch.elections) == streams, f"a stream never got a new leader: {watch.elections}"
        with capsys.disabled():
            print(
                f"\ncluster chaos: {INTENTS} intents, {NODES} nodes, {REPLICAS} processes of each worker; "
                f"new stream leader after {watch.elections} s; longest stall {watch.longest_stall_s} s "
                f"(ended {watch.stall_ended_at_s} s into the run); longest publish to final {slowest_s} s "
                f"({slowest}); "
                f"{sum(w.kills for w in fleet.workers)} worker processes killed; all filled, 0 lost, 0 doubled",
                flush=True,
            )
    finally:
        await nc.close()
        await db.dispose()
