"""Generate the identity extension's vectors: spec/vectors/mandate.json, approval.json, identity-proof.json.

    python tools/gen_identity_vectors.py          # exit 1 and name the files whose content would change
    python tools/gen_identity_vectors.py --write  # (re)write them

The output is byte-stable: every key comes from a fixed 32-byte seed (the secret keys of RFC 8032
section 7.1, plus one more), every time, jti and nonce is a constant, and Ed25519 signatures are
deterministic (RFC 8032). Tokens are encoded here by hand (compact JSON, members in the order of
the spec's tables), never by a JWT library, so that a malformed token is exactly the bytes its
scenario describes and a library upgrade cannot change the files.

Expected results are written from spec/identity.md, not computed with mpp.identity: the library
is what tests/test_identity_vectors.py checks against these files. Only the core's challenge id
(CORE-ID-01, covered by challenge-id.json) is computed with mpp.
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

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from mpp.challenge import compute_challenge_id  # noqa: E402
from mpp.keys import SigningKey  # noqa: E402

VECTORS = ROOT / "spec" / "vectors"
SOURCE = "mpp (this repository): tools/gen_identity_vectors.py; keys from RFC 8032 section 7.1 test secret keys"

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


# -- files -----------------------------------------------------------------------------------

COMMON = ("Keys (seedHex: the 32-byte Ed25519 private key; RFC 8032 section 7.1 test secret keys, and 00..1f) are given so "
          "that any implementation can re-sign and compare byte for byte. Each scenario's expected is either "
          "{valid: true, ...} or {error: <problem slug>} (type urn:mpp:problem:<slug>, spec/identity.md section 11). "
          "Generated by tools/gen_identity_vectors.py; do not edit by hand.")


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
    }


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
        print(f"stale identity vectors: {', '.join(stale)} (run: python tools/gen_identity_vectors.py --write)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
