"""The ``evm`` method's ``permit2`` credential (mpp.methods.evm.permit2, settled by mpp.aio.evm_rail) on a
real chain: anvil with the test token and Uniswap's Permit2 at its canonical address (the runtime code
of contracts/Permit2.json, tools/build_permit2.py), our seller in-process, our buyer signing permits.
No mocks: every payment is a permitWitnessTransferFrom on the chain, every balance read back.

EVM-PERMIT-01 (the payload's shape), EVM-PERMIT-02 (the offline checks), EVM-PERMIT-03 (the chain's prechecks,
settlement, replay key)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

import aiohttp
import eth_abi
import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak
from hypothesis import given, settings, strategies as st

import mpp
from mpp.methods.evm.charge import AUTHORIZATION, BINDING_DRAFT, PERMIT2, EvmBuyerMethod, EvmSellerMethod, EvmToken, did_pkh, parse_payload
from mpp.methods.evm.devchain import permit2_artifact
from mpp.methods.evm.permit2 import (PERMIT2_ADDRESS, WITNESS_TYPE_STRING, parse_permit2, permit2_typed_data, sign_permit2,
                                     witness_hash)
from mpp.methods.evm.fields import challenge_hash
from mpp.protocol.challenge import ChallengeIssuer
from mpp.protocol.errors import ParseError, VerificationFailed
from mpp.protocol.headers import parse_receipt
from mpp.protocol.models import ChargeRequest, Credential

from test_evm_seller import PRICE, challenge_expiry, evm_shop, pay, quote, slug

P2_TYPES = (PERMIT2, AUTHORIZATION)


@pytest.fixture(scope="module")
def token(chain) -> EvmToken:
    return EvmToken(chain.token, chain.token_name, chain.token_version, 6)


def permit2_buyer(session: aiohttp.ClientSession, payer, chain, token) -> mpp.aio.PaymentClient:
    method = EvmBuyerMethod(account=payer, chain_id=chain.chain_id, tokens=[token], credential_type=PERMIT2)
    return mpp.aio.PaymentClient(session, [method], mpp.BuyerPolicy(max_amount=10 ** 9))


def permit(challenge, request, payer, chain_id: int, **changes: Any) -> dict[str, Any]:
    """A permit2 payload for the challenge signed by ``payer``; ``changes`` alter both what is signed and
    stated (amount, to, token, deadline, bound, nonce), or only what is signed (spender, domain_chain_id)."""
    amount, to = changes.get("amount", request.amount_int), changes.get("to", request.recipient)
    token, nonce = changes.get("token", request.currency), changes.get("nonce", int.from_bytes(keccak(text=challenge.id), "big"))
    deadline = changes.get("deadline", int(challenge_expiry(challenge).timestamp()))
    bound = changes.get("bound", challenge_hash(challenge.id, challenge.realm, BINDING_DRAFT))
    typed = permit2_typed_data(changes.get("domain_chain_id", chain_id), PERMIT2_ADDRESS, token=token, amount=amount,
                               spender=changes.get("spender", to), nonce=nonce, deadline=deadline, challenge=bound)
    signature = bytes(payer.sign_message(encode_typed_data(full_message=typed)).signature)
    return {"type": PERMIT2, "permit": {"permitted": [{"token": token, "amount": str(amount)}], "nonce": str(nonce),
                                        "deadline": str(deadline)},
            "transferDetails": [{"to": to, "requestedAmount": str(amount)}], "witness": {"challengeHash": "0x" + bound.hex()},
            "signature": "0x" + signature.hex()}


# -- the contract on the chain ---------------------------------------------------------------------


def test_the_checked_in_permit2_is_the_npm_code_with_one_word_zeroed(chain):
    """Permit2.json is the runtime code of @uniswap/v4-periphery@1.0.3 (its recorded SHA-256) with the cached
    chain id's PUSH32 immediate zeroed, MIT-licensed with its text; on the chain, DOMAIN_SEPARATOR() is the
    EIP-712 domain eth-account computes for Permit2 at the canonical address."""
    art = permit2_artifact()
    code = bytes.fromhex(art["runtimeCode"][2:])
    offset = art["patch"]["offset"]
    assert code[offset - 1] == 0x7F and code[offset:offset + 32] == bytes(32)  # PUSH32 0
    original = code[:offset] + bytes.fromhex(art["patch"]["from"][2:]) + code[offset + 32:]
    assert hashlib.sha256(original).hexdigest() == art["source"]["extractedSha256"]
    assert art["license"]["spdx"] == "MIT" and "Permission is hereby granted" in art["license"]["text"]
    assert chain.rpc("eth_getCode", PERMIT2_ADDRESS, "latest") == art["runtimeCode"]
    domain = encode_typed_data(full_message=permit2_typed_data(chain.chain_id, PERMIT2_ADDRESS, token=chain.token, amount=1,
                                                               spender=PERMIT2_ADDRESS, nonce=0, deadline=0, challenge=bytes(32)))
    assert bytes(chain.read("DOMAIN_SEPARATOR()", returns=["bytes32"], to=PERMIT2_ADDRESS)) == bytes(domain.header)


def test_the_witness_type_string_is_the_typed_data_the_buyer_signs():
    """EVM-PERMIT-02: Permit2 hashes the struct with the type string the seller sends: keccak of
    "PermitWitnessTransferFrom(TokenPermissions permitted,address spender,uint256 nonce,uint256 deadline,"
    + WITNESS_TYPE_STRING, and the witness keccak(typehash(PaymentWitness), challengeHash): that is the
    struct hash of the EIP-712 message a wallet signs."""
    token, spender, bound = "0x5FbDB2315678afecb367f032d93F642f64180aa3", Account.create().address, keccak(b"x")
    typehash = keccak(text="PermitWitnessTransferFrom(TokenPermissions permitted,address spender,uint256 nonce,"
                           "uint256 deadline," + WITNESS_TYPE_STRING)
    permissions = keccak(keccak(text="TokenPermissions(address token,uint256 amount)") + eth_abi.encode(["address", "uint256"], [token, 7]))
    expected = keccak(typehash + permissions + eth_abi.encode(["address", "uint256", "uint256"], [spender, 9, 11]) + witness_hash(bound))
    typed = permit2_typed_data(31337, PERMIT2_ADDRESS, token=token, amount=7, spender=spender, nonce=9, deadline=11, challenge=bound)
    assert bytes(encode_typed_data(full_message=typed).body) == expected


# -- paying -----------------------------------------------------------------------------------------


async def test_our_buyer_pays_our_seller_with_permit2(chain, token, tmp_path):
    """EVM-PERMIT-02, EVM-PERMIT-03: EVM-SET-01: the challenge offers permit2 and names Permit2; our buyer signs a permit, the
    seller (its spender) settles it with permitWitnessTransferFrom: 200, the token moved exactly, the
    receipt verifies and names the mined transaction. Replays move nothing: the same credential again
    (invalid-challenge), the same owner and nonce for another challenge (its replay key is claimed:
    verification-failed), or at another seller (the nonce is used in Permit2: invalid-challenge)."""
    payer = chain.new_payer(PRICE * 3, permit2=True)
    async with evm_shop(chain, token, tmp_path, credential_types=P2_TYPES) as shop, aiohttp.ClientSession() as session:
        challenge, request = await quote(session, shop.url())
        assert request.methodDetails["credentialTypes"][0] == PERMIT2 and request.methodDetails["permit2Address"] == PERMIT2_ADDRESS
        resp = await permit2_buyer(session, payer, chain, token).request("GET", shop.url())
        assert resp.status == 200 and json.loads(resp.body) == {"ok": True, "payer": payer.address}
        assert chain.balance_of(payer.address) == PRICE * 2 and chain.balance_of(shop.address) == PRICE
        receipt = parse_receipt(resp.headers["Payment-Receipt"])
        mined = chain.rpc("eth_getTransactionReceipt", receipt.reference)
        assert int(mined["status"], 16) == 1 and mined["to"].lower() == PERMIT2_ADDRESS.lower()
        assert mined["from"].lower() == shop.address.lower()
        assert resp.claims["account"] == payer.address and resp.claims["amount"] == str(PRICE)
        # replayed: the same credential (its challenge is used), then the same permit's nonce on a new challenge
        credential = permit(challenge, request, payer, chain.chain_id)
        status, _, _ = await pay(session, shop.url(), challenge, credential, did_pkh(chain.chain_id, payer.address))
        assert status == 200
        status, problem, _ = await pay(session, shop.url(), challenge, credential, did_pkh(chain.chain_id, payer.address))
        assert (status, slug(problem)) == (402, "invalid-challenge")
        again, request2 = await quote(session, shop.url())
        reused = permit(again, request2, payer, chain.chain_id, nonce=int(credential["permit"]["nonce"]))
        status, problem, _ = await pay(session, shop.url(), again, reused, did_pkh(chain.chain_id, payer.address))
        assert (status, slug(problem)) == (402, "verification-failed") and "another challenge" in problem["detail"]
        assert chain.balance_of(payer.address) == PRICE and chain.balance_of(shop.address) == PRICE * 2
    async with evm_shop(chain, token, tmp_path, credential_types=P2_TYPES) as other, aiohttp.ClientSession() as session:
        # another seller (its own store): the nonce is found used in Permit2's nonceBitmap before anything is consumed
        third, request3 = await quote(session, other.url())
        reused = permit(third, request3, payer, chain.chain_id, nonce=int(credential["permit"]["nonce"]))
        status, problem, _ = await pay(session, other.url(), third, reused, did_pkh(chain.chain_id, payer.address))
        assert (status, slug(problem)) == (402, "invalid-challenge") and "nonce" in problem["detail"]
        assert await other.store.get(third.id) is None and chain.balance_of(payer.address) == PRICE


ALTERED = {
    "another amount": lambda other, token: {"amount": PRICE + 1},
    "another recipient": lambda other, token: {"to": other},
    "another spender": lambda other, token: {"spender": other},
    "another token": lambda other, token: {"token": other},
    "another chain": lambda other, token: {"domain_chain_id": 1},
    "an expired deadline": lambda other, token: {"deadline": int(datetime.now(timezone.utc).timestamp()) - 5},
    "a deadline too far": lambda other, token: {"deadline": int(datetime.now(timezone.utc).timestamp()) + 86_400},
    "a wrong witness": lambda other, token: {"bound": keccak(b"another challenge")},
}


async def test_altered_permits_are_refused_and_nothing_moves(chain, token, tmp_path):
    """EVM-PERMIT-02: CORE-ERR-06: a permit for another amount, recipient, spender, token or chain, past its deadline or
    valid too long, or whose witness is not the challenge's hash, is refused offline (verification-failed,
    with a fresh challenge); nothing moves, and the same challenge is then paid with a correct permit."""
    payer = chain.new_payer(PRICE, permit2=True)
    other = Account.create().address
    source = did_pkh(chain.chain_id, payer.address)
    async with evm_shop(chain, token, tmp_path, credential_types=P2_TYPES) as shop, aiohttp.ClientSession() as session:
        challenge, request = await quote(session, shop.url())
        for case, change in ALTERED.items():
            bad = permit(challenge, request, payer, chain.chain_id, **change(other, token))
            status, problem, headers = await pay(session, shop.url(), challenge, bad, source)
            assert (status, slug(problem)) == (402, "verification-failed"), (case, problem)
            assert headers.getall("WWW-Authenticate") and chain.balance_of(shop.address) == 0, case
        status, body, _ = await pay(session, shop.url(), challenge, permit(challenge, request, payer, chain.chain_id), source)
        assert status == 200, body
        assert chain.balance_of(shop.address) == PRICE and chain.balance_of(payer.address) == 0


async def test_a_payer_without_the_permit2_approval_is_told_before_the_challenge_is_consumed(chain, token, tmp_path):
    """EVM-PERMIT-03: EVM-ERR-01: a payer that has not approved Permit2 on the token: 402 payment-insufficient whose detail
    names the approval, nothing moved, the challenge not consumed; once approved, the same credential pays."""
    payer = chain.new_payer(PRICE)
    async with evm_shop(chain, token, tmp_path, credential_types=P2_TYPES) as shop, aiohttp.ClientSession() as session:
        with pytest.raises(mpp.SellerRefused) as refused:
            await permit2_buyer(session, payer, chain, token).request("GET", shop.url())
        assert refused.value.status == 402 and refused.value.problem_type == "payment-insufficient"
        assert "approve Permit2" in refused.value.problem["detail"]
        challenge, request = await quote(session, shop.url())
        credential = permit(challenge, request, payer, chain.chain_id)
        status, problem, _ = await pay(session, shop.url(), challenge, credential, did_pkh(chain.chain_id, payer.address))
        assert (status, slug(problem)) == (402, "payment-insufficient") and "approve Permit2" in problem["detail"]
        assert await shop.store.get(challenge.id) is None and chain.balance_of(payer.address) == PRICE
        chain.approve_permit2(payer)
        status, _, _ = await pay(session, shop.url(), challenge, credential, did_pkh(chain.chain_id, payer.address))
        assert status == 200 and chain.balance_of(payer.address) == 0 and chain.balance_of(shop.address) == PRICE


async def test_a_seller_that_does_not_list_permit2_refuses_it(chain, token, tmp_path):
    """EVM-REQ-01: a seller not configured for permit2 neither offers it nor takes it; our permit2 buyer does not sign."""
    payer = chain.new_payer(PRICE, permit2=True)
    async with evm_shop(chain, token, tmp_path) as shop, aiohttp.ClientSession() as session:
        challenge, request = await quote(session, shop.url())
        assert PERMIT2 not in request.methodDetails["credentialTypes"] and "permit2Address" not in request.methodDetails
        status, problem, _ = await pay(session, shop.url(), challenge, permit(challenge, request, payer, chain.chain_id))
        assert (status, slug(problem)) == (402, "verification-failed")
        with pytest.raises(mpp.BuyerError):
            await permit2_buyer(session, payer, chain, token).request("GET", shop.url())
        assert chain.balance_of(payer.address) == PRICE


# -- the parser, property-based --------------------------------------------------------------------

TOKEN = EvmToken("0x5FbDB2315678afecb367f032d93F642f64180aa3", "MPP Test USD", "1")
SELLER, PAYER = Account.create(), Account.create()
hexstr = st.builds(lambda d: "0x" + d, st.text("0123456789abcdefABCDEF", max_size=140))
scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30),
                   st.integers(min_value=-3, max_value=2 ** 260).map(str), hexstr,
                   st.sampled_from([TOKEN.address, SELLER.address, SELLER.address.lower()]))
json_ish = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=10)
entry = st.fixed_dictionaries({}, optional={"token": json_ish, "amount": json_ish, "to": json_ish, "requestedAmount": json_ish})
payloads = st.fixed_dictionaries({"type": st.just(PERMIT2)}, optional={
    "permit": st.one_of(json_ish, st.fixed_dictionaries({}, optional={"permitted": st.one_of(json_ish, st.lists(entry, max_size=12)),
                                                                       "nonce": json_ish, "deadline": json_ish})),
    "transferDetails": st.one_of(json_ish, st.lists(entry, max_size=12)),
    "witness": st.one_of(json_ish, st.fixed_dictionaries({}, optional={"challengeHash": st.one_of(hexstr, json_ish)})),
    "signature": st.one_of(hexstr, json_ish),
})


@settings(max_examples=300, deadline=None)
@given(payloads)
def test_the_permit2_parser_refuses_with_verification_failed_only(payload):
    """EVM-PERMIT-01: CORE-ERR-11: whatever a permit2 payload holds, the parser answers VerificationFailed or typed fields."""
    try:
        fields = parse_payload(payload)
    except VerificationFailed:
        return
    assert fields == parse_permit2(payload) and len(fields["permitted"]) == len(fields["transferDetails"])


def _challenge(seller: EvmSellerMethod):
    return ChallengeIssuer(b"k" * 32, "evm.test").issue(
        method="evm", intent="charge", request=seller.request_for(amount=10, currency="usd", description=None),
        now=datetime.now(timezone.utc), digest=None, opaque={"resource": "GET /paid"})


@settings(max_examples=150, deadline=None)
@given(payloads)
def test_a_seller_verifying_any_permit2_payload_answers_verification_failed(payload):
    """EVM-PERMIT-01, EVM-PERMIT-02: the seller's whole offline check of an arbitrary permit2 payload is VerificationFailed
    or ParseError, never another exception (a signature that recovers to someone is refused by the source)."""
    seller = EvmSellerMethod(recipient=SELLER.address, chain_id=31337, tokens={"usd": TOKEN}, credential_types=P2_TYPES)
    challenge = _challenge(seller)
    try:
        seller.verify(Credential(challenge=challenge, payload=payload, source=did_pkh(31337, PAYER.address)),
                      ChargeRequest.from_challenge(challenge))
    except (VerificationFailed, ParseError):
        return
    raise AssertionError("an arbitrary payload verified")


def test_a_signed_permit_verifies_offline_and_its_replay_key_names_permit2():
    """EVM-PERMIT-02, EVM-PERMIT-03: EVM-SET-02: our buyer's permit verifies offline; the owner is the recovered signer, the
    replay key the chain, the Permit2 contract, the owner and the nonce."""
    seller = EvmSellerMethod(recipient=SELLER.address, chain_id=31337, tokens={"usd": TOKEN}, credential_types=P2_TYPES)
    challenge = _challenge(seller)
    request = ChargeRequest.from_challenge(challenge)
    buyer = EvmBuyerMethod(account=PAYER, chain_id=31337, tokens=[TOKEN], credential_type=PERMIT2)
    assert buyer.can_pay(challenge, request) is None
    payload, source = buyer.payload(challenge, request)
    payment = seller.verify(Credential(challenge=challenge, payload=payload, source=source), request)
    assert payment.payer == PAYER.address and payment.kind == PERMIT2 and payment.binding == BINDING_DRAFT
    nonce = int(payload["permit"]["nonce"])
    assert payment.replay_key == f"evm:31337:permit2:{PERMIT2_ADDRESS.lower()}:{PAYER.address.lower()}:{nonce}"
    assert sign_permit2(PAYER, chain_id=31337, permit2=PERMIT2_ADDRESS, token=TOKEN.address, amount=10, recipient=SELLER.address,
                        deadline=1, challenge=bytes(32))["permit"]["nonce"] != payload["permit"]["nonce"]  # random nonces
    with pytest.raises(VerificationFailed, match="payer's did:pkh"):  # signed by another key than the source names
        seller.verify(Credential(challenge=challenge, payload=payload, source=did_pkh(31337, SELLER.address)), request)
