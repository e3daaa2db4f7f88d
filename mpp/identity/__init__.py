"""The identity extension, sans-I/O: mandates and their delegation chains, proof of possession,
approvals, budget periods and the seller's entitlement checks.

A mandate is a JWT (EdDSA only) a principal signs for one agent; an agent may delegate a
narrower one to a sub-agent. The credential carries the chain, root first, and the agent's
signature over the exact quote. Nothing here touches a network, a clock or a database: the
caller passes ``now``, the trusted principals, and what it has already spent.

The submodules, each one job: ``problems``, ``restrictions`` (the pricing claims of a chain),
``mandates``, ``scopes`` (scope patterns), ``chains`` (delegation), ``proofs`` (proof of
possession), ``revocation``, ``approvals``, ``policy`` (budgets and entitlement). Every
public name is re-exported here.
"""

from __future__ import annotations

from mpp.identity.approvals import APPROVAL_TYP, Approval, issue_approval, verify_approval
from mpp.identity.chains import DEFAULT_MAX_DEPTH, verify_chain
from mpp.identity.mandates import (
    MANDATE_TYP,
    MAX_INT,
    MAX_LEEWAY,
    MAX_LIST,
    MAX_PATTERN,
    PERIODS,
    Mandate,
    MandateChain,
    decode_mandate,
    issue_mandate,
)
from mpp.identity.policy import PolicyDecision, evaluate_policy, period_key
from mpp.identity.problems import (
    IDENTITY_PROBLEMS,
    ApprovalInvalid,
    ApprovalRequired,
    BudgetExceeded,
    CurrencyNotAllowed,
    DelegationInvalid,
    DelegationTooDeep,
    IdentityMismatch,
    IdentityProblem,
    IdentityRequired,
    MandateAudience,
    MandateExpired,
    MandateInvalid,
    MandateNotYetValid,
    MandateRequired,
    MandateRevoked,
    MandateUntrusted,
    OutOfScope,
    OverCeiling,
    ProofInvalid,
)
from mpp.identity.proofs import (
    PROOF_DOMAIN,
    QUOTE_DOMAIN,
    VerifiedIdentity,
    identity_member,
    proof_message,
    quote_hash,
    request_hash,
    verify_identity,
)
from mpp.identity.restrictions import MODELS, MandateRestrictions, restrictions_from_claims
from mpp.identity.revocation import REVOCATION_TYP, issue_revocation, verify_revocation
from mpp.identity.scopes import is_canonical_resource, pattern_within, scope_matches

__all__ = [
    "MANDATE_TYP",
    "APPROVAL_TYP",
    "PERIODS",
    "DEFAULT_MAX_DEPTH",
    "PROOF_DOMAIN",
    "QUOTE_DOMAIN",
    "MAX_INT",
    "MAX_LIST",
    "MAX_PATTERN",
    "MAX_LEEWAY",
    "IdentityProblem",
    "IdentityRequired",
    "MandateRequired",
    "MandateInvalid",
    "MandateUntrusted",
    "MandateExpired",
    "MandateNotYetValid",
    "MandateAudience",
    "MandateRevoked",
    "DelegationInvalid",
    "DelegationTooDeep",
    "IdentityMismatch",
    "ProofInvalid",
    "ApprovalRequired",
    "ApprovalInvalid",
    "OutOfScope",
    "OverCeiling",
    "BudgetExceeded",
    "CurrencyNotAllowed",
    "IDENTITY_PROBLEMS",
    "MODELS",
    "MandateRestrictions",
    "restrictions_from_claims",
    "Mandate",
    "MandateChain",
    "Approval",
    "VerifiedIdentity",
    "PolicyDecision",
    "issue_mandate",
    "decode_mandate",
    "verify_chain",
    "scope_matches",
    "is_canonical_resource",
    "pattern_within",
    "request_hash",
    "quote_hash",
    "proof_message",
    "identity_member",
    "verify_identity",
    "REVOCATION_TYP",
    "issue_revocation",
    "verify_revocation",
    "issue_approval",
    "verify_approval",
    "period_key",
    "evaluate_policy",
]
