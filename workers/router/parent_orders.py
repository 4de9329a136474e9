"""The router's part in parent orders (intents with an ``execution`` block).

The router does not route a parent: it forwards it, unchanged, to the parent-order worker
(``Subjects.parent_intent``), journalled like a decision so a redelivery republishes the same
message. The worker sends the parent's children back as ordinary intents, each routed, risk-checked
and recorded like any other. The router also answers the worker's split API
(``Subjects.route_split``): how one slice is shared among brokers from its live view (``split.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from contracts import INTENT_ID_HEADER, MSG_ID_HEADER, STRATEGY_ID_HEADER, CancelRequest, OrderIntent
from workers.domain.quotes import PriceCheck
from workers.platform import telemetry
from workers.platform.bus import send
from workers.platform.runtime import PoisonMessage, Worker, parse
from workers.platform.split_api import SplitAnswer, SplitRequest
from workers.platform.topology import ARRIVAL_PRICE_HEADER
from workers.router.journal import DecisionJournal, Published
from workers.router.plan import BROKERS, plan_for
from workers.router.split import split_answer
from workers.router.state import RouterState

if TYPE_CHECKING:
    from nats.aio.msg import Msg

AWAIT_BROKERS_S = 0.5
"""Seconds the parent-order worker is told to wait before asking again while a broker that could
take the slice is starting or unsure (as an intent is held then)."""


def forward_id(message_id: str) -> str:
    """A forwarded message's id: not its own, which the ORDERS stream already holds as the
    strategy's message (the copy would be dropped as a duplicate), but derived from it."""
    return f"parent-{message_id}"


def _headers(message_id: str, intent_id: str, strategy_id: str) -> dict[str, str]:
    headers = telemetry.inject({MSG_ID_HEADER: forward_id(message_id)})
    headers[INTENT_ID_HEADER] = intent_id
    headers[STRATEGY_ID_HEADER] = strategy_id
    return headers


class ParentOrders:
    def __init__(
        self,
        worker: Worker,
        state: RouterState,
        journal: DecisionJournal,
        price: Callable[[str], Awaitable[PriceCheck]],
    ) -> None:
        self.worker = worker
        self.state = state
        self.journal = journal
        self.price = price

    async def forward(self, parent: OrderIntent) -> str:
        """Publish the parent to the parent-order worker with the arrival price (the reference
        quote's mid now: when it arrived, or was approved) in a header; once per parent, whatever
        the deliveries."""
        check = await self.price(parent.symbol)
        headers = _headers(parent.intent_id, parent.intent_id, parent.strategy_id)
        if check.price is not None:
            headers[ARRIVAL_PRICE_HEADER] = str(check.price)
        payload = parent.model_dump_json().encode()
        ours = Published(self.worker.subjects.parent_intent(parent.strategy_id), headers, payload)
        standing = await self.journal.claim(parent.intent_id, 1, ours)
        await self.journal.publish(standing)
        if standing is not ours:
            return "replay:republished_earlier_decision"
        return "parent_forwarded"

    async def forward_cancel(self, request: CancelRequest) -> None:
        """Publish a parent's cancel request, unchanged, to the parent-order worker."""
        subject = self.worker.subjects.parent_cancel(request.strategy_id)
        headers = _headers(request.message_id, request.intent_id, request.strategy_id)
        await send(self.worker.js, subject, request.model_dump_json().encode(), headers)

    def forwarded_parent(self, first: Published | None) -> OrderIntent | None:
        """The parent intent, when what the router published for an intent was its forward."""
        if first is None or not self.worker.subjects.is_parent_intent(first.subject):
            return None
        return parse(OrderIntent, first.payload)

    async def answer_split(self, msg: Msg) -> None:
        """Reply to a split request (``SplitAnswer``); nothing is published or placed."""
        try:
            request = parse(SplitRequest, msg.data)
        except PoisonMessage as exc:
            answer = SplitAnswer(error=str(exc))
        else:
            answer = await self.split(request)
        if msg.reply:
            await msg.respond(answer.model_dump_json().encode())

    async def split(self, request: SplitRequest) -> SplitAnswer:
        parent = request.parent
        probe = parent.model_copy(update={"quantity": request.quantity, "execution": None, "broker": None})
        capability = plan_for(self.state.config).shape(probe).capability
        capable = frozenset(b for b, out in zip(BROKERS, capability, strict=True) if out is None)
        if capable & self.state.registry.awaited():
            return SplitAnswer(retry_after_s=AWAIT_BROKERS_S, config_version=self.state.version)
        check = await self.price(parent.symbol)
        return split_answer(
            request,
            self.state.config,
            market=self.state.market(check.price, check),
            risk=self.state.risk_view(),
            config_version=self.state.version,
        )
