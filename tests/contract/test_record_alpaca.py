"""`make record-alpaca`: refuses to run without paper keys, and records scrubbed payloads (here
from the fake Alpaca on a loopback port: tests never reach the network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakes import record_alpaca
from tests.fakes.alpaca import FakeAlpaca
from tests.fakes.serve import serve


def test_without_keys_it_says_what_to_set(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("ALPACA_API_KEY", raising=False)
    monkeypatch.delenv("ALPACA_SECRET_KEY", raising=False)
    assert record_alpaca.main([]) == 2
    assert "set ALPACA_API_KEY and ALPACA_SECRET_KEY" in capsys.readouterr().err


def test_it_records_scrubbed_payloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeAlpaca(key_id="PKRECORDTEST", secret_key="record-test-secret")
    monkeypatch.setenv("ALPACA_API_KEY", fake.key_id)
    monkeypatch.setenv("ALPACA_SECRET_KEY", fake.secret_key)
    with serve(fake.handle) as (url, _lock):
        assert record_alpaca.main(["--base-url", url, "--data-url", url, "--out", str(tmp_path)]) == 0
    names = sorted(p.stem for p in tmp_path.glob("*.json"))
    assert names == [
        "account",
        "fill_activities",
        "order_by_client_id",
        "order_cancelled",
        "order_placed",
        "positions",
        "stock_latest_quote",
    ]
    cancelled = json.loads((tmp_path / "order_cancelled.json").read_text())
    assert (
        cancelled["status"] == "canceled"
        and cancelled["id"] == "<id>"
        and cancelled["client_order_id"] == "<client_order_id>"
    )
    for path in tmp_path.iterdir():
        text = path.read_text()
        assert fake.key_id not in text and fake.secret_key not in text
    assert record_alpaca.main(["--base-url", "https://api.alpaca.markets"]) == 2  # live endpoint refused
