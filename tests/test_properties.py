"""Property-based tests (hypothesis) of every parser of untrusted input.

For arbitrary text and bytes, and for valid values with a few characters changed, each parser
returns or raises only its own documented error (ParseError, the PaymentProblem it names,
PriceListError), never KeyError, TypeError, UnicodeError, RecursionError or the like; where a
formatter exists, formatting then parsing gives the value back. The budget is the `mpp`
profile of tests/conftest.py (fixed examples, derandomized), so `make test` stays reproducible.
The HTTP properties are in tests/test_properties_http.py.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from functools import cache
from typing import Any

from hypothesis import example, given, strategies as st

import mpp
from mpp import identity as I
from mpp.protocol.wire import MAX_JSON_DEPTH, b64url_decode, b64url_encode, loads_strict
from mpp.protocol.errors import FormatError, ParseError, PaymentProblem
from mpp.protocol.headers import parse_accept_payment
from mpp.ledger.signing import SignedRequest, parse_authorization, sign_request
from mpp.methods.ledger import LedgerBuyerMethod, LedgerSellerMethod
from mpp.pricing import (
    PriceListError,
    PricingProblem,
    issue_grant,
    load_price_list,
    parse_grant_proof,
    sign_grant_proof,
    verify_grant,
)
from mpp.intents.session import parse_session_payload

from _identity_support import REALM, mandate
from test_pricing_seller import PRICES_V1

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
NOW = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)

# -- strategies -------------------------------------------------------------------------------

# JSON values a strict parser accepts back (finite numbers, bounded depth): what formatters emit.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
# What RFC 8785 can canonicalise (request, opaque): integers within the double-precision range.
jcs_objects = st.dictionaries(st.text(max_size=8), st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53 - 1), 2**53 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12), max_size=5)
# Text that exercises the parsers' edges: separators, quotes, escapes, base64url, JSON punctuation.
edgy_chars = st.sampled_from(list(B64URL + ' \t,;="\\{}[]:.=+/%\r\n\x00\x7f') + ["\u00e9", "\ud800", "\U0001f4b8", "\ufeff"])
any_text = st.text(st.one_of(edgy_chars, st.characters()), max_size=300)
b64url_text = st.text(st.sampled_from(B64URL), max_size=400)


@st.composite
def mutated(draw: st.DrawFn, valid: str) -> str:
    """``valid`` with one to four characters replaced, inserted or deleted."""
    chars = list(valid)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("replace", "insert", "delete")))
        i = draw(st.integers(0, max(len(chars) - 1, 0)))
        c = draw(edgy_chars | st.characters())
        if op == "delete" and chars:
            del chars[i]
        elif op == "replace" and chars:
            chars[i] = c
        else:
            chars.insert(i, c)
    return "".join(chars)


@st.composite
def flipped(draw: st.DrawFn, token: str) -> str:
    """A compact JWS with one byte of its decoded header, payload or signature flipped."""
    parts = token.split(".")
    k = draw(st.integers(0, 2))
    raw = bytearray(b64url_decode(parts[k]))
    i = draw(st.integers(0, len(raw) - 1))
    raw[i] ^= draw(st.integers(1, 255))
    parts[k] = b64url_encode(bytes(raw))
    return ".".join(parts)


def json_text_of(value: Any) -> st.SearchStrategy[str]:
    return st.just(json.dumps(value, separators=(",", ":")))


# -- fixed valid values to mutate --------------------------------------------------------------

ISSUER = mpp.ChallengeIssuer(b"s" * 32, REALM)
CORE = mpp.SellerCore(ISSUER, {"ledger": LedgerSellerMethod(recipient="acct:seller", ledger_id="ledger-1")})


@cache
def valid() -> dict[str, Any]:
    """One of each wire value, built once (keys are random; nothing below depends on which)."""
    agent, principal, seller = mpp.SigningKey.generate(), mpp.SigningKey.generate(), mpp.SigningKey.generate()
    challenge = CORE.challenges(mpp.Price(25, "usd", "a thing"), mpp.RequestInfo("GET", "/thing"), NOW)[0]
    request = mpp.ChargeRequest.from_challenge(challenge)
    token = mandate(principal, agent)
    chain = I.verify_chain([token], trusted_principals={principal.did}, realm=REALM, now=datetime.now(timezone.utc))
    identity = {"identity": I.identity_member([token], agent, challenge, request)}
    credential = mpp.sign_quote(mpp.Quote(challenge, request, LedgerBuyerMethod(key=agent, account="acct:buyer")), identity)
    approval = I.issue_approval(principal, agent=agent.did, challenge_id=challenge.id, quote=I.quote_hash(challenge),
                                amount="25", currency="usd", rule="threshold", mandate=chain.leaf.jti, now=NOW)
    receipt = mpp.PaymentReceipt(status="success", method="ledger", timestamp="2026-06-01T12:00:00Z", reference="r1",
                                 challengeId=challenge.id, receipt="a.b.c")
    grant = issue_grant(seller, {"iss": "api.test", "aud": "api.test", "sub": agent.did, "jti": "grt_" + "A" * 22,
                                 "kind": "task", "iat": int(NOW.timestamp()), "exp": int(NOW.timestamp()) + 3600,
                                 "routes": ["GET /jobs/t1"], "priceList": "v1", "challengeId": challenge.id, "task": "t1"})
    proof = sign_grant_proof(agent, grant_id="grt_" + "A" * 22, method="GET", path="/jobs/t1", now=NOW)
    ledger_auth = sign_request(seller, ledger_id="ledger-1", method="POST", target="/v1/transfers", body=b"{}", now=0)
    return {"agent": agent, "principal": principal, "seller": seller, "challenge": challenge, "request": request,
            "www": mpp.format_challenge(challenge), "credential": credential, "mandate": token, "chain": chain,
            "approval": approval, "receipt": mpp.format_receipt(receipt), "grant": grant, "proof": proof,
            "ledger_auth": ledger_auth}


# -- the strict loader ---------------------------------------------------------------------------


@given(st.binary(max_size=300) | any_text.map(lambda t: t.encode("utf-8", "surrogatepass")) | any_text)
@example("[" * 100_000)
@example('{"a":1,"a":2}')
@example("1e400")
def test_strict_loader_raises_only_parse_error(data):
    """CORE-CRED-07: any bytes or text: a value, or ParseError."""
    try:
        loads_strict(data, "document")
    except ParseError:
        pass


@given(json_values)
def test_strict_loader_round_trips_what_json_writes(value):
    """CORE-CRED-07: what json.dumps writes of a finite value is read back as that value (up to the depth bound)."""
    text = json.dumps(value)
    assert loads_strict(text, "document") == json.loads(text)


@given(st.integers(1, 3 * MAX_JSON_DEPTH))
def test_strict_loader_depth_bound_is_exact(depth):
    """CORE-CRED-07: nesting up to the bound is taken, one more level is refused."""
    text = '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)
    if depth <= MAX_JSON_DEPTH:
        assert loads_strict(text, "document") == json.loads(text)
    else:
        try:
            loads_strict(text, "document")
            raise AssertionError("accepted")
        except ParseError:
            pass


# -- WWW-Authenticate: Payment ---------------------------------------------------------------


def _parse_challenges_or_parse_error(value: str) -> None:
    for skip in (False, True):
        try:
            found = mpp.parse_challenges(value, skip_invalid=skip)
        except ParseError:
            continue
        for c in found:  # what the buyer reads next from a parsed challenge
            for lazy in ("request_json", "opaque_json", "expires_at"):
                try:
                    getattr(c, lazy)
                except ParseError:
                    pass


@given(any_text)
@example('Payment id="a", realm="r", method="m", intent="i", request="e30", request="e30"')
@example("Payment " + "\\" * 5000)
def test_challenge_parser_on_any_text(value):
    """CORE-CHAL-03, CORE-CHAL-10: WWW-Authenticate of any text: challenges or ParseError."""
    _parse_challenges_or_parse_error(value)


@given(st.data())
def test_challenge_parser_on_mutated_challenges(data):
    """CORE-CHAL-03: a valid challenge with characters changed: challenges or ParseError."""
    _parse_challenges_or_parse_error(data.draw(mutated(valid()["www"])))


header_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\x01\x02\x03\x04\x05\x06\x07\x08"
                                    "\n\x0b\x0c\r\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f\x7f"),
                      max_size=40)


@st.composite
def challenges(draw: st.DrawFn) -> mpp.Challenge:
    optional = {name: draw(st.none() | header_text.filter(bool)) for name in ("description", "digest", "expires")}
    opaque = draw(st.none() | jcs_objects.map(mpp.encode_json_b64))
    return mpp.Challenge(id=draw(st.text(st.sampled_from(B64URL), min_size=1, max_size=43)), realm=draw(header_text.filter(bool)),
                         method=draw(st.from_regex(r"[a-z]{1,8}(:[a-z0-9-]{1,8})?", fullmatch=True)),
                         intent=draw(st.from_regex(r"[A-Za-z0-9-]{1,10}", fullmatch=True)),
                         request=mpp.encode_json_b64(draw(jcs_objects)), opaque=opaque,
                         **{k: v for k, v in optional.items() if v is not None})


@given(challenges())
def test_challenge_round_trips(challenge):
    """CORE-CHAL-04: format then parse gives the same challenge."""
    assert mpp.parse_challenges(mpp.format_challenge(challenge)) == [challenge]


# -- Authorization: Payment, and what the seller reads from a credential ------------------------


def _credential_or_parse_error(value: str) -> None:
    try:
        credential = mpp.parse_credential(value)
    except ParseError:
        return
    v = valid()
    for check in (lambda: LedgerSellerMethod(recipient="acct:seller", ledger_id="ledger-1").verify(credential, v["request"]),
                  lambda: parse_session_payload(credential.payload),
                  lambda: I.verify_identity(credential, v["request"], payment_signer=credential.source,
                                            trusted_principals={v["principal"].did}, realm=REALM, now=NOW)):
        try:
            check()
        except PaymentProblem:
            pass


@given(any_text | b64url_text.map(lambda t: "Payment " + t))
@example("Payment " + b64url_encode(b'{"challenge":{},"payload":{},"payload":{}}'))
def test_credential_parser_on_any_text(value):
    """CORE-CRED-01, CORE-CRED-02, CORE-CRED-07: Authorization of any text: a credential or ParseError."""
    _credential_or_parse_error(value)


@given(json_values | json_objects)
def test_credential_parser_on_any_json(doc):
    """CORE-CRED-02: any JSON document as the credential: a credential or ParseError; and what the
    method, the session intent and the identity extension read from it raises only their problems."""
    _credential_or_parse_error("Payment " + b64url_encode(json.dumps(doc).encode()))


@st.composite
def credential_docs(draw: st.DrawFn) -> dict[str, Any]:
    """A real echo with members replaced by arbitrary JSON: what a peer may really send."""
    v = valid()
    doc = json.loads(b64url_decode(v["credential"].split(" ", 1)[1]))
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(("top", "challenge", "payload")))
        holder = doc if target == "top" else doc.setdefault(target, {})
        if not isinstance(holder, dict):
            holder = doc
        key = draw(st.sampled_from(("challenge", "payload", "source", "identity", "id", "request", "opaque", "expires",
                                    "type", "account", "signer", "signature", "action", "sessionId", "mandates", "x")))
        holder[key] = draw(json_values)
    return doc


@given(credential_docs())
def test_credential_parser_on_real_credentials_with_members_replaced(doc):
    """CORE-CRED-02, IDENT-ERR-01: a real credential with members replaced by arbitrary JSON."""
    _credential_or_parse_error("Payment " + b64url_encode(json.dumps(doc).encode()))


@given(st.data())
def test_credential_parser_on_mutated_credentials(data):
    """CORE-CRED-01: a valid credential with characters changed: a credential or ParseError."""
    _credential_or_parse_error(data.draw(mutated(valid()["credential"])))


@given(challenges(), json_objects, st.none() | st.text(max_size=20), st.dictionaries(st.sampled_from(("identity", "x")),
                                                                                  json_values, max_size=2))
def test_credential_round_trips(challenge, payload, source, extensions):
    """CORE-CRED-02: format then parse gives the same credential."""
    credential = mpp.Credential(challenge=challenge, payload=payload, source=source, extensions=extensions)
    assert mpp.parse_credential(mpp.format_credential(credential)) == credential


@given(st.sampled_from((float("nan"), float("inf"), float("-inf"))))
def test_credential_formatter_refuses_what_the_parser_would_refuse(number):
    """CORE-CRED-07: a payload holding NaN or an infinity is not put on the wire (FormatError)."""
    credential = mpp.Credential(challenge=valid()["challenge"], payload={"n": number})
    try:
        mpp.format_credential(credential)
        raise AssertionError("formatted")
    except FormatError:
        pass


# -- Payment-Receipt ------------------------------------------------------------------------------


def _receipt_or_parse_error(value: str) -> None:
    try:
        mpp.parse_receipt(value)
    except ParseError:
        pass


@given(any_text | b64url_text | json_values.map(lambda v: b64url_encode(json.dumps(v).encode())))
def test_receipt_parser_on_any_text(value):
    """CORE-RCPT-04: Payment-Receipt of any text: a receipt or ParseError."""
    _receipt_or_parse_error(value)


@given(st.data())
def test_receipt_parser_on_mutated_receipts(data):
    """CORE-RCPT-04: a valid receipt with characters changed: a receipt or ParseError."""
    _receipt_or_parse_error(data.draw(mutated(valid()["receipt"])))


@given(st.fixed_dictionaries({"status": st.just("success"), "method": st.text(min_size=1, max_size=10),
                              "timestamp": st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 1, 1),
                                                        timezones=st.just(timezone.utc)).map(mpp.format_rfc3339),
                              "reference": st.text(min_size=1, max_size=20)},
                             optional={"challengeId": st.text(max_size=20), "receipt": st.text(max_size=20),
                                       "x": json_values}))
def test_receipt_round_trips(doc):
    """CORE-RCPT-04: format then parse gives the same receipt (unknown members kept)."""
    receipt = mpp.PaymentReceipt.from_json(doc)
    assert mpp.parse_receipt(mpp.format_receipt(receipt)) == receipt


# -- Accept-Payment ---------------------------------------------------------------------------


@given(any_text)
def test_accept_payment_parser_never_raises(value):
    """CORE-NEG-01: a malformed Accept-Payment is ignored (None), never an error."""
    ranges = parse_accept_payment(value)
    assert ranges is None or all(0 <= r.q <= 1 for r in ranges)


# -- Payment-Grant and Payment-Grant-Proof -----------------------------------------------------


def _grant_or_problem(token: str) -> None:
    v = valid()
    for keys in ([v["seller"]], mpp.jwks_document([v["seller"]])):
        try:
            verify_grant(token, keys, realm="api.test", agent=v["agent"].did, now=NOW, task_id="t1", route=("GET", "/jobs/t1"))
        except PricingProblem:
            pass


@given(any_text | st.tuples(b64url_text, b64url_text, b64url_text).map(".".join))
@example(b64url_encode(b'{"alg":"EdDSA","typ":"mpp-grant+jwt","kid":[]}') + ".e30." + "A" * 86)
def test_grant_verifier_on_any_text(token):
    """PRICE-GRANT-02: Payment-Grant of any text: a grant or grant-invalid (or another grant problem)."""
    _grant_or_problem(token)


@given(st.data())
def test_grant_verifier_on_mutated_and_flipped_grants(data):
    """PRICE-GRANT-02: a valid grant with characters changed or a byte flipped."""
    token = valid()["grant"]
    _grant_or_problem(data.draw(mutated(token) | flipped(token)))


@given(st.data())
def test_grant_verifier_on_signed_grants_with_claims_replaced(data):
    """PRICE-GRANT-02: a grant signed by the seller's own key but with arbitrary claim values (or
    header members): never anything but a grant problem."""
    v = valid()
    head, body, _ = v["grant"].split(".")
    header, claims = json.loads(b64url_decode(head)), json.loads(b64url_decode(body))
    target = data.draw(st.sampled_from((header, claims)))
    target[data.draw(st.sampled_from(sorted(target)) | st.text(max_size=5))] = data.draw(json_values)
    _grant_or_problem(_signed(v["seller"], header, claims))


@given(any_text)
def test_grant_proof_parser_on_any_text(value):
    """PRICE-GRANT-03: Payment-Grant-Proof of any text: a proof or its problem."""
    try:
        parse_grant_proof(value)
    except PricingProblem:
        pass


@given(st.data())
def test_grant_proof_round_trips(data):
    """PRICE-GRANT-03: a proof's header parses back to the same proof."""
    v = valid()
    when = data.draw(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 1, 1), timezones=st.just(timezone.utc)))
    header = sign_grant_proof(v["agent"], grant_id="grt_" + "A" * 22, method="GET", path="/jobs/t1", now=when)
    proof = parse_grant_proof(header)
    assert proof.header() == header and (proof.agent, proof.t) == (v["agent"].did, int(when.timestamp()))


# -- mandates and approvals (JWS) -------------------------------------------------------------


def _signed(key: mpp.SigningKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    head = b64url_encode(json.dumps(header).encode())
    body = b64url_encode(json.dumps(claims).encode())
    return f"{head}.{body}.{key.sign(f'{head}.{body}'.encode('ascii'))}"


def _mandate_or_problem(token: str) -> None:
    v = valid()
    for check in (lambda: I.decode_mandate(token, now=NOW),
                  lambda: I.verify_chain([token], trusted_principals={v["principal"].did}, realm=REALM, now=NOW),
                  lambda: I.verify_chain([v["mandate"], token], trusted_principals={v["principal"].did}, realm=REALM, now=NOW)):
        try:
            check()
        except I.IdentityProblem:
            pass


def _approval_or_problem(token: str) -> None:
    v = valid()
    try:
        I.verify_approval(token, chain=v["chain"], challenge=v["challenge"], request=v["request"], now=NOW)
    except I.IdentityProblem:
        pass


@given(any_text | st.tuples(b64url_text, b64url_text, b64url_text).map(".".join))
def test_mandate_and_approval_verifiers_on_any_text(token):
    """IDENT-MDT-03, IDENT-APR-03: any text as a mandate or an approval: verified or its problem."""
    _mandate_or_problem(token)
    _approval_or_problem(token)


@given(st.data())
def test_mandate_and_approval_verifiers_on_mutated_and_flipped_tokens(data):
    """IDENT-MDT-03, IDENT-APR-03: valid tokens with characters changed or a byte flipped."""
    v = valid()
    _mandate_or_problem(data.draw(mutated(v["mandate"]) | flipped(v["mandate"])))
    _approval_or_problem(data.draw(mutated(v["approval"]) | flipped(v["approval"])))


@given(st.data())
def test_mandate_and_approval_verifiers_on_signed_tokens_with_claims_replaced(data):
    """IDENT-MDT-03, IDENT-APR-03: tokens signed by their issuer's key, with arbitrary claim values
    or header members: the claim checks raise only identity problems."""
    v = valid()
    for token, verify in ((v["mandate"], _mandate_or_problem), (v["approval"], _approval_or_problem)):
        head, body, _ = token.split(".")
        header, claims = json.loads(b64url_decode(head)), json.loads(b64url_decode(body))
        target = data.draw(st.sampled_from((header, claims)))
        target[data.draw(st.sampled_from(sorted(target)) | st.text(max_size=5))] = data.draw(json_values)
        verify(_signed(v["principal"], header, claims))


# -- price-list TOML -------------------------------------------------------------------------


def _price_list_or_error(text: str) -> None:
    try:
        load_price_list(text, source="prices.toml")
    except PriceListError as exc:
        assert str(exc).startswith("prices.toml:") and exc.line >= 1, str(exc)


@given(any_text)
def test_price_list_loader_on_any_text(text):
    """PRICE-LIST-01, PRICE-LIST-03: any text as a price list: a list or PriceListError naming prices.toml:LINE."""
    _price_list_or_error(text)


@given(st.data())
def test_price_list_loader_on_mutated_lists(data):
    """PRICE-LIST-01, PRICE-LIST-03: a valid price list with characters changed."""
    _price_list_or_error(data.draw(mutated(PRICES_V1)))


@st.composite
def price_list_lines_replaced(draw: st.DrawFn) -> str:
    """A valid list with one `key = value` line given another TOML value (of any type)."""
    lines = PRICES_V1.splitlines()
    keyed = [i for i, line in enumerate(lines) if "=" in line]
    i = draw(st.sampled_from(keyed))
    key = lines[i].split("=", 1)[0]
    value = draw(st.one_of(st.integers(-(2**70), 2**70).map(str), st.floats().map(lambda f: repr(f).replace("inf", "inf")),
                           st.text(max_size=10).map(json.dumps), st.booleans().map(lambda b: str(b).lower()),
                           st.just("[]"), st.just("{}"), st.just("[1, \"a\"]"), st.just("1979-05-27T07:32:00Z"),
                           st.just("{ a = 1 }")))
    lines[i] = f"{key}= {value}"
    return "\n".join(lines) + "\n"


@given(price_list_lines_replaced())
def test_price_list_loader_on_values_of_any_type(text):
    """PRICE-LIST-03: a valid list with one value replaced by a TOML value of any type."""
    _price_list_or_error(text)


# -- signed ledger-service requests ----------------------------------------------------------


def _ledger_authorization_or_parse_error(value: str) -> None:
    try:
        parse_authorization(value)
    except ParseError:
        pass


@given(any_text)
def test_ledger_authorization_parser_on_any_text(value):
    """LEDGER-SVC-02: any Authorization value at the ledger service: parsed or ParseError."""
    _ledger_authorization_or_parse_error(value)


@given(st.data())
def test_ledger_authorization_parser_on_mutated_values(data):
    """LEDGER-SVC-02: a valid signed-request header with characters changed: parsed or ParseError."""
    _ledger_authorization_or_parse_error(data.draw(mutated(valid()["ledger_auth"])))


@given(st.integers(0, 10**12 - 1), st.text(st.sampled_from(B64URL), min_size=16, max_size=64))
def test_ledger_authorization_round_trips(ts, nonce):
    """LEDGER-SVC-02: sign_request's header parses back to its key, time, nonce and signature."""
    key = valid()["seller"]
    value = sign_request(key, ledger_id="ledger-1", method="POST", target="/v1/transfers", body=b"{}", now=ts, nonce=nonce)
    parsed = parse_authorization(value)
    assert (parsed.keyid, parsed.ts, parsed.nonce) == (key.did, ts, nonce) and isinstance(parsed, SignedRequest)


# -- what the properties found, as fixed cases -----------------------------------------------


def test_a_grant_whose_times_overflow_a_datetime_is_grant_invalid():
    """PRICE-GRANT-02: a grant signed by the seller's key with exp past year 9999 (what a hostile
    seller can hand its buyer) is grant-invalid; it was an OverflowError out of verify_grant."""
    v = valid()
    head, body, _ = v["grant"].split(".")
    header, claims = json.loads(b64url_decode(head)), json.loads(b64url_decode(body))
    for name, value in (("exp", 2**62), ("iat", 2**62), ("exp", 253402300800)):
        try:
            verify_grant(_signed(v["seller"], header, {**claims, name: value}), [v["seller"]], realm="api.test",
                         agent=v["agent"].did, now=NOW)
            raise AssertionError("verified")
        except PricingProblem as problem:
            assert problem.slug == "grant-invalid", problem


def test_price_lists_with_amounts_past_2_53_load():
    """PRICE-LIST-01: amounts up to 2**63 - 1 are valid (money is integers); loading one raised
    ParseError from the fingerprint's RFC 8785 encoder, which cannot write them."""
    plist = load_price_list(PRICES_V1.replace("amount = 25", f"amount = {2**63 - 1}"), source="prices.toml")
    assert plist.fingerprint != load_price_list(PRICES_V1, source="prices.toml").fingerprint


def test_a_price_list_that_is_not_utf8_names_its_line():
    """PRICE-LIST-03: text read with surrogateescape (bytes that are not UTF-8) is refused as
    prices.toml:LINE, not with a ParseError from deep inside."""
    lines = PRICES_V1.splitlines()
    lines[3] += " # caf\udce9"
    try:
        load_price_list("\n".join(lines), source="prices.toml")
        raise AssertionError("loaded")
    except PriceListError as exc:
        assert str(exc) == "prices.toml:4: not UTF-8 text"


def test_a_receipt_keeps_unknown_members_that_are_null():
    """CORE-RCPT-04: unknown members are ignored, not rewritten: {"x": null} survives a round trip
    (it was dropped with our own unset members)."""
    receipt = mpp.PaymentReceipt.from_json({"status": "success", "method": "m", "timestamp": "2026-01-01T00:00:00Z",
                                            "reference": "r", "x": None})
    assert mpp.parse_receipt(mpp.format_receipt(receipt)).model_extra == {"x": None}
    assert "challengeId" not in receipt.to_json() and "receipt" not in receipt.to_json()
