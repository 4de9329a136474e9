"""A three-node cluster on loopback: streams and KV buckets get the copies MBX_STREAM_REPLICAS
asks for (raised in place, never lowered by a process started without the setting), and
`mbx up` refuses cluster settings that cannot work, saying why."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient
from typer.testing import CliRunner

from contracts import Subjects
from workers.cli.main import app
from workers.devstack.nats import EmbeddedNatsCluster
from workers.platform.bus import ensure_streams, jetstream, open_bucket, use_replicas

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNatsCluster]:
    nodes = EmbeddedNatsCluster(tmp_path_factory.mktemp("cluster"), size=3)
    nodes.start()
    yield nodes
    nodes.stop()


@pytest.fixture
async def cnc(cluster: EmbeddedNatsCluster) -> AsyncIterator[NatsClient]:
    nc = await nats.connect(servers=cluster.urls)
    yield nc
    use_replicas(1)
    await nc.close()


async def copies(nc: NatsClient, stream: str) -> int:
    info = await nc.jetstream().stream_info(stream)
    return info.config.num_replicas or 1


async def test_streams_and_buckets_get_their_copies_raised_and_never_lowered(cnc: NatsClient) -> None:
    js = jetstream(cnc)
    subjects = Subjects("rep")
    use_replicas(1)  # made on the cluster before anyone asked for copies
    await ensure_streams(js, subjects)
    await open_bucket(js, "rep_status")
    assert await copies(cnc, subjects.stream_name("ORDERS")) == 1
    assert await copies(cnc, "KV_rep_status") == 1

    use_replicas(3)  # a worker started with MBX_STREAM_REPLICAS=3
    await ensure_streams(js, subjects)
    await open_bucket(js, "rep_status")
    assert {await copies(cnc, s.name) for s in subjects.streams} == {3}
    assert await copies(cnc, "KV_rep_status") == 3

    use_replicas(1)  # an operator's process without the setting must not undo it
    await ensure_streams(js, subjects)
    await open_bucket(js, "rep_status")
    assert {await copies(cnc, s.name) for s in subjects.streams} == {3}
    assert await copies(cnc, "KV_rep_status") == 3


def test_the_cluster_starts_with_every_node_healthy_and_names_its_nodes(cluster: EmbeddedNatsCluster) -> None:
    assert len(cluster.urls) == 3 and cluster.url == ",".join(cluster.urls)
    # /healthz also waits for every stream copy to be current (just raised ones catch up first)
    deadline = time.monotonic() + 20
    while not all(node.healthy() for node in cluster.nodes) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(node.healthy() for node in cluster.nodes)
    varz = cluster.node("n2").monitor("/varz")
    assert varz["server_name"] == "n2"
    assert {route["remote_name"] for route in cluster.node("n1").monitor("/routez")["routes"]} >= {"n2", "n3"}  # type: ignore[index, union-attr]


def test_up_refuses_cluster_settings_that_cannot_work(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"MBX_DATA_DIR": str(tmp_path), "COLUMNS": "200", "MBX_NATS_URL": ""}
    cases = [
        ({"MBX_STREAM_REPLICAS": "3"}, [], "needs a cluster: add --cluster 3"),
        ({"MBX_STREAM_REPLICAS": "3"}, ["--cluster", "2"], "more copies than --cluster 2 has nodes"),
        ({"MBX_NATS_URL": "nats://127.0.0.1:1"}, ["--cluster", "3"], "unset MBX_NATS_URL"),
    ]
    for extra, args, said in cases:
        result = runner.invoke(app, ["up", "--no-dashboard", *args], env=env | extra)
        assert result.exit_code == 2, (args, result.output)
        assert said in " ".join(result.output.split()), result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
