"""Two builds of one report are the same message unless what they report differs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from contracts import BrokerName, OrderStatus
from tests.builders import make_intent, make_route
from workers.domain.reports import report
from workers.domain.venue import VenueFill, VenueOrder
from workers.platform.bus import _same_message


def test_when_it_was_built_and_whether_the_fills_were_listed_do_not_make_another_message() -> None:
    route = make_route(make_intent(quantity="10"), BrokerName.SCHWAB)
    order = VenueOrder("bo-1", "", OrderStatus.PARTIALLY_FILLED, Decimal(10))
    order.filled_quantity, order.average_price = Decimal(4), Decimal("100.5")
    without_fills = report(route, OrderStatus.PARTIALLY_FILLED, 2, order)
    order.fills = [VenueFill("bo-1-1", Decimal(4), Decimal("100.5"), Decimal(0), datetime.now(UTC))]
    with_fills = report(route, OrderStatus.PARTIALLY_FILLED, 2, order).model_copy(
        update={"created_at": datetime.now(UTC) + timedelta(seconds=5)}
    )
    assert with_fills.first_fill_at is not None and without_fills.first_fill_at is None
    assert _same_message(without_fills.model_dump_json().encode(), with_fills.model_dump_json().encode())

    order.filled_quantity = Decimal(6)
    further = report(route, OrderStatus.PARTIALLY_FILLED, 2, order)
    assert not _same_message(with_fills.model_dump_json().encode(), further.model_dump_json().encode())
