"""MBX_NATS_URL may list several servers (a cluster): workers and the client take the list."""

from __future__ import annotations

import pytest

from contracts.client import MbxClient, split_servers
from tests.builders import make_intent
from tests.servers import Servers
from workers.devstack.processes import free_port
from workers.domain.config import MbxConfig
from workers.entry import build_worker
from workers.platform.settings import Settings

pytestmark = pytest.mark.integration


def test_a_comma_separated_url_is_split_into_servers() -> None:
    assert split_servers(" nats://a:4222, nats://b:4222 ,") == ["nats://a:4222", "nats://b:4222"]
    assert Settings(nats_url="nats://a:4222,nats://b:4222").nats_servers == ["nats://a:4222", "nats://b:4222"]


async def test_workers_and_the_client_connect_through_a_list_with_a_dead_server(servers: Servers) -> None:
    """One listed server is down: the worker and the client reach the other, and an intent is
    routed through them."""
    url = f"nats://127.0.0.1:{free_port()},{servers.nats_url}"
    settings = Settings(nats_url=url, database_url=servers.database_url)
    router = build_worker("router", settings, MbxConfig())
    await router.start()
    try:
        async with MbxClient.connect(url, dont_randomize=True) as mbx:
            ack = await mbx.submit(make_intent())
            assert ack.stream == "ORDERS"
    finally:
        await router.stop()
