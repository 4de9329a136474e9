"""What a symbol names, from its form alone: an OCC option symbol (``AAPL261218C00190000``:
root, yymmdd, C/P, strike x 1000 in eight digits; padding spaces allowed), a crypto pair
(``BTC-USD``), else an equity. Pure."""

from __future__ import annotations

from contracts import AssetClass

CONTRACT_LENGTH = 15
"""yymmdd + C/P + eight-digit strike: what follows an option's root."""
PAIR_QUOTES = frozenset({"USD", "USDC", "USDT", "EUR", "GBP", "BTC", "ETH"})
"""What a crypto pair is quoted in: ``BTC-USD``, ``ETH-BTC``. An equity written with a dash
(``BRK-B``) is not a pair."""


def is_option(symbol: str) -> bool:
    """An OCC option symbol (padding spaces allowed)."""
    compact = symbol.replace(" ", "")
    return (
        len(compact) > CONTRACT_LENGTH and compact[-9] in "CP" and compact[-8:].isdigit() and compact[-15:-9].isdigit()
    )


def is_pair(symbol: str) -> bool:
    """A crypto pair: ``BASE-QUOTE`` with a quote currency of ``PAIR_QUOTES``."""
    base, dash, quote = symbol.upper().partition("-")
    return bool(dash and base.isalnum() and quote in PAIR_QUOTES)


def asset_class_of(symbol: str) -> AssetClass:
    """The asset class a bare symbol names: a pair is crypto, an OCC symbol an option, else equity."""
    if is_pair(symbol):
        return AssetClass.CRYPTO
    if is_option(symbol):
        return AssetClass.OPTION
    return AssetClass.EQUITY
