"""The workers' private side of the bus: durable consumers and internal KV buckets.

Strategy services never need these, so they are not in ``contracts``; every subject a consumer
filters on still comes from ``contracts.Subjects``. ``workers.platform.bus`` applies the
consumer definitions at every worker start (``pull_subscribe`` alone would not update a changed
consumer).
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts import BrokerName, Subjects

WORKER_KINDS = ("router", "executor", "aggregator", "parents")
"""Every kind of worker (``mbx worker <kind>``; ``compose.yaml`` names each as a service)."""

ARRIVAL_PRICE_HEADER = "Mbx-Arrival-Price"
"""Set by the router on a parent order it forwards: the reference quote's mid when the parent arrived
(absent without a fresh quote). A header, so the forwarded intent itself stays as the strategy sent it."""


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """A durable pull consumer, independent of any client library."""

    stream: str
    durable: str
    filter_subjects: tuple[str, ...]
    max_deliver: int = -1
    """Deliveries the server makes: no limit. A server that stops delivering drops the message
    without a trace when its last delivery dies with a crashed worker, so the worker decides
    instead (``dead_letter_after``), and only on a delivery it handles."""
    ack_wait_seconds: float = 30.0
    max_ack_pending: int = 2000
    description: str = ""
    dead_letter_after: int = 5
    """Failed deliveries after which a message is dead-lettered with the last error."""

    @property
    def give_up_after(self) -> int:
        return self.dead_letter_after


@dataclass(frozen=True, slots=True)
class Topology:
    """Durable consumers and private buckets for one subject prefix."""

    subjects: Subjects

    @property
    def prefix(self) -> str:
        return self.subjects.prefix

    # Durable consumers ------------------------------------------------------------------------

    def router_consumer(self) -> ConsumerSpec:
        return ConsumerSpec(
            stream=self.subjects.stream_name("ORDERS"),
            durable="router",
            filter_subjects=(self.subjects.all_intents,),
            description="The router's share of order intents.",
        )

    def router_failover_consumer(self) -> ConsumerSpec:
        return ConsumerSpec(
            stream=self.subjects.stream_name("EXECUTIONS"),
            durable="router-failover",
            filter_subjects=(self.subjects.all_failovers,),
            description="Failed attempts the router re-routes to the next broker.",
        )

    def router_cancel_consumer(self) -> ConsumerSpec:
        return ConsumerSpec(
            stream=self.subjects.stream_name("ORDERS"),
            durable="router-cancel",
            filter_subjects=(self.subjects.all_cancels,),
            description="Cancel requests the router forwards to the broker holding the order.",
        )

    def parents_consumer(self) -> ConsumerSpec:
        return ConsumerSpec(
            stream=self.subjects.stream_name("ORDERS"),
            durable="parents",
            filter_subjects=(self.subjects.all_parent_orders,),
            description="Parent orders and their cancels, forwarded by the router to the parent-order worker.",
        )

    def parents_progress_consumer(self) -> ConsumerSpec:
        return ConsumerSpec(
            stream=self.subjects.stream_name("EXECUTIONS"),
            durable="parents-progress",
            filter_subjects=(self.subjects.all_executions,),
            max_ack_pending=10000,
            description="Execution reports, of which the parent-order worker follows its children's.",
        )

    def executor_consumer(self, broker: BrokerName) -> ConsumerSpec:
        return ConsumerSpec(
            stream=self.subjects.stream_name("ROUTES"),
            durable=f"executor-{broker}",
            filter_subjects=(*self.subjects.routes_to(broker), self.subjects.cancel_route(broker)),
            # Short, so a crashed replica's orders come back quickly; placement takes well under it.
            ack_wait_seconds=10.0,
            description=f"Route decisions for {broker}, shared by its executor replicas.",
        )

    def aggregator_consumers(self) -> tuple[ConsumerSpec, ...]:
        s = self.subjects
        return (
            ConsumerSpec(
                stream=s.stream_name("ROUTES"),
                durable="aggregator-routes",
                filter_subjects=(s.all_routes,),
                max_ack_pending=10000,
            ),
            ConsumerSpec(
                stream=s.stream_name("EXECUTIONS"),
                durable="aggregator-executions",
                filter_subjects=(s.all_executions, s.all_fills, s.all_failovers),
                max_ack_pending=10000,
            ),
            ConsumerSpec(
                stream=s.stream_name("POSITIONS"),
                durable="aggregator-positions",
                filter_subjects=(s.all_positions, s.all_statuses),
                max_ack_pending=1000,
            ),
            ConsumerSpec(
                stream=s.stream_name("APPROVALS"),
                durable="aggregator-approvals",
                filter_subjects=(s.all_approvals,),
                max_ack_pending=1000,
                description="Steps of orders held for approval, for the approvals table.",
            ),
        )

    # Private KV buckets -----------------------------------------------------------------------

    @property
    def order_ledger_bucket(self) -> str:
        """Where each intent's order is, written by the executors: ``i.<intent id, base64>`` (broker,
        status, report sequence) and ``open.<broker>.<intent id, base64>`` while the order works."""
        return f"{self.prefix}_orders"

    @property
    def rate_budget_bucket(self) -> str:
        """Each broker's shared token bucket: one key per broker, updated with compare-and-set."""
        return f"{self.prefix}_rate_budgets"

    @property
    def decisions_bucket(self) -> str:
        """The router's journal: what it published for each intent and attempt, so any later
        delivery of the same input republishes it instead of deciding again."""
        return f"{self.prefix}_decisions"

    @property
    def parents_bucket(self) -> str:
        """The parent-order worker's journal: ``p.<parent>`` (the plan, every child planned and sent, and
        what each reported), ``a.<parent>`` while the parent is active, ``c.<child>`` (its parent)."""
        return f"{self.prefix}_parents"

    @property
    def shape_locks_bucket(self) -> str:
        """At brokers without client order ids: one lock per order shape (short-lived)."""
        return f"{self.prefix}_shape_locks"

    @property
    def attributions_bucket(self) -> str:
        """At brokers without client order ids: which intent each broker order belongs to."""
        return f"{self.prefix}_attributions"

    def order_ids_bucket(self, broker: BrokerName | str) -> str:
        """A broker's order ids that mbx picks (IBKR): each intent's, written before it is sent."""
        return f"{self.prefix}_order_ids_{broker}"

    @property
    def scrape_bucket(self) -> str:
        """Where each worker serving metrics announces its address (entries expire)."""
        return f"{self.prefix}_scrape"

    def sim_book_bucket(self, broker: BrokerName | str) -> str:
        """A simulated broker's own order book (paper trading only)."""
        return f"{self.prefix}_sim_{broker}"
