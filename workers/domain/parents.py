"""Parent orders (an intent with an ``execution`` block): the pure planning core.

From values alone, this decides the id of every child (``child_id``), when each slice is due
and how large it is (``schedule``), how one slice is shared among brokers (``split_slice``), and
what state the parent is in from its children's reports (``parent_state``). Quantities are
counted in whole steps of the parent's ``quantity_step`` (integers), so every sum is exact. No
I/O: the parent-order worker journals the plan and sends the children.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from itertools import combinations

from contracts import BrokerName, OrderIntent, OrderStatus, ParentStatus, Side
from contracts.messages import INTENT_ID_MAX_LENGTH, MAX_SLICES

MAX_PARTS = 100
"""Children one slice may have (part numbers 0 to 99): a split makes at most five, the rest is
room for a slice's remainder sent again later."""
_SUFFIX_ROOM = len(f":{MAX_SLICES - 1}.{MAX_PARTS - 1}")
_STEM_ROOM = INTENT_ID_MAX_LENGTH - _SUFFIX_ROOM
_HASH_CHARS = 12
_MICROS = 1_000_000
_BPS = Decimal(10_000)
_PRICE_PLACES = Decimal("1e-8")
_BPS_PLACES = Decimal("1e-4")


def child_id(parent_intent_id: str, slice_no: int, part_no: int) -> str:
    """The intent id of child ``part_no`` of slice ``slice_no``: ``<parent>:<slice>.<part>``.

    The same inputs always give the same id, so a replayed plan never makes a new child. A parent
    id too long to leave room for the suffix within the contract's limit is shortened to its
    beginning and a hash of the whole id (the same for every child of that parent).
    """
    if not 0 <= slice_no < MAX_SLICES:
        raise ValueError(f"slice number {slice_no} is outside 0..{MAX_SLICES - 1}")
    if not 0 <= part_no < MAX_PARTS:
        raise ValueError(f"part number {part_no} is outside 0..{MAX_PARTS - 1}")
    stem = parent_intent_id
    if len(stem) > _STEM_ROOM:
        digest = hashlib.sha256(parent_intent_id.encode()).hexdigest()[:_HASH_CHARS]
        stem = f"{parent_intent_id[: _STEM_ROOM - _HASH_CHARS - 1]}-{digest}"
    return f"{stem}:{slice_no}.{part_no}"


# Schedule --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Slice:
    """One slice of a parent: ``quantity`` to send at ``due_at``, or, for an iceberg's later
    slices, as soon as the previous slice has ended (``after_previous``, ``due_at`` empty)."""

    number: int
    due_at: datetime | None
    quantity: Decimal
    after_previous: bool = False


def schedule(parent: OrderIntent, arrived_at: datetime) -> list[Slice]:
    """The slices of ``parent``, which arrived at ``arrived_at``; their quantities add up to the
    parent's exactly, each a whole number of its ``quantity_step``.

    TWAP: ``slices`` slices, slice ``i`` due ``i * duration_s / slices`` after arrival, moved by
    the jitter (slice 0 never). Iceberg: slices of ``display_quantity`` (the last one the
    remainder), slice 0 at arrival and each next one after the previous. Split alone: the whole
    quantity at arrival.
    """
    execution = parent.execution
    if execution is None or parent.quantity is None:
        raise ValueError(f"intent {parent.intent_id} is not a parent order: it has no execution block")
    if arrived_at.tzinfo is None:
        raise ValueError("arrived_at must carry a time zone")
    step = parent.quantity_step
    total = _units(parent.quantity, step)
    if execution.twap is not None:
        twap = execution.twap
        shares = _even_shares(total, twap.slices)
        duration_us = round(twap.duration_s * _MICROS)
        # floor(duration / slices) <= every gap between base times; a jitter of at most half of it
        # either way keeps the slices strictly in order and the last one before the end.
        jitter_us = int(duration_us // twap.slices * twap.jitter_pct / 100)
        return [
            Slice(
                number,
                arrived_at
                + timedelta(
                    microseconds=number * duration_us // twap.slices
                    + (_jitter(parent.intent_id, number, jitter_us) if number else 0)
                ),
                _quantity(share, step),
            )
            for number, share in enumerate(shares)
        ]
    if execution.iceberg is not None:
        display = _units(execution.iceberg.display_quantity, step)
        count = -(-total // display)
        return [
            Slice(
                number,
                arrived_at if number == 0 else None,
                _quantity(display if number < count - 1 else total - display * (count - 1), step),
                after_previous=number > 0,
            )
            for number in range(count)
        ]
    return [Slice(0, arrived_at, parent.quantity)]


def _jitter(intent_id: str, number: int, bound_us: int) -> int:
    """A shift in [-bound_us, bound_us) derived from the intent id and the slice number alone."""
    if bound_us <= 0:
        return 0
    draw = int.from_bytes(hashlib.sha256(f"{intent_id}:{number}".encode()).digest()[:8], "big")
    return (draw * 2 * bound_us >> 64) - bound_us


def _even_shares(total: int, count: int) -> list[int]:
    """``total`` in ``count`` near-equal integer shares, the remainder spread one unit at a time."""
    base, extra = divmod(total, count)
    return [base + (i + 1) * extra // count - i * extra // count for i in range(count)]


def _units(quantity: Decimal, step: Decimal) -> int:
    units = quantity / step
    if units != units.to_integral_value():
        raise ValueError(f"{quantity} is not a whole number of steps of {step}")
    return int(units)


def _quantity(units: int, step: Decimal) -> Decimal:
    value = units * step
    return value.quantize(Decimal(1)) if value == value.to_integral_value() else value.normalize()


# Split -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SplitCandidate:
    """One broker as the split rule sees it for one slice."""

    broker: BrokerName
    excluded: str | None = None
    """Why the broker is not eligible (the router's exclusion reason), or None when it is."""
    headroom_orders: int = 1
    """Orders its rate budget takes now; a broker without headroom ranks after those with some."""
    queue_wait_s: float = 0.0
    """Expected wait behind the orders already queued there."""
    allocation_room: Decimal | None = None
    """Quantity more it may take under ``max_broker_allocation``, in-flight children counted; None
    for no limit (a closing order: closing shrinks exposure, the router never limits it)."""
    score: float = 0.0
    """The router's total score, 0 to 1 (fees, speed, fill quality): higher ranks first."""
    min_quantity: Decimal = Decimal(0)
    """The smallest order the broker takes for the instrument."""


@dataclass(frozen=True, slots=True)
class SplitChild:
    broker: BrokerName
    quantity: Decimal


@dataclass(frozen=True, slots=True)
class SplitPlan:
    """How one slice is shared: the children, why each broker got what it got (or nothing), and
    what no broker could take. ``sum(children) + unallocated`` is the slice's quantity."""

    children: tuple[SplitChild, ...]
    reasons: tuple[str, ...]
    unallocated: Decimal
    unallocated_reason: str = ""


@dataclass(frozen=True, slots=True)
class _Usable:
    candidate: SplitCandidate
    rank: int
    cap: int
    least: int
    limit: str


def split_slice(
    quantity: Decimal,
    candidates: Sequence[SplitCandidate],
    *,
    step: Decimal,
    max_brokers: int,
    min_child_quantity: Decimal | None = None,
    min_child_notional: Decimal | None = None,
    price: Decimal | None = None,
    closing_holdings: Mapping[BrokerName, Decimal] | None = None,
) -> SplitPlan:
    """Share ``quantity`` (a whole number of ``step``) among at most ``max_brokers`` brokers.

    Eligible brokers only, ranked by rate headroom, then score, then queue wait. Each takes an
    equal share, never more than its ``allocation_room`` nor, when ``closing_holdings`` is given
    (the order reduces a position), more than it holds; brokers holding nothing are left out.
    What a full broker cannot take goes to the others. No child is below the broker's minimum or
    the split's minimum (``min_child_notional`` converted at ``price``), except that a slice
    below the split's minimum goes whole to one broker; without a price to convert a notional
    minimum, the slice is not split. Of every set of brokers the rule could use, it takes the one
    that places the most, then over the most brokers, then the best ranked.
    """
    if max_brokers < 1:
        raise ValueError(f"max_brokers must be at least 1, got {max_brokers}")
    if min_child_quantity is not None and min_child_notional is not None:
        raise ValueError("give at most one of min_child_quantity or min_child_notional")
    if len({c.broker for c in candidates}) != len(candidates):
        raise ValueError("each broker may be a candidate once")
    total = _units(quantity, step)
    if total <= 0:
        raise ValueError(f"a slice needs a positive quantity, got {quantity}")
    floor_units, why_floor = _smallest_child(step, min_child_quantity, min_child_notional, price)
    if floor_units is None:
        floor_units, max_brokers = 0, 1
    reasons = [why_floor] if why_floor else []
    ranked = sorted(candidates, key=lambda c: (c.headroom_orders <= 0, -c.score, c.queue_wait_s, str(c.broker)))
    usable: list[_Usable] = []
    for rank, candidate in enumerate(ranked):
        why_not, found = _usable(
            candidate, rank, total=total, step=step, floor_units=floor_units, closing_holdings=closing_holdings
        )
        if found is None:
            reasons.append(f"{candidate.broker}: nothing: {why_not}")
        else:
            usable.append(found)
    chosen, shares = _best_set(total, usable, max_brokers)
    children = []
    for member, units in zip(chosen, shares, strict=True):
        child = SplitChild(member.candidate.broker, _quantity(units, step))
        full = f", all its {member.limit}" if member.limit and units == member.cap else ""
        reasons.append(f"{child.broker}: {child.quantity} of {quantity} ({_standing(member.candidate)}{full})")
        children.append(child)
    used = {m.rank for m in chosen}
    for member in usable:
        if member.rank not in used:
            why = (
                f"max_brokers {max_brokers} reached by better-ranked brokers"
                if len(chosen) == max_brokers
                else "with it a child would fall below its minimum"
            )
            reasons.append(f"{member.candidate.broker}: nothing: {why} ({_standing(member.candidate)})")
    left = total - sum(shares)
    unallocated_reason = ""
    if left:
        unallocated_reason = (
            f"no broker can take any of {quantity}"
            if not chosen
            else f"{_quantity(left, step)} left: the brokers used are full (allocation room or holdings)"
            + (f" and max_brokers is {max_brokers}" if len(chosen) == max_brokers < len(usable) else "")
        )
    return SplitPlan(tuple(children), tuple(reasons), _quantity(left, step), unallocated_reason)


def _standing(candidate: SplitCandidate) -> str:
    """How a broker ranked, in words."""
    busy = ", no rate headroom now" if candidate.headroom_orders <= 0 else ""
    return f"score {candidate.score:.2f}, queue wait {candidate.queue_wait_s:g} s{busy}"


def _smallest_child(
    step: Decimal, min_quantity: Decimal | None, min_notional: Decimal | None, price: Decimal | None
) -> tuple[int | None, str]:
    """The split's minimum child in steps, and what it came from; None when a notional minimum
    has no price to be converted at (then the slice is not split)."""
    if min_quantity is not None:
        return _ceil_units(min_quantity, step), f"smallest child: {min_quantity} (min_child_quantity)"
    if min_notional is None:
        return 0, ""
    if price is None or price <= 0:
        return None, f"no price to size min_child_notional {min_notional} by: the slice is not split"
    units = _ceil_units(min_notional / price, step)
    return units, f"smallest child: {_quantity(units, step)} (min_child_notional {min_notional} at {price})"


def _usable(
    candidate: SplitCandidate,
    rank: int,
    *,
    total: int,
    step: Decimal,
    floor_units: int,
    closing_holdings: Mapping[BrokerName, Decimal] | None,
) -> tuple[str, _Usable | None]:
    """Whether one candidate can take a child at all, and how much at most."""
    if candidate.excluded is not None:
        return f"not eligible: {candidate.excluded}", None
    cap, limit = total, ""
    if candidate.allocation_room is not None:
        room = _floor_units(candidate.allocation_room, step)
        if room < cap:
            cap, limit = room, f"allocation room {candidate.allocation_room}"
    if closing_holdings is not None:
        held = closing_holdings.get(candidate.broker, Decimal(0))
        if held <= 0:
            return "it holds none of the position this order closes", None
        held_units = _floor_units(held, step)
        if held_units < cap:
            cap, limit = held_units, f"holding of {held}"
    hard = max(1, _ceil_units(candidate.min_quantity, step))
    if hard > total:
        return f"its minimum order {candidate.min_quantity} is above the slice", None
    least = max(hard, min(floor_units, total))
    if cap < least:
        return (
            f"room for {_quantity(cap, step)} only ({limit}), below the smallest child {_quantity(least, step)}",
            None,
        )
    return "", _Usable(candidate, rank, cap, least, limit)


def _best_set(total: int, usable: list[_Usable], max_brokers: int) -> tuple[list[_Usable], list[int]]:
    """Of every set of at most ``max_brokers`` usable brokers whose equal shares respect every
    minimum, the one placing the most, then over the most brokers, then the best ranked."""
    best: tuple[tuple[int, int, tuple[int, ...]], list[_Usable], list[int]] | None = None
    for size in range(1, min(max_brokers, len(usable)) + 1):
        for members in combinations(usable, size):
            shares = _fill(total, [m.cap for m in members])
            if any(units < m.least for units, m in zip(shares, members, strict=True)):
                continue
            key = (-sum(shares), -size, tuple(m.rank for m in members))
            if best is None or key < best[0]:
                best = (key, list(members), shares)
    return (best[1], best[2]) if best is not None else ([], [])


def _fill(total: int, caps: list[int]) -> list[int]:
    """Equal shares of ``total`` within ``caps``, what a full broker cannot take going to the
    others; the odd units go to the better ranked (earlier) brokers."""
    shares = [0] * len(caps)
    open_ = [i for i, cap in enumerate(caps) if cap > 0]
    left = total
    while left and open_:
        each, extra = divmod(left, len(open_))
        for k, i in enumerate(open_):
            give = min(each + (k < extra), caps[i] - shares[i])
            shares[i] += give
            left -= give
        open_ = [i for i in open_ if shares[i] < caps[i]]
    return shares


def _floor_units(quantity: Decimal, step: Decimal) -> int:
    return max(0, int((quantity / step).to_integral_value(ROUND_FLOOR)))


def _ceil_units(quantity: Decimal, step: Decimal) -> int:
    return max(0, int((quantity / step).to_integral_value(ROUND_CEILING)))


# Parent state ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChildProgress:
    """The latest report of one child."""

    status: OrderStatus
    filled_quantity: Decimal = Decimal(0)
    average_price: Decimal | None = None


@dataclass(frozen=True, slots=True)
class ParentState:
    """A parent's state folded from its children's reports."""

    status: ParentStatus
    filled_quantity: Decimal
    average_price: Decimal | None
    slippage_bps: float | None

    @property
    def final(self) -> bool:
        return self.status.is_terminal


def parent_state(
    parent: OrderIntent,
    children: Mapping[str, ChildProgress],
    *,
    arrival_price: Decimal | None,
    more_to_send: bool,
    cancel_requested: bool = False,
) -> ParentState:
    """Fold the children's latest reports (child id -> progress) into the parent's state.

    ``filled`` once the children filled the parent's quantity; ``cancelled`` once a cancel was
    asked for and no child works any more; ``done_with_shortfall`` once nothing is left to send
    and every child has ended short; else ``partially_filled`` or ``working``. The average price
    weighs each child's average by its filled quantity (children reporting fills without a price
    are left out of it); slippage is in basis points against ``arrival_price``, positive when a
    buy paid more or a sell received less.
    """
    if parent.quantity is None:
        raise ValueError(f"intent {parent.intent_id} is not a parent order: it has no quantity")
    filled = sum((c.filled_quantity for c in children.values()), Decimal(0))
    working = any(not c.status.is_terminal for c in children.values())
    if filled >= parent.quantity:
        status = ParentStatus.FILLED
    elif cancel_requested and not working:
        status = ParentStatus.CANCELLED
    elif not (more_to_send or working or cancel_requested):
        status = ParentStatus.DONE_WITH_SHORTFALL
    else:
        status = ParentStatus.PARTIALLY_FILLED if filled > 0 else ParentStatus.WORKING
    priced = [(c.filled_quantity, c.average_price) for c in children.values() if c.filled_quantity > 0]
    weight = sum((q for q, p in priced if p is not None), Decimal(0))
    if weight <= 0:
        return ParentState(status, filled, None, None)
    average = sum((q * p for q, p in priced if p is not None), Decimal(0)) / weight
    slippage = None
    if arrival_price is not None and arrival_price > 0:
        bps = (average - arrival_price) / arrival_price * _BPS
        slippage = float((bps if parent.side is Side.BUY else -bps).quantize(_BPS_PLACES, ROUND_HALF_EVEN))
    return ParentState(status, filled, average.quantize(_PRICE_PLACES, ROUND_HALF_EVEN), slippage)


PARENT_KEY, SLICE_KEY, SPLIT_KEY = "parent", "slice", "split"
"""The metadata keys the parent-order worker gives each child intent: the parent's intent id, the
slice number, and (a split's child) why its broker got its quantity, so each child's own decision
record tells the split."""
_SLICE = re.compile(r"[0-9]{1,4}")
_PART = re.compile(r"0|[1-9][0-9]?")


def parent_of(intent: OrderIntent) -> str | None:
    """The parent order ``intent`` is a child of, or None.

    A child carries metadata ``parent`` (the parent's intent id) and ``slice`` (its slice number),
    and its id is derived from both (``child_id``: ``<parent>:<slice>.<part>``). Metadata is free
    for strategies to use, so an intent whose id is not so derived is no child, whatever its tags
    say, and a parent id longer than an intent id is never taken (it would not fit the column).
    """
    parent = intent.metadata.get(PARENT_KEY)
    slice_no = intent.metadata.get(SLICE_KEY)
    if not parent or len(parent) > INTENT_ID_MAX_LENGTH or slice_no is None or not _SLICE.fullmatch(slice_no):
        return None
    try:
        first = child_id(parent, int(slice_no), 0)
    except ValueError:  # a slice number beyond what a parent may have
        return None
    stem = first[: -len("0")]
    part = intent.intent_id.removeprefix(stem)
    return parent if part != intent.intent_id and _PART.fullmatch(part) else None
