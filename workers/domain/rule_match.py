"""Whether an order matches a rule's ``match`` (``RuleMatch``): the routing rules and the approval
rules share these checks, compiled once per rule. Pure.

A match has two parts: what depends only on the order's shape (asset class, side, order type,
symbol and strategy globs), and what depends on its size (quantity and notional bounds), which is
known only at a price.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from decimal import Decimal

from contracts import OrderIntent
from workers.domain.config import RuleMatch

StaticCheck = Callable[[OrderIntent], bool]
RangeCheck = Callable[[Decimal | None, Decimal | None], bool]


def static_check(m: RuleMatch) -> StaticCheck:
    """The part of a match that depends only on the order's shape."""
    checks: list[StaticCheck] = []
    if m.asset_class is not None:
        assets = frozenset(m.asset_class)
        checks.append(lambda i: i.asset_class in assets)
    if m.side is not None:
        side = m.side
        checks.append(lambda i: i.side is side)
    if m.order_type is not None:
        types = frozenset(m.order_type)
        checks.append(lambda i: i.order_type in types)
    if m.symbol is not None:
        symbols = re.compile("|".join(fnmatch.translate(p) for p in m.symbol))
        checks.append(lambda i: symbols.match(i.symbol) is not None)
    if m.strategy is not None:
        strategies = re.compile("|".join(fnmatch.translate(p) for p in m.strategy))
        checks.append(lambda i: strategies.match(i.strategy_id) is not None)
    return lambda i: all(check(i) for check in checks)


def range_check(m: RuleMatch, unknown_matches: bool = False) -> RangeCheck | None:
    """The part of a match that depends on the order's size, or None when it has none. A size
    not known (no price) fails a bound, unless ``unknown_matches`` (the approval rules: an order
    whose size cannot be told is held rather than let through)."""
    # (which: 0 quantity, 1 notional; low; high), only for the bounds the match sets.
    bounds = [
        (which, low, high)
        for which, low, high in ((0, m.min_quantity, m.max_quantity), (1, m.min_notional, m.max_notional))
        if low is not None or high is not None
    ]
    if not bounds:
        return None

    def within(quantity: Decimal | None, notional: Decimal | None) -> bool:
        for which, low, high in bounds:
            value = notional if which else quantity
            if value is None:
                if unknown_matches:
                    continue
                return False
            if (low is not None and value < low) or (high is not None and value > high):
                return False
        return True

    return within
