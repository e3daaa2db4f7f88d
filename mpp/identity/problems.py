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


def _problem(slug: str, title: str, doc: str, status: int = 402) -> type[IdentityProblem]:
    """A problem class for one row of the table in spec/identity.md (IDENT-ERR-01); ``doc`` is its condition."""
    return type(
        "".join(part.capitalize() for part in slug.split("-")),
        (IdentityProblem,),
        {"slug": slug, "title": title, "status": status, "__module__": __name__, "__doc__": doc},
    )


IdentityRequired = _problem("identity-required", "Identity Required",
                            "The route requires the identity extension and the credential has no ``identity`` (IDENT-POP-03).")
MandateRequired = _problem("mandate-required", "Mandate Required",
                           "The ledger lets this signer spend from the payer account only under a mandate chain, and the\n"
                           "credential has none; the challenge is not consumed (LEDGER-ACCT-03).")
MandateInvalid = _problem("mandate-invalid", "Mandate Invalid",
                          "``identity`` or a mandate is malformed: wrong ``alg``/``typ``/``kid``, ``crit``, a bad signature or\n"
                          "claims (IDENT-MDT-02 to IDENT-MDT-05).")
MandateUntrusted = _problem("mandate-untrusted", "Mandate Issuer Not Trusted",
                            "The chain's root is issued by a principal the seller does not trust (IDENT-DLG-01).")
MandateExpired = _problem("mandate-expired", "Mandate Expired", "A link of the chain has expired (IDENT-MDT-06).")
MandateNotYetValid = _problem("mandate-not-yet-valid", "Mandate Not Yet Valid",
                              "A link of the chain is not valid yet (IDENT-MDT-06).")
MandateAudience = _problem("mandate-audience", "Mandate Not For This Seller",
                           "A link's audience excludes this seller's realm (IDENT-MDT-07).")
MandateRevoked = _problem("mandate-revoked", "Mandate Revoked",
                          "A link is revoked, at the seller or at the ledger (IDENT-REV-03, IDENT-REV-04).")
DelegationInvalid = _problem("delegation-invalid", "Delegation Invalid",
                             "A link does not follow or narrow the one before it, carries ``approvers`` below the root, or\n"
                             "repeats a ``jti`` (IDENT-DLG-01 to IDENT-DLG-03).")
DelegationTooDeep = _problem("delegation-too-deep", "Delegation Too Deep",
                             "The chain has more links than the seller or a link's ``max_depth`` allows (IDENT-DLG-04).")
IdentityMismatch = _problem("identity-mismatch", "Identity Mismatch",
                            "The credential's ``source``, the leaf's ``sub`` and the payment signer are not all equal (IDENT-POP-07).")
ProofInvalid = _problem("proof-invalid", "Proof Of Possession Invalid",
                        "The proof is malformed, or not the leaf agent's signature over this quote (IDENT-POP-06).")
ApprovalRequired = _problem("approval-required", "Approval Required",
                            "The purchase needs an approval and none is attached; no challenge is consumed (IDENT-APR-01).", 403)
ApprovalInvalid = _problem("approval-invalid", "Approval Invalid",
                           "The attached approval fails IDENT-APR-03 to IDENT-APR-06.", 403)
OutOfScope = _problem("out-of-scope", "Purchase Outside Mandate Scope",
                      "The resource matches none of the mandate's scope patterns (IDENT-POL-01).", 403)
OverCeiling = _problem("over-ceiling", "Purchase Over Mandate Ceiling",
                       "The amount is above the mandate's ceiling (IDENT-POL-01).", 403)
BudgetExceeded = _problem("budget-exceeded", "Mandate Budget Exceeded",
                          "A link's budget would be exceeded, by the seller's share or at the ledger (IDENT-BUD-04, IDENT-BUD-05).",
                          403)
CurrencyNotAllowed = _problem("currency-not-allowed", "Currency Not Allowed By Mandate",
                              "The currency is not the mandate's (IDENT-POL-01).", 403)

IDENTITY_PROBLEMS: dict[str, type[IdentityProblem]] = {
    cls.slug: cls
    for cls in (
        IdentityRequired, MandateRequired, MandateInvalid, MandateUntrusted, MandateExpired, MandateNotYetValid, MandateAudience,
        MandateRevoked, DelegationInvalid, DelegationTooDeep, IdentityMismatch, ProofInvalid, ApprovalRequired,
        ApprovalInvalid, OutOfScope, OverCeiling, BudgetExceeded, CurrencyNotAllowed,
    )
}
"""Every identity problem class by its slug: what a buyer uses to turn a problem document back into the
exception."""
