"""The ``evm`` method, ``charge`` intent (draft-evm-charge-00), wire side: the challenge's request,
the credential's payload, and the checks a seller makes offline before it settles.

A charge is an ERC-20 transfer on one EVM chain. The request names the token (``currency``, its
address), the amount in the token's base units, the ``recipient`` address, and in
``methodDetails`` the ``chainId`` and the ``credentialTypes`` the seller accepts (with ``permit2``,
also ``permit2Address``). The credential types built here:

``authorization``
    The payer signs an EIP-3009 ``TransferWithAuthorization`` (EIP-712 typed data over the token's
    domain); the seller submits it to the token, paying gas. Its ``nonce`` binds it to the
    challenge (``challengeHash``), so it pays for this challenge only, and the token spends each
    nonce once.
``transaction``
    The payer signs a whole EIP-1559 transaction calling the token's ``transfer(recipient,
    amount)``; the seller broadcasts it. The payer pays gas. No challenge binding: the seller's
    store claims the transaction's hash, so one transaction pays one challenge.
``permit2``
    The payer signs a Permit2 ``PermitWitnessTransferFrom`` (single transfer, the challenge hash as
    witness); the seller, its spender, submits it to Permit2, paying gas. Parsing, typed data, the
    offline checks and signing are :mod:`mpp.methods.evm.permit2`'s; a seller accepts it only when
    configured.

``hash`` (the payer broadcasts and presents the hash) is parsed but refused by the seller method
unless configured. Splits are not paid.

The challenge hash has two readings in the field: the draft's
``keccak256(abi.encodePacked(id, realm))`` (the UTF-8 bytes of id then realm; mppx 0.11.0) and
``keccak256(JSON [id, realm])`` (pympp 0.16.0). A seller accepts the rules it is configured with
(the draft's by default); a buyer signs with one (the draft's by default). EVM-BIND-01.

Signatures, recovery, typed data, RLP and Keccak come from eth-account and eth-utils; nothing
here touches the network (settlement is the rail's, :mod:`mpp.aio.evm_rail`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

import eth_abi
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.typed_transactions import TypedTransaction
from eth_utils import is_hex_address, keccak, to_checksum_address
from hexbytes import HexBytes

from mpp.methods.evm.fields import (BINDING_DRAFT, BINDING_JSON, BINDINGS, MAX_UINT256 as _MAX_UINT256, challenge_hash, checksum,
                                    did_pkh, hex_field as _hex_bytes, recover_typed as _recover, uint_field as _uint)
from mpp.methods.evm.permit2 import PERMIT2, PERMIT2_ADDRESS, check_permit2, parse_permit2, sign_permit2
from mpp.protocol.errors import ParseError, VerificationFailed
from mpp.protocol.models import Challenge, ChargeRequest, Credential

__all__ = [
    "METHOD",
    "AUTHORIZATION",
    "TRANSACTION",
    "HASH",
    "PERMIT2",
    "PERMIT2_ADDRESS",
    "BINDING_DRAFT",
    "BINDING_JSON",
    "BINDINGS",
    "TRANSFER_SELECTOR",
    "TRANSFER_EVENT",
    "EvmToken",
    "EvmRequest",
    "EvmPayment",
    "challenge_hash",
    "checksum",
    "did_pkh",
    "parse_evm_request",
    "parse_payload",
    "authorization_typed_data",
    "transaction_fields",
    "EvmSellerMethod",
    "EvmBuyerMethod",
]

METHOD = "evm"
"""The payment method's name on the wire."""
AUTHORIZATION, TRANSACTION, HASH = "authorization", "transaction", "hash"
"""The credential types built here (``payload.type``), with ``permit2`` (:mod:`mpp.methods.evm.permit2`)."""
CREDENTIAL_TYPES = (AUTHORIZATION, TRANSACTION, HASH, PERMIT2)
TRANSFER_SELECTOR = bytes.fromhex("a9059cbb")
"""``transfer(address,uint256)``: the call a ``transaction`` credential must make."""
TRANSFER_EVENT = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
"""The topic of ERC-20's ``Transfer`` event: settlement checks the receipt's log against the challenge."""

_TYPES = {
    "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                     {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}],
    "TransferWithAuthorization": [{"name": "from", "type": "address"}, {"name": "to", "type": "address"},
                                  {"name": "value", "type": "uint256"}, {"name": "validAfter", "type": "uint256"},
                                  {"name": "validBefore", "type": "uint256"}, {"name": "nonce", "type": "bytes32"}],
}


@dataclass(frozen=True)
class EvmToken:
    """An ERC-20 token a seller takes or a buyer pays with: its ``address``, the ``name`` and
    ``version`` of its EIP-712 domain (EIP-3009 signatures bind them; the request does not carry
    them, so both sides are configured with them) and its ``decimals``."""

    address: str
    name: str
    version: str
    decimals: int = 6

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", checksum(self.address, "token address"))
        if not isinstance(self.decimals, int) or isinstance(self.decimals, bool) or not 0 <= self.decimals <= 36:
            raise ValueError("decimals must be an integer from 0 to 36")


@dataclass(frozen=True)
class EvmRequest:
    """A charge request of this method, checked: amount in base units, token and recipient in
    EIP-55 form, the chain id, the credential types the seller accepts (the draft's default when
    absent: ``transaction`` then ``hash``), whether it asks for splits (none are paid here) and the
    Permit2 contract (``methodDetails.permit2Address``, the canonical address when absent)."""

    amount: int
    token: str
    recipient: str
    chain_id: int
    credential_types: tuple[str, ...]
    decimals: int | None = None
    splits: bool = False
    permit2: str = PERMIT2_ADDRESS


def parse_evm_request(request: ChargeRequest) -> EvmRequest:
    """The ``evm`` view of a decoded charge request; ParseError naming the member that is wrong."""
    details = request.methodDetails or {}
    chain_id = details.get("chainId")
    if not isinstance(chain_id, int) or isinstance(chain_id, bool) or not 0 < chain_id <= _MAX_UINT256:
        raise ParseError("evm request: methodDetails.chainId must be a positive integer")
    types = details.get("credentialTypes", [TRANSACTION, HASH])
    if not isinstance(types, list) or not types or not all(isinstance(t, str) and t for t in types):
        raise ParseError("evm request: methodDetails.credentialTypes must be a non-empty list of strings")
    decimals = details.get("decimals")
    if decimals is not None and (not isinstance(decimals, int) or isinstance(decimals, bool) or not 0 <= decimals <= 255):
        raise ParseError("evm request: methodDetails.decimals must be an integer from 0 to 255")
    try:
        token, recipient = checksum(request.currency, "currency"), checksum(request.recipient, "recipient")
        permit2 = checksum(details.get("permit2Address", PERMIT2_ADDRESS), "methodDetails.permit2Address")
    except VerificationFailed as exc:
        raise ParseError(f"evm request: {exc}") from None
    amount = request.amount_int
    if amount > _MAX_UINT256:
        raise ParseError("evm request: amount does not fit in a uint256")
    return EvmRequest(amount, token, recipient, chain_id, tuple(types), decimals, bool(details.get("splits")), permit2)


@dataclass(frozen=True)
class EvmPayment:
    """A credential's payload, checked offline, and what settlement needs.

    ``kind`` is the credential type; ``payer`` the paying address (EIP-55; "" for ``hash`` until
    settlement reads it from the chain); ``amount``, ``token``,
    ``recipient`` and ``chain_id`` are the challenge's. For ``authorization``: ``valid_after``,
    ``valid_before``, ``nonce`` (32 bytes) and ``signature`` (65 bytes, r‖s‖v) and ``binding`` (the
    rule its nonce matched). For ``permit2``: ``payer`` the owner the signature recovered to,
    ``nonce`` its Permit2 nonce (32 bytes, big-endian), ``valid_before`` its deadline, ``witness``
    its challenge hash, ``signature``, ``binding`` and ``permit2`` (the contract). For
    ``transaction``: ``raw`` (the signed transaction) and ``tx_hash``. For ``hash``: ``tx_hash``.
    ``replay_key`` is what the seller claims so that it pays once: the chain, token (or Permit2
    contract), payer and nonce, or the transaction hash (draft §Replay Protection)."""

    challenge_id: str
    kind: str
    payer: str
    amount: int
    token: str
    recipient: str
    chain_id: int
    valid_after: int = 0
    valid_before: int = 0
    nonce: bytes = b""
    signature: bytes = b""
    binding: str | None = None
    raw: bytes = field(default=b"", repr=False)
    tx_hash: str | None = None
    permit2: str = ""
    witness: bytes = b""

    @property
    def payer_did(self) -> str | None:
        """The payer as a DID (``did:pkh``); None for a ``hash`` payment, whose payer only settlement
        learns (from the chain). Deliberately not named ``signer``: the engine compares a payment's
        ``signer`` with the mandate's subject (an agent's did:key, IDENT-POP-07), and an EVM address
        is never one; on this rail the identity extension attributes a purchase by its proof of
        possession (spec/methods/evm.md EVM-ID-01)."""
        return did_pkh(self.chain_id, self.payer) if self.payer else None

    @property
    def replay_key(self) -> str:
        """The token the seller consumes once per payment (draft §Replay Protection)."""
        if self.kind == AUTHORIZATION:
            return f"evm:{self.chain_id}:{self.token.lower()}:{self.payer.lower()}:0x{self.nonce.hex()}"
        if self.kind == PERMIT2:
            return f"evm:{self.chain_id}:permit2:{self.permit2.lower()}:{self.payer.lower()}:{int.from_bytes(self.nonce, 'big')}"
        return f"evm:{self.chain_id}:tx:{(self.tx_hash or '').lower()}"


def parse_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A credential payload's members, typed (ints, bytes, EIP-55 addresses), whatever its type;
    VerificationFailed naming what is wrong (the seller answers ``verification-failed``). Judges
    shape only: nothing here is checked against a challenge."""
    kind = payload.get("type")
    if kind == AUTHORIZATION:
        return {
            "type": kind,
            "from": checksum(payload.get("from"), "evm payload from"),
            "to": checksum(payload.get("to"), "evm payload to"),
            "value": _uint(payload.get("value"), "value"),
            "validAfter": _uint(payload.get("validAfter"), "validAfter"),
            "validBefore": _uint(payload.get("validBefore"), "validBefore"),
            "nonce": _hex_bytes(payload.get("nonce"), "nonce", 32),
            "signature": _hex_bytes(payload.get("signature"), "signature", 65),
        }
    if kind == TRANSACTION:
        raw = _hex_bytes(payload.get("signature"), "signature")
        if not raw or len(raw) > 16_384:
            raise VerificationFailed("evm payload signature must be a signed transaction of at most 16 KiB")
        return {"type": kind, "signature": raw}
    if kind == HASH:
        return {"type": kind, "hash": "0x" + _hex_bytes(payload.get("hash"), "hash", 32).hex()}
    if kind == PERMIT2:
        return parse_permit2(payload)
    raise VerificationFailed(f"evm payload type must be one of {', '.join(CREDENTIAL_TYPES)}")


def transaction_fields(raw: bytes) -> dict[str, Any]:
    """The fields of a signed typed transaction (``nonce``, ``gas``, ``maxFeePerGas``, ``to``, ``data``...),
    as eth-account decodes them; ValueError if ``raw`` is not one."""
    try:
        return TypedTransaction.from_bytes(HexBytes(raw)).as_dict()  # it takes HexBytes only
    except Exception as exc:  # noqa: BLE001 - whatever fails to decode is not a signed typed transaction
        raise ValueError("not a signed typed transaction") from exc


def authorization_typed_data(token: EvmToken, chain_id: int, *, payer: str, recipient: str, value: int,
                             valid_after: int, valid_before: int, nonce: bytes) -> dict[str, Any]:
    """The EIP-712 message of an EIP-3009 ``TransferWithAuthorization`` on ``token`` at ``chain_id``."""
    return {
        "types": _TYPES,
        "primaryType": "TransferWithAuthorization",
        "domain": {"name": token.name, "version": token.version, "chainId": chain_id,
                   "verifyingContract": token.address},
        "message": {"from": payer, "to": recipient, "value": value, "validAfter": valid_after,
                    "validBefore": valid_before, "nonce": nonce},
    }


class EvmSellerMethod:
    """Seller side: quotes a price in one of its tokens, and checks a credential offline.

    ``tokens`` maps what a price's currency may say (a code such as ``usd``, or the token's
    address) to the token it is paid in; ``recipient`` is the seller's address; ``credential_types``
    what it accepts, in its order of preference; ``bindings`` the challenge-hash rules it accepts
    (EVM-BIND-02); ``max_validity`` how far past the challenge's expiry an authorization may stay
    valid, in seconds (EVM-AUTH-03), and a permit2's deadline lie past it (EVM-PERMIT-02); ``permit2_address``
    the Permit2 contract it settles permits on (sent as ``methodDetails.permit2Address`` when
    ``permit2`` is accepted)."""

    name = METHOD

    def __init__(self, *, recipient: str, chain_id: int, tokens: Mapping[str, EvmToken],
                 credential_types: tuple[str, ...] = (AUTHORIZATION, TRANSACTION),
                 bindings: tuple[str, ...] = (BINDING_DRAFT,), max_validity: int = 3600,
                 clock: Any = None, permit2_address: str = PERMIT2_ADDRESS) -> None:
        self.recipient = checksum(recipient, "recipient")
        if not isinstance(chain_id, int) or isinstance(chain_id, bool) or chain_id <= 0:
            raise ValueError("chain_id must be a positive integer")
        self.chain_id = chain_id
        if not tokens:
            raise ValueError("an evm seller needs at least one token")
        self.tokens = {(key.lower() if key.startswith("0x") else key): token for key, token in tokens.items()}
        self._by_address = {token.address: token for token in tokens.values()}
        for kind in credential_types:
            if kind not in CREDENTIAL_TYPES:
                raise ValueError(f"credential type {kind!r} is not built here; one of {', '.join(CREDENTIAL_TYPES)}")
        if not credential_types:
            raise ValueError("an evm seller accepts at least one credential type")
        self.credential_types = tuple(credential_types)
        for rule in bindings:
            challenge_hash("", "", rule)  # ValueError for an unknown rule
        if not bindings:
            raise ValueError("an evm seller accepts at least one challenge-binding rule")
        self.bindings = tuple(bindings)
        self.max_validity = max_validity
        self.permit2_address = checksum(permit2_address, "permit2_address")
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.ledger_id = None  # the request cache key of the engine reads it (no ledger here)

    def token_for(self, currency: str) -> EvmToken | None:
        """The token a price in ``currency`` is paid in here (a code, or an address in any case: a key of
        ``tokens``, or the address of one of them), or None."""
        found = self.tokens.get(currency.lower() if currency.startswith("0x") else currency)
        if found is None and currency.startswith("0x") and is_hex_address(currency):
            found = self._by_address.get(to_checksum_address(currency))
        return found

    def accepts_currency(self, currency: str) -> bool:
        """Whether this method can quote a price in ``currency`` (the engine offers it only then)."""
        return self.token_for(currency) is not None

    def request_for(self, *, amount: int, currency: str, description: str | None) -> dict[str, Any]:
        """The decoded ``request`` of an ``evm`` charge: amount (base units of the token),
        ``currency`` the token's address, ``recipient``, and ``methodDetails`` with ``chainId``,
        ``credentialTypes`` and ``decimals`` (and ``permit2Address`` when ``permit2`` is accepted). ValueError for a currency this seller has no token for."""
        token = self.token_for(currency)
        if token is None:
            raise ValueError(f"no evm token is configured for currency {currency!r}")
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            raise ValueError("amount must be a positive integer in base units")
        request: dict[str, Any] = {
            "amount": str(amount),
            "currency": token.address,
            "recipient": self.recipient,
            "methodDetails": {"chainId": self.chain_id, "credentialTypes": list(self.credential_types),
                              "decimals": token.decimals},
        }
        if PERMIT2 in self.credential_types:
            request["methodDetails"]["permit2Address"] = self.permit2_address
        if description:
            request["description"] = description
        return request

    def verify(self, credential: Credential, request: ChargeRequest) -> EvmPayment:
        """Every offline check of an ``evm`` credential against its (HMAC-verified) challenge:
        the request is ours (chain, recipient, a token we take), the payload's type is one we
        accept, and then per type (EVM-AUTH-01 to EVM-AUTH-05, EVM-TX-01; spec/methods/evm.md).
        VerificationFailed naming the first check that fails (an authorization whose window has
        closed too: the challenge's own expiry is judged before, as payment-expired)."""
        try:
            req = parse_evm_request(request)
        except ParseError as exc:
            raise VerificationFailed(str(exc)) from None
        if req.chain_id != self.chain_id:
            raise VerificationFailed("challenge names another chain")
        if req.recipient != self.recipient:
            raise VerificationFailed("challenge names another recipient")
        token = self._by_address.get(req.token)
        if token is None:
            raise VerificationFailed("challenge names a token this seller does not take")
        if req.splits:
            raise VerificationFailed("splits are not paid here")
        fields = parse_payload(credential.payload)
        kind = fields["type"]
        if kind not in self.credential_types or kind not in req.credential_types:
            raise VerificationFailed(f"evm credential type {kind!r} is not accepted for this challenge")
        challenge = credential.challenge
        if kind == AUTHORIZATION:
            payment = self._authorization(challenge, req, token, fields)
        elif kind == PERMIT2:
            payment = self._permit2(challenge, req, fields)
        elif kind == TRANSACTION:
            payment = self._transaction(challenge, req, fields)
        else:  # the payer is learnt from the chain at settlement (the transfer's from)
            return EvmPayment(challenge.id, HASH, payer="", amount=req.amount, token=req.token,
                              recipient=req.recipient, chain_id=req.chain_id, tx_hash=fields["hash"])
        # A did:pkh source must be the payer. Under the identity extension the source names the agent
        # (a did:key, IDENT-POP-07), which the extension checks; without it nothing else is accepted,
        # since the receipt attributes the payment to the source (EVM-AUTH-05).
        source = credential.source
        pkh = isinstance(source, str) and source.startswith("did:pkh:")
        if source is not None and (pkh or credential.extra_member("identity") is None):
            if not pkh or source.lower() != (payment.payer_did or "").lower():
                raise VerificationFailed("credential source is not the payer's did:pkh")
        return payment

    def _authorization(self, challenge: Challenge, req: EvmRequest, token: EvmToken, f: dict[str, Any]) -> EvmPayment:
        if f["to"] != req.recipient:
            raise VerificationFailed("evm authorization to is not the challenge's recipient")
        if f["value"] != req.amount:
            raise VerificationFailed("evm authorization value is not the challenge's amount")
        binding = next((rule for rule in self.bindings if challenge_hash(challenge.id, challenge.realm, rule) == f["nonce"]), None)
        if binding is None:
            raise VerificationFailed("evm authorization nonce is not this challenge's hash")
        now = int(self.clock().timestamp())
        if f["validBefore"] <= now:
            raise VerificationFailed("evm authorization has expired (validBefore has passed)")
        if f["validAfter"] > now:
            raise VerificationFailed("evm authorization is not valid yet (validAfter is in the future)")
        expires = int(datetime.fromisoformat(challenge.expires.replace("Z", "+00:00")).timestamp()) if challenge.expires else now
        if f["validBefore"] > max(expires, now) + self.max_validity:
            raise VerificationFailed("evm authorization stays valid too long after the challenge expires")
        typed = authorization_typed_data(token, req.chain_id, payer=f["from"], recipient=f["to"], value=f["value"],
                                         valid_after=f["validAfter"], valid_before=f["validBefore"], nonce=f["nonce"])
        if _recover(typed, f["signature"]) != f["from"]:
            raise VerificationFailed("evm authorization is not signed by its from address")
        return EvmPayment(challenge.id, AUTHORIZATION, payer=f["from"], amount=req.amount, token=req.token,
                          recipient=req.recipient, chain_id=req.chain_id, valid_after=f["validAfter"],
                          valid_before=f["validBefore"], nonce=f["nonce"], signature=f["signature"], binding=binding)

    def _permit2(self, challenge: Challenge, req: EvmRequest, f: dict[str, Any]) -> EvmPayment:
        if req.permit2 != self.permit2_address:
            raise VerificationFailed("challenge names another Permit2 contract")
        now = int(self.clock().timestamp())
        expires = int(datetime.fromisoformat(challenge.expires.replace("Z", "+00:00")).timestamp()) if challenge.expires else now
        owner, binding = check_permit2(f, challenge_id=challenge.id, realm=challenge.realm, chain_id=req.chain_id,
                                       permit2=req.permit2, token=req.token, amount=req.amount, recipient=req.recipient,
                                       bindings=self.bindings, now=now, latest_deadline=max(expires, now) + self.max_validity)
        return EvmPayment(challenge.id, PERMIT2, payer=owner, amount=req.amount, token=req.token, recipient=req.recipient,
                          chain_id=req.chain_id, valid_before=f["deadline"], nonce=f["nonce"].to_bytes(32, "big"),
                          signature=f["signature"], binding=binding, permit2=req.permit2, witness=f["challengeHash"])

    @staticmethod
    def _transaction(challenge: Challenge, req: EvmRequest, f: dict[str, Any]) -> EvmPayment:
        raw = f["signature"]
        try:
            body = transaction_fields(raw)
            payer = Account.recover_transaction(raw)
        except Exception as exc:  # noqa: BLE001 - whatever fails to decode is not a signed typed transaction
            raise VerificationFailed("evm transaction is not a signed EIP-1559 transaction") from exc
        if body.get("type") != 2:
            raise VerificationFailed("evm transaction must be an EIP-1559 (type 2) transaction")
        if body.get("chainId") != req.chain_id:
            raise VerificationFailed("evm transaction is for another chain")
        to = body.get("to")
        if not to or to_checksum_address(to) != req.token:
            raise VerificationFailed("evm transaction does not call the challenge's token")
        if body.get("value", 0) != 0:
            raise VerificationFailed("evm transaction sends native value")
        data = bytes(body.get("data") or b"")
        if data[:4] != TRANSFER_SELECTOR or len(data) != 68:
            raise VerificationFailed("evm transaction does not call transfer(address,uint256)")
        try:
            recipient, amount = eth_abi.decode(["address", "uint256"], data[4:])
        except Exception as exc:  # noqa: BLE001 - eth-abi refuses an address with non-zero padding bytes
            raise VerificationFailed("evm transaction's transfer arguments do not decode") from exc
        if to_checksum_address(recipient) != req.recipient or amount != req.amount:
            raise VerificationFailed("evm transaction transfers to another recipient or another amount")
        tx_hash = "0x" + keccak(raw).hex()
        return EvmPayment(challenge.id, TRANSACTION, payer=to_checksum_address(payer), amount=req.amount, token=req.token,
                          recipient=req.recipient, chain_id=req.chain_id, raw=raw, tx_hash=tx_hash)


class EvmBuyerMethod:
    """Buyer side: pays ``evm`` charges on ``chain_id`` in the given ``tokens`` (keyed by address)
    with a payload signed by ``account`` (an eth-account ``LocalAccount``), bound to the challenge by
    ``binding`` (the draft's rule unless a seller needs pympp's). ``credential_type`` is what it signs:
    an EIP-3009 ``authorization`` (the default), or a ``permit2`` permit on the Permit2 contract at
    ``permit2_address`` (the canonical one; a challenge naming another is not paid), for which the
    account must have approved Permit2 on the token beforehand."""

    name = METHOD

    def __init__(self, *, account: Any, chain_id: int, tokens: Mapping[str, EvmToken] | list[EvmToken],
                 binding: str = BINDING_DRAFT, clock: Any = None, credential_type: str = AUTHORIZATION,
                 permit2_address: str = PERMIT2_ADDRESS) -> None:
        challenge_hash("", "", binding)  # ValueError for an unknown rule
        if credential_type not in (AUTHORIZATION, PERMIT2):
            raise ValueError(f"a buyer signs {AUTHORIZATION!r} or {PERMIT2!r}, not {credential_type!r}")
        self.credential_type = credential_type
        self.permit2_address = checksum(permit2_address, "permit2_address")
        self.account = account
        self.chain_id = chain_id
        listed = tokens.values() if isinstance(tokens, Mapping) else tokens
        self.tokens = {token.address: token for token in listed}
        self.binding = binding
        self.clock = clock or (lambda: datetime.now(timezone.utc))

    @property
    def address(self) -> str:
        """The paying address (EIP-55)."""
        return to_checksum_address(self.account.address)

    def can_pay(self, challenge: Challenge, request: ChargeRequest) -> str | None:
        """None if this method can pay the challenge: method ``evm``, intent ``charge``, our chain,
        a token we hold a domain for, our credential type among the accepted ones (and, for ``permit2``,
        the Permit2 contract we trust), no splits; else why not."""
        if challenge.method != METHOD:
            return f"method {challenge.method!r} is not {METHOD!r}"
        if challenge.intent != "charge":
            return f"intent {challenge.intent!r} is not supported"
        try:
            req = parse_evm_request(request)
        except ParseError as exc:
            return str(exc)
        if req.chain_id != self.chain_id:
            return f"chain {req.chain_id} is not ours ({self.chain_id})"
        if req.token not in self.tokens:
            return f"token {req.token} is not one we pay with"
        if self.credential_type not in req.credential_types:
            return ("the seller does not accept EIP-3009 authorizations" if self.credential_type == AUTHORIZATION
                    else "the seller does not accept permit2 credentials")
        if self.credential_type == PERMIT2 and req.permit2 != self.permit2_address:
            return f"the challenge names Permit2 at {req.permit2}, not {self.permit2_address}"
        if req.splits:
            return "splits are not paid here"
        if req.amount == 0:
            return "a charge of zero is not paid"
        return None

    def payload(self, challenge: Challenge, request: ChargeRequest) -> tuple[dict[str, Any], str | None]:
        """The payload and ``source`` (our did:pkh). ``authorization``: EIP-3009 over the token's domain,
        ``validAfter`` 0, ``validBefore`` the challenge's expiry, ``nonce`` its challenge hash.
        ``permit2``: a permit of the amount to the recipient (also its spender), a random nonce, the
        challenge's expiry as deadline, the challenge hash as witness. Signs whatever it is given: ask
        :meth:`can_pay` first."""
        req = parse_evm_request(request)
        token = self.tokens[req.token]
        if challenge.expires:
            valid_before = int(datetime.fromisoformat(challenge.expires.replace("Z", "+00:00")).timestamp())
        else:
            valid_before = int(self.clock().timestamp()) + 300
        nonce = challenge_hash(challenge.id, challenge.realm, self.binding)
        if self.credential_type == PERMIT2:
            return (sign_permit2(self.account, chain_id=req.chain_id, permit2=req.permit2, token=req.token, amount=req.amount,
                                 recipient=req.recipient, deadline=valid_before, challenge=nonce),
                    did_pkh(req.chain_id, self.address))
        typed = authorization_typed_data(token, req.chain_id, payer=self.address, recipient=req.recipient,
                                         value=req.amount, valid_after=0, valid_before=valid_before, nonce=nonce)
        signed = self.account.sign_message(encode_typed_data(full_message=typed))
        signature = signed.signature if isinstance(signed.signature, bytes) else bytes(signed.signature)
        payload = {
            "type": AUTHORIZATION,
            "from": self.address,
            "to": req.recipient,
            "value": str(req.amount),
            "validAfter": "0",
            "validBefore": str(valid_before),
            "nonce": "0x" + nonce.hex(),
            "signature": "0x" + signature.hex(),
        }
        return payload, did_pkh(req.chain_id, self.address)
