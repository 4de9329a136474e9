"""mbx wire contract: the messages, subjects and client strategy services code against.

This package depends on pydantic and the standard library only (``contracts.client`` also needs
nats-py, imported when it is used). It never imports ``workers``.
"""

from contracts.enums import (
    AssetClass,
    BrokerName,
    DeadLetterStage,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
)
from contracts.messages import (
    SCHEMA_VERSION,
    AccountSnapshot,
    BrokerStatus,
    CancelRequest,
    CandidateScore,
    DeadLetter,
    ExcludedBroker,
    ExecutionReport,
    FailoverEvent,
    Fill,
    Message,
    OrderIntent,
    PositionLine,
    PositionSnapshot,
    RouteDecision,
)
from contracts.subjects import (
    DEFAULT_PREFIX,
    INTENT_ID_HEADER,
    MSG_ID_HEADER,
    STRATEGY_ID_HEADER,
    UNROUTED,
    ConsumerSpec,
    StreamSpec,
    Subjects,
    symbol_token,
)

__all__ = [
    "DEFAULT_PREFIX",
    "INTENT_ID_HEADER",
    "MSG_ID_HEADER",
    "SCHEMA_VERSION",
    "STRATEGY_ID_HEADER",
    "UNROUTED",
    "AccountSnapshot",
    "AssetClass",
    "BrokerName",
    "BrokerStatus",
    "CancelRequest",
    "CandidateScore",
    "ConsumerSpec",
    "DeadLetter",
    "DeadLetterStage",
    "ExcludedBroker",
    "ExecutionReport",
    "FailoverEvent",
    "Fill",
    "Message",
    "OrderIntent",
    "OrderStatus",
    "OrderType",
    "PositionLine",
    "PositionSnapshot",
    "RouteDecision",
    "Side",
    "StreamSpec",
    "Subjects",
    "TimeInForce",
    "symbol_token",
]
