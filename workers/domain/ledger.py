"""One intent's entry in the order ledger: which broker holds its order, and how far it got.

The ledger itself (a NATS KV bucket) is ``workers.platform.order_ledger``; this is the record.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict

from contracts import BrokerName, OrderStatus, RouteDecision


class LedgerEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    intent_id: str
    broker: BrokerName
    attempt: int
    status: OrderStatus
    report_seq: int = 0
    broker_order_id: str = ""
    filled_quantity: Decimal = Decimal(0)
    fill_count: int = 0
    unsent_delivery: int = 0
    """The delivery of the route that last failed before reaching the broker (0: none)."""
    unsent_since: float = 0.0
    """When (UNIX time) this attempt's first request that never reached the broker was refused:
    how long the route has waited for its broker (0: it has not)."""
    decision: RouteDecision | None = None
    """The route, kept while the order works, so reports can be built after a restart."""

    @classmethod
    def of(cls, route: RouteDecision, status: OrderStatus, **fields: Any) -> LedgerEntry:
        """The entry of ``route``'s attempt in ``status``."""
        return cls(intent_id=route.intent_id, broker=route.broker, attempt=route.attempt, status=status, **fields)

    def may_exist(self, route: RouteDecision) -> bool:
        """Whether an order of ``route``'s attempt may be at the broker: one was found, or a
        request was sent whose answer was lost (``unknown``), or one was about to be sent
        (``submitted``, the mark written before sending at brokers without client ids)."""
        if self.broker != route.broker or self.attempt != route.attempt:
            return False
        return bool(self.broker_order_id) or self.status not in (OrderStatus.NEW, OrderStatus.REJECTED)

    @property
    def working(self) -> bool:
        return bool(self.broker_order_id) and not self.status.is_terminal
