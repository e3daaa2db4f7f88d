"""Generate every vector file of spec/vectors/ that is made from keys: the identity extension's
(mandate.json, approval.json, identity-proof.json) and every other signed or hashed message MPP sends
(ledger-authorization.json, session-messages.json, ledger-request.json, receipt-jws.json,
quote-hash.json, revocation.json, audit-log.json, grant.json).

    python tools/gen_vectors.py          # exit 1 and name the files whose content would change
    python tools/gen_vectors.py --write  # (re)write them

The output is byte-stable: every key comes from a fixed 32-byte seed (the secret keys of RFC 8032
section 7.1, plus 00..1f and, for the seller, 20..3f), every time, jti and nonce is a constant, and
Ed25519 signatures are deterministic (RFC 8032). Tokens are encoded here by hand (compact JSON,
members in the order of the spec's tables), never by a JWT library, so that a malformed token is
exactly the bytes its scenario describes and a library upgrade cannot change the files; JCS is the
rfc8785 package's.

Expected results are written from the spec (spec/identity.md, spec/methods/ledger.md,
spec/intents/session.md, spec/intents/charge.md, spec/pricing.md), not computed with mpp: the
library is what tests/test_identity_vectors.py and tests/test_signed_vectors.py check against these
files. Only the core's challenge id (CORE-ID-01, covered by challenge-id.json) is computed with mpp.
Error labels are the problem types and error categories of spec/README.md ("Vectors").
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from datetime import datetime, timezone  # noqa: E402

import rfc8785  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from mpp.protocol.challenge import compute_challenge_id  # noqa: E402
from mpp.protocol.keys import SigningKey  # noqa: E402

VECTORS = ROOT / "spec" / "vectors"
SOURCE = "mpp (this repository): tools/gen_vectors.py; keys from RFC 8032 section 7.1 test secret keys"

# -- keys ------------------------------------------------------------------------------------

# role -> (seed hex, public key hex as RFC 8032 gives it, or None when the seed is ours)
SEEDS = {
    "principal": ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
                  "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"),  # RFC 8032 TEST 1
    "agent": ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
              "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"),  # TEST 2
    "subagent": ("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
                 "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025"),  # TEST 3
    "approver": ("f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
                 "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e"),  # TEST 1024
    "stranger": ("833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
                 "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf"),  # TEST SHA(abc)
    "subsubagent": (bytes(range(32)).hex(), None),  # 00 01 .. 1f
}


def _key(role: str) -> SigningKey:
    seed, public = SEEDS[role]
    key = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed)))
    raw = key.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert public is None or raw.hex() == public, f"{role}: seed does not give the RFC 8032 public key"
    return key


KEYS = {role: _key(role) for role in SEEDS}
P, A, B, X, M, C = (KEYS[r] for r in ("principal", "agent", "subagent", "approver", "stranger", "subsubagent"))
KEY_TABLE = {role: {"seedHex": SEEDS[role][0], "did": KEYS[role].did} for role in SEEDS}

# -- constants -----------------------------------------------------------------------------

REALM = "api.example.com"
NOW = 1793491200  # 2026-11-01T00:00:00Z
DAY = 86400
LEEWAY = 30
MAX_DEPTH = 3  # the seller's own maximum (IDENT-DLG-04 default)
MANDATE_TYP = "mpp-mandate+jwt"
APPROVAL_TYP = "mpp-approval+jwt"
SECRET = b"mpp-identity-vectors-hmac-secret"  # 32 bytes; only makes the challenge ids realistic


def jti(prefix: str, name: str) -> str:
    """A readable, valid jti: prefix + name padded with '0' to 22 base64url characters."""
    assert len(name) <= 22
    return f"{prefix}_{name}{'0' * (22 - len(name))}"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def jcs(value: dict[str, str]) -> bytes:
    """RFC 8785 for an object of ASCII strings: members sorted, no whitespace."""
    assert all(isinstance(v, str) and v.isascii() for v in value.values())
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("ascii")


def jws(key: SigningKey | None, header: dict[str, Any] | str, payload: dict[str, Any] | str, *,
        signature: str | None = None) -> str:
    """Compact JWS. ``header``/``payload`` given as text are encoded as they are (duplicates and
    all); ``key`` None with no ``signature`` leaves the signature part empty."""
    h = header.encode("utf-8") if isinstance(header, str) else compact(header)
    p = payload.encode("utf-8") if isinstance(payload, str) else compact(payload)
    signing_input = f"{b64url(h)}.{b64url(p)}"
    if signature is None:
        signature = key.sign(signing_input.encode("ascii")) if key is not None else ""
    return f"{signing_input}.{signature}"


def header(token_typ: str, iss: str, **changes: Any) -> dict[str, Any]:
    """{"alg": "EdDSA", "typ": token_typ, "kid": iss} with changes; a change to None removes the member."""
    h: dict[str, Any] = {"alg": "EdDSA", "typ": token_typ, "kid": iss}
    h.update(changes)
    return {k: v for k, v in h.items() if v is not None}


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def payload_of(token: str) -> dict[str, Any]:
    return json.loads(b64url_decode(token.split(".")[1]))


def retamper(token: str, **changes: Any) -> str:
    """The token with claims changed and its header and signature kept."""
    h, _, s = token.split(".")
    claims = payload_of(token)
    claims.update(changes)
    return f"{h}.{b64url(compact(claims))}.{s}"


# -- mandates ----------------------------------------------------------------------------------

ORDER = ("iss", "sub", "prn", "aud", "jti", "iat", "nbf", "exp", "scope", "review", "currency", "ceiling", "budget",
         "approval_threshold", "max_depth", "approvers")

ROOT_CLAIMS: dict[str, Any] = {
    "iss": P.did, "sub": A.did, "prn": P.did, "aud": [REALM], "jti": jti("mdt", "root"),
    "iat": NOW - DAY, "nbf": NOW - DAY, "exp": NOW + 30 * DAY,
    "scope": ["GET /v1/search*", "POST /v1/reports/*"], "review": ["POST /v1/reports/*"],
    "currency": "usd", "ceiling": 500, "budget": {"amount": 20000, "period": "month"},
    "approval_threshold": 200, "max_depth": 1, "approvers": [X.did],
}
SUB_CLAIMS: dict[str, Any] = {
    "iss": A.did, "sub": B.did, "prn": P.did, "aud": [REALM], "jti": jti("mdt", "sub"),
    "iat": NOW - DAY + 3600, "nbf": NOW - DAY + 3600, "exp": NOW + 7 * DAY,
    "scope": ["GET /v1/search*"], "review": ["POST /v1/reports/*"],
    "currency": "usd", "ceiling": 300, "budget": {"amount": 5000, "period": "month"},
    "approval_threshold": 100, "max_depth": 0,
}
SUBSUB_CLAIMS: dict[str, Any] = {
    **SUB_CLAIMS, "iss": B.did, "sub": C.did, "jti": jti("mdt", "subsub"), "exp": NOW + 2 * DAY,
    "scope": ["GET /v1/search?q=*"], "ceiling": 100, "budget": {"amount": 1000, "period": "month"},
}


def claims(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """``base`` with changes; a change to None removes the claim; order as the spec's table,
    unknown claims last."""
    merged = {**base, **changes}
    ordered = {k: merged[k] for k in ORDER if k in merged}
    ordered.update({k: v for k, v in merged.items() if k not in ORDER})
    return {k: v for k, v in ordered.items() if v is not None}


def mandate(key: SigningKey, c: dict[str, Any], **header_changes: Any) -> str:
    return jws(key, header(MANDATE_TYP, c["iss"], **header_changes), c)


def root(**changes: Any) -> str:
    return mandate(P, claims(ROOT_CLAIMS, **changes))


def sub(parent_max_depth: int = 1, **changes: Any) -> list[str]:
    """[root, sub]; the root allows ``parent_max_depth`` further links."""
    return [root(max_depth=parent_max_depth), mandate(A, claims(SUB_CLAIMS, **changes))]


ROOT_JTI, SUB_JTI, SUBSUB_JTI = ROOT_CLAIMS["jti"], SUB_CLAIMS["jti"], SUBSUB_CLAIMS["jti"]


def chain_input(tokens: list[str], **changes: Any) -> dict[str, Any]:
    inp = {"tokens": tokens, "trusted": [P.did], "realm": REALM, "now": NOW, "leeway": LEEWAY, "max_depth": MAX_DEPTH}
    inp.update(changes)
    return inp


def ok(principal: str, agent: str, jtis: list[str]) -> dict[str, Any]:
    return {"valid": True, "principal": principal, "agent": agent, "jtis": jtis}


def err(slug: str) -> dict[str, Any]:
    return {"error": slug}


def scenario(name: str, tags: list[str], description: str, requirements: list[str], inp: dict[str, Any],
             expected: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "tags": tags, "description": description, "requirements": requirements, "input": inp,
            "expected": expected}


def mandate_scenarios() -> list[dict[str, Any]]:
    S: list[dict[str, Any]] = []

    def add(name: str, tags: list[str], description: str, reqs: list[str], tokens: list[str], expected: dict[str, Any],
            **inp: Any) -> None:
        S.append(scenario(name, tags, description, reqs, chain_input(tokens, **inp), expected))

    two = sub(1)
    three = [root(max_depth=2), mandate(A, claims(SUB_CLAIMS, max_depth=1)), mandate(B, claims(SUBSUB_CLAIMS))]

    # -- accepted ------------------------------------------------------------------------------
    add("root_only", ["happy-path"], "A root mandate from a trusted principal to the paying agent.",
        ["IDENT-MDT-01", "IDENT-DLG-01"], [root()], ok(P.did, A.did, [ROOT_JTI]))
    add("two_link_delegation", ["happy-path", "delegation"],
        "The agent delegates a narrower mandate to a sub-agent; the sub-agent is the one that pays.",
        ["IDENT-DLG-01", "IDENT-DLG-02"], two, ok(P.did, B.did, [ROOT_JTI, SUB_JTI]))
    add("three_link_delegation", ["happy-path", "delegation"],
        "Root allows two further links; each link narrows its parent and lowers max_depth by one.",
        ["IDENT-DLG-02", "IDENT-DLG-04"], three, ok(P.did, C.did, [ROOT_JTI, SUB_JTI, SUBSUB_JTI]))
    add("audience_any", ["happy-path", "audience"], "aud [\"*\"]: valid at any seller.",
        ["IDENT-MDT-07"], [root(aud=["*"])], ok(P.did, A.did, [ROOT_JTI]))
    add("audience_any_narrowed_by_child", ["happy-path", "audience", "delegation"],
        "A parent with aud [\"*\"] admits a child limited to named realms.",
        ["IDENT-MDT-07", "IDENT-DLG-02"], [root(aud=["*"]), mandate(A, claims(SUB_CLAIMS))], ok(P.did, B.did, [ROOT_JTI, SUB_JTI]))
    add("audience_among_several", ["happy-path", "audience"], "The seller's realm is one of several in aud.",
        ["IDENT-MDT-07"], [root(aud=["shop.example.org", REALM])], ok(P.did, A.did, [ROOT_JTI]))
    add("unknown_claims_ignored", ["happy-path", "extension"],
        "Claims outside the table are ignored, whatever their type.",
        ["IDENT-MDT-04"], [root(note="quarterly reports", x_ext={"n": [1, 2.5, None]})], ok(P.did, A.did, [ROOT_JTI]))
    add("optional_claims_absent", ["happy-path"],
        "review, approval_threshold and approvers are optional.",
        ["IDENT-MDT-04"], [root(review=None, approval_threshold=None, approvers=None)], ok(P.did, A.did, [ROOT_JTI]))
    add("expiry_within_leeway", ["happy-path", "time"],
        "exp 29 s before now is still inside a 30 s leeway.",
        ["IDENT-MDT-06"], [root(exp=NOW - LEEWAY + 1)], ok(P.did, A.did, [ROOT_JTI]))
    add("nbf_within_leeway", ["happy-path", "time"],
        "nbf and iat exactly now + leeway are accepted (only after now + leeway is refused).",
        ["IDENT-MDT-06"], [root(iat=NOW + LEEWAY, nbf=NOW + LEEWAY)], ok(P.did, A.did, [ROOT_JTI]))

    # -- the JWS (mandate-invalid) -----------------------------------------------------------
    c0 = claims(ROOT_CLAIMS)
    add("alg_none", ["error", "jws", "alg"], "Unsigned token: alg none, empty signature.",
        ["IDENT-MDT-02"], [jws(None, header(MANDATE_TYP, P.did, alg="none"), c0)], err("mandate-invalid"))
    h_hs = header(MANDATE_TYP, P.did, alg="HS256")
    hs_input = f"{b64url(compact(h_hs))}.{b64url(compact(c0))}".encode("ascii")
    hs_sig = b64url(hmac.new(P.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
                             hs_input, hashlib.sha256).digest())
    add("alg_hs256_public_key_as_secret", ["error", "jws", "alg"],
        "HS256 'signed' with the issuer's raw 32-byte public key as the HMAC secret (key confusion).",
        ["IDENT-MDT-02"], [jws(None, h_hs, c0, signature=hs_sig)], err("mandate-invalid"))
    add("alg_es256", ["error", "jws", "alg"], "Any alg but EdDSA is refused, whatever the signature.",
        ["IDENT-MDT-02"], [jws(P, header(MANDATE_TYP, P.did, alg="ES256"), c0)], err("mandate-invalid"))
    add("kid_not_iss", ["error", "jws"], "kid names another DID than iss (signature by iss).",
        ["IDENT-MDT-01", "IDENT-MDT-03"], [mandate(P, c0, kid=A.did)], err("mandate-invalid"))
    add("kid_missing", ["error", "jws"], "No kid in the header.",
        ["IDENT-MDT-01", "IDENT-MDT-03"], [mandate(P, c0, kid=None)], err("mandate-invalid"))
    add("typ_wrong", ["error", "jws"], "typ JWT instead of mpp-mandate+jwt.",
        ["IDENT-MDT-03"], [mandate(P, c0, typ="JWT")], err("mandate-invalid"))
    add("typ_missing", ["error", "jws"], "No typ in the header.",
        ["IDENT-MDT-03"], [mandate(P, c0, typ=None)], err("mandate-invalid"))
    add("crit_header", ["error", "jws"], "A crit header parameter is never supported.",
        ["IDENT-MDT-03"], [mandate(P, c0, crit=["exp"])], err("mandate-invalid"))
    add("jwk_header_ignored_key_from_iss", ["error", "jws", "key"],
        "Signed by a stranger who puts its own key in a jwk header and claims iss = the principal: the key is taken from iss only.",
        ["IDENT-KEY-02", "IDENT-MDT-03"],
        [jws(M, header(MANDATE_TYP, P.did, jwk={"kty": "OKP", "crv": "Ed25519", "x": b64url(M.public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw))}), c0)], err("mandate-invalid"))
    text = compact(c0).decode("utf-8").replace('"ceiling":500,', '"ceiling":500,"ceiling":50000,')
    assert text.count('"ceiling"') == 2
    add("duplicate_payload_member", ["error", "jws", "json"],
        "The payload repeats \"ceiling\" (signed as is): parsers disagree on which one wins.",
        ["IDENT-MDT-03"], [jws(P, header(MANDATE_TYP, P.did), text)], err("mandate-invalid"))
    h_text = compact(header(MANDATE_TYP, P.did)).decode("utf-8").replace('"alg":"EdDSA",', '"alg":"EdDSA","alg":"none",')
    add("duplicate_header_member", ["error", "jws", "json"], "The header repeats \"alg\" (signed as is).",
        ["IDENT-MDT-03"], [jws(P, h_text, c0)], err("mandate-invalid"))
    add("tampered_claim", ["error", "jws", "tamper"],
        "ceiling raised from 500 to 50000 after signing; header and signature kept.",
        ["IDENT-MDT-03"], [retamper(root(), ceiling=50000)], err("mandate-invalid"))
    good = root()
    add("signature_not_64_bytes", ["error", "jws"], "The signature part is cut to 63 bytes.",
        ["IDENT-MDT-03"], [good.rsplit(".", 1)[0] + "." + b64url(b64url_decode(good.rsplit(".", 1)[1])[:63])],
        err("mandate-invalid"))
    add("signed_by_another_key", ["error", "jws", "key"],
        "iss and kid name the trusted principal; a stranger's key signed it. A bad signature is mandate-invalid, not untrusted.",
        ["IDENT-MDT-03", "IDENT-DLG-05"], [mandate(M, c0)], err("mandate-invalid"))
    add("not_a_jws", ["error", "jws"], "A string that is not a compact JWS.",
        ["IDENT-MDT-01"], ["not-a-jws"], err("mandate-invalid"))
    add("empty_chain", ["error"], "identity.mandates must hold at least one token.",
        ["IDENT-POP-04"], [], err("mandate-invalid"))
    approval_like = jws(P, header(APPROVAL_TYP, P.did), approval_claims())
    add("approval_presented_as_mandate", ["error", "jws", "confusion"],
        "A genuine approval JWS of the principal presented as a mandate.",
        ["IDENT-MDT-03"], [approval_like], err("mandate-invalid"))

    # -- claims (mandate-invalid) -------------------------------------------------------------
    add("issuer_not_did_key", ["error", "claims", "did"], "iss (and kid) a did:web.",
        ["IDENT-KEY-01"], [mandate(M, claims(ROOT_CLAIMS, iss="did:web:principal.example", prn="did:web:principal.example"))],
        err("mandate-invalid"), trusted=[P.did, "did:web:principal.example"])
    add("subject_not_did_key", ["error", "claims", "did"], "sub is a did:web.",
        ["IDENT-KEY-01"], [root(sub="did:web:agent.example")], err("mandate-invalid"))
    add("approver_not_did_key", ["error", "claims", "did"], "approvers lists a did:web.",
        ["IDENT-KEY-01"], [root(approvers=[X.did, "did:web:approver.example"])], err("mandate-invalid"))
    add("root_prn_not_iss", ["error", "claims"], "The root's prn names someone else than its issuer.",
        ["IDENT-MDT-05"], [root(prn=X.did)], err("mandate-invalid"))
    add("bad_jti_format", ["error", "claims", "jti"], "jti is not mdt_ + 22 base64url characters.",
        ["IDENT-MDT-05"], [root(jti="mdt_short")], err("mandate-invalid"))
    add("jti_wrong_prefix", ["error", "claims", "jti"], "An approval's jti prefix on a mandate.",
        ["IDENT-MDT-05"], [root(jti=jti("apr", "root"))], err("mandate-invalid"))
    add("nbf_not_before_exp", ["error", "claims", "time"], "nbf equal to exp: an empty validity window.",
        ["IDENT-MDT-05"], [root(nbf=NOW + DAY, exp=NOW + DAY)], err("mandate-invalid"))
    add("missing_budget", ["error", "claims"], "A required claim (budget) is absent.",
        ["IDENT-MDT-04"], [root(budget=None)], err("mandate-invalid"))
    add("ceiling_with_fraction", ["error", "claims", "integer"], "ceiling written 500.0.",
        ["IDENT-MDT-04"], [root(ceiling=500.0)], err("mandate-invalid"))
    add("ceiling_above_2_53", ["error", "claims", "integer"], "ceiling 2^53, beyond exact JSON integers.",
        ["IDENT-MDT-04"], [root(ceiling=2**53)], err("mandate-invalid"))
    add("ceiling_as_string", ["error", "claims", "integer"], "ceiling \"500\" (a string).",
        ["IDENT-MDT-04"], [root(ceiling="500")], err("mandate-invalid"))
    add("budget_period_unknown", ["error", "claims"], "budget.period \"year\".",
        ["IDENT-MDT-04"], [root(budget={"amount": 20000, "period": "year"})], err("mandate-invalid"))
    add("currency_uppercase", ["error", "claims"], "currency \"USD\": the claim is a lowercase code.",
        ["IDENT-MDT-04"], [root(currency="USD")], err("mandate-invalid"))
    add("aud_star_among_realms", ["error", "claims", "audience"], "aud mixes \"*\" with a realm.",
        ["IDENT-MDT-07"], [root(aud=["*", REALM])], err("mandate-invalid"))
    add("aud_empty", ["error", "claims", "audience"], "aud is an empty array.",
        ["IDENT-MDT-07"], [root(aud=[])], err("mandate-invalid"))
    add("scope_empty", ["error", "claims", "scope"], "scope is an empty array.",
        ["IDENT-MDT-04", "IDENT-MDT-08"], [root(scope=[])], err("mandate-invalid"))
    add("scope_lowercase_method", ["error", "claims", "scope"], "Pattern \"get /v1/*\".",
        ["IDENT-MDT-08"], [root(scope=["get /v1/*"])], err("mandate-invalid"))
    add("scope_wildcard_method", ["error", "claims", "scope"], "Pattern \"* /v1/*\": the method is [A-Z]+.",
        ["IDENT-MDT-08"], [root(scope=["* /v1/*"])], err("mandate-invalid"))
    add("scope_non_ascii_path", ["error", "claims", "scope"], "A path glob with a non-ASCII character.",
        ["IDENT-MDT-08"], [root(scope=["GET /v1/caf\u00e9*"])], err("mandate-invalid"))
    add("scope_pattern_too_long", ["error", "claims", "scope"], "A 257-character pattern.",
        ["IDENT-MDT-08"], [root(scope=["GET /" + "a" * 252])], err("mandate-invalid"))
    add("scope_pattern_256_characters", ["happy-path", "claims", "scope"], "A 256-character pattern is allowed.",
        ["IDENT-MDT-08"], [root(scope=["GET /" + "a" * 251], review=None)], ok(P.did, A.did, [ROOT_JTI]))
    add("review_bad_pattern", ["error", "claims", "scope"], "review holds a pattern without a path.",
        ["IDENT-MDT-08"], [root(review=["POST"])], err("mandate-invalid"))
    add("scope_too_many_patterns", ["error", "claims", "scope"], "65 scope patterns (at most 64).",
        ["IDENT-MDT-04"], [root(scope=[f"GET /v1/p{i}" for i in range(65)], review=None)], err("mandate-invalid"))

    # -- trust, time, audience ------------------------------------------------------------------
    stranger_root = claims(ROOT_CLAIMS, iss=M.did, prn=M.did, approvers=None)
    add("unknown_root", ["error", "trust"], "A well-formed root signed by a principal the seller does not trust.",
        ["IDENT-KEY-03", "IDENT-DLG-01"], [mandate(M, stranger_root)], err("mandate-untrusted"))
    add("untrusted_before_expired", ["error", "trust", "order"],
        "Untrusted and expired: trust (step 3) is checked before times (step 4).",
        ["IDENT-DLG-05"], [mandate(M, claims(stranger_root, exp=NOW - 3600))], err("mandate-untrusted"))
    add("root_prn_not_iss_before_trust", ["error", "claims", "order"],
        "An untrusted root whose prn is not its iss: a claim rule (step 2) is checked before trust (step 3).",
        ["IDENT-MDT-05", "IDENT-DLG-05"], [mandate(M, claims(stranger_root, prn=P.did))], err("mandate-invalid"))
    add("expired", ["error", "time"], "exp an hour ago.", ["IDENT-MDT-06"], [root(exp=NOW - 3600)], err("mandate-expired"))
    add("expired_at_leeway_edge", ["error", "time"], "exp exactly now - leeway is expired.",
        ["IDENT-MDT-06"], [root(exp=NOW - LEEWAY)], err("mandate-expired"))
    add("not_yet_valid", ["error", "time"], "nbf and iat an hour from now.",
        ["IDENT-MDT-06"], [root(iat=NOW + 3600, nbf=NOW + 3600)], err("mandate-not-yet-valid"))
    add("nbf_beyond_leeway", ["error", "time"], "nbf and iat now + leeway + 1.",
        ["IDENT-MDT-06"], [root(iat=NOW + LEEWAY + 1, nbf=NOW + LEEWAY + 1)], err("mandate-not-yet-valid"))
    add("iat_in_future", ["error", "time"], "nbf in the past but iat an hour from now.",
        ["IDENT-MDT-06"], [root(iat=NOW + 3600)], err("mandate-not-yet-valid"))
    add("wrong_audience", ["error", "audience"], "aud names only another seller.",
        ["IDENT-MDT-07"], [root(aud=["shop.example.org"])], err("mandate-audience"))
    add("audience_case_sensitive", ["error", "audience"], "aud \"API.example.com\": realms compare exactly.",
        ["IDENT-MDT-07"], [root(aud=["API.example.com"])], err("mandate-audience"))
    add("expired_before_audience", ["error", "time", "order"], "Expired and for another seller: times (step 4) come first.",
        ["IDENT-DLG-05"], [root(exp=NOW - 3600, aud=["shop.example.org"])], err("mandate-expired"))
    add("sub_expired", ["error", "time", "delegation"], "The root is valid, the sub-mandate expired.",
        ["IDENT-MDT-06"], sub(1, exp=NOW - 3600), err("mandate-expired"))
    add("sub_wrong_audience", ["error", "audience", "delegation"], "The sub-mandate is for another seller.",
        ["IDENT-MDT-07"], [root(aud=["*"]), mandate(A, claims(SUB_CLAIMS, aud=["shop.example.org"]))], err("mandate-audience"))

    # -- delegation ----------------------------------------------------------------------------
    def widen(name: str, description: str, changes: dict[str, Any], tokens: list[str] | None = None) -> None:
        add(name, ["error", "delegation", "narrowing"], description, ["IDENT-DLG-02"], tokens or sub(1, **changes),
            err("delegation-invalid"))

    widen("sub_widens_scope", "Child scope \"GET /v1/*\" under the parent's \"GET /v1/search*\".", {"scope": ["GET /v1/*"]})
    widen("sub_adds_scope", "Child adds a pattern the parent does not cover.", {"scope": ["GET /v1/search*", "DELETE /v1/*"]})
    widen("sub_star_scope", "Child scope \"*\" under a parent with patterns.", {"scope": ["*"]})
    widen("sub_widens_ceiling", "Child ceiling 600 above the parent's 500.", {"ceiling": 600})
    widen("sub_widens_budget", "Child budget 30000 above the parent's 20000.", {"budget": {"amount": 30000, "period": "month"}})
    widen("sub_changes_budget_period", "Same amount but period total instead of month.", {"budget": {"amount": 5000, "period": "total"}})
    widen("sub_drops_threshold", "Parent has approval_threshold 200; the child has none.", {"approval_threshold": None})
    widen("sub_raises_threshold", "Child approval_threshold 300 above the parent's 200.", {"approval_threshold": 300})
    widen("sub_drops_review", "Child omits the parent's review pattern.", {"review": None})
    widen("sub_widens_validity_exp", "Child exp a day after the parent's.", {"exp": NOW + 31 * DAY})
    widen("sub_widens_validity_nbf", "Child nbf (and iat) an hour before the parent's.", {"nbf": NOW - DAY - 3600, "iat": NOW - DAY - 3600})
    widen("sub_widens_audience_to_any", "Parent limited to the realm; child aud [\"*\"].", {"aud": ["*"]})
    widen("sub_adds_audience", "Child adds a realm the parent does not list.", {"aud": [REALM, "shop.example.org"]})
    widen("sub_changes_currency", "Child currency eur under a usd parent.", {"currency": "eur"})
    widen("sub_changes_principal", "Child prn differs from the parent's.", {"prn": X.did})
    widen("sub_max_depth_not_below_parent", "Parent max_depth 2, child max_depth 2.", {"max_depth": 2},
          tokens=sub(2, max_depth=2))
    add("link_not_signed_by_previous_subject", ["error", "delegation", "linkage"],
        "Link 1 is issued (and signed) by a stranger, not by the agent the root names.",
        ["IDENT-DLG-01"], [root(), mandate(M, claims(SUB_CLAIMS, iss=M.did))], err("delegation-invalid"))
    add("approvers_on_sub_mandate", ["error", "delegation"], "A non-root link names approvers.",
        ["IDENT-DLG-03"], sub(1, approvers=[A.did]), err("delegation-invalid"))
    add("repeated_jti", ["error", "delegation", "jti"], "The sub-mandate reuses the root's jti.",
        ["IDENT-DLG-03"], sub(1, jti=ROOT_JTI), err("delegation-invalid"))
    add("deeper_than_root_allows", ["error", "depth"], "Root max_depth 0, yet a sub-mandate follows.",
        ["IDENT-DLG-04"], sub(0), err("delegation-too-deep"))
    add("link_after_max_depth_0", ["error", "depth"],
        "Root allows 2 further links, the first sub-mandate 0, yet a third link follows.",
        ["IDENT-DLG-04"], [root(max_depth=2), mandate(A, claims(SUB_CLAIMS, max_depth=0)), mandate(B, claims(SUBSUB_CLAIMS))],
        err("delegation-too-deep"))
    add("deeper_than_seller_allows", ["error", "depth"], "A valid three-link chain at a seller whose maximum depth is 1.",
        ["IDENT-DLG-04"], three, err("delegation-too-deep"), max_depth=1)
    add("seller_depth_counted_before_signatures", ["error", "depth", "order"],
        "A tampered two-link chain at a seller whose maximum depth is 0: the length is refused before any signature is read.",
        ["IDENT-DLG-04", "IDENT-DLG-05"], [retamper(two[0], ceiling=50000), two[1]], err("delegation-too-deep"), max_depth=0)
    return S


# -- challenges, approvals and proofs --------------------------------------------------------


def challenge(issued: int, *, amount: str = "250") -> dict[str, str]:
    """A ledger charge challenge for GET /v1/search?q=mpp issued at ``issued``, as wire parameters
    (the nonce in opaque: 16 bytes derived from ``issued``)."""
    nonce = b64url(hashlib.sha256(f"nonce {issued}".encode()).digest()[:16])

    request = b64url(jcs({"amount": amount, "currency": "usd", "recipient": "acct:seller"}))
    opaque = b64url(jcs({"nonce": nonce, "resource": "GET /v1/search?q=mpp"}))
    expires = datetime.fromtimestamp(issued + 300, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    cid = compute_challenge_id(SECRET, realm=REALM, method="ledger", intent="charge", request=request, expires=expires,
                               opaque=opaque)
    return {"id": cid, "realm": REALM, "method": "ledger", "intent": "charge", "request": request, "expires": expires,
            "opaque": opaque}


CH1 = challenge(NOW - 10)
CH2 = challenge(NOW - 5)  # the same route and amount, another challenge
CH300 = challenge(NOW - 20, amount="300")


def request_hash(ch: dict[str, str]) -> str:
    return b64url(hashlib.sha256(ch["request"].encode("ascii")).digest())


def quote_hash(ch: dict[str, str]) -> str:
    body = {k: ch[k] for k in ("intent", "method", "realm", "request")} | {"challengeId": ch["id"]}
    return b64url(hashlib.sha256(b"mpp-quote-v1\n" + jcs(body)).digest())


def approval_claims(**changes: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"iss": P.did, "sub": A.did, "jti": jti("apr", "one"), "iat": NOW - 60, "exp": NOW + 540,
                         "challengeId": CH1["id"], "quoteHash": quote_hash(CH1), "amount": "250", "currency": "usd",
                         "rule": "threshold", "mandate": ROOT_JTI}
    c.update(changes)
    return {k: v for k, v in c.items() if v is not None}


def approval(key: SigningKey, **changes: Any) -> str:
    c = approval_claims(**changes)
    return jws(key, header(APPROVAL_TYP, c["iss"]), c)


def approval_scenarios() -> list[dict[str, Any]]:
    S: list[dict[str, Any]] = []
    reqs_base = ["IDENT-APR-03", "IDENT-APR-04", "IDENT-APR-05"]

    def add(name: str, tags: list[str], description: str, reqs: list[str], token: str, expected: dict[str, Any], *,
            tokens: list[str] | None = None, ch: dict[str, str] = CH1) -> None:
        inp = chain_input(tokens or [root()])
        inp |= {"challenge": ch, "approval": token}
        S.append(scenario(name, tags, description, reqs, inp, expected))

    def valid(token: str, iss: str, ch: dict[str, str] = CH1, rule: str = "threshold") -> dict[str, Any]:
        return {"valid": True, "jti": payload_of(token)["jti"], "iss": iss, "rule": rule, "quoteHash": quote_hash(ch)}

    bad = err("approval-invalid")
    t = approval(P)
    add("approval_by_principal", ["happy-path"], "The principal approves this quote (amount 250 above the threshold 200).",
        ["IDENT-APR-02", "IDENT-APR-03", "IDENT-APR-04"], t, valid(t, P.did))
    t = approval(X, iss=X.did, jti=jti("apr", "approver"), rule="review")
    add("approval_by_listed_approver", ["happy-path"], "An approver the root lists in approvers signs it.",
        ["IDENT-APR-04"], t, valid(t, X.did, rule="review"))
    t = approval(P, sub=B.did, mandate=SUB_JTI, jti=jti("apr", "subagent"))
    add("approval_for_sub_agent", ["happy-path", "delegation"],
        "Two-link chain: the approval names the leaf agent and the leaf mandate, signed by the root principal.",
        ["IDENT-APR-04"], t, valid(t, P.did), tokens=sub(1))
    t = approval(P, note="extra claims are ignored")
    add("approval_unknown_claim_ignored", ["happy-path", "extension"], "A claim outside the table is ignored.",
        ["IDENT-APR-03"], t, valid(t, P.did))

    add("approval_for_another_challenge", ["error", "binding"],
        "Approval made for another challenge (its id and quote hash) of the same route and amount.",
        ["IDENT-APR-05", "IDENT-APR-06"], approval(P, challengeId=CH2["id"], quoteHash=quote_hash(CH2)), bad)
    add("approval_for_another_amount", ["error", "binding"], "Right challenge and quote hash, amount 300 instead of 250.",
        ["IDENT-APR-05"], approval(P, amount="300"), bad)
    add("approval_for_another_quote_hash", ["error", "binding"], "Right challenge id, quote hash of another challenge.",
        ["IDENT-APR-02", "IDENT-APR-05"], approval(P, quoteHash=quote_hash(CH2)), bad)
    add("approval_for_another_currency", ["error", "binding"], "currency eur instead of usd.",
        ["IDENT-APR-05"], approval(P, currency="eur"), bad)
    add("approval_for_another_agent", ["error", "binding"], "sub names another agent than the leaf's sub.",
        ["IDENT-APR-04"], approval(P, sub=B.did), bad)
    add("approval_for_another_mandate", ["error", "binding"], "mandate names another jti than the leaf's.",
        ["IDENT-APR-04"], approval(P, mandate=SUB_JTI), bad)
    add("approval_of_root_mandate_under_sub_agent", ["error", "binding", "delegation"],
        "Two-link chain, but the approval names the root's agent and jti.",
        ["IDENT-APR-04"], approval(P), bad, tokens=sub(1))
    add("approval_signed_by_non_approver", ["error", "signer"], "Signed by a key that is neither prn nor a listed approver.",
        ["IDENT-APR-04"], approval(M, iss=M.did), bad)
    add("approval_signed_by_agent", ["error", "signer"], "The paying agent approves its own purchase.",
        ["IDENT-APR-04"], approval(A, iss=A.did), bad)
    add("approval_signed_by_delegating_agent", ["error", "signer", "delegation"],
        "Two-link chain: the intermediate agent (an issuer of the chain, not the principal) approves.",
        ["IDENT-APR-04"], approval(A, iss=A.did, sub=B.did, mandate=SUB_JTI), bad, tokens=sub(1))
    add("approval_signed_by_another_key", ["error", "signer"], "iss and kid say principal; the stranger's key signed.",
        ["IDENT-APR-03"], jws(M, header(APPROVAL_TYP, P.did), approval_claims()), bad)
    add("approval_expired", ["error", "time"], "exp an hour ago.", ["IDENT-APR-03"],
        approval(P, iat=NOW - 7200, exp=NOW - 3600), bad)
    add("approval_issued_in_future", ["error", "time"], "iat an hour from now.", ["IDENT-APR-03"],
        approval(P, iat=NOW + 3600, exp=NOW + 7200), bad)
    add("approval_bad_jti", ["error", "jti"], "jti is not apr_ + 22 base64url characters.", ["IDENT-APR-03"],
        approval(P, jti="apr_1"), bad)
    add("approval_mandate_jti_prefix", ["error", "jti"], "jti with the mandate prefix mdt_.", ["IDENT-APR-03"],
        approval(P, jti=jti("mdt", "one")), bad)
    add("approval_iat_boolean", ["error", "claims"], "iat is the JSON literal true, not an integer.", ["IDENT-APR-03"],
        approval(P, iat=True), bad)
    add("approval_unknown_rule", ["error", "claims"], "rule is neither threshold nor review.", ["IDENT-APR-03"],
        approval(P, rule="manual"), bad)
    add("approval_missing_rule", ["error", "claims"], "No rule claim.", ["IDENT-APR-03"], approval(P, rule=None), bad)
    add("approval_alg_none", ["error", "jws", "alg"], "Unsigned approval, alg none.", ["IDENT-APR-03", "IDENT-MDT-02"],
        jws(None, header(APPROVAL_TYP, P.did, alg="none"), approval_claims()), bad)
    add("approval_tampered_amount", ["error", "jws", "tamper"],
        "Approval for 250 re-encoded with amount 300 and presented with a 300 challenge; signature kept.",
        ["IDENT-APR-03"], retamper(approval(P, challengeId=CH300["id"], quoteHash=quote_hash(CH300)), amount="300"), bad, ch=CH300)
    add("mandate_presented_as_approval", ["error", "jws", "confusion"], "The root mandate JWS given as the approval.",
        ["IDENT-APR-03"], root(), bad)
    add("approval_typ_mandate", ["error", "jws"], "Approval claims under typ mpp-mandate+jwt.", ["IDENT-APR-03"],
        jws(P, header(MANDATE_TYP, P.did), approval_claims()), bad)
    return S


def proof_bytes(ch: dict[str, str], mandate_jti: str) -> bytes:
    request = json.loads(b64url_decode(ch["request"]))
    body = {"amount": request["amount"], "challengeId": ch["id"], "currency": request["currency"], "mandate": mandate_jti,
            "realm": ch["realm"], "requestHash": request_hash(ch)}
    return b"mpp-identity-proof-v1\n" + jcs(body)


def proof_scenarios() -> list[dict[str, Any]]:
    S: list[dict[str, Any]] = []

    def add(name: str, tags: list[str], description: str, reqs: list[str], ch: dict[str, str], mandate_jti: str,
            agent: SigningKey, expected: dict[str, Any], signature: str | None = None) -> None:
        inp: dict[str, Any] = {"challenge": ch, "mandate": mandate_jti, "agent": agent.did}
        if signature is not None:
            inp["signature"] = signature
        S.append(scenario(name, tags, description, reqs, inp, expected))

    def proof(ch: dict[str, str], mandate_jti: str, key: SigningKey) -> dict[str, Any]:
        message = proof_bytes(ch, mandate_jti)
        return {"valid": True, "requestHash": request_hash(ch), "proofText": message.decode("ascii"),
                "proofHex": message.hex(), "signature": key.sign(message)}

    root_proof = proof(CH1, ROOT_JTI, A)
    add("proof_root_agent", ["happy-path"], "The agent's proof for a root mandate: exact bytes and its Ed25519 signature.",
        ["IDENT-POP-05", "IDENT-KEY-05"], CH1, ROOT_JTI, A, root_proof)
    add("proof_sub_agent", ["happy-path", "delegation"], "The sub-agent's proof binds the leaf (sub-mandate) jti.",
        ["IDENT-POP-05"], CH1, SUB_JTI, B, proof(CH1, SUB_JTI, B))
    add("proof_other_amount_request", ["happy-path"], "Another request (amount 300): another requestHash and other bytes.",
        ["IDENT-POP-05"], CH300, ROOT_JTI, A, proof(CH300, ROOT_JTI, A))
    add("proof_over_another_challenge", ["error", "binding"],
        "The root agent's proof for one challenge presented with another challenge of the same route and amount.",
        ["IDENT-POP-06"], CH2, ROOT_JTI, A, err("proof-invalid"), root_proof["signature"])
    add("proof_for_another_mandate", ["error", "binding"],
        "A proof made under the root mandate's jti checked against a chain whose leaf is the sub-mandate (same key).",
        ["IDENT-POP-05", "IDENT-POP-06"], CH1, SUB_JTI, A, err("proof-invalid"), root_proof["signature"])
    add("proof_by_another_key", ["error", "signer"], "The right bytes signed by the principal, not by the leaf agent.",
        ["IDENT-POP-06"], CH1, ROOT_JTI, A, err("proof-invalid"), P.sign(proof_bytes(CH1, ROOT_JTI)))
    add("proof_without_domain_prefix", ["error", "domain"],
        "The agent signed the JCS object without the mpp-identity-proof-v1 line.",
        ["IDENT-KEY-05", "IDENT-POP-05"], CH1, ROOT_JTI, A, err("proof-invalid"),
        A.sign(proof_bytes(CH1, ROOT_JTI).split(b"\n", 1)[1]))
    return S


# == the signed messages of the method, the session intent, the ledger service, receipts, revocation,
# == the audit log and grants (issue 13). Same keys, same hand encoding, same rules as above.

SELLER_SEED = bytes(range(32, 64)).hex()  # 20 21 .. 3f: the seller's receipt (and grant) key, and its ledger-service key
S = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(SELLER_SEED)))
SIGNED_KEY_TABLE = KEY_TABLE | {"seller": {"seedHex": SELLER_SEED, "did": S.did}}
LEDGER_ID = "ledger-0f3a9c1d2e4b5a69"
RECIPIENT = "acct:seller"
ACCOUNT = "acct:buyer"
CHARGE_DOMAIN = b"mpp-ledger-charge-v1\n"
CAP_DOMAIN = b"mpp-ledger-session-cap-v1\n"
VOUCHER_DOMAIN = b"mpp-ledger-session-voucher-v1\n"
CLOSE_DOMAIN = b"mpp-ledger-session-close-v1\n"
REQUEST_DOMAIN = b"mpp-ledger-request-v1\n"
GRANT_PROOF_DOMAIN = b"mpp-grant-proof-v1\n"


def canonical(value: Any) -> bytes:
    """RFC 8785 of any JSON value, by the rfc8785 package (not by mpp)."""
    return rfc8785.dumps(value)


def raw_public(key: SigningKey) -> bytes:
    return key.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def seller_kid(key: SigningKey) -> str:
    """Any string names a key in the JWKS; the seller's choice here: 24 characters of its DID."""
    return key.did[len("did:key:"):][:24]


def jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": b64url(raw_public(k)), "kid": seller_kid(k), "alg": "EdDSA",
                      "use": "sig"} for k in keys]}


def signed(message: bytes, key: SigningKey) -> dict[str, Any]:
    """What a valid scenario expects of a signed message: its bytes (as text and hex) and the signature."""
    return {"valid": True, "signedText": message.decode("utf-8"), "signedHex": message.hex(), "signature": key.sign(message)}


def flipped(signature: str) -> str:
    """The signature with one bit of its first byte flipped."""
    raw = b64url_decode(signature)
    return b64url(bytes([raw[0] ^ 1]) + raw[1:])


def ledger_challenge(issued: int, *, amount: str = "250", intent: str = "charge", resource: str = "GET /v1/search?q=mpp",
                     request: dict[str, Any] | None = None) -> dict[str, str]:
    """A ledger challenge as wire parameters, its request naming the ledger (LEDGER-04)."""
    nonce = b64url(hashlib.sha256(f"nonce {issued}".encode()).digest()[:16])
    request = request or {"amount": amount, "currency": "usd", "recipient": RECIPIENT, "methodDetails": {"ledger": LEDGER_ID}}
    wire_request = b64url(canonical(request))
    opaque = b64url(jcs({"nonce": nonce, "resource": resource}))
    expires = datetime.fromtimestamp(issued + 300, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    cid = compute_challenge_id(SECRET, realm=REALM, method="ledger", intent=intent, request=wire_request, expires=expires,
                               opaque=opaque)
    return {"id": cid, "realm": REALM, "method": "ledger", "intent": intent, "request": wire_request, "expires": expires,
            "opaque": opaque}


# -- the ledger method's authorization (LEDGER-06, LEDGER-08) --------------------------------

LCH = ledger_challenge(NOW - 30)
LCH300 = ledger_challenge(NOW - 30, amount="300")


def charge_bytes(ch: dict[str, str], *, account: str = ACCOUNT, domain: bytes = CHARGE_DOMAIN, **changes: str) -> bytes:
    request = json.loads(b64url_decode(ch["request"]))
    body = {"account": account, "amount": request["amount"], "challengeId": ch["id"], "currency": request["currency"],
            "ledger": request["methodDetails"]["ledger"], "realm": ch["realm"], "recipient": request["recipient"]}
    body.update(changes)
    return domain + jcs(body)


def ledger_authorization_scenarios() -> list[dict[str, Any]]:
    S_: list[dict[str, Any]] = []
    bad = err("verification-failed")

    def add(name: str, tags: list[str], description: str, reqs: list[str], ch: dict[str, str], payload: dict[str, Any],
            expected: dict[str, Any]) -> None:
        inp = {"challenge": ch, "payload": payload, "recipient": RECIPIENT, "ledger": LEDGER_ID}
        S_.append(scenario(name, tags, description, reqs, inp, expected))

    def payload(signature: str, *, signer: SigningKey = A, account: str = ACCOUNT, **extra: Any) -> dict[str, Any]:
        return {"type": "authorization", "account": account, "signer": signer.did, "signature": signature} | extra

    good = signed(charge_bytes(LCH), A)
    add("authorization_by_agent", ["happy-path"], "The agent's authorization of a 250 usd charge: the exact signed bytes "
        "and the Ed25519 signature.", ["LEDGER-06", "LEDGER-08"], LCH, payload(good["signature"]), good)
    other = signed(charge_bytes(LCH, account="acct:team-7"), B)
    add("authorization_other_account_and_key", ["happy-path"], "Another payer account and another agent key.",
        ["LEDGER-06", "LEDGER-08"], LCH, payload(other["signature"], signer=B, account="acct:team-7"), other)
    more = signed(charge_bytes(LCH300), A)
    add("authorization_extra_payload_member_ignored", ["happy-path", "extension"],
        "A payload member outside the table is ignored and never signed.", ["LEDGER-05", "LEDGER-06"], LCH300,
        payload(more["signature"], memo="not signed"), more)

    sig = good["signature"]
    add("amount_tampered", ["error", "tamper"], "The signature made for 250 presented with the 300 challenge.",
        ["LEDGER-08", "LEDGER-09"], LCH300, payload(sig), bad)
    add("account_changed", ["error", "tamper"], "The payload names another account than the one signed.",
        ["LEDGER-06", "LEDGER-08"], LCH, payload(sig, account="acct:victim"), bad)
    add("signed_by_another_key", ["error", "signer"], "signer names the agent; the stranger's key signed the right bytes.",
        ["LEDGER-08"], LCH, payload(M.sign(charge_bytes(LCH))), bad)
    add("signer_swapped", ["error", "signer"], "The agent's signature with signer set to the stranger's DID.",
        ["LEDGER-08"], LCH, payload(sig, signer=M), bad)
    add("without_domain_prefix", ["error", "domain"], "The agent signed the JCS object without the mpp-ledger-charge-v1 line.",
        ["LEDGER-06", "IDENT-KEY-05"], LCH, payload(A.sign(charge_bytes(LCH, domain=b""))), bad)
    add("session_cap_domain", ["error", "domain"], "The same object signed under the session cap's domain line.",
        ["LEDGER-06", "IDENT-KEY-05"], LCH, payload(A.sign(charge_bytes(LCH, domain=CAP_DOMAIN))), bad)
    add("other_ledger", ["error", "binding"], "Signed for another ledger id (methodDetails.ledger).",
        ["LEDGER-06"], LCH, payload(A.sign(charge_bytes(LCH, ledger="ledger-ffff"))), bad)
    add("other_realm", ["error", "binding"], "Signed for another realm.",
        ["LEDGER-06"], LCH, payload(A.sign(charge_bytes(LCH, realm="shop.example.org"))), bad)
    add("amount_as_number_signed", ["error", "binding"], "The bytes signed carry amount as a JSON number 250, not \"250\".",
        ["LEDGER-06"], LCH, payload(A.sign(charge_bytes(LCH).replace(b'"amount":"250"', b'"amount":250'))), bad)
    add("signature_bit_flipped", ["error", "tamper"], "One bit of the signature flipped.", ["LEDGER-08"], LCH,
        payload(flipped(sig)), bad)
    add("signature_63_bytes", ["error", "signature"], "The signature cut to 63 bytes.",
        ["LEDGER-05", "LEDGER-08"], LCH, payload(b64url(b64url_decode(sig)[:63])), bad)
    add("signer_not_did_key", ["error", "signer"], "signer is a did:web.", ["LEDGER-07"], LCH,
        payload(sig) | {"signer": "did:web:agent.example"}, bad)
    add("payload_type_wrong", ["error", "payload"], "type \"transfer\" instead of \"authorization\".", ["LEDGER-05"], LCH,
        payload(sig) | {"type": "transfer"}, bad)
    add("account_too_long", ["error", "payload"], "An account id of 129 characters.", ["LEDGER-05"], LCH,
        payload(A.sign(charge_bytes(LCH, account="a" * 129)), account="a" * 129), bad)
    return S_


# -- session messages (SESSION-REQ-08, SESSION-VOUCHER-05) -----------------------------------

SESSION_REQUEST = {"amount": "2", "currency": "usd", "recipient": RECIPIENT, "unitType": "tokens",
                   "methodDetails": {"ledger": LEDGER_ID, "per": "1000", "maxUnits": "4000", "suggestedCap": "500",
                                     "idleTimeout": "300"}}
SCH = ledger_challenge(NOW - 40, intent="session", resource="POST /v1/complete", request=SESSION_REQUEST)
TERMS = {"sessionId": SCH["id"], "realm": REALM, "recipient": RECIPIENT, "ledger": LEDGER_ID, "currency": "usd",
         "unitPrice": "2", "per": "1000"}


def session_bytes(kind: str, terms: dict[str, str] = TERMS, **fields: Any) -> bytes:
    """SESSION-REQ-08, member by member."""
    common = {k: terms[k] for k in ("sessionId", "realm", "recipient", "ledger")}
    if kind == "cap":
        return CAP_DOMAIN + canonical(common | {"currency": terms["currency"], "unitPrice": terms["unitPrice"],
                                                 "per": terms["per"], "account": fields["account"], "cap": fields["cap"]})
    if kind == "voucher":
        return VOUCHER_DOMAIN + canonical(common | {"currency": terms["currency"], "cumulative": fields["cumulative"],
                                                     "sequence": fields["sequence"]})
    assert kind == "close"
    return CLOSE_DOMAIN + canonical(common | {"action": "close"})


def session_message_scenarios() -> list[dict[str, Any]]:
    S_: list[dict[str, Any]] = []
    bad = err("session-voucher-invalid")

    def add(name: str, tags: list[str], description: str, reqs: list[str], kind: str, fields: dict[str, Any],
            expected: dict[str, Any], *, signature: str | None = None, terms: dict[str, str] = TERMS,
            signer: SigningKey = A) -> None:
        inp: dict[str, Any] = {"message": kind, "terms": terms, **fields, "signer": signer.did}
        if signature is not None:
            inp["signature"] = signature
        S_.append(scenario(name, tags, description, reqs, inp, expected))

    cap = {"account": ACCOUNT, "cap": "500"}
    open_cap = signed(session_bytes("cap", **cap), A)
    add("open_cap", ["happy-path", "open"], "The cap an open carries: account acct:buyer held for 500 in total.",
        ["SESSION-REQ-08"], "cap", cap, open_cap)
    add("top_up_cap", ["happy-path", "topUp"], "A top-up's cap: the new total 1200, the same message.",
        ["SESSION-REQ-08", "SESSION-VOUCHER-08"], "cap", {"account": ACCOUNT, "cap": "1200"},
        signed(session_bytes("cap", account=ACCOUNT, cap="1200"), A))
    first = {"cumulative": "0", "sequence": 1}
    add("voucher_first", ["happy-path", "open"], "The open's first voucher: nothing used yet, sequence 1.",
        ["SESSION-REQ-08"], "voucher", first, signed(session_bytes("voucher", **first), A))
    v3 = {"cumulative": "120", "sequence": 3}
    voucher3 = signed(session_bytes("voucher", **v3), A)
    add("voucher_cumulative", ["happy-path", "voucher"], "A later voucher: 120 in total, sequence 3 (a JSON integer).",
        ["SESSION-REQ-08"], "voucher", v3, voucher3)
    vmax = {"cumulative": "9223372036854775807", "sequence": 9007199254740991}
    add("voucher_largest_values", ["happy-path", "voucher", "integer"],
        "cumulative at 2^63 - 1 (a string) and sequence at 2^53 - 1, the largest integer RFC 8785 writes exactly.",
        ["SESSION-REQ-07", "SESSION-REQ-08"], "voucher", vmax, signed(session_bytes("voucher", **vmax), A))
    close = signed(session_bytes("close"), A)
    add("close", ["happy-path", "close"], "The close message (action close).", ["SESSION-REQ-08", "SESSION-CLOSE-01"],
        "close", {}, close)

    other_terms = TERMS | {"sessionId": LCH["id"]}
    add("voucher_other_session", ["error", "binding"], "The sequence-3 voucher's signature under another session's terms.",
        ["SESSION-VOUCHER-05"], "voucher", v3, bad, signature=voucher3["signature"], terms=other_terms)
    for member, value in (("realm", "shop.example.org"), ("recipient", "acct:other-seller"), ("ledger", "ledger-ffff"),
                          ("currency", "eur")):
        add(f"voucher_other_{member}", ["error", "binding"], f"The same voucher checked with another {member}.",
            ["SESSION-VOUCHER-05"], "voucher", v3, bad, signature=voucher3["signature"], terms=TERMS | {member: value})
    add("voucher_cumulative_raised", ["error", "tamper"], "cumulative raised to 400 after signing; signature kept.",
        ["SESSION-VOUCHER-05"], "voucher", {"cumulative": "400", "sequence": 3}, bad, signature=voucher3["signature"])
    add("voucher_signature_bit_flipped", ["error", "tamper"], "One bit of the voucher's signature flipped.",
        ["SESSION-VOUCHER-05"], "voucher", v3, bad, signature=flipped(voucher3["signature"]))
    add("voucher_by_another_key", ["error", "signer"], "The right bytes signed by the stranger, checked for the agent.",
        ["SESSION-VOUCHER-05"], "voucher", v3, bad, signature=M.sign(session_bytes("voucher", **v3)))
    add("voucher_sequence_as_string", ["error", "json"], "The agent signed sequence as the string \"3\".",
        ["SESSION-REQ-08"], "voucher", v3, bad,
        signature=A.sign(session_bytes("voucher", cumulative="120", sequence="3")))
    add("voucher_without_domain", ["error", "domain"], "The voucher object signed without its domain line.",
        ["SESSION-REQ-08", "IDENT-KEY-05"], "voucher", v3, bad,
        signature=A.sign(session_bytes("voucher", **v3)[len(VOUCHER_DOMAIN):]))
    add("voucher_signature_as_close", ["error", "domain"], "A voucher signature presented as the close signature.",
        ["SESSION-REQ-08", "SESSION-VOUCHER-05"], "close", {}, bad, signature=voucher3["signature"])
    add("close_under_voucher_domain", ["error", "domain"], "The close object signed under the voucher's domain line.",
        ["SESSION-REQ-08", "IDENT-KEY-05"], "close", {}, bad,
        signature=A.sign(VOUCHER_DOMAIN + session_bytes("close")[len(CLOSE_DOMAIN):]))
    add("cap_other_account", ["error", "binding"], "The open's cap signature checked for another account.",
        ["SESSION-VOUCHER-05"], "cap", {"account": "acct:victim", "cap": "500"}, bad, signature=open_cap["signature"])
    add("cap_raised", ["error", "tamper"], "The open's cap signature presented for a cap of 5000.",
        ["SESSION-VOUCHER-05", "SESSION-VOUCHER-08"], "cap", {"account": ACCOUNT, "cap": "5000"}, bad,
        signature=open_cap["signature"])
    add("cap_other_unit_price", ["error", "binding"], "The cap checked with another unit price (terms of another route).",
        ["SESSION-VOUCHER-05"], "cap", cap, bad, signature=open_cap["signature"], terms=TERMS | {"unitPrice": "1"})
    add("cap_charge_domain", ["error", "domain"], "The cap object signed under mpp-ledger-charge-v1.",
        ["IDENT-KEY-05"], "cap", cap, bad,
        signature=A.sign(CHARGE_DOMAIN + session_bytes("cap", **cap)[len(CAP_DOMAIN):]))
    return S_


# -- MPP-Ledger request signatures (ledger.md §7.2) --------------------------------------------


def request_bytes(*, ledger: str = LEDGER_ID, method: str, target: str, ts: int, nonce: str, body: bytes) -> bytes:
    lines = [ledger, method, target, str(ts), nonce, b64url(hashlib.sha256(body).digest())]
    return REQUEST_DOMAIN + "\n".join(lines).encode("ascii")


def ledger_auth(key: SigningKey, ts: int, nonce: str, sig: str, *, keyid: str | None = None) -> str:
    return f'MPP-Ledger keyid="{keyid or key.did}", ts="{ts}", nonce="{nonce}", sig="{sig}"'


SPEC_VOID = {"method": "POST", "target": "/v1/transfers/x7Qm3a9LbXw0cZpRkT2yVn8sUe4dHf6jGi1oKlMqPrA/void",
             "ts": 1767225600, "nonce": "mD3yX2v0b1Qk9cT8aL5nWg", "body": ""}


def ledger_request_scenarios() -> list[dict[str, Any]]:
    S_: list[dict[str, Any]] = []

    def add(name: str, tags: list[str], description: str, reqs: list[str], req: dict[str, Any], key: SigningKey,
            expected: dict[str, Any] | None = None, **changes: Any) -> None:
        """``req``: what is signed; ``changes``: what the service receives instead (method, target,
        body, ledger) or the authorization it receives (authorization)."""
        body = req["body"].encode("utf-8")
        message = request_bytes(method=req["method"], target=req["target"], ts=req["ts"], nonce=req["nonce"], body=body,
                                ledger=req.get("ledger", LEDGER_ID))
        sig = key.sign(message)
        received = {k: req[k] for k in ("method", "target", "body")} | {"ledger": LEDGER_ID}
        received.update({k: v for k, v in changes.items() if k in received})
        received["authorization"] = changes.get("authorization") or ledger_auth(key, req["ts"], req["nonce"], sig)
        if expected is None:
            expected = {"valid": True, "keyid": key.did, "bodyHash": b64url(hashlib.sha256(body).digest()),
                        "signedText": message.decode("ascii"), "signedHex": message.hex(), "signature": sig}
        S_.append(scenario(name, tags, description, reqs, received, expected))

    transfer_body = compact({"id": LCH["id"], "realm": REALM, "payer": ACCOUNT, "payee": RECIPIENT, "amount": "250",
                             "currency": "usd", "signer": A.did, "signature": A.sign(charge_bytes(LCH))}).decode()
    transfer = {"method": "POST", "target": "/v1/transfers", "ts": NOW, "nonce": "bm9uY2UtdHJhbnNmZXIx", "body": transfer_body}
    spend = {"method": "POST", "target": "/v1/spend-check", "ts": NOW, "nonce": "bm9uY2Utc3BlbmQtY2hlY2s",
             "body": compact({"payer": ACCOUNT, "signer": A.did, "chain": [P.did, A.did]}).decode()}
    members = {"method": "POST", "target": "/v1/accounts/acct%3Abuyer/members", "ts": NOW, "nonce": "bm9uY2UtbWVtYmVyczE",
               "body": compact({"did": A.did, "role": "agent"}).decode()}
    listing = {"method": "GET", "target": "/v1/accounts/acct%3Aseller/transfers?since=2026-10-01T00%3A00%3A00Z"
               "&until=2026-11-01T00%3A00%3A00Z", "ts": NOW, "nonce": "bm9uY2UtbGlzdGluZzE", "body": ""}
    add("void_spec_example", ["happy-path"], "The void of ledger.md §7.2's example (empty body), signed by the seller.",
        ["LEDGER-SVC-01"], SPEC_VOID, S)
    add("transfer", ["happy-path"], "POST /v1/transfers with its JSON body (the agent's authorization inside).",
        ["LEDGER-SVC-01", "LEDGER-SVC-04"], transfer, S)
    add("spend_check", ["happy-path"], "POST /v1/spend-check for a one-link chain.", ["LEDGER-SVC-01", "LEDGER-SVC-12"],
        spend, S)
    add("members_by_owner", ["happy-path"], "POST /v1/accounts/{id}/members signed by the account's owner (the principal), "
        "not by a seller; the path segment percent-encoded as sent.", ["LEDGER-SVC-13"], members, P)
    add("transfers_listing_with_query", ["happy-path"], "A GET with a query: the target is path and query exactly as sent.",
        ["LEDGER-SVC-01", "LEDGER-SVC-11"], listing, S)

    sig_bad, parse_bad = err("signature-invalid"), err("parse-error")
    add("body_changed", ["error", "tamper"], "The service receives another body than the one signed.",
        ["LEDGER-SVC-01"], spend, S, sig_bad, body=spend["body"].replace(P.did, M.did))
    add("target_changed", ["error", "tamper"], "Signed for one transfer's void, sent to another's.",
        ["LEDGER-SVC-01"], SPEC_VOID, S, sig_bad, target=SPEC_VOID["target"].replace("x7Qm", "y7Qm"))
    add("query_dropped", ["error", "tamper"], "Signed with its query, received without it.", ["LEDGER-SVC-01"], listing, S,
        sig_bad, target=listing["target"].split("?")[0])
    add("method_changed", ["error", "tamper"], "Signed as POST, received as PUT.", ["LEDGER-SVC-01"], members, P, sig_bad,
        method="PUT")
    add("other_ledger", ["error", "binding"], "Signed for another ledger id.", ["LEDGER-SVC-01"],
        spend | {"ledger": "ledger-ffff"}, S, sig_bad)
    add("members_by_stranger_key", ["error", "signer"], "keyid names the owner; the stranger's key signed.",
        ["LEDGER-SVC-01", "LEDGER-SVC-13"], members, M, sig_bad, authorization=ledger_auth(
            M, members["ts"], members["nonce"], M.sign(request_bytes(method="POST", target=members["target"], ts=NOW,
                                                                     nonce=members["nonce"], body=members["body"].encode())),
            keyid=P.did))
    void_msg = request_bytes(method="POST", target=SPEC_VOID["target"], ts=SPEC_VOID["ts"], nonce=SPEC_VOID["nonce"], body=b"")
    add("ts_changed", ["error", "tamper"], "ts in the field is one second later than the one signed.", ["LEDGER-SVC-01"],
        SPEC_VOID, S, sig_bad, authorization=ledger_auth(S, SPEC_VOID["ts"] + 1, SPEC_VOID["nonce"], S.sign(void_msg)))
    add("nonce_changed", ["error", "tamper"], "nonce in the field is not the one signed.", ["LEDGER-SVC-01", "LEDGER-SVC-02"],
        SPEC_VOID, S, sig_bad, authorization=ledger_auth(S, SPEC_VOID["ts"], "mD3yX2v0b1Qk9cT8aL5nWh", S.sign(void_msg)))
    add("sig_bit_flipped", ["error", "tamper"], "One bit of sig flipped.", ["LEDGER-SVC-01"], SPEC_VOID, S, sig_bad,
        authorization=ledger_auth(S, SPEC_VOID["ts"], SPEC_VOID["nonce"], flipped(S.sign(void_msg))))
    add("without_domain", ["error", "domain"], "The six lines signed without the mpp-ledger-request-v1 line.",
        ["LEDGER-SVC-01"], SPEC_VOID, S, sig_bad, authorization=ledger_auth(
            S, SPEC_VOID["ts"], SPEC_VOID["nonce"], S.sign(void_msg[len(REQUEST_DOMAIN):])))
    add("trailing_lf", ["error", "format"], "The signed bytes end with an LF after the body hash.", ["LEDGER-SVC-01"],
        SPEC_VOID, S, sig_bad, authorization=ledger_auth(S, SPEC_VOID["ts"], SPEC_VOID["nonce"], S.sign(void_msg + b"\n")))
    good = ledger_auth(S, SPEC_VOID["ts"], SPEC_VOID["nonce"], S.sign(void_msg))
    for name, description, value in (
            ("sig_missing", "No sig parameter.", good.rsplit(", sig=", 1)[0]),
            ("param_repeated", "nonce given twice.", good + f', nonce="{SPEC_VOID["nonce"]}"'),
            ("unknown_param", "An extra parameter alg.", good + ', alg="EdDSA"'),
            ("nonce_too_short", "A 15-character nonce.", good.replace(SPEC_VOID["nonce"], SPEC_VOID["nonce"][:15])),
            ("ts_leading_zero", "ts written 01767225600.", good.replace('ts="1767225600"', 'ts="01767225600"')),
            ("unquoted_value", "ts not quoted.", good.replace('ts="1767225600"', "ts=1767225600")),
            ("keyid_not_did_key", "keyid a did:web.", good.replace(S.did, "did:web:seller.example")),
            ("other_scheme", "Scheme Bearer.", good.replace("MPP-Ledger", "Bearer", 1))):
        add(name, ["error", "parse"], description, ["LEDGER-SVC-01"], SPEC_VOID, S, parse_bad, authorization=value)
    return S_


# -- receipt JWS (CHARGE-06, CHARGE-07, IDENT-RCPT-01, CORE-BUY-04) ------------------------------

RECEIPT_TYP = "mpp-receipt+jwt"
RECEIPT_CLAIMS: dict[str, Any] = {
    "iss": REALM, "sub": A.did, "iat": NOW, "jti": LCH["id"], "challengeId": LCH["id"], "method": "ledger", "intent": "charge",
    "amount": "250", "currency": "usd", "recipient": RECIPIENT, "resource": "GET /v1/search?q=mpp",
    "reference": "tr_" + LCH["id"][:22], "account": ACCOUNT}
IDENTITY_RECEIPT_CLAIMS = RECEIPT_CLAIMS | {"agent": A.did, "principal": P.did, "mandate": ROOT_JTI, "chain": [ROOT_JTI],
                                            "approval": None, "decision": "allow"}


def receipt_header(key: SigningKey = S, **changes: Any) -> dict[str, Any]:
    h: dict[str, Any] = {"alg": "EdDSA", "typ": RECEIPT_TYP, "kid": seller_kid(key)} | changes
    return {k: v for k, v in h.items() if v is not None}


def receipt_scenarios() -> list[dict[str, Any]]:
    S_: list[dict[str, Any]] = []
    bad = err("receipt-invalid")

    def add(name: str, tags: list[str], description: str, reqs: list[str], token: str, expected: dict[str, Any], *,
            keys: dict[str, Any] | None = None, challenge_id: str = LCH["id"]) -> None:
        inp = {"token": token, "jwks": keys or jwks(S), "issuer": REALM, "challengeId": challenge_id, "now": NOW + 5}
        S_.append(scenario(name, tags, description, reqs, inp, expected))

    def valid(token: str) -> dict[str, Any]:
        h, p, s = token.split(".")
        return {"valid": True, "header": json.loads(b64url_decode(h)), "claims": payload_of(token),
                "signingInput": f"{h}.{p}"}

    t = jws(S, receipt_header(), RECEIPT_CLAIMS)
    add("charge_receipt", ["happy-path"], "A charge receipt: every claim of charge.md §3, signed with the seller's key.",
        ["CHARGE-06", "CHARGE-07", "CORE-BUY-04"], t, valid(t))
    t = jws(S, receipt_header(), IDENTITY_RECEIPT_CLAIMS)
    add("identity_receipt", ["happy-path", "identity"], "A purchase made with the identity extension: the claims of "
        "identity.md §9 added.", ["IDENT-RCPT-01", "CHARGE-07"], t, valid(t))
    old = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(SEEDS["subsubagent"][0])))
    t = jws(old, receipt_header(old), RECEIPT_CLAIMS)
    add("receipt_by_earlier_key", ["happy-path", "jwks"], "Signed with an earlier key the JWKS still publishes.",
        ["CORE-DISC-01", "CORE-BUY-04"], t, valid(t), keys={"keys": jwks(S)["keys"] + jwks(old)["keys"]})

    good = jws(S, receipt_header(), RECEIPT_CLAIMS)
    add("amount_tampered", ["error", "tamper"], "amount raised to 2500 after signing.", ["CORE-BUY-04"],
        retamper(good, amount="2500"), bad)
    h, p_, s_ = good.split(".")
    add("signature_bit_flipped", ["error", "tamper"], "One bit of the signature flipped.", ["CORE-BUY-04"],
        f"{h}.{p_}.{flipped(s_)}", bad)
    add("signed_by_another_key", ["error", "key"], "The header names the seller's kid; the stranger's key signed.",
        ["CHARGE-06", "CORE-BUY-04"], jws(M, receipt_header(), RECEIPT_CLAIMS), bad)
    add("kid_not_in_jwks", ["error", "key"], "Signed by a key the JWKS does not publish.", ["CHARGE-06", "CORE-BUY-04"],
        jws(M, receipt_header(M), RECEIPT_CLAIMS), bad)
    add("alg_none", ["error", "alg"], "Unsigned, alg none.", ["CORE-BUY-04"],
        jws(None, receipt_header(alg="none"), RECEIPT_CLAIMS), bad)
    h_hs = receipt_header(alg="HS256")
    hs_input = f"{b64url(compact(h_hs))}.{b64url(compact(RECEIPT_CLAIMS))}".encode("ascii")
    add("alg_hs256_public_key_as_secret", ["error", "alg"], "HS256 with the seller's public key as the HMAC secret.",
        ["CORE-BUY-04"], jws(None, h_hs, RECEIPT_CLAIMS, signature=b64url(hmac.new(raw_public(S), hs_input,
                                                                                     hashlib.sha256).digest())), bad)
    add("other_issuer", ["error", "binding"], "iss names another realm.", ["CORE-BUY-04"],
        jws(S, receipt_header(), RECEIPT_CLAIMS | {"iss": "shop.example.org"}), bad)
    add("other_challenge", ["error", "binding"], "A genuine receipt for another challenge than the one paid.",
        ["CORE-BUY-04", "CHARGE-07"], good, bad, challenge_id=CH1["id"])
    add("reference_missing", ["error", "claims"], "No reference claim.", ["CHARGE-07", "CORE-BUY-04"],
        jws(S, receipt_header(), {k: v for k, v in RECEIPT_CLAIMS.items() if k != "reference"}), bad)
    text = compact(RECEIPT_CLAIMS).decode().replace('"amount":"250",', '"amount":"250","amount":"1",')
    add("duplicate_claim", ["error", "json"], "The payload repeats amount (signed as is).", ["CORE-BUY-04"],
        jws(S, receipt_header(), text), bad)
    add("grant_presented_as_receipt", ["error", "confusion"], "A grant of the same seller (no reference claim) presented as a receipt.",
        ["CORE-BUY-04"], jws(S, {"alg": "EdDSA", "typ": "mpp-grant+jwt", "kid": seller_kid(S)}, GRANT_TASK_CLAIMS), bad)
    return S_


# -- quote hash (IDENT-APR-02) -----------------------------------------------------------------


def quote_text(ch: dict[str, str]) -> bytes:
    return b"mpp-quote-v1\n" + jcs({k: ch[k] for k in ("intent", "method", "realm", "request")} | {"challengeId": ch["id"]})


def quote_hash_scenarios() -> list[dict[str, Any]]:
    S_: list[dict[str, Any]] = []

    def add(name: str, tags: list[str], description: str, ch: dict[str, str], expected: dict[str, Any],
            candidate: str | None = None) -> None:
        inp: dict[str, Any] = {"challenge": ch}
        if candidate is not None:
            inp["quoteHash"] = candidate
        S_.append(scenario(name, tags, description, ["IDENT-APR-02", "IDENT-APR-05"], inp, expected))

    def valid(ch: dict[str, str]) -> dict[str, Any]:
        text = quote_text(ch)
        return {"valid": True, "quoteText": text.decode("ascii"), "quoteHex": text.hex(),
                "quoteHash": b64url(hashlib.sha256(text).digest())}

    add("charge_challenge", ["happy-path"], "A charge challenge (the one of approval.json).", CH1, valid(CH1))
    add("ledger_charge_challenge", ["happy-path"], "A ledger charge challenge whose request names the ledger.", LCH, valid(LCH))
    add("session_challenge", ["happy-path"], "A session challenge: intent session.", SCH, valid(SCH))
    described = CH1 | {"description": "ignored", "digest": "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"}
    add("description_and_digest_not_hashed", ["happy-path"], "description and digest take no part: the hash of CH1.",
        described, valid(CH1) | {"quoteText": quote_text(described).decode("ascii")})
    wrong = err("approval-invalid")
    add("hash_without_domain", ["error", "domain"], "A candidate hashed without the mpp-quote-v1 line.", CH1, wrong,
        b64url(hashlib.sha256(quote_text(CH1)[len(b"mpp-quote-v1\n"):]).digest()))
    decoded = json.loads(b64url_decode(CH1["request"]))
    add("hash_of_decoded_request", ["error", "encoding"], "A candidate over the decoded request object, not the wire text.",
        CH1, wrong, b64url(hashlib.sha256(b"mpp-quote-v1\n" + canonical(
            {k: CH1[k] for k in ("intent", "method", "realm")} | {"challengeId": CH1["id"], "request": decoded})).digest()))
    add("hash_padded", ["error", "encoding"], "The right hash in base64url with padding.", CH1, wrong,
        valid(CH1)["quoteHash"] + "=")
    add("hash_hex", ["error", "encoding"], "The right digest in hex.", CH1, wrong, hashlib.sha256(quote_text(CH1)).hexdigest())
    add("hash_of_another_challenge", ["error", "binding"], "The hash of another challenge of the same route and amount.",
        CH1, wrong, valid(CH2)["quoteHash"])
    return S_


# -- revocations (IDENT-REV-01, IDENT-REV-05) --------------------------------------------------

REVOCATION_TYP = "mpp-revocation+jwt"


def revocation(key: SigningKey, target_claims: dict[str, Any], *, name: str, **changes: Any) -> str:
    c = {"iss": key.did, "jti": jti("rev", name), "iat": NOW, "exp": target_claims["exp"] + 1,
         "mandate": target_claims["jti"], "mandateIssuer": target_claims["iss"]} | changes
    c = {k: v for k, v in c.items() if v is not None}
    return jws(key, header(REVOCATION_TYP, c["iss"]), c)


def revocation_scenarios() -> list[dict[str, Any]]:
    S_: list[dict[str, Any]] = []
    bad = err("mandate-invalid")
    root_token, sub_token = root(), mandate(A, claims(SUB_CLAIMS))
    rc, sc = claims(ROOT_CLAIMS), claims(SUB_CLAIMS)

    def add(name: str, tags: list[str], description: str, reqs: list[str], mandate_token: str, token: str,
            expected: dict[str, Any]) -> None:
        S_.append(scenario(name, tags, description, reqs, {"mandate": mandate_token, "revocation": token}, expected))

    def valid(c: dict[str, Any], revoker: SigningKey) -> dict[str, Any]:
        return {"valid": True, "mandateKey": f"{c['iss']}#{c['jti']}", "revoker": revoker.did}

    add("principal_revokes_root", ["happy-path"], "The root's issuer (the principal) revokes it.",
        ["IDENT-REV-01", "IDENT-REV-05"], root_token, revocation(P, rc, name="root"), valid(rc, P))
    add("issuer_revokes_sub_mandate", ["happy-path", "delegation"], "The agent revokes the sub-mandate it issued.",
        ["IDENT-REV-01", "IDENT-REV-05"], sub_token, revocation(A, sc, name="sub"), valid(sc, A))
    add("principal_revokes_sub_mandate", ["happy-path", "delegation"], "The root principal (prn) revokes a link it did "
        "not issue.", ["IDENT-REV-01"], sub_token, revocation(P, sc, name="subbyprn"), valid(sc, P))
    add("revocation_of_expired_mandate", ["happy-path", "time"], "A revocation is accepted whatever the times of "
        "the mandate and of the revocation itself.", ["IDENT-REV-05"], root_token,
        revocation(P, rc, name="late", iat=NOW + 90 * DAY, exp=NOW - DAY), valid(rc, P))

    add("stranger_revokes", ["error", "signer"], "Someone who is neither iss nor prn of the link.", ["IDENT-REV-01"],
        root_token, revocation(M, rc, name="stranger"), bad)
    add("subject_revokes_root", ["error", "signer"], "The root's subject (the agent) tries to revoke its own mandate.",
        ["IDENT-REV-01"], root_token, revocation(A, rc, name="subject"), bad)
    add("sub_agent_revokes_its_mandate", ["error", "signer", "delegation"], "The sub-mandate's subject revokes it.",
        ["IDENT-REV-01"], sub_token, revocation(B, sc, name="subagent"), bad)
    add("names_another_jti", ["error", "binding"], "The revocation names the sub-mandate's jti, checked against the root.",
        ["IDENT-REV-01", "IDENT-REV-05"], root_token, revocation(P, rc, name="otherjti", mandate=SUB_JTI), bad)
    add("jti_reused_by_another_issuer", ["error", "binding"],
        "The stranger issued its own mandate under the root's jti and revokes 'that' jti: mandateIssuer is not the "
        "root's issuer.", ["IDENT-REV-01"], root_token, revocation(M, rc, name="reuse", mandateIssuer=M.did), bad)
    add("mandate_issuer_missing", ["error", "claims"], "No mandateIssuer claim.", ["IDENT-REV-05"], root_token,
        revocation(P, rc, name="noissuer", mandateIssuer=None), bad)
    genuine = revocation(P, rc, name="flip")
    add("signature_bit_flipped", ["error", "tamper"], "One bit of the signature flipped.", ["IDENT-REV-05"], root_token,
        genuine.rsplit(".", 1)[0] + "." + flipped(genuine.rsplit(".", 1)[1]), bad)
    add("signed_by_another_key", ["error", "key"], "iss and kid say principal; the stranger's key signed.",
        ["IDENT-REV-05"], root_token, jws(M, header(REVOCATION_TYP, P.did), payload_of(revocation(P, rc, name="forged"))), bad)
    add("tampered_mandate_claim", ["error", "tamper"], "A genuine revocation of the sub-mandate re-encoded to name the "
        "root; signature kept.", ["IDENT-REV-05"], root_token,
        retamper(revocation(P, sc, name="tamper"), mandate=ROOT_JTI, mandateIssuer=P.did), bad)
    add("typ_mandate", ["error", "jws"], "Revocation claims under typ mpp-mandate+jwt.", ["IDENT-REV-05"], root_token,
        jws(P, header(MANDATE_TYP, P.did), payload_of(revocation(P, rc, name="typ"))), bad)
    add("alg_none", ["error", "jws", "alg"], "Unsigned, alg none.", ["IDENT-REV-05"], root_token,
        jws(None, header(REVOCATION_TYP, P.did, alg="none"), payload_of(revocation(P, rc, name="none"))), bad)
    add("kid_not_iss", ["error", "jws"], "kid names the agent, iss the principal.", ["IDENT-REV-05"], root_token,
        jws(P, header(REVOCATION_TYP, P.did, kid=A.did), payload_of(revocation(P, rc, name="kid"))), bad)
    add("mandate_presented_as_revocation", ["error", "confusion"], "The root mandate itself given as the revocation.",
        ["IDENT-REV-05"], root_token, root_token, bad)
    return S_


# -- the audit log (IDENT-AUD-02, IDENT-AUD-04, IDENT-AUD-05) ---------------------------------

AUDIT_DATA: list[tuple[str, str, dict[str, Any]]] = [
    ("2026-11-01T00:00:00.000000Z", "quote-seen",
     {"challengeId": CH1["id"], "amount": "250", "currency": "usd", "realm": REALM, "resource": "GET /v1/search?q=mpp"}),
    ("2026-11-01T00:00:00.250000Z", "policy-decision",
     {"challengeId": CH1["id"], "agent": A.did, "principal": P.did, "mandate": ROOT_JTI, "decision": "allow",
      "reason": "within mandate"}),
    ("2026-11-01T00:00:00.500000Z", "authorization-signed",
     {"challengeId": CH1["id"], "agent": A.did, "principal": P.did, "mandate": ROOT_JTI, "amount": "250",
      "currency": "usd"}),
    ("2026-11-01T00:00:01.000000Z", "receipt",
     {"challengeId": CH1["id"], "agent": A.did, "principal": P.did, "amount": "250", "currency": "usd",
      "reference": "tr_1", "resource": "GET /v1/search?q=caf\u00e9"}),
    ("2026-11-01T00:00:02.000000Z", "refusal",
     {"challengeId": CH2["id"], "agent": A.did, "type": "urn:mpp:problem:budget-exceeded", "detail": "month budget \u2265 20000"}),
]


def audit_entries(data: list[tuple[str, str, dict[str, Any]]] = AUDIT_DATA) -> list[dict[str, Any]]:
    entries, prev = [], ""
    for seq, (ts, kind, d) in enumerate(data, start=1):
        digest = hashlib.sha256(canonical({"data": d, "kind": kind, "prev": prev, "seq": seq, "ts": ts})).hexdigest()
        entries.append({"seq": seq, "ts": ts, "kind": kind, "data": d, "prev": prev, "hash": digest})
        prev = digest
    return entries


def audit_scenarios() -> list[dict[str, Any]]:
    S_: list[dict[str, Any]] = []
    log = audit_entries()

    def add(name: str, tags: list[str], description: str, reqs: list[str], entries: list[dict[str, Any]],
            head: dict[str, Any] | None, expected: dict[str, Any], anchor: dict[str, Any] | None = None) -> None:
        inp: dict[str, Any] = {"entries": entries, "head": head}
        if anchor is not None:
            inp["anchor"] = anchor
        S_.append(scenario(name, tags, description, reqs, inp, expected))

    def head_of(entries: list[dict[str, Any]]) -> dict[str, Any]:
        return {"seq": entries[-1]["seq"], "hash": entries[-1]["hash"]}

    def broken(seq: int) -> dict[str, Any]:
        return {"error": "audit-chain-broken", "seq": seq}

    hash_inputs = [canonical({k: e[k] for k in ("data", "kind", "prev", "seq", "ts")}).decode("utf-8") for e in log]
    add("buyer_log", ["happy-path"], "Five entries of a buyer's log: each hash over the JCS of the other five members, "
        "each prev the hash before it, and the head.", ["IDENT-AUD-02", "IDENT-AUD-04", "IDENT-AUD-05"], log, head_of(log),
        {"valid": True, "hashInputs": hash_inputs, "hashes": [e["hash"] for e in log], "head": head_of(log)})
    add("anchored_prefix", ["happy-path", "anchor"], "A head recorded earlier (entry 3), abbreviated to 16 hex digits.",
        ["IDENT-AUD-05"], log, head_of(log), {"valid": True, "hashInputs": hash_inputs, "hashes": [e["hash"] for e in log],
                                              "head": head_of(log)}, anchor={"seq": 3, "hash": log[2]["hash"][:16]})
    add("empty_log", ["happy-path"], "No entries and no head.", ["IDENT-AUD-04"], [], None,
        {"valid": True, "hashInputs": [], "hashes": [], "head": None})

    edited = [dict(e) for e in log]
    edited[1] = edited[1] | {"data": edited[1]["data"] | {"decision": "deny"}}
    add("data_edited", ["error", "tamper"], "Entry 2's decision changed, its hash kept.", ["IDENT-AUD-04"], edited,
        head_of(log), broken(2))
    rewritten = audit_entries(AUDIT_DATA[:1] + [(AUDIT_DATA[1][0], AUDIT_DATA[1][1], AUDIT_DATA[1][2] | {"decision": "deny"})]
                              + AUDIT_DATA[2:])
    add("rewritten_against_anchor", ["error", "anchor"], "Entry 2 edited and every later hash and the head recomputed: "
        "only a head recorded elsewhere shows it.", ["IDENT-AUD-05"], rewritten, head_of(rewritten), broken(3),
        anchor={"seq": 3, "hash": log[2]["hash"]})
    digit = [dict(e) for e in log]
    digit[2]["hash"] = ("1" if digit[2]["hash"][0] == "0" else "0") + digit[2]["hash"][1:]
    add("hash_digit_changed", ["error", "tamper"], "One hex digit of entry 3's hash changed.", ["IDENT-AUD-04"], digit,
        head_of(log), broken(3))
    add("entry_deleted", ["error", "delete"], "Entry 3 removed.", ["IDENT-AUD-03", "IDENT-AUD-04"], log[:2] + log[3:],
        head_of(log), broken(4))
    add("truncated", ["error", "delete"], "The last entry removed; the head still records it.", ["IDENT-AUD-05"], log[:4],
        head_of(log), broken(5))
    add("prev_wrong", ["error", "tamper"], "Entry 4's prev replaced (and its hash recomputed over it).",
        ["IDENT-AUD-04"], log[:3] + audit_relinked(log[3], prev="0" * 64) + log[4:], head_of(log), broken(4))
    add("first_prev_not_empty", ["error", "tamper"], "Entry 1 has a non-empty prev (its hash recomputed).",
        ["IDENT-AUD-02"], audit_relinked(log[0], prev="0" * 64) + log[1:], head_of(log), broken(1))
    add("seq_starts_at_zero", ["error", "tamper"], "The first entry's seq is 0.", ["IDENT-AUD-02", "IDENT-AUD-03"],
        audit_relinked(log[0], seq=0), {"seq": 0, "hash": audit_relinked(log[0], seq=0)[0]["hash"]}, broken(0))
    add("unknown_kind", ["error", "tamper"], "Entry 1 of kind \"purchase\" (its hash recomputed).", ["IDENT-AUD-02"],
        audit_relinked(log[0], kind="purchase"), head_of(audit_relinked(log[0], kind="purchase")), broken(1))
    add("head_missing", ["error", "delete"], "Entries but no head.", ["IDENT-AUD-05"], log, None, broken(5))
    return S_


def audit_relinked(entry: dict[str, Any], **changes: Any) -> list[dict[str, Any]]:
    """``entry`` with members changed and its hash recomputed (a one-entry list)."""
    e = entry | changes
    e["hash"] = hashlib.sha256(canonical({k: e[k] for k in ("data", "kind", "prev", "seq", "ts")})).hexdigest()
    return [e]


# -- grants and grant proofs (PRICE-GRANT-01 .. PRICE-GRANT-06) --------------------------------

GRANT_TYP = "mpp-grant+jwt"
GRANT_NONCE = b64url(hashlib.sha256(b"grant proof nonce").digest()[:16])  # 22 characters
TASK_ID = "tsk_7f3a"
GRANT_TASK_CLAIMS: dict[str, Any] = {
    "iss": REALM, "aud": REALM, "sub": A.did, "jti": jti("grt", "task"), "iat": NOW - 60, "exp": NOW + 3540, "kind": "task",
    "routes": [f"GET /v1/reports/{TASK_ID}", f"GET /v1/reports/{TASK_ID}/result"], "priceList": "2026-11-01",
    "challengeId": LCH["id"], "task": TASK_ID}
GRANT_SEAT_CLAIMS: dict[str, Any] = {
    "iss": REALM, "aud": REALM, "sub": A.did, "jti": jti("grt", "seat"), "iat": NOW - 60, "exp": NOW + 30 * DAY,
    "kind": "seat", "routes": ["GET /v1/search", "POST /v1/translate"], "priceList": "2026-11-01", "challengeId": CH2["id"],
    "subscriptionId": "sub_" + b64url(hashlib.sha256(b"mpp-subscription-v1\n" + f"{REALM}\npro\n{A.did}".encode()).digest())[:22],
    "plan": "pro", "period": 0}


def grant(claims_: dict[str, Any], key: SigningKey = S, **header_changes: Any) -> str:
    h = {"alg": "EdDSA", "typ": GRANT_TYP, "kid": seller_kid(S)} | header_changes
    return jws(key, {k: v for k, v in h.items() if v is not None}, claims_)


def grant_proof_bytes(*, agent: str, grant_id: str, resource: str, body: bytes, t: int, nonce: str,
                      domain: bytes = GRANT_PROOF_DOMAIN) -> bytes:
    return domain + canonical({"agent": agent, "bodyHash": b64url(hashlib.sha256(body).digest()), "grant": grant_id,
                               "nonce": nonce, "resource": resource, "t": t})


def grant_scenarios() -> list[dict[str, Any]]:
    S_: list[dict[str, Any]] = []

    def add(name: str, tags: list[str], description: str, reqs: list[str], token: str, request: dict[str, Any],
            expected: dict[str, Any] | None, *, key: SigningKey = A, agent: SigningKey | None = None, t: int = NOW,
            nonce: str = GRANT_NONCE, proof: str | None = None, sign_grant: str | None = None,
            sign_request: dict[str, Any] | None = None, domain: bytes = GRANT_PROOF_DOMAIN, replay: bool = False,
            task: str | None = None) -> None:
        agent = agent or key
        signed_req = sign_request or request
        resource = signed_req["method"] + " " + signed_req["path"] + (f"?{signed_req['query']}" if signed_req["query"] else "")
        message = grant_proof_bytes(agent=agent.did, grant_id=sign_grant or payload_of(token)["jti"], resource=resource,
                                    body=signed_req["body"].encode("utf-8"), t=t, nonce=nonce, domain=domain)
        sig = key.sign(message)
        proof = proof or f"agent={agent.did}; t={t}; nonce={nonce}; sig={sig}"
        inp = {"grant": token, "jwks": jwks(S), "realm": REALM, "now": NOW, "request": request, "proof": proof}
        if task is not None:
            inp["task"] = task
        if replay:
            inp["replay"] = True
        if expected is None:
            expected = {"valid": True, "claims": payload_of(token), "proofText": message.decode("utf-8"),
                        "proofHex": message.hex(), "signature": sig}
        S_.append(scenario(name, tags, description, reqs, inp, expected))

    task, seat = grant(GRANT_TASK_CLAIMS), grant(GRANT_SEAT_CLAIMS)
    status = {"method": "GET", "path": f"/v1/reports/{TASK_ID}", "query": "", "body": ""}
    translate = {"method": "POST", "path": "/v1/translate", "query": "", "body": '{"text":"caf\u00e9","to":"de"}'}
    search = {"method": "GET", "path": "/v1/search", "query": "q=mpp&page=2", "body": ""}
    add("task_follow_up", ["happy-path", "task"], "A task grant presented on its status route, with its proof.",
        ["PRICE-GRANT-01", "PRICE-GRANT-02", "PRICE-GRANT-03"], task, status, None, task=TASK_ID)
    add("seat_post_with_body", ["happy-path", "seat"], "A seat grant on a POST: the proof binds the body's hash.",
        ["PRICE-GRANT-01", "PRICE-GRANT-03"], seat, translate, None)
    add("seat_get_with_query", ["happy-path", "seat"], "A seat grant on a GET with a query: the resource keeps it.",
        ["PRICE-GRANT-03"], seat, search, None)
    add("proof_at_window_edge", ["happy-path", "time"], "t 60 seconds before now is still inside the window.",
        ["PRICE-GRANT-03"], seat, search, None, t=NOW - 60)

    gi, ga, ge = err("grant-invalid"), err("grant-audience"), err("grant-expired")
    add("grant_tampered", ["error", "tamper"], "The seat grant's routes widened after signing.", ["PRICE-GRANT-02"],
        retamper(seat, routes=["GET /v1/search", "POST /v1/translate", "DELETE /v1/account"]), search, gi)
    add("grant_by_another_key", ["error", "key"], "The seller's kid; the stranger's key signed.", ["PRICE-GRANT-02"],
        grant(GRANT_SEAT_CLAIMS, M), search, gi)
    add("grant_alg_none", ["error", "alg"], "alg none.", ["PRICE-GRANT-02"],
        jws(None, {"alg": "none", "typ": GRANT_TYP, "kid": seller_kid(S)}, GRANT_SEAT_CLAIMS), search, gi)
    add("grant_typ_receipt", ["error", "confusion"], "A receipt-typed JWS of the seller presented as a grant.",
        ["PRICE-GRANT-02"], grant(GRANT_SEAT_CLAIMS, typ=RECEIPT_TYP), search, gi)
    add("grant_kid_unknown", ["error", "key"], "Signed by a key the seller does not have.", ["PRICE-GRANT-02"],
        grant(GRANT_SEAT_CLAIMS, M, kid=seller_kid(M)), search, gi)
    add("grant_bad_jti", ["error", "claims"], "jti without the grt_ prefix.", ["PRICE-GRANT-01", "PRICE-GRANT-02"],
        grant(GRANT_SEAT_CLAIMS | {"jti": jti("apr", "seat")}), search, gi)
    add("grant_other_seller", ["error", "audience"], "iss and aud another realm (signed by this seller's key).",
        ["PRICE-GRANT-02"], grant(GRANT_SEAT_CLAIMS | {"iss": "shop.example.org", "aud": "shop.example.org"}), search, ga)
    add("grant_expired", ["error", "time"], "exp equal to now: expired, no leeway.", ["PRICE-GRANT-02"],
        grant(GRANT_SEAT_CLAIMS | {"exp": NOW}), search, ge)
    add("grant_of_another_agent", ["error", "agent"], "The stranger presents the agent's grant with its own valid proof.",
        ["PRICE-GRANT-02"], seat, search, err("grant-agent"), key=M)
    add("grant_other_task", ["error", "task"], "The task grant on another task's status route.", ["PRICE-GRANT-02"], task,
        status | {"path": "/v1/reports/tsk_other"}, err("grant-task"), task="tsk_other")
    add("route_not_covered", ["error", "route"], "The seat grant on a route it does not list.", ["PRICE-GRANT-02"], seat,
        {"method": "DELETE", "path": "/v1/search", "query": "", "body": ""}, err("grant-route"))

    gp = err("grant-proof-invalid")
    add("proof_body_changed", ["error", "tamper"], "The proof signed one body; the request carries another.",
        ["PRICE-GRANT-03"], seat, translate | {"body": '{"text":"tea","to":"de"}'}, gp, sign_request=translate)
    add("proof_query_changed", ["error", "tamper"], "Signed for page=2, sent for page=3.", ["PRICE-GRANT-03"], seat,
        search | {"query": "q=mpp&page=3"}, gp, sign_request=search)
    add("proof_for_another_grant", ["error", "binding"], "A proof made for the task grant sent with the seat grant.",
        ["PRICE-GRANT-03"], seat, search, gp, sign_grant=GRANT_TASK_CLAIMS["jti"])
    add("proof_by_another_key", ["error", "signer"], "agent names the agent; the stranger's key signed.",
        ["PRICE-GRANT-03"], seat, search, gp, key=M, agent=A)
    add("proof_outside_window", ["error", "time"], "t 61 seconds before now.", ["PRICE-GRANT-03"], seat, search, gp,
        t=NOW - 61)
    add("proof_from_the_future", ["error", "time"], "t 61 seconds after now.", ["PRICE-GRANT-03"], seat, search, gp,
        t=NOW + 61)
    add("proof_without_domain", ["error", "domain"], "The JCS object signed without the mpp-grant-proof-v1 line.",
        ["PRICE-GRANT-03", "IDENT-KEY-05"], seat, search, gp, domain=b"")
    good = f"agent={A.did}; t={NOW}; nonce={GRANT_NONCE}; sig=" + A.sign(grant_proof_bytes(
        agent=A.did, grant_id=GRANT_SEAT_CLAIMS["jti"], resource="GET /v1/search?q=mpp&page=2", body=b"", t=NOW,
        nonce=GRANT_NONCE))
    add("proof_sig_bit_flipped", ["error", "tamper"], "One bit of the proof's sig flipped.", ["PRICE-GRANT-03"], seat,
        search, gp, proof=good.rsplit("sig=", 1)[0] + "sig=" + flipped(good.rsplit("sig=", 1)[1]))
    add("proof_nonce_changed", ["error", "tamper"], "The field's nonce is not the one signed.", ["PRICE-GRANT-03"], seat,
        search, gp, proof=good.replace(GRANT_NONCE, GRANT_NONCE[:-1] + ("A" if GRANT_NONCE[-1] != "A" else "B")))
    add("proof_without_nonce", ["error", "parse"], "The proof of before PRICE-GRANT-05 (no nonce).", ["PRICE-GRANT-03"],
        seat, search, gp, proof=good.replace(f"nonce={GRANT_NONCE}; ", ""))
    add("proof_members_reordered", ["error", "parse"], "sig before nonce.", ["PRICE-GRANT-03"], seat, search, gp,
        proof=f"agent={A.did}; t={NOW}; sig={good.rsplit('sig=', 1)[1]}; nonce={GRANT_NONCE}")
    add("proof_replayed", ["error", "replay"], "The same valid proof presented a second time (first accepted).",
        ["PRICE-GRANT-05", "PRICE-GRANT-06"], seat, search, gp, replay=True)
    return S_


# -- files -----------------------------------------------------------------------------------

COMMON = ("Keys (seedHex: the 32-byte Ed25519 private key; RFC 8032 section 7.1 test secret keys, and 00..1f) are given so "
          "that any implementation can re-sign and compare byte for byte. Each scenario's expected is either "
          "{valid: true, ...} or {error: <problem slug>} (type urn:mpp:problem:<slug>, spec/identity.md section 11). "
          "Generated by tools/gen_vectors.py; do not edit by hand.")


def documents() -> dict[str, dict[str, Any]]:
    return {
        "mandate.json": {
            "description": "Mandate chains (spec/identity.md sections 2-3): input.tokens is identity.mandates, root first; verify "
                           "them as a seller of realm input.realm trusting input.trusted, at unix time input.now with "
                           "input.leeway seconds of clock tolerance and a maximum delegation depth of input.max_depth "
                           "(IDENT-DLG-05). A valid chain gives its principal (the root's iss), agent (the leaf's sub) and "
                           "the jti of every link. " + COMMON,
            "source": SOURCE,
            "keys": KEY_TABLE,
            "scenarios": mandate_scenarios(),
        },
        "approval.json": {
            "description": "Approvals (spec/identity.md section 6): verify input.tokens as in mandate.json (every chain here is "
                           "valid), then input.approval against that chain and the challenge input.challenge (its wire "
                           "parameters; the amount and currency are those of its decoded request) at input.now. A valid "
                           "approval gives its jti, iss and rule, and quoteHash is the quote hash of the challenge "
                           "(IDENT-APR-02). " + COMMON,
            "source": SOURCE,
            "keys": KEY_TABLE,
            "scenarios": approval_scenarios(),
        },
        "identity-proof.json": {
            "description": "Proof of possession (spec/identity.md section 5, IDENT-POP-05): for the challenge input.challenge "
                           "(wire parameters) and the leaf mandate jti input.mandate, the proof bytes are proofText "
                           "(hex: proofHex) and the leaf agent input.agent's Ed25519 signature over them is signature "
                           "(base64url). Error scenarios give a signature in input that must not verify for that "
                           "challenge, mandate and agent (proof-invalid). " + COMMON,
            "source": SOURCE,
            "keys": KEY_TABLE,
            "scenarios": proof_scenarios(),
        },
        "ledger-authorization.json": signed_doc(
            "The ledger method's authorization (spec/methods/ledger.md section 3, LEDGER-05 to LEDGER-08): verify "
            "input.payload as a seller whose own account is input.recipient and whose ledger is input.ledger, for the "
            "challenge input.challenge (wire parameters; amount, currency, recipient and methodDetails.ledger from its "
            "decoded request). A valid payload gives the signed bytes (signedText, hex signedHex) and the signature. "
            "A seller answers every error here verification-failed.", ledger_authorization_scenarios()),
        "session-messages.json": signed_doc(
            "The session intent's signed messages (spec/intents/session.md section 3, SESSION-REQ-08): input.message is "
            "cap (open and topUp: input.account, input.cap), voucher (input.cumulative, input.sequence) or close, under "
            "the session terms input.terms, signed by input.signer. A valid scenario gives the bytes and the signature; "
            "an error scenario gives a signature (input.signature) that must not verify (session-voucher-invalid, "
            "SESSION-VOUCHER-05).", session_message_scenarios()),
        "ledger-request.json": signed_doc(
            "MPP-Ledger request signatures (spec/methods/ledger.md section 7.2): the ledger service with ledger id "
            "input.ledger receives input.method, input.target (path and query as sent), input.body (UTF-8 text; empty "
            "for none) and the Authorization field input.authorization. A valid request gives the keyid, the body hash, "
            "the signed bytes and the signature. Errors: parse-error (the field is not of the form of section 7.2) and "
            "signature-invalid; the service answers both 401 Unauthenticated (LEDGER-SVC-01).", ledger_request_scenarios()),
        "receipt-jws.json": signed_doc(
            "Receipt JWS (spec/intents/charge.md section 3, CHARGE-06, CHARGE-07; spec/identity.md section 9; "
            "CORE-BUY-04): a buyer verifies input.token with the seller's JWKS input.jwks, EdDSA only, the key chosen by "
            "kid, iss = input.issuer and challengeId = input.challengeId, at unix time input.now. A valid receipt gives "
            "its protected header, its claims and the JWS signing input; every error is receipt-invalid.",
            receipt_scenarios()),
        "quote-hash.json": signed_doc(
            "Quote hashes (spec/identity.md section 6, IDENT-APR-02): for the challenge input.challenge (wire "
            "parameters), quoteText (hex quoteHex) is what is hashed and quoteHash its base64url SHA-256. An error "
            "scenario gives a candidate input.quoteHash that is not the quote hash: an approval carrying it is refused "
            "approval-invalid (IDENT-APR-05).", quote_hash_scenarios()),
        "revocation.json": signed_doc(
            "Revocations (spec/identity.md section 4, IDENT-REV-01, IDENT-REV-05): the ledger checks input.revocation "
            "against the mandate JWT input.mandate it revokes. A valid revocation gives the mandate's key "
            "(<iss>#<jti>, the key the ledger records it under) and the revoker's DID; every error is mandate-invalid.",
            revocation_scenarios()),
        "audit-log.json": signed_doc(
            "Audit logs (spec/identity.md section 10, IDENT-AUD-02, IDENT-AUD-04, IDENT-AUD-05): verify input.entries "
            "(in the order given) against the head input.head ({seq, hash}, or null for none) and, when given, a head "
            "recorded earlier input.anchor (its hash possibly a prefix of 16 hex digits). A valid log gives every "
            "entry's hash input (the JCS text hashed) and hash, and the head; an error gives audit-chain-broken and seq, "
            "the first entry verification reports.", audit_scenarios()),
        "grant.json": signed_doc(
            "Task and seat grants and their proofs (spec/pricing.md section 5, PRICE-GRANT-01 to PRICE-GRANT-06): a "
            "seller of realm input.realm whose receipt keys are input.jwks receives, at unix time input.now, the request "
            "input.request (method, path, query without '?', body as UTF-8 text) with Payment-Grant input.grant and "
            "Payment-Grant-Proof input.proof; on a task's follow-up route the task id in its path is input.task. It "
            "verifies the grant (the agent named by the proof), then the proof; with input.replay the same request is "
            "presented twice and the second answer is expected. A valid scenario gives the grant's claims, the proof "
            "bytes and the signature; errors are the problem slugs of spec/pricing.md section 9.", grant_scenarios()),
    }


SIGNED_COMMON = ("Keys (seedHex: the 32-byte Ed25519 private key; RFC 8032 section 7.1 test secret keys, 00..1f, and "
                 "the seller's 20..3f) are given so that any implementation can re-sign and compare byte for byte. Each "
                 "scenario's expected is {valid: true, ...} or {error: <label>}, a label of spec/README.md (Vectors). "
                 "Generated by tools/gen_vectors.py; do not edit by hand.")


def signed_doc(description: str, scenarios: list[dict[str, Any]]) -> dict[str, Any]:
    return {"description": description + " " + SIGNED_COMMON, "source": SOURCE, "keys": SIGNED_KEY_TABLE,
            "scenarios": scenarios}


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the files instead of checking them")
    args = parser.parse_args(argv)
    stale = []
    for name, doc in documents().items():
        path = VECTORS / name
        text = render(doc)
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.write:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)} ({len(doc['scenarios'])} scenarios)")
        else:
            stale.append(name)
    if stale:
        print(f"stale vectors: {', '.join(stale)} (run: python tools/gen_vectors.py --write)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
