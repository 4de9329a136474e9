"""The portfolio the aggregator serves: the read model's, plus fresh snapshots on request."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import BrokerName, PositionSnapshot, Subjects
from workers.aggregator.persistence import AuditStore, Envelope
from workers.readmodel.portfolio import PortfolioReader


class PortfolioAggregator(PortfolioReader):
    """``request`` (a NATS request function) lets ``sync_all`` ask every executor for a fresh
    snapshot, which is stored before the portfolio is read."""

    def __init__(
        self,
        engine: AsyncEngine,
        subjects: Subjects | None = None,
        request: Callable[[str, bytes, float], Any] | None = None,
    ) -> None:
        super().__init__(engine)
        self.subjects = subjects or Subjects()
        self._request = request
        self.store = AuditStore(engine)

    async def sync_all(self, timeout: float = 5.0) -> dict[BrokerName, str]:
        """Ask every broker's executor for a snapshot now and store the answers; returns, per
        broker, ``ok`` or why there is no fresh snapshot."""
        if self._request is None:
            raise RuntimeError("sync_all needs a NATS connection")
        outcome: dict[BrokerName, str] = {}
        fresh: list[Envelope] = []
        for broker in BrokerName:
            subject = self.subjects.snapshot_request(broker)
            try:
                reply = await self._request(subject, b"", timeout)
                data = json.loads(reply.data)
                if "error" in data:
                    outcome[broker] = str(data["error"])
                    continue
                snapshot = PositionSnapshot.model_validate(data)
            except Exception as exc:  # noqa: BLE001  (a broker without an executor: say so, go on)
                outcome[broker] = f"no snapshot ({type(exc).__name__})"
                continue
            fresh.append(Envelope(self.subjects.positions(broker), snapshot))
            outcome[broker] = "ok"
        await self.store.apply(fresh)
        return outcome
