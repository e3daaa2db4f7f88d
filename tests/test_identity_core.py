"""mpp.identity without a network: chains, patterns, narrowing, periods, hashes, revocation and
the order of the seller's entitlement checks."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timedelta, timezone

import pytest

import mpp
from mpp import identity as I
from mpp.methods.ledger import LedgerSellerMethod

from _identity_support import REALM, claims_of, link_key, mandate

NOW = datetime.now(timezone.utc)
CORE = mpp.SellerCore(mpp.ChallengeIssuer(b"s" * 32, REALM),
                      {"ledger": LedgerSellerMethod(recipient="acct:seller", ledger_id="ledger-1")})


@pytest.fixture(scope="module")
def keys():
    return {name: mpp.SigningKey.generate() for name in "PABCQ"}


def quote_for(amount: int, currency: str = "usd", path: str = "/thing") -> tuple[mpp.Challenge, mpp.ChargeRequest]:
    challenge = CORE.challenges(mpp.Price(amount, currency), mpp.RequestInfo("GET", path), NOW)[0]
    return challenge, mpp.ChargeRequest.from_challenge(challenge)


def verify(tokens, trusted, **kw):
    return I.verify_chain(tokens, trusted_principals=trusted, realm=REALM, now=NOW, **kw)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# -- chains ----------------------------------------------------------------------------


def test_issue_and_verify_chain(keys):
    """IDENT-MDT-01, IDENT-DLG-01: mandate chain. A root and a narrower sub-mandate verify; the chain names principal and agent."""
    P, A, B = keys["P"], keys["A"], keys["B"]
    root = mandate(P, A, max_depth=1)
    sub = mandate(A, B, principal=P.did, scope=["GET /thing"], ceiling=100, budget_amount=1000, max_depth=0)
    chain = verify([root, sub], {P.did})
    assert (chain.principal, chain.agent) == (P.did, B.did)
    assert chain.jtis == (claims_of(root)["jti"], claims_of(sub)["jti"])
    assert chain.tokens == [root, sub]
    assert (chain.root.ceiling, chain.leaf.ceiling, chain.leaf.scope) == (500, 100, ("GET /thing",))
    assert verify([root], {P.did}).agent == A.did
    header = json.loads(base64.urlsafe_b64decode(root.split(".")[0] + "=="))
    assert header == {"alg": "EdDSA", "typ": I.MANDATE_TYP, "kid": P.did}


def test_verify_chain_refusals(keys):
    """IDENT-DLG-01, IDENT-MDT-05, IDENT-MDT-03: mandate chain. Empty chains, untrusted roots, a root whose prn is not its issuer, a
    link signed by someone other than the previous subject, and a token of another typ."""
    P, A, B, C = keys["P"], keys["A"], keys["B"], keys["C"]
    with pytest.raises(I.MandateInvalid):
        verify([], {P.did})
    with pytest.raises(I.MandateUntrusted):
        verify([mandate(P, A)], {C.did})
    with pytest.raises(I.MandateInvalid):
        verify([mandate(P, A, principal=C.did)], {P.did})
    with pytest.raises(I.DelegationInvalid, match="not signed by the previous"):
        verify([mandate(P, A), mandate(C, B, principal=P.did, max_depth=0)], {P.did})
    challenge, request = quote_for(100)
    approval = I.issue_approval(P, agent=A.did, challenge_id=challenge.id, quote=I.quote_hash(challenge), amount="100",
                                currency="usd", rule="threshold", mandate="mdt_x1234567", now=NOW)
    with pytest.raises(I.MandateInvalid, match="typ"):
        verify([approval], {P.did})


def test_verify_chain_size_limits(keys):
    """IDENT-DLG-04, IDENT-POP-04: mandate chain. An oversized token, or a very long chain, is refused before any signature work."""
    P, A = keys["P"], keys["A"]
    token = mandate(P, A)
    with pytest.raises(I.MandateInvalid, match="compact JWS"):
        verify([token + "A" * 17000], {P.did})
    with pytest.raises(I.DelegationTooDeep):
        verify([token] * 1000, {P.did})
    with pytest.raises(I.MandateInvalid):
        verify(token, {P.did})  # a string, not a list


def _resigned(signer: mpp.SigningKey, header: dict, payload: str) -> str:
    """A JWS with exactly this header and raw payload text, validly signed by ``signer``."""
    head = b64url(json.dumps(header).encode())
    body = b64url(payload.encode())
    return f"{head}.{body}.{signer.sign(f'{head}.{body}'.encode())}"


@pytest.mark.parametrize("case", ["kid-not-iss", "crit", "duplicate-claim", "short-signature", "typ", "RS256", "ES256",
                                  "EdDSA-lowercase", "jti-form", "empty-window", "aud-star-and-realm", "non-integer"])
def test_mandate_jws_rules(keys, case):
    """IDENT-MDT-02, IDENT-MDT-03, IDENT-MDT-04, IDENT-MDT-05, IDENT-MDT-07: each header or claim rule on its own,
    with an otherwise valid signature by the principal, is mandate-invalid."""
    P, A = keys["P"], keys["A"]
    claims = claims_of(mandate(P, A))
    header = {"alg": "EdDSA", "typ": I.MANDATE_TYP, "kid": P.did}
    payload = json.dumps(claims)
    if case == "kid-not-iss":
        header["kid"] = A.did
    elif case == "crit":
        header["crit"] = ["exp"]
    elif case == "duplicate-claim":
        payload = payload[:-1] + ', "ceiling": 1000000}'
    elif case == "typ":
        header["typ"] = "JWT"
    elif case in ("RS256", "ES256"):
        header["alg"] = case
    elif case == "EdDSA-lowercase":
        header["alg"] = "eddsa"
    elif case == "jti-form":
        payload = json.dumps({**claims, "jti": "mdt_short"})
    elif case == "empty-window":
        payload = json.dumps({**claims, "nbf": claims["exp"]})
    elif case == "aud-star-and-realm":
        payload = json.dumps({**claims, "aud": ["*", REALM]})
    elif case == "non-integer":
        payload = json.dumps({**claims, "ceiling": 100.0})
    token = _resigned(P, header, payload)
    if case == "short-signature":
        token = token.rsplit(".", 1)[0] + "." + b64url(b"\0" * 63)
    with pytest.raises(I.MandateInvalid):
        verify([token], {P.did})
    assert verify([_resigned(P, {"alg": "EdDSA", "typ": I.MANDATE_TYP, "kid": P.did}, json.dumps(claims))], {P.did})


def test_iat_in_the_future_is_not_yet_valid(keys):
    """IDENT-MDT-06: a link issued in the future (beyond the leeway) is not yet valid, even if nbf has passed."""
    P, A = keys["P"], keys["A"]
    claims = {**claims_of(mandate(P, A)), "iat": int((NOW + timedelta(hours=1)).timestamp())}
    token = _resigned(P, {"alg": "EdDSA", "typ": I.MANDATE_TYP, "kid": P.did}, json.dumps(claims))
    with pytest.raises(I.MandateNotYetValid):
        verify([token], {P.did})


def test_only_the_root_names_approvers_and_jtis_are_unique(keys):
    """IDENT-DLG-03: a sub-mandate with approvers, or one reusing its parent's jti, is delegation-invalid."""
    P, A, B, C = keys["P"], keys["A"], keys["B"], keys["C"]
    root = mandate(P, A, approvers=[C.did])
    with pytest.raises(I.DelegationInvalid, match="approvers"):
        verify([root, mandate(A, B, principal=P.did, max_depth=0, approvers=[A.did])], {P.did})
    with pytest.raises(I.DelegationInvalid, match="jti"):
        verify([root, mandate(A, B, principal=P.did, max_depth=0, jti=claims_of(root)["jti"])], {P.did})


@pytest.mark.parametrize(
    "resource, canonical",
    [
        ("GET /thing", True),
        ("GET /thing?next=//x/../y", True),  # only the path counts
        ("GET /%C3%A9t%C3%A9", True),  # escapes of non-ASCII bytes are fine
        ("GET //thing", False),
        ("GET /a/./thing", False),
        ("GET /a/../pricey", False),
        ("GET /a\\b", False),
        ("GET /%74hing", False),  # %74 = 't'
        ("GET /a%2Fb", False),
        ("GET /a%2fb", False),
        ("GET /a%5Cb", False),
        ("GET /%2e%2e/x", False),
    ],
)
def test_non_canonical_resources(keys, resource, canonical):
    """IDENT-MDT-10: a non-canonical path matches no scope pattern but "*", and every review pattern."""
    assert I.is_canonical_resource(resource) is canonical
    P, A = keys["P"], keys["A"]
    narrow = verify([mandate(P, A, scope=["GET /*"], approval_threshold=None)], {P.did})
    anything = verify([mandate(P, A, scope=["*"], review=["GET /never"], approval_threshold=None)], {P.did})
    challenge, request = quote_for(10)

    def slug(chain):
        try:
            return I.evaluate_policy(chain, challenge, request, resource, spent={}, approval=None).decision
        except I.IdentityProblem as exc:
            return exc.slug

    assert slug(narrow) == ("allow" if canonical else "out-of-scope")
    assert slug(anything) == ("allow" if canonical else "approval-required")


def test_issue_mandate_validates_claims(keys):
    """IDENT-MDT-08, IDENT-MDT-04: mandate claims. Bad patterns and periods are refused when issuing."""
    with pytest.raises(ValueError):
        mandate(keys["P"], keys["A"], scope=["/no-method"])
    with pytest.raises(ValueError):
        mandate(keys["P"], keys["A"], budget_period="year")


# -- patterns --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern, resource, expected",
    [
        ("*", "GET /anything/at/all?x=1", True),
        ("GET /a*", "GET /a", True),
        ("GET /a*", "GET /abc/def", True),
        ("GET /a*", "GET /a?x=1", True),  # '*' runs over '/' and '?'
        ("GET /a", "GET /a?x=1", False),  # the query string is part of the resource
        ("GET /a?x=1", "GET /a?x=1", True),  # '?' is a literal
        ("GET /a?", "GET /ab", False),  # ... not a one-character wildcard
        ("GET /a.b", "GET /aXb", False),  # regex characters are literals
        ("GET /[ab]", "GET /a", False),
        ("GET /a*b", "GET /ab", True),
        ("GET /a*b", "GET /a/x/b", True),
        ("GET /a*b", "GET /a/x/b?c", False),
        ("POST /a*", "GET /a", False),
        ("* /a", "DELETE /a", True),
        ("GET /a", "get /a", False),
    ],
)
def test_scope_matches(pattern, resource, expected):
    """IDENT-MDT-09: scope patterns."""
    assert I.scope_matches(pattern, resource) is expected


@pytest.mark.parametrize(
    "child, parent, expected",
    [
        ("*", "*", True),
        ("GET /a*", "*", True),
        ("*", "GET /*", False),
        ("GET /a*b", "GET /a*", True),  # narrower
        ("GET /a*", "GET /a*b", False),  # 'GET /ac' is in the child, not in the parent
        ("GET /a/b", "GET /a/*", True),
        ("GET /a/*", "GET /a/b", False),
        ("GET /a?x=*", "GET /a*", True),
        ("GET /a*", "GET /a?x=*", False),
        ("GET /a?x=1", "GET /a?x=1", True),
        ("GET /a**", "GET /a*", True),
        ("GET /x", "* /*", True),
        ("* /x", "GET /*", False),
    ],
)
def test_pattern_within(child, parent, expected):
    """IDENT-DLG-02: scope narrowing."""
    assert I.pattern_within(child, parent) is expected


# -- narrowing ------------------------------------------------------------------------------


PARENT = dict(audience=[REALM], review=["GET /pricey"], approval_threshold=200, max_depth=2,
              not_before=NOW - timedelta(minutes=5), expires=NOW + timedelta(days=1))


@pytest.mark.parametrize(
    "override, why",
    [
        ({"principal": "C"}, "prn"),
        ({"currency": "eur"}, "currency"),
        ({"scope": ["GET /thing", "GET /other"]}, "scope"),
        ({"review": []}, "review"),
        ({"ceiling": 501}, "ceiling"),
        ({"budget_amount": 5001}, "budget"),
        ({"budget_period": "day", "budget_amount": 10}, "budget"),
        ({"approval_threshold": None}, "approval threshold"),
        ({"approval_threshold": 201}, "approval threshold"),
        ({"not_before": NOW - timedelta(minutes=6)}, "validity"),
        ({"expires": NOW + timedelta(days=1, seconds=1)}, "validity"),
        ({"audience": [REALM, "other.test"]}, "audience"),
        ({"max_depth": 2}, "max_depth"),
    ],
)
def test_each_narrowing_rule(keys, override, why):
    """IDENT-DLG-02: delegation narrowing. A sub-mandate wider than its parent in one field is refused, naming it."""
    P, A, B = keys["P"], keys["A"], keys["B"]
    root = mandate(P, A, **PARENT)
    child_claims = {**PARENT, "max_depth": 1, "principal": P.did, **override}
    if child_claims["principal"] == "C":
        child_claims["principal"] = keys["C"].did
    sub = mandate(A, B, **child_claims)
    with pytest.raises(I.DelegationInvalid, match=why):
        verify([root, sub], {P.did})
    verify([root, mandate(A, B, **{**PARENT, "max_depth": 1, "principal": P.did})], {P.did})  # the control


def test_narrowing_any_audience_parent(keys):
    """IDENT-DLG-02, IDENT-MDT-07: delegation narrowing. Under a parent for any seller ("*"), a child may name sellers."""
    P, A, B = keys["P"], keys["A"], keys["B"]
    root = mandate(P, A, audience=["*"])
    assert verify([root, mandate(A, B, principal=P.did, audience=[REALM, "x.test"], max_depth=0)], {P.did}).agent == B.did


def test_depth_limits(keys):
    """IDENT-DLG-04: delegation depth. Beyond the root's max_depth, or the verifier's own limit: too deep."""
    P, A, B, C, Q = (keys[k] for k in "PABCQ")
    root = mandate(P, A, max_depth=1)
    ab = mandate(A, B, principal=P.did, max_depth=0)
    with pytest.raises(I.DelegationTooDeep):
        verify([root, ab, mandate(B, C, principal=P.did, max_depth=0)], {P.did})
    with pytest.raises(I.DelegationTooDeep):
        verify([mandate(P, A, max_depth=0), ab], {P.did})
    deep = [mandate(P, A, max_depth=3), mandate(A, B, principal=P.did, max_depth=2),
            mandate(B, C, principal=P.did, max_depth=1), mandate(C, Q, principal=P.did, max_depth=0)]
    assert verify(deep, {P.did}).agent == Q.did
    with pytest.raises(I.DelegationTooDeep):
        verify(deep, {P.did}, max_depth=2)


# -- periods --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "when, period, key",
    [
        ("2026-12-31T23:59:59+00:00", "day", "2026-12-31"),
        ("2026-12-31T23:59:59+00:00", "week", "2026-W53"),
        ("2026-12-31T23:59:59+00:00", "month", "2026-12"),
        ("2026-12-31T23:59:59+00:00", "total", "total"),
        ("2027-01-01T00:00:00+00:00", "day", "2027-01-01"),
        ("2027-01-01T00:00:00+00:00", "week", "2026-W53"),  # ISO week-year, not calendar year
        ("2027-01-03T23:59:59+00:00", "week", "2026-W53"),
        ("2027-01-04T00:00:00+00:00", "week", "2027-W01"),
        ("2027-01-01T00:00:00+00:00", "month", "2027-01"),
        ("2027-01-01T00:00:00+00:00", "total", "total"),
        ("2027-01-01T01:00:00+02:00", "day", "2026-12-31"),  # periods are UTC
        ("2027-01-01T01:00:00+02:00", "month", "2026-12"),
        ("2026-11-26T12:00:00+00:00", "week", "2026-W48"),
    ],
)
def test_period_key(when, period, key):
    """IDENT-MDT-12: budget periods."""
    assert I.period_key(period, datetime.fromisoformat(when)) == key


def test_period_key_unknown():
    """IDENT-MDT-12: budget periods."""
    with pytest.raises(ValueError):
        I.period_key("year", NOW)


# -- hashes ---------------------------------------------------------------------------------


FIXED = mpp.Challenge(id="abc123", realm="api.example", method="ledger", intent="charge",
                      request="eyJhbW91bnQiOiIxMDAiLCJjdXJyZW5jeSI6InVzZCJ9", expires="2026-01-01T00:00:00Z")


def test_request_hash_and_quote_hash_stable():
    """IDENT-APR-02, IDENT-POP-05: quote hash. Both hashes are what the design's formulas give, independently computed."""
    assert I.request_hash(FIXED) == b64url(hashlib.sha256(FIXED.request.encode("ascii")).digest())
    body = {"challengeId": "abc123", "intent": "charge", "method": "ledger", "realm": "api.example", "request": FIXED.request}
    jcs = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert I.quote_hash(FIXED) == b64url(hashlib.sha256(b"mpp-quote-v1\n" + jcs).digest())
    assert I.quote_hash(FIXED) == I.quote_hash(FIXED.model_copy())
    # fields outside the formula (expires, description, ...) do not change it; those inside do
    assert I.quote_hash(FIXED.model_copy(update={"expires": "2027-01-01T00:00:00Z"})) == I.quote_hash(FIXED)
    for name, value in (("id", "abc124"), ("realm", "api.other"), ("method", "other"), ("intent", "session"),
                        ("request", "eyJhbW91bnQiOiIxMDEiLCJjdXJyZW5jeSI6InVzZCJ9")):
        assert I.quote_hash(FIXED.model_copy(update={name: value})) != I.quote_hash(FIXED)


def test_hashes_survive_the_wire():
    """IDENT-APR-02, IDENT-POP-05: quote hash. A challenge formatted into WWW-Authenticate and parsed back hashes the same."""
    challenge, request = quote_for(250)
    (parsed,) = mpp.parse_challenges(mpp.format_challenge(challenge))
    assert I.quote_hash(parsed) == I.quote_hash(challenge)
    assert I.request_hash(parsed) == I.request_hash(challenge)
    leaf = "mdt_" + "A" * 22
    assert I.proof_message(parsed, mpp.ChargeRequest.from_challenge(parsed), leaf) == I.proof_message(challenge, request, leaf)
    assert I.proof_message(challenge, request, leaf).startswith(b"mpp-identity-proof-v1\n")
    assert I.proof_message(challenge, request, leaf) != I.proof_message(challenge, request, "mdt_" + "B" * 22)


# -- revocation --------------------------------------------------------------------------------


def test_verify_revocation(keys):
    """IDENT-REV-01: revocation. The principal or the issuer may revoke; a third party, the subject, a forged
    issuer or a revocation naming another mandate may not."""
    P, A, B, Q = keys["P"], keys["A"], keys["B"], keys["Q"]
    root = mandate(P, A)
    sub = mandate(A, B, principal=P.did, max_depth=0)
    assert I.verify_revocation(I.issue_revocation(P, root, now=NOW), root) == (link_key(root), P.did)
    assert I.verify_revocation(I.issue_revocation(A, sub, now=NOW), sub) == (link_key(sub), A.did)
    assert I.verify_revocation(I.issue_revocation(P, sub, now=NOW), sub)[1] == P.did  # the principal, over a sub-mandate
    with pytest.raises(I.MandateInvalid, match="only the mandate's issuer"):
        I.verify_revocation(I.issue_revocation(Q, root, now=NOW), root)
    with pytest.raises(I.MandateInvalid):
        I.verify_revocation(I.issue_revocation(A, root, now=NOW), root)  # the subject cannot revoke its own mandate
    with pytest.raises(I.MandateInvalid, match="another mandate"):
        I.verify_revocation(I.issue_revocation(P, mandate(P, A), now=NOW), root)
    # claims say iss = P but Q signed them
    genuine = I.issue_revocation(P, root, now=NOW)
    head, body, _ = genuine.split(".")
    forged_sig = Q.sign(f"{head}.{body}".encode())
    with pytest.raises(I.MandateInvalid):
        I.verify_revocation(f"{head}.{body}.{forged_sig}", root)


def test_revocation_of_expired_mandate(keys):
    """IDENT-REV-01: revocation. An expired mandate can still be revoked."""
    P, A = keys["P"], keys["A"]
    old = mandate(P, A, not_before=NOW - timedelta(days=3), expires=NOW - timedelta(days=1))
    assert I.verify_revocation(I.issue_revocation(P, old, now=NOW), old)[0] == link_key(old)


# -- approvals ------------------------------------------------------------------------------------


def test_verify_approval(keys):
    """IDENT-APR-03, IDENT-APR-04, IDENT-APR-05: approvals. The principal or a listed approver; this challenge, quote, amount and agent only."""
    P, A, Q, C = keys["P"], keys["A"], keys["Q"], keys["C"]
    chain = verify([mandate(P, A, approvers=[C.did])], {P.did})
    challenge, request = quote_for(300, path="/pricey")

    def approval(signer, **kw):
        args = dict(agent=A.did, challenge_id=challenge.id, quote=I.quote_hash(challenge), amount="300", currency="usd",
                    rule="threshold", mandate=chain.leaf.jti, now=NOW)
        return I.issue_approval(signer, **{**args, **kw})

    for signer in (P, C):
        assert I.verify_approval(approval(signer), chain=chain, challenge=challenge, request=request, now=NOW).iss == signer.did
    bad = [approval(Q), approval(P, amount="299"), approval(P, agent=Q.did), approval(P, challenge_id="other"),
           approval(P, quote="x" * 43), approval(P, currency="eur"), approval(P, now=NOW - timedelta(hours=1))]
    for token in bad:
        with pytest.raises(I.ApprovalInvalid):
            I.verify_approval(token, chain=chain, challenge=challenge, request=request, now=NOW)


# -- policy order -----------------------------------------------------------------------------------


def test_evaluate_policy_order(keys):
    """IDENT-MDT-11, IDENT-POL-01: policy order. Currency, then scope, then ceiling, then budget, then threshold, then review:
    start with a purchase that breaks every rule and mend one at a time."""
    P, A = keys["P"], keys["A"]
    token = mandate(P, A, scope=["GET /thing", "GET /pricey"], review=["GET /pricey"], ceiling=100, budget_amount=150,
                    approval_threshold=50)
    chain = verify([token], {P.did})
    key = chain.leaf.key

    def outcome(amount, currency, resource, spent):
        challenge, request = quote_for(amount, currency, resource.split(" ", 1)[1])
        try:
            decision = I.evaluate_policy(chain, challenge, request, resource, spent={key: spent}, approval=None)
        except I.IdentityProblem as exc:
            return exc.slug, exc.extensions.get("rule")
        return decision.decision, None

    assert outcome(200, "eur", "GET /other", 100) == ("currency-not-allowed", "currency")
    assert outcome(200, "usd", "GET /other", 100) == ("out-of-scope", "scope")
    assert outcome(200, "usd", "GET /pricey", 100) == ("over-ceiling", "ceiling")
    assert outcome(80, "usd", "GET /pricey", 100) == ("budget-exceeded", "budget")
    assert outcome(80, "usd", "GET /pricey", 0) == ("approval-required", "threshold")
    assert outcome(40, "usd", "GET /pricey", 0) == ("approval-required", "review")
    assert outcome(40, "usd", "GET /thing", 0) == ("allow", None)
    assert outcome(50, "usd", "GET /thing", 100) == ("allow", None)  # at the threshold and to the last unit of budget


def test_evaluate_policy_budget_counts_every_link(keys):
    """IDENT-POL-03, IDENT-BUD-01: policy order. What the root has spent through other agents counts against a sub-agent."""
    P, A, B = keys["P"], keys["A"], keys["B"]
    root = mandate(P, A, budget_amount=1000, approval_threshold=None)
    sub = mandate(A, B, principal=P.did, budget_amount=500, max_depth=0, approval_threshold=None)
    chain = verify([root, sub], {P.did})
    challenge, request = quote_for(100)
    spent = {chain.root.key: 950, chain.leaf.key: 0}
    with pytest.raises(I.BudgetExceeded, match=chain.root.jti):
        I.evaluate_policy(chain, challenge, request, "GET /thing", spent=spent, approval=None)
    spent[chain.root.key] = 900
    assert I.evaluate_policy(chain, challenge, request, "GET /thing", spent=spent, approval=None).decision == "allow"


def test_approval_lets_policy_allow(keys):
    """IDENT-MDT-11, IDENT-POL-03: approvals. With a verified approval the threshold rule gives allow-with-approval."""
    P, A = keys["P"], keys["A"]
    chain = verify([mandate(P, A)], {P.did})
    challenge, request = quote_for(300, path="/pricey")
    token = I.issue_approval(P, agent=A.did, challenge_id=challenge.id, quote=I.quote_hash(challenge), amount="300",
                             currency="usd", rule="threshold", mandate=chain.leaf.jti, now=NOW)
    approval = I.verify_approval(token, chain=chain, challenge=challenge, request=request, now=NOW)
    decision = I.evaluate_policy(chain, challenge, request, "GET /pricey", spent={}, approval=approval)
    assert (decision.decision, decision.approval.jti) == ("allow-with-approval", approval.jti)
