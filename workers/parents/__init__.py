"""The parent-order worker: works an intent with an ``execution`` block (split, TWAP, iceberg) as
children, each an ordinary intent the router routes, exactly once through crashes."""
