"""OCC option symbols as the brokers write them: ``AAPL261218C00190000`` (root, yymmdd, C/P,
strike x 1000 in eight digits). mbx's intents carry the compact form; Schwab and IB write the
root padded to six characters (``AAPL  261218C00190000``), Alpaca without the spaces."""

from __future__ import annotations

from workers.domain.instruments import CONTRACT_LENGTH


def padded(symbol: str) -> str:
    """The symbol with its root padded to six characters (Schwab's and IB's form)."""
    compact = symbol.replace(" ", "")
    root, contract = compact[:-CONTRACT_LENGTH], compact[-CONTRACT_LENGTH:]
    return f"{root:<6}{contract}"


def compact(symbol: str) -> str:
    """The symbol without padding (mbx's and Alpaca's form)."""
    return symbol.replace(" ", "")
