"""The parent-order contract (issue 30): an intent's optional execution block, the parent report
and its subject."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

import contracts
from contracts import (
    BrokerName,
    ChildOrder,
    Execution,
    OrderIntent,
    ParentReport,
    ParentStatus,
    Side,
    Subjects,
)
from tests.builders import intent_payload, make_intent, make_route

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "contracts/schemas/OrderIntent.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

TWAP = {"twap": {"duration_s": 600, "slices": 10}}


def test_an_intent_without_an_execution_block_is_unchanged_at_schema_version_1() -> None:
    """execution is an optional addition: payloads from before it parse, and it stays empty."""
    intent = make_intent()
    assert intent.execution is None
    assert intent.schema_version == 1
    assert "execution" in SCHEMA["properties"]


def test_twap_split_and_iceberg_blocks_are_accepted_with_their_defaults() -> None:
    """A TWAP split across brokers, and an iceberg, validate; unset fields take their defaults."""
    twap = make_intent(quantity="20000", execution={"twap": {"duration_s": 1800, "slices": 10}, "split": {}})
    assert twap.execution is not None and twap.execution.twap is not None and twap.execution.split is not None
    assert twap.execution.twap.jitter_pct == 0
    assert twap.execution.split.max_brokers == 5
    assert twap.execution.iceberg is None
    iceberg = make_intent(quantity="1000", execution={"iceberg": {"display_quantity": "100"}})
    assert iceberg.execution is not None and iceberg.execution.iceberg is not None
    assert iceberg.execution.iceberg.display_quantity == Decimal(100)
    split = make_intent(
        quantity="500", order_type="limit", limit_price="101.5", execution={"split": {"min_child_notional": "1000"}}
    )
    assert split.limit_price == Decimal("101.5")


def test_a_parent_intent_round_trips_through_json_alone_and_inside_a_route() -> None:
    """The execution block survives the wire, also inside the route decision that embeds the intent."""
    intent = make_intent(
        quantity="20000",
        execution={
            "twap": {"duration_s": 1800.5, "slices": 12, "jitter_pct": 12.5},
            "split": {"max_brokers": 3, "min_child_quantity": "100"},
        },
    )
    wire = json.loads(intent.model_dump_json())
    assert wire["execution"]["split"]["min_child_quantity"] == "100"
    assert OrderIntent.model_validate_json(intent.model_dump_json()) == intent
    route = make_route(intent)
    assert type(route).model_validate_json(route.model_dump_json()).intent == intent


@pytest.mark.parametrize(
    ("execution", "overrides", "message"),
    [
        ({"twap": {"duration_s": 86400, "slices": 10_000}}, {}, "at most 1000 slices, got 10000"),
        ({"twap": {"duration_s": 1, "slices": 2}}, {}, "at least 10 s, got 1 s"),
        ({"twap": {"duration_s": 10 * 86400, "slices": 10}}, {}, "at most 432000 s"),
        ({"twap": {"duration_s": 600, "slices": 1}}, {}, "at least 2 slices"),
        ({"twap": {"duration_s": 600, "slices": 1000}}, {}, "at least 1 s apart: 1000 slices over 600 s"),
        ({"twap": {"duration_s": 600, "slices": 10, "jitter_pct": 60}}, {}, "less than or equal to 50"),
        ({"twap": {"duration_s": "NaN", "slices": 10}}, {}, "finite"),
        ({"twap": {"duration_s": 600, "slices": 10}}, {"quantity": "9"}, "needs a quantity of at least 10"),
        ({}, {}, "at least one of split, twap or iceberg"),
        ({**TWAP, "iceberg": {"display_quantity": "1"}}, {}, "twap or iceberg, not both"),
        ({"split": {}}, {"quantity": None, "notional": "1000"}, "quantity, not notional"),
        ({"split": {}}, {"broker": "alpaca"}, "broker or split, not both"),
        ({"split": {"min_child_quantity": "1", "min_child_notional": "10"}}, {}, "at most one of min_child"),
        ({"split": {"max_brokers": 0}}, {}, "greater than or equal to 1"),
        ({"split": {"max_brokers": 6}}, {}, "less than or equal to 5"),
        ({"iceberg": {"display_quantity": "100"}}, {"quantity": "100"}, "must be below the quantity 100"),
        ({"iceberg": {"display_quantity": "2.5"}}, {"quantity": "100"}, "whole number"),
        ({"iceberg": {"display_quantity": "1"}}, {"quantity": "1001"}, "1001 slices; at most 1000"),
        ({"iceberg": {"display_quantity": "0"}}, {}, "greater than 0"),
        ({"vwap": {"duration_s": 600}}, {}, "extra"),
        ({"twap": {"duration_s": 600, "slices": 10, "curve": "u"}}, {}, "extra"),
    ],
)
def test_a_parent_out_of_bounds_is_refused_with_a_reason(
    execution: dict[str, Any], overrides: dict[str, Any], message: str
) -> None:
    """A 10,000-slice TWAP, a 1-second one and every other impossible parent say what is wrong."""
    payload = intent_payload(**{"quantity": "20000", **overrides, "execution": execution})
    with pytest.raises(ValidationError, match=message):
        OrderIntent.model_validate(payload)


def test_the_refusal_of_a_10000_slice_twap_reads_as_a_sentence() -> None:
    """The reason a strategy developer sees says the bound, the value and what to do."""
    with pytest.raises(ValidationError) as caught:
        make_intent(quantity="20000", execution={"twap": {"duration_s": 86400, "slices": 10_000}})
    error = caught.value.errors()[0]
    assert error["loc"] == ("execution", "twap", "slices")
    assert "use fewer, larger slices" in error["msg"]


def test_a_whole_crypto_quantity_may_be_sliced_finer_than_one_unit() -> None:
    """Crypto children are sized in the contract's precision, equity and options in whole units
    unless the parent's quantity is fractional."""
    crypto = make_intent(
        symbol="BTC-USD", asset_class="crypto", quantity="2", time_in_force=None, execution=TWAP | {"split": {}}
    )
    assert crypto.quantity_step == Decimal("1e-9")
    assert make_intent(quantity="20").quantity_step == Decimal(1)
    assert make_intent(quantity="20.5").quantity_step == Decimal("1e-9")
    assert make_intent(quantity="0.5", execution={"iceberg": {"display_quantity": "0.1"}}).execution is not None


SCHEMA_CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("twap", TWAP, True),
    ("split alone", {"split": {}}, True),
    ("twap with split", {**TWAP, "split": {"max_brokers": 2}}, True),
    ("iceberg with split", {"iceberg": {"display_quantity": "5"}, "split": {}}, True),
    ("explicit nulls", {**TWAP, "iceberg": None, "split": None}, True),
    ("empty block", {}, False),
    ("only nulls", {"split": None, "twap": None}, False),
    ("twap and iceberg", {**TWAP, "iceberg": {"display_quantity": "5"}}, False),
    ("both minimums", {"split": {"min_child_quantity": "1", "min_child_notional": "5"}}, False),
    ("one minimum and a null", {"split": {"min_child_quantity": "1", "min_child_notional": None}}, True),
    ("short duration", {"twap": {"duration_s": 5, "slices": 2}}, False),
    ("too many slices", {"twap": {"duration_s": 86400, "slices": 10_000}}, False),
    ("too much jitter", {"twap": {"duration_s": 600, "slices": 10, "jitter_pct": 51}}, False),
    ("six brokers", {"split": {"max_brokers": 6}}, False),
    ("unknown algorithm", {"vwap": {}}, False),
]


@pytest.mark.parametrize(
    ("execution", "accepted"), [(c[1], c[2]) for c in SCHEMA_CASES], ids=[c[0] for c in SCHEMA_CASES]
)
def test_the_published_schema_agrees_with_the_model_on_execution_blocks(
    execution: dict[str, Any], accepted: bool
) -> None:
    """The block's own bounds and its cross-field rules are in the JSON Schema too."""
    payload = intent_payload(quantity="100", execution=execution)
    try:
        OrderIntent.model_validate_json(json.dumps(payload))
        model_ok = True
    except ValidationError:
        model_ok = False
    assert (model_ok, VALIDATOR.is_valid(payload)) == (accepted, accepted)


def test_vwap_is_documented_as_not_offered_yet() -> None:
    assert "VWAP" in (Execution.__doc__ or "")
    assert "vwap" not in Execution.model_fields


def make_report(**overrides: Any) -> ParentReport:
    fields: dict[str, Any] = {
        "message_id": "parent-p-1-3",
        "correlation_id": "p-1",
        "intent_id": "p-1",
        "strategy_id": "strat1",
        "symbol": "AAPL",
        "side": Side.BUY,
        "status": ParentStatus.PARTIALLY_FILLED,
        "quantity": Decimal(300),
        "filled_quantity": Decimal(150),
        "average_price": Decimal("100.05"),
        "arrival_price": Decimal("100"),
        "slippage_bps": 5.0,
        "children": [
            ChildOrder(intent_id="p-1:0.0", broker=BrokerName.ALPACA, slice_number=0, quantity=Decimal(100),
                       filled_quantity=Decimal(100), status="filled"),
            ChildOrder(intent_id="p-1:0.1", broker=BrokerName.SCHWAB, slice_number=0, quantity=Decimal(50),
                       filled_quantity=Decimal(50), status="filled"),
            ChildOrder(intent_id="p-1:1.0", slice_number=1, quantity=Decimal(150), status="planned"),
        ],
        "report_seq": 3,
    }  # fmt: skip
    fields.update(overrides)
    return ParentReport(**fields)


def test_a_parent_report_round_trips_through_json() -> None:
    """The parent report carries the children by broker and survives the wire."""
    report = make_report()
    assert ParentReport.model_validate_json(report.model_dump_json()) == report
    assert json.loads(report.model_dump_json())["status"] == "partially_filled"
    assert not report.final
    with pytest.raises(ValidationError, match="extra"):
        ParentReport.model_validate({**json.loads(report.model_dump_json()), "vwap": 1})


def test_parent_statuses_and_which_end_a_parent() -> None:
    assert [str(s) for s in ParentStatus] == [
        "working",
        "partially_filled",
        "filled",
        "cancelled",
        "done_with_shortfall",
    ]
    assert {s for s in ParentStatus if s.is_terminal} == {"filled", "cancelled", "done_with_shortfall"}


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, ``>`` the rest."""
    want, got = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(got) > i
        if i >= len(got) or token not in ("*", got[i]):
            return False
    return len(want) == len(got)


def test_parent_reports_have_their_own_subject_among_the_execution_reports() -> None:
    """``exec.parent.<status>.<strategy>`` is in the EXECUTIONS stream and in the strategy's own
    results, is never a broker's report subject, and is told apart from cancel rejections and
    refusals."""
    s = Subjects()
    subject = s.parent_report(ParentStatus.DONE_WITH_SHORTFALL, "s1")
    assert subject == "mbx.exec.parent.done_with_shortfall.s1"
    assert Subjects("desk2").parent_report("filled", "s1") == "desk2.exec.parent.filled.s1"
    assert "parent" not in {str(b) for b in BrokerName}
    assert s.is_parent_report(subject)
    assert not s.is_parent_report(s.execution(BrokerName.ALPACA, "filled", "s1"))
    assert not s.is_parent_report(s.execution(None, "rejected", "s1"))
    assert not s.is_parent_report("desk2.exec.parent.filled.s1")
    for status in ParentStatus:
        parent = s.parent_report(status, "s1")
        assert not s.is_cancel_reject(parent)
        assert not s.is_refusal(parent)
        # Still an "exec" subject: readers of exec.> must check is_parent_report before parsing
        # an ExecutionReport (the aggregator does not yet; see the issue note).
        assert s.kind(parent) == "exec"
    assert any(_matches(pattern, subject) for pattern in s.results_of("s1"))
    assert not any(_matches(pattern, subject) for pattern in s.results_of("s2"))
    assert _matches(s.stream("EXECUTIONS").subjects[0], subject)


def test_the_new_names_are_exported() -> None:
    for name in ("ChildOrder", "Execution", "IcebergSpec", "ParentReport", "ParentStatus", "SplitSpec", "TwapSpec"):
        assert name in contracts.__all__
