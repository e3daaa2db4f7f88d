"""The ``evm`` method's wire building blocks, shared by its credential types
(:mod:`mpp.methods.evm.charge`, :mod:`mpp.methods.evm.permit2`): addresses, uint256 and hex members
of a payload, the challenge-binding rules, and EIP-712 signature recovery.

Every check raises VerificationFailed naming the member (the seller answers ``verification-failed``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import is_hex_address, keccak, to_checksum_address

from mpp.protocol.errors import VerificationFailed

__all__ = ["BINDING_DRAFT", "BINDING_JSON", "BINDINGS", "MAX_UINT256", "checksum", "did_pkh", "challenge_hash",
           "uint_field", "hex_field", "recover_typed"]

BINDING_DRAFT = "draft"
"""Challenge hash ``keccak256(utf8(id) || utf8(realm))``: the draft's ``abi.encodePacked(id, realm)``, mppx 0.11.0."""
BINDING_JSON = "json"
"""Challenge hash ``keccak256(utf8(JSON.stringify([id, realm])))``: pympp 0.16.0."""
BINDINGS = (BINDING_DRAFT, BINDING_JSON)
"""Every challenge-binding rule, the draft's first (the default)."""
MAX_UINT256 = 2**256 - 1
"""The largest uint256: amounts, nonces and times above it are refused."""

_HEX = re.compile(r"0x[0-9a-fA-F]*")
_UINT = re.compile(r"(0|[1-9][0-9]{0,77})")
_SECP256K1_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0


def checksum(address: Any, what: str = "address") -> str:
    """``address`` (0x and 40 hex digits, any case) in EIP-55 form; VerificationFailed otherwise.
    Addresses are compared by their 20 bytes, so in this form (draft: "compare by decoded value")."""
    if not isinstance(address, str) or not is_hex_address(address) or not address.startswith("0x"):
        raise VerificationFailed(f"{what} is not a 0x-prefixed 20-byte hex address")
    return to_checksum_address(address)


def did_pkh(chain_id: int, address: str) -> str:
    """The payer's DID as the draft suggests for ``source``: ``did:pkh:eip155:<chainId>:<EIP-55 address>``."""
    return f"did:pkh:eip155:{chain_id}:{to_checksum_address(address)}"


def challenge_hash(challenge_id: str, realm: str, rule: str = BINDING_DRAFT) -> bytes:
    """The 32 bytes that bind a payment to one challenge, by ``rule`` (EVM-BIND-01): an EIP-3009
    authorization's ``nonce``, a permit2 witness's ``challengeHash``."""
    if rule == BINDING_DRAFT:
        return keccak((challenge_id + realm).encode("utf-8"))
    if rule == BINDING_JSON:
        return keccak(json.dumps([challenge_id, realm], separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    raise ValueError(f"unknown challenge-binding rule {rule!r}; one of {', '.join(BINDINGS)}")


def uint_field(value: Any, what: str) -> int:
    """A payload member that must be the decimal string of a uint256 (no sign, no leading zero), as an int."""
    if not isinstance(value, str) or _UINT.fullmatch(value) is None or int(value) > MAX_UINT256:
        raise VerificationFailed(f"evm payload {what} must be a decimal string of a uint256")
    return int(value)


def hex_field(value: Any, what: str, length: int | None = None) -> bytes:
    """A payload member that must be ``0x``-prefixed hex (of ``length`` bytes if given), as bytes."""
    if not isinstance(value, str) or _HEX.fullmatch(value) is None or len(value) % 2:
        raise VerificationFailed(f"evm payload {what} must be 0x-prefixed hex")
    raw = bytes.fromhex(value[2:])
    if length is not None and len(raw) != length:
        raise VerificationFailed(f"evm payload {what} must be {length} bytes")
    return raw


def recover_typed(typed: dict[str, Any], signature: bytes, what: str = "authorization") -> str:
    """The EIP-55 address whose key signed the EIP-712 message ``typed`` with ``signature`` (65 bytes,
    r ‖ s ‖ v); VerificationFailed for a ``v`` other than 27 or 28, an ``s`` in the upper half of the
    curve order (a malleated signature), or a signature that does not recover."""
    if signature[64] not in (27, 28):
        raise VerificationFailed(f"evm {what} signature has a v other than 27 or 28")
    if int.from_bytes(signature[32:64], "big") > _SECP256K1_HALF_N:
        raise VerificationFailed(f"evm {what} signature is not in low-s form")
    try:
        return Account.recover_message(encode_typed_data(full_message=typed), signature=signature)
    except Exception as exc:  # noqa: BLE001 - any failure to recover is a signature that does not verify
        raise VerificationFailed(f"evm {what} signature does not recover") from exc
