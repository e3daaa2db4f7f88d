"""The problems of the identity extension (spec/identity.md): our own types, under ``urn:mpp:problem:``."""

from __future__ import annotations

from mpp.protocol.errors import ExtensionProblem

__all__ = [
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
]


class IdentityProblem(ExtensionProblem):
    """Problems of the identity extension: our own types, under ``urn:mpp:problem:``."""


def _problem(slug: str, title: str, status: int = 402) -> type[IdentityProblem]:
    return type(
        "".join(part.capitalize() for part in slug.split("-")),
        (IdentityProblem,),
        {"slug": slug, "title": title, "status": status, "__module__": __name__},
    )


IdentityRequired = _problem("identity-required", "Identity Required")
MandateRequired = _problem("mandate-required", "Mandate Required")
MandateInvalid = _problem("mandate-invalid", "Mandate Invalid")
MandateUntrusted = _problem("mandate-untrusted", "Mandate Issuer Not Trusted")
MandateExpired = _problem("mandate-expired", "Mandate Expired")
MandateNotYetValid = _problem("mandate-not-yet-valid", "Mandate Not Yet Valid")
MandateAudience = _problem("mandate-audience", "Mandate Not For This Seller")
MandateRevoked = _problem("mandate-revoked", "Mandate Revoked")
DelegationInvalid = _problem("delegation-invalid", "Delegation Invalid")
DelegationTooDeep = _problem("delegation-too-deep", "Delegation Too Deep")
IdentityMismatch = _problem("identity-mismatch", "Identity Mismatch")
ProofInvalid = _problem("proof-invalid", "Proof Of Possession Invalid")
ApprovalRequired = _problem("approval-required", "Approval Required", 403)
ApprovalInvalid = _problem("approval-invalid", "Approval Invalid", 403)
OutOfScope = _problem("out-of-scope", "Purchase Outside Mandate Scope", 403)
OverCeiling = _problem("over-ceiling", "Purchase Over Mandate Ceiling", 403)
BudgetExceeded = _problem("budget-exceeded", "Mandate Budget Exceeded", 403)
CurrencyNotAllowed = _problem("currency-not-allowed", "Currency Not Allowed By Mandate", 403)

IDENTITY_PROBLEMS: dict[str, type[IdentityProblem]] = {
    cls.slug: cls
    for cls in (
        IdentityRequired, MandateRequired, MandateInvalid, MandateUntrusted, MandateExpired, MandateNotYetValid, MandateAudience,
        MandateRevoked, DelegationInvalid, DelegationTooDeep, IdentityMismatch, ProofInvalid, ApprovalRequired,
        ApprovalInvalid, OutOfScope, OverCeiling, BudgetExceeded, CurrencyNotAllowed,
    )
}
