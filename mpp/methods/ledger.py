"""The ``ledger`` method, wire side: the agent's signed transfer authorization.

The agent signs exactly this challenge (id, realm, amount, currency, recipient, payer account);
the seller and the ledger read amount, currency and recipient from the HMAC-bound challenge,
never from the payload, so a payload cannot ask for anything the seller did not quote.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mpp.protocol.wire import canonical_json
from mpp.protocol.errors import ParseError, VerificationFailed
from mpp.protocol.keys import SignatureInvalid, SigningKey, public_key_from_did, verify_signature
from mpp.protocol.models import Challenge, ChargeRequest, Credential

__all__ = [
    "METHOD",
    "SIGNING_DOMAIN",
    "LedgerAuthorization",
    "authorization_message",
    "LedgerSellerMethod",
    "LedgerBuyerMethod",
]

METHOD = "ledger"
"""The payment method's name on the wire (the challenge's `method`)."""
SIGNING_DOMAIN = b"mpp-ledger-charge-v1\n"
"""Domain separation prefix of the payer's authorization of a ledger charge."""
_MAX_ACCOUNT = 128


@dataclass(frozen=True)
class LedgerAuthorization:
    """A verified payload: who signed, for which payer account, over which challenge."""

    challenge_id: str
    account: str
    signer: str
    amount: int
    currency: str
    recipient: str


def authorization_message(*, challenge_id: str, realm: str, request: ChargeRequest, account: str) -> bytes:
    """The bytes the agent signs. The ledger id is included so that one authorization cannot
    be settled at two ledgers that happen to share an account id and key."""
    ledger = (request.methodDetails or {}).get("ledger")
    if not isinstance(ledger, str) or not ledger:
        raise VerificationFailed("ledger request lacks methodDetails.ledger")
    body = {
        "account": account,
        "amount": request.amount,
        "challengeId": challenge_id,
        "currency": request.currency,
        "ledger": ledger,
        "realm": realm,
        "recipient": request.recipient,
    }
    return SIGNING_DOMAIN + canonical_json(body)


class LedgerSellerMethod:
    """Seller side: quotes in the ledger's terms and checks the agent's signature."""

    name = METHOD

    def __init__(self, *, recipient: str, ledger_id: str) -> None:
        self.recipient = recipient
        self.ledger_id = ledger_id

    def request_for(self, *, amount: int, currency: str, description: str | None) -> dict[str, Any]:
        """The decoded ``request`` of a ``ledger`` challenge for this price (a charge, or a seat
        period's subscription): ``amount`` (base units) as a decimal string, ``currency``, this seller's
        ``recipient``, ``methodDetails.ledger`` its ledger id, and ``description`` if given. ValueError
        unless ``amount`` is a non-negative int; zero is not refused here, though LEDGER-04 forbids
        quoting it."""
        if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
            raise ValueError("amount must be a non-negative integer in base units")
        request: dict[str, Any] = {
            "amount": str(amount),
            "currency": currency,
            "recipient": self.recipient,
            "methodDetails": {"ledger": self.ledger_id},
        }
        if description:
            request["description"] = description
        return request

    def session_request_for(self, metered: Any) -> dict[str, Any]:
        """The decoded ``request`` of a session challenge for a per-unit price (a ``Metered``)."""
        request: dict[str, Any] = {
            "amount": str(metered.price),
            "currency": metered.currency,
            "recipient": self.recipient,
            "unitType": metered.unit,
            "methodDetails": {
                "ledger": self.ledger_id,
                "per": str(metered.per),
                "maxUnits": str(metered.max_units),
                "suggestedCap": str(metered.cap_hint),
                "idleTimeout": str(metered.idle_timeout),
            },
        }
        if metered.description:
            request["description"] = metered.description
        return request

    def check_session_request(self, request: Any) -> None:
        """VerificationFailed unless a session challenge's request (a ``SessionRequest``) names this
        seller's own recipient and ledger; checked on every session credential, after the challenge's
        HMAC."""
        if request.recipient != self.recipient:
            raise VerificationFailed("challenge names another recipient")
        if request.ledger != self.ledger_id:
            raise VerificationFailed("challenge names another ledger")

    def verify(self, credential: Credential, request: ChargeRequest) -> LedgerAuthorization:
        """Check a charge credential's payload offline (LEDGER-05, LEDGER-07 to LEDGER-10): type
        ``authorization``, ``account`` (at most 128 characters), ``signer`` an Ed25519 did:key equal to
        the credential's ``source`` if it has one, and its signature over the bytes built from the
        verified challenge, which must name this seller's recipient and ledger. Returns the
        LedgerAuthorization, with amount, currency and recipient from the challenge; VerificationFailed
        otherwise."""
        payload = credential.payload
        account, signer, signature = payload.get("account"), payload.get("signer"), payload.get("signature")
        if payload.get("type") != "authorization":
            raise VerificationFailed("ledger payload type must be 'authorization'")
        for name, value in (("account", account), ("signer", signer), ("signature", signature)):
            if not isinstance(value, str) or not value:
                raise VerificationFailed(f"ledger payload lacks {name!r}")
        if len(account) > _MAX_ACCOUNT:
            raise VerificationFailed("ledger payload account id is too long")
        if credential.source is not None and credential.source != signer:
            raise VerificationFailed("credential source is not the payload's signer")
        try:
            public_key_from_did(signer)
        except ParseError as exc:
            raise VerificationFailed("ledger payload signer is not an Ed25519 did:key") from exc
        if request.recipient != self.recipient:
            raise VerificationFailed("challenge names another recipient")
        if (request.methodDetails or {}).get("ledger") != self.ledger_id:
            raise VerificationFailed("challenge names another ledger")
        message = authorization_message(
            challenge_id=credential.challenge.id, realm=credential.challenge.realm, request=request, account=account
        )
        try:
            verify_signature(signer, message, signature)
        except SignatureInvalid as exc:
            raise VerificationFailed("ledger authorization signature does not verify") from exc
        return LedgerAuthorization(
            challenge_id=credential.challenge.id,
            account=account,
            signer=signer,
            amount=request.amount_int,
            currency=request.currency,
            recipient=request.recipient,
        )


class LedgerBuyerMethod:
    """Buyer side: signs an accepted challenge with the agent key for its payer account."""

    name = METHOD

    def __init__(self, *, key: SigningKey, account: str) -> None:
        self.key = key
        self.account = account

    def can_pay(self, challenge: Challenge, request: ChargeRequest) -> str | None:
        """None if this method can pay the challenge (method ``ledger``, intent ``charge``, a request
        naming a ledger), else the reason it cannot. Nothing else (which ledger, currency, balance) is
        checked: the ledger refuses at settlement. A seat's ``subscription`` challenge is for
        :meth:`can_pay_subscription`."""
        return self._why_not(challenge, request, "charge")

    def can_pay_subscription(self, challenge: Challenge, request: ChargeRequest) -> str | None:
        """A seat period (intent ``subscription``) is paid with the charge payload unchanged
        (PRICE-SEAT-01). Separate from ``can_pay`` so that no caller takes a recurring commitment
        by accident: only the buyer's offer choice asks, after its seat checks (PRICE-BUY-02)."""
        return self._why_not(challenge, request, "subscription")

    def _why_not(self, challenge: Challenge, request: ChargeRequest, intent: str) -> str | None:
        if challenge.method != METHOD:
            return f"method {challenge.method!r} is not {METHOD!r}"
        if challenge.intent != intent:
            return f"intent {challenge.intent!r} is not supported"
        ledger = (request.methodDetails or {}).get("ledger")
        if not isinstance(ledger, str) or not ledger:
            return "request names no ledger (methodDetails.ledger)"
        return None

    def payload(self, challenge: Challenge, request: ChargeRequest) -> tuple[dict[str, Any], str | None]:
        """The credential ``payload`` (``type``, ``account``, ``signer``, ``signature``: this key's
        signature over the challenge's authorization bytes, LEDGER-06) and ``source`` (the key's DID).
        Signs whatever it is given: ask :meth:`can_pay` first. VerificationFailed if the request names
        no ledger."""
        message = authorization_message(
            challenge_id=challenge.id, realm=challenge.realm, request=request, account=self.account
        )
        payload = {"type": "authorization", "account": self.account, "signer": self.key.did, "signature": self.key.sign(message)}
        return payload, self.key.did
