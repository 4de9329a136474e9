"""An executor that never looks an order up before placing it again: ``python -m
tests.chaos.blind_executor worker executor --broker alpaca``. It exists to show that the
worker-kill chaos test's request-log check catches a blind resubmission."""

from __future__ import annotations

from datetime import datetime

from contracts import RouteDecision
from workers.cli.main import main
from workers.domain.venue import VenueOrder
from workers.executor.handlers import ExecutorHandlers


async def _never_found(self: ExecutorHandlers, decision: RouteDecision, since: datetime) -> VenueOrder | None:
    return None


ExecutorHandlers._locate = _never_found  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
