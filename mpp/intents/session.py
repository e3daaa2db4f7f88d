"""The ``session`` intent on the ``ledger`` method, without I/O: terms, signed messages, cost.

A session is opened by answering a ``session`` challenge; its id is that challenge's id. The
agent signs a *cap* (the most the seller may ever capture; the ledger holds it) and, with
every request, a cumulative *voucher* (how much of the cap the seller may take so far).
Amounts only go up. The seller charges each request against the highest voucher it has
accepted and, at close, captures exactly what was used; the ledger releases the rest.

Every signed message starts with a domain line, so a signature made for one purpose can
never be read as another (a voucher is not a cap, a cap is not a charge authorization).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from mpp.protocol.wire import canonical_json
from mpp.protocol.errors import ExtensionProblem, ParseError
from mpp.protocol.keys import SignatureInvalid, SigningKey, public_key_from_did, verify_signature
from mpp.protocol.models import Challenge

__all__ = [
    "INTENT",
    "ACTIONS",
    "CAP_DOMAIN",
    "VOUCHER_DOMAIN",
    "CLOSE_DOMAIN",
    "SessionRequest",
    "SessionTerms",
    "Voucher",
    "SessionPayload",
    "cap_message",
    "voucher_message",
    "close_message",
    "sign_voucher",
    "sign_cap",
    "sign_close",
    "verify_voucher",
    "verify_cap",
    "verify_close",
    "parse_session_payload",
    "cost_of",
    "SessionProblem",
    "SessionCapExceeded",
    "SessionInsufficient",
    "SessionUnknown",
    "SessionClosed",
    "VoucherInvalid",
    "SESSION_PROBLEMS",
]

INTENT = "session"
"""The intent name of a metered session's challenge."""
ACTIONS = ("open", "voucher", "topUp", "close")
"""The actions a session credential may carry: open, voucher, topUp, close."""
CAP_DOMAIN = b"mpp-ledger-session-cap-v1\n"
"""Domain separation prefix of a session cap's signature."""
VOUCHER_DOMAIN = b"mpp-ledger-session-voucher-v1\n"
"""Domain separation prefix of a voucher's signature."""
CLOSE_DOMAIN = b"mpp-ledger-session-close-v1\n"
"""Domain separation prefix of a close request's signature."""
MAX_AMOUNT = 2**63 - 1
MAX_SEQUENCE = 2**53 - 1  # a JSON integer in the signed bytes: RFC 8785 writes no larger one exactly (SESSION-REQ-07)
_UINT = re.compile(r"0|[1-9][0-9]{0,18}")
_POSITIVE = re.compile(r"[1-9][0-9]{0,18}")
_MAX_ID = 128


# -- problems -------------------------------------------------------------------


class SessionProblem(ExtensionProblem):
    """Problems of the session intent: our own types, under ``urn:mpp:problem:``."""


class SessionCapExceeded(SessionProblem):
    """A voucher asks for more than the session's cap (SESSION-VOUCHER-04)."""

    slug = "session-cap-exceeded"
    title = "Voucher Above Session Cap"


class SessionInsufficient(SessionProblem):
    """The highest accepted voucher does not cover this request; send a higher one (SESSION-USE-03)."""

    slug = "session-insufficient"
    title = "Session Value Insufficient"


class SessionUnknown(SessionProblem):
    """The voucher names a session this seller never opened (SESSION-VOUCHER-06)."""

    slug = "session-unknown"
    title = "Session Unknown"


class SessionClosed(SessionProblem):
    """The session is closing or closed: it takes no voucher and serves nothing (SESSION-VOUCHER-06)."""

    slug = "session-closed"
    title = "Session Closed"


class VoucherInvalid(SessionProblem):
    """Signed by another key, for another session or another seller, or malformed."""

    slug = "session-voucher-invalid"
    title = "Session Voucher Invalid"


SESSION_PROBLEMS: dict[str, type[SessionProblem]] = {
    cls.slug: cls for cls in (SessionCapExceeded, SessionInsufficient, SessionUnknown, SessionClosed, VoucherInvalid)
}
"""Every session problem class by its slug, to turn a problem document back into the exception."""


# -- the challenge's request --------------------------------------------------------


def _uint(value: Any, name: str, *, positive: bool = False) -> int:
    pattern = _POSITIVE if positive else _UINT
    if not isinstance(value, str) or pattern.fullmatch(value) is None or int(value) > MAX_AMOUNT:
        kind = "positive" if positive else "non-negative"
        raise ValueError(f"{name} must be a {kind} integer as a decimal string")
    return int(value)


class SessionRequest(BaseModel):
    """The decoded ``request`` of a ``ledger``/``session`` challenge.

    ``amount`` is the price of ``methodDetails.per`` units of ``unitType`` (for example 2 base
    units per 1000 tokens), never the session's total.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    amount: str
    currency: str
    recipient: str
    unitType: str
    description: str | None = None
    methodDetails: dict[str, Any]

    @field_validator("amount")
    @classmethod
    def _amount(cls, value: str) -> str:
        _uint(value, "amount", positive=True)
        return value

    @field_validator("methodDetails")
    @classmethod
    def _details(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(value.get("ledger"), str) or not value["ledger"]:
            raise ValueError("methodDetails.ledger is required")
        _uint(value.get("per"), "methodDetails.per", positive=True)
        _uint(value.get("maxUnits"), "methodDetails.maxUnits", positive=True)
        _uint(value.get("suggestedCap"), "methodDetails.suggestedCap", positive=True)
        _uint(value.get("idleTimeout"), "methodDetails.idleTimeout", positive=True)
        return value

    @property
    def unit_price(self) -> int:
        """The price of ``per`` units, in base units (the request's ``amount``)."""
        return int(self.amount)

    @property
    def per(self) -> int:
        """How many units ``unit_price`` pays for (``methodDetails.per``)."""
        return int(self.methodDetails["per"])

    @property
    def max_units(self) -> int:
        """The most units one non-streaming request may use (``methodDetails.maxUnits``)."""
        return int(self.methodDetails["maxUnits"])

    @property
    def suggested_cap(self) -> int:
        """The cap the seller suggests, in base units (``methodDetails.suggestedCap``); advisory."""
        return int(self.methodDetails["suggestedCap"])

    @property
    def idle_timeout(self) -> int:
        """Seconds without use after which the seller closes the session itself
        (``methodDetails.idleTimeout``)."""
        return int(self.methodDetails["idleTimeout"])

    @property
    def ledger(self) -> str:
        """The id of the ledger that holds the cap (``methodDetails.ledger``)."""
        return self.methodDetails["ledger"]

    @property
    def max_request_cost(self) -> int:
        """The most one request may cost: cost(``max_units``) at this price, in base units (SESSION-REQ-03)."""
        return cost_of(self.max_units, self.unit_price, self.per)

    @classmethod
    def from_challenge(cls, challenge: Challenge) -> "SessionRequest":
        """The challenge's decoded ``request`` as a session request; ParseError when it does not decode or
        breaks the table of SESSION-REQ-02."""
        try:
            return cls.model_validate(challenge.request_json)
        except ValidationError as exc:
            raise ParseError("request is not a valid ledger session request") from exc


def cost_of(units: int, unit_price: int, per: int) -> int:
    """What ``units`` cost at ``unit_price`` per ``per`` units, rounded up to a whole base unit."""
    if not isinstance(units, int) or isinstance(units, bool) or units < 0:
        raise ValueError("units must be a non-negative integer")
    return -(-units * unit_price // per)


@dataclass(frozen=True)
class SessionTerms:
    """What every signed session message is bound to: the seller, its ledger, the price."""

    session_id: str
    realm: str
    recipient: str
    ledger: str
    currency: str
    unit_price: int
    per: int

    @classmethod
    def of(cls, challenge: Challenge, request: SessionRequest) -> "SessionTerms":
        """The terms of the session ``challenge`` opens: its id and realm, and the request's recipient,
        ledger, currency and price."""
        return cls(challenge.id, challenge.realm, request.recipient, request.ledger, request.currency,
                   request.unit_price, request.per)

    def as_json(self) -> dict[str, Any]:
        """The terms as the signed cap message and the ledger service carry them (SESSION-REQ-08): camelCase
        members, ``unitPrice`` and ``per`` as decimal strings."""
        return {"sessionId": self.session_id, "realm": self.realm, "recipient": self.recipient, "ledger": self.ledger,
                "currency": self.currency, "unitPrice": str(self.unit_price), "per": str(self.per)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "SessionTerms":
        """The terms from the form :meth:`as_json` writes. KeyError for a missing member, ValueError for a
        price that is not an integer; nothing else is checked."""
        return cls(doc["sessionId"], doc["realm"], doc["recipient"], doc["ledger"], doc["currency"],
                   int(doc["unitPrice"]), int(doc["per"]))


# -- signed messages --------------------------------------------------------------


def cap_message(terms: SessionTerms, *, account: str, cap: int) -> bytes:
    """Open and top-up: the agent lets ``account`` be held for ``cap`` in total for this session."""
    return CAP_DOMAIN + canonical_json(terms.as_json() | {"account": account, "cap": str(cap)})


def voucher_message(terms: SessionTerms, *, cumulative: int, sequence: int) -> bytes:
    """The seller may take up to ``cumulative`` of the session's cap, in total."""
    body = {"sessionId": terms.session_id, "realm": terms.realm, "recipient": terms.recipient, "ledger": terms.ledger,
            "currency": terms.currency, "cumulative": str(cumulative), "sequence": sequence}
    return VOUCHER_DOMAIN + canonical_json(body)


def close_message(terms: SessionTerms) -> bytes:
    """Close: the agent asks the seller to capture what the vouchers cover and release the rest."""
    return CLOSE_DOMAIN + canonical_json({"sessionId": terms.session_id, "realm": terms.realm, "recipient": terms.recipient,
                                          "ledger": terms.ledger, "action": "close"})


@dataclass(frozen=True)
class Voucher:
    """A signed voucher: the session's cumulative authorized value after this request, its sequence
    number and the signer's signature over them and the session's terms (SESSION-VOUCHER-*)."""

    cumulative: int
    sequence: int
    signature: str

    def as_json(self) -> dict[str, Any]:
        """The voucher as a payload carries it: ``cumulative`` a decimal string, ``sequence`` a JSON integer,
        and ``signature``."""
        return {"cumulative": str(self.cumulative), "sequence": self.sequence, "signature": self.signature}


def sign_voucher(key: SigningKey, terms: SessionTerms, cumulative: int, sequence: int) -> Voucher:
    """A voucher for ``cumulative`` in total, signed by the session's signer ``key``."""
    return Voucher(cumulative, sequence, key.sign(voucher_message(terms, cumulative=cumulative, sequence=sequence)))


def sign_cap(key: SigningKey, terms: SessionTerms, *, account: str, cap: int) -> str:
    """The signature of :func:`cap_message`: ``account`` held for ``cap`` in total."""
    return key.sign(cap_message(terms, account=account, cap=cap))


def sign_close(key: SigningKey, terms: SessionTerms) -> str:
    """The signature of :func:`close_message`."""
    return key.sign(close_message(terms))


def _verify(signer: str, message: bytes, signature: str, what: str) -> None:
    try:
        verify_signature(signer, message, signature)
    except SignatureInvalid:
        raise VoucherInvalid(f"{what} signature does not verify for the session's signer") from None


def verify_voucher(signer: str, terms: SessionTerms, voucher: Voucher) -> None:
    """Raise VoucherInvalid unless ``voucher`` is signed by ``signer`` for these ``terms``."""
    _verify(signer, voucher_message(terms, cumulative=voucher.cumulative, sequence=voucher.sequence), voucher.signature, "voucher")


def verify_cap(signer: str, terms: SessionTerms, *, account: str, cap: int, signature: str) -> None:
    """Raise VoucherInvalid unless ``signature`` is ``signer``'s over :func:`cap_message`."""
    _verify(signer, cap_message(terms, account=account, cap=cap), signature, "cap")


def verify_close(signer: str, terms: SessionTerms, signature: str) -> None:
    """Raise VoucherInvalid unless ``signature`` is ``signer``'s over :func:`close_message`."""
    _verify(signer, close_message(terms), signature, "close")


# -- the credential's payload ------------------------------------------------------


@dataclass(frozen=True)
class SessionPayload:
    """A syntactically valid session payload. Signatures are checked against the session's
    state (the signer fixed at open), so they are verified by the caller, not here."""

    action: str
    session_id: str
    signer: str
    account: str | None = None  # open
    cap: int | None = None  # open, topUp: the new total cap
    cap_signature: str | None = None
    voucher: Voucher | None = None  # open, voucher, topUp; optional on close
    close_signature: str | None = None  # close

    def as_json(self) -> dict[str, Any]:
        """The credential's ``payload`` object: ``type`` ``session``, the action, session id and signer, and
        the members this action carries (SESSION-REQ-07), amounts as decimal strings."""
        doc: dict[str, Any] = {"type": "session", "action": self.action, "sessionId": self.session_id, "signer": self.signer}
        if self.account is not None:
            doc["account"] = self.account
        if self.cap is not None:
            doc["cap"] = str(self.cap)
            doc["capSignature"] = self.cap_signature
        if self.voucher is not None:
            doc["voucher"] = self.voucher.as_json()
        if self.close_signature is not None:
            doc["closeSignature"] = self.close_signature
        return doc


def _text(payload: Mapping[str, Any], name: str, limit: int = 512) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise VoucherInvalid(f"session payload lacks a valid {name!r}")
    return value


def parse_session_payload(payload: Mapping[str, Any]) -> SessionPayload:
    """Shape checks only; raise VoucherInvalid naming the first problem."""
    if payload.get("type") != "session":
        raise VoucherInvalid("ledger session payload type must be 'session'")
    action = payload.get("action")
    if action not in ACTIONS:
        raise VoucherInvalid(f"session action must be one of {', '.join(ACTIONS)}")
    session_id = _text(payload, "sessionId", _MAX_ID)
    signer = _text(payload, "signer")
    try:
        public_key_from_did(signer)
    except ParseError:
        raise VoucherInvalid("session signer is not an Ed25519 did:key") from None
    account = cap = cap_sig = close_sig = None
    if action == "open":
        account = _text(payload, "account", 128)
    if action in ("open", "topUp"):
        try:
            cap = _uint(payload.get("cap"), "cap", positive=True)
        except ValueError as exc:
            raise VoucherInvalid(str(exc)) from None
        cap_sig = _text(payload, "capSignature")
    voucher = None
    raw = payload.get("voucher")
    if raw is not None or action in ("open", "voucher", "topUp"):
        if not isinstance(raw, Mapping):
            raise VoucherInvalid(f"session action {action!r} needs a voucher object")
        try:
            cumulative = _uint(raw.get("cumulative"), "voucher.cumulative")
        except ValueError as exc:
            raise VoucherInvalid(str(exc)) from None
        sequence = raw.get("sequence")
        if not isinstance(sequence, int) or isinstance(sequence, bool) or not 0 < sequence <= MAX_SEQUENCE:
            raise VoucherInvalid("voucher.sequence must be an integer from 1 to 2^53 - 1")
        voucher = Voucher(cumulative, sequence, _text(raw, "signature"))
    if action == "close":
        close_sig = _text(payload, "closeSignature")
    return SessionPayload(action, session_id, signer, account, cap, cap_sig, voucher, close_sig)
