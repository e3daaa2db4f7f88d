"""The buyer's grants, without I/O: which grant covers a request, what proves it, which
subscription a request renews (spec/pricing.md, PRICE-GRANT-05, PRICE-SEAT-05).

A grant never leaves the origin that issued it: the book keeps grants per origin. Paths are the
raw request paths, taken from the URL by the transport.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping, Sequence

from mpp.buyer.core import BuyerPolicy, check_transport, origin_of
from mpp.protocol.errors import EXTENSION_PROBLEM_BASE, QuoteRejected
from mpp.protocol.keys import SigningKey
from mpp.pricing import GRANT_HEADER, GRANT_PROOF_HEADER, Grant, match_template, sign_grant_proof, verify_grant

__all__ = ["GrantBook", "payer_of", "key_for", "grant_headers", "grant_refused"]

Origin = tuple[str, str, int]
_GRANT_PROBLEMS = EXTENSION_PROBLEM_BASE + "grant-"


class GrantBook:
    """The grants held, per origin, and the subscriptions their seats renew."""

    def __init__(self) -> None:
        # origin -> jti -> grant: a grant never leaves the origin that issued it (PRICE-GRANT-05)
        self._grants: dict[Origin, dict[str, Grant]] = {}
        # origin -> plan -> (routes, subscription id): named in Subscription-Id when a seat is renewed
        self._subscriptions: dict[Origin, dict[str, tuple[tuple[str, ...], str]]] = {}

    def held(self, now: datetime) -> list[Grant]:
        """The grants held and not yet expired, of every origin."""
        return [g for held in self._grants.values() for g in held.values() if now < g.expires]

    def usable(self, url: str, policy: BuyerPolicy) -> bool:
        """Whether grants of this URL's origin are held and may go over its transport."""
        if not self._grants.get(origin_of(url)):
            return False
        try:
            check_transport(url, policy)
        except QuoteRejected:
            return False
        return True

    def covering(self, method: str, url: str, path: str, now: datetime) -> Grant | None:
        """A grant of this origin, unexpired, covering this request (expired ones are dropped)."""
        for grant in list(self._grants.get(origin_of(url), {}).values()):
            if now >= grant.expires:
                self.drop(url, grant)
            elif grant.covers(method, path):
                return grant
        return None

    def drop(self, url: str, grant: Grant) -> None:
        """Forget a grant (expired, or refused by the seller)."""
        self._grants.get(origin_of(url), {}).pop(grant.jti, None)

    def admit(self, token: str, jwks: Mapping[str, Any], *, realm: str, agent: str, url: str, now: datetime) -> Grant:
        """Verify a grant the seller gave us (its receipt key, our DID, its realm) and keep it for
        the origin of ``url``. Raises PricingProblem / ReceiptInvalid / ValueError."""
        grant = verify_grant(token, jwks, realm=realm, agent=agent, now=now)
        origin = origin_of(url)
        self._grants.setdefault(origin, {})[grant.jti] = grant
        if grant.kind == "seat" and grant.plan and grant.subscription_id:
            self._subscriptions.setdefault(origin, {})[grant.plan] = (grant.routes, grant.subscription_id)
        return grant

    def subscription_for(self, method: str, url: str, path: str) -> str | None:
        """The subscription id of a seat of ours covering this request, to renew it by (spec/pricing.md §3.2)."""
        for routes, sub in self._subscriptions.get(origin_of(url), {}).values():
            for route in routes:
                r_method, _, r_path = route.partition(" ")
                if r_method == method.upper() and match_template(r_path, path) is not None:
                    return sub
        return None


def _keys(methods: Sequence[Any]) -> list[SigningKey]:
    return [k for k in (getattr(m, "key", None) for m in methods) if isinstance(k, SigningKey)]


def payer_of(methods: Sequence[Any], identity_key: SigningKey | None) -> str | None:
    """The DID that signs our payments: a grant is issued to it (PRICE-TASK-02, PRICE-SEAT-05)."""
    keys = _keys(methods)
    if keys:
        return keys[0].did
    return identity_key.did if identity_key is not None else None


def key_for(did: str, methods: Sequence[Any], identity_key: SigningKey | None) -> SigningKey | None:
    """Our key of this DID (the agent's identity key first, then the methods'), if we have it."""
    keys = ([identity_key] if identity_key is not None else []) + _keys(methods)
    return next((k for k in keys if k.did == did), None)


def grant_headers(grant: Grant, key: SigningKey, *, method: str, path: str, query: str, body: bytes,
                  now: datetime) -> dict[str, str]:
    """The grant and a fresh proof of this very request: a fresh nonce in every proof, so two
    alike requests in one second are two proofs (PRICE-GRANT-05)."""
    proof = sign_grant_proof(key, grant_id=grant.jti, method=method, path=path, query=query, body=body, now=now)
    return {GRANT_HEADER: grant.token, GRANT_PROOF_HEADER: proof}


def grant_refused(status: int, problem: Mapping[str, Any]) -> bool:
    """The seller refused the grant itself (403 ``grant-*``): drop it and go the usual way."""
    return status == 403 and str(problem.get("type", "")).startswith(_GRANT_PROBLEMS)
