"""The ``evm`` method's ``permit2`` credential (draft-evm-charge-00 §Permit2 Payload), wire side:
the payload, its EIP-712 ``PermitWitnessTransferFrom`` typed data, the seller's offline checks
and the buyer's signature. Single transfers only: a permit of more than one entry (splits) is
refused. Settlement (``permitWitnessTransferFrom``) is the rail's, :mod:`mpp.aio.evm_rail`.

The payer signs, over Permit2's EIP-712 domain (``name`` "Permit2", the chain id, the Permit2
contract as ``verifyingContract``; no ``version``)::

    PermitWitnessTransferFrom(TokenPermissions permitted,address spender,uint256 nonce,uint256 deadline,
                              PaymentWitness witness)
    TokenPermissions(address token,uint256 amount)
    PaymentWitness(bytes32 challengeHash)

- ``permitted`` is the challenge's token and amount; ``spender`` the address that calls Permit2
  (Permit2 takes it from ``msg.sender``). The draft names no spender and the request carries none:
  the seller submits the transfer, so the spender is the request's ``recipient``, which for our
  seller is the address of the key that settles (EVM-PERMIT-02).
- ``nonce`` is one of Permit2's unordered nonces (a bit in the owner's ``nonceBitmap``); the buyer
  picks a random uint256, so two permits never collide by chance. ``deadline`` is the challenge's
  expiry.
- ``witness.challengeHash`` binds the permit to the challenge, by the same rules as an EIP-3009
  nonce (:func:`mpp.methods.evm.fields.challenge_hash`, EVM-BIND-01).

The witness type string is ``PaymentWitness witness)PaymentWitness(bytes32 challengeHash)TokenPermissions(address token,uint256 amount)``
(the form of mpp-specs PR #313). The draft on main still states a ``PaymentWitness`` with an
``externalId`` member, and writes its type string with a space after the comma, which no EIP-712
encoder produces (EIP-712's ``encodeType`` has none), so a wallet's signature over it could never
verify; its own examples send a witness of ``challengeHash`` alone, as PR #313 does.

The payload has no owner member: the owner (the payer) is the address the signature recovers to,
and a ``did:pkh`` ``source``, if sent, must name it (the draft: "recovers to the source address").
"""

from __future__ import annotations

import secrets
from typing import Any, Mapping

import eth_abi
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address

from mpp.methods.evm.fields import challenge_hash, checksum, hex_field, recover_typed, uint_field
from mpp.protocol.errors import VerificationFailed

__all__ = ["PERMIT2", "PERMIT2_ADDRESS", "WITNESS_TYPE", "WITNESS_TYPE_STRING", "PERMIT_WITNESS_TRANSFER_FROM",
           "permit2_typed_data", "witness_hash", "nonce_position", "parse_permit2", "check_permit2", "sign_permit2",
           "settlement_call"]

PERMIT2 = "permit2"
"""The credential type (``payload.type``)."""
PERMIT2_ADDRESS = "0x000000000022D473030F116dDEE9F6B43aC78BA3"
"""Uniswap Permit2's canonical address (the same on every chain it is deployed on): ``permit2Address``'s default."""
WITNESS_TYPE = "PaymentWitness(bytes32 challengeHash)"
"""The witness struct's EIP-712 type: its hash, with the challenge hash, is the ``witness`` Permit2 is given."""
WITNESS_TYPE_STRING = ("PaymentWitness witness)PaymentWitness(bytes32 challengeHash)"
                       "TokenPermissions(address token,uint256 amount)")
"""The ``witnessTypeString`` argument of ``permitWitnessTransferFrom`` (PR #313 form; see the module's text)."""
PERMIT_WITNESS_TRANSFER_FROM = ("permitWitnessTransferFrom(((address,uint256),uint256,uint256),(address,uint256),"
                                "address,bytes32,string,bytes)")
"""The Permit2 function the seller calls to settle a single-transfer permit."""

_MAX_ENTRIES = 11  # the primary transfer and at most 10 splits (draft §Payment Splits)
_TYPES = {
    "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "chainId", "type": "uint256"},
                     {"name": "verifyingContract", "type": "address"}],
    "PermitWitnessTransferFrom": [{"name": "permitted", "type": "TokenPermissions"}, {"name": "spender", "type": "address"},
                                  {"name": "nonce", "type": "uint256"}, {"name": "deadline", "type": "uint256"},
                                  {"name": "witness", "type": "PaymentWitness"}],
    "TokenPermissions": [{"name": "token", "type": "address"}, {"name": "amount", "type": "uint256"}],
    "PaymentWitness": [{"name": "challengeHash", "type": "bytes32"}],
}


def permit2_typed_data(chain_id: int, permit2: str, *, token: str, amount: int, spender: str, nonce: int,
                       deadline: int, challenge: bytes) -> dict[str, Any]:
    """The EIP-712 message of a ``PermitWitnessTransferFrom`` of ``amount`` of ``token`` to ``spender``
    on the Permit2 contract ``permit2`` at ``chain_id``, its witness ``challenge`` (the challenge hash)."""
    return {
        "types": _TYPES,
        "primaryType": "PermitWitnessTransferFrom",
        "domain": {"name": "Permit2", "chainId": chain_id, "verifyingContract": permit2},
        "message": {"permitted": {"token": token, "amount": amount}, "spender": spender, "nonce": nonce,
                    "deadline": deadline, "witness": {"challengeHash": challenge}},
    }


def witness_hash(challenge: bytes) -> bytes:
    """``keccak256(abi.encode(keccak256(WITNESS_TYPE), challengeHash))``: the ``witness`` argument of
    ``permitWitnessTransferFrom`` (Permit2 hashes it into the signed struct)."""
    return keccak(keccak(text=WITNESS_TYPE) + challenge)


def nonce_position(nonce: int) -> tuple[int, int]:
    """(word, bit) of an unordered nonce in Permit2's ``nonceBitmap(owner, word)``: the nonce is used
    when that bit is set."""
    return nonce >> 8, nonce & 0xFF


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise VerificationFailed(f"evm payload {what} must be an object")
    return value


def _entries(value: Any, what: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or not 1 <= len(value) <= _MAX_ENTRIES:
        raise VerificationFailed(f"evm payload {what} must be an array of 1 to {_MAX_ENTRIES} objects")
    return [_object(entry, f"{what}[{i}]") for i, entry in enumerate(value)]


def parse_permit2(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A ``permit2`` payload's members, typed: ``permitted`` [(token, amount)], ``nonce``, ``deadline``,
    ``transferDetails`` [(to, requestedAmount)], ``challengeHash`` (32 bytes), ``signature`` (65
    bytes). VerificationFailed naming what is wrong (EVM-PERMIT-01). Judges shape only."""
    permit = _object(payload.get("permit"), "permit")
    permitted = [(checksum(e.get("token"), f"evm payload permit.permitted[{i}].token"),
                  uint_field(e.get("amount"), f"permit.permitted[{i}].amount"))
                 for i, e in enumerate(_entries(permit.get("permitted"), "permit.permitted"))]
    details = [(checksum(e.get("to"), f"evm payload transferDetails[{i}].to"),
                uint_field(e.get("requestedAmount"), f"transferDetails[{i}].requestedAmount"))
               for i, e in enumerate(_entries(payload.get("transferDetails"), "transferDetails"))]
    if len(details) != len(permitted):
        raise VerificationFailed("evm payload transferDetails must have as many entries as permit.permitted")
    witness = _object(payload.get("witness"), "witness")
    return {
        "type": PERMIT2,
        "permitted": permitted,
        "nonce": uint_field(permit.get("nonce"), "permit.nonce"),
        "deadline": uint_field(permit.get("deadline"), "permit.deadline"),
        "transferDetails": details,
        "challengeHash": hex_field(witness.get("challengeHash"), "witness.challengeHash", 32),
        "signature": hex_field(payload.get("signature"), "signature", 65),
    }


def check_permit2(f: Mapping[str, Any], *, challenge_id: str, realm: str, chain_id: int, permit2: str, token: str,
                  amount: int, recipient: str, bindings: tuple[str, ...], now: int, latest_deadline: int) -> tuple[str, str]:
    """The seller's offline checks of a parsed permit against its challenge (EVM-PERMIT-02): one entry, of
    the challenge's token and amount, to its recipient; the witness is the challenge hash under one of
    ``bindings``; ``now`` < ``deadline`` ≤ ``latest_deadline``; the signature (the spender being
    ``recipient``) recovers. (the owner, the binding rule matched); VerificationFailed naming the first
    check that fails."""
    if len(f["permitted"]) != 1:
        raise VerificationFailed("evm permit2 with more than one transfer (splits) is not accepted here")
    (permitted_token, permitted_amount), (to, requested) = f["permitted"][0], f["transferDetails"][0]
    if permitted_token != token:
        raise VerificationFailed("evm permit2 permits another token than the challenge's currency")
    if permitted_amount != amount or requested != amount:
        raise VerificationFailed("evm permit2 amount is not the challenge's amount")
    if to != recipient:
        raise VerificationFailed("evm permit2 transferDetails[0].to is not the challenge's recipient")
    binding = next((rule for rule in bindings if challenge_hash(challenge_id, realm, rule) == f["challengeHash"]), None)
    if binding is None:
        raise VerificationFailed("evm permit2 witness challengeHash is not this challenge's hash")
    if f["deadline"] <= now:
        raise VerificationFailed("evm permit2 has expired (its deadline has passed)")
    if f["deadline"] > latest_deadline:
        raise VerificationFailed("evm permit2 stays valid too long after the challenge expires")
    typed = permit2_typed_data(chain_id, permit2, token=token, amount=amount, spender=recipient, nonce=f["nonce"],
                               deadline=f["deadline"], challenge=f["challengeHash"])
    return recover_typed(typed, f["signature"], "permit2"), binding


def sign_permit2(account: Any, *, chain_id: int, permit2: str, token: str, amount: int, recipient: str, deadline: int,
                 challenge: bytes, nonce: int | None = None) -> dict[str, Any]:
    """A ``permit2`` payload paying ``amount`` of ``token`` to ``recipient`` (also the spender), signed by
    ``account`` (an eth-account ``LocalAccount``); ``nonce`` a fresh random uint256 unless given."""
    nonce = secrets.randbits(256) if nonce is None else nonce
    typed = permit2_typed_data(chain_id, permit2, token=token, amount=amount, spender=recipient, nonce=nonce,
                               deadline=deadline, challenge=challenge)
    signed = account.sign_message(encode_typed_data(full_message=typed))
    signature = signed.signature if isinstance(signed.signature, bytes) else bytes(signed.signature)
    return {
        "type": PERMIT2,
        "permit": {"permitted": [{"token": to_checksum_address(token), "amount": str(amount)}], "nonce": str(nonce),
                   "deadline": str(deadline)},
        "transferDetails": [{"to": to_checksum_address(recipient), "requestedAmount": str(amount)}],
        "witness": {"challengeHash": "0x" + challenge.hex()},
        "signature": "0x" + signature.hex(),
    }


def settlement_call(token: str, amount: int, nonce: int, deadline: int, recipient: str, owner: str, challenge: bytes,
                    signature: bytes) -> str:
    """``permitWitnessTransferFrom(((token, amount), nonce, deadline), (recipient, amount), owner, witness,
    WITNESS_TYPE_STRING, signature)``, ABI-encoded, ``0x``-hex."""
    args = eth_abi.encode(["((address,uint256),uint256,uint256)", "(address,uint256)", "address", "bytes32", "string", "bytes"],
                          [((token, amount), nonce, deadline), (recipient, amount), owner, witness_hash(challenge),
                           WITNESS_TYPE_STRING, signature])
    return "0x" + (keccak(text=PERMIT_WITNESS_TRANSFER_FROM)[:4] + args).hex()
