"""The real nats-server and PostgreSQL a test session runs against.

Default: both from their wheels, on free ports, in a temporary directory. With
``MBX_TEST_DOCKER=1``: testcontainers. With ``MBX_TEST_NATS_URL`` / ``MBX_TEST_DATABASE_URL``:
servers you already run (the database must be empty or an mbx database).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from workers.devstack.nats import EmbeddedNats
from workers.devstack.postgres import EmbeddedPostgres
from workers.devstack.processes import free_port


@dataclass(frozen=True)
class Servers:
    nats_url: str
    database_url: str
    postgres: EmbeddedPostgres | None  # None when the database is external
    nats_monitor_url: str | None = None  # the embedded server's /varz, /jsz


@contextmanager
def _docker() -> Iterator[tuple[str, str]]:
    from testcontainers.nats import NatsContainer
    from testcontainers.postgres import PostgresContainer

    with (
        NatsContainer("nats:2.12-alpine").with_command("-js") as nats_c,
        PostgresContainer("postgres:17-alpine", driver=None) as pg_c,
    ):
        yield nats_c.nats_uri(), pg_c.get_connection_url()


@contextmanager
def session_servers(tmp: Path) -> Iterator[Servers]:
    with ExitStack() as stack:
        nats_url = os.environ.get("MBX_TEST_NATS_URL")
        database_url = os.environ.get("MBX_TEST_DATABASE_URL")
        postgres = None
        monitor = None
        if os.environ.get("MBX_TEST_DOCKER") == "1" and not (nats_url or database_url):
            nats_url, database_url = stack.enter_context(_docker())
        if not nats_url:
            server = EmbeddedNats(tmp / "nats", monitor_port=free_port())
            server.start()
            stack.callback(server.stop)
            nats_url = server.url
            monitor = f"http://127.0.0.1:{server.monitor_port}"
        if not database_url:
            postgres = EmbeddedPostgres(tmp / "postgres")
            postgres.start()
            stack.callback(postgres.stop)
            database_url = postgres.url()
        yield Servers(nats_url, database_url, postgres, monitor)
