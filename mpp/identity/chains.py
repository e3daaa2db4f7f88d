"""Delegation chains: a root mandate from a trusted principal, then links each narrower than its parent."""

from __future__ import annotations

from datetime import datetime
from typing import Collection, Sequence

from mpp.protocol.errors import clip
from mpp.identity.mandates import Mandate, MandateChain, _check_times, _mandate_of, same_currency
from mpp.identity.problems import (
    DelegationInvalid,
    DelegationTooDeep,
    MandateAudience,
    MandateExpired,
    MandateInvalid,
    MandateNotYetValid,
    MandateUntrusted,
)
from mpp.identity.scopes import pattern_within

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "verify_chain",
]

DEFAULT_MAX_DEPTH = 3
"""How many links a mandate chain may have when its root sets no max_depth."""


def _narrowing_violation(child: Mandate, parent: Mandate) -> str | None:
    if child.prn != parent.prn:
        return "prn (principal) differs from the parent's"
    if not same_currency(child.currency, parent.currency):
        return "currency differs from the parent's"
    if not all(any(pattern_within(c, p) for p in parent.scope) for c in child.scope):
        return "scope is wider than the parent's"
    if not set(parent.review) <= set(child.review):
        return "review patterns drop some of the parent's"
    if child.ceiling > parent.ceiling:
        return "ceiling is above the parent's"
    if child.budget_period != parent.budget_period or child.budget_amount > parent.budget_amount:
        return "budget is wider than the parent's (same period, amount at most the parent's)"
    if parent.approval_threshold is not None and (child.approval_threshold is None or child.approval_threshold > parent.approval_threshold):
        return "approval threshold is above the parent's"
    if child.nbf < parent.nbf:  # IDENT-DLG-02: the detail names the field (nbf, then exp, in table order)
        return "nbf is before the parent's (validity window wider than the parent's)"
    if child.exp > parent.exp:
        return "exp is after the parent's (validity window wider than the parent's)"
    if "*" not in parent.aud and not set(child.aud) <= set(parent.aud):
        return "audience is wider than the parent's"
    if child.max_depth > parent.max_depth - 1:
        return "max_depth is not below the parent's"
    if parent.models is not None and (child.models is None or not set(child.models) <= set(parent.models)):
        return "models names a pricing model the parent excludes"  # PRICE-MDT-01
    if parent.max_unit_price is not None and (
            child.max_unit_price is None
            or child.max_unit_price[0] * parent.max_unit_price[1] > parent.max_unit_price[0] * child.max_unit_price[1]):
        return "max_unit_price is above the parent's"
    return None


def verify_chain(
    tokens: Sequence[str],
    *,
    trusted_principals: Collection[str],
    realm: str,
    now: datetime,
    max_depth: int = DEFAULT_MAX_DEPTH,
    leeway: float = 30.0,
) -> MandateChain:
    """Verify a chain root first, link by link, in the spec's order; raise the problem that names
    the first failure."""
    if not isinstance(tokens, (list, tuple)) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise MandateInvalid("identity.mandates must be a non-empty list of JWTs")
    if len(tokens) - 1 > min(max_depth, 15):  # counted before any signature is checked
        raise DelegationTooDeep(f"chain has {len(tokens) - 1} delegations; this seller allows {max_depth}")
    links: list[Mandate] = []
    for i, token in enumerate(tokens):
        link = _mandate_of(token)
        if i == 0:
            if link.prn != link.iss:  # a claim rule (IDENT-MDT-05): step 2, before trust (IDENT-DLG-05)
                raise MandateInvalid("root mandate's prn must be its issuer")
            if link.iss not in trusted_principals:
                raise MandateUntrusted("root mandate is signed by a principal this seller does not trust")
        else:
            parent = links[-1]
            if link.iss != parent.sub:
                raise DelegationInvalid(f"link {i} is not signed by the previous link's subject")
            if link.approvers:
                raise DelegationInvalid(f"link {i} names approvers; only the root may")
            if link.jti in {l.jti for l in links}:
                raise DelegationInvalid(f"link {i} repeats a jti of the chain")
        _check_times({"exp": link.exp, "nbf": link.nbf, "iat": link.iat}, now, leeway, MandateExpired, MandateNotYetValid)
        if link.aud != ("*",) and realm not in link.aud:
            raise MandateAudience(f"mandate {clip(link.jti)} is not for realm {realm!r}")
        if i > 0:
            if links[-1].max_depth == 0:
                raise DelegationTooDeep(f"link {i} follows a mandate that allows no further delegation")
            why = _narrowing_violation(link, links[-1])
            if why:
                raise DelegationInvalid(f"link {i} {why}")
        links.append(link)
    if len(links) - 1 > links[0].max_depth:
        raise DelegationTooDeep(f"chain has {len(links) - 1} delegations; the root allows {links[0].max_depth}")
    return MandateChain(tuple(links))
