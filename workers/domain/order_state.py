"""The order state machine: which status may follow which, and FIX-style quantities. Pure.

    new -> submitted -> accepted -> partially_filled* -> filled
                   \\-> unknown (ambiguous outcome) -> whatever the broker says it is
    any working state -> cancelled | expired | rejected | failed

Terminal states (filled, cancelled, rejected, expired, failed) have no successors. Quantities
follow FIX: cumulative quantity only grows, leaves = quantity - cumulative while working and 0
once terminal, and the average price is volume-weighted over every fill.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from contracts import ExecutionReport, OrderStatus

S = OrderStatus
_WORKING_EXITS = frozenset({S.PARTIALLY_FILLED, S.FILLED, S.CANCELLED, S.EXPIRED, S.REJECTED, S.FAILED})

TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.NEW: frozenset({S.SUBMITTED, S.REJECTED, S.FAILED}),
    S.SUBMITTED: frozenset({S.ACCEPTED, S.UNKNOWN}) | _WORKING_EXITS,
    S.UNKNOWN: frozenset({S.ACCEPTED}) | _WORKING_EXITS,
    S.ACCEPTED: _WORKING_EXITS,
    S.PARTIALLY_FILLED: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.CANCELLED, S.EXPIRED, S.FAILED}),
    S.FILLED: frozenset(),
    S.CANCELLED: frozenset(),
    S.REJECTED: frozenset(),
    S.EXPIRED: frozenset(),
    S.FAILED: frozenset(),
}


_STAGE: dict[OrderStatus, int] = {S.NEW: 0, S.SUBMITTED: 1, S.UNKNOWN: 1, S.ACCEPTED: 2, S.PARTIALLY_FILLED: 3}
"""How far along its life a working order is (terminal states are furthest)."""


def is_behind(known: OrderStatus, reported: OrderStatus) -> bool:
    """True when ``reported`` is earlier in an order's life than ``known``: a broker's reply
    that lags what was already recorded (Alpaca's ``pending_new`` in the reply to a POST, read
    after the order was recorded as accepted), which is no news rather than a transition."""
    return _STAGE.get(reported, 4) < _STAGE.get(known, 4)


HELD_BY_BROKER = frozenset({S.ACCEPTED, S.PARTIALLY_FILLED, S.FILLED, S.CANCELLED, S.EXPIRED})
"""Statuses only a broker that holds the order reports: it has acknowledged it. Not ``new``,
``submitted`` or ``unknown`` (the broker's answer is not in yet), nor ``rejected`` (refused, by
the broker or by the router before any broker) or ``failed`` (mbx gave up on it)."""


def acknowledged_by_broker(report: ExecutionReport) -> bool:
    """True when ``report`` shows that its broker holds the order (its acknowledgement)."""
    return report.broker is not None and report.status in HELD_BY_BROKER


class InvalidTransition(ValueError):
    """A status change the state machine does not allow (a bug, or a broker contradicting itself)."""


def can_move(old: OrderStatus, new: OrderStatus) -> bool:
    return old == new or new in TRANSITIONS[old]


def check_move(old: OrderStatus, new: OrderStatus) -> OrderStatus:
    if not can_move(old, new):
        raise InvalidTransition(f"an order cannot go from {old} to {new}")
    return new


@dataclass(slots=True)
class Execution:
    """Cumulative quantity, average price and fees of one order's fills."""

    quantity: Decimal
    status: OrderStatus = S.NEW
    filled_quantity: Decimal = Decimal(0)
    average_price: Decimal | None = None
    fees: Decimal = Decimal(0)

    @property
    def leaves_quantity(self) -> Decimal:
        return Decimal(0) if self.status.is_terminal else self.quantity - self.filled_quantity

    def move(self, status: OrderStatus) -> None:
        self.status = check_move(self.status, status)

    def fill(self, quantity: Decimal, price: Decimal, fee: Decimal) -> None:
        """Apply one fill: the status becomes partially_filled or filled."""
        if quantity <= 0:
            raise InvalidTransition(f"a fill must have a positive quantity, not {quantity}")
        if self.filled_quantity + quantity > self.quantity:
            raise InvalidTransition(
                f"a fill of {quantity} would overfill the order ({self.filled_quantity} of {self.quantity} done)"
            )
        done = self.filled_quantity + quantity
        previous = (self.average_price or Decimal(0)) * self.filled_quantity
        self.average_price = (previous + price * quantity) / done
        self.filled_quantity = done
        self.fees += fee
        self.move(S.FILLED if done == self.quantity else S.PARTIALLY_FILLED)
