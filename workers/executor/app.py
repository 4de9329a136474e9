"""Composition root of one broker's executor worker, and its heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import uuid
from typing import TYPE_CHECKING, Any

import structlog
from nats.js.errors import KeyNotFoundError

from contracts import BrokerName, BrokerStatus, PositionSnapshot
from workers.domain.capabilities import VenueCapabilities
from workers.domain.config import (
    BrokerConfig,
    ConfigError,
    MbxConfig,
    orders_per_day_of,
    parse_config,
    rate_limit_of,
    rate_limits,
)
from workers.domain.keys import CONFIG_KEY
from workers.domain.rates import RateLimit, sustained_rate
from workers.domain.venue import (
    SupportsFaults,
    SupportsRateStats,
    SupportsRequestGate,
    SupportsUpdates,
    SupportsWarning,
    Venue,
    VenueError,
    VenueOrder,
)
from workers.executor.budget import DailyOrderBudget, RateBudget
from workers.executor.handlers import PROBE_INTERVAL, ExecutorHandlers
from workers.platform import metrics
from workers.platform.bus import open_bucket, publish, read_json
from workers.platform.live_config import CONFIG_HISTORY
from workers.platform.order_ledger import OrderLedger
from workers.platform.runtime import Worker
from workers.platform.settings import Settings

if TYPE_CHECKING:
    from nats.aio.msg import Msg

log = structlog.get_logger("mbx.executor")

HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_WRITE_TIMEOUT = 2.0
"""Seconds one heartbeat write may take; then it is built again (a fresh ``last_seen``) and sent
again, until it is stored: a cluster electing the bucket's leader (4-8 s) answers nothing."""
HEARTBEAT_RETRY_PAUSE = 0.25
"""Seconds between two tries of a heartbeat write the bus refused."""

POLL_INTERVAL = 2.0
"""Seconds between looks at the broker's working orders (fills and cancels that happen there)."""
STREAM_POLL_INTERVAL = 30.0
"""The same, at a broker whose stream pushes order changes: only a safety net."""
EARLY_UPDATE_INTERVAL = 1.0
"""Seconds between looks for the ledger entries of orders the stream told of before they were
recorded (the replica that placed one applies its news at once when it records it)."""
CONFIG_POLL_INTERVAL = 2.0
"""Seconds between looks at the live config for a changed rate limit."""
REFRESH_DELAY = 0.5
"""Seconds after a fill before the broker's positions are refreshed (fills in between share it)."""
REFRESH_BUDGET_SHARE = 0.1
"""Most of the rate budget refreshes after fills may spend (two requests each): at a slow broker
they come less often, never at the cost of the orders (at 32 requests a minute a refresh every
half second would have taken the whole budget). The spacing this makes runs from the previous
refresh, not from the fill: the first fill after a quiet spell is refreshed after
``REFRESH_DELAY`` (at Alpaca's 200 a minute, waiting the spacing after every fill kept a position
out of the portfolio for 7 s)."""
SNAPSHOT_INTERVAL = 30.0
"""Seconds between PositionSnapshots on the timer (one more can be asked for at any time)."""
BUDGET_WAIT_SHARE = 0.5
"""Most of a broker call's deadline (``request_timeout_s``) a request may wait for a rate token;
a longer wait is refused at once (nothing sent) and the message waits that long."""


class ExecutorWorker(Worker):
    """Connects its venue, settles the orders its broker left working before taking new work
    (and looks at the working ones every ``POLL_INTERVAL`` after),
    reports the broker's health to the status KV bucket every second (and once more, as
    disconnected, when it stops), and publishes account and positions on a timer and on request.
    A simulated venue's faults can be switched over ``mbx.control.<broker>``."""

    def __init__(
        self, settings: Settings, venue: Venue, limits: tuple[RateLimit, ...], config: MbxConfig | None = None
    ) -> None:
        super().__init__(f"executor-{venue.broker}", settings)
        self.venue = venue
        topology = settings.topology
        self.ledger = OrderLedger(lambda: self.js, topology.order_ledger_bucket)
        self.budget = RateBudget(lambda: self.js, topology.rate_budget_bucket, str(venue.broker), limits)
        if isinstance(venue, SupportsRequestGate):
            # The adapter counts each request it sends (its own fill reads too) and tells the
            # budget of every 429; the handlers take no tokens themselves.
            venue.use_gate(self.budget)
        self.daily = DailyOrderBudget(
            lambda: self.js, topology.rate_budget_bucket, str(venue.broker), orders_per_day_of(venue.broker, config)
        )
        self.handlers = ExecutorHandlers(
            self, topology.executor_consumer(venue.broker), venue, self.ledger, self.budget, daily=self.daily
        )
        self._status_kv: Any = None
        self._headroom = 1.0
        self._recorded: tuple[bool | None, float] = (None, 0.0)
        self._warned = ""
        self._config_revision: int | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._refreshed_at = -math.inf
        """When the last refresh after a fill began (``time.monotonic``)."""
        self._audit: asyncio.Task[None] | None = None
        self.handlers.after_fill = self.refresh_positions_soon
        # A request waits for a rate token at most part of a broker call's deadline: a call cut
        # short by its deadline counts as ambiguous, a refused token as not sent.
        self.budget.max_wait = lambda: BUDGET_WAIT_SHARE * self.handlers.request_timeout
        if config is not None:
            self._handle_with(config)

    def _handle_with(self, config: MbxConfig) -> None:
        """What the handlers take from the config: the call deadline and the failover bound."""
        self.handlers.request_timeout = request_timeout(self.venue.broker, config)
        self.handlers.max_queue_wait_s = config.routing.max_queue_wait_s

    async def prepare(self) -> None:
        # Connected once NATS is: the adapter's first request (its probe) takes a token from the
        # rate budget, which lives in KV.
        await self.venue.connect()
        self._status_kv = await open_bucket(self.js, self.subjects.status_bucket)
        try:
            settled = await self.handlers.reconcile()
        except Exception as exc:  # noqa: BLE001  (broker unreachable: its orders are settled later)
            log.warning("reconciliation failed", broker=str(self.venue.broker), error=f"{type(exc).__name__}: {exc}")
        else:
            log.info("reconciled", broker=str(self.venue.broker), settled=settled)
        await self.beat()
        await self.listen(self.subjects.snapshot_request(self.venue.broker), self._on_snapshot_request)
        await self.listen(self.subjects.control(self.venue.broker), self._on_control)
        self.every(HEARTBEAT_INTERVAL, self.beat, "heartbeat")
        self.every(PROBE_INTERVAL, self.probe_if_down, "probing the broker")
        self.every(SNAPSHOT_INTERVAL, self.publish_snapshot, "position snapshot")
        if isinstance(self.venue, SupportsUpdates):
            # The broker pushes order changes: follow its stream, and poll only as a safety net.
            streaming = self.venue
            self.background(lambda: streaming.stream_updates(self._on_update, self._settle), "order stream")
            self.every(STREAM_POLL_INTERVAL, self.handlers.reconcile, "order polling")
            # News of an order that came before its ledger entry (recorded by another replica).
            self.every(EARLY_UPDATE_INTERVAL, self.handlers.apply_early_updates, "early order updates")
        else:
            self.every(POLL_INTERVAL, self.handlers.reconcile, "order polling")
        await self.follow_live_config()
        self.every(CONFIG_POLL_INTERVAL, self.follow_live_config, "live config")

    async def _on_update(self, order: VenueOrder) -> None:
        """An order changed at the broker (its stream said so): report it."""
        if not order.client_order_id:
            return
        try:
            await self.handlers.advance(order.client_order_id, order)
        except Exception as exc:  # noqa: BLE001  (the poller reports it later)
            log.warning(
                "stream update not reported yet", intent_id=order.client_order_id, error=f"{type(exc).__name__}: {exc}"
            )

    async def _settle(self) -> None:
        """After the stream (re)connects: what changed while it was away, read over REST."""
        try:
            await self.handlers.reconcile()
        except Exception as exc:  # noqa: BLE001  (the poller tries again)
            log.warning("reconciliation after the stream connected failed", error=f"{type(exc).__name__}: {exc}")

    async def follow_live_config(self) -> None:
        """Take this broker's rate limit from the live config (``mbx config set``), as the
        router takes everything else from it; the YAML file only seeds it."""
        kv = await open_bucket(self.js, self.subjects.config_bucket, history=CONFIG_HISTORY)
        try:
            entry = await kv.get(CONFIG_KEY)
        except KeyNotFoundError:
            return
        if not entry.value or entry.revision == self._config_revision:
            return
        self._config_revision = entry.revision
        try:
            config = parse_config(json.loads(entry.value), f"config revision {entry.revision}")
        except (ConfigError, ValueError) as exc:
            log.warning("live config refused; keeping the rate limit", error=str(exc))
            return
        self._handle_with(config)
        self.daily.per_day = orders_per_day_of(self.venue.broker, config)
        limits = rate_limit(self.venue.broker, config, self.venue.capabilities)
        if limits != self.budget.limits:
            windows = [f"{w.requests} per {w.per_seconds:g}s" for w in limits]
            log.info("rate limit changed", broker=str(self.venue.broker), windows=windows)
            self.budget.limits = limits

    def refresh_positions_soon(self) -> None:
        """Publish a fresh PositionSnapshot shortly after a fill (one for a burst of fills), so
        the portfolio shows a position at once rather than at the next timed snapshot."""
        if self._refresh is not None and not self._refresh.done():
            return
        if self.stopping.is_set():
            return
        spacing = 2 / sustained_rate(self.budget.limits) / REFRESH_BUDGET_SHARE  # two requests at its rate
        delay = max(REFRESH_DELAY, self._refreshed_at + spacing - time.monotonic())
        self._refresh = asyncio.create_task(self._refresh_after(delay), name=f"{self.name}:refresh")

    async def _refresh_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._refreshed_at = time.monotonic()
        try:
            await self.publish_snapshot()
        except Exception as exc:  # noqa: BLE001  (the timed snapshot follows anyway)
            log.warning("position refresh failed", broker=str(self.venue.broker), error=f"{type(exc).__name__}: {exc}")

    async def cleanup(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
        if self._audit is not None:
            self._audit.cancel()
        with contextlib.suppress(Exception):
            await self.beat(connected=False)

    async def stop(self) -> None:
        await super().stop()
        await self.venue.disconnect()

    async def probe_if_down(self) -> None:
        """Look at a broker that counts as down (its adapter's cheap authenticated read), so it
        counts as up again as soon as it answers."""
        if self.venue.is_connected or self.stopping.is_set():
            return
        with contextlib.suppress(VenueError, TimeoutError):  # still down: its reason is kept
            await self.handlers.broker_call(self.venue.connect(), "probing the broker", probe=True)

    def status(self, connected: bool | None = None) -> BrokerStatus:
        stats = self.handlers.stats
        up = self.venue.is_connected if connected is None else connected
        spent = self.daily.spent_reason()
        if up and spent and connected is None:
            up, reason = False, spent  # the router sends new orders elsewhere until the next day
        elif up:
            reason = ""
        elif connected is False:
            reason = f"the {self.venue.broker} executor stopped"
        else:
            reason = self.venue.down_because or f"{self.venue.broker} is not connected"
        return BrokerStatus(
            correlation_id=str(self.venue.broker),
            broker=self.venue.broker,
            connected=up,
            latency_ms=round(stats.latency_ms, 3),
            error_rate=round(stats.error_rate, 4),
            rate_limit_headroom=self._headroom,
            reason=reason[:500],
            warning=self.venue.warning[:500] if isinstance(self.venue, SupportsWarning) else "",
        )

    async def beat(self, connected: bool | None = None) -> None:
        """Health to KV every second (the router's live view), sent again through a bus that
        does not answer (an election); to the status stream, for the audit trail, when the
        connection state changes and every ``SNAPSHOT_INTERVAL``, without holding up the next
        beat. Each beat carries this executor's own view of its broker (``connected``,
        ``reason``), so a heartbeat that arrives late never says more than the executor knew."""
        with contextlib.suppress(Exception):  # headroom unknown (its bucket may be electing): keep the last figure
            self._headroom = await asyncio.wait_for(self.budget.headroom(), HEARTBEAT_WRITE_TIMEOUT / 2)
        metrics.RATE_HEADROOM.labels(str(self.venue.broker)).set(self._headroom)
        status = await self._write_heartbeat(connected)
        now = time.monotonic()
        if status.warning and not self._warned:  # once when it appears (its text counts down)
            log.warning("broker warning", broker=str(self.venue.broker), warning=status.warning)
        self._warned = status.warning
        if status.connected != self._recorded[0] or now - self._recorded[1] >= SNAPSHOT_INTERVAL:
            if not status.connected:
                log.error("broker down", broker=str(self.venue.broker), reason=status.reason)
            if connected is False:  # the last word before stopping: sent now
                await publish(self.js, self.subjects.status(self.venue.broker), status)
            elif self._audit is None or self._audit.done():
                self._audit = asyncio.create_task(self._record(status), name=f"{self.name}:status record")
            self._recorded = (status.connected, now)

    async def _write_heartbeat(self, connected: bool | None) -> BrokerStatus:
        """Write the heartbeat to the status bucket until it is stored, built anew for each try
        (so ``last_seen`` says when it was sent, not when the first try began); the status
        written. The stopping executor's last word (``connected=False``) is tried once."""
        failing = False
        while True:
            status = self.status(connected)
            try:
                await asyncio.wait_for(
                    self._status_kv.put(str(self.venue.broker), status.model_dump_json().encode()),
                    HEARTBEAT_WRITE_TIMEOUT,
                )
            except Exception as exc:
                if connected is False or self.stopping.is_set():
                    raise
                if not failing:
                    log.warning(
                        "heartbeat not stored; sending it again",
                        broker=str(self.venue.broker),
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    failing = True
                await asyncio.sleep(HEARTBEAT_RETRY_PAUSE)
                continue
            if failing:
                log.info("heartbeat stored again", broker=str(self.venue.broker))
            return status

    async def _record(self, status: BrokerStatus) -> None:
        """The status on the status stream, for the audit trail (a missed one is written at the
        next change or ``SNAPSHOT_INTERVAL``)."""
        try:
            await publish(self.js, self.subjects.status(self.venue.broker), status)
        except Exception as exc:  # noqa: BLE001  (audit only; the next record follows)
            log.warning(
                "broker status not recorded", broker=str(self.venue.broker), error=f"{type(exc).__name__}: {exc}"
            )

    async def snapshot(self) -> PositionSnapshot:
        # Each with the broker call's deadline: a hung broker never holds the snapshot timer. A
        # snapshot asks even a broker that counts as down (it is rare, and an operator's refresh
        # after renewing a key must not wait for the next look): its answer is a look too.
        account = await self.handlers.broker_call(self.venue.get_account(), "reading the account", probe=True)
        positions = await self.handlers.broker_call(self.venue.get_positions(), "reading the positions", probe=True)
        return PositionSnapshot(
            message_id=f"positions-{self.venue.broker}-{uuid.uuid4().hex}",
            correlation_id=str(self.venue.broker),
            broker=self.venue.broker,
            account=account,
            positions=tuple(positions),
        )

    async def publish_snapshot(self) -> PositionSnapshot:
        snapshot = await self.snapshot()
        await publish(self.js, self.subjects.positions(self.venue.broker), snapshot)
        return snapshot

    async def _on_snapshot_request(self, msg: Msg) -> None:
        try:
            reply = (await self.publish_snapshot()).model_dump_json().encode()
        except Exception as exc:  # noqa: BLE001  (the asker gets the reason, not a timeout)
            reply = json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode()
        if msg.reply:
            await msg.respond(reply)

    async def _on_control(self, msg: Msg) -> None:
        """``{"faults": {"outage": true, ...}}`` switches faults; ``{}`` just reads them (and the
        simulator's side of the rate limit)."""
        if not isinstance(self.venue, SupportsFaults):
            answer: dict[str, Any] = {"error": f"{self.venue.broker}'s adapter has no switchable faults"}
        else:
            try:
                request = read_json(msg.data or b"{}")
                if not isinstance(request, dict):
                    raise ValueError("the request must be a JSON object")
                faults = self.venue.switch_faults(request.get("faults") or {})
                answer = {"broker": str(self.venue.broker), "faults": faults}
                if isinstance(self.venue, SupportsRateStats):
                    answer["rate"] = self.venue.rate_stats()
                log.warning("faults switched", broker=str(self.venue.broker), faults=faults)
            except ValueError as exc:
                answer = {"error": str(exc)}
        if msg.reply:
            await msg.respond(json.dumps(answer).encode())


def rate_limit(
    broker: BrokerName, config: MbxConfig | None, capabilities: VenueCapabilities | None = None
) -> tuple[RateLimit, ...]:
    """The configured windows of ``broker``, else the documented ones (of its adapter, where
    ``capabilities`` says: Robinhood's crypto API allows more than its equities)."""
    documented = capabilities.rate_windows if capabilities is not None else None
    return rate_limits(rate_limit_of(broker, config, documented))


def request_timeout(broker: BrokerName, config: MbxConfig | None) -> float:
    """The deadline of one call to ``broker``, from the config."""
    broker_config = config.brokers.get(broker) if config else None
    return broker_config.request_timeout_s if broker_config else BrokerConfig().request_timeout_s


def build_executor(
    settings: Settings,
    broker: BrokerName,
    venue: Venue,
    limits: tuple[RateLimit, ...] | None = None,
    config: MbxConfig | None = None,
) -> ExecutorWorker:
    worker = ExecutorWorker(settings, venue, limits or rate_limit(broker, config, venue.capabilities), config)
    # Overlapping: at a broker without client order ids a route may wait for a same-shaped order's
    # outcome, whose redelivery must not be held back behind it.
    worker.subscribe(
        settings.topology.executor_consumer(broker),
        worker.handlers.on_route,
        batch_size=32,
        overlapping=not venue.capabilities.has_client_order_id,
    )
    return worker
