"""The problems of pricing (spec/pricing.md §9): grants, seats, mandate model restrictions."""

from __future__ import annotations

from mpp.protocol.errors import ExtensionProblem

__all__ = [
    "PricingProblem",
    "GrantRequired",
    "GrantInvalid",
    "GrantAudience",
    "GrantExpired",
    "GrantAgent",
    "GrantTask",
    "GrantRoute",
    "GrantProofInvalid",
    "SeatAlreadyPaid",
    "ModelNotAllowed",
    "UnitPriceTooHigh",
    "PRICING_PROBLEMS",
]


class PricingProblem(ExtensionProblem):
    """Problems of pricing: grants, seats, mandate model restrictions. None carries a challenge."""

    status = 403


class GrantRequired(PricingProblem):
    """A follow-up route requested without a grant."""

    slug, title = "grant-required", "Grant Required"


class GrantInvalid(PricingProblem):
    """A grant malformed, of the wrong ``alg``, ``typ`` or ``kid``, or with a bad signature or claims."""

    slug, title = "grant-invalid", "Grant Invalid"


class GrantAudience(PricingProblem):
    """A grant issued for another seller."""

    slug, title = "grant-audience", "Grant Issued For Another Seller"


class GrantExpired(PricingProblem):
    """A grant past its ``exp``."""

    slug, title = "grant-expired", "Grant Expired"


class GrantAgent(PricingProblem):
    """A grant of another agent."""

    slug, title = "grant-agent", "Grant Of Another Agent"


class GrantTask(PricingProblem):
    """A grant of another task."""

    slug, title = "grant-task", "Grant Of Another Task"


class GrantRoute(PricingProblem):
    """A route the grant does not cover."""

    slug, title = "grant-route", "Route Not Covered By Grant"


class GrantProofInvalid(PricingProblem):
    """A grant proof malformed, stale, replayed or not the agent's signature over this request."""

    slug, title = "grant-proof-invalid", "Grant Proof Invalid"


class SeatAlreadyPaid(PricingProblem):
    """The period of this seat is already paid."""

    status = 409
    slug, title = "seat-already-paid", "Seat Period Already Paid"


class ModelNotAllowed(PricingProblem):
    """The mandate does not allow the offer's model."""

    slug, title = "model-not-allowed", "Pricing Model Not Allowed By Mandate"


class UnitPriceTooHigh(PricingProblem):
    """The unit offer is above the mandate's ``max_unit_price``."""

    slug, title = "unit-price-too-high", "Unit Price Above Mandate Limit"

PRICING_PROBLEMS: dict[str, type[PricingProblem]] = {
    cls.slug: cls
    for cls in (GrantRequired, GrantInvalid, GrantAudience, GrantExpired, GrantAgent, GrantTask, GrantRoute,
                GrantProofInvalid, SeatAlreadyPaid, ModelNotAllowed, UnitPriceTooHigh)
}
"""Every pricing problem class by its slug, to turn a problem document back into the exception."""
