"""The throwaway local EVM chain (mpp.methods.evm.devchain) and its test token (TestToken.sol): the
chain starts, deploys the token and stops; the token is an ERC-20 whose EIP-3009 authorizations,
signed with eth-account's EIP-712 signing, move tokens once, and only when signed by the payer,
in their validity window, with a canonical signature. On the real anvil: no mocks."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address

from conftest import REPO
from mpp.methods.evm import devchain
from mpp.methods.evm.devchain import ChainUnavailable, RpcError, throwaway_chain, token_artifact

SOURCE = REPO / "mpp" / "methods" / "evm" / "contracts" / "TestToken.sol"
FIELDS = [{"name": "from", "type": "address"}, {"name": "to", "type": "address"},
          {"name": "value", "type": "uint256"}, {"name": "validAfter", "type": "uint256"},
          {"name": "validBefore", "type": "uint256"}, {"name": "nonce", "type": "bytes32"}]
AUTH_ARGS = "address,address,uint256,uint256,uint256,bytes32"
TRANSFER_VRS = f"transferWithAuthorization({AUTH_ARGS},uint8,bytes32,bytes32)"
TRANSFER_BYTES = f"transferWithAuthorization({AUTH_ARGS},bytes)"
RECEIVE_VRS = f"receiveWithAuthorization({AUTH_ARGS},uint8,bytes32,bytes32)"
CANCEL_VRS = "cancelAuthorization(address,bytes32,uint8,bytes32,bytes32)"
# secp256k1's group order: s and n - s are the two signatures of one message (EIP-2 keeps the low one)
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
ONE_TOKEN = 10 ** devchain.DECIMALS


def authorize(chain, payer, to: str, value: int, *, signer=None, valid_after: int = 0, valid_before: int | None = None,
              primary: str = "TransferWithAuthorization") -> tuple[list, object]:
    """An EIP-3009 authorization from ``payer`` (signed by ``signer``, the payer unless told): the
    call's first six arguments and eth-account's signed message (v, r, s, signature)."""
    message = {"from": payer.address, "to": to_checksum_address(to), "value": value, "validAfter": valid_after,
               "validBefore": valid_before if valid_before is not None else chain.latest_timestamp() + 3600,
               "nonce": os.urandom(32)}
    signed = Account.sign_typed_data((signer or payer).key, chain.eip712_domain, {primary: FIELDS}, message)
    return [message[f["name"]] for f in FIELDS], signed


def vrs(signed) -> list:
    return [signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")]


@pytest.fixture
def relayer(chain):
    """A fresh key with ether and no tokens: submits authorizations it is not party to."""
    return chain.new_payer(wei=10 ** 18)


def test_the_artifact_is_built_from_the_checked_in_source():
    """TestToken.json records the SHA-256 of the TestToken.sol it was compiled from: an edited
    source without a rebuild (python tools/build_token.py) fails here."""
    artifact = token_artifact()
    assert artifact["sourceSha256"] == hashlib.sha256(SOURCE.read_bytes()).hexdigest(), \
        "TestToken.sol changed since TestToken.json was built: run python tools/build_token.py"
    assert artifact["compiler"].startswith("solc-js ") and artifact["bytecode"].startswith("0x6")
    names = {entry.get("name") for entry in artifact["abi"]}
    assert {"transferWithAuthorization", "receiveWithAuthorization", "cancelAuthorization", "authorizationState",
            "DOMAIN_SEPARATOR", "AuthorizationUsed", "AuthorizationCanceled", "mint", "transferFrom"} <= names


def test_the_token_is_deployed_with_its_eip712_domain(chain):
    assert chain.rpc("eth_getCode", chain.token, "latest") not in ("0x", "")
    assert chain.read("name()", returns=["string"]) == chain.token_name
    assert chain.read("symbol()", returns=["string"]) == chain.token_symbol
    assert chain.read("version()", returns=["string"]) == chain.token_version
    assert chain.read("decimals()", returns=["uint8"]) == devchain.DECIMALS
    assert chain.read("owner()", returns=["address"]) == chain.deployer
    # eth-account's EIP-712 domain separator for the domain the chain reports is the contract's
    signable = encode_typed_data(chain.eip712_domain, {"CancelAuthorization": FIELDS[:1]}, {"from": chain.deployer})
    assert chain.read("DOMAIN_SEPARATOR()", returns=["bytes32"]) == signable.header
    fields, name, version, chain_id, contract, _salt, _ext = chain.read(
        "eip712Domain()", returns=["bytes1", "string", "string", "uint256", "address", "bytes32", "uint256[]"])
    assert (name, version, chain_id, contract) == (chain.token_name, chain.token_version, chain.chain_id, chain.token)
    for typehash, text in [("TRANSFER_WITH_AUTHORIZATION_TYPEHASH", "TransferWithAuthorization"),
                           ("RECEIVE_WITH_AUTHORIZATION_TYPEHASH", "ReceiveWithAuthorization")]:
        expected = keccak(text=f"{text}(" + ",".join(f"{f['type']} {f['name']}" for f in FIELDS) + ")")
        assert chain.read(f"{typehash}()", returns=["bytes32"]) == expected
    assert chain.read("CANCEL_AUTHORIZATION_TYPEHASH()", returns=["bytes32"]) == \
        keccak(text="CancelAuthorization(address authorizer,bytes32 nonce)")


def test_mint_is_the_owners_alone(chain, relayer):
    payer = chain.new_payer(3 * ONE_TOKEN)
    supply = chain.read("totalSupply()", returns=["uint256"])
    assert chain.balance_of(payer.address) == 3 * ONE_TOKEN
    chain.mint(payer.address, 2)
    assert chain.balance_of(payer.address) == 3 * ONE_TOKEN + 2
    assert chain.read("totalSupply()", returns=["uint256"]) == supply + 2
    with pytest.raises(RpcError, match="caller is not the owner"):
        chain.transact("mint(address,uint256)", relayer.address, 1, sender=relayer)
    assert chain.balance_of(relayer.address) == 0


def test_erc20_transfer_approve_transfer_from(chain, relayer):
    holder = chain.new_payer(10 * ONE_TOKEN, wei=10 ** 18)
    payee = Account.create()
    receipt = chain.transact("transfer(address,uint256)", payee.address, ONE_TOKEN, sender=holder)
    assert receipt["logs"][0]["topics"][0] == "0x" + keccak(text="Transfer(address,address,uint256)").hex()
    chain.transact("approve(address,uint256)", relayer.address, 2 * ONE_TOKEN, sender=holder)
    assert chain.read("allowance(address,address)", holder.address, relayer.address, returns=["uint256"]) == 2 * ONE_TOKEN
    chain.transact("transferFrom(address,address,uint256)", holder.address, payee.address, 2 * ONE_TOKEN, sender=relayer)
    with pytest.raises(RpcError, match="exceeds allowance"):
        chain.transact("transferFrom(address,address,uint256)", holder.address, payee.address, 1, sender=relayer)
    with pytest.raises(RpcError, match="exceeds balance"):
        chain.transact("transfer(address,uint256)", payee.address, 8 * ONE_TOKEN, sender=holder)
    assert (chain.balance_of(holder.address), chain.balance_of(payee.address)) == (7 * ONE_TOKEN, 3 * ONE_TOKEN)


def test_transfer_with_authorization_moves_tokens_once(chain, relayer):
    """A payer with no ether signs; a relayer submits (a transaction signed with eth-account); the
    tokens move, the nonce is used, and the same authorization again is refused."""
    payer, payee = chain.new_payer(5 * ONE_TOKEN), Account.create()
    args, signed = authorize(chain, payer, payee.address, 2 * ONE_TOKEN)
    nonce = args[-1]
    assert chain.authorization_state(payer.address, nonce) is False
    receipt = chain.transact(TRANSFER_VRS, *args, *vrs(signed), sender=relayer)
    assert (chain.balance_of(payer.address), chain.balance_of(payee.address)) == (3 * ONE_TOKEN, 2 * ONE_TOKEN)
    assert chain.authorization_state(payer.address, nonce) is True
    used = [log for log in receipt["logs"] if log["topics"][0] == "0x" + keccak(text="AuthorizationUsed(address,bytes32)").hex()]
    assert len(used) == 1 and used[0]["topics"][2] == "0x" + nonce.hex()
    assert to_checksum_address("0x" + used[0]["topics"][1][-40:]) == payer.address
    assert int(chain.rpc("eth_getBalance", payer.address, "latest"), 16) == 0  # the payer paid no gas
    with pytest.raises(RpcError, match="authorization is used or canceled"):
        chain.transact(TRANSFER_VRS, *args, *vrs(signed), sender=relayer)
    assert (chain.balance_of(payer.address), chain.balance_of(payee.address)) == (3 * ONE_TOKEN, 2 * ONE_TOKEN)


def test_the_65_byte_signature_overload(chain, relayer):
    payer, payee = chain.new_payer(ONE_TOKEN), Account.create()
    args, signed = authorize(chain, payer, payee.address, ONE_TOKEN)
    assert len(signed.signature) == 65
    chain.transact(TRANSFER_BYTES, *args, bytes(signed.signature), sender=relayer)
    assert chain.balance_of(payee.address) == ONE_TOKEN
    with pytest.raises(RpcError, match="used or canceled"):
        chain.transact(TRANSFER_BYTES, *args, bytes(signed.signature), sender=relayer)
    args, signed = authorize(chain, payer, payee.address, 0)
    with pytest.raises(RpcError, match="invalid signature length"):
        chain.transact(TRANSFER_BYTES, *args, bytes(signed.signature)[:64], sender=relayer)


def test_outside_its_validity_window_an_authorization_is_refused(chain, relayer):
    payer, payee = chain.new_payer(ONE_TOKEN), Account.create()
    now = chain.latest_timestamp()
    expired, signed = authorize(chain, payer, payee.address, ONE_TOKEN, valid_before=now)
    with pytest.raises(RpcError, match="authorization is expired"):
        chain.transact(TRANSFER_VRS, *expired, *vrs(signed), sender=relayer)
    early, signed = authorize(chain, payer, payee.address, ONE_TOKEN, valid_after=now + 3600)
    with pytest.raises(RpcError, match="authorization is not yet valid"):
        chain.transact(TRANSFER_VRS, *early, *vrs(signed), sender=relayer)
    assert chain.balance_of(payee.address) == 0
    assert not chain.authorization_state(payer.address, expired[-1]) and not chain.authorization_state(payer.address, early[-1])


def test_only_the_payers_signature_over_these_terms_moves_tokens(chain, relayer):
    payer, payee, thief = chain.new_payer(ONE_TOKEN), Account.create(), Account.create()
    forged, signed = authorize(chain, payer, payee.address, ONE_TOKEN, signer=thief)
    with pytest.raises(RpcError, match="invalid signature"):
        chain.transact(TRANSFER_VRS, *forged, *vrs(signed), sender=relayer)
    args, signed = authorize(chain, payer, payee.address, ONE_TOKEN // 2)
    for changed in ([args[0], args[1], ONE_TOKEN, *args[3:]], [args[0], thief.address, *args[2:]]):
        with pytest.raises(RpcError, match="invalid signature"):
            chain.transact(TRANSFER_VRS, *changed, *vrs(signed), sender=relayer)
    # signed for another chain id: not this domain
    other, _ = authorize(chain, payer, payee.address, ONE_TOKEN)
    message = dict(zip([f["name"] for f in FIELDS], other))
    elsewhere = Account.sign_typed_data(payer.key, {**chain.eip712_domain, "chainId": chain.chain_id + 1},
                                        {"TransferWithAuthorization": FIELDS}, message)
    with pytest.raises(RpcError, match="invalid signature"):
        chain.transact(TRANSFER_VRS, *other, *vrs(elsewhere), sender=relayer)
    assert chain.balance_of(payer.address) == ONE_TOKEN


def test_a_malleable_or_malformed_signature_is_refused(chain, relayer):
    """The twin (v', n - s) of a valid signature recovers the same signer: refused all the same,
    as is a v other than 27 or 28."""
    payer, payee = chain.new_payer(ONE_TOKEN), Account.create()
    args, signed = authorize(chain, payer, payee.address, ONE_TOKEN)
    twin = [55 - signed.v, signed.r.to_bytes(32, "big"), (SECP256K1_N - signed.s).to_bytes(32, "big")]
    with pytest.raises(RpcError, match="invalid signature 's' value"):
        chain.transact(TRANSFER_VRS, *args, *twin, sender=relayer)
    with pytest.raises(RpcError, match="invalid signature 'v' value"):
        chain.transact(TRANSFER_VRS, *args, signed.v - 27, *vrs(signed)[1:], sender=relayer)
    chain.transact(TRANSFER_VRS, *args, *vrs(signed), sender=relayer)
    assert chain.balance_of(payee.address) == ONE_TOKEN


def test_receive_with_authorization_is_for_the_payee_to_submit(chain, relayer):
    payer, payee = chain.new_payer(ONE_TOKEN), chain.new_payer(wei=10 ** 18)
    args, signed = authorize(chain, payer, payee.address, ONE_TOKEN, primary="ReceiveWithAuthorization")
    with pytest.raises(RpcError, match="caller must be the payee"):
        chain.transact(RECEIVE_VRS, *args, *vrs(signed), sender=relayer)
    # a receive authorization is not a transfer authorization (another type hash)
    with pytest.raises(RpcError, match="invalid signature"):
        chain.transact(TRANSFER_VRS, *args, *vrs(signed), sender=relayer)
    chain.transact(RECEIVE_VRS, *args, *vrs(signed), sender=payee)
    assert chain.balance_of(payee.address) == ONE_TOKEN and chain.authorization_state(payer.address, args[-1])


def test_a_canceled_authorization_moves_nothing(chain, relayer):
    payer, payee = chain.new_payer(ONE_TOKEN), Account.create()
    args, signed = authorize(chain, payer, payee.address, ONE_TOKEN)
    nonce = args[-1]
    cancel = Account.sign_typed_data(payer.key, chain.eip712_domain,
                                     {"CancelAuthorization": [{"name": "authorizer", "type": "address"},
                                                              {"name": "nonce", "type": "bytes32"}]},
                                     {"authorizer": payer.address, "nonce": nonce})
    with pytest.raises(RpcError, match="invalid signature"):
        chain.transact(CANCEL_VRS, relayer.address, nonce, *vrs(cancel), sender=relayer)
    receipt = chain.transact(CANCEL_VRS, payer.address, nonce, *vrs(cancel), sender=relayer)
    assert receipt["logs"][0]["topics"][0] == "0x" + keccak(text="AuthorizationCanceled(address,bytes32)").hex()
    assert chain.authorization_state(payer.address, nonce)
    with pytest.raises(RpcError, match="used or canceled"):
        chain.transact(TRANSFER_VRS, *args, *vrs(signed), sender=relayer)
    assert chain.balance_of(payer.address) == ONE_TOKEN


def test_missing_anvil_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("MPP_ANVIL", str(tmp_path / "no-anvil"))
    with pytest.raises(ChainUnavailable, match=r"MPP_ANVIL=.*make anvil"):
        with throwaway_chain():
            pass
    monkeypatch.delenv("MPP_ANVIL")
    monkeypatch.setattr(devchain, "_LOCAL_ANVIL", tmp_path / "no-anvil")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ChainUnavailable, match=r"not installed.*make anvil"):
        devchain.find_anvil()


def test_an_anvil_that_cannot_start_says_why_and_leaves_nothing():
    before = set(Path(tempfile.gettempdir()).glob("mpp-anvil-*"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ChainUnavailable, match=r"exited \(code \d+\).*last lines") as failed:
            with throwaway_chain(port=taken.getsockname()[1]):
                pass
    assert "Address already in use" in str(failed.value), failed.value
    assert set(Path(tempfile.gettempdir()).glob("mpp-anvil-*")) <= before


def test_the_chain_stops_at_exit_also_on_an_error():
    with pytest.raises(KeyError):
        with throwaway_chain() as dev:
            url = dev.rpc_url
            assert int(dev.rpc("eth_chainId"), 16) == devchain.CHAIN_ID
            raise KeyError("boom")
    with pytest.raises(ChainUnavailable, match="does not answer"):
        devchain.DevChain(url, devchain.CHAIN_ID).rpc("eth_chainId")


def test_cli_prints_the_rpc_url_and_token_and_stops_on_sigterm():
    proc = subprocess.Popen([sys.executable, "-m", "mpp.methods.evm.devchain"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None
        url, about = proc.stdout.readline().strip(), proc.stdout.readline()
        assert url.startswith("http://127.0.0.1:"), url
        dev = devchain.DevChain(url, devchain.CHAIN_ID)
        assert int(dev.rpc("eth_chainId"), 16) == devchain.CHAIN_ID
        token = to_checksum_address(about.split("token ")[1].split()[0])
        assert dev.read("decimals()", returns=["uint8"], to=token) == devchain.DECIMALS
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    with pytest.raises(ChainUnavailable):
        dev.rpc("eth_chainId")
