"""The buyer: an aiohttp client that answers a 402 once, within policy, and checks the receipt.

It never sends a credential to an origin other than the one the caller asked for, never
follows a redirect with a credential, and treats a 5xx or a network error after paying as
"outcome unknown" rather than trying again and perhaps paying twice.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence

import aiohttp
from multidict import CIMultiDictProxy

from yarl import URL

from ..buyer_core import BuyerPolicy, Quote, check_transport, origin_of, select_quote, sign_quote, verify_receipt
from ..errors import OutcomeUnknown, ParseError, PaymentFailed, QuoteRejected, ReceiptInvalid
from ..headers import format_accept_payment, parse_challenges
from ..methods import BuyerMethod
from .agent import AgentIdentity
from ..models import PaymentReceipt

__all__ = ["PaymentClient", "PaidResponse"]

log = logging.getLogger("mpp.buyer")
JWKS_PATH = "/.well-known/jwks.json"
Event = Callable[[str, dict[str, Any]], None]


@dataclass
class PaidResponse:
    """The final response, and what was paid for it (``receipt`` is None if nothing was paid)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: str
    receipt: PaymentReceipt | None = None
    claims: dict[str, Any] | None = None
    quote: Quote | None = None

    @property
    def paid(self) -> bool:
        return self.receipt is not None

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@dataclass
class PaymentClient:
    session: aiohttp.ClientSession
    methods: Sequence[BuyerMethod]
    policy: BuyerPolicy
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(timezone.utc))
    on_event: Event | None = None
    identity: AgentIdentity | None = None
    _jwks: dict[tuple[str, str, int], Mapping[str, Any]] = field(default_factory=dict)

    def _event(self, kind: str, **data: Any) -> None:
        if self.on_event is not None:
            self.on_event(kind, data)

    @property
    def accept_payment(self) -> str:
        return format_accept_payment([(m.name, "charge") for m in self.methods])

    async def quote(self, method: str, url: str, *, data: bytes | None = None, headers: Mapping[str, str] | None = None) -> tuple[Quote | None, PaidResponse]:
        """Make the request unpaid; if it answers 402, choose and check a challenge (nothing signed)."""
        hdrs = {"Accept-Payment": self.accept_payment, **(headers or {})}
        async with self.session.request(method, url, data=data, headers=hdrs) as resp:
            body = await resp.read()
            first = PaidResponse(resp.status, resp.headers, body, str(resp.url))
            hops = [str(h.url) for h in resp.history] + [str(resp.url)]
        if first.status != 402:
            return None, first
        check_transport(first.url, self.policy)
        wanted = origin_of(url)
        for hop in hops:
            if origin_of(hop) != wanted:
                raise QuoteRejected("origin", f"402 came from {hop} after a redirect away from {url}; not paying")
        try:
            challenges = parse_challenges(first.headers.getall("WWW-Authenticate", ()), skip_invalid=True)
        except ParseError as exc:
            raise PaymentFailed(f"402 without a usable Payment challenge: {exc}", 402, None) from exc
        quote = select_quote(challenges, self.methods, self.policy, self.clock())
        self._event("quote-seen", challengeId=quote.challenge.id, amount=quote.request.amount, currency=quote.request.currency,
                    realm=quote.challenge.realm, accepted=True)
        return quote, first

    async def credential(self, method: str, url: str, *, data: bytes | None = None) -> str | None:
        """The ``Authorization`` value we would send for the current quote, without sending it."""
        quote, first = await self.quote(method, url, data=data)
        if quote is None:
            return None
        if self.identity is None:
            return sign_quote(quote)
        self.identity.check(quote, method, str(URL(first.url).raw_path_qs), self.clock())
        return sign_quote(quote, {"identity": self.identity.member(quote)})

    async def request(self, method: str, url: str, *, data: bytes | None = None, headers: Mapping[str, str] | None = None) -> PaidResponse:
        quote, first = await self.quote(method, url, data=data, headers=headers)
        if quote is None:
            return first
        if self.identity is None:
            return await self._pay(method, first, quote, sign_quote(quote), data, headers)
        return await self._pay_with_identity(method, first, quote, data, headers)

    async def _pay_with_identity(self, method: str, first: PaidResponse, quote: Quote, data: bytes | None,
                                 headers: Mapping[str, str] | None) -> PaidResponse:
        """Mandate checks and budget reservation before signing; one retry with an approval if asked."""
        identity = self.identity
        assert identity is not None
        now = self.clock()
        path_qs = str(URL(first.url).raw_path_qs)
        try:
            chain = identity.check(quote, method, path_qs, now)
            identity.reserve(chain, quote, now)
        except QuoteRejected as exc:
            self._event("policy-decision", challengeId=quote.challenge.id, decision="deny", rule=exc.rule, reason=exc.detail)
            raise
        self._event("policy-decision", challengeId=quote.challenge.id, decision="allow", reason="within mandate",
                    agent=chain.agent, principal=chain.principal, mandate=chain.leaf.jti)
        approval: str | None = None
        try:
            for attempt in range(2):
                credential = sign_quote(quote, {"identity": identity.member(quote, approval)})
                try:
                    paid = await self._pay(method, first, quote, credential, data, headers)
                except PaymentFailed as exc:
                    wants_approval = exc.status == 403 and str(exc.problem.get("type", "")).endswith(":approval-required")
                    if attempt == 0 and wants_approval and identity.approver is not None:
                        approval = await _maybe_await(identity.approver(exc.problem))
                        if approval:
                            self._event("policy-decision", challengeId=quote.challenge.id, decision="approved",
                                        rule=exc.problem.get("rule"), reason="approval obtained")
                            continue
                    raise
                identity.commit(quote.challenge.id)
                return paid
            raise AssertionError("unreachable")  # pragma: no cover
        except (PaymentFailed, QuoteRejected, ReceiptInvalid):
            identity.release(quote.challenge.id)
            raise
        # OutcomeUnknown keeps the reservation: the money may have moved.

    async def _pay(self, method: str, first: PaidResponse, quote: Quote, authorization: str, data: bytes | None,
                   headers: Mapping[str, str] | None) -> PaidResponse:
        self._event("authorization-signed", challengeId=quote.challenge.id)
        hdrs = {**(headers or {}), "Authorization": authorization}
        try:
            # The credential goes only to the URL that issued the challenge, once: no redirects,
            # and no silent resend by aiohttp's retry of idempotent requests on a dropped connection.
            async with self.session.request(
                method, first.url, data=data, headers=hdrs, allow_redirects=False, middlewares=(_send_once(),)
            ) as resp:
                body = await resp.read()
                paid = PaidResponse(resp.status, resp.headers, body, str(resp.url), quote=quote)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._event("refusal", challengeId=quote.challenge.id, outcome="unknown", reason=str(exc))
            raise OutcomeUnknown(f"network error after sending the credential: {exc}", quote.challenge.id) from exc
        if paid.status >= 500:
            self._event("refusal", challengeId=quote.challenge.id, outcome="unknown", status=paid.status)
            raise OutcomeUnknown(f"seller answered {paid.status} after the credential was sent", quote.challenge.id)
        if paid.status >= 400:
            problem = _problem_of(paid)
            self._event("refusal", challengeId=quote.challenge.id, status=paid.status, problem=problem.get("type"))
            raise PaymentFailed(f"seller refused the credential: HTTP {paid.status} {problem.get('type', '')}".strip(), paid.status, problem)
        jwks = await self._seller_jwks(first.url)
        paid.receipt, paid.claims = verify_receipt(paid.headers.get("Payment-Receipt"), quote, jwks, self.clock())
        self._event("receipt", challengeId=quote.challenge.id, reference=paid.receipt.reference,
                    amount=quote.request.amount, currency=quote.request.currency, realm=quote.challenge.realm,
                    agent=paid.claims.get("agent"), principal=paid.claims.get("principal"), mandate=paid.claims.get("mandate"),
                    approval=paid.claims.get("approval"), decision=paid.claims.get("decision"), resource=paid.claims.get("resource"))
        return paid

    async def _seller_jwks(self, url: str) -> Mapping[str, Any]:
        origin = origin_of(url)
        cached = self._jwks.get(origin)
        if cached is not None:
            return cached
        scheme, host, port = origin
        jwks_url = f"{scheme}://{host}:{port}{JWKS_PATH}" if ":" not in host else f"{scheme}://[{host}]:{port}{JWKS_PATH}"
        try:
            async with self.session.get(jwks_url, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise ReceiptInvalid(f"seller JWKS answered HTTP {resp.status}")
                jwks = await resp.json(content_type=None)
        except (aiohttp.ClientError, ValueError) as exc:
            raise ReceiptInvalid(f"could not fetch the seller's JWKS: {exc}") from exc
        if not isinstance(jwks, dict):
            raise ReceiptInvalid("seller JWKS is not a JSON object")
        self._jwks[origin] = jwks
        return jwks


async def _maybe_await(value: Any) -> Any:
    if hasattr(value, "__await__"):
        return await value
    return value


class CredentialResendBlocked(aiohttp.ClientError):
    """aiohttp wanted to send the credential a second time; we do not."""


def _send_once():
    sent = False

    async def middleware(request: aiohttp.ClientRequest, handler):
        nonlocal sent
        if sent:
            raise CredentialResendBlocked("connection dropped after the credential was sent")
        sent = True
        return await handler(request)

    return middleware


def _problem_of(resp: PaidResponse) -> dict[str, Any]:
    try:
        doc = json.loads(resp.body)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}
