"""Async engine construction. Nothing connects at import time."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from workers.platform.settings import to_sqlalchemy_url


def make_engine(database_url: str, pool_size: int = 5) -> AsyncEngine:
    return create_async_engine(
        to_sqlalchemy_url(database_url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
    )
