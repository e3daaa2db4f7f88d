"""Grant proofs (PRICE-GRANT-03 to -06): the agent's signature over each request it makes on a grant,
and the seller's record of the proofs it has accepted."""

from __future__ import annotations

import hashlib
import heapq
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from mpp.protocol.wire import b64url_encode, canonical_json
from mpp.protocol.keys import SigningKey, SignatureInvalid, verify_signature
from mpp.protocol.challenge import resource_of
from mpp.pricing.grants import Grant
from mpp.pricing.periods import _epoch
from mpp.pricing.problems import GrantProofInvalid

__all__ = [
    "GRANT_PROOF_HEADER",
    "GRANT_PROOF_DOMAIN",
    "PROOF_WINDOW",
    "SEEN_PROOFS_CAPACITY",
    "GrantProof",
    "grant_proof_message",
    "sign_grant_proof",
    "parse_grant_proof",
    "verify_grant_proof",
    "SeenGrantProofs",
]

GRANT_PROOF_HEADER = "Payment-Grant-Proof"
"""The request header carrying a fresh proof that the sender holds a grant's key (PRICE-GRANT-03)."""
GRANT_PROOF_DOMAIN = b"mpp-grant-proof-v1\n"
"""Domain separation prefix of a grant proof's signature."""
PROOF_WINDOW = 60
"""Seconds either way (PRICE-GRANT-03)"""
SEEN_PROOFS_CAPACITY = 100_000
"""Live grant proofs one seller process remembers (PRICE-GRANT-06)"""


@dataclass(frozen=True)
class GrantProof:
    """A Payment-Grant-Proof field: the agent, its time, a nonce and the signature."""

    agent: str
    t: int
    nonce: str
    sig: str

    def header(self) -> str:
        """The proof as a ``Payment-Grant-Proof`` field value (``agent=...; t=...; nonce=...; sig=...``), the
        form :func:`parse_grant_proof` reads."""
        return f"agent={self.agent}; t={self.t}; nonce={self.nonce}; sig={self.sig}"


def grant_proof_message(*, agent: str, grant_id: str, method: str, path: str, query: str = "", body: bytes = b"",
                        t: int, nonce: str) -> bytes:
    """The bytes the agent signs for one follow-up request (spec/pricing.md §5)."""
    body_hash = b64url_encode(hashlib.sha256(body).digest())
    return GRANT_PROOF_DOMAIN + canonical_json({"agent": agent, "bodyHash": body_hash, "grant": grant_id, "nonce": nonce,
                                                "resource": resource_of(method, path, query), "t": t})


def sign_grant_proof(agent_key: SigningKey, *, grant_id: str, method: str, path: str, query: str = "",
                     body: bytes = b"", now: datetime, nonce: str | None = None) -> str:
    """The Payment-Grant-Proof field value for this request, with a fresh nonce (PRICE-GRANT-05):
    Ed25519 is deterministic, so without one two alike requests in a second would sign alike."""
    t = _epoch(now)
    nonce = nonce if nonce is not None else secrets.token_urlsafe(16)
    message = grant_proof_message(agent=agent_key.did, grant_id=grant_id, method=method, path=path, query=query,
                                  body=body, t=t, nonce=nonce)
    return GrantProof(agent_key.did, t, nonce, agent_key.sign(message)).header()


_PROOF = re.compile(r"agent=(did:key:z[1-9A-HJ-NP-Za-km-z]{1,120}); t=(0|[1-9][0-9]{0,15}); nonce=([A-Za-z0-9_-]{22}); "
                    r"sig=([A-Za-z0-9_-]{86})")


def parse_grant_proof(value: str) -> GrantProof:
    """Read a Payment-Grant-Proof field value; raise GrantProofInvalid if it is malformed."""
    m = _PROOF.fullmatch(value.strip(" \t")) if isinstance(value, str) else None
    if m is None:
        raise GrantProofInvalid("Payment-Grant-Proof is malformed")
    return GrantProof(m.group(1), int(m.group(2)), m.group(3), m.group(4))


def verify_grant_proof(proof: GrantProof | str, *, grant: Grant, method: str, path: str, query: str = "",
                       body: bytes = b"", now: datetime, window: int = PROOF_WINDOW) -> None:
    """PRICE-GRANT-03: the grant's agent signed this very request within the window. Raises GrantProofInvalid."""
    if isinstance(proof, str):
        proof = parse_grant_proof(proof)
    if proof.agent != grant.agent:
        raise GrantProofInvalid("proof is not by the grant's agent")
    if abs(_epoch(now) - proof.t) > window:
        raise GrantProofInvalid("proof timestamp is outside the window")
    message = grant_proof_message(agent=proof.agent, grant_id=grant.jti, method=method, path=path, query=query,
                                  body=body, t=proof.t, nonce=proof.nonce)
    try:
        verify_signature(grant.agent, message, proof.sig)
    except SignatureInvalid:
        raise GrantProofInvalid("proof signature does not verify for this request") from None


class SeenGrantProofs:
    """The grant proofs one seller process has accepted, each until its ``t`` leaves the window
    (after that the time check refuses it anyway): PRICE-GRANT-06.

    A proof is known by its grant and nonce, which its signature binds, so a replay is caught
    however its signature is spelled. Memory is bounded: at ``capacity`` live proofs the one
    closest to expiry is forgotten to make room. Refusing new proofs instead would let one
    agent with a grant lock every other grant holder out; forgetting only matters to someone
    who replays that very proof after the seller accepted ``capacity`` newer ones within its
    window, and only agents holding grants can add entries.
    """

    def __init__(self, capacity: int = SEEN_PROOFS_CAPACITY, window: int = PROOF_WINDOW) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity, self.window = capacity, window
        self._expiry: dict[bytes, int] = {}
        self._heap: list[tuple[int, bytes]] = []  # (expiry, key): the next to expire on top

    def __len__(self) -> int:
        return len(self._expiry)

    def admit(self, grant: Grant, proof: GrantProof, now: datetime) -> None:
        """Record a verified proof; raise GrantProofInvalid if it was accepted before."""
        clock = _epoch(now)
        while self._heap and self._heap[0][0] < clock:
            del self._expiry[heapq.heappop(self._heap)[1]]
        key = hashlib.sha256(f"{grant.jti} {proof.nonce}".encode()).digest()[:16]
        if key in self._expiry:
            raise GrantProofInvalid("this proof has already been used")
        if len(self._heap) >= self.capacity:
            del self._expiry[heapq.heappop(self._heap)[1]]
        self._expiry[key] = proof.t + self.window
        heapq.heappush(self._heap, (proof.t + self.window, key))
