"""Four eyes on chosen orders: which approval rule holds an intent, and the life of a hold. Pure.

A hold is one record per intent in the approvals KV bucket (``Hold``), written by the router when
it holds the intent and changed with compare-and-set by whoever decides (an operator's approval
or denial, the router's expiry), so exactly one decision stands whoever clicks first. Its
``steps`` are the audit trail: the router publishes each as an ``ApprovalEvent`` and the
aggregator stores them in ``approvals``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from contracts import ApprovalEvent, ApprovalStep, OrderIntent
from workers.domain.config import ApprovalRule, MbxConfig
from workers.domain.fees import order_size
from workers.domain.keys import key_token
from workers.domain.rule_match import RangeCheck, StaticCheck, range_check, static_check

OPERATOR_MAX = 100
NOTE_MAX = 1000


def hold_key(intent_id: str) -> str:
    """The key of an intent's hold in the approvals bucket."""
    return f"h.{key_token(intent_id)}"


class ApprovalRefused(ValueError):
    """An approval or denial that cannot be taken; the message says why."""


def approval_rule(intent: OrderIntent, config: MbxConfig, price: Decimal | None) -> ApprovalRule | None:
    """The first approval rule that holds ``intent`` at ``price`` (None: it is routed at once).
    A rule with a size bound holds an order whose size cannot be told without a price."""
    rules = config.approvals.rules
    if not rules:
        return None
    quantity, notional = order_size(intent, price)
    for rule, shaped, sized in _compiled(rules):
        if shaped(intent) and (sized is None or sized(quantity, notional)):
            return rule
    return None


_last: tuple[list[ApprovalRule], tuple[tuple[ApprovalRule, StaticCheck, RangeCheck | None], ...]] | None = None


def _compiled(rules: list[ApprovalRule]) -> tuple[tuple[ApprovalRule, StaticCheck, RangeCheck | None], ...]:
    """Each rule with its match compiled, kept for the rules last asked about (the live config's):
    compiling the globs on every intent cost a fifth of a what-if replay."""
    global _last  # noqa: PLW0603  (one entry: the config in force)
    if _last is None or _last[0] is not rules:
        _last = (rules, tuple((r, static_check(r.match), range_check(r.match, unknown_matches=True)) for r in rules))
    return _last[1]


class Step(BaseModel):
    """One thing that happened to a hold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: ApprovalStep
    at: AwareDatetime
    operator: str = Field(default="", max_length=OPERATOR_MAX)
    note: str = Field(default="", max_length=NOTE_MAX)


class Hold(BaseModel):
    """An intent held for approval, and what has happened to it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    intent: OrderIntent
    rule: str
    approvers: int = Field(ge=1, le=2)
    held_at: AwareDatetime
    expires_at: AwareDatetime
    estimated_notional: Decimal | None = None
    steps: tuple[Step, ...]
    published: int = Field(default=0, ge=0, description="Steps the router has published as ApprovalEvents.")

    @classmethod
    def new(cls, intent: OrderIntent, rule: ApprovalRule, now: datetime, notional: Decimal | None) -> Hold:
        return cls(
            intent=intent,
            rule=rule.name,
            approvers=rule.approvers,
            held_at=now,
            expires_at=now + timedelta(seconds=rule.expire_after_s),
            estimated_notional=notional,
            steps=(Step(step=ApprovalStep.PENDING, at=now),),
        )

    @property
    def state(self) -> ApprovalStep:
        """pending (approvals may be under way), approved (by all needed, not yet routed),
        denied, expired or released (routed)."""
        last = self.steps[-1].step
        if last is ApprovalStep.APPROVED and len(self.approvals) < self.approvers:
            return ApprovalStep.PENDING
        return last

    @property
    def approvals(self) -> list[Step]:
        return [s for s in self.steps if s.step is ApprovalStep.APPROVED]

    def approve(self, operator: str, note: str, now: datetime) -> Hold:
        """This hold with ``operator``'s approval; raises ``ApprovalRefused`` saying why not."""
        who = self._decider(operator)
        self._still_open(now)
        if any(a.operator.casefold() == who.casefold() for a in self.approvals):  # "Carol" is carol
            raise ApprovalRefused(
                f"{who} has already approved {self.intent.intent_id}: its second approval must come from "
                "another operator"
            )
        return self._with(Step(step=ApprovalStep.APPROVED, at=now, operator=who, note=note[:NOTE_MAX]))

    def deny(self, operator: str, note: str, now: datetime) -> Hold:
        who = self._decider(operator)
        self._still_open(now)
        return self._with(Step(step=ApprovalStep.DENIED, at=now, operator=who, note=note[:NOTE_MAX]))

    def cancel(self, reason: str, now: datetime) -> Hold:
        """The hold ended by its own strategy's cancel, while no decision stands."""
        if self.state is not ApprovalStep.PENDING:
            raise ApprovalRefused(f"{self.intent.intent_id} is {self.state}, no longer waiting for approval")
        return self._with(Step(step=ApprovalStep.CANCELLED, at=now, note=reason[:NOTE_MAX]))

    def expire(self, now: datetime) -> Hold:
        """The hold ended by its deadline (only a pending one past ``expires_at``)."""
        if self.state is not ApprovalStep.PENDING or now < self.expires_at:
            raise ApprovalRefused(f"{self.intent.intent_id} is {self.state}, not a pending hold past its deadline")
        return self._with(Step(step=ApprovalStep.EXPIRED, at=now))

    def release(self, now: datetime) -> Hold:
        """Approved by all needed and handed to routing."""
        if self.state is not ApprovalStep.APPROVED:
            raise ApprovalRefused(f"{self.intent.intent_id} is {self.state}, not approved")
        return self._with(Step(step=ApprovalStep.RELEASED, at=now))

    def marked_published(self) -> Hold:
        return self.model_copy(update={"published": len(self.steps)})

    def event(self, k: int) -> ApprovalEvent:
        """Step ``k`` as the message the router publishes."""
        step = self.steps[k]
        given = sum(1 for s in self.steps[: k + 1] if s.step is ApprovalStep.APPROVED)
        return ApprovalEvent(
            message_id=f"approval-{self.intent.intent_id}-{k}",
            correlation_id=self.intent.intent_id,
            created_at=step.at,
            intent_id=self.intent.intent_id,
            strategy_id=self.intent.strategy_id,
            step=step.step,
            step_no=k,
            rule=self.rule,
            approvers_needed=self.approvers,
            approvals_given=given,
            operator=step.operator,
            note=step.note,
            expires_at=self.expires_at,
            estimated_notional=self.estimated_notional,
            intent=self.intent,
        )

    def _decider(self, operator: str) -> str:
        who = operator.strip()
        if not who:
            raise ApprovalRefused("say who decides (an operator's name): the audit trail keeps it")
        if len(who) > OPERATOR_MAX:
            raise ApprovalRefused(f"an operator's name has at most {OPERATOR_MAX} characters")
        if who.casefold() in (self.intent.strategy_id.casefold(), f"strategy-{self.intent.strategy_id}".casefold()):
            raise ApprovalRefused(f"strategy {self.intent.strategy_id} cannot decide on its own order")
        return who

    def _still_open(self, now: datetime) -> None:
        state = self.state
        if state is not ApprovalStep.PENDING:
            decided = next((s for s in reversed(self.steps) if s.step is not ApprovalStep.PENDING), None)
            by = f" by {decided.operator}" if decided is not None and decided.operator else ""
            raise ApprovalRefused(f"{self.intent.intent_id} is already {state}{by}: one decision stands")
        if now >= self.expires_at:
            raise ApprovalRefused(f"{self.intent.intent_id} expired at {self.expires_at.isoformat()}")

    def _with(self, step: Step) -> Hold:
        return self.model_copy(update={"steps": (*self.steps, step)})
