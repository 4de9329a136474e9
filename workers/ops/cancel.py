"""Cancel a working order or parent order as an operator, and wait for its outcome.

The request is the ``CancelRequest`` a strategy would send, published as the order's own strategy
(the router refuses a cancel from any other), the same way `mbx cancel` sends it. The operator's
name goes into the request's reason, so the parent's report (``parent_orders.reason``) or the
order's cancel report says who cancelled it. A parent's cancel ends with its cancelled report once
every working child has ended; an order's with its cancelled execution report; either may be
refused with a ``CancelReject`` that says why (already filled, not found).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from contracts import INTENT_ID_HEADER, CancelReject, CancelRequest, ExecutionReport, ParentReport, Subjects
from workers.ops.errors import OperatorError
from workers.platform.bus import publish

Outcome = Literal["cancelled", "refused", "queued"]


@dataclass(frozen=True)
class CancelOutcome:
    outcome: Outcome
    """``cancelled``; ``refused`` (a ``CancelReject`` said why); ``queued`` (no answer in time:
    the request is stored and will still be carried out)."""
    message: str


async def cancel_order(
    nc: Any,
    js: Any,
    subjects: Subjects,
    intent_id: str,
    strategy_id: str,
    *,
    operator: str,
    reason: str = "",
    timeout: float = 10.0,
) -> CancelOutcome:
    """Publish a cancel of ``intent_id`` as ``strategy_id`` (the intent's own strategy) and wait
    up to ``timeout`` seconds for its outcome."""
    if not operator.strip():
        raise OperatorError("say who is cancelling: the audit trail names every operator")
    if not intent_id.strip() or not strategy_id.strip():
        raise OperatorError("name the order to cancel and the strategy it belongs to")
    why = f"{reason.strip() or 'cancelled by an operator'} (by {operator.strip()})"[:500]
    request = CancelRequest(
        message_id=f"cancel-{uuid.uuid4().hex}",
        correlation_id=intent_id,
        intent_id=intent_id,
        strategy_id=strategy_id,
        reason=why,
    )
    answer = await send_cancel(nc, js, subjects, request, timeout)
    if answer is None:
        return CancelOutcome(
            "queued", f"no answer within {timeout:g} s; the cancel request is stored and will be carried out"
        )
    subject, data = answer
    return outcome_of(subjects, subject, data)


async def send_cancel(
    nc: Any, js: Any, subjects: Subjects, request: CancelRequest, timeout: float
) -> tuple[str, bytes] | None:
    """Publish ``request`` as its strategy and wait up to ``timeout`` seconds for its answer: the
    subject and payload of the cancelled report (an order's or a parent's) or the rejection; None
    when none came in time (the request is stored and will still be carried out)."""
    answered: asyncio.Future[tuple[str, bytes]] = asyncio.get_running_loop().create_future()

    async def seen(msg: Any) -> None:
        if (msg.headers or {}).get(INTENT_ID_HEADER) == request.intent_id and not answered.done():
            answered.set_result((msg.subject, msg.data))

    subs = [
        await nc.subscribe(subjects.execution("*", "cancelled", request.strategy_id), cb=seen),
        await nc.subscribe(subjects.cancel_reject("*", request.strategy_id), cb=seen),
    ]
    try:
        await publish(
            js,
            subjects.cancel(request.strategy_id),
            request,
            intent_id=request.intent_id,
            strategy_id=request.strategy_id,
        )
        try:
            return await asyncio.wait_for(answered, timeout)
        except TimeoutError:
            return None
    finally:
        for sub in subs:
            await sub.unsubscribe()


def outcome_of(subjects: Subjects, subject: str, data: bytes) -> CancelOutcome:
    """The outcome a cancel's answer tells: a rejection, a parent's cancelled report or an order's."""
    if subjects.is_cancel_reject(subject):
        reject = CancelReject.model_validate_json(data)
        status = f" (order {reject.order_status})" if reject.order_status else ""
        return CancelOutcome("refused", f"not cancelled: {reject.reason_code}: {reject.reason}{status}")
    if subjects.is_parent_report(subject):
        parent = ParentReport.model_validate_json(data)
        filled: dict[str, Decimal] = {}
        for child in parent.children:
            if child.broker is not None and child.filled_quantity:
                filled[str(child.broker)] = filled.get(str(child.broker), Decimal(0)) + child.filled_quantity
        where = ", ".join(f"{b} {q.normalize():f}" for b, q in sorted(filled.items())) or "none"
        return CancelOutcome(
            "cancelled",
            f"cancelled parent order {parent.intent_id}: {parent.filled_quantity.normalize():f} of "
            f"{parent.quantity.normalize():f} filled before the cancel; filled by broker: {where}",
        )
    report = ExecutionReport.model_validate_json(data)
    return CancelOutcome(
        "cancelled", f"cancelled at {report.broker} ({report.filled_quantity.normalize():f} filled before the cancel)"
    )
