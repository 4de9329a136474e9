"""Operators' side of the approval queue: what is held, and approving or denying it.

A decision is a compare-and-set of the hold's record in the approvals bucket (the record the
router wrote when it held the intent), so one decision stands whoever is first: a second approval
of a one-approver hold, a denial after an approval, an approval after the deadline are refused
with what happened. The router, watching the bucket, then routes or rejects the intent and
publishes each step for the audit trail. Under ``mbx up --secure`` only the operator role may
write the bucket: a strategy's user cannot approve anything, its own orders included.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from pydantic import ValidationError

from contracts import ApprovalStep, Subjects
from workers.domain.approvals import ApprovalRefused, Hold, hold_key
from workers.ops.errors import OperatorError
from workers.platform.bus import read_bucket

TRIES = 10
"""Compare-and-set attempts while other decisions land at the same moment."""


@dataclass(frozen=True)
class Decided:
    hold: Hold
    message: str


async def held(js: Any, subjects: Subjects, every: bool = False) -> list[Hold]:
    """Holds waiting for a decision (``every``: those decided too), oldest first."""
    try:
        entries = await read_bucket(js, subjects.approvals_bucket)
    except (NotFoundError, KeyNotFoundError):  # no bucket (its stream) yet: nothing was ever held
        return []
    holds = []
    for _, value in entries:
        try:
            hold = Hold.model_validate_json(value)
        except ValidationError:
            continue
        if every or hold.state is ApprovalStep.PENDING:
            holds.append(hold)
    return sorted(holds, key=lambda h: h.held_at)


async def strategy_of(js: Any, subjects: Subjects, intent_id: str) -> str | None:
    """The strategy of a held intent (any state), or None when none is held under that id."""
    try:
        kv = await js.key_value(subjects.approvals_bucket)
        entry = await kv.get(hold_key(intent_id))
        return Hold.model_validate_json(entry.value or b"").intent.strategy_id
    except (BucketNotFoundError, KeyNotFoundError, ValidationError):
        return None


async def approve(js: Any, subjects: Subjects, intent_id: str, operator: str, note: str = "") -> Decided:
    """Approve a held intent as ``operator``; the last approval needed releases it to routing."""
    hold = await _decide(js, subjects, intent_id, lambda h, now: h.approve(operator, note, now))
    if hold.state is ApprovalStep.APPROVED:
        return Decided(hold, f"{intent_id} approved by {operator.strip()}: the router routes it now")
    given = len(hold.approvals)
    return Decided(
        hold, f"{intent_id}: approval {given} of {hold.approvers} by {operator.strip()}; another operator must approve"
    )


async def deny(js: Any, subjects: Subjects, intent_id: str, operator: str, note: str = "") -> Decided:
    """Deny a held intent as ``operator``: it ends rejected (approval_denied) with the note."""
    hold = await _decide(js, subjects, intent_id, lambda h, now: h.deny(operator, note, now))
    return Decided(hold, f"{intent_id} denied by {operator.strip()}: it ends rejected")


async def _decide(js: Any, subjects: Subjects, intent_id: str, change: Any) -> Hold:
    intent_id = intent_id.strip()
    if not intent_id:
        raise OperatorError("name the held intent (mbx approvals lists them)")
    try:
        kv = await js.key_value(subjects.approvals_bucket)
    except BucketNotFoundError:
        raise OperatorError("nothing has been held for approval here (no approvals bucket yet)") from None
    key = hold_key(intent_id)
    for _ in range(TRIES):
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            raise OperatorError(f"no intent {intent_id} is held for approval (mbx approvals lists them)") from None
        try:
            hold = Hold.model_validate_json(entry.value or b"")
            decided: Hold = change(hold, datetime.now(UTC))
        except ApprovalRefused as exc:
            raise OperatorError(str(exc)) from None
        except ValidationError as exc:
            raise OperatorError(f"the hold of {intent_id} cannot be read: {exc.error_count()} errors") from None
        try:
            await kv.update(key, decided.model_dump_json().encode(), last=entry.revision)
        except KeyWrongLastSequenceError:
            continue  # decided or changed meanwhile: judge the new version
        return decided
    raise OperatorError(f"the hold of {intent_id} kept changing while deciding; try again")
