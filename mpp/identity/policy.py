"""Budgets and policy: the seller's entitlement checks of a verified chain against one quote, in the
spec's order, with what each link has already spent in its budget period."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Mapping

from mpp.protocol.errors import RESOURCE_MAX, clip
from mpp.protocol.models import Challenge, ChargeRequest
from mpp.identity.approvals import Approval
from mpp.identity.mandates import MandateChain, same_currency
from mpp.identity.problems import ApprovalRequired, BudgetExceeded, CurrencyNotAllowed, OutOfScope, OverCeiling
from mpp.identity.proofs import quote_hash
from mpp.identity.scopes import is_canonical_resource, scope_matches

__all__ = [
    "period_key",
    "PolicyDecision",
    "evaluate_policy",
]


def period_key(period: str, now: datetime) -> str:
    """The budget period holding ``now`` (UTC): '2025-01-31', '2025-W05', '2025-01' or 'total'."""
    now = now.astimezone(timezone.utc)
    if period == "day":
        return now.strftime("%Y-%m-%d")
    if period == "week":
        year, week, _ = now.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "month":
        return now.strftime("%Y-%m")
    if period == "total":
        return "total"
    raise ValueError(f"unknown budget period {period!r}")


@dataclass(frozen=True)
class PolicyDecision:
    """What the entitlement checks allowed, with the approval they needed, if any."""

    decision: str  # "allow" or "allow-with-approval"
    approval: Approval | None
    reason: str


def evaluate_policy(
    chain: MandateChain,
    challenge: Challenge,
    request: ChargeRequest,
    resource: str,
    *,
    spent: Mapping[str, int],
    approval: Approval | None,
) -> PolicyDecision:
    """The seller's entitlement checks in the spec's order. ``spent`` maps each link's key to
    what that link (itself and everything delegated below it) has already spent at this seller
    in its budget period: the seller's own share."""
    leaf, amount = chain.leaf, request.amount_int
    base = {"challengeId": challenge.id, "mandate": leaf.jti}
    canonical = is_canonical_resource(resource)
    if not same_currency(request.currency, leaf.currency):
        raise CurrencyNotAllowed(f"mandate allows {leaf.currency!r}, quote is in {request.currency!r}", rule="currency", **base)
    if not any(p == "*" or (canonical and scope_matches(p, resource)) for p in leaf.scope):
        raise OutOfScope(f"{clip(resource, RESOURCE_MAX)} is outside the mandate's scope", rule="scope", **base)
    if amount > leaf.ceiling:
        raise OverCeiling(f"amount {amount} is above the mandate's ceiling {leaf.ceiling}", rule="ceiling", **base)
    for link in chain.links:
        if spent.get(link.key, 0) + amount > link.budget_amount:
            raise BudgetExceeded(f"budget of mandate {clip(link.jti)} ({link.budget_amount} per {link.budget_period}) would be exceeded",
                                 rule="budget", **base)
    rule = None
    if leaf.approval_threshold is not None and amount > leaf.approval_threshold:
        rule = "threshold"
    elif leaf.review and (not canonical or any(scope_matches(p, resource) for p in leaf.review)):
        rule = "review"
    if rule is None:
        return PolicyDecision("allow", None, "within mandate")
    if approval is None:
        raise ApprovalRequired(
            f"rule {rule!r} needs the principal's approval for this quote",
            rule=rule, quoteHash=quote_hash(challenge), amount=request.amount, currency=request.currency, **base,
        )
    return PolicyDecision("allow-with-approval", approval, f"rule {rule!r} approved by {approval.iss}")
