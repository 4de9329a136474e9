"""Every NATS subject, JetStream stream and shared KV bucket mbx uses, in one place.

The workers' durable consumers and private buckets are not part of the contract: they live in
``workers.platform.topology``.

The prefix defaults to ``mbx``; a deployment may choose another (streams are then named
``<PREFIX>_ORDERS`` and so on, so several deployments can share one NATS server).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from contracts.enums import ApprovalStep, BrokerName, DeadLetterStage, OrderStatus, ParentStatus

SUBJECTS_VERSION = 2
"""The subject layout. 2: routes, execution reports, cancel rejections and fills end with the
strategy id, so a strategy can be allowed its own results and no other's (version 1 ended them
with the broker, status or symbol). Executors also consume version-1 routes still stored."""

DEFAULT_PREFIX = "mbx"
UNROUTED = "unrouted"
CANCEL_REJECTED = "cancel_rejected"
REFUSED = "refused"
"""Broker token of reports about intents the router rejected before choosing a broker."""
PENDING_APPROVAL = "pending_approval"
"""Status token of an order held for approval, told to its strategy (``exec.unrouted.pending_approval.<strategy>``)."""
PARENT = "parent"
"""Broker token of parent-order reports (``exec.parent.<status>.<strategy>``); never a broker's name."""

INTENT_ID_HEADER = "Mbx-Intent-Id"
STRATEGY_ID_HEADER = "Mbx-Strategy-Id"
MSG_ID_HEADER = "Nats-Msg-Id"
REPLAY_HEADER = "Mbx-Replay"
"""Set by `mbx dlq replay` to the dead letter's id: the workers then check whether the intent was
already acted on before acting (a replay must never execute anything twice)."""

_TOKEN_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def symbol_token(symbol: str) -> str:
    """Turn a symbol into one subject token: ``BRK.B`` -> ``BRK_B``, ``BTC-USD`` stays."""
    return _TOKEN_UNSAFE.sub("_", symbol)


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """A JetStream stream, independent of any client library."""

    name: str
    subjects: tuple[str, ...]
    max_age_seconds: float
    duplicate_window_seconds: float = 120.0
    max_msgs_per_subject: int = -1
    description: str = ""


@dataclass(frozen=True)
class Subjects:
    """Subject builders for one prefix."""

    prefix: str = DEFAULT_PREFIX
    _streams: dict[str, StreamSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.prefix):
            raise ValueError(f"subject prefix {self.prefix!r} must be one token of letters, digits, _ or -")
        p = self.prefix
        streams = {
            "ORDERS": StreamSpec(
                self.stream_name("ORDERS"),
                (f"{p}.orders.>",),
                max_age_seconds=7 * 86400,
                duplicate_window_seconds=3600,
                description="Order intents and cancel requests from strategy services.",
            ),
            "ROUTES": StreamSpec(
                self.stream_name("ROUTES"),
                (f"{p}.routes.>", f"{p}.cancels.>"),
                max_age_seconds=7 * 86400,
                duplicate_window_seconds=3600,
                description="Route decisions and cancel requests, one subject per broker.",
            ),
            "EXECUTIONS": StreamSpec(
                self.stream_name("EXECUTIONS"),
                (f"{p}.exec.>", f"{p}.fills.>", f"{p}.failover.>"),
                max_age_seconds=7 * 86400,
                duplicate_window_seconds=3600,
                description="Execution reports, fills and failover events.",
            ),
            "POSITIONS": StreamSpec(
                self.stream_name("POSITIONS"),
                (f"{p}.positions.>", f"{p}.status.>"),
                max_age_seconds=86400,
                max_msgs_per_subject=1,
                description="Latest position snapshot and status per broker.",
            ),
            "APPROVALS": StreamSpec(
                self.stream_name("APPROVALS"),
                (f"{p}.approvals.>",),
                max_age_seconds=30 * 86400,
                duplicate_window_seconds=3600,
                description="Steps of orders held for an operator's approval.",
            ),
            "DLQ": StreamSpec(
                self.stream_name("DLQ"),
                (f"{p}.dlq.>",),
                max_age_seconds=30 * 86400,
                description="Dead letters, kept for inspection and replay.",
            ),
        }
        object.__setattr__(self, "_streams", streams)

    # Streams and consumers ------------------------------------------------------------------

    def stream_name(self, base: str) -> str:
        return base if self.prefix == DEFAULT_PREFIX else f"{self.prefix.upper()}_{base}"

    @property
    def streams(self) -> tuple[StreamSpec, ...]:
        return tuple(self._streams.values())

    def stream(self, base: str) -> StreamSpec:
        return self._streams[base]

    # Subjects -------------------------------------------------------------------------------

    def intent(self, strategy_id: str) -> str:
        return f"{self.prefix}.orders.intent.{strategy_id}"

    def cancel(self, strategy_id: str) -> str:
        return f"{self.prefix}.orders.cancel.{strategy_id}"

    def parent_intent(self, strategy_id: str) -> str:
        """A parent order (an intent with an ``execution`` block), forwarded unchanged by the router to
        the parent-order worker. It stays in the ORDERS stream, and no router consumer takes it (they
        filter ``orders.intent.>`` and ``orders.cancel.>``). Only the router publishes here."""
        return f"{self.prefix}.orders.parent.intent.{strategy_id}"

    def parent_cancel(self, strategy_id: str) -> str:
        """A cancel request for a parent order, forwarded by the router to the parent-order worker."""
        return f"{self.prefix}.orders.parent.cancel.{strategy_id}"

    def is_parent_intent(self, subject: str) -> bool:
        parts = subject.split(".")
        return len(parts) == 5 and parts[0] == self.prefix and parts[1:4] == ["orders", "parent", "intent"]

    def is_parent_cancel(self, subject: str) -> bool:
        parts = subject.split(".")
        return len(parts) == 5 and parts[0] == self.prefix and parts[1:4] == ["orders", "parent", "cancel"]

    def route(self, broker: BrokerName | str, strategy_id: str) -> str:
        return f"{self.prefix}.routes.{broker}.{strategy_id}"

    def routes_to(self, broker: BrokerName | str) -> tuple[str, str]:
        """Every route to ``broker``: whatever the strategy, and as version 1 named them."""
        return f"{self.prefix}.routes.{broker}.*", f"{self.prefix}.routes.{broker}"

    def cancel_route(self, broker: BrokerName | str) -> str:
        """A cancel request forwarded to the broker that holds the order."""
        return f"{self.prefix}.cancels.{broker}"

    def control(self, broker: BrokerName | str) -> str:
        """Request/reply: switch a simulated broker's faults at runtime."""
        return f"{self.prefix}.control.{broker}"

    def execution(self, broker: BrokerName | str | None, status: OrderStatus | str, strategy_id: str) -> str:
        return f"{self.prefix}.exec.{broker or UNROUTED}.{status}.{strategy_id}"

    def cancel_reject(self, broker: BrokerName | str | None, strategy_id: str) -> str:
        return f"{self.prefix}.exec.{broker or UNROUTED}.{CANCEL_REJECTED}.{strategy_id}"

    def refusal(self, strategy_id: str) -> str:
        """An intent refused because of who sent it (``IntentRefused``), to its sender."""
        return f"{self.prefix}.exec.{UNROUTED}.{REFUSED}.{strategy_id}"

    def pending_approval(self, strategy_id: str) -> str:
        """An order held for approval, told to its strategy (an ``ApprovalEvent``, step pending)."""
        return f"{self.prefix}.exec.{UNROUTED}.{PENDING_APPROVAL}.{strategy_id}"

    def is_pending_approval(self, subject: str) -> bool:
        parts = subject.split(".")
        return len(parts) >= 4 and parts[0] == self.prefix and parts[1] == "exec" and parts[3] == PENDING_APPROVAL

    def approval(self, step: ApprovalStep | str) -> str:
        """A step of an order held for approval, for operators (``ApprovalEvent``)."""
        return f"{self.prefix}.approvals.{step}"

    def is_refusal(self, subject: str) -> bool:
        parts = subject.split(".")
        return len(parts) >= 4 and parts[0] == self.prefix and parts[1] == "exec" and parts[3] == REFUSED

    def parent_report(self, status: ParentStatus | str, strategy_id: str) -> str:
        """A parent order's state across its children (``ParentReport``). It sits among the execution
        reports, so a strategy reads it with its own results; readers of ``exec.>`` tell it apart
        with ``is_parent_report``."""
        return f"{self.prefix}.exec.{PARENT}.{status}.{strategy_id}"

    def is_parent_report(self, subject: str) -> bool:
        parts = subject.split(".")
        return len(parts) >= 4 and parts[0] == self.prefix and parts[1] == "exec" and parts[2] == PARENT

    def fill(self, broker: BrokerName | str, symbol: str, strategy_id: str) -> str:
        return f"{self.prefix}.fills.{broker}.{symbol_token(symbol)}.{strategy_id}"

    def results_of(self, strategy_id: str) -> tuple[str, str, str]:
        """The routes, reports (cancel rejections included) and fills of one strategy's intents:
        what a strategy's user may read."""
        p = self.prefix
        return f"{p}.routes.*.{strategy_id}", f"{p}.exec.*.*.{strategy_id}", f"{p}.fills.*.*.{strategy_id}"

    def is_cancel_reject(self, subject: str) -> bool:
        """A cancel rejection's subject (version 1 or 2), not an execution report's."""
        parts = subject.split(".")
        return len(parts) >= 4 and parts[0] == self.prefix and parts[1] == "exec" and parts[3] == CANCEL_REJECTED

    def failover(self, broker: BrokerName | str) -> str:
        return f"{self.prefix}.failover.{broker}"

    def positions(self, broker: BrokerName | str) -> str:
        return f"{self.prefix}.positions.{broker}"

    def status(self, broker: BrokerName | str) -> str:
        return f"{self.prefix}.status.{broker}"

    def dlq(self, stage: DeadLetterStage | str) -> str:
        return f"{self.prefix}.dlq.{stage}"

    def api(self, name: str) -> str:
        return f"{self.prefix}.api.{name}"

    @property
    def route_preview(self) -> str:
        return self.api("route.preview")

    @property
    def route_split(self) -> str:
        """Request/reply: how the router would share one slice of a parent order among brokers now."""
        return self.api("route.split")

    # Wildcards, for subscribers ---------------------------------------------------------------

    @property
    def all_intents(self) -> str:
        return f"{self.prefix}.orders.intent.>"

    @property
    def all_cancels(self) -> str:
        return f"{self.prefix}.orders.cancel.>"

    @property
    def all_parent_orders(self) -> str:
        """Parent intents and parent cancels the router forwarded to the parent-order worker."""
        return f"{self.prefix}.orders.parent.>"

    @property
    def all_routes(self) -> str:
        return f"{self.prefix}.routes.>"

    @property
    def all_executions(self) -> str:
        return f"{self.prefix}.exec.>"

    @property
    def all_fills(self) -> str:
        return f"{self.prefix}.fills.>"

    @property
    def all_failovers(self) -> str:
        return f"{self.prefix}.failover.>"

    @property
    def all_approvals(self) -> str:
        return f"{self.prefix}.approvals.>"

    @property
    def all_positions(self) -> str:
        return f"{self.prefix}.positions.>"

    @property
    def all_statuses(self) -> str:
        return f"{self.prefix}.status.>"

    # KV buckets -----------------------------------------------------------------------------

    @property
    def config_bucket(self) -> str:
        """Live routing config: key ``trading`` (the YAML shape, as JSON, without credentials)."""
        return f"{self.prefix}_config"

    @property
    def status_bucket(self) -> str:
        """Broker health: one key per broker (a BrokerStatus), written by its executors."""
        return f"{self.prefix}_broker_status"

    @property
    def fill_quality_bucket(self) -> str:
        """Measured fill quality: one key per broker (a FillQuality)."""
        return f"{self.prefix}_fill_quality"

    @property
    def worker_status_bucket(self) -> str:
        """Workers' own state (``aggregator``: ok, or why it is not writing), for `mbx status`."""
        return f"{self.prefix}_worker_status"

    def snapshot_request(self, broker: BrokerName | str) -> str:
        """Request/reply: ask a broker's executor for a fresh PositionSnapshot now."""
        return self.api(f"positions.{broker}.refresh")

    @property
    def approvals_bucket(self) -> str:
        """Orders held for approval: one key per intent (the hold and its approvals), written by the
        router and, with compare-and-set, by operators' tools (``mbx approve``, the dashboard)."""
        return f"{self.prefix}_approvals"

    @property
    def exposure_bucket(self) -> str:
        """Cross-broker exposure: key ``current`` (an ExposureSnapshot)."""
        return f"{self.prefix}_exposure"

    def sender(self, subject: str) -> str | None:
        """The strategy that sent a message on an intent or cancel subject (the subject's last
        token), or None for any other subject. A strategy is who its subject says (under
        ``--secure`` only its own NATS user may publish there), whatever its body claims."""
        parts = subject.split(".")
        if len(parts) == 4 and parts[0] == self.prefix and parts[1] == "orders" and parts[2] in ("intent", "cancel"):
            return parts[3]
        return None

    def kind(self, subject: str) -> str:
        """The message kind of a subject: ``orders``, ``routes``, ``exec``, ``fills``, ..."""
        parts = subject.split(".")
        if len(parts) < 2 or parts[0] != self.prefix:
            return ""
        return parts[1]
