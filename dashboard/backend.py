"""Everything the dashboard reads or does, as plain calls: one event loop on a thread of its own
holds the NATS connection and the database pool for the life of the server, and each page run
waits for the answers it needs (Streamlit runs page code on its own threads, without a loop)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import nats
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import OrderIntent, Portfolio, RoutePreview, SymbolExposure
from contracts.client import split_servers
from workers.domain.config import MbxConfig, config_to_json, parse_config
from workers.ops import approvals, dlq
from workers.ops import config as live_config
from workers.ops.approval_queue import QueueEntry, queue_entry
from workers.ops.cancel import CancelOutcome, cancel_order
from workers.ops.errors import OperatorError
from workers.ops.status import StackStatus, stack_status
from workers.ops.whatif import WHATIF_TIMEOUT_S, WhatIfReport, whatif_report
from workers.platform.access import connect_options
from workers.platform.bus import jetstream
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings
from workers.readmodel import parent_progress, routing
from workers.readmodel.approvals import recent_decisions
from workers.readmodel.explain import intent_story
from workers.readmodel.parents import ParentStory, parent_story

T = TypeVar("T")

ANSWER_S = 15.0
"""How long a page waits for any one answer before it says what did not answer."""


class Unavailable(Exception):
    """A part of the stack did not answer; the message names it."""


class Backend:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.subjects = settings.subjects
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dashboard-io", daemon=True)
        self._thread.start()
        self._nc: Any = None
        self._engine: AsyncEngine | None = None

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = ANSWER_S) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _js(self) -> Any:
        if self._nc is None or self._nc.is_closed:
            try:
                self._nc = await nats.connect(
                    servers=split_servers(self.settings.nats_url or "nats://127.0.0.1:4222"),
                    connect_timeout=2,
                    max_reconnect_attempts=-1,
                    allow_reconnect=True,
                    **connect_options(self.settings),
                )
            except Exception as exc:  # noqa: BLE001  (any failure to connect is shown, not raised)
                raise Unavailable(f"NATS at {self.settings.nats_url} does not answer ({type(exc).__name__})") from None
        return jetstream(self._nc)

    def _db(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = make_engine(self.settings.sqlalchemy_url(), pool_size=4)
        return self._engine

    def close(self) -> None:
        async def close() -> None:
            if self._nc is not None and not self._nc.is_closed:
                await self._nc.close()
            if self._engine is not None:
                await self._engine.dispose()

        try:
            self._run(close(), timeout=5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)

    # -- the stack ---------------------------------------------------------------------------

    def status(self) -> StackStatus:
        async def read() -> StackStatus:
            return await stack_status(await self._js(), self.subjects)

        return self._run(read())

    def live(self) -> live_config.LiveConfig:
        async def read() -> live_config.LiveConfig:
            return await live_config.read_live_config(await self._js(), self.subjects)

        return self._run(read())

    def live_config(self, live: live_config.LiveConfig | None = None) -> MbxConfig:
        """The config the router uses now (defaults before the router first started), from
        ``live`` when the caller has already read it."""
        return parse_config((live or self.live()).config or {}, "the live config")

    async def _request(self, name: str, payload: bytes = b"", timeout: float = 10) -> dict[str, Any]:
        await self._js()
        subject = self.subjects.api(name)
        try:
            reply = await self._nc.request(subject, payload, timeout=timeout)
        except Exception as exc:  # noqa: BLE001  (no worker answering)
            raise Unavailable(f"nobody answered on {subject} ({type(exc).__name__})") from None
        data: dict[str, Any] = json.loads(reply.data)
        if data.get("error"):
            raise Unavailable(f"{subject}: {data['error']}")
        return data

    def portfolio(self) -> Portfolio:
        return Portfolio.model_validate(self._run(self._request("portfolio.unified")))

    def exposure(self, symbol: str) -> SymbolExposure:
        return SymbolExposure.model_validate(
            self._run(self._request("portfolio.exposure", json.dumps({"symbol": symbol.upper()}).encode()))
        )

    def preview(self, intent: OrderIntent) -> RoutePreview:
        async def ask() -> RoutePreview:
            await self._js()
            try:
                reply = await self._nc.request(
                    self.subjects.route_preview, intent.model_dump_json().encode(), timeout=10
                )
            except Exception as exc:  # noqa: BLE001
                raise Unavailable(f"the router did not answer a preview ({type(exc).__name__})") from None
            return RoutePreview.model_validate_json(reply.data)

        return self._run(ask())

    # -- the audit trail ---------------------------------------------------------------------

    def routes(self, where: routing.RouteFilter) -> list[dict[str, Any]]:
        return self._run(routing.recent_routes(self._db(), where))

    def story(self, intent_id: str) -> dict[str, list[dict[str, Any]]]:
        return self._run(intent_story(self._db(), intent_id))

    def failovers(self, since: datetime) -> list[dict[str, Any]]:
        return self._run(routing.recent_failovers(self._db(), since))

    def quality(self, brokers: list[str], since: datetime, bucket: timedelta) -> list[dict[str, Any]]:
        return self._run(routing.quality_over_time(self._db(), brokers, since, bucket))

    def config_history(self) -> list[dict[str, Any]]:
        return self._run(routing.config_history(self._db()))

    def replays(self) -> list[dict[str, Any]]:
        return self._run(routing.recent_replays(self._db()))

    def parents(self, limit: int = 50) -> list[dict[str, Any]]:
        return self._run(parent_progress.recent_parents(self._db(), limit))

    def parent_story(self, parent_intent_id: str) -> ParentStory:
        return self._run(parent_story(self._db(), parent_intent_id))

    def parent_progress(self, parent: dict[str, Any], now: datetime) -> list[parent_progress.ProgressPoint]:
        return self._run(parent_progress.parent_progress(self._db(), parent, now))

    def approval_decisions(self) -> list[dict[str, Any]]:
        return self._run(recent_decisions(self._db()))

    # -- the approval queue ------------------------------------------------------------------

    def approval_queue(self) -> list[QueueEntry]:
        """The orders held for approval now, oldest first."""

        async def read() -> list[QueueEntry]:
            holds = await approvals.held(await self._js(), self.subjects)
            now = datetime.now(UTC)
            return [queue_entry(h, now) for h in holds]

        return self._run(read())

    def approve(self, intent_id: str, operator: str, note: str) -> approvals.Decided:
        """Approve as ``operator``: the name as given, not marked "(dashboard)" as other changes
        are, so one person approving once here and once with `mbx approve` stays one operator."""

        async def write() -> approvals.Decided:
            return await approvals.approve(await self._js(), self.subjects, intent_id, operator, note)

        return self._run(write())

    def deny(self, intent_id: str, operator: str, note: str) -> approvals.Decided:
        async def write() -> approvals.Decided:
            return await approvals.deny(await self._js(), self.subjects, intent_id, operator, note)

        return self._run(write())

    # -- changes -----------------------------------------------------------------------------

    def change_config(self, changes: dict[str, Any], operator: str, summary: str) -> int:
        """Apply validated changes; raises ``InvalidChange`` naming the field (nothing applied)."""
        who = _signed(operator, "making the change")

        async def write() -> int:
            return await live_config.change_config(
                await self._js(),
                self._db(),
                self.subjects,
                live_config.changed(changes),
                summary=summary,
                operator=who,
            )

        return self._run(write())

    def whatif(self, config: MbxConfig, changes: dict[str, Any], since: str = "7d") -> WhatIfReport:
        """``config`` with ``changes`` (dotted keys, validated as an applied change would be:
        ``InvalidChange`` names a bad field) replayed over the decisions recorded since ``since``
        by `mbx whatif` (``workers.ops.whatif``); nothing is applied."""
        candidate = live_config.changed(changes)(json.loads(config_to_json(config)))
        database = self.settings.database_url or ""
        return self._run(whatif_report(candidate, database, since=since), timeout=WHATIF_TIMEOUT_S + ANSWER_S)

    def letters(self, filters: dlq.Filters, latest: int = 200) -> list[dlq.Letter]:
        async def read() -> list[dlq.Letter]:
            return await dlq.find_letters(await self._js(), self.subjects, filters, latest=latest)

        return self._run(read())

    def replay(self, letters: list[dlq.Letter], operator: str) -> int:
        who = _signed(operator, "replaying")

        async def send() -> int:
            return await dlq.replay(await self._js(), self._db(), letters, who)

        return self._run(send(), timeout=ANSWER_S + len(letters))

    def cancel(self, intent_id: str, strategy_id: str, operator: str, reason: str) -> CancelOutcome:
        """Cancel a working order or parent as its own strategy; the outcome, or ``queued``
        when none came within the wait."""
        who = _signed(operator, "cancelling")

        async def send() -> CancelOutcome:
            js = await self._js()
            return await cancel_order(
                self._nc, js, self.subjects, intent_id, strategy_id, operator=who, reason=reason, timeout=10
            )

        return self._run(send())


def _signed(operator: str, doing: str) -> str:
    """The operator's name as the audit trail records it, saying the change came from here."""
    if not operator.strip():
        raise OperatorError(f"say who is {doing}: the audit trail names every operator")
    return f"{operator.strip()[:80]} (dashboard)"
