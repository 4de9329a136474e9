"""Async engine construction. Nothing connects at import time."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from workers.platform.settings import to_sqlalchemy_url

CONNECT_TIMEOUT_S = 5
"""Seconds to open a connection: a database that does not answer is an outage, not a wait."""


def make_engine(database_url: str, pool_size: int = 5, connect_timeout: float = CONNECT_TIMEOUT_S) -> AsyncEngine:
    return create_async_engine(
        to_sqlalchemy_url(database_url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=max(connect_timeout * 2, 1),
        connect_args={"connect_timeout": max(int(connect_timeout), 1)},
    )
