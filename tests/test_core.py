"""Unit tests of the sans-I/O core: no network, no aiohttp, no sleeping (the clock is a parameter).

Each test's docstring names the requirement ids of spec/ it covers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import jwt
import pytest

import mpp
from mpp.methods.ledger import SIGNING_DOMAIN, LedgerBuyerMethod, LedgerSellerMethod, authorization_message

NOW = datetime(2026, 1, 29, 12, 0, 0, tzinfo=timezone.utc)
SECRET = b"core-test-secret-0123456789abcdef"
OLD_SECRET = b"core-test-old-secret-0123456789ab"
REALM = "api.test"
LEDGER_ID = "ledger-1"
SELLER_ACCOUNT = "acct:seller"
BUYER_ACCOUNT = "acct:buyer"
PRICE = mpp.Price(25, "usd", "one answer")
AGENT = mpp.SigningKey.generate()
SELLER_KEY = mpp.SigningKey.generate()


# -- helpers ------------------------------------------------------------------------------------


class OtherSellerMethod:
    """A second method, enough for negotiation and method-confusion tests."""

    name = "other"

    def request_for(self, *, amount: int, currency: str, description: str | None) -> dict[str, Any]:
        return {"amount": str(amount), "currency": currency, "recipient": "other-recipient"}

    def verify(self, credential: mpp.Credential, request: mpp.ChargeRequest) -> Any:
        return None


def make_core(*, secret: bytes = SECRET, realm: str = REALM, other: bool = False, previous: tuple[bytes, ...] = ()) -> mpp.SellerCore:
    methods: dict[str, Any] = {"ledger": LedgerSellerMethod(recipient=SELLER_ACCOUNT, ledger_id=LEDGER_ID)}
    if other:
        methods["other"] = OtherSellerMethod()
    return mpp.SellerCore(mpp.ChallengeIssuer(secret, realm, previous_secrets=previous), methods)


def buyer(key: mpp.SigningKey = AGENT, account: str = BUYER_ACCOUNT) -> LedgerBuyerMethod:
    return LedgerBuyerMethod(key=key, account=account)


def policy(**overrides: Any) -> mpp.BuyerPolicy:
    return mpp.BuyerPolicy(**{"max_amount": 100, "currencies": frozenset({"usd"}), "recipients": frozenset({SELLER_ACCOUNT}), **overrides})


def paid(core: mpp.SellerCore, info: mpp.RequestInfo, *, now: datetime = NOW) -> tuple[mpp.Quote, str]:
    """Quote the request, let the buyer pick and sign: the Authorization field value."""
    challenges = core.challenges(PRICE, info, now)
    quote = mpp.select_quote(challenges, [buyer()], policy(), now)
    return quote, mpp.sign_quote(quote)


def credential_doc(header: str) -> dict[str, Any]:
    return json.loads(mpp.b64url_decode(header.split(" ", 1)[1]))


def header_of(doc: dict[str, Any]) -> str:
    return "Payment " + mpp.b64url_encode(json.dumps(doc, separators=(",", ":")).encode())


def issue(issuer: mpp.ChallengeIssuer, *, now: datetime = NOW, **overrides: Any) -> mpp.Challenge:
    args: dict[str, Any] = dict(
        method="ledger",
        intent="charge",
        request={"amount": "25", "currency": "usd", "recipient": SELLER_ACCOUNT, "methodDetails": {"ledger": LEDGER_ID}},
        now=now,
        digest=mpp.content_digest(b"body"),
        opaque={"nonce": "n" * 22, "resource": "POST /x"},
        description="thing",
    )
    args.update(overrides)
    return issuer.issue(**args)


GET_X = mpp.RequestInfo("GET", "/x", "q=1")
POST_X = mpp.RequestInfo("POST", "/x", "", b'{"question": 42}')


# -- challenges and ids -------------------------------------------------------------------------


def test_issue_verify_round_trip():
    """CORE-CHAL-02, CORE-CHAL-11, CORE-ID-01, CORE-ID-02, CORE-ID-05, CORE-BIND-05: an issued challenge
    carries every required parameter plus expires and opaque, no header, an id that is the HMAC over
    the wire strings, and verifies at any issuer instance holding the secret."""
    issuer = mpp.ChallengeIssuer(SECRET, REALM)
    challenge = issue(issuer)
    for name in ("id", "realm", "method", "intent", "request", "expires", "opaque"):
        assert getattr(challenge, name)
    assert challenge.header is None
    assert challenge.expires == "2026-01-29T12:05:00Z"  # RFC 3339, UTC, Z, whole seconds, 300 s
    slots = "|".join([REALM, "ledger", "charge", challenge.request, challenge.expires, challenge.digest, challenge.opaque])
    expected = base64.urlsafe_b64encode(hmac.new(SECRET, slots.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    assert challenge.id == expected
    assert challenge.request == mpp.b64url_encode(mpp.canonical_json(challenge.request_json))
    issuer.verify(challenge, now=NOW)
    mpp.ChallengeIssuer(SECRET, REALM).verify(challenge, now=NOW + timedelta(seconds=299))
    # the wire form verifies too: parsing and formatting change nothing that is bound
    (parsed,) = mpp.parse_challenges(mpp.format_challenge(challenge))
    assert parsed == challenge
    issuer.verify(parsed, now=NOW)


def test_expires_is_utc_whole_seconds_even_with_offset_clock():
    """CORE-BIND-05: expires is written in UTC with Z and no fraction, whatever the clock's zone."""
    issuer = mpp.ChallengeIssuer(SECRET, REALM, ttl=timedelta(seconds=90))
    now = datetime(2026, 1, 29, 13, 0, 0, 987654, tzinfo=timezone(timedelta(hours=1)))
    challenge = issue(issuer, now=now)
    assert challenge.expires == "2026-01-29T12:01:30Z"


@pytest.mark.parametrize(
    "field, value",
    [
        ("request", mpp.encode_json_b64({"amount": "1", "currency": "usd", "recipient": SELLER_ACCOUNT, "methodDetails": {"ledger": LEDGER_ID}})),
        ("request", None),  # request re-encoded with other key order: same JSON, other bytes
        ("expires", "2026-01-29T13:05:00Z"),
        ("realm", "evil.test"),
        ("digest", mpp.content_digest(b"other body")),
        ("digest", None),
        ("opaque", mpp.encode_json_b64({"nonce": "n" * 22, "resource": "GET /admin"})),
        ("opaque", None),
        ("method", "other"),
        ("intent", "session"),
        ("header", "Payment-Authorization"),
        ("id", "A" * 43),
    ],
    ids=lambda v: str(v)[:24],
)
def test_tampering_a_bound_field_is_refused(field, value):
    """CORE-ID-01, CORE-ID-02, CORE-BIND-07, CORE-ERR-04: changing any HMAC-bound field (or the id)
    is refused with invalid-challenge; the verifier never re-encodes request."""
    issuer = mpp.ChallengeIssuer(SECRET, REALM)
    challenge = issue(issuer)
    if field == "request" and value is None:
        value = mpp.b64url_encode(json.dumps(challenge.request_json, sort_keys=False, indent=1).encode())
        assert mpp.decode_json_b64(value, "request") == challenge.request_json
    tampered = challenge.model_copy(update={field: value})
    with pytest.raises(mpp.InvalidChallenge):
        issuer.verify(tampered, now=NOW)


def test_description_is_not_bound():
    """CORE-ID-01, CORE-BUY-06: description is not part of the id; changing it changes nothing."""
    issuer = mpp.ChallengeIssuer(SECRET, REALM)
    challenge = issue(issuer)
    issuer.verify(challenge.model_copy(update={"description": "FREE - costs nothing"}), now=NOW)
    issuer.verify(challenge.model_copy(update={"description": None}), now=NOW)


def test_expiry_with_injected_clock():
    """CORE-BIND-06, CORE-ERR-05, CORE-BIND-07: an intact challenge is good until its expires instant,
    then payment-expired; tampering with an expired challenge is invalid-challenge, not expired."""
    issuer = mpp.ChallengeIssuer(SECRET, REALM, ttl=timedelta(seconds=60))
    challenge = issue(issuer)
    issuer.verify(challenge, now=NOW + timedelta(seconds=59))
    with pytest.raises(mpp.PaymentExpired):
        issuer.verify(challenge, now=NOW + timedelta(seconds=60))
    with pytest.raises(mpp.PaymentExpired):
        issuer.verify(challenge, now=NOW + timedelta(days=3))
    extended = challenge.model_copy(update={"expires": "2099-01-01T00:00:00Z"})
    with pytest.raises(mpp.InvalidChallenge):
        issuer.verify(extended, now=NOW + timedelta(days=3))


def test_challenge_without_expires_is_refused():
    """CORE-BIND-06: a challenge with a correct id but no expires is refused (invalid-challenge)."""
    request = mpp.encode_json_b64({"amount": "1"})
    cid = mpp.compute_challenge_id(SECRET, realm=REALM, method="ledger", intent="charge", request=request)
    challenge = mpp.Challenge(id=cid, realm=REALM, method="ledger", intent="charge", request=request)
    with pytest.raises(mpp.InvalidChallenge):
        mpp.ChallengeIssuer(SECRET, REALM).verify(challenge, now=NOW)


def test_secret_rotation():
    """CORE-ID-06, CORE-ID-05: after rotation the previous secret still verifies unexpired challenges;
    an issuer that forgot it refuses them; new challenges use the new secret."""
    old = mpp.ChallengeIssuer(OLD_SECRET, REALM)
    challenge = issue(old)
    rotated = mpp.ChallengeIssuer(SECRET, REALM, previous_secrets=(OLD_SECRET,))
    rotated.verify(challenge, now=NOW)
    with pytest.raises(mpp.PaymentExpired):
        rotated.verify(challenge, now=NOW + timedelta(minutes=5))
    with pytest.raises(mpp.InvalidChallenge):
        mpp.ChallengeIssuer(SECRET, REALM).verify(challenge, now=NOW)
    fresh = issue(rotated)
    with pytest.raises(mpp.InvalidChallenge):
        old.verify(fresh, now=NOW)
    mpp.ChallengeIssuer(SECRET, REALM).verify(fresh, now=NOW)


@pytest.mark.parametrize("length", [0, 16, 31])
def test_short_secrets_are_refused(length):
    """CORE-ID-03: secrets shorter than 32 bytes are refused everywhere a secret enters."""
    short = b"s" * length
    with pytest.raises(ValueError):
        mpp.ChallengeIssuer(short, REALM)
    with pytest.raises(ValueError):
        mpp.ChallengeIssuer(SECRET, REALM, previous_secrets=(short,))
    with pytest.raises(ValueError):
        mpp.compute_challenge_id(short, realm=REALM, method="ledger", intent="charge", request="e30")
    mpp.ChallengeIssuer(b"s" * 32, REALM)  # 32 is enough


def test_secret_never_shown():
    """CORE-ID-07: neither the issuer's nor the core's repr shows the secret."""
    core = make_core(previous=(OLD_SECRET,))
    for text in (repr(core.issuer), str(core.issuer), repr(core)):
        assert SECRET.decode() not in text and OLD_SECRET.decode() not in text


def test_every_challenge_has_a_distinct_id():
    """CORE-BIND-01, CORE-ONCE-01: every challenge SellerCore emits has a distinct id, even for the same
    request in the same second, because opaque carries a fresh nonce of at least 128 bits."""
    core = make_core(other=True)
    seen: set[str] = set()
    for _ in range(100):
        for challenge in core.challenges(PRICE, GET_X, NOW):
            assert challenge.id not in seen
            seen.add(challenge.id)
            opaque = challenge.opaque_json
            assert set(opaque) == {"nonce", "resource"}
            assert opaque["resource"] == "GET /x?q=1"
            assert len(mpp.b64url_decode(opaque["nonce"])) * 8 >= 128
            assert challenge.opaque == mpp.encode_json_b64(opaque)  # JCS
    assert len(seen) == 200


def test_body_binding_in_issued_challenges():
    """CORE-BIND-03: requests with a body, and every POST/PUT/PATCH, get an RFC 9530 sha-256 digest;
    a GET without body gets none."""
    core = make_core()
    (post,) = core.challenges(PRICE, POST_X, NOW)
    assert post.digest == "sha-256=:" + base64.b64encode(hashlib.sha256(POST_X.body).digest()).decode() + ":"
    (empty_put,) = core.challenges(PRICE, mpp.RequestInfo("PUT", "/x"), NOW)
    assert empty_put.digest == "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
    (get,) = core.challenges(PRICE, GET_X, NOW)
    assert get.digest is None


def test_resource_string():
    """CORE-BIND-01: the bound resource is 'METHOD path[?query]' exactly as requested."""
    assert mpp.resource_of("get", "/a/b", "") == "GET /a/b"
    assert mpp.resource_of("POST", "/a", "x=1&y=2") == "POST /a?x=1&y=2"


def test_charge_request_shape():
    """CHARGE-02, LEDGER-04: the ledger/charge request carries amount as an integer decimal string,
    lowercase currency, recipient and methodDetails.ledger; prices outside 1..2^63-1 are refused."""
    (challenge,) = make_core().challenges(PRICE, GET_X, NOW)
    assert challenge.request_json == {"amount": "25", "currency": "usd", "description": "one answer", "recipient": SELLER_ACCOUNT, "methodDetails": {"ledger": LEDGER_ID}}
    for amount in (0, -1, 2**63, True, 1.5):
        with pytest.raises(ValueError):
            mpp.Price(amount, "usd")
    mpp.Price(2**63 - 1, "usd")
    for currency in ("USD", "", "us d", "1usd"):
        with pytest.raises(ValueError):
            mpp.Price(1, currency)
    for amount in ("01", "-1", "1.0", "１", ""):
        with pytest.raises(ValueError):
            mpp.ChargeRequest(amount=amount, currency="usd", recipient="r")


# -- seller verification ------------------------------------------------------------------------


def test_seller_accepts_a_good_credential():
    """LEDGER-06, LEDGER-08, LEDGER-09, CORE-CRED-03: a credential signed by the buyer verifies; the
    proof carries amount, currency and recipient from the bound challenge."""
    core = make_core()
    quote, header = paid(core, POST_X)
    assert mpp.parse_credential(header).challenge == quote.challenge  # echoed unchanged
    verified = core.verify(header, POST_X, NOW)
    assert verified.challenge_id == quote.challenge.id
    assert verified.resource == "POST /x"
    proof = verified.proof
    assert (proof.amount, proof.currency, proof.recipient, proof.account, proof.signer) == (25, "usd", SELLER_ACCOUNT, BUYER_ACCOUNT, AGENT.did)


@pytest.mark.parametrize("garbage", ["", "Payment", "Payment !!!", "Bearer abc", "Payment " + mpp.b64url_encode(b"[1]"), "Payment e30", "Payment e30="])
def test_garbage_is_malformed_credential(garbage):
    """CORE-ERR-03, CORE-CRED-01, CORE-CRED-02: an unparseable credential is malformed-credential."""
    with pytest.raises(mpp.MalformedCredential) as excinfo:
        make_core().verify(garbage, GET_X, NOW)
    assert excinfo.value.status == 402


def test_unknown_method_is_method_unsupported():
    """CORE-ERR-08: a credential naming a method the seller does not accept is 400 method-unsupported."""
    core = make_core()
    _, header = paid(core, GET_X)
    doc = credential_doc(header)
    doc["challenge"]["method"] = "stripe"
    with pytest.raises(mpp.MethodUnsupported) as excinfo:
        core.verify(header_of(doc), GET_X, NOW)
    assert excinfo.value.status == 400


def test_method_swapped_to_another_accepted_method_is_invalid_challenge():
    """CORE-ERR-04, CORE-ID-01: switching the echoed method to another accepted one breaks the id."""
    core = make_core(other=True)
    quote, header = paid(core, GET_X)
    assert quote.challenge.method == "ledger"
    doc = credential_doc(header)
    doc["challenge"]["method"] = "other"
    with pytest.raises(mpp.InvalidChallenge):
        core.verify(header_of(doc), GET_X, NOW)


@pytest.mark.parametrize(
    "other",
    [
        mpp.RequestInfo("GET", "/y", "q=1"),
        mpp.RequestInfo("GET", "/x", "q=2"),
        mpp.RequestInfo("GET", "/x", ""),
        mpp.RequestInfo("HEAD", "/x", "q=1"),
        mpp.RequestInfo("DELETE", "/x", "q=1"),
    ],
    ids=["path", "query", "no-query", "HEAD", "DELETE"],
)
def test_credential_for_another_resource_is_invalid_challenge(other):
    """CORE-BIND-02, CORE-ERR-04: a credential is refused on any other path, query or HTTP method."""
    core = make_core()
    _, header = paid(core, GET_X)
    with pytest.raises(mpp.InvalidChallenge):
        core.verify(header, other, NOW)
    core.verify(header, GET_X, NOW)


def test_credential_for_another_realm_or_intent_is_invalid_challenge():
    """CORE-ERR-04: a challenge from another realm (even with the same secret) or with another intent
    is invalid-challenge."""
    _, header = paid(make_core(realm="other.test"), GET_X)
    with pytest.raises(mpp.InvalidChallenge):
        make_core().verify(header, GET_X, NOW)
    core = make_core()
    _, header = paid(core, GET_X)
    doc = credential_doc(header)
    doc["challenge"]["intent"] = "session"
    with pytest.raises(mpp.InvalidChallenge):
        core.verify(header_of(doc), GET_X, NOW)


def test_credential_from_another_secret_is_invalid_challenge():
    """CORE-ERR-04, CORE-ID-01: a challenge minted with another secret does not verify."""
    _, header = paid(make_core(secret=OLD_SECRET), GET_X)
    with pytest.raises(mpp.InvalidChallenge):
        make_core().verify(header, GET_X, NOW)


def test_expired_credential_is_payment_expired():
    """CORE-ERR-05, CORE-BIND-06: an intact credential presented after expires is payment-expired."""
    core = make_core()
    _, header = paid(core, GET_X)
    with pytest.raises(mpp.PaymentExpired) as excinfo:
        core.verify(header, GET_X, NOW + timedelta(minutes=5))
    assert excinfo.value.status == 402


def test_changed_body_is_verification_failed():
    """CORE-BIND-04, CORE-ERR-06: the body is hashed again; another body is verification-failed."""
    core = make_core()
    _, header = paid(core, POST_X)
    for body in (b'{"question": 43}', b"", POST_X.body + b" "):
        with pytest.raises(mpp.VerificationFailed):
            core.verify(header, mpp.RequestInfo("POST", "/x", "", body), NOW)


def test_body_on_a_challenge_without_digest_is_verification_failed():
    """CORE-BIND-04, CORE-ERR-06: a request with a body but a challenge that bound none is refused."""
    core = make_core()
    quote, header = paid(core, GET_X)
    assert quote.challenge.digest is None
    with pytest.raises(mpp.VerificationFailed):
        core.verify(header, mpp.RequestInfo("GET", "/x", "q=1", b"smuggled"), NOW)


def test_bad_signature_is_verification_failed():
    """LEDGER-08, CORE-ERR-06: a payload signature that does not verify is verification-failed."""
    core = make_core()
    _, header = paid(core, GET_X)
    doc = credential_doc(header)
    signature = bytearray(mpp.b64url_decode(doc["payload"]["signature"]))
    signature[0] ^= 1
    for bad in (mpp.b64url_encode(bytes(signature)), "not base64!", mpp.b64url_encode(b"short"), ""):
        doc["payload"]["signature"] = bad
        with pytest.raises(mpp.VerificationFailed):
            core.verify(header_of(doc), GET_X, NOW)


def test_signature_by_another_key_is_verification_failed():
    """LEDGER-08, LEDGER-10: a signature by key B under signer A fails; signer and source must agree."""
    core = make_core()
    _, header = paid(core, GET_X)
    doc = credential_doc(header)
    mallory = mpp.SigningKey.generate()
    swapped = json.loads(json.dumps(doc))
    swapped["payload"]["signer"] = mallory.did
    swapped["source"] = mallory.did
    with pytest.raises(mpp.VerificationFailed):
        core.verify(header_of(swapped), GET_X, NOW)
    mismatched = json.loads(json.dumps(doc))
    mismatched["source"] = mallory.did
    with pytest.raises(mpp.VerificationFailed):
        core.verify(header_of(mismatched), GET_X, NOW)
    without_source = json.loads(json.dumps(doc))
    del without_source["source"]
    core.verify(header_of(without_source), GET_X, NOW)  # source is optional


def test_changed_account_is_verification_failed():
    """LEDGER-06, LEDGER-08: the payer account is signed; naming another account breaks the signature."""
    core = make_core()
    _, header = paid(core, GET_X)
    doc = credential_doc(header)
    doc["payload"]["account"] = "acct:victim"
    with pytest.raises(mpp.VerificationFailed):
        core.verify(header_of(doc), GET_X, NOW)


@pytest.mark.parametrize(
    "change",
    [
        {"type": None},
        {"type": "transaction"},
        {"account": None},
        {"account": ""},
        {"account": 5},
        {"account": "a" * 129},
        {"signer": None},
        {"signer": "did:web:example.com"},
        {"signer": "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme"},
        {"signer": ["did:key:z"]},
        {"signature": None},
        {"signature": 7},
    ],
    ids=lambda c: "-".join(f"{k}={str(v)[:12]}" for k, v in c.items()),
)
def test_malformed_payload_is_verification_failed(change):
    """LEDGER-05, LEDGER-07, CORE-ERR-06: a payload lacking a member, with a wrong type, or a signer that
    is not an Ed25519 did:key is verification-failed."""
    core = make_core()
    _, header = paid(core, GET_X)
    doc = credential_doc(header)
    for key, value in change.items():
        if value is None:
            doc["payload"].pop(key)
        else:
            doc["payload"][key] = value
    doc.pop("source")
    with pytest.raises(mpp.VerificationFailed):
        core.verify(header_of(doc), GET_X, NOW)


def test_extra_payload_members_are_ignored():
    """LEDGER-05: unknown payload members do not make a good credential fail."""
    core = make_core()
    _, header = paid(core, GET_X)
    doc = credential_doc(header)
    doc["payload"]["future"] = {"x": 1}
    core.verify(header_of(doc), GET_X, NOW)


def test_challenge_for_another_recipient_or_ledger_is_verification_failed():
    """LEDGER-09: a validly minted challenge naming another recipient or ledger than this seller's
    method is refused, even when the buyer signed it."""
    issuer = mpp.ChallengeIssuer(SECRET, REALM)
    for recipient, ledger in (("acct:mallory", LEDGER_ID), (SELLER_ACCOUNT, "ledger-2")):
        foreign = mpp.SellerCore(issuer, {"ledger": LedgerSellerMethod(recipient=recipient, ledger_id=ledger)})
        challenges = foreign.challenges(PRICE, GET_X, NOW)
        quote = mpp.select_quote(challenges, [buyer()], policy(recipients=None), NOW)
        with pytest.raises(mpp.VerificationFailed):
            make_core().verify(mpp.sign_quote(quote), GET_X, NOW)


def test_two_payment_credentials_are_malformed():
    """CORE-CRED-04, CORE-ERR-03: two Payment values in Authorization are malformed-credential; other
    schemes next to one Payment credential are fine."""
    core = make_core()
    _, first = paid(core, GET_X)
    _, second = paid(core, GET_X)
    with pytest.raises(mpp.MalformedCredential):
        mpp.SellerCore.payment_credential(mpp.RequestInfo("GET", "/x", authorization=[first, second]))
    with pytest.raises(mpp.MalformedCredential):
        mpp.SellerCore.payment_credential(mpp.RequestInfo("GET", "/x", authorization=[first, "payment " + first.split(" ", 1)[1]]))
    assert mpp.SellerCore.payment_credential(mpp.RequestInfo("GET", "/x", authorization=["Bearer t", first])) == first
    assert mpp.SellerCore.payment_credential(mpp.RequestInfo("GET", "/x", authorization=["Bearer t"])) is None
    assert mpp.SellerCore.payment_credential(mpp.RequestInfo("GET", "/x")) is None
    # and two credentials squeezed into one field value do not parse
    with pytest.raises(mpp.MalformedCredential):
        core.verify(first + ", " + second, GET_X, NOW)


def test_large_credential_and_challenge_fields():
    """CORE-CRED-05: credentials of 4 KB and more verify; a WWW-Authenticate of 4 KB and more parses."""
    core = make_core()
    _, header = paid(core, GET_X)
    doc = credential_doc(header)
    doc["payload"]["padding"] = "p" * 8000
    big = header_of(doc)
    assert len(big) > 4096
    core.verify(big, GET_X, NOW)
    challenges = core.challenges(mpp.Price(1, "usd", "d" * 5000), GET_X, NOW)
    field = mpp.format_challenge(challenges[0])
    assert len(field) > 4096
    assert mpp.parse_challenges(field) == challenges


def test_undecodable_bytes_in_a_challenge_are_refused():
    """CORE-CHAL-03, CORE-BUY-09: a challenge value holding bytes that were not UTF-8 (surrogate-escaped
    by the HTTP stack) is malformed; with skip_invalid the buyer keeps the other challenges."""
    good = 'Payment id="a", realm="r", method="ledger", intent="charge", request="e30"'
    bad = 'Payment id="b", realm="r", method="ledger", intent="charge", request="e30", description="caf\udce9"'
    with pytest.raises(mpp.ParseError):
        mpp.parse_challenges(bad)
    assert [c.id for c in mpp.parse_challenges([bad, good], skip_invalid=True)] == ["a"]
    assert [c.id for c in mpp.parse_challenges(bad + ", " + good, skip_invalid=True)] == ["a"]
    # an unknown parameter is ignored whatever it holds
    assert mpp.parse_challenges(good + ', ext="\udce9"')[0].id == "a"


def test_parser_is_linear_on_hostile_input():
    """CORE-CHAL-10: long runs of backslashes and unclosed quotes cost linear time."""
    prefix = 'Payment id="a", realm="r", method="ledger", intent="charge", request="e30", x="'
    started = time.monotonic()
    for n in (50_000, 200_000):
        assert len(mpp.parse_challenges(prefix + "\\" * n)) == 1
        with pytest.raises(mpp.ParseError):
            mpp.parse_challenges('Payment id="' + "\\" * n)
    assert time.monotonic() - started < 5


# -- negotiation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "accept, expected",
    [
        (None, ["ledger", "other"]),
        ("", ["ledger", "other"]),
        ("garbage;;;", ["ledger", "other"]),
        ("ledger/charge;q=2", ["ledger", "other"]),  # q above 1: malformed, ignored
        ("other/charge", ["other"]),
        ("ledger/charge;q=0, other/charge", ["other"]),
        ("other/charge;q=0.9, ledger/charge;q=0.1", ["other", "ledger"]),
        ("*/*", ["ledger", "other"]),
        ("*/*;q=0.5, other/charge;q=1", ["other", "ledger"]),
        ("ledger/charge;q=0.2, */*;q=0.3", ["other", "ledger"]),  # the specific range beats the wildcard
        ("*/*;q=0.5, ledger/charge;q=0", ["other"]),
        ("ledger/*;q=0, */*", ["other"]),
        ("*/*;q=0", ["ledger", "other"]),  # nothing acceptable: the normal set
        ("card/charge", ["ledger", "other"]),  # no match: the normal set
        ("ledger/session", ["ledger", "other"]),
    ],
)
def test_accept_payment_negotiation(accept, expected):
    """CORE-NEG-01, CORE-NEG-02: absent or malformed Accept-Payment gives the seller's order; q=0
    excludes, wildcards match, higher q first, the most specific range decides; no match gives the
    normal set."""
    core = make_core(other=True)
    info = mpp.RequestInfo("GET", "/x", accept_payment=accept)
    assert [c.method for c in core.challenges(PRICE, info, NOW)] == expected


def test_accept_payment_parser():
    """CORE-NEG-01: parse_accept_payment returns ranges, or None when absent or malformed."""
    ranges = mpp.parse_accept_payment("ledger/charge;q=0.5, */*")
    assert ranges == [mpp.AcceptRange("ledger", "charge", 0.5), mpp.AcceptRange("*", "*", 1.0)]
    for bad in (None, "", "  ", "ledger", "ledger/charge;q=1.5", "ledger/charge;q=x", "Ledger/charge", "ledger/charge, ,"):
        assert mpp.parse_accept_payment(bad) is None
    assert mpp.format_accept_payment({("ledger", "charge"): 1, ("other", "charge"): 0.5}) == "ledger/charge, other/charge;q=0.5"


# -- the ledger method's signed bytes -----------------------------------------------------------


def _charge(**overrides: Any) -> mpp.ChargeRequest:
    fields = {"amount": "25", "currency": "usd", "recipient": SELLER_ACCOUNT, "methodDetails": {"ledger": LEDGER_ID}, **overrides}
    return mpp.ChargeRequest(**fields)


def test_signed_bytes_are_exact():
    """LEDGER-06: signed bytes = 'mpp-ledger-charge-v1\\n' + JCS of the seven named members."""
    message = authorization_message(challenge_id="cid", realm=REALM, request=_charge(description="ignored"), account=BUYER_ACCOUNT)
    assert SIGNING_DOMAIN == b"mpp-ledger-charge-v1\n"
    assert message == (
        b'mpp-ledger-charge-v1\n{"account":"acct:buyer","amount":"25","challengeId":"cid","currency":"usd",'
        b'"ledger":"ledger-1","realm":"api.test","recipient":"acct:seller"}'
    )


@pytest.mark.parametrize(
    "field",
    ["amount", "currency", "recipient", "ledger", "challenge_id", "realm", "account"],
)
def test_signature_covers_every_bound_member(field):
    """LEDGER-06, LEDGER-08: the signature covers amount, currency, recipient, ledger, challenge id,
    realm and account: changing any one of them makes it fail."""
    base = dict(challenge_id="cid", realm=REALM, request=_charge(), account=BUYER_ACCOUNT)
    signature = AGENT.sign(authorization_message(**base))
    mpp.verify_signature(AGENT.did, authorization_message(**base), signature)
    changed = dict(base)
    if field == "amount":
        changed["request"] = _charge(amount="26")
    elif field == "currency":
        changed["request"] = _charge(currency="eur")
    elif field == "recipient":
        changed["request"] = _charge(recipient="acct:mallory")
    elif field == "ledger":
        changed["request"] = _charge(methodDetails={"ledger": "ledger-2"})
    elif field == "challenge_id":
        changed["challenge_id"] = "cid2"
    elif field == "realm":
        changed["realm"] = "evil.test"
    else:
        changed["account"] = "acct:victim"
    with pytest.raises(mpp.SignatureInvalid):
        mpp.verify_signature(AGENT.did, authorization_message(**changed), signature)


def test_description_is_not_signed():
    """CORE-BUY-06: the description takes no part in the signed bytes."""
    a = authorization_message(challenge_id="cid", realm=REALM, request=_charge(description="cheap"), account=BUYER_ACCOUNT)
    b = authorization_message(challenge_id="cid", realm=REALM, request=_charge(description="expensive"), account=BUYER_ACCOUNT)
    assert a == b


def test_request_without_ledger_is_refused():
    """LEDGER-04: a ledger request without methodDetails.ledger cannot be signed or verified."""
    with pytest.raises(mpp.VerificationFailed):
        authorization_message(challenge_id="cid", realm=REALM, request=_charge(methodDetails=None), account=BUYER_ACCOUNT)
    with pytest.raises(ValueError):
        LedgerSellerMethod(recipient=SELLER_ACCOUNT, ledger_id=LEDGER_ID).request_for(amount=-1, currency="usd", description=None)


# -- buyer policy -------------------------------------------------------------------------------


def _quote_challenge(*, amount: int = 25, currency: str = "usd", recipient: str = SELLER_ACCOUNT, ttl: timedelta = timedelta(minutes=5),
                     description: str | None = None, method: str = "ledger") -> mpp.Challenge:
    issuer = mpp.ChallengeIssuer(SECRET, REALM, ttl=ttl)
    return issuer.issue(
        method=method,
        intent="charge",
        request={"amount": str(amount), "currency": currency, "recipient": recipient, "methodDetails": {"ledger": LEDGER_ID}},
        now=NOW,
        opaque={"nonce": "n", "resource": "GET /x"},
        description=description,
    )


@pytest.mark.parametrize(
    "kwargs, rule",
    [
        ({"amount": 101}, "max-amount"),
        ({"currency": "eur"}, "currency"),
        ({"recipient": "acct:mallory"}, "recipient"),
        ({"ttl": timedelta(seconds=-1)}, "expiry"),
        ({"ttl": timedelta(seconds=1)}, "expiry"),  # expires within min_validity
    ],
)
def test_check_quote_refuses(kwargs, rule):
    """CORE-BUY-01: amount over the limit, a currency or recipient not allowed, an expired or nearly
    expired quote are refused before anything is signed, naming the rule."""
    challenge = _quote_challenge(**kwargs)
    with pytest.raises(mpp.QuoteRejected) as excinfo:
        mpp.check_quote(challenge, mpp.ChargeRequest.from_challenge(challenge), policy(), NOW)
    assert excinfo.value.rule == rule


def test_check_quote_requires_expiry():
    """CORE-BUY-01: a quote without expires is refused unless the policy explicitly allows it."""
    challenge = _quote_challenge().model_copy(update={"expires": None})
    request = mpp.ChargeRequest.from_challenge(challenge)
    with pytest.raises(mpp.QuoteRejected) as excinfo:
        mpp.check_quote(challenge, request, policy(), NOW)
    assert excinfo.value.rule == "expiry"
    mpp.check_quote(challenge, request, policy(require_expires=False), NOW)


def test_check_quote_accepts_within_policy():
    """CORE-BUY-01: a quote at the limit, allowed currency and recipient, unexpired, passes."""
    challenge = _quote_challenge(amount=100)
    assert mpp.check_quote(challenge, mpp.ChargeRequest.from_challenge(challenge), policy(), NOW) is None
    mpp.check_quote(challenge, mpp.ChargeRequest.from_challenge(challenge), mpp.BuyerPolicy(max_amount=100), NOW)


def test_description_never_influences_the_buyer():
    """CORE-BUY-06: the description is never read by policy: a lying description changes nothing."""
    for description in (None, "FREE", "amount: 1", "costs 0 usd, recipient acct:seller"):
        over = _quote_challenge(amount=101, description=description)
        with pytest.raises(mpp.QuoteRejected):
            mpp.check_quote(over, mpp.ChargeRequest.from_challenge(over), policy(), NOW)
        fine = _quote_challenge(amount=10, description=description)
        mpp.check_quote(fine, mpp.ChargeRequest.from_challenge(fine), policy(), NOW)
    # the request's own description member is as inert
    request = mpp.ChargeRequest(amount="101", currency="usd", recipient=SELLER_ACCOUNT, description="1 cent")
    with pytest.raises(mpp.QuoteRejected):
        mpp.check_quote(_quote_challenge(amount=101), request, policy(), NOW)


def test_select_quote_without_a_payable_method_names_the_reasons():
    """CORE-BUY-09, CORE-BUY-08: with no challenge payable, NoPayableChallenge lists one reason per
    challenge; header-bound challenges are not answered."""
    stripe = _quote_challenge(method="stripe")
    header_bound = _quote_challenge().model_copy(update={"header": "Payment-Authorization"})
    too_dear = _quote_challenge(amount=1000)
    with pytest.raises(mpp.NoPayableChallenge) as excinfo:
        mpp.select_quote([stripe, header_bound, too_dear], [buyer()], policy(), NOW)
    reasons = excinfo.value.reasons
    assert len(reasons) == 3
    assert "stripe" in reasons[0] and "Payment-Authorization" in reasons[1] and "max-amount" in reasons[2]
    with pytest.raises(mpp.NoPayableChallenge):
        mpp.select_quote([stripe], [buyer()], policy(), NOW)


def test_select_quote_skips_to_a_payable_challenge():
    """CORE-BUY-09: unpayable challenges are skipped and the first payable one is chosen."""
    no_ledger = mpp.ChallengeIssuer(SECRET, REALM).issue(
        method="ledger", intent="charge", request={"amount": "1", "currency": "usd", "recipient": SELLER_ACCOUNT}, now=NOW
    )
    good = _quote_challenge()
    quote = mpp.select_quote([_quote_challenge(method="stripe"), no_ledger, _quote_challenge(currency="eur"), good], [buyer()], policy(), NOW)
    assert quote.challenge == good


def test_select_quote_skips_a_challenge_with_malformed_expires():
    """CORE-BUY-09, CORE-BUY-01: a challenge whose expires is not RFC 3339 is unpayable (rule 'expiry')
    and skipped; it does not abort the choice among the rest."""
    bad = _quote_challenge().model_copy(update={"expires": "tomorrow"})
    with pytest.raises(mpp.QuoteRejected) as excinfo:
        mpp.check_quote(bad, mpp.ChargeRequest.from_challenge(bad), policy(), NOW)
    assert excinfo.value.rule == "expiry"
    good = _quote_challenge()
    assert mpp.select_quote([bad, good], [buyer()], policy(), NOW).challenge == good


def test_select_quote_single_policy_refusal_is_reported_as_such():
    """CORE-BUY-01: when the only challenge breaks policy, the QuoteRejected rule reaches the caller."""
    with pytest.raises(mpp.QuoteRejected) as excinfo:
        mpp.select_quote([_quote_challenge(amount=1000)], [buyer()], policy(), NOW)
    assert excinfo.value.rule == "max-amount"


@pytest.mark.parametrize(
    "url, ok",
    [
        ("https://api.example.com/x", True),
        ("http://127.0.0.1:8080/x", True),
        ("http://localhost/x", True),
        ("http://[::1]:9/x", True),
        ("http://api.example.com/x", False),
        ("http://10.0.0.1/x", False),
        ("ftp://127.0.0.1/x", False),
    ],
)
def test_check_transport(url, ok):
    """CORE-BUY-07: no credential over plain http except to loopback."""
    if ok:
        mpp.check_transport(url, policy())
    else:
        with pytest.raises(mpp.QuoteRejected):
            mpp.check_transport(url, policy())


# -- receipts -----------------------------------------------------------------------------------


def _settle(*, core: mpp.SellerCore | None = None) -> tuple[mpp.Quote, mpp.SellerCore, mpp.Verified, dict[str, Any]]:
    core = core or make_core()
    quote, header = paid(core, GET_X)
    verified = core.verify(header, GET_X, NOW)
    claims = core.receipt_claims(verified, reference="tx-1", settled_at=NOW, account=BUYER_ACCOUNT)
    return quote, core, verified, claims


def _receipt_header(quote: mpp.Quote, token: str, **overrides: Any) -> str:
    fields = {"status": "success", "method": "ledger", "timestamp": mpp.format_rfc3339(NOW), "reference": "tx-1",
              "challengeId": quote.challenge.id, "receipt": token, **overrides}
    return mpp.format_receipt(mpp.PaymentReceipt(**fields))


JWKS = mpp.jwks_document([SELLER_KEY])


def _b64json(value: dict[str, Any]) -> str:
    return mpp.b64url_encode(json.dumps(value).encode())


def test_receipt_round_trip_and_claims():
    """CORE-RCPT-01, CHARGE-06, CHARGE-07, CORE-BUY-04, LEDGER-17: the seller's signed receipt verifies
    at the buyer; its JWS is EdDSA with a kid, and its claims match the quote and the receipt field."""
    quote, _, verified, claims = _settle()
    token = mpp.sign_receipt(SELLER_KEY, claims)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA" and header["kid"] == SELLER_KEY.kid and header["typ"] == "mpp-receipt+jwt"
    # signed with cryptography directly: any JWS library verifies it, and reads the same claims
    assert jwt.decode(token, SELLER_KEY.private_key.public_key(), algorithms=["EdDSA"],
                      options={"verify_iat": False}) == claims
    receipt, checked = mpp.verify_receipt(_receipt_header(quote, token), quote, JWKS, NOW)
    assert receipt.challengeId == checked["jti"] == checked["challengeId"] == verified.challenge_id
    for name in ("iss", "sub", "iat", "jti", "challengeId", "method", "intent", "amount", "currency", "recipient", "resource", "reference", "account"):
        assert name in checked
    assert (checked["iss"], checked["sub"], checked["amount"], checked["currency"], checked["recipient"], checked["account"]) == (
        REALM, AGENT.did, "25", "usd", SELLER_ACCOUNT, BUYER_ACCOUNT)
    assert checked["reference"] == receipt.reference == "tx-1"


@pytest.mark.parametrize("header", [None, "", "not base64!", _b64json({"status": "success"})])
def test_missing_or_malformed_receipt_is_invalid(header):
    """CORE-BUY-04, CORE-RCPT-04: no Payment-Receipt, or one that does not parse, is refused."""
    quote, *_ = _settle()
    with pytest.raises(mpp.ReceiptInvalid):
        mpp.verify_receipt(header, quote, JWKS, NOW)


def test_receipt_signed_by_another_key_is_invalid():
    """CORE-BUY-04, CHARGE-06: a receipt signed by a key not in the seller's JWKS is refused, whether
    it names its own kid or claims the seller's."""
    quote, _, _, claims = _settle()
    mallory = mpp.SigningKey.generate()
    own_kid = mpp.sign_receipt(mallory, claims)
    stolen_kid = jwt.encode(claims, mallory.private_key, algorithm="EdDSA", headers={"kid": SELLER_KEY.kid})
    for token in (own_kid, stolen_kid):
        with pytest.raises(mpp.ReceiptInvalid):
            mpp.verify_receipt(_receipt_header(quote, token), quote, JWKS, NOW)


def test_receipt_for_another_challenge_is_invalid():
    """CORE-BUY-04, CHARGE-07: a receipt naming another challenge, in the field or in the JWS, is refused."""
    quote, _, _, claims = _settle()
    token = mpp.sign_receipt(SELLER_KEY, claims)
    with pytest.raises(mpp.ReceiptInvalid):
        mpp.verify_receipt(_receipt_header(quote, token, challengeId="other"), quote, JWKS, NOW)
    other_jws = mpp.sign_receipt(SELLER_KEY, {**claims, "challengeId": "other", "jti": "other"})
    with pytest.raises(mpp.ReceiptInvalid):
        mpp.verify_receipt(_receipt_header(quote, other_jws), quote, JWKS, NOW)


@pytest.mark.parametrize(
    "claim, value",
    [("amount", "26"), ("currency", "eur"), ("recipient", "acct:mallory"), ("reference", "tx-2"), ("iss", "evil.test")],
)
def test_receipt_with_other_terms_is_invalid(claim, value):
    """CORE-BUY-04, CHARGE-07: a receipt for another amount, currency, recipient, reference or issuer
    than the quote is refused."""
    quote, _, _, claims = _settle()
    token = mpp.sign_receipt(SELLER_KEY, {**claims, claim: value})
    with pytest.raises(mpp.ReceiptInvalid):
        mpp.verify_receipt(_receipt_header(quote, token), quote, JWKS, NOW)


def test_receipt_missing_a_required_claim_is_invalid():
    """CHARGE-07: a receipt JWS lacking a required claim is refused."""
    quote, _, _, claims = _settle()
    for name in ("sub", "jti", "challengeId", "amount", "reference"):
        token = mpp.sign_receipt(SELLER_KEY, {k: v for k, v in claims.items() if k != name})
        with pytest.raises(mpp.ReceiptInvalid):
            mpp.verify_receipt(_receipt_header(quote, token), quote, JWKS, NOW)


def test_receipt_with_alg_none_or_hs256_is_invalid():
    """CORE-BUY-04, CHARGE-06: only EdDSA is accepted; alg none and HS256 (keyed with the seller's public
    key bytes, the classic confusion) are refused."""
    quote, _, _, claims = _settle()
    body = _b64json(claims)
    none_token = _b64json({"alg": "none", "kid": SELLER_KEY.kid, "typ": "JWT"}) + "." + body + "."
    public_x = mpp.b64url_decode(SELLER_KEY.jwk()["x"])
    signing_input = (_b64json({"alg": "HS256", "kid": SELLER_KEY.kid}) + "." + body).encode()
    hs_token = signing_input.decode() + "." + mpp.b64url_encode(hmac.new(public_x, signing_input, hashlib.sha256).digest())
    jwk_text = json.dumps(SELLER_KEY.jwk()).encode()
    signing_input2 = (_b64json({"alg": "HS256", "kid": SELLER_KEY.kid}) + "." + body).encode()
    hs_token2 = signing_input2.decode() + "." + mpp.b64url_encode(hmac.new(jwk_text, signing_input2, hashlib.sha256).digest())
    for token in (none_token, hs_token, hs_token2, "a.b.c", "not a jws"):
        with pytest.raises(mpp.ReceiptInvalid):
            mpp.verify_receipt(_receipt_header(quote, token), quote, JWKS, NOW)
        with pytest.raises(mpp.ReceiptInvalid):
            mpp.verify_receipt_jws(token, JWKS, issuer=REALM)


def test_receipt_without_jws_is_invalid():
    """CORE-BUY-04: a Payment-Receipt without the signed JWS is not accepted."""
    quote, *_ = _settle()
    header = mpp.format_receipt(mpp.PaymentReceipt(status="success", method="ledger", timestamp=mpp.format_rfc3339(NOW),
                                                   reference="tx-1", challengeId=quote.challenge.id))
    with pytest.raises(mpp.ReceiptInvalid):
        mpp.verify_receipt(header, quote, JWKS, NOW)


def _receipt_wire(**members: Any) -> str:
    doc = {"status": "success", "method": "ledger", "timestamp": "2026-01-29T12:00:03Z", "reference": "tx_1", **members}
    return mpp.b64url_encode(json.dumps(doc).encode())


@pytest.mark.parametrize("members", [{"challengeId": 5}, {"challengeId": ["ch"]}, {"receipt": 5}, {"receipt": {}},
                                     {"reference": ""}, {"method": 1}, {"challengeId": True}])
def test_receipt_member_of_the_wrong_type_is_malformed(members):
    """CORE-RCPT-05: challengeId and receipt, when present, are strings (or null); the draft's four are non-empty strings."""
    with pytest.raises(mpp.ParseError):
        mpp.parse_receipt(_receipt_wire(**members))


def test_receipt_field_value_whitespace_is_sp_and_htab_around_it_only():
    """CORE-RCPT-05: SP and HTAB around the value are skipped; a null challengeId is absent; a line
    feed around the value, or a space inside it, is refused."""
    wire = _receipt_wire(challengeId=None, receipt=None)
    parsed = mpp.parse_receipt(" \t" + wire + "\t ")
    assert parsed.challengeId is None and parsed.receipt is None and parsed.reference == "tx_1"
    for bad in (wire + "\n", "\n" + wire, wire[:20] + " " + wire[20:], "\u00a0" + wire):
        with pytest.raises(mpp.ParseError):
            mpp.parse_receipt(bad)


def test_receipt_verifies_against_a_jwks_with_several_keys():
    """CORE-DISC-01: a JWKS with an earlier key and the current one verifies receipts of either."""
    quote, _, _, claims = _settle()
    earlier = mpp.SigningKey.generate()
    jwks = mpp.jwks_document([SELLER_KEY, earlier])
    assert all(k["alg"] == "EdDSA" and k["kid"] for k in jwks["keys"])
    for key in (SELLER_KEY, earlier):
        mpp.verify_receipt(_receipt_header(quote, mpp.sign_receipt(key, claims)), quote, jwks, NOW)


# -- problem documents --------------------------------------------------------------------------

PROBLEMS = {
    mpp.PaymentRequired: (402, "payment-required"),
    mpp.MalformedCredential: (402, "malformed-credential"),
    mpp.InvalidChallenge: (402, "invalid-challenge"),
    mpp.VerificationFailed: (402, "verification-failed"),
    mpp.PaymentExpired: (402, "payment-expired"),
    mpp.PaymentInsufficient: (402, "payment-insufficient"),
    mpp.MethodUnsupported: (400, "method-unsupported"),
    mpp.BadRequest: (400, "bad-request"),
    mpp.AccessDenied: (403, "access-denied"),
}


def _all_subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _all_subclasses(sub)
    return out


@pytest.mark.parametrize("cls", list(PROBLEMS), ids=lambda c: c.__name__)
def test_problem_types(cls):
    """CORE-ERR-01 .. CORE-ERR-09: each problem has its status and a type under
    https://paymentauth.org/problems/; 402s carry a fresh challenge and the document names it."""
    status, slug = PROBLEMS[cls]
    problem = cls("what happened")
    assert problem.status == status
    assert problem.type == "https://paymentauth.org/problems/" + slug
    assert mpp.PROBLEM_CLASSES[slug] is cls
    assert problem.fresh_challenge == (status == 402)
    doc = problem.to_problem(instance="/x", challenge_id="cid")
    assert doc == {"type": problem.type, "title": cls.title, "status": status, "detail": "what happened", "instance": "/x", "challengeId": "cid"}
    assert cls().detail == cls.title


def test_every_problem_class_is_known():
    """CORE-ERR-01: every PaymentProblem subclass is in the table above; the one extension type
    (request-in-progress, 409) uses our URN base, not the registry's."""
    from mpp import identity, pricing
    from mpp.intents import session as session_core
    from mpp.aio.rails import LedgerUnavailable
    from mpp.aio.evm_rail import ChainUnavailable, SettlementPending

    extension = {mpp.protocol.errors.ExtensionProblem, mpp.protocol.errors.SellerMisconfigured, identity.IdentityProblem, *identity.IDENTITY_PROBLEMS.values(),
                 session_core.SessionProblem, *session_core.SESSION_PROBLEMS.values(), LedgerUnavailable,
                 pricing.PricingProblem, *pricing.PRICING_PROBLEMS.values(), ChainUnavailable, SettlementPending}
    assert _all_subclasses(mpp.PaymentProblem) == set(PROBLEMS) | {mpp.RequestInProgress} | extension
    for cls in [*identity.IDENTITY_PROBLEMS.values(), *session_core.SESSION_PROBLEMS.values(),
                *pricing.PRICING_PROBLEMS.values()]:  # our own types
        assert cls().type == mpp.EXTENSION_PROBLEM_BASE + cls.slug
    for cls in session_core.SESSION_PROBLEMS.values():  # SESSION-ERR-01: every session refusal is a 402 with a fresh challenge
        assert cls.status == 402 and cls().fresh_challenge
    problem = mpp.RequestInProgress()
    assert problem.status == 409 and problem.type == mpp.EXTENSION_PROBLEM_BASE + "request-in-progress"
    assert not problem.fresh_challenge
    unavailable = LedgerUnavailable()  # LEDGER-SVC-10: a seller that cannot reach its ledger service
    assert unavailable.status == 503 and unavailable.type == mpp.EXTENSION_PROBLEM_BASE + "ledger-unavailable"
    for cls, slug in ((ChainUnavailable, "chain-unavailable"), (SettlementPending, "settlement-pending")):  # the evm rail's
        assert cls.status == 503 and cls().type == mpp.EXTENSION_PROBLEM_BASE + slug and not cls().fresh_challenge
    assert not unavailable.fresh_challenge


def test_problem_body_and_headers():
    """CORE-ERR-01, CORE-ERR-10: the seller's 402 answer names the first fresh challenge and carries
    Cache-Control: no-store next to one WWW-Authenticate per challenge."""
    core = make_core(other=True)
    challenges = core.challenges(PRICE, GET_X, NOW)
    body = core.problem_body(mpp.PaymentRequired(), challenges, "/x?q=1")
    assert body["challengeId"] == challenges[0].id and body["status"] == 402
    headers = core.problem_headers(challenges)
    assert [v for k, v in headers if k == "WWW-Authenticate"] == [mpp.format_challenge(c) for c in challenges]
    assert ("Cache-Control", "no-store") in headers


def test_problem_details_do_not_echo_credentials():
    """CORE-CRED-06: refusals do not copy the credential or its signature into the problem detail."""
    core = make_core()
    _, header = paid(core, GET_X)
    signature = credential_doc(header)["payload"]["signature"]
    token = header.split(" ", 1)[1]
    for info in (mpp.RequestInfo("GET", "/other"), mpp.RequestInfo("GET", "/x", "q=1", b"body")):
        with pytest.raises(mpp.PaymentProblem) as excinfo:
            core.verify(header, info, NOW)
        text = json.dumps(excinfo.value.to_problem())
        assert signature not in text and token not in text
    with pytest.raises(mpp.MalformedCredential) as excinfo:
        core.verify(header + "!", GET_X, NOW)
    assert token not in json.dumps(excinfo.value.to_problem())


# -- fuzz ---------------------------------------------------------------------------------------

_ALPHABET = 'Payment id realm method intent request opaque digest expires header ="\\,;:/ \t\r\n\x00AZaz09_-+=é☕\ud800{}[]'


# strings that once reached code paths a parser should have closed off
_HUGE = "__HUGE_INT__"
_HOSTILE = ["\ud800", "\udfff x", "", " ", "e30", "W10", "did:key:z", "did:key:z6Mk" + "1" * 40, "x" * 300, "2026-01-29T12:00:00Z",
            "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:", "Authorization", "Payment-Authorization", _HUGE]


def _dumps(value: Any) -> bytes:
    """JSON text of ``value``; the _HUGE marker becomes an integer longer than Python's int parser takes."""
    text = json.dumps(value).replace(json.dumps(_HUGE), "9" * 5000)
    return text.encode("utf-8")


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**63, 10**40, rng.randrange(-10**6, 10**6)])
    if kind == 3:
        return rng.choice([0.5, -1e308, 1e-300])
    if kind == 4:
        return rng.choice(_HOSTILE)
    if kind == 5:
        return "".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(12)))
    if kind == 6:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["challenge", "payload", "source", "id", "realm", "method", "intent", "request", "opaque", "expires", "digest",
            "header", "type", "account", "signer", "signature", "status", "timestamp", "reference", "challengeId", "receipt"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(6))}


def _fuzz_inputs(rng: random.Random, valid: list[str], valid_doc: dict[str, Any]) -> str:
    kind = rng.randrange(6)
    if kind == 0:  # header-ish characters
        return "".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(120)))
    if kind == 1:  # arbitrary bytes as latin-1 text
        return bytes(rng.randrange(256) for _ in range(rng.randrange(120))).decode("latin-1")
    if kind == 2:  # a valid value, mutated
        chars = list(rng.choice(valid))
        for _ in range(rng.randrange(1, 6)):
            pos = rng.randrange(len(chars) + 1)
            op = rng.randrange(3)
            if op == 0 and chars:
                del chars[min(pos, len(chars) - 1)]
            elif op == 1:
                chars.insert(pos, rng.choice(_ALPHABET))
            elif chars:
                chars[min(pos, len(chars) - 1)] = rng.choice(_ALPHABET)
        return "".join(chars)
    if kind == 3:  # base64url of random JSON, with and without the scheme
        token = mpp.b64url_encode(_dumps(_random_json(rng, 0 if rng.random() < 0.5 else 2)))
        return rng.choice(["Payment ", "", "payment  "]) + token
    if kind == 4:  # a valid credential with one member replaced by random JSON
        doc = json.loads(json.dumps(valid_doc))
        target = doc[rng.choice(["challenge", "payload"])]
        target[rng.choice(list(target) + ["extra"])] = rng.choice(_HOSTILE) if rng.random() < 0.5 else _random_json(rng, 1)
        if rng.random() < 0.3:
            doc[rng.choice(["source", "challenge", "payload"])] = _random_json(rng, 1)
        return "Payment " + mpp.b64url_encode(_dumps(doc))
    # a challenge whose request/opaque are random base64url JSON
    request = mpp.b64url_encode(_dumps(_random_json(rng)))
    return f'Payment id="x", realm="r", method="ledger", intent="charge", request="{request}", opaque="{request}"'


def test_fuzz_only_library_errors_escape():
    """CORE-ERR-11, CORE-CHAL-03, CORE-CRED-01, CORE-CRED-02, CORE-RCPT-04, CORE-BUY-09: 2,000 seeded
    random inputs through parse_challenges, parse_credential, parse_receipt and SellerCore.verify raise
    nothing but ParseError (parsers) and PaymentProblem (the seller), never anything else; the buyer's
    select_quote/sign_quote on the same input raise only the library's own errors."""
    rng = random.Random(20260129)
    core = make_core(other=True)
    quote, header = paid(core, POST_X)
    valid = [header, mpp.format_challenge(quote.challenge), _receipt_header(quote, "a.b.c"), "ledger/charge;q=0.5, */*"]
    valid_doc = credential_doc(header)
    outcomes = {"ok": 0, "refused": 0}
    for i in range(2000):
        text = _fuzz_inputs(rng, valid, valid_doc)
        for parse in (mpp.parse_challenges, mpp.parse_credential, mpp.parse_receipt):
            try:
                parse(text)
                outcomes["ok"] += 1
            except mpp.ParseError:
                outcomes["refused"] += 1
            except Exception as exc:  # pragma: no cover - the failure report
                pytest.fail(f"{parse.__name__} raised {exc!r} on input #{i}: {text!r}")
        for info in (POST_X, GET_X):
            try:
                core.verify(text, info, NOW)
            except mpp.PaymentProblem:
                pass
            except Exception as exc:  # pragma: no cover - the failure report
                pytest.fail(f"SellerCore.verify raised {exc!r} on input #{i}: {text!r}")
        mpp.parse_accept_payment(text)  # None or ranges, never an exception
        try:  # the buyer's side of the same input: a hostile seller's challenges
            quote_ = mpp.select_quote(mpp.parse_challenges(text, skip_invalid=True), [buyer()], mpp.BuyerPolicy(max_amount=10**30), NOW)
            mpp.sign_quote(quote_)
        except mpp.MPPError:
            pass
        except Exception as exc:  # pragma: no cover - the failure report
            pytest.fail(f"the buyer raised {exc!r} on input #{i}: {text!r}")
    assert outcomes["ok"] > 0 and outcomes["refused"] > 0


def test_canonical_json_fast_path_writes_the_rfc8785_bytes():
    """The shared encoding (RFC 8785): values our messages are made of are written by the json
    module, everything else by the reference implementation; both must give the same bytes, and
    refuse the same values (lone surrogates, integers past 2**53 - 1)."""
    import rfc8785

    from mpp.protocol.wire import _plain, canonical_json

    rng = random.Random(8785)
    alphabet = ["a", "Z", "0", " ", '"', "\\", "/", "\b", "\f", "\n", "\r", "\t", "\x00", "\x1f", "\x7f", "\x80", "é",
                "\u2028", "\ufeff", "\uffff", "€", "😀", "\ud800", "\udfff", "\U0010ffff"]

    def text(keyish: bool = False) -> str:
        chars = alphabet[:8] if keyish and rng.random() < 0.7 else alphabet
        return "".join(rng.choice(chars) for _ in range(rng.randint(0, 6)))

    def value(depth: int = 0) -> Any:
        kind = rng.randint(0, 9 if depth < 3 else 5)
        if kind == 0:
            return None
        if kind == 1:
            return rng.choice([True, False])
        if kind == 2:
            return rng.choice([0, 1, -1, 2**53 - 1, -(2**53 - 1), 2**53, -(2**53), 10**30, rng.randint(-10**9, 10**9)])
        if kind == 3:
            return rng.choice([0.0, 1.5, -2.25, 1e21, 1e-7, 3.0])
        if kind in (4, 5):
            return text()
        if kind in (6, 7):
            return [value(depth + 1) for _ in range(rng.randint(0, 4))]
        return {text(keyish=True): value(depth + 1) for _ in range(rng.randint(0, 5))}

    fast = 0
    for _ in range(5000):
        v = value()
        try:
            expected: bytes | None = rfc8785.dumps(v)
        except (rfc8785.CanonicalizationError, ValueError):
            expected = None
        try:
            got: bytes | None = canonical_json(v)
        except mpp.ParseError:
            got = None
        assert got == expected, v
        fast += _plain(v)
    assert fast > 1000
    assert not _plain({"é": 1}) and not _plain({"a": 1.5}) and not _plain({"a": 2**53}) and _plain({"a": [None, True, "\ud800"]})
