"""The ``evm`` method's parsers of untrusted input (mpp.methods.evm.charge), property-based: whatever
a credential's payload or a challenge's request holds, they answer with the problem the seller
sends (VerificationFailed) or ParseError, never TypeError, ValueError or a decoder's
own exception (CORE-ERR-11: no content of a request leads to a 5xx). And the challenge hash of
both binding rules against vectors computed here from the bytes, independently of the code."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from eth_account import Account
from eth_utils import keccak
from hypothesis import assume, given, strategies as st
from pydantic import ValidationError

from mpp.methods.evm.charge import (AUTHORIZATION, BINDING_DRAFT, BINDING_JSON, HASH, TRANSACTION, EvmBuyerMethod,
                                    EvmSellerMethod, EvmToken, challenge_hash, parse_evm_request, parse_payload)
from mpp.protocol.challenge import ChallengeIssuer
from mpp.protocol.errors import ParseError, PaymentProblem, VerificationFailed
from mpp.protocol.models import ChargeRequest, Credential

TOKEN = EvmToken("0x5FbDB2315678afecb367f032d93F642f64180aa3", "MPP Test USD", "1")
SELLER = Account.create()
PAYER = Account.create()
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)

hexstr = st.builds(lambda digits, odd: "0x" + digits + ("a" if odd else ""),
                   st.text("0123456789abcdefABCDEF", max_size=140), st.booleans())
decimal = st.one_of(st.integers(min_value=-5, max_value=2 ** 260).map(str), st.text("0123456789 +-_.", max_size=80))
address = st.one_of(hexstr, st.just(PAYER.address), st.just(SELLER.address), st.just(PAYER.address.lower()),
                    st.text(max_size=50))
scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40))
json_ish = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
member = {
    "type": st.one_of(st.sampled_from([AUTHORIZATION, TRANSACTION, HASH, "permit2", ""]), json_ish),
    "from": st.one_of(address, json_ish), "to": st.one_of(address, json_ish),
    "value": st.one_of(decimal, json_ish), "validAfter": st.one_of(decimal, json_ish), "validBefore": st.one_of(decimal, json_ish),
    "nonce": st.one_of(hexstr, json_ish), "signature": st.one_of(hexstr, json_ish), "hash": st.one_of(hexstr, json_ish),
}
payloads = st.fixed_dictionaries({}, optional=member).flatmap(
    lambda d: st.dictionaries(st.text(max_size=10), json_ish, max_size=3).map(lambda extra: {**extra, **d}))


@given(payloads)
def test_parse_payload_refuses_with_verification_failed_only(payload):
    try:
        fields = parse_payload(payload)
    except VerificationFailed:
        return
    assert fields["type"] in (AUTHORIZATION, TRANSACTION, HASH)


details = st.fixed_dictionaries({}, optional={
    "chainId": st.one_of(st.integers(min_value=-2, max_value=2 ** 257), json_ish),
    "credentialTypes": st.one_of(st.lists(st.sampled_from([AUTHORIZATION, TRANSACTION, HASH, "permit2", ""]), max_size=4), json_ish),
    "decimals": st.one_of(st.integers(min_value=-2, max_value=300), json_ish),
    "splits": json_ish,
})
requests = st.fixed_dictionaries({
    "amount": st.one_of(st.integers(min_value=0, max_value=2 ** 260).map(str), st.text("0123456789x", max_size=90)),
    "currency": address, "recipient": address,
}, optional={"methodDetails": st.one_of(details, json_ish), "description": json_ish})


@given(requests)
def test_parse_evm_request_refuses_with_parse_error_only(doc):
    try:
        request = ChargeRequest.model_validate(doc)
    except ValidationError:
        assume(False)
        return
    try:
        parsed = parse_evm_request(request)
    except ParseError:
        return
    assert parsed.amount == int(doc["amount"]) and parsed.chain_id > 0


def _challenge(seller: EvmSellerMethod):
    issuer = ChallengeIssuer(b"k" * 32, "evm.test")
    request = seller.request_for(amount=25_000, currency="usd", description=None)
    challenge = issuer.issue(method="evm", intent="charge", request=request, now=NOW, digest=None,
                             opaque={"resource": "GET /paid"})
    return challenge, ChargeRequest.from_challenge(challenge)


SELLER_METHOD = EvmSellerMethod(recipient=SELLER.address, chain_id=31337, tokens={"usd": TOKEN},
                                credential_types=(AUTHORIZATION, TRANSACTION, HASH), bindings=(BINDING_DRAFT, BINDING_JSON),
                                clock=lambda: NOW)
CHALLENGE, REQUEST = _challenge(SELLER_METHOD)


@given(payloads, st.one_of(st.none(), st.text(max_size=80)))
def test_verify_answers_every_payload_with_a_problem_or_a_payment(payload, source):
    credential = Credential(challenge=CHALLENGE, payload=payload, source=source)
    try:
        payment = SELLER_METHOD.verify(credential, REQUEST)
    except PaymentProblem:
        return
    assert payment.challenge_id == CHALLENGE.id


def _signed_transfer(**changes) -> bytes:
    tx = {"type": 2, "chainId": 31337, "nonce": 0, "to": TOKEN.address, "value": 0, "gas": 100_000, "maxFeePerGas": 10 ** 9,
          "maxPriorityFeePerGas": 1, "data": "0xa9059cbb" + "00" * 12 + SELLER.address[2:].lower() + f"{25_000:064x}"}
    return bytes(PAYER.sign_transaction({**tx, **changes}).raw_transaction)


GOOD_TX = _signed_transfer()


@given(st.lists(st.tuples(st.integers(min_value=0, max_value=len(GOOD_TX) - 1), st.integers(min_value=0, max_value=255)),
                max_size=4), st.binary(max_size=40), st.sampled_from([b"", b"\x02", b"\x01", b"\x03", b"\xf8"]))
def test_verify_refuses_mangled_transactions_with_verification_failed(flips, tail, prefix):
    """EVM-TX-01: EVM-AUTH-01, EVM-AUTH-05: EVM-AUTH-01: A signed EIP-1559 transfer with bytes changed, cut, extended or re-typed: verified or refused,
    never a decoder's exception."""
    raw = bytearray(prefix + GOOD_TX[1:] if prefix else GOOD_TX)
    for at, value in flips:
        if at < len(raw):
            raw[at] = value
    payload = {"type": TRANSACTION, "signature": "0x" + (bytes(raw) + tail).hex()}
    try:
        SELLER_METHOD.verify(Credential(challenge=CHALLENGE, payload=payload), REQUEST)
    except VerificationFailed:
        pass


def test_a_transfer_with_dirty_address_padding_is_verification_failed():
    """eth-abi refuses an address whose 12 padding bytes are not zero; that is a bad payment (402), not a 500."""
    dirty = "0xa9059cbb" + "ff" * 12 + SELLER.address[2:].lower() + f"{25_000:064x}"
    payload = {"type": TRANSACTION, "signature": "0x" + _signed_transfer(data=dirty).hex()}
    with pytest.raises(VerificationFailed, match="do not decode"):
        SELLER_METHOD.verify(Credential(challenge=CHALLENGE, payload=payload), REQUEST)


def test_a_signed_transfer_transaction_verifies():
    payment = SELLER_METHOD.verify(Credential(challenge=CHALLENGE, payload={"type": TRANSACTION, "signature": "0x" + GOOD_TX.hex()}),
                                   REQUEST)
    assert payment.kind == TRANSACTION and payment.payer == PAYER.address and payment.tx_hash == "0x" + keccak(GOOD_TX).hex()
    assert payment.replay_key == f"evm:31337:tx:{payment.tx_hash}"


@pytest.mark.parametrize("rule", [BINDING_DRAFT, BINDING_JSON])
def test_our_buyers_authorization_verifies_under_its_rule(rule):
    buyer = EvmBuyerMethod(account=PAYER, chain_id=31337, tokens=[TOKEN], binding=rule, clock=lambda: NOW)
    payload, source = buyer.payload(CHALLENGE, REQUEST)
    payment = SELLER_METHOD.verify(Credential(challenge=CHALLENGE, payload=payload, source=source), REQUEST)
    assert payment.binding == rule and payment.payer == PAYER.address and payment.payer_did == source


# -- challenge hash: vectors computed from the bytes ---------------------------------------------------

# (id, realm, the bytes each rule hashes), written out by hand rather than by the code under test
VECTORS = [
    ("tAtw97ZIQIUkXgaX-R45vsZRC56NhVPbsPL-7p3a6WY", "127.0.0.1",
     b"tAtw97ZIQIUkXgaX-R45vsZRC56NhVPbsPL-7p3a6WY127.0.0.1",
     b'["tAtw97ZIQIUkXgaX-R45vsZRC56NhVPbsPL-7p3a6WY","127.0.0.1"]'),
    ("kM9xPqWvT2nJrHsY4aDfEb", "api.example.com", b"kM9xPqWvT2nJrHsY4aDfEbapi.example.com",
     b'["kM9xPqWvT2nJrHsY4aDfEb","api.example.com"]'),
    ("id", "b\xfccher.example", b"idb\xc3\xbccher.example", b'["id","b\xc3\xbccher.example"]'),
    ("a\"b", "c\\d", b'a"bc\\d', b'["a\\"b","c\\\\d"]'),
    ("", "", b"", b'["",""]'),
]


@pytest.mark.parametrize("challenge_id, realm, concatenated, json_array", VECTORS)
def test_challenge_hash_of_both_rules_against_the_bytes(challenge_id, realm, concatenated, json_array):
    """EVM-BIND-01: EVM-BIND-01: the draft's rule hashes the UTF-8 of id then realm (abi.encodePacked of two
    strings); pympp's hashes JSON.stringify([id, realm]) (no spaces, non-ASCII as UTF-8, JSON escapes)."""
    assert challenge_hash(challenge_id, realm, BINDING_DRAFT) == keccak(concatenated)
    assert challenge_hash(challenge_id, realm, BINDING_JSON) == keccak(json_array)
    assert json.dumps([challenge_id, realm], separators=(",", ":"), ensure_ascii=False).encode() == json_array


def test_challenge_hash_matches_what_the_peer_sdks_sent():
    """EVM-BIND-01: The nonces mppx 0.11.0 (the draft's rule) and pympp 0.16.0 (JSON) sent for one challenge, as
    recorded on a local chain (docs: /work/notes, evm interop §3): first and last digits."""
    challenge_id, realm = VECTORS[0][:2]
    assert challenge_hash(challenge_id, realm, BINDING_DRAFT).hex().startswith("322060eb")
    assert challenge_hash(challenge_id, realm, BINDING_DRAFT).hex().endswith("2bcacf4")
    assert challenge_hash(challenge_id, realm, BINDING_JSON).hex().startswith("77b03316")
    assert challenge_hash(challenge_id, realm, BINDING_JSON).hex().endswith("4222ccaa")


def test_an_unknown_binding_rule_is_refused():
    with pytest.raises(ValueError, match="unknown challenge-binding rule"):
        challenge_hash("id", "realm", "concat")


def test_the_authorization_window_is_judged_on_the_seller_clock():
    """EVM-AUTH-03: An authorization valid for longer than max_validity past the challenge's expiry is refused."""
    buyer = EvmBuyerMethod(account=PAYER, chain_id=31337, tokens=[TOKEN], clock=lambda: NOW)
    payload, _ = buyer.payload(CHALLENGE, REQUEST)
    late = EvmSellerMethod(recipient=SELLER.address, chain_id=31337, tokens={"usd": TOKEN},
                           clock=lambda: NOW + timedelta(minutes=10))
    with pytest.raises(PaymentProblem) as refused:
        late.verify(Credential(challenge=CHALLENGE, payload=payload), REQUEST)
    assert refused.value.slug == "verification-failed" and "expired" in refused.value.detail


def test_importing_the_evm_method_keeps_the_recursion_limit():
    """eth-account's py_ecc raises the recursion limit to 100,000 on import; a seller with the evm
    rail would then crash on a deeply nested credential (the C stack overflows inside json.loads)
    instead of refusing it (CORE-CRED-07, CORE-ERR-11). mpp.methods.evm imports it keeping the limit."""
    import subprocess
    import sys

    code = ("import sys; before = sys.getrecursionlimit(); import mpp.aio.evm_rail, eth_account; "
            "from mpp.protocol.wire import loads_strict; from mpp.protocol.errors import ParseError\n"
            "assert sys.getrecursionlimit() == before, sys.getrecursionlimit()\n"
            "try: loads_strict('[' * 100000 + ']' * 100000, 'credential')\n"
            "except ParseError: print('refused')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "refused", done.stderr[-2000:]


# -- addresses, buyer refusals, source -----------------------------------------------------------------

def test_addresses_are_compared_by_their_bytes():
    """EVM-REQ-02: a payload naming the recipient in lower case, a seller configured with a lowercase
    token address and a mandate currency in either case are the same addresses."""
    buyer = EvmBuyerMethod(account=PAYER, chain_id=31337, tokens=[TOKEN], clock=lambda: NOW)
    payload, source = buyer.payload(CHALLENGE, REQUEST)
    payload = {**payload, "to": payload["to"].lower(), "from": payload["from"].lower()}
    lower = EvmSellerMethod(recipient=SELLER.address.lower(), chain_id=31337,
                            tokens={TOKEN.address.lower(): EvmToken(TOKEN.address.lower(), TOKEN.name, TOKEN.version)},
                            clock=lambda: NOW)
    assert lower.verify(Credential(challenge=CHALLENGE, payload=payload, source=source.lower()), REQUEST).payer == PAYER.address
    from mpp.identity.mandates import same_currency
    assert same_currency(TOKEN.address, TOKEN.address.lower()) and not same_currency("usd", "USD")


@pytest.mark.parametrize("change, why", [
    ({"methodDetails": {"chainId": 1, "credentialTypes": [AUTHORIZATION]}}, "chain 1 is not ours"),
    ({"currency": "0x" + "11" * 20}, "is not one we pay with"),
    ({"methodDetails": {"chainId": 31337, "credentialTypes": [AUTHORIZATION], "splits": [{"amount": "1"}]}}, "splits"),
    ({"amount": "0"}, "zero"),
    ({"methodDetails": {"chainId": 31337, "credentialTypes": [TRANSACTION]}}, "does not accept EIP-3009"),
])
def test_our_buyer_refuses_before_signing_what_it_cannot_pay(change, why):
    """EVM-REQ-03: another chain, a token we hold no domain for, splits, a zero amount, or no
    ``authorization`` among the accepted types: can_pay says why, and nothing is signed."""
    buyer = EvmBuyerMethod(account=PAYER, chain_id=31337, tokens=[TOKEN], clock=lambda: NOW)
    request = ChargeRequest.model_validate({**REQUEST.model_dump(exclude_none=True), **change})
    assert why in (buyer.can_pay(CHALLENGE, request) or "")
    assert buyer.can_pay(CHALLENGE, REQUEST) is None


def test_a_source_that_is_not_the_payer_is_refused_unless_the_identity_extension_names_the_agent():
    """EVM-AUTH-05: a did:pkh source of another address, or a did:key source without the identity
    extension, is verification-failed; a did:key source with an identity member is left to the extension."""
    buyer = EvmBuyerMethod(account=PAYER, chain_id=31337, tokens=[TOKEN], clock=lambda: NOW)
    payload, _ = buyer.payload(CHALLENGE, REQUEST)
    for source in (f"did:pkh:eip155:31337:{SELLER.address}", "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"):
        with pytest.raises(VerificationFailed, match="source"):
            SELLER_METHOD.verify(Credential(challenge=CHALLENGE, payload=payload, source=source), REQUEST)
    agent = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
    with_identity = Credential(challenge=CHALLENGE, payload=payload, source=agent, extensions={"identity": {"mandates": []}})
    assert SELLER_METHOD.verify(with_identity, REQUEST).payer == PAYER.address
