"""``--pay-with evm:FILE`` (conformance/mpp_conformance/paying.py, EvmPayer): the payer file is
read strictly with messages that never carry the key, and the credential it makes for an ``evm``
charge challenge is an EIP-3009 authorization our own seller method accepts (EVM-AUTH-01 to
EVM-AUTH-05) under the binding rule the file names (EVM-BIND-01)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from eth_account import Account

from mpp import ChallengeIssuer, ChargeRequest, parse_credential
from mpp.methods.evm.charge import BINDING_DRAFT, BINDING_JSON, EvmSellerMethod, EvmToken
from mpp_conformance.paying import CannotPay, EvmPayer, payer_from_spec

TOKEN = EvmToken("0x5fbdb2315678afecb367f032d93f642f64180aa3", "Test Dollar", "1", 6)
SELLER = Account.create()
KEY = "0x" + "11" * 32


def _payer_file(tmp_path: Path, **overrides) -> Path:
    doc = {"privateKey": KEY, "chainId": 31337, "binding": BINDING_DRAFT,
           "tokens": [{"address": TOKEN.address, "name": TOKEN.name, "version": TOKEN.version, "decimals": 6}]}
    doc.update(overrides)
    path = tmp_path / "payer.json"
    path.write_text(json.dumps(doc))
    return path


def _challenge(method: EvmSellerMethod, amount: int = 500):
    issuer = ChallengeIssuer(realm="shop.test", secret=b"k" * 32)
    return issuer.issue(method="evm", intent="charge", request=method.request_for(amount=amount, currency="usd", description=None),
                        now=datetime.now(timezone.utc))


@pytest.mark.parametrize("binding", [BINDING_DRAFT, BINDING_JSON])
def test_the_evm_payer_signs_an_authorization_our_seller_accepts(tmp_path: Path, binding: str):
    seller = EvmSellerMethod(recipient=SELLER.address, chain_id=31337, tokens={"usd": TOKEN}, bindings=(binding,))
    payer = payer_from_spec(f"evm:{_payer_file(tmp_path, binding=binding)}", max_amount=1_000)
    assert isinstance(payer, EvmPayer) and Account.from_key(KEY).address in payer.description and KEY not in payer.description
    challenge = _challenge(seller)
    assert payer.choose([challenge]) is challenge
    credential = parse_credential(payer.authorize(challenge))
    paid = seller.verify(credential, ChargeRequest.from_challenge(challenge))
    assert (paid.kind, paid.payer, paid.amount, paid.binding) == ("authorization", Account.from_key(KEY).address, 500, binding)
    with pytest.raises(CannotPay, match="exceeds --max-amount 1000"):
        payer.authorize(_challenge(seller, 5_000))


@pytest.mark.parametrize("change, message", [
    ({"chainId": 0}, "chainId must be a positive integer"),
    ({"binding": "nope"}, "binding must be one of draft, json"),
    ({"tokens": []}, "tokens must be a non-empty list"),
    ({"tokens": [{"address": "0x12", "name": "x", "version": "1"}]}, "a token or the private key is not valid"),
    ({"privateKey": "0x" + "zz" * 32}, "a token or the private key is not valid"),
])
def test_a_bad_payer_file_is_refused_without_the_key(tmp_path: Path, change: dict, message: str):
    with pytest.raises(ValueError, match=message) as caught:
        payer_from_spec(f"evm:{_payer_file(tmp_path, **change)}")
    assert KEY not in str(caught.value) and "zz" * 8 not in str(caught.value)


def test_an_unreadable_payer_file_is_named(tmp_path: Path):
    with pytest.raises(ValueError, match=r"--pay-with evm:.*missing.json: cannot read the payer file"):
        payer_from_spec(f"evm:{tmp_path / 'missing.json'}")
