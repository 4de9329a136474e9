"""Every number and the metadata of an intent are bounded, and the published JSON Schema says
exactly what the model accepts (a strategy that validates against it is never refused later)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from contracts import OrderIntent
from tests.builders import intent_payload

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "contracts/schemas/OrderIntent.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("plain", {}, True),
    ("fractional quantity", {"quantity": "0.123456789"}, True),
    ("quantity as a number", {"quantity": 12.5}, True),
    ("negative quantity", {"quantity": "-5"}, False),
    ("zero quantity", {"quantity": "0"}, False),
    ("huge quantity", {"quantity": "1e30"}, False),
    ("quantity at the bound", {"quantity": "1000000000"}, False),
    ("too many decimals", {"quantity": "0.0000000001"}, False),
    ("huge number", {"quantity": 1e30}, False),
    ("notional with cents", {"quantity": None, "notional": "250.25"}, True),
    ("notional with sub-cents", {"quantity": None, "notional": "250.255"}, False),
    ("limit price with 9 decimals", {"order_type": "limit", "limit_price": "123.456789012"}, False),
    ("limit price ok", {"order_type": "limit", "limit_price": "123.4567"}, True),
    ("price too high", {"order_type": "limit", "limit_price": "10000000"}, False),
    ("some metadata", {"metadata": {"desk": "eq-1", "note": "rebalance"}}, True),
    ("too many keys", {"metadata": {f"k{i}": "v" for i in range(17)}}, False),
    ("long value", {"metadata": {"note": "x" * 257}}, False),
    ("bad key", {"metadata": {"a b": "v"}}, False),
    ("900 KB of metadata", {"metadata": {"blob": "x" * 900_000}}, False),
]


@pytest.mark.parametrize(("payload_change", "accepted"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_the_model_and_the_published_schema_agree(payload_change: dict[str, Any], accepted: bool) -> None:
    payload = intent_payload(**payload_change)
    schema_ok = VALIDATOR.is_valid(payload)
    try:
        OrderIntent.model_validate_json(json.dumps(payload))
        model_ok = True
    except ValidationError:
        model_ok = False
    assert (model_ok, schema_ok) == (accepted, accepted)


def test_metadata_over_the_total_size_is_refused_with_the_limit_named() -> None:
    """Sixteen values of 256 characters are each allowed, but not all together."""
    with pytest.raises(ValidationError, match="at most 4096"):
        OrderIntent.model_validate(intent_payload(metadata={f"k{i:02d}": "x" * 256 for i in range(16)}))
