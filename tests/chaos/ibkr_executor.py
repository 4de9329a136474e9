"""The executor with the IBKR adapter, its ib_async client talking to the test's fake gateway
(``tests/fakes/ibkr_bridge.py``, address in ``TEST_IBKR_BRIDGE``):
``python -m tests.chaos.ibkr_executor worker executor --broker ibkr``. Everything else is the
real executor; only the socket to TWS is replaced."""

from __future__ import annotations

import workers.venues.ibkr.venue as ibkr_venue
from tests.fakes.ibkr_bridge import bridged_ib
from workers.cli.main import main

ibkr_venue.IB = bridged_ib  # type: ignore[misc,assignment]

if __name__ == "__main__":
    main()
