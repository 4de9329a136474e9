"""`mbx explain <parent>` from the rows the audit trail holds: the parent's report, its children's
latest orders and routes, merged child by child in slice order."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from workers.cli.explain import print_parent
from workers.readmodel.parents import ParentStory, children_of, describe_execution

PARENT: dict[str, Any] = {
    "parent_intent_id": "p-1",
    "strategy_id": "momo",
    "symbol": "AAPL",
    "side": "buy",
    "status": "partially_filled",
    "quantity": Decimal("30.0000000000"),
    "filled_quantity": Decimal("15.0000000000"),
    "average_price": Decimal("100.5000000000"),
    "arrival_price": Decimal("100.2500000000"),
    "slippage_bps": 24.94,
    "execution": None,
    "children": [
        {"intent_id": "p-1:1.0", "broker": "alpaca", "slice_number": 1, "quantity": "10", "filled_quantity": "0",
         "status": "planned"},
        {"intent_id": "p-1:0.10", "broker": "ibkr", "slice_number": 0, "quantity": "5", "filled_quantity": "5",
         "status": "filled"},
        {"intent_id": "p-1:0.2", "broker": "schwab", "slice_number": 0, "quantity": "5", "filled_quantity": "0",
         "status": "rejected"},
        {"intent_id": "p-1:0.0", "broker": "alpaca", "slice_number": 0, "quantity": "10", "filled_quantity": "5",
         "status": "partially_filled"},
    ],
    "report_seq": 7,
    "reason": "",
}  # fmt: skip


def order(intent_id: str, attempt: int, broker: str | None, status: str, filled: str, **extra: Any) -> dict[str, Any]:
    return {
        "intent_id": intent_id,
        "attempt": attempt,
        "broker_name": broker,
        "status": status,
        "quantity": Decimal(extra.pop("quantity", "10")),
        "filled_quantity": Decimal(filled),
        "average_price": extra.pop("average_price", None),
        "reason": extra.pop("reason", None),
    }


def route(
    intent_id: str, attempt: int, broker: str, rule: str, reason: str, split: str | None = None
) -> dict[str, Any]:
    return {
        "intent_id": intent_id,
        "attempt": attempt,
        "broker_name": broker,
        "rule": rule,
        "reason": reason,
        "split": split,
    }


ORDERS = [
    order("p-1:0.0", 1, "alpaca", "filled", "10", average_price=Decimal("100.5")),  # newer than the report
    order("p-1:0.10", 1, "schwab", "rejected", "0", quantity="5", reason="insufficient buying power"),
    order("p-1:0.10", 2, "ibkr", "filled", "5", quantity="5", average_price=Decimal("100.5")),
    order("p-1:0.2", 1, None, "rejected", "0", quantity="5", reason="no eligible broker"),
]
ROUTES = [
    route("p-1:0.0", 1, "alpaca", "preference", "the strategy asked for alpaca", "alpaca: 10 of 20 (score 0.91)"),
    route("p-1:0.10", 1, "schwab", "split:parent", "schwab: 5 of 20"),
    route("p-1:0.10", 2, "ibkr", "failover", "next in the chain after schwab"),
]


def test_children_come_in_slice_then_part_order_with_their_latest_order_and_route() -> None:
    """The latest attempt of each child's order and route wins over the parent's report; a child
    refused by the router says so; a planned child is told from the report alone."""
    children = children_of(PARENT, ORDERS, ROUTES)
    assert [c.intent_id for c in children] == ["p-1:0.0", "p-1:0.2", "p-1:0.10", "p-1:1.0"]
    first, refused, failed_over, planned = children
    assert (first.broker, first.status, first.filled_quantity, first.rule) == ("alpaca", "filled", 10, "preference")
    assert (first.reason, first.split) == ("the strategy asked for alpaca", "alpaca: 10 of 20 (score 0.91)")
    assert (refused.broker, refused.status, refused.rule) == ("schwab", "rejected", None)
    assert refused.reason == "refused by the router: no eligible broker"
    assert (failed_over.broker, failed_over.attempts, failed_over.rule) == ("ibkr", 2, "failover")
    assert (planned.broker, planned.status, planned.quantity, planned.attempts) == ("alpaca", "planned", 10, 0)


def test_a_child_order_stored_before_its_parent_report_is_still_a_child() -> None:
    """Orders linked to the parent but not yet in a stored report are listed, their slice read from the id."""
    [child] = children_of(None, [order("p-1:3.1", 1, "coinbase", "accepted", "0")], [])
    assert (child.slice_number, child.broker, child.status) == (3, "coinbase", "accepted")


@pytest.mark.parametrize(
    ("execution", "words"),
    [
        (None, "algorithm not reported"),
        (
            {"split": {"max_brokers": 5}, "twap": {"duration_s": 1800.0, "slices": 10, "jitter_pct": 0.0}},
            "twap 30m in 10 slices, split over up to 5 brokers",
        ),
        ({"twap": {"duration_s": 5400.0, "slices": 9, "jitter_pct": 10.0}}, "twap 1h30m in 9 slices, jitter 10%"),
        ({"twap": {"duration_s": 45.5, "slices": 2, "jitter_pct": 0.0}}, "twap 45.5s in 2 slices"),
        ({"iceberg": {"display_quantity": "100"}}, "iceberg showing 100"),
        (
            {"split": {"max_brokers": 3, "min_child_quantity": None, "min_child_notional": "500"}},
            "split over up to 3 brokers, children of at least 500 USD",
        ),
    ],
)
def test_the_algorithm_in_words(execution: dict[str, Any] | None, words: str) -> None:
    assert describe_execution(execution) == words


def test_explain_prints_the_parent_then_every_child(capsys: pytest.CaptureFixture[str]) -> None:
    story = ParentStory("p-1", PARENT, children_of(PARENT, ORDERS, ROUTES))
    print_parent(story)
    out = " ".join(capsys.readouterr().out.split())
    assert "parent order p-1 (momo): buy 30 AAPL, algorithm not reported" in out
    assert "status: partially_filled; 15 of 30 filled @ 100.5" in out
    assert "arrival price: 100.25; slippage against it: +24.94 bps" in out
    assert "filled by broker: alpaca 10, ibkr 5" in out
    assert out.index("p-1:0.0") < out.index("p-1:0.2") < out.index("p-1:0.10") < out.index("p-1:1.0")
    assert (
        "p-1:0.0 at alpaca: filled 10/10 @ 100.5; routed by preference: the strategy asked for alpaca; "
        "split: alpaca: 10 of 20 (score 0.91)"
    ) in out
    assert "p-1:0.10 at ibkr: filled 5/5 @ 100.5; routed by failover (attempt 2): next in the chain" in out
    assert "slice 1 p-1:1.0 at alpaca: planned 0/10" in out
    assert "refused by the router: no eligible broker" in out


def test_explain_of_a_parent_with_no_report_stored_yet(capsys: pytest.CaptureFixture[str]) -> None:
    story = ParentStory("p-2", None, children_of(None, [order("p-2:0.0", 1, "alpaca", "new", "0")], []))
    print_parent(story)
    out = " ".join(capsys.readouterr().out.split())
    assert "parent order p-2: no report of it is stored yet; child orders stored: 1" in out
    assert "p-2:0.0" in out
