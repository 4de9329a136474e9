"""What a symbol names from its form: what `mbx submit` assumes when no asset class is given."""

from __future__ import annotations

import pytest

from contracts import AssetClass
from workers.domain.instruments import asset_class_of


@pytest.mark.parametrize(
    ("symbol", "named"),
    [
        ("BTC-USD", AssetClass.CRYPTO),
        ("eth-usdc", AssetClass.CRYPTO),
        ("ETH-BTC", AssetClass.CRYPTO),
        ("AAPL261218C00190000", AssetClass.OPTION),
        ("AAPL  261218P00190000", AssetClass.OPTION),
        ("AAPL", AssetClass.EQUITY),
        ("BRK.B", AssetClass.EQUITY),
        ("BRK-B", AssetClass.EQUITY),  # a dash, but B is no currency: not a pair
        ("AAPL261218X00190000", AssetClass.EQUITY),  # neither call nor put
    ],
)
def test_a_symbol_names_its_asset_class(symbol: str, named: AssetClass) -> None:
    assert asset_class_of(symbol) is named
