"""The venue adapter protocol and the errors adapters translate broker failures into.

Nothing above an adapter knows a broker SDK's exception types: adapters raise these instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

from contracts import AccountSnapshot, AssetClass, BrokerName, OrderIntent, OrderStatus, PositionLine
from workers.domain.capabilities import VenueCapabilities


class VenueError(Exception):
    """Base of all venue failures."""


class VenueRejected(VenueError):
    """The broker definitively refused the order. ``order_specific`` rejections (bad quantity,
    unknown symbol) fail at any broker; the others (no buying power, unsupported) may succeed
    elsewhere."""

    def __init__(self, reason_code: str, reason: str, *, order_specific: bool) -> None:
        super().__init__(reason)
        self.reason_code = reason_code
        self.reason = reason
        self.order_specific = order_specific


class VenueUnavailable(VenueError):
    """The request provably did not reach the broker (connection refused, 429, the rate budget,
    the day's order calls): safe to retry, and a condition that passes. ``retry_after``: seconds
    until the broker is worth asking again (0 when nobody knows: a down broker is probed again
    on the executor's own schedule)."""

    reason_code = "broker_down"
    """What a failover for this condition says (``FailoverEvent.reason_code``)."""

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class VenueRateLimited(VenueUnavailable):
    """The broker answered 429: the request was refused before doing anything. ``retry_after``
    is the broker's reset hint in seconds (Retry-After, X-RateLimit-Reset)."""

    reason_code = "rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, retry_after)


class VenueAuthFailed(VenueUnavailable):
    """The broker refused the credentials (401, or 403 meaning auth): nothing was done, and
    nothing will be until an operator renews the keys; the broker counts as down meanwhile."""


class VenueAmbiguous(VenueError):
    """The request may have reached the broker (timeout after sending): look the order up
    before anything is retried."""


class VenueDuplicate(VenueError):
    """The broker refused the order because its client order id was used before (Alpaca's 422,
    IBKR's error 103): the order exists; look it up."""


@dataclass(frozen=True, slots=True)
class VenueFill:
    fill_id: str
    quantity: Decimal
    price: Decimal
    fee: Decimal
    executed_at: datetime


@dataclass(slots=True)
class VenueOrder:
    """An order as the broker knows it. ``client_order_id`` is empty at brokers without one."""

    broker_order_id: str
    client_order_id: str
    status: OrderStatus
    quantity: Decimal
    symbol: str = ""
    side: str = ""
    asset_class: str = ""
    limit_price: Decimal | None = None
    submitted_at: datetime | None = None
    filled_quantity: Decimal = Decimal(0)
    average_price: Decimal | None = None
    fees: Decimal = Decimal(0)
    fills: list[VenueFill] = field(default_factory=list)
    reason: str = ""

    @property
    def leaves_quantity(self) -> Decimal:
        if self.status.is_terminal:
            return Decimal(0)
        return max(self.quantity - self.filled_quantity, Decimal(0))


def cancellable(order: VenueOrder | None, broker: str, broker_order_id: str) -> VenueOrder:
    """The order, when it can still be cancelled; else the refusal every venue gives
    (``unknown_order``, ``too_late_to_cancel``)."""
    if order is None:
        raise VenueRejected("unknown_order", f"{broker} has no order {broker_order_id}", order_specific=True)
    if order.status.is_terminal:
        raise VenueRejected(
            "too_late_to_cancel", f"order {broker_order_id} is already {order.status}", order_specific=True
        )
    return order


class RequestGate(Protocol):
    """What an adapter asks before each request that counts against the broker's limit (the
    executor's rate budget, shared by its replicas), and tells when the broker refused one."""

    async def take(self) -> None:
        """Wait for a token; raises a ``VenueUnavailable`` (nothing sent) when none comes soon."""
        ...

    async def refused(self, retry_after: float) -> None:
        """The broker answered 429: nothing may be sent for ``retry_after`` seconds."""
        ...


class OpenGate:
    """No budget (an adapter on its own, as in the contract tests): every request may go."""

    async def take(self) -> None:
        return None

    async def refused(self, retry_after: float) -> None:
        return None


@runtime_checkable
class SupportsRequestGate(Protocol):
    """A venue that counts its own requests (every adapter): the executor hands it its budget."""

    def use_gate(self, gate: RequestGate) -> None: ...


class Venue(Protocol):
    """What every broker adapter provides (real or simulated)."""

    @property
    def broker(self) -> BrokerName: ...

    @property
    def capabilities(self) -> VenueCapabilities: ...

    async def connect(self) -> None: ...

    async def disconnect(self) -> None: ...

    @property
    def is_connected(self) -> bool: ...

    @property
    def down_because(self) -> str:
        """Why the broker counts as down ("" when it is up), in words an operator can act on."""
        ...

    async def place_order(self, intent: OrderIntent, client_order_id: str) -> VenueOrder: ...

    async def locate(
        self, intent: OrderIntent, client_order_id: str, since: datetime, exclude: frozenset[str] = frozenset()
    ) -> VenueOrder | None:
        """Find an order this intent may have placed: by client order id where the broker has
        one, else by listing recent orders and matching symbol, side and size (skipping the
        broker order ids in ``exclude``, which belong to other intents)."""
        ...

    async def get_order(self, broker_order_id: str) -> VenueOrder | None: ...

    async def cancel_order(self, broker_order_id: str) -> VenueOrder:
        """Cancel a working order and return it as it now stands; raises ``VenueRejected``
        (``too_late_to_cancel``) when it already ended, with the order's status in the reason."""
        ...

    async def get_account(self) -> AccountSnapshot: ...

    async def get_positions(self) -> list[PositionLine]: ...

    def supported_assets(self) -> frozenset[AssetClass]: ...


@runtime_checkable
class SupportsFaults(Protocol):
    """A venue whose failures can be switched at runtime (the simulator, the fake brokers):
    ``mbx fault`` and ``mbx.control.<broker>`` reach it through the executor."""

    def switch_faults(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply ``changes`` by fault name (ValueError names a bad one) and return every fault."""
        ...


@runtime_checkable
class SupportsWarning(Protocol):
    """A venue that can tell ahead of a failure what an operator should do (Schwab's login,
    which ends after seven days)."""

    @property
    def warning(self) -> str:
        """What to act on soon ("" when nothing)."""
        ...


@runtime_checkable
class SupportsRateStats(Protocol):
    """A venue that plays the broker's side of its rate limit (the simulator): what it saw."""

    def rate_stats(self) -> dict[str, Any]:
        """``limit`` and ``per_seconds`` of the window, ``peak`` (most requests seen in one
        window) and ``refused`` (requests answered 429)."""
        ...


@runtime_checkable
class SupportsUpdates(Protocol):
    """A venue whose broker pushes order changes (Alpaca's ``trade_updates``, Coinbase's
    ``user`` channel), so working orders need not be polled."""

    async def stream_updates(
        self, on_order: Callable[[VenueOrder], Awaitable[None]], on_connect: Callable[[], Awaitable[None]]
    ) -> None:
        """Follow the broker's stream until cancelled: ``on_order`` gets each changed order as
        it now stands (its fills complete); ``on_connect`` runs after every (re)connection,
        for the caller to settle what changed while the stream was away. Reconnects with
        backoff by itself."""
        ...
