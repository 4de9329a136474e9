"""The router's approval desk: intents an approval rule matches are held, not routed, until
operators decide (config ``approvals``; the hold's life is ``workers.domain.approvals.Hold``).

- **Hold.** An intent a rule matches (priced at the quote now) is written to the approvals bucket,
  create-only, and acked: the bucket, not the stream, keeps it from then on, so a hold survives
  router kills and a nats-server restart. A redelivered intent finds its record (the create is
  refused) and is not held twice; one a changed config no longer holds is routed, and the
  decision journal keeps a later approval of its old hold from routing it again.
- **Decide.** Operators' tools (``workers.ops.approvals``: ``mbx approve``, ``mbx deny``, the
  dashboard) change the record by compare-and-set; the router's expiry does the same for a hold
  past its deadline. So one decision stands, whoever is first.
- **Act.** The router watches the bucket. It publishes every new step as an ``ApprovalEvent``
  (the pending one also to the strategy), routes an approved intent as if it had just arrived
  (quote, risk and kill switches as they are now), and rejects a denied or expired one
  (``approval_denied``, ``approval_expired``). Routing and rejecting go through the decision
  journal, so a second router, or this one after a restart, publishes the same outcome again at
  most, never a second order. The record is marked handled afterwards.

The children of an approved parent order are not held again: the parent was approved whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from contracts import ApprovalStep, CancelRequest, OrderIntent, OrderStatus
from workers.domain.approvals import ApprovalRefused, Hold, approval_rule, hold_key
from workers.domain.fees import order_size
from workers.domain.parents import parent_of
from workers.domain.quotes import PriceCheck
from workers.platform.bus import open_bucket, publish
from workers.platform.runtime import Worker
from workers.router.rules import Rejection
from workers.router.state import RouterState

log = structlog.get_logger("mbx.router")

HOLDS_KEPT_S = 30 * 86400.0
"""Seconds a hold's record is kept after its last change (an intent redelivered within that
time finds it and is not held or routed again; the ORDERS stream keeps intents 7 days)."""
EXPIRY_EVERY_S = 1.0
"""How often the router looks for holds past their deadline."""

NOT_YOURS = "not_your_order"
Route = Callable[[OrderIntent], Awaitable[str]]
Reject = Callable[[OrderIntent, Rejection], Awaitable[str]]


class ApprovalDesk:
    def __init__(
        self,
        worker: Worker,
        state: RouterState,
        price: Callable[[str], Awaitable[PriceCheck]],
        route: Route,
        reject: Reject,
    ) -> None:
        self.worker = worker
        self.state = state
        self.price = price
        self.route = route
        self.reject = reject
        self.pending: dict[str, Hold] = {}
        """Holds not decided yet, by key, as last seen (for the expiry)."""
        self._acting: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        """Holds written again while being acted on: read afresh once that ends."""
        self._failed: set[str] = set()
        """Holds whose last action failed: tried again by the sweep."""
        self._kv: KeyValue | None = None

    async def bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await open_bucket(self.worker.js, self.worker.subjects.approvals_bucket, ttl=HOLDS_KEPT_S)
        return self._kv

    async def hold(self, intent: OrderIntent) -> str | None:
        """Hold ``intent`` when an approval rule matches it; what happened, or None to route it now."""
        config = self.state.config
        if not config.approvals.rules:
            return None
        kv = await self.bucket()
        parent = parent_of(intent)
        if parent is not None and await self._released(kv, parent):
            return None  # a child of an approved parent: approved whole
        check = await self.price(intent.symbol)
        rule = approval_rule(intent, config, check.price)
        if rule is None:
            return None
        _, notional = order_size(intent, check.price)
        hold = Hold.new(intent, rule, datetime.now(UTC), notional)
        try:
            await kv.create(hold_key(intent.intent_id), hold.model_dump_json().encode())
        except KeyWrongLastSequenceError:
            return "replay:held_already"  # held before (whatever became of it since): not again
        log.info("intent held for approval", rule=rule.name, approvers=rule.approvers, expires_at=str(hold.expires_at))
        return f"held:{rule.name}"

    async def cancel(self, request: CancelRequest, sender: str) -> str | None:
        """End the hold of a cancelled intent that waits for approval (by compare-and-set: a
        decision first wins, and the cancel then goes where the order went). What happened
        (``NOT_YOURS``: another strategy's hold), or None when the intent is not waiting."""
        kv = await self.bucket()
        key = hold_key(request.intent_id)
        for _ in range(10):
            try:
                entry = await kv.get(key)
                hold = Hold.model_validate_json(entry.value or b"")
            except (KeyNotFoundError, ValidationError):
                return None
            if hold.intent.strategy_id != sender:
                return NOT_YOURS
            try:
                cancelled = hold.cancel(request.reason or "cancelled by its strategy", datetime.now(UTC))
            except ApprovalRefused:
                return None  # decided meanwhile: the cancel follows the order
            try:
                await kv.update(key, cancelled.model_dump_json().encode(), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            return "cancelled:held_for_approval"
        return None

    async def _released(self, kv: KeyValue, intent_id: str) -> bool:
        try:
            entry = await kv.get(hold_key(intent_id))
        except KeyNotFoundError:
            return False
        try:
            return Hold.model_validate_json(entry.value or b"").state is ApprovalStep.RELEASED
        except ValidationError:
            return False

    async def on_change(self, raw: bytes, revision: int) -> None:
        """A hold was written (by this router, an operator or the expiry): act on it in the
        background, one action per hold at a time (routing may wait for brokers)."""
        if not raw:
            return
        try:
            hold = Hold.model_validate_json(raw)
        except ValidationError as exc:
            log.warning("approval record refused", errors=exc.error_count(), revision=revision)
            return
        key = hold_key(hold.intent.intent_id)
        if hold.state is ApprovalStep.PENDING:
            self.pending[key] = hold
        else:
            self.pending.pop(key, None)
        if hold.published == len(hold.steps) and hold.state is not ApprovalStep.APPROVED:
            return  # nothing new to tell or do
        self._start(key)

    def _start(self, key: str) -> None:
        running = self._acting.get(key)
        if running is not None and not running.done():
            self._again.add(key)  # acting on an earlier version: read afresh once that ends
            return
        self._acting[key] = asyncio.create_task(self._act(key))

    async def _act(self, key: str) -> None:
        """Publish the hold's new steps, then route or reject it when decided; by compare-and-set
        on the record as it is now (another router may be acting on it too)."""
        try:
            kv = await self.bucket()
            for _ in range(10):
                entry = await kv.get(key)
                hold = Hold.model_validate_json(entry.value or b"")
                state = hold.state
                if hold.published == len(hold.steps) and state is not ApprovalStep.APPROVED:
                    break  # told and done (an ended hold is marked only after its report)
                if state is ApprovalStep.APPROVED:
                    await self.route(hold.intent)
                    hold = hold.release(datetime.now(UTC))
                elif state in (ApprovalStep.DENIED, ApprovalStep.EXPIRED, ApprovalStep.CANCELLED):
                    await self.reject(hold.intent, _rejection(hold))
                await self._publish_steps(hold)
                try:
                    await kv.update(key, hold.marked_published().model_dump_json().encode(), last=entry.revision)
                    break
                except KeyWrongLastSequenceError:
                    continue  # changed meanwhile (an approval, another router): look again
            self._failed.discard(key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001  (tried again by the sweep)
            self._failed.add(key)
            log.warning("acting on a hold failed", key=key, error=f"{type(exc).__name__}: {exc}")
        finally:
            self._acting.pop(key, None)
            if key in self._again and not self.worker.stopping.is_set():
                self._again.discard(key)
                self._start(key)

    async def _publish_steps(self, hold: Hold) -> None:
        subjects = self.worker.subjects
        intent = hold.intent
        for k in range(hold.published, len(hold.steps)):
            event = hold.event(k)
            await publish(
                self.worker.js,
                subjects.approval(event.step),
                event,
                intent_id=intent.intent_id,
                strategy_id=intent.strategy_id,
            )
            if event.step is ApprovalStep.PENDING:
                await publish(
                    self.worker.js,
                    subjects.pending_approval(intent.strategy_id),
                    event.model_copy(update={"message_id": f"{event.message_id}-strategy"}),
                    intent_id=intent.intent_id,
                    strategy_id=intent.strategy_id,
                )

    async def sweep(self) -> None:
        """End the holds past their deadline (compare-and-set: an approval first wins), and act
        again on any whose last action failed."""
        for key in list(self._failed):
            self._start(key)
        now = datetime.now(UTC)
        kv = await self.bucket()
        for key, seen in list(self.pending.items()):
            if now < seen.expires_at:
                continue
            try:
                entry = await kv.get(key)
                hold = Hold.model_validate_json(entry.value or b"")
                await kv.update(key, hold.expire(now).model_dump_json().encode(), last=entry.revision)
                log.info("hold expired", intent_id=hold.intent.intent_id, rule=hold.rule)
            except (KeyNotFoundError, KeyWrongLastSequenceError, ApprovalRefused):
                self.pending.pop(key, None)  # gone or decided meanwhile: its watch update says which
            except ValidationError:
                self.pending.pop(key, None)

    async def stop(self) -> None:
        for task in self._acting.values():
            task.cancel()
        await asyncio.gather(*self._acting.values(), return_exceptions=True)
        self._acting.clear()


def _rejection(hold: Hold) -> Rejection:
    last = hold.steps[-1]
    if last.step is ApprovalStep.CANCELLED:
        why = f"cancelled by its strategy while held for approval (rule {hold.rule}): {last.note}"
        return Rejection("cancelled_while_held", why, (), OrderStatus.CANCELLED)
    if last.step is ApprovalStep.DENIED:
        note = f": {last.note}" if last.note else ""
        return Rejection("approval_denied", f"denied by {last.operator} (approval rule {hold.rule}){note}", ())
    return Rejection(
        "approval_expired",
        f"not approved within the approval rule {hold.rule}'s expire_after_s (held {hold.held_at.isoformat()}, "
        f"expired {hold.expires_at.isoformat()}; {len(hold.approvals)} of {hold.approvers} approvals)",
        (),
    )
