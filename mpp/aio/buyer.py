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

from ..buyer_core import BuyerPolicy, Quote, check_transport, origin_of, select_quote, sign_quote, verify_receipt
from ..errors import OutcomeUnknown, ParseError, PaymentFailed, QuoteRejected, ReceiptInvalid
from ..headers import format_accept_payment, parse_challenges
from ..methods import BuyerMethod
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
        for challenge in challenges:
            self._event("quote-seen", challenge_id=challenge.id, method=challenge.method, intent=challenge.intent, url=first.url)
        quote = select_quote(challenges, self.methods, self.policy, self.clock())
        self._event("quote-accepted", challenge_id=quote.challenge.id, amount=quote.request.amount, currency=quote.request.currency)
        return quote, first

    async def credential(self, method: str, url: str, *, data: bytes | None = None) -> str | None:
        """The ``Authorization`` value we would send for the current quote, without sending it."""
        quote, _ = await self.quote(method, url, data=data)
        return None if quote is None else sign_quote(quote)

    async def request(self, method: str, url: str, *, data: bytes | None = None, headers: Mapping[str, str] | None = None) -> PaidResponse:
        quote, first = await self.quote(method, url, data=data, headers=headers)
        if quote is None:
            return first
        authorization = sign_quote(quote)
        self._event("authorization-signed", challenge_id=quote.challenge.id)
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
            raise OutcomeUnknown(f"network error after sending the credential: {exc}", quote.challenge.id) from exc
        if paid.status >= 500:
            raise OutcomeUnknown(f"seller answered {paid.status} after the credential was sent", quote.challenge.id)
        if paid.status >= 400:
            problem = _problem_of(paid)
            self._event("payment-refused", challenge_id=quote.challenge.id, status=paid.status, problem=problem.get("type"))
            raise PaymentFailed(f"seller refused the credential: HTTP {paid.status} {problem.get('type', '')}".strip(), paid.status, problem)
        jwks = await self._seller_jwks(first.url)
        paid.receipt, paid.claims = verify_receipt(paid.headers.get("Payment-Receipt"), quote, jwks, self.clock())
        self._event("receipt-verified", challenge_id=quote.challenge.id, reference=paid.receipt.reference)
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
