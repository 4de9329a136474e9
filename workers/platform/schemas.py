"""Generate the JSON Schemas and the AsyncAPI document that strategy services code against.

``make schemas`` writes them into ``contracts/schemas/``; a test fails when they drift from the
models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from contracts import (
    SUBJECTS_VERSION,
    ApprovalEvent,
    BrokerStatus,
    CancelReject,
    CancelRequest,
    DeadLetter,
    ExecutionReport,
    ExposureSnapshot,
    FailoverEvent,
    Fill,
    FillQuality,
    IntentRefused,
    OrderIntent,
    ParentReport,
    Portfolio,
    PositionSnapshot,
    RouteDecision,
    RoutePreview,
    Subjects,
    SymbolExposure,
)
from contracts.enums import ApprovalStep, BrokerName, DeadLetterStage, OrderStatus, ParentStatus

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "contracts" / "schemas"

MODELS: tuple[type[BaseModel], ...] = (
    OrderIntent,
    CancelRequest,
    RouteDecision,
    ExecutionReport,
    ParentReport,
    CancelReject,
    IntentRefused,
    ApprovalEvent,
    Fill,
    FailoverEvent,
    PositionSnapshot,
    BrokerStatus,
    DeadLetter,
    RoutePreview,
    ExposureSnapshot,
    FillQuality,
    Portfolio,
    SymbolExposure,
)


def json_schemas() -> dict[str, dict[str, Any]]:
    return {model.__name__: model.model_json_schema(mode="validation") for model in MODELS}


def _param(description: str, values: list[str] | None = None) -> dict[str, Any]:
    param: dict[str, Any] = {"description": description}
    if values:
        param["enum"] = values
    return param


def asyncapi() -> dict[str, Any]:
    """An AsyncAPI 3.0 document of every subject, with ``mbx`` as the prefix."""
    s = Subjects()
    _, defs = models_json_schema([(m, "validation") for m in MODELS], ref_template="#/components/schemas/{model}")
    brokers = [str(b) for b in BrokerName]
    strategy = _param("The strategy id (one subject token).")
    broker = _param("The broker.", brokers)
    channels: dict[str, Any] = {
        "orderIntent": (
            "mbx.orders.intent.{strategy_id}",
            "OrderIntent",
            {"strategy_id": strategy},
            "Order intents. Publish with header Nats-Msg-Id set to the intent id.",
        ),
        "cancelRequest": (
            "mbx.orders.cancel.{strategy_id}",
            "CancelRequest",
            {"strategy_id": strategy},
            "Cancel requests for working orders.",
        ),
        "routeDecision": (
            "mbx.routes.{broker}.{strategy_id}",
            "RouteDecision",
            {"broker": broker, "strategy_id": strategy},
            "Where each intent was routed and why.",
        ),
        "executionReport": (
            "mbx.exec.{broker}.{status}.{strategy_id}",
            "ExecutionReport",
            {
                "broker": _param("The broker, or 'unrouted' for a router rejection.", [*brokers, "unrouted"]),
                "status": _param("The order status.", [str(x) for x in OrderStatus]),
                "strategy_id": strategy,
            },
            "Order state changes at the brokers.",
        ),
        "parentReport": (
            "mbx.exec.parent.{status}.{strategy_id}",
            "ParentReport",
            {"status": _param("The parent order's status.", [str(x) for x in ParentStatus]), "strategy_id": strategy},
            "Parent orders' state across their children (intents with an execution block); readers of "
            "mbx.exec.> tell them from execution reports by the token 'parent', never a broker's name.",
        ),
        "cancelReject": (
            "mbx.exec.{broker}.cancel_rejected.{strategy_id}",
            "CancelReject",
            {
                "broker": _param("The broker holding the order, or 'unrouted' when none does.", [*brokers, "unrouted"]),
                "strategy_id": strategy,
            },
            "Cancel requests that could not be carried out (unknown order, too late to cancel).",
        ),
        "intentRefused": (
            "mbx.exec.unrouted.refused.{strategy_id}",
            "IntentRefused",
            {"strategy_id": strategy},
            "Intents refused because of who sent them (a body naming another strategy), to the sender only.",
        ),
        "pendingApproval": (
            "mbx.exec.unrouted.pending_approval.{strategy_id}",
            "ApprovalEvent",
            {"strategy_id": strategy},
            "An intent held for an operator's approval (config approvals), told to its strategy; its route "
            "decision follows once approved, or a rejected report (approval_denied, approval_expired).",
        ),
        "approvalEvent": (
            "mbx.approvals.{step}",
            "ApprovalEvent",
            {"step": _param("The step of the hold.", [str(x) for x in ApprovalStep])},
            "Steps of intents held for approval, for operators: pending, approved (one per approval), denied, "
            "expired, released (routed).",
        ),
        "fill": (
            "mbx.fills.{broker}.{symbol}.{strategy_id}",
            "Fill",
            {
                "broker": broker,
                "symbol": _param("The symbol with . and spaces replaced by _."),
                "strategy_id": strategy,
            },
            "Executions.",
        ),
        "failoverEvent": (
            "mbx.failover.{broker}",
            "FailoverEvent",
            {"broker": broker},
            "A broker failed an order that another broker may take.",
        ),
        "positionSnapshot": (
            "mbx.positions.{broker}",
            "PositionSnapshot",
            {"broker": broker},
            "Account and positions per broker (the stream keeps the latest).",
        ),
        "brokerStatus": (
            "mbx.status.{broker}",
            "BrokerStatus",
            {"broker": broker},
            "Broker health (the stream keeps the latest).",
        ),
        "routePreview": (
            "mbx.api.route.preview",
            "RoutePreview",
            {},
            "Request/reply: send an OrderIntent, receive the RoutePreview the router would decide now.",
        ),
        "portfolioUnified": (
            "mbx.api.portfolio.unified",
            "Portfolio",
            {},
            "Request/reply: the unified portfolio across every broker (empty request).",
        ),
        "portfolioExposure": (
            "mbx.api.portfolio.exposure",
            "SymbolExposure",
            {},
            'Request/reply: send {"symbol": "AAPL"}, receive its exposure per broker, in-flight orders included.',
        ),
        "deadLetter": (
            "mbx.dlq.{stage}",
            "DeadLetter",
            {"stage": _param("Worker stage.", [str(x) for x in DeadLetterStage])},
            "Messages a worker could not process, with the reason.",
        ),
    }
    doc_channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for channel_id, (address, model, params, description) in channels.items():
        doc_channels[channel_id] = {
            "address": address,
            "description": description,
            "parameters": params,
            "messages": {model: {"$ref": f"#/components/messages/{model}"}},
        }
        messages[model] = {
            "name": model,
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{model}"},
        }
        # From the strategy service's point of view: it sends intents and cancels, receives the rest.
        action = "send" if model in ("OrderIntent", "CancelRequest") else "receive"
        operations[f"{action}{model}"] = {"action": action, "channel": {"$ref": f"#/channels/{channel_id}"}}
    streams = "; ".join(f"{spec.name}: {', '.join(spec.subjects)}" for spec in s.streams)
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "mbx",
            "version": f"{SUBJECTS_VERSION}.0.0",
            "description": (
                "Smart multi-broker execution over NATS JetStream. Subjects start with a configurable "
                "prefix (default mbx). JetStream streams: " + streams
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "The embedded server started by `mbx up`.",
            }
        },
        "channels": doc_channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": defs["$defs"]},
    }


class _NoAliasDumper(yaml.SafeDumper):
    """Write repeated parts out in full: anchors and aliases confuse some AsyncAPI tools."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def rendered() -> dict[str, str]:
    files = {
        f"{name}.json": json.dumps(schema, indent=2, sort_keys=True) + "\n" for name, schema in json_schemas().items()
    }
    files["asyncapi.yaml"] = yaml.dump(asyncapi(), Dumper=_NoAliasDumper, sort_keys=False, width=100)
    return files


def write_schemas(check: bool = False, directory: Path = SCHEMA_DIR) -> list[str]:
    """Write (or with ``check``, only compare) the files; returns the names that differed."""
    stale = []
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in rendered().items():
        path = directory / name
        if not path.exists() or path.read_text() != text:
            stale.append(name)
            if not check:
                path.write_text(text)
    return stale
