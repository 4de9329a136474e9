"""The domain core: the trading rules every worker shares.

Broker capabilities, the order state machine, fee models, the venue (broker adapter) protocol
and its errors, report builders, the order-ledger entry, the trading-config model, KV key names
and the quote-source protocol. It imports ``contracts`` and pydantic only: no bus, no database,
no HTTP (the import-boundary check in ``make lint`` and the tests keeps it so).
"""
