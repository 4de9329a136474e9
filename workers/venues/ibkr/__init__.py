"""Interactive Brokers through ib_async (``adapter: ibkr``)."""
