"""One error hierarchy. Seller-side problems know their HTTP status and problem type.

Local errors (our own parser or formatter refusing input) and problems (what a seller
answers over HTTP) are distinct branches, as in h11.
"""

from __future__ import annotations

import unicodedata
from typing import Any, ClassVar

__all__ = [
    "TOKEN_MAX",
    "RESOURCE_MAX",
    "DETAIL_MAX",
    "ELLIPSIS",
    "clip",
    "PROBLEM_BASE",
    "EXTENSION_PROBLEM_BASE",
    "MPPError",
    "ParseError",
    "FormatError",
    "PaymentProblem",
    "PaymentRequired",
    "MalformedCredential",
    "InvalidChallenge",
    "VerificationFailed",
    "PaymentExpired",
    "PaymentInsufficient",
    "MethodUnsupported",
    "BadRequest",
    "AccessDenied",
    "RequestInProgress",
    "ExtensionProblem",
    "PROBLEM_CLASSES",
    "BuyerError",
    "QuoteRejected",
    "NoPayableChallenge",
    "ReceiptInvalid",
    "OutcomeUnknown",
    "PaymentFailed",
]

PROBLEM_BASE = "https://paymentauth.org/problems/"
"""The prefix of the problem types the draft defines."""
EXTENSION_PROBLEM_BASE = "urn:mpp:problem:"
"""Problem types we add ourselves; a URN so we never claim a host we do not own."""


# CORE-ERR-12: bounds on what is copied from a request into a problem, a log line or an audit entry.
TOKEN_MAX = 64
"""A token: method, intent, action, model, algorithm, mandate id."""
RESOURCE_MAX = 256
"""A resource (method, path and query), a path, a task id, an audit entry's value."""
DETAIL_MAX = 512
"""A problem's whole detail."""
ELLIPSIS = "\u2026"
"""Marks a value that was shortened."""
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})  # controls, format (bidi overrides), surrogates, separators


def clip(value: object, limit: int = TOKEN_MAX) -> str:
    """``value`` as text safe to copy: control and format characters removed, at most ``limit``
    characters, the last one ELLIPSIS when it was shortened (CORE-ERR-12). Whatever a stranger
    sends, what we write about it stays short and cannot forge lines or reorder text."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit and text.isprintable():  # the common case; isprintable rejects every category removed
        return text
    kept: list[str] = []
    for ch in text:
        if unicodedata.category(ch) in _UNPRINTABLE:
            continue
        kept.append(ch)
        if len(kept) > limit:
            return "".join(kept[:limit - 1]) + ELLIPSIS
    return "".join(kept)


class MPPError(Exception):
    """Base of every error this library raises on purpose."""


class ParseError(MPPError, ValueError):
    """A header, token or document on the wire is not what the spec allows."""


class FormatError(MPPError, ValueError):
    """We were asked to put something on the wire that the spec does not allow."""


class PaymentProblem(MPPError):
    """A condition the seller answers with an RFC 9457 problem document.

    ``fresh_challenge`` says whether the answer carries a new challenge (every 402 does).
    """

    status: ClassVar[int] = 402
    slug: ClassVar[str] = "payment-required"
    title: ClassVar[str] = "Payment Required"

    def __init__(self, detail: str = "", **extensions: Any) -> None:
        detail = clip(detail, DETAIL_MAX) if detail else self.title  # whatever a caller interpolated (CORE-ERR-12)
        super().__init__(detail)
        self.detail = detail
        self.extensions = extensions

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug

    @property
    def fresh_challenge(self) -> bool:
        return self.status == 402

    def to_problem(self, *, instance: str | None = None, challenge_id: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status, "detail": self.detail}
        if instance is not None:
            doc["instance"] = instance
        if challenge_id is not None:
            doc["challengeId"] = challenge_id
        doc.update(self.extensions)
        return doc


class PaymentRequired(PaymentProblem):
    """A priced resource was requested without a Payment credential (402, CORE-ERR-02)."""

    slug = "payment-required"
    title = "Payment Required"


class MalformedCredential(PaymentProblem):
    """The credential is unparseable, of the wrong shape, or one of several (402, CORE-ERR-03)."""

    slug = "malformed-credential"
    title = "Malformed Payment Credential"


class InvalidChallenge(PaymentProblem):
    """The echoed challenge is not one this seller issued for this request and may accept: id forged or
    tampered, realm or intent not ours, no ``expires``, already used, bound to another route (402, CORE-ERR-04)."""

    slug = "invalid-challenge"
    title = "Invalid Payment Challenge"


class VerificationFailed(PaymentProblem):
    """The payment proof fails the method's verification, or the body does not match or is not bound by
    the challenge's ``digest`` (402, CORE-ERR-06)."""

    slug = "verification-failed"
    title = "Payment Verification Failed"


class PaymentExpired(PaymentProblem):
    """The challenge expired; its id binding is intact (402, CORE-ERR-05)."""

    slug = "payment-expired"
    title = "Payment Expired"


class PaymentInsufficient(PaymentProblem):
    """The credential verifies but the payer cannot cover the amount; nothing moved (402, CORE-ERR-07)."""

    slug = "payment-insufficient"
    title = "Insufficient Payment"


class MethodUnsupported(PaymentProblem):
    """The credential names a payment method the seller does not accept (400, CORE-ERR-08)."""

    status = 400
    slug = "method-unsupported"
    title = "Payment Method Unsupported"


class BadRequest(PaymentProblem):
    """A paid request's Idempotency-Key is unusable: malformed, repeated, or reused for another
    resource (400, CORE-ONCE-06)."""

    status = 400
    slug = "bad-request"
    title = "Bad Request"


class AccessDenied(PaymentProblem):
    """The payment is valid but the seller's policy denies access; no challenge, and the payer is not
    left charged (403, CORE-ERR-09)."""

    status = 403
    slug = "access-denied"
    title = "Payment Accepted But Access Denied"


class ExtensionProblem(PaymentProblem):
    """A problem type of our own (identity, sessions, ...): under ``urn:mpp:problem:``, not the registry's."""

    @property
    def type(self) -> str:
        return EXTENSION_PROBLEM_BASE + self.slug


class RequestInProgress(ExtensionProblem):
    """An Idempotency-Key retry arrived while the original paid request is still running."""

    status = 409
    slug = "request-in-progress"
    title = "Paid Request Still In Progress"


PROBLEM_CLASSES: dict[str, type[PaymentProblem]] = {
    cls.slug: cls
    for cls in (
        PaymentRequired,
        MalformedCredential,
        InvalidChallenge,
        VerificationFailed,
        PaymentExpired,
        PaymentInsufficient,
        MethodUnsupported,
        BadRequest,
        AccessDenied,
    )
}
"""Every core problem class by its slug, to turn a problem document back into the exception."""


class BuyerError(MPPError):
    """The buyer refused to pay, or could not tell whether it paid."""


class NoPayableChallenge(BuyerError):
    """No challenge in the 402 is one this buyer can and may pay. ``reasons`` says why, per challenge."""

    def __init__(self, message: str, reasons: list[str] | None = None) -> None:
        super().__init__(message)
        self.reasons = reasons or []


class QuoteRejected(BuyerError):
    """The quote breaks the buyer's policy; nothing was signed."""

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(f"{rule}: {detail}")
        self.rule = rule
        self.detail = detail


class ReceiptInvalid(BuyerError):
    """The seller answered 2xx but its receipt does not verify."""


class PaymentFailed(BuyerError):
    """The seller refused the credential; ``problem`` is its problem document."""

    def __init__(self, message: str, status: int, problem: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem or {}


class OutcomeUnknown(BuyerError):
    """A credential was sent but no usable answer came back (5xx, network error).

    The payment may or may not have settled; retrying blindly could pay twice.
    """

    def __init__(self, message: str, challenge_id: str) -> None:
        super().__init__(message)
        self.challenge_id = challenge_id
