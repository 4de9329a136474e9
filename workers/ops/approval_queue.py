"""The approval queue as operators read it: one line per held intent, the same in ``mbx
approvals`` and the dashboard's approvals tab (the holds come from ``workers.ops.approvals.held``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from contracts import ApprovalStep
from workers.domain.approvals import Hold


@dataclass(frozen=True)
class QueueEntry:
    intent_id: str
    strategy_id: str
    symbol: str
    side: str
    quantity: Decimal | None
    notional: Decimal | None
    estimated_notional: Decimal | None
    rule: str
    state: ApprovalStep
    approvers_needed: int
    approved_by: tuple[str, ...]
    held_at: datetime
    expires_at: datetime
    expires_in_s: float
    """Seconds left to decide (0 once past the deadline)."""

    @property
    def size(self) -> str:
        """10 (units), or $2500 for an order given as a dollar amount."""
        if self.quantity is not None:
            return _plain(self.quantity)
        return f"${_plain(self.notional)}" if self.notional is not None else ""

    @property
    def approvals(self) -> str:
        """``1/2 (carol)``: approvals given of those needed, and by whom."""
        who = f" ({', '.join(self.approved_by)})" if self.approved_by else ""
        return f"{len(self.approved_by)}/{self.approvers_needed}{who}"

    @property
    def expires_in(self) -> str:
        """``14m 32s``; ``expired`` past the deadline; empty once decided."""
        if self.state is not ApprovalStep.PENDING:
            return ""
        if self.expires_in_s <= 0:
            return "expired"
        minutes, seconds = divmod(int(self.expires_in_s), 60)
        hours, minutes = divmod(minutes, 60)
        if hours:
            return f"{hours}h {minutes:02d}m"
        return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"

    def as_json(self) -> dict[str, Any]:
        return {
            "intent_id": self.intent_id,
            "strategy_id": self.strategy_id,
            "symbol": self.symbol,
            "side": self.side,
            "quantity": _text(self.quantity),
            "notional": _text(self.notional),
            "estimated_notional": _text(self.estimated_notional),
            "rule": self.rule,
            "state": str(self.state),
            "approvers_needed": self.approvers_needed,
            "approved_by": list(self.approved_by),
            "held_at": self.held_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "expires_in_s": round(self.expires_in_s, 1),
        }


def queue_entry(hold: Hold, now: datetime) -> QueueEntry:
    intent = hold.intent
    return QueueEntry(
        intent_id=intent.intent_id,
        strategy_id=intent.strategy_id,
        symbol=intent.symbol,
        side=str(intent.side),
        quantity=intent.quantity,
        notional=intent.notional,
        estimated_notional=hold.estimated_notional,
        rule=hold.rule,
        state=hold.state,
        approvers_needed=hold.approvers,
        approved_by=tuple(step.operator for step in hold.approvals),
        held_at=hold.held_at,
        expires_at=hold.expires_at,
        expires_in_s=max(0.0, (hold.expires_at - now).total_seconds()),
    )


def money(value: Decimal | None) -> str:
    """12,345.68 (two decimals, thousands separated); empty when not known."""
    return "" if value is None else f"{value:,.2f}"


def _plain(value: Decimal | None) -> str:
    if value is None:
        return ""
    return f"{value.normalize():f}" if value else "0"


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)
