"""Proof of possession: the agent's signature over the exact quote, bound to the chain it buys under,
and the seller's check of the credential's ``identity`` member."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Collection, Sequence

import jwt

from mpp.protocol.wire import b64url_encode, canonical_json
from mpp.protocol.keys import SignatureInvalid, SigningKey, verify_signature
from mpp.protocol.models import Challenge, ChargeRequest, Credential
from mpp.identity.chains import DEFAULT_MAX_DEPTH, verify_chain
from mpp.identity.mandates import MandateChain
from mpp.identity.problems import ApprovalInvalid, IdentityMismatch, IdentityRequired, MandateInvalid, ProofInvalid

__all__ = [
    "PROOF_DOMAIN",
    "QUOTE_DOMAIN",
    "request_hash",
    "quote_hash",
    "proof_message",
    "identity_member",
    "VerifiedIdentity",
    "verify_identity",
]

PROOF_DOMAIN = b"mpp-identity-proof-v1\n"
"""Domain separation prefix of an agent's identity proof signature, so it can never be taken for another
signed message."""
QUOTE_DOMAIN = b"mpp-quote-v1\n"
"""Domain separation prefix of the quote digest the identity proof signs."""


def request_hash(challenge: Challenge) -> str:
    """SHA-256 of the challenge's encoded ``request``, base64url."""
    return b64url_encode(hashlib.sha256(challenge.request.encode("ascii")).digest())


def quote_hash(challenge: Challenge) -> str:
    """The hash an approval names: the challenge's id, intent, method, realm and request."""
    body = {"challengeId": challenge.id, "intent": challenge.intent, "method": challenge.method,
            "realm": challenge.realm, "request": challenge.request}
    return b64url_encode(hashlib.sha256(QUOTE_DOMAIN + canonical_json(body)).digest())


def proof_message(challenge: Challenge, request: ChargeRequest, mandate: str) -> bytes:
    """``mandate`` is the leaf mandate's jti: the proof binds the quote *and* the chain it is made under."""
    body = {"amount": request.amount, "challengeId": challenge.id, "currency": request.currency, "mandate": mandate,
            "realm": challenge.realm, "requestHash": request_hash(challenge)}
    return PROOF_DOMAIN + canonical_json(body)


def identity_member(chain_tokens: Sequence[str], key: SigningKey, challenge: Challenge, request: ChargeRequest,
                    approval: str | None = None) -> dict[str, Any]:
    """The credential's ``identity`` member: the chain and the agent's signature over this quote."""
    leaf = jwt.decode(chain_tokens[-1], options={"verify_signature": False}).get("jti", "")
    member: dict[str, Any] = {"mandates": list(chain_tokens), "proof": key.sign(proof_message(challenge, request, leaf))}
    if approval is not None:
        member["approval"] = approval
    return member


@dataclass(frozen=True)
class VerifiedIdentity:
    """A credential's verified chain, and the approval token it carries (verify_approval checks it)."""

    chain: MandateChain
    approval_token: str | None


def verify_identity(
    credential: Credential,
    request: ChargeRequest,
    *,
    payment_signer: str | None,
    trusted_principals: Collection[str],
    realm: str,
    now: datetime,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> VerifiedIdentity:
    """Chain, subject binding and proof of possession. Revocation and policy come after."""
    member = credential.extra_member("identity")
    if member is None:
        raise IdentityRequired("this resource requires the identity extension: a mandate chain and a proof")
    if not isinstance(member, dict):
        raise MandateInvalid("identity member must be an object")
    chain = verify_chain(member.get("mandates"), trusted_principals=trusted_principals, realm=realm, now=now, max_depth=max_depth)
    if credential.source != chain.agent:
        raise IdentityMismatch("credential source is not the mandate's subject")
    if payment_signer is not None and payment_signer != chain.agent:
        raise IdentityMismatch("the payment was signed by a key other than the mandate's subject")
    proof = member.get("proof")
    if not isinstance(proof, str):
        raise ProofInvalid("identity.proof is missing")
    try:
        verify_signature(chain.agent, proof_message(credential.challenge, request, chain.leaf.jti), proof)
    except SignatureInvalid:
        raise ProofInvalid("proof of possession does not verify for this quote") from None
    approval = member.get("approval")
    if approval is not None and not isinstance(approval, str):
        raise ApprovalInvalid("identity.approval must be a JWT")
    return VerifiedIdentity(chain, approval)
