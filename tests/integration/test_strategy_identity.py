"""A strategy is the strategy its subject names: a cancel whose body claims another strategy, or
that names another strategy's order, is refused to the subject's strategy and the order stays."""

from __future__ import annotations

import json
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import BrokerName, CancelReject, CancelRequest, DeadLetter, IntentRefused, OrderStatus, Subjects
from tests.builders import intent_payload, new_intent_id
from tests.conftest import Pipeline, eventually
from tests.integration.test_executor_flows import order_row
from tests.integration.test_walking_skeleton import publish_json
from workers.domain.config import parse_config
from workers.platform.bus import publish, read_stream

pytestmark = pytest.mark.integration


async def answers_to(nc: NatsClient, strategy: str, request: CancelRequest) -> list[CancelReject]:
    """The cancel rejections on ``strategy``'s own results that answer ``request``."""
    found = await read_stream(nc.jetstream(), "EXECUTIONS", Subjects().cancel_reject("*", strategy))
    rejects = [CancelReject.model_validate_json(m.data) for m in found]
    return [r for r in rejects if r.message_id == f"cancel-reject-{request.message_id}"]


async def test_beta_cannot_cancel_alphas_working_order_by_any_subject_or_body(
    start_pipeline: Any, nc: NatsClient, db: AsyncEngine
) -> None:
    """Every subject/body combination of a cancel of alpha's order that is not alpha's own is
    refused to the subject's strategy, naming it, and the order keeps working until alpha cancels."""
    pipeline: Pipeline = await start_pipeline(parse_config({"brokers": {"alpaca": {}}}))
    resting = intent_payload(strategy_id="alpha", order_type="limit", limit_price="1.00")
    await publish_json(nc, resting, strategy="alpha")
    await order_row(db, resting["intent_id"], "accepted")
    intent_id = resting["intent_id"]

    # (subject's strategy, body's strategy_id, expected refusal). Under --secure beta cannot
    # publish on alpha's subject at all; in process, that subject speaks for alpha.
    attempts = [
        ("beta", "alpha", "wrong_strategy"),
        ("beta", "beta", "not_your_order"),
        ("alpha", "beta", "wrong_strategy"),
    ]
    for sender, claimed, code in attempts:
        request = CancelRequest(
            message_id=f"cancel-{new_intent_id()}", correlation_id=intent_id, intent_id=intent_id, strategy_id=claimed
        )
        await publish(nc.jetstream(), Subjects().cancel(sender), request, intent_id=intent_id)
        [refusal] = await eventually(lambda r=request, s=sender: answers_to(nc, s, r))  # type: ignore[misc]
        assert (refusal.reason_code, refusal.strategy_id, refusal.broker) == (code, sender, None)

    [at_broker] = [o for o in await pipeline.venues[BrokerName.ALPACA].book.all() if o.client_order_id == intent_id]
    assert at_broker.status is OrderStatus.ACCEPTED
    own = CancelRequest(
        message_id=f"cancel-{new_intent_id()}", correlation_id=intent_id, intent_id=intent_id, strategy_id="alpha"
    )
    await publish(nc.jetstream(), Subjects().cancel("alpha"), own, intent_id=intent_id)
    await order_row(db, intent_id, "cancelled")


async def test_an_intent_whose_body_names_another_strategy_is_refused_to_its_sender_only(
    start_pipeline: Any, nc: NatsClient, db: AsyncEngine
) -> None:
    """Beta's intent that claims to be alpha's, reusing the id of alpha's working order: beta is
    told why (IntentRefused on its own results), operators get the dead letter, nothing is routed,
    and alpha's order and its row in the audit store are untouched."""
    pipeline: Pipeline = await start_pipeline(parse_config({"brokers": {"alpaca": {}}}))
    resting = intent_payload(strategy_id="alpha", order_type="limit", limit_price="1.00")
    await publish_json(nc, resting, strategy="alpha")
    before = await order_row(db, resting["intent_id"], "accepted")
    forged = intent_payload(strategy_id="alpha", intent_id=resting["intent_id"], quantity="999")
    forged["message_id"] = f"msg-{new_intent_id()}"
    ack = await nc.jetstream().publish(
        Subjects().intent("beta"), json.dumps(forged).encode(), headers={"Nats-Msg-Id": forged["message_id"]}
    )

    async def refusals() -> list[IntentRefused]:
        found = await read_stream(nc.jetstream(), "EXECUTIONS", Subjects().refusal("beta"))
        answers = [IntentRefused.model_validate_json(m.data) for m in found]
        return [a for a in answers if a.message_id == f"refused-beta-{forged['message_id']}"]

    [refused] = await eventually(refusals)
    assert (refused.strategy_id, refused.claimed_strategy_id, refused.reason_code) == (
        "beta",
        "alpha",
        "wrong_strategy",
    )
    assert refused.intent_id == resting["intent_id"]
    letters = await eventually(lambda: dead_letters_at(nc, ack.seq))
    assert "does not match strategy 'beta'" in letters[0].error
    assert not await read_stream(nc.jetstream(), "EXECUTIONS", Subjects().refusal("alpha"))
    [at_broker] = [
        o for o in await pipeline.venues[BrokerName.ALPACA].book.all() if o.client_order_id == resting["intent_id"]
    ]
    assert (at_broker.status, at_broker.quantity) == (OrderStatus.ACCEPTED, before["quantity"])
    after = await order_row(db, resting["intent_id"], "accepted")
    assert (after["strategy_id"], after["quantity"], after["broker_name"]) == ("alpha", before["quantity"], "alpaca")


async def dead_letters_at(nc: NatsClient, seq: int) -> list[DeadLetter]:
    found = await read_stream(nc.jetstream(), "DLQ", "mbx.dlq.router")
    letters = [DeadLetter.model_validate_json(m.data) for m in found]
    return [d for d in letters if d.stream_sequence == seq]
