"""The buyer's charges: sign a quote (with the agent's mandate and budget, and one
retry with an approval if the seller asks), send it once, check the receipt; keep the grants a
task or a seat brings and present them, with a fresh proof, instead of paying again."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from yarl import URL

from mpp.purchase.exchange import PaidResponse, TransportError
from mpp.purchase.wire import BuyerWire, close_stream, maybe_await, problem_of, problem_words
from mpp.buyer.core import Quote, check_unsigned_receipt, sign_quote, verify_receipt
from mpp.protocol.headers import parse_receipt
from mpp.buyer.grants import GrantBook, grant_headers, grant_refused, key_for, payer_of
from mpp.buyer.offers import wants_approval
from mpp.pricing import GRANT_HEADER, Grant, PricingProblem
from mpp.protocol.challenge import resource_of
from mpp.protocol.errors import (DETAIL_MAX, RESOURCE_MAX, ApprovalNeeded, ParseError, PaymentFailed, QuoteRejected, ReceiptInvalid,
                                 SellerUnreachable, clip)

__all__ = ["ChargePayer", "ask_approval", "seller_refusal"]

log = logging.getLogger("mpp.buyer")


async def ask_approval(identity: Any, wire: BuyerWire, exc: PaymentFailed, challenge_id: str) -> str | None:
    """The seller wants the principal's approval: ask the agent's approver, once."""
    if not wants_approval(exc.status, exc.problem) or identity is None or identity.approver is None:
        return None
    approval = await maybe_await(identity.approver(exc.problem))
    if approval:
        await wire.emit("policy-decision", challengeId=challenge_id, decision="approved",
                        rule=exc.problem.get("rule"), reason="approval obtained")
    return approval or None


def seller_refusal(method: str, url: str, quote: Quote, status: int, problem: dict[str, Any]) -> PaymentFailed:
    """The exception for a seller's refusal of a charge credential: :class:`ApprovalNeeded` when it
    asks for the principal's approval (with what an approver must see), else :class:`PaymentFailed`
    naming the problem's title and detail."""
    said = problem_words(problem)
    kind = clip(problem.get("type", ""), RESOURCE_MAX)
    if wants_approval(status, problem):
        u = URL(url)
        seller = f"{u.scheme}://{u.raw_authority}"
        resource = resource_of(method, u.raw_path, u.raw_query_string)
        return ApprovalNeeded(
            f"seller refused the credential: HTTP {status} {kind}: the principal's approval is required for "
            f"{quote.request.amount} {quote.request.currency} for "
            f"{clip(resource, RESOURCE_MAX)} at {clip(seller, RESOURCE_MAX)} (rule {clip(problem.get('rule'))}); get one "
            f"(`mpp approve --problem FILE`, or an approver on the AgentIdentity) and retry",
            status, problem, quote=quote, seller=seller, resource=resource)
    return PaymentFailed(f"seller refused the credential: HTTP {status} {kind}".strip() + (f": {said}" if said else ""),
                         status, problem)


class ChargePayer:
    """Pays one quote for a :class:`~mpp.purchase.client.Buyer`, and keeps and uses its grants
    (the client's ``identity``, ``methods`` and ``clock`` are read at each call)."""

    def __init__(self, client: Any, wire: BuyerWire, book: GrantBook) -> None:
        self._client, self._wire, self.book = client, wire, book

    def _identity_key(self) -> Any:
        identity = self._client.identity
        return identity.key if identity is not None else None

    async def pay_quote(self, method: str, first: PaidResponse, quote: Quote, data: bytes | None,
                        headers: Mapping[str, str] | None, keep_open: bool) -> PaidResponse:
        """Pay an accepted quote on the request that got the 402."""
        if self._client.identity is None:
            return await self._pay(method, first, quote, sign_quote(quote), data, headers, keep_open)
        return await self._pay_with_identity(method, first, quote, data, headers, keep_open)

    async def _pay_with_identity(self, method: str, first: PaidResponse, quote: Quote, data: bytes | None,
                                 headers: Mapping[str, str] | None, keep_open: bool = False) -> PaidResponse:
        """Mandate checks and budget reservation before signing; one retry with an approval if asked."""
        identity = self._client.identity
        assert identity is not None
        now = self._client.clock()
        path_qs = str(URL(first.url).raw_path_qs)
        try:
            chain = identity.check(quote, method, path_qs, now)
            await identity.reserve(chain, quote, now)
        except QuoteRejected as exc:
            await self._wire.emit("policy-decision", challengeId=quote.challenge.id, decision="deny", rule=exc.rule,
                                  reason=exc.detail)
            raise
        await self._wire.emit("policy-decision", challengeId=quote.challenge.id, decision="allow", reason="within mandate",
                              agent=chain.agent, principal=chain.principal, mandate=chain.leaf.jti)
        approval: str | None = None
        try:
            for attempt in range(2):
                credential = sign_quote(quote, {"identity": identity.member(quote, approval)}, source=identity.key.did)
                try:
                    paid = await self._pay(method, first, quote, credential, data, headers, keep_open)
                except PaymentFailed as exc:
                    approval = await ask_approval(identity, self._wire, exc, quote.challenge.id) if attempt == 0 else None
                    if approval:
                        continue
                    raise
                await identity.commit(quote.challenge.id)
                return paid
            raise AssertionError("unreachable")  # pragma: no cover
        except ReceiptInvalid:
            # The seller answered 2xx: it says it was paid, so the purchase counts (IDENT-BUD-03)
            await identity.commit(quote.challenge.id)
            raise
        except (PaymentFailed, QuoteRejected):
            await identity.release(quote.challenge.id)
            raise
        # OutcomeUnknown keeps the reservation: the money may have moved.

    async def _pay(self, method: str, first: PaidResponse, quote: Quote, authorization: str, data: bytes | None,
                   headers: Mapping[str, str] | None, keep_open: bool = False) -> PaidResponse:
        await self._wire.emit("authorization-signed", challengeId=quote.challenge.id)
        paid = await self._wire.send(method, first.url, authorization, data, headers, quote.challenge.id, keep_open)
        paid.quote = quote
        if paid.status >= 400:
            problem = problem_of(paid)
            await self._wire.emit("refusal", challengeId=quote.challenge.id, status=paid.status, problem=problem.get("type"))
            raise seller_refusal(method, first.url, quote, paid.status, problem)
        try:
            paid.receipt, paid.claims = await self._receipt(paid, quote, first.url)
        except ReceiptInvalid as exc:
            close_stream(paid)
            exc.response = paid  # paid for: the caller keeps what the seller sent
            raise
        except BaseException:
            close_stream(paid)
            raise
        # A task or a seat brings a grant for the follow-ups / the period (PRICE-TASK-02, PRICE-SEAT-05).
        await self.keep_grant(paid.headers.get(GRANT_HEADER), quote.challenge.realm, first.url)
        claims = paid.claims
        await self._wire.emit("receipt", challengeId=quote.challenge.id, reference=paid.receipt.reference,
                              amount=quote.request.amount, currency=quote.request.currency, realm=quote.challenge.realm,
                              agent=claims.get("agent"), principal=claims.get("principal"), mandate=claims.get("mandate"),
                              approval=claims.get("approval"), decision=claims.get("decision"), resource=claims.get("resource"))
        return paid

    async def _receipt(self, paid: PaidResponse, quote: Quote, url: str) -> tuple[Any, dict[str, Any]]:
        """The receipt of a 2xx and its verified claims (CORE-BUY-04); with the policy's consent, a
        draft seller's unsigned receipt instead, its claims then only ``{"signed": False}`` (CORE-BUY-12)."""
        header = paid.headers.get("Payment-Receipt")
        if self._client.policy.accept_unsigned_receipts and not _carries_jws(header):
            return check_unsigned_receipt(header, quote), {"signed": False}
        jwks = await self._wire.jwks(url)
        return verify_receipt(header, quote, jwks, self._client.clock())

    def payer(self) -> str | None:
        """The DID that signs our payments: a grant is issued to it (PRICE-TASK-02, PRICE-SEAT-05)."""
        return payer_of(self._client.methods, self._identity_key())

    async def keep_grant(self, token: Any, realm: str, url: str) -> Grant | None:
        """Verify a grant the seller gave us (its receipt key, our DID, its realm) and keep it for its origin."""
        payer = self.payer()
        if not isinstance(token, str) or not token or payer is None:
            return None
        try:
            jwks = await self._wire.jwks(url)
            return self.book.admit(token, jwks, realm=realm, agent=payer, url=url, now=self._client.clock())
        except (PricingProblem, ReceiptInvalid, ValueError) as exc:
            log.warning("not keeping a grant from %s: %s", clip(realm, RESOURCE_MAX), clip(exc, DETAIL_MAX))  # the seller's words (CORE-ERR-12)
            return None

    async def with_grant(self, grant: Grant, method: str, url: str, data: bytes | None, headers: Mapping[str, str] | None,
                         keep_open: bool) -> PaidResponse | None:
        """The request with the grant and a fresh proof instead of a payment; None if the seller
        refused the grant (403 grant-*): it is dropped and the caller goes the usual way."""
        key = key_for(grant.agent, self._client.methods, self._identity_key())
        if key is None:
            self.book.drop(url, grant)
            return None
        u = URL(url)
        proof = grant_headers(grant, key, method=method, path=u.raw_path, query=u.raw_query_string, body=data or b"",
                              now=self._client.clock())
        hdrs = {"Accept-Payment": self._client.accept_payment, **(headers or {}), **proof}
        # Only to the origin that issued it: no redirects with a grant.
        try:
            served = await self._wire.exchange.send(method, url, data=data, headers=hdrs, keep_open=keep_open)
        except TransportError as exc:  # a grant is no payment: nothing was paid
            raise SellerUnreachable(url, str(exc)) from exc
        if grant_refused(served.status, problem_of(served)):
            self.book.drop(url, grant)
            log.info("seller refused grant %s: %s", grant.jti, clip(problem_of(served).get("type"), RESOURCE_MAX))
            return None
        if served.status != 402:
            served.grant = grant.jti
        return served


def _carries_jws(header: str | None) -> bool:
    """Whether a Payment-Receipt value holds our signed JWS (its ``receipt`` member); False when it
    does not decode (the strict check then says why)."""
    try:
        return bool(parse_receipt(header).receipt) if header else False
    except ParseError:
        return False
