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
    "SellerMisconfigured",
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
    "PolicyRefused",
    "QuoteRejected",
    "NoPayableChallenge",
    "BudgetExceeded",
    "ReceiptInvalid",
    "SellerRefused",
    "PaymentFailed",
    "ApprovalNeeded",
    "SellerFault",
    "OutcomeUnknown",
    "SellerUnreachable",
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
        """The problem type URI: the draft's registry (PROBLEM_BASE) and ``slug``."""
        return PROBLEM_BASE + self.slug

    @property
    def fresh_challenge(self) -> bool:
        """Whether the answer carries fresh challenges: True for a 402 (CORE-ERR-10). A 400
        ``method-unsupported`` carries them too; the engine sees to that itself."""
        return self.status == 402

    def to_problem(self, *, instance: str | None = None, challenge_id: str | None = None) -> dict[str, Any]:
        """The RFC 9457 problem document (CORE-ERR-01): ``type``, ``title``, ``status`` and ``detail``,
        ``instance`` and ``challengeId`` when given, then the extension members given at construction."""
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
        """The problem type: ``urn:mpp:problem:`` (EXTENSION_PROBLEM_BASE) and ``slug``."""
        return EXTENSION_PROBLEM_BASE + self.slug


class RequestInProgress(ExtensionProblem):
    """An Idempotency-Key retry arrived while the original paid request is still running."""

    status = 409
    slug = "request-in-progress"
    title = "Paid Request Still In Progress"


class SellerMisconfigured(ExtensionProblem):
    """The seller cannot take payment because of its own configuration (a priced handler outside
    the payment middleware, its recipient account or its ledger missing): no challenge was
    consumed and nothing moved; the seller's log names the fix (503, CORE-ERR-14)."""

    status = 503
    slug = "seller-misconfigured"
    title = "Seller Cannot Take Payment"


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
    """Base of every error the buyer raises on purpose: catch it for "this paid request failed".

    Catch a subclass to act on the cause: :class:`PolicyRefused` (our own policy refused before
    signing: nothing signed or sent), :class:`SellerRefused` (the seller refused the credential;
    its problem document is attached) and its :class:`ApprovalNeeded` and :class:`SellerFault`
    (the seller's own configuration: nothing paid), :class:`OutcomeUnknown`
    (a credential went out and no usable answer came back: the money may have moved),
    :class:`SellerUnreachable` (no connection before anything was sent) and
    :class:`ReceiptInvalid` (paid, but the receipt does not verify).
    """


class PolicyRefused(BuyerError):
    """Our own policy (the wallet's limits, the mandate chain, the budget) refused: nothing was
    signed or sent, so nothing was paid. Change the policy, or the request, to go on."""


class NoPayableChallenge(PolicyRefused):
    """No challenge in the 402 is one this buyer can and may pay. ``reasons`` says why, per challenge."""

    def __init__(self, message: str, reasons: list[str] | None = None) -> None:
        super().__init__(message)
        self.reasons = reasons or []


class QuoteRejected(PolicyRefused):
    """The quote breaks the buyer's policy; nothing was signed. ``rule`` names the rule
    (``max-amount``, ``currency``, ``mandate``, ``budget``, ...), ``detail`` says why and how to go on."""

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(f"{rule}: {detail}")
        self.rule = rule
        self.detail = detail


class BudgetExceeded(QuoteRejected):
    """A mandate's budget for the period cannot take this purchase (IDENT-POL-01, IDENT-BUD-01);
    nothing was signed. Carries ``mandate`` (the link's budget key, ``issuer#jti``), ``period`` (its key, e.g.
    ``2026-12-05``), ``budget``, ``used`` (spent or reserved), ``remaining``, ``amount`` (what this
    purchase needed) and ``held_by_sessions`` (how much of ``used`` open sessions hold:
    closing them, ``PaymentClient.close_sessions()``, frees what they did not spend)."""

    def __init__(self, mandate: str, period: str | None, budget: int, used: int, amount: int, *,
                 held_by_sessions: int = 0, open_sessions: int = 0) -> None:
        self.mandate, self.period, self.budget, self.used, self.amount = mandate, period, budget, used, amount
        self.remaining = max(0, budget - used)
        self.held_by_sessions, self.open_sessions = held_by_sessions, open_sessions
        super().__init__("budget", self._detail())

    def _detail(self) -> str:
        when = f" for period {self.period}" if self.period else ""
        jti = self.mandate.rpartition("#")[2]  # a link is counted under "issuer#jti"; the jti names it
        text = (f"mandate {clip(jti)}{when}: {self.used} of its budget {self.budget} spent or reserved, "
                f"{self.remaining} left; this purchase needs {self.amount}")
        if self.held_by_sessions:
            text += (f"; {self.held_by_sessions} of it is held by {self.open_sessions} open session(s): closing them "
                     f"(PaymentClient.close_sessions(), or let `mpp fetch` finish its run) frees what they did not spend")
        else:
            wait = "" if self.period in (None, "total") else "wait for the next period or "
            text += f"; {wait}ask the principal for a mandate with a larger --budget (`mpp mandate issue`)"
        return text

    def with_sessions(self, held: int, count: int) -> "BudgetExceeded":
        """The same refusal, saying that ``count`` open sessions hold ``held`` of the budget."""
        return BudgetExceeded(self.mandate, self.period, self.budget, self.used, self.amount,
                              held_by_sessions=held, open_sessions=count)


class ReceiptInvalid(BuyerError):
    """The seller answered 2xx but its receipt does not verify: the payment was probably taken.
    ``response`` is what the seller sent (a ``PaidResponse``: status, headers, body and its quote),
    when the error comes from a paid request: keep it and the challenge id; ask the seller (its
    receipt keys may have changed). A draft seller that does not sign receipts is taken with
    ``BuyerPolicy(accept_unsigned_receipts=True)``."""

    response: Any = None


class SellerRefused(BuyerError):
    """The seller refused the credential; ``problem`` is its RFC 9457 problem document, ``status``
    its HTTP status, ``problem_type`` the last segment of the problem's ``type`` (e.g.
    ``verification-failed``, ``approval-required``). Nothing was paid (CORE-ERR-01)."""

    def __init__(self, message: str, status: int, problem: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem or {}

    @property
    def problem_type(self) -> str:
        """``verification-failed`` for ``https://paymentauth.org/problems/verification-failed``, and so on."""
        kind = str(self.problem.get("type", ""))
        return kind.rsplit("/", 1)[-1].rsplit(":", 1)[-1]


PaymentFailed = SellerRefused
"""The earlier name of :class:`SellerRefused`, kept: ``except PaymentFailed`` still catches every seller refusal."""


class ApprovalNeeded(SellerRefused):
    """The seller wants the principal's approval for this purchase (403 ``approval-required``) and
    none was given (no approver, or it declined). Nothing was paid. Carries what an approver must
    see and what a retry needs: ``challenge_id``, ``quote`` (the :class:`~mpp.buyer.core.Quote`),
    ``amount``, ``currency``, ``resource``, ``seller`` (its origin URL), ``rule`` and ``mandate``.
    Get an approval for ``problem`` (``mpp approve --problem FILE``, or an ``AgentIdentity``
    approver) and retry the same request."""

    def __init__(self, message: str, status: int, problem: dict[str, Any] | None, *, quote: Any = None,
                 seller: str | None = None, resource: str | None = None) -> None:
        super().__init__(message, status, problem)
        doc = self.problem
        self.quote = quote
        # What we were about to sign, not what the seller's document claims, when we have it.
        self.challenge_id = quote.challenge.id if quote is not None else doc.get("challengeId")
        self.amount = quote.request.amount if quote is not None else doc.get("amount")
        self.currency = quote.request.currency if quote is not None else doc.get("currency")
        self.resource = resource
        self.seller = seller
        self.rule = doc.get("rule")
        self.mandate = doc.get("mandate")


class SellerFault(SellerRefused):
    """The seller cannot take payment because of its own configuration (503
    ``seller-misconfigured``, CORE-ERR-14): it consumed no challenge and moved no money, so nothing
    was paid. Not the buyer's policy, not its payer account: tell the seller. ``detail`` is the
    seller's explanation, ``retry_after`` its ``Retry-After`` in seconds (None if absent or not a
    number); retrying the same request after it is safe (CORE-BUY-11)."""

    def __init__(self, message: str, status: int, problem: dict[str, Any] | None, *,
                 retry_after: int | None = None) -> None:
        super().__init__(message, status, problem)
        self.retry_after = retry_after
        detail = self.problem.get("detail")
        self.detail = detail if isinstance(detail, str) else ""


class OutcomeUnknown(BuyerError):
    """A credential was sent but no usable answer came back (5xx, network error).

    The payment may or may not have settled; retrying blindly could pay twice. Carries
    ``challenge_id``, ``status`` (None after a network error), ``problem`` (the seller's problem
    document, e.g. a 503 ``ledger-unavailable``, or {}) and ``how_to_check``.
    """

    def __init__(self, message: str, challenge_id: str, *, status: int | None = None,
                 problem: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.challenge_id = challenge_id
        self.status = status
        self.problem = problem or {}

    @property
    def how_to_check(self) -> str:
        """What to look up before paying again (the payer account left as ``ACCOUNT``)."""
        return self.how_to_check_for("ACCOUNT")

    def how_to_check_for(self, account: str) -> str:
        """What to look up before paying again, for the payer account ``account``."""
        return (f"before paying again, check whether challenge {self.challenge_id} settled (on the ledger method it is "
                f"the transfer's id and the receipt's reference): the payer account's balance at the ledger "
                f"(`mpp ledger balance {account}`), or ask the seller for the receipt of that challenge")


class SellerUnreachable(BuyerError):
    """The seller could not be reached (refused connection, DNS, timeout) before any credential
    was sent: nothing was paid and retrying is safe. ``url`` is what we asked for, ``reason`` why."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"could not reach {url}: {reason}; nothing was sent or paid, retrying is safe")
        self.url = url
        self.reason = reason
