"""Attacks on the identity extension, over HTTP against an in-process seller whose routes need a
mandate chain. Each one is refused with its own problem type, the right status (402 and a fresh
challenge for authentication failures, 403 and no challenge for entitlement failures), no
receipt, no money moved and never a 5xx."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import timedelta

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization

import mpp
from mpp import identity as I
from mpp.methods.ledger import LedgerBuyerMethod

from _identity_support import (
    PAYER,
    PLAIN_PAYER,
    World,
    b64url,
    b64url_decode,
    claims_of,
    credential,
    mandate,
    new_ledger,
    now,
    rewrite_credential,
    seller_app,
    server_for,
)
from _adapters import ADAPTERS

PROBLEM = "urn:mpp:problem:"


@pytest.fixture(params=ADAPTERS)
async def world(tmp_path, request):
    P = mpp.SigningKey.generate()
    ledger = new_ledger(str(tmp_path / "ledger.db"), P.did)
    # the aiohttp seller keeps its payment records apart; the ASGI one beside the ledger (one
    # transaction per purchase, mpp.ledger.book): every attack is tried on both paths
    store = str(tmp_path / "store.db") if request.param == "aiohttp" else ledger.location
    server = server_for(seller_app(ledger, store, [P.did], max_chain_depth=2, adapter=request.param))
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            yield World(ledger, server, session, P=P)
    finally:
        await server.close()
        ledger.close()


async def refused(world: World, path: str, authorization: str, slug: str, status: int) -> dict:
    """Send the credential; assert the refusal's shape and that nothing moved."""
    before, charges = world.snapshot(), len(world.charges())
    code, doc, headers = await world.send(path, authorization)
    assert code < 500
    expected = slug if ":" in slug else PROBLEM + slug
    assert (code, doc.get("type")) == (status, expected), doc
    assert headers.get("Content-Type", "").startswith("application/problem+json")
    assert "Payment-Receipt" not in headers
    assert "no-store" in headers.get("Cache-Control", "")
    sent = mpp.parse_credential(authorization).challenge.id
    if status == 402:
        fresh = mpp.parse_challenges(headers.getall("WWW-Authenticate", ()))
        assert fresh and all(c.id != sent for c in fresh)
        assert doc["challengeId"] == fresh[0].id
    else:
        assert "WWW-Authenticate" not in headers
    assert world.snapshot() == before
    assert len(world.charges()) == charges
    assert world.ledger.total() == 0
    return doc


async def paid(world: World, path: str, authorization: str) -> dict:
    code, doc, headers = await world.send(path, authorization)
    assert code == 200, doc
    assert headers.get("Payment-Receipt")
    return doc


def forged(header: dict, claims: dict, signature: bytes) -> str:
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(claims).encode())
    return f"{head}.{body}.{b64url(signature)}"


# -- baseline --------------------------------------------------------------------


async def test_valid_mandate_pays(world):
    """IDENT-POP-01, IDENT-RCPT-01: identity happy path. The harness itself: the trusted principal's mandate buys /thing."""
    before = world.ledger.balance(PAYER)
    token = mandate(world.P, world.A)
    q = await world.quote("/thing", world.A)
    code, _, headers = await world.send("/thing", credential(q, [token], world.A))
    assert code == 200
    assert world.ledger.balance(PAYER) == before - 100
    receipt = mpp.parse_receipt(headers["Payment-Receipt"])
    claims = json.loads(b64url_decode(receipt.receipt.split(".")[1]))
    assert {k: claims[k] for k in ("agent", "principal", "mandate", "chain", "approval", "decision")} == {
        "agent": world.A.did, "principal": world.P.did, "mandate": claims_of(token)["jti"],
        "chain": [claims_of(token)["jti"]], "approval": None, "decision": "allow"}


async def test_route_without_require_identity_accepts_plain_credential(world):
    """IDENT-POP-02: identity optional. A route that does not require identity takes a plain credential."""
    world.ledger.keys.allow(PLAIN_PAYER, world.C.did, "owner")
    before = world.ledger.balance(PLAIN_PAYER)
    q = await world.quote("/plain", world.C, PLAIN_PAYER)
    await paid(world, "/plain", mpp.sign_quote(q))
    assert world.ledger.balance(PLAIN_PAYER) == before - 100


async def test_plain_credential_on_identity_route(world):
    """IDENT-POP-03, IDENT-POL-02: identity required. A credential without an identity member is refused on a route that needs one."""
    world.ledger.keys.allow(PLAIN_PAYER, world.C.did, "owner")
    q = await world.quote("/thing", world.C, PLAIN_PAYER)
    await refused(world, "/thing", mpp.sign_quote(q), "identity-required", 402)
    # the refusal consumed nothing: the same challenge still buys, with a mandate
    retry = mpp.Quote(q.challenge, q.request, LedgerBuyerMethod(key=world.A, account=PAYER))
    await paid(world, "/thing", credential(retry, [mandate(world.P, world.A)], world.A))


# -- the mandate itself ------------------------------------------------------------


async def test_alg_none(world):
    """IDENT-MDT-02: mandate algorithm. An unsigned mandate (alg none) with the principal's kid is refused."""
    claims = claims_of(mandate(world.P, world.A, ceiling=10**6))
    token = forged({"alg": "none", "typ": I.MANDATE_TYP, "kid": world.P.did}, claims, b"")
    q = await world.quote("/thing", world.A)
    await refused(world, "/thing", credential(q, [token], world.A), "mandate-invalid", 402)


@pytest.mark.parametrize("secret_form", ["raw", "pem"])
async def test_hmac_with_public_key_as_secret(world, secret_form):
    """IDENT-MDT-02, IDENT-KEY-02: mandate algorithm. HS256 keyed with the principal's public key (raw bytes or PEM) is refused."""
    pub = world.P.public_key
    secret = (pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) if secret_form == "raw"
              else pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    claims = claims_of(mandate(world.P, world.A))
    header = {"alg": "HS256", "typ": I.MANDATE_TYP, "kid": world.P.did}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    token = signing_input + "." + b64url(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())
    q = await world.quote("/thing", world.A)
    await refused(world, "/thing", credential(q, [token], world.A), "mandate-invalid", 402)


async def test_unknown_key(world):
    """IDENT-KEY-03, IDENT-DLG-01: trusted principals. A well-formed root mandate by a principal the seller does not trust."""
    stranger = mpp.SigningKey.generate()
    q = await world.quote("/thing", world.A)
    await refused(world, "/thing", credential(q, [mandate(stranger, world.A)], world.A), "mandate-untrusted", 402)


async def test_expired(world):
    """IDENT-MDT-06: mandate validity. A mandate that expired an hour ago."""
    token = mandate(world.P, world.A, not_before=now() - timedelta(days=2), expires=now() - timedelta(hours=1))
    q = await world.quote("/thing", world.A)
    await refused(world, "/thing", credential(q, [token], world.A), "mandate-expired", 402)


async def test_not_yet_valid(world):
    """IDENT-MDT-06: mandate validity. A mandate that starts in an hour."""
    token = mandate(world.P, world.A, not_before=now() + timedelta(hours=1), expires=now() + timedelta(days=1))
    q = await world.quote("/thing", world.A)
    await refused(world, "/thing", credential(q, [token], world.A), "mandate-not-yet-valid", 402)


async def test_wrong_audience(world):
    """IDENT-MDT-07: mandate audience. A mandate for another seller's realm."""
    token = mandate(world.P, world.A, audience=["other.test"])
    q = await world.quote("/thing", world.A)
    await refused(world, "/thing", credential(q, [token], world.A), "mandate-audience", 402)


async def test_tampered_claim(world):
    """IDENT-MDT-03: mandate signature. Raising the ceiling in the payload part, keeping the signature."""
    head, body, sig = mandate(world.P, world.A).split(".")
    claims = json.loads(b64url_decode(body))
    claims["ceiling"] = 10**6
    token = f"{head}.{b64url(json.dumps(claims).encode())}.{sig}"
    q = await world.quote("/huge", world.A)  # 800: over the signed ceiling, under the forged one
    await refused(world, "/huge", credential(q, [token], world.A), "mandate-invalid", 402)


async def test_revoked_mandate(world):
    """IDENT-REV-02, IDENT-REV-03: revocation. The purchase before the revocation succeeds; the next one is refused."""
    token = mandate(world.P, world.A)
    q = await world.quote("/thing", world.A)
    await paid(world, "/thing", credential(q, [token], world.A))
    world.ledger.keys.revoke(I.issue_revocation(world.P, token, now=now()), token)
    q = await world.quote("/thing", world.A)
    await refused(world, "/thing", credential(q, [token], world.A), "mandate-revoked", 402)


async def test_revoked_parent_revokes_delegation(world):
    """IDENT-REV-01, IDENT-REV-02: revocation. Revoking the root also stops the sub-agent below it."""
    root = mandate(world.P, world.A)
    sub = mandate(world.A, world.B, principal=world.P.did, max_depth=0)
    q = await world.quote("/thing", world.B)
    await paid(world, "/thing", credential(q, [root, sub], world.B))
    world.ledger.keys.revoke(I.issue_revocation(world.P, root, now=now()), root)
    q = await world.quote("/thing", world.B)
    await refused(world, "/thing", credential(q, [root, sub], world.B), "mandate-revoked", 402)


# -- who is paying -------------------------------------------------------------------


async def test_mandate_subject_not_the_signer(world):
    """IDENT-POP-07: identity binding. Agent B pays with agent A's mandate, naming itself as the source:
    B's ledger payload, B's proof, A's chain."""
    q = await world.quote("/thing", world.B)
    await refused(world, "/thing", credential(q, [mandate(world.P, world.A)], world.B), "identity-mismatch", 402)


async def test_mandate_subject_not_the_signer_source_claims_subject(world):
    """IDENT-POL-01, LEDGER-10: identity binding. B pays with A's mandate and claims source = A, but the ledger payload
    and the proof are B's. The ledger method's own source/signer binding refuses it first
    (the core verification-failed, 402) before the identity checks run: the payment is not A's,
    whatever the identity member says."""
    q = await world.quote("/thing", world.B)
    auth = rewrite_credential(credential(q, [mandate(world.P, world.A)], world.B), source=world.A.did)
    await refused(world, "/thing", auth, mpp.PROBLEM_BASE + "verification-failed", 402)


async def test_mandate_subject_not_the_signer_without_source(world):
    """IDENT-POP-07: identity binding. B pays with A's mandate and leaves `source` out."""
    q = await world.quote("/thing", world.B)
    auth = rewrite_credential(credential(q, [mandate(world.P, world.A)], world.B), source=None)
    await refused(world, "/thing", auth, "identity-mismatch", 402)


async def test_source_not_the_subject(world):
    """IDENT-POP-07: identity binding. A (the middle of the chain) pays with the chain that ends in B's mandate."""
    root = mandate(world.P, world.A)
    sub = mandate(world.A, world.B, principal=world.P.did, max_depth=0)
    q = await world.quote("/thing", world.A)
    await refused(world, "/thing", credential(q, [root, sub], world.A), "identity-mismatch", 402)


async def test_proof_over_another_challenge(world):
    """IDENT-POP-06: proof of possession. A proof made for challenge 1 put on challenge 2."""
    token = mandate(world.P, world.A)
    q1 = await world.quote("/thing", world.A)
    q2 = await world.quote("/thing", world.A)
    await refused(world, "/thing", credential(q2, [token], world.A, proof_quote=q1), "proof-invalid", 402)


async def test_proof_missing(world):
    """IDENT-POP-04: proof of possession. An identity member without a proof."""
    token = mandate(world.P, world.A)
    q = await world.quote("/thing", world.A)
    auth = mpp.sign_quote(q, {"identity": {"mandates": [token]}})
    await refused(world, "/thing", auth, "proof-invalid", 402)


# -- delegation ----------------------------------------------------------------------


async def test_delegated_purchase_within_scope(world):
    """IDENT-DLG-01, IDENT-DLG-02: delegation. The control case: a narrower sub-mandate buys."""
    root = mandate(world.P, world.A)
    sub = mandate(world.A, world.B, principal=world.P.did, scope=["GET /thing"], ceiling=100, budget_amount=1000, max_depth=0)
    q = await world.quote("/thing", world.B)
    await paid(world, "/thing", credential(q, [root, sub], world.B))


@pytest.mark.parametrize(
    "field, wider",
    [
        ("scope", {"scope": ["GET /*"]}),
        ("ceiling", {"ceiling": 600}),
        ("budget", {"budget_amount": 6000}),
        ("validity", {"expires": now() + timedelta(days=2)}),
    ],
)
async def test_sub_mandate_widens(world, field, wider):
    """IDENT-DLG-02: delegation narrowing. A sub-mandate wider than its parent in one field."""
    root = mandate(world.P, world.A)
    sub = mandate(world.A, world.B, principal=world.P.did, max_depth=0, **wider)
    q = await world.quote("/thing", world.B)
    doc = await refused(world, "/thing", credential(q, [root, sub], world.B), "delegation-invalid", 402)
    assert field in doc["detail"]


async def test_delegation_deeper_than_root_allows(world):
    """IDENT-DLG-04: delegation depth. The root allows one delegation; the chain has two."""
    root = mandate(world.P, world.A, max_depth=1)
    ab = mandate(world.A, world.B, principal=world.P.did, max_depth=0)
    bc = mandate(world.B, world.C, principal=world.P.did, max_depth=0)
    q = await world.quote("/thing", world.C)
    await refused(world, "/thing", credential(q, [root, ab, bc], world.C), "delegation-too-deep", 402)


async def test_delegation_deeper_than_seller_allows(world):
    """IDENT-DLG-04: delegation depth. The root allows three delegations; this seller allows two."""
    D = mpp.SigningKey.generate()
    root = mandate(world.P, world.A, max_depth=3)
    ab = mandate(world.A, world.B, principal=world.P.did, max_depth=2)
    bc = mandate(world.B, world.C, principal=world.P.did, max_depth=1)
    cd = mandate(world.C, D, principal=world.P.did, max_depth=0)
    q = await world.quote("/thing", D)
    await refused(world, "/thing", credential(q, [root, ab, bc, cd], D), "delegation-too-deep", 402)
    q = await world.quote("/thing", world.C)  # two delegations: within both limits
    await paid(world, "/thing", credential(q, [root, ab, bc], world.C))


# -- approvals -----------------------------------------------------------------------


def approve(world: World, quote: mpp.Quote, token: str, *, amount: str | None = None) -> str:
    return I.issue_approval(world.P, agent=world.A.did, challenge_id=quote.challenge.id, quote=I.quote_hash(quote.challenge),
                            amount=amount or quote.request.amount, currency=quote.request.currency, rule="threshold",
                            mandate=claims_of(token)["jti"], now=now())


async def test_approval_reused_on_second_quote(world):
    """IDENT-APR-01, IDENT-APR-05: approvals. An approval for challenge 1 attached to challenge 2."""
    token = mandate(world.P, world.A)
    q1 = await world.quote("/pricey", world.A)
    doc = await refused(world, "/pricey", credential(q1, [token], world.A), "approval-required", 403)
    assert (doc["rule"], doc["challengeId"], doc["quoteHash"]) == ("threshold", q1.challenge.id, I.quote_hash(q1.challenge))
    approval = approve(world, q1, token)
    q2 = await world.quote("/pricey", world.A)
    await refused(world, "/pricey", credential(q2, [token], world.A, approval=approval), "approval-invalid", 403)


async def test_approval_used_twice_on_same_challenge(world):
    """IDENT-APR-06: approvals. The approval buys once; the same credential again is refused."""
    token = mandate(world.P, world.A)
    q = await world.quote("/pricey", world.A)
    auth = credential(q, [token], world.A, approval=approve(world, q, token))
    await paid(world, "/pricey", auth)
    await refused(world, "/pricey", auth, "approval-invalid", 403)


async def test_approval_for_another_amount(world):
    """IDENT-APR-05: approvals. An approval for 200 on a 300 quote."""
    token = mandate(world.P, world.A)
    q = await world.quote("/pricey", world.A)
    auth = credential(q, [token], world.A, approval=approve(world, q, token, amount="200"))
    await refused(world, "/pricey", auth, "approval-invalid", 403)


# -- entitlements --------------------------------------------------------------------


async def test_purchase_outside_scope(world):
    """IDENT-MDT-11, IDENT-ERR-01: scope. /other is priced and needs identity, but the mandate does not cover it."""
    q = await world.quote("/other", world.A)
    await refused(world, "/other", credential(q, [mandate(world.P, world.A)], world.A), "out-of-scope", 403)


async def test_purchase_over_ceiling(world):
    """IDENT-MDT-11, IDENT-ERR-01: ceiling. 800 against a ceiling of 500."""
    q = await world.quote("/huge", world.A)
    await refused(world, "/huge", credential(q, [mandate(world.P, world.A)], world.A), "over-ceiling", 403)


# -- malformed and forged members ----------------------------------------------------------


async def test_forged_issuer(world):
    """IDENT-KEY-02, IDENT-MDT-03: mandate signature. Claims and kid name the principal, but agent A signed the mandate."""
    head, body, _ = mandate(world.P, world.A, ceiling=10**6).split(".")
    token = f"{head}.{body}.{world.A.sign(f'{head}.{body}'.encode())}"
    q = await world.quote("/huge", world.A)
    await refused(world, "/huge", credential(q, [token], world.A), "mandate-invalid", 402)


@pytest.mark.parametrize(
    "shape, slug, status",
    [
        ("not-an-object", "mandate-invalid", 402),
        ("mandates-not-a-list", "mandate-invalid", 402),
        ("mandate-not-a-string", "mandate-invalid", 402),
        ("mandate-not-a-jwt", "mandate-invalid", 402),
        ("chain-too-long", "delegation-too-deep", 402),
        ("proof-not-a-string", "proof-invalid", 402),
        ("proof-not-base64", "proof-invalid", 402),
        ("approval-not-a-string", "approval-invalid", 403),
        ("approval-garbage", "approval-invalid", 403),
    ],
)
async def test_malformed_identity_member(world, shape, slug, status):
    """IDENT-POP-04: identity member. Malformed members get a problem, never a 5xx. (Oversized members do
    not fit in an HTTP header field; verify_chain's own limits are unit-tested in test_identity_core.)"""
    token = mandate(world.P, world.A)
    q = await world.quote("/pricey", world.A)
    good = I.identity_member([token], world.A, q.challenge, q.request)
    member = {
        "not-an-object": "identity",
        "mandates-not-a-list": {**good, "mandates": token},
        "mandate-not-a-string": {**good, "mandates": [{"jwt": token}]},
        "mandate-not-a-jwt": {**good, "mandates": ["not.a.jwt"]},
        "chain-too-long": {**good, "mandates": [token] * 5},  # refused on its length, before any decoding
        "proof-not-a-string": {**good, "proof": 5},
        "proof-not-base64": {**good, "proof": "!!!"},
        "approval-not-a-string": {**good, "approval": 7},
        "approval-garbage": {**good, "approval": "x.y.z"},
    }[shape]
    await refused(world, "/pricey", mpp.sign_quote(q, {"identity": member}), slug, status)


async def test_bad_identity_on_route_without_require_identity(world):
    """IDENT-POP-02: identity optional. An identity member, once present, is checked even where it is optional."""
    world.ledger.keys.allow(PLAIN_PAYER, world.C.did, "owner")
    q = await world.quote("/plain", world.C, PLAIN_PAYER)
    stranger = mpp.SigningKey.generate()
    await refused(world, "/plain", credential(q, [mandate(stranger, world.C)], world.C), "mandate-untrusted", 402)
