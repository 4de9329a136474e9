"""The router's split API (``Subjects.route_split``): how one slice of a parent order is shared among
brokers right now. The parent-order worker asks; the router answers from its live view (eligibility,
rate headroom and queues, allocation room, holdings, scores). Private to the workers, so not in
``contracts``: a strategy never calls it.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from contracts import BrokerName, OrderIntent


class SplitRequest(BaseModel):
    """One slice of ``parent`` to share: ``quantity`` of it, now."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    parent: OrderIntent = Field(description="The parent intent, as the strategy sent it.")
    slice_number: int = Field(ge=0)
    quantity: Decimal = Field(gt=0, description="What of the slice is to be placed now.")
    unconfirmed: dict[BrokerName, Decimal] = Field(
        default_factory=dict,
        description="This parent's children sent to each broker that no report has confirmed yet: the router "
        "may not count them in its exposure, cash and holdings yet, so the split counts them itself.",
    )


class SplitShare(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    broker: BrokerName
    quantity: Decimal = Field(gt=0)


class SplitAnswer(BaseModel):
    """The children of the slice, why each broker got what it got (or nothing), and what no broker
    could take now. ``retry_after_s`` > 0: ask again then (brokers that could take the slice are
    starting or unsure); ``error``: the request could not be read."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    children: tuple[SplitShare, ...] = ()
    reasons: tuple[str, ...] = ()
    unallocated: Decimal = Decimal(0)
    unallocated_reason: str = ""
    reference_price: Decimal | None = None
    config_version: int = 0
    retry_after_s: float = 0.0
    error: str = ""
