"""Ports for the embedded servers: chosen where no outgoing connection will take them, checked
as a server binds, and a cluster node that cannot listen reported at once with its own log.

CI once saw `mbx up --cluster 3` wait 30 s and fail with "did not become ready": the test had
chosen the node ports next to a port the kernel handed out, a connection made meanwhile took one
as its local port, node n2 could not listen there and exited, and n1 only said it had no leader.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.devstack import nats as embedded
from workers.devstack.nats import EmbeddedNatsCluster
from workers.devstack.processes import free_port, port_free, port_open

pytestmark = pytest.mark.integration

CLUSTER = [offset + node for offset in (0, 2000, 4000) for node in range(3)]
"""A three-node cluster's ports from its first client port: clients, routes, monitoring."""


@pytest.fixture
def connection() -> Iterator[socket.socket]:
    """A connection to a listener on loopback: its local port is one the kernel handed out."""
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.create_connection(listener.getsockname()) as client:
        accepted, _ = listener.accept()
        with accepted:
            yield client


def test_a_port_a_connection_uses_is_not_free_though_nothing_listens_there(connection: socket.socket) -> None:
    local = connection.getsockname()[1]
    assert not port_open("127.0.0.1", local)  # what a connection test sees: nobody listens
    assert not port_free("127.0.0.1", local)  # what a server binding there meets


def test_free_ports_lie_below_the_range_outgoing_connections_take_theirs_from(connection: socket.socket) -> None:
    floor = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert connection.getsockname()[1] >= floor  # where the kernel puts a connection's own port
    for _ in range(20):
        base = free_port(offsets=CLUSTER)
        assert base + 4002 < floor
        assert all(port_free("127.0.0.1", base + offset) for offset in CLUSTER)
    single = free_port()
    assert single < floor and port_free("127.0.0.1", single)


def test_a_port_in_use_is_refused_before_any_node_starts(tmp_path: Path) -> None:
    base = free_port(offsets=CLUSTER)
    cluster = EmbeddedNatsCluster(tmp_path / "nats", size=3, port=base)
    with (
        socket.create_server(("127.0.0.1", base + 2001)),  # n2's route port
        pytest.raises(RuntimeError, match=f"port {base + 2001} is already in use"),
    ):
        cluster.start()
    assert cluster.nodes == []  # nothing was started


def test_a_node_that_cannot_listen_is_reported_at_once_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The port is taken after the check (as a connection took it in CI): n2 exits, and the start
    says so with n2's own log rather than waiting out its timeout for a leader."""
    base = free_port(offsets=CLUSTER)
    monkeypatch.setattr(embedded, "port_free", lambda host, port: True)
    cluster = EmbeddedNatsCluster(tmp_path / "nats", size=3, port=base)
    try:
        with socket.create_server(("127.0.0.1", base + 1)), pytest.raises(RuntimeError) as failed:  # n2's clients
            cluster.start(timeout=300)
        message = str(failed.value)
        assert message.startswith("nats-server n2 (cluster) exited with code")
        assert "address already in use" in message
    finally:
        cluster.stop()
