"""Closed vocabularies of the wire contract.

Every enum is a ``StrEnum``: its values are the exact strings that travel on the wire, so
clients in other languages can match on them directly.
"""

from __future__ import annotations

from enum import StrEnum


class BrokerName(StrEnum):
    """A trading broker mbx can route to."""

    ALPACA = "alpaca"
    ROBINHOOD = "robinhood"
    COINBASE = "coinbase"
    SCHWAB = "schwab"
    IBKR = "ibkr"


class AssetClass(StrEnum):
    """What is being traded."""

    EQUITY = "equity"
    CRYPTO = "crypto"
    OPTION = "option"


class Side(StrEnum):
    """Direction of an order."""

    BUY = "buy"
    SELL = "sell"


class PositionEffect(StrEnum):
    """What an order may do to a position: ``open`` (it may open or add to one, e.g. a short
    sale), ``close`` (it must only reduce a position that is held)."""

    OPEN = "open"
    CLOSE = "close"


class OrderType(StrEnum):
    """How the order is priced."""

    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"
    STOP_LIMIT = "stop_limit"


class TimeInForce(StrEnum):
    """How long the order stays working."""

    DAY = "day"
    GTC = "gtc"
    IOC = "ioc"
    FOK = "fok"


class OrderStatus(StrEnum):
    """Lifecycle state of an order at a broker (FIX-style, plus ``unknown``).

    ``unknown`` means the outcome of a submission is ambiguous (a timeout after sending); mbx
    resolves it by looking the order up at the broker before anything is retried.
    """

    NEW = "new"
    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    EXPIRED = "expired"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @property
    def is_terminal(self) -> bool:
        """True when no further report will follow for this order."""
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        OrderStatus.FILLED,
        OrderStatus.CANCELLED,
        OrderStatus.REJECTED,
        OrderStatus.EXPIRED,
        OrderStatus.FAILED,
    }
)


class ParentStatus(StrEnum):
    """Lifecycle state of a parent order (an intent with an ``execution`` block) across its children.

    ``working``: children are planned or working and nothing has filled yet. ``partially_filled``:
    some quantity has filled and more is to come. ``filled``: the children filled the whole
    quantity. ``cancelled``: the parent was cancelled; unsent slices were dropped, every working
    child has ended, and the report says what filled before that. ``done_with_shortfall``: every
    slice was sent and every child has ended, but they filled less than the quantity (children
    rejected, expired or hit the limit price).
    """

    WORKING = "working"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    DONE_WITH_SHORTFALL = "done_with_shortfall"

    @property
    def is_terminal(self) -> bool:
        """True when no further report will follow for this parent."""
        return self in _PARENT_TERMINAL


_PARENT_TERMINAL = frozenset({ParentStatus.FILLED, ParentStatus.CANCELLED, ParentStatus.DONE_WITH_SHORTFALL})


class ApprovalStep(StrEnum):
    """One step of an order held for approval (``ApprovalEvent``; added in 1 without a version change).

    ``pending``: the router holds the order for the operators. ``approved``: one operator
    approved it (``approvals_given`` of ``approvers_needed``; the last makes the router route it).
    ``denied``: an operator denied it; ``expired``: nobody decided within the rule's
    ``expire_after_s``; either way the order ends ``rejected`` with the reason. ``cancelled``: its
    strategy cancelled it while it waited; it ends ``cancelled``. ``released``: approved by
    everyone needed and handed to routing (its route decision follows).
    """

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    RELEASED = "released"

    @property
    def is_final(self) -> bool:
        """True when the hold has ended (routed, rejected or cancelled)."""
        return self in (ApprovalStep.DENIED, ApprovalStep.EXPIRED, ApprovalStep.CANCELLED, ApprovalStep.RELEASED)


class DeadLetterStage(StrEnum):
    """The worker stage that gave up on a message."""

    ROUTER = "router"
    EXECUTOR = "executor"
    AGGREGATOR = "aggregator"
    PARENTS = "parents"
    """The parent-order worker (added in 1 without a version change: a new value)."""
