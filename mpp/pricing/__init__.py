"""Pricing models as data (spec/pricing.md): the price list, seat periods, grants, offer choice.

Sans-I/O: the price list is parsed from text the caller read; the clock is a parameter; the
seller's stores (task states, seat periods) and the HTTP adapter live elsewhere. Today's
``Price`` (transaction) and ``Metered`` (unit) come out of the list unchanged, so the
existing seller quotes them as before; task and seat offers add a grant on top of a charge.

The submodules, each one job: ``prices`` (Price, Metered), ``routes`` (route strings and
templates), ``offers``, ``tasks`` and ``seats`` (the models), ``periods`` (seat periods),
``price_list``, ``schema`` and ``loader`` (the list, its file, its loading), ``grants`` and
``grant_proofs``, ``choice`` (mandate restrictions and the buyer's pick), ``usage`` (the
export), ``problems``. Every public name is re-exported here.
"""

from __future__ import annotations

from mpp.identity.restrictions import MODELS, MandateRestrictions, restrictions_from_claims
from mpp.pricing.choice import QuotedOffer, check_offer_allowed, choose_offer, expected_total, quoted_offer
from mpp.pricing.grant_proofs import (
    GRANT_PROOF_DOMAIN,
    GRANT_PROOF_HEADER,
    PROOF_WINDOW,
    SEEN_PROOFS_CAPACITY,
    GrantProof,
    SeenGrantProofs,
    grant_proof_message,
    parse_grant_proof,
    sign_grant_proof,
    verify_grant_proof,
)
from mpp.pricing.grants import (
    GRANT_HEADER,
    GRANT_TYP,
    Grant,
    issue_grant,
    seat_grant_claims,
    task_grant_claims,
    verify_grant,
)
from mpp.pricing.loader import check_reload, load_price_list
from mpp.pricing.offers import Offer, TransactionOffer, UnitOffer
from mpp.pricing.periods import DEFAULT_ANCHOR, PERIOD_UNITS, period_bounds, period_index
from mpp.pricing.price_list import PriceList, PriceListError, Route
from mpp.pricing.problems import (
    PRICING_PROBLEMS,
    GrantAgent,
    GrantAudience,
    GrantExpired,
    GrantInvalid,
    GrantProofInvalid,
    GrantRequired,
    GrantRoute,
    GrantTask,
    ModelNotAllowed,
    PricingProblem,
    SeatAlreadyPaid,
    UnitPriceTooHigh,
)
from mpp.pricing.routes import match_template
from mpp.pricing.seats import SUBSCRIPTION_DOMAIN, SUBSCRIPTION_ID_HEADER, SeatOffer, SeatRecords, subscription_id
from mpp.pricing.tasks import TaskOffer
from mpp.pricing.usage import UsageRecord, summarize_usage

__all__ = [
    "MODELS",
    "PERIOD_UNITS",
    "GRANT_HEADER",
    "GRANT_PROOF_HEADER",
    "SUBSCRIPTION_ID_HEADER",
    "GRANT_TYP",
    "GRANT_PROOF_DOMAIN",
    "SUBSCRIPTION_DOMAIN",
    "PROOF_WINDOW",
    "SEEN_PROOFS_CAPACITY",
    "DEFAULT_ANCHOR",
    "PriceListError",
    "PriceList",
    "Route",
    "Offer",
    "TransactionOffer",
    "UnitOffer",
    "TaskOffer",
    "SeatOffer",
    "QuotedOffer",
    "load_price_list",
    "check_reload",
    "match_template",
    "period_index",
    "period_bounds",
    "subscription_id",
    "SeatRecords",
    "Grant",
    "GrantProof",
    "SeenGrantProofs",
    "issue_grant",
    "task_grant_claims",
    "seat_grant_claims",
    "verify_grant",
    "grant_proof_message",
    "sign_grant_proof",
    "parse_grant_proof",
    "verify_grant_proof",
    "MandateRestrictions",
    "restrictions_from_claims",
    "check_offer_allowed",
    "expected_total",
    "choose_offer",
    "quoted_offer",
    "UsageRecord",
    "summarize_usage",
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
