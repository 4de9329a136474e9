"""Builders with valid defaults, so each test states only what matters to it."""

from __future__ import annotations

import itertools
import uuid
from decimal import Decimal
from typing import Any

from contracts import AssetClass, BrokerName, OrderIntent, RouteDecision

_seq = itertools.count(1)


def new_intent_id(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}-{next(_seq)}"


def intent_payload(**overrides: Any) -> dict[str, Any]:
    """The wire JSON of an intent, as another language's client would publish it."""
    payload: dict[str, Any] = {
        "intent_id": new_intent_id(),
        "strategy_id": "strat1",
        "symbol": "AAPL",
        "asset_class": "equity",
        "side": "buy",
        "quantity": "10",
        "order_type": "market",
        "time_in_force": "day",
    }
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not None}


def make_intent(**overrides: Any) -> OrderIntent:
    return OrderIntent.model_validate(intent_payload(**overrides))


def make_route(
    intent: OrderIntent | None = None, broker: BrokerName = BrokerName.ALPACA, **overrides: Any
) -> RouteDecision:
    intent = intent or make_intent()
    fields: dict[str, Any] = {
        "message_id": f"route-{intent.intent_id}-1",
        "correlation_id": intent.intent_id,
        "intent_id": intent.intent_id,
        "strategy_id": intent.strategy_id,
        "broker": broker,
        "intent": intent,
        "rule": "test",
        "reason": "chosen by the test",
    }
    fields.update(overrides)
    return RouteDecision(**fields)


CRYPTO = {"symbol": "BTC-USD", "asset_class": AssetClass.CRYPTO.value, "time_in_force": None, "quantity": "0.01"}
OPTION = {"symbol": "AAPL  270115C00200000", "asset_class": "option", "quantity": "2"}
FRACTIONAL = {"quantity": "0.5"}
NOTIONAL = {"quantity": None, "notional": "250"}
ONE = Decimal(1)
