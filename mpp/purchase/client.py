"""The buyer engine: answers a 402 once, within policy, and checks the receipt, over any
:class:`~mpp.purchase.exchange.Exchange` (aiohttp's in :mod:`mpp.aio`, httpx's in :mod:`mpp.httpx`,
a tool call's in :mod:`mpp.mcp`): one buyer, whatever carries the bytes.

It never sends a credential to an origin other than the one the caller asked for, never
follows a redirect with a credential, and treats a 5xx or a network error after paying as
"outcome unknown" rather than trying again and perhaps paying twice.

With a :class:`~mpp.purchase.sessions.SessionPolicy` it also opens ``session``s: the first 402 that
offers one opens it, later requests to the same seller carry a voucher and no 402 comes first,
and :meth:`Buyer.close_sessions` (or leaving ``async with client``) closes them.

A 402 from a price list (spec/pricing.md) offers several pricing models at once: the client
chooses the offer by its :class:`~mpp.buyer.core.OfferPlan` among those its mandate chain allows
and its policy accepts (a seat only with ``BuyerPolicy(allow_recurring=True)``). The grants a
task or a seat purchase brings (``Payment-Grant``) are kept per origin and presented, with a
fresh proof, on the later requests they cover instead of paying again (PRICE-GRANT-05).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Callable, Mapping, Sequence

from yarl import URL

from mpp.purchase.agent import AgentIdentity
from mpp.purchase.charges import ChargePayer
from mpp.purchase.exchange import Exchange, PaidResponse, TransportError, headers_of
from mpp.purchase.session_runner import SessionRunner
from mpp.purchase.sessions import OpenSession, SessionManager, SessionOffer, SessionPolicy, SSEEvent, parse_sse
from mpp.purchase.wire import BuyerWire, Event, close_stream, json_object
from mpp.buyer.core import (
    BuyerPolicy,
    OfferChoice,
    OfferPlan,
    Quote,
    check_transport,
    is_priced,
    origin_of,
    select_quote,
    sign_quote,
)
from mpp.buyer.grants import GrantBook
from mpp.buyer.offers import accept_payment, allowed_challenges, answer_plain, choose_priced, quote_seen, seat_already_paid
from mpp.buyer.session_receipts import problem_amount
from mpp.methods import BuyerMethod
from mpp.pricing import SUBSCRIPTION_ID_HEADER, Grant, MandateRestrictions
from mpp.protocol.errors import (BudgetExceeded, BuyerError, OutcomeUnknown, ParseError, PaymentFailed, QuoteRejected, ReceiptInvalid,
                                 SellerUnreachable)
from mpp.protocol.headers import parse_challenges
from mpp.protocol.models import Challenge, PaymentReceipt

__all__ = ["Buyer", "PaidStream"]

log = logging.getLogger("mpp.buyer")


@dataclass
class Buyer:
    """Pays for requests over ``exchange`` with ``methods``, within ``policy``.

    The work is shared out: a :class:`~mpp.purchase.charges.ChargePayer` pays charges and keeps the
    grants, a :class:`~mpp.purchase.session_runner.SessionRunner` opens, uses and closes sessions,
    the decisions are :mod:`mpp.buyer`'s, and ``exchange`` carries the bytes. The transports wrap
    it: :class:`mpp.aio.PaymentClient`, :mod:`mpp.httpx`, :mod:`mpp.mcp`.
    """

    methods: Sequence[BuyerMethod]
    policy: BuyerPolicy
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(timezone.utc))
    """The time the client judges by (challenge expiry, mandate validity, budget periods, grants, receipts):
    a callable returning an aware ``datetime``; default: the system clock, in UTC."""
    on_event: Event | None = None
    identity: AgentIdentity | None = None
    sessions: SessionPolicy | None = None
    # The planned work by which an offer is chosen among several (PRICE-BUY-01); default: one request.
    plan: OfferPlan = field(default_factory=OfferPlan)
    exchange: Exchange | None = field(default=None, kw_only=True)
    """What carries the requests; given by the transport that wraps the buyer."""
    _jwks: dict[tuple[str, str, int], Mapping[str, Any]] = field(default_factory=dict)
    _wire: BuyerWire = field(init=False, repr=False, compare=False)
    _charges: ChargePayer = field(init=False, repr=False, compare=False)
    _runner: SessionRunner | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.exchange is None:
            raise TypeError("Buyer needs an exchange: use mpp.aio.PaymentClient, mpp.httpx or mpp.mcp, or give exchange=")
        self._wire = BuyerWire(self, self.exchange, self._jwks)
        self._charges = ChargePayer(self, self._wire, GrantBook())
        if self.sessions is not None:
            self._runner = SessionRunner(self, self._wire, SessionManager(self.sessions, event=self._wire.emit))

    async def __aenter__(self) -> "Buyer":
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        try:
            await self.close_sessions()
        except (BuyerError, TransportError):
            if exc is None:
                raise
            log.warning("closing sessions failed while leaving on an error", exc_info=True)

    @property
    def accept_payment(self) -> str:
        """The ``Accept-Payment`` value sent with every unpaid request: a charge by each of ``methods``, a
        ledger session (first or last, as ``sessions.prefer`` says) when sessions are on, and a subscription
        when ``policy.allow_recurring``."""
        return accept_payment(self.methods, self.policy, self._runner.manager.policy if self._runner is not None else None)

    @property
    def grants(self) -> list[Grant]:
        """The grants held and not yet expired, of every origin."""
        return self._charges.book.held(self.clock())

    @property
    def open_sessions(self) -> list[OpenSession]:
        """Sessions not yet closed (open ones, and retired ones waiting for their close)."""
        return self._runner.manager.sessions() if self._runner is not None else []

    async def _unpaid(self, method: str, url: str, data: bytes | None, headers: Mapping[str, str] | None,
                      keep_open: bool = False) -> tuple[PaidResponse, list[str]]:
        hdrs = {"Accept-Payment": self.accept_payment, **(headers or {})}
        subscription = self._charges.book.subscription_for(method, url, URL(url).raw_path)
        if subscription is not None:
            hdrs.setdefault(SUBSCRIPTION_ID_HEADER, subscription)
        try:
            first = await self._wire.exchange.send(method, url, data=data, headers=hdrs, follow_redirects=True,
                                                   keep_open=keep_open)
        except TransportError as exc:  # no credential went out: nothing paid
            raise SellerUnreachable(url, str(exc)) from exc
        return first, [*first.history, first.url]

    def _challenges_of(self, first: PaidResponse, hops: Sequence[str], url: str) -> list[Challenge]:
        check_transport(first.url, self.policy)
        wanted = origin_of(url)
        for hop in hops:
            if origin_of(hop) != wanted:
                raise QuoteRejected("origin", f"402 came from {hop} after a redirect away from {url}; not paying")
        try:
            return parse_challenges(first.headers.getall("WWW-Authenticate", ()), skip_invalid=True)
        except ParseError as exc:
            raise PaymentFailed(f"402 without a usable Payment challenge: {exc}", 402, None) from exc

    async def quote(self, method: str, url: str, *, data: bytes | None = None, headers: Mapping[str, str] | None = None) -> tuple[Quote | None, PaidResponse]:
        """Make the request unpaid; if it answers 402, choose and check a challenge (nothing signed)."""
        first, hops = await self._unpaid(method, url, data, headers)
        if first.status != 402:
            return None, first
        challenges = self._challenges_of(first, hops, url)
        if is_priced(challenges):
            choice = await self._choose(challenges, self.clock(), sessions=False)
            assert choice.quote is not None
            quote = choice.quote
            await self._wire.emit("quote-seen", **quote_seen(quote, choice))
        else:
            quote = select_quote(allowed_challenges(challenges, self._restrictions()), self.methods, self.policy, self.clock())
            await self._wire.emit("quote-seen", **quote_seen(quote))
        return quote, first

    async def credential(self, method: str, url: str, *, data: bytes | None = None) -> str | None:
        """The ``Authorization`` value we would send for the current quote, without sending it."""
        quote, first = await self.quote(method, url, data=data)
        if quote is None:
            return None
        if self.identity is None:
            return sign_quote(quote)
        self.identity.check(quote, method, str(URL(first.url).raw_path_qs), self.clock())
        return sign_quote(quote, {"identity": self.identity.member(quote)}, source=self.identity.key.did)

    async def pay_challenge(self, method: str, url: str, challenge: Challenge, *, data: bytes | None = None,
                            headers: Mapping[str, str] | None = None) -> PaidResponse:
        """Pay a challenge this request was quoted earlier, without asking for a new one: the way to
        retry the very challenge an approval is bound to (IDENT-APR-01, IDENT-POL-02: a refusal for
        want of an approval leaves it unconsumed until it expires). Policy, mandate and budget are
        checked as for :meth:`request`; the identity's approver is asked if the seller wants one."""
        check_transport(url, self.policy)
        quote = select_quote([challenge], self.methods, self.policy, self.clock())
        await self._wire.emit("quote-seen", **quote_seen(quote))
        first = PaidResponse(status=402, headers=headers_of({}), body=b"", url=url)
        return await self._charges.pay_quote(method, first, quote, data, headers, False)

    async def request(self, method: str, url: str, *, data: bytes | None = None, headers: Mapping[str, str] | None = None,
                      redirected_from: str | None = None) -> PaidResponse:
        """Make the request, paying once if the seller answers 402 and the policy, the mandate chain and the
        budget allow; the final response. A grant held for the route is presented first (PRICE-GRANT-05), an
        open session with the origin pays by voucher; otherwise the 402's offer is chosen and paid by charge,
        seat or a new session. An answer other than 402 to the unpaid request comes back as it is (``paid``
        False).

        Raises PolicyRefused (QuoteRejected, BudgetExceeded, NoPayableChallenge: nothing signed),
        SellerUnreachable (nothing sent), SellerRefused (ApprovalNeeded among them: nothing paid),
        OutcomeUnknown (a 5xx or a network error after the credential went out: the money may have moved) or
        ReceiptInvalid.

        ``redirected_from`` is for a transport below a client that follows redirects itself (httpx): the URL
        the caller first asked for, so a 402 on a hop to another origin is refused as after our own redirects."""
        return await self._request(method, url, data, headers, keep_open=False, redirected_from=redirected_from)

    def stream(self, method: str, url: str, *, data: bytes | None = None, headers: Mapping[str, str] | None = None) -> "PaidStream":
        """A paid ``text/event-stream``: ``async with client.stream("GET", url) as events: async for e in events``.

        Payment events (``payment-required``, ``payment-receipt``, ...) are answered here and never
        yielded; the stream's receipt is on ``events.receipt`` / ``events.claims`` at the end.
        """
        return PaidStream(self, method, url, data, headers)

    async def close_sessions(self) -> list[dict[str, Any]]:
        """Close every open session; return the final receipts' claims.

        Every session is tried; if any close fails, the first error is raised after the others
        (its budget reservation is kept: the seller's idle close may still capture).
        """
        if self._runner is None:
            return []
        return await self._runner.close_all()

    async def _request(self, method: str, url: str, data: bytes | None, headers: Mapping[str, str] | None,
                       keep_open: bool, redirected_from: str | None = None) -> PaidResponse:
        try:
            return await self._request_paying(method, url, data, headers, keep_open, redirected_from)
        except BudgetExceeded as exc:
            held = self._held_by_sessions(exc.mandate)
            if held[0]:
                raise exc.with_sessions(*held) from None
            raise

    def _held_by_sessions(self, mandate: str) -> tuple[int, int]:
        """(amount, count): what our open sessions hold of the budget of mandate link ``mandate``
        (each reserves its cap until it is closed), so a budget refusal can say so (issue 17)."""
        sessions = [s for s in self.open_sessions
                    if not s.closed and s.budget_links and any(link.jti == mandate for link in s.budget_links)]
        return sum(s.cap - s.spent for s in sessions), len(sessions)

    async def _request_paying(self, method: str, url: str, data: bytes | None, headers: Mapping[str, str] | None,
                              keep_open: bool, redirected_from: str | None = None) -> PaidResponse:
        book = self._charges.book
        grant = book.covering(method, url, URL(url).raw_path, self.clock()) if book.usable(url, self.policy) else None
        if grant is not None:
            served = await self._charges.with_grant(grant, method, url, data, headers, keep_open)
            if served is not None and served.status != 402:
                return served
            if served is not None:  # the seller wants payment after all: its 402 carries the challenges
                return await self._answer(method, served, self._challenges_of(served, [served.url], url), data, headers, keep_open)
        if self._runner is not None:
            session = self._runner.manager.find(url)
            if session is not None:
                return await self._runner.use(session, method, url, data, headers, keep_open)
        first, hops = await self._unpaid(method, url, data, headers, keep_open)
        if first.status != 402:
            return first
        if redirected_from is not None:
            hops, url = [url, *hops], redirected_from
        return await self._answer(method, first, self._challenges_of(first, hops, url), data, headers, keep_open)

    async def _answer(self, method: str, first: PaidResponse, challenges: Sequence[Challenge], data: bytes | None,
                      headers: Mapping[str, str] | None, keep_open: bool) -> PaidResponse:
        """Pay a 402: choose among a price list's offers; else open a session if one is offered
        and preferred, else pay by charge."""
        now = self.clock()
        if is_priced(challenges):
            return await self._answer_priced(method, first, challenges, data, headers, keep_open, now)
        challenges = allowed_challenges(challenges, self._restrictions())
        runner = self._runner
        decision = answer_plain(challenges, self.methods, self.policy, runner.manager.policy if runner is not None else None, now)
        if isinstance(decision, SessionOffer):
            assert runner is not None
            return await runner.open(method, first, decision, data, headers, keep_open)
        await self._wire.emit("quote-seen", **quote_seen(decision))
        return await self._charges.pay_quote(method, first, decision, data, headers, keep_open)

    # -- several offers, grants, seats (spec/pricing.md) ------------------------------------

    def _restrictions(self) -> MandateRestrictions | None:
        return self.identity.restrictions() if self.identity is not None else None

    async def _choose(self, challenges: Sequence[Challenge], now: datetime, *, sessions: bool = True) -> OfferChoice:
        """PRICE-BUY-01: the offer to pay, or QuoteRejected / NoPayableChallenge (recorded as a denial)."""
        manager = self._runner.manager if (sessions and self._runner is not None) else None
        try:
            return choose_priced(challenges, self.methods, self.policy, now, plan=self.plan,
                                 restrictions=self._restrictions(), agent=self._charges.payer(),
                                 sessions=manager.policy if manager is not None else None)
        except QuoteRejected as exc:
            await self._wire.emit("policy-decision", decision="deny", rule=exc.rule, reason=exc.detail,
                                  realm=challenges[0].realm if challenges else None)
            raise

    async def _answer_priced(self, method: str, first: PaidResponse, challenges: Sequence[Challenge], data: bytes | None,
                             headers: Mapping[str, str] | None, keep_open: bool, now: datetime) -> PaidResponse:
        choice = await self._choose(challenges, now)
        if choice.session is not None:
            assert self._runner is not None
            return await self._runner.open(method, first, choice.session, data, headers, keep_open)
        quote = choice.quote
        assert quote is not None
        await self._wire.emit("quote-seen", **quote_seen(quote, choice))
        try:
            return await self._charges.pay_quote(method, first, quote, data, headers, keep_open)
        except PaymentFailed as exc:
            # PRICE-SEAT-03: this period is paid already (another process of ours, say); nothing
            # moved, and the problem carries a seat grant: use it, never pay the period twice.
            if not seat_already_paid(quote, exc.status, exc.problem):
                raise
            grant = await self._charges.keep_grant(exc.problem.get("grant"), quote.challenge.realm, first.url)
            if grant is None or not grant.covers(method, URL(first.url).raw_path):
                raise
            served = await self._charges.with_grant(grant, method, first.url, data, headers, keep_open)
            if served is None or served.status == 402:
                raise
            return served


class PaidStream:
    """A paid server-sent-event stream; see :meth:`Buyer.stream`.

    ``response`` is the paid response (its body is empty while the stream runs; a response that
    is not an event stream is read whole and yields no events). ``receipt``/``claims`` hold the
    receipt from the stream's ``payment-receipt`` event (or, for a charge, its header).
    """

    def __init__(self, client: Buyer, method: str, url: str, data: bytes | None, headers: Mapping[str, str] | None) -> None:
        self._client, self._method, self._url, self._data, self._headers = client, method, url, data, headers
        self.response: PaidResponse | None = None
        self.receipt: PaymentReceipt | None = None
        self.claims: dict[str, Any] | None = None
        self._iterator: AsyncIterator[SSEEvent] | None = None

    async def start(self) -> PaidResponse:
        """Make the paid request with the event stream kept open, once (a later call returns the same
        response), and take the receipt it came with. ``async with`` calls it; it raises as
        :meth:`Buyer.request` does."""
        if self.response is None:
            self.response = await self._client._request(self._method, self._url, self._data, self._headers, keep_open=True)
            self.receipt, self.claims = self.response.receipt, self.response.claims
        return self.response

    async def __aenter__(self) -> "PaidStream":
        await self.start()
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the event iterator and close the kept-open response; safe to call again. Leaving
        ``async with`` calls it."""
        if self._iterator is not None:
            await self._iterator.aclose()  # type: ignore[attr-defined]
        if self.response is not None:
            close_stream(self.response)

    def __aiter__(self) -> AsyncIterator[SSEEvent]:
        if self._iterator is None:
            self._iterator = self._events()
        return self._iterator

    async def _events(self) -> AsyncIterator[SSEEvent]:
        runner = self._client._runner
        paid = await self.start()
        resp = paid.stream
        if resp is None:
            return
        session = runner.manager.by_id(paid.session) if (runner is not None and paid.session) else None
        final = False
        stopped: dict[str, Any] | None = None
        try:
            async for event in parse_sse(resp.lines()):
                if not event.event.startswith("payment-"):
                    yield event
                    continue
                if session is None:
                    continue  # not a session stream: payment events mean nothing to us
                if event.event == "payment-required":
                    doc = json_object(event.data)
                    runner.manager.observe(session, {k: v for k, v in doc.items() if k in ("spent", "cap")})  # type: ignore[union-attr]
                    await runner.in_band_voucher(session, problem_amount(doc, "required"))  # type: ignore[union-attr]
                elif event.event == "payment-receipt":
                    doc = json_object(event.data)
                    self.receipt, self.claims = await runner.stream_receipt(session, doc.get("receipt"))  # type: ignore[union-attr]
                    paid.receipt, paid.claims = self.receipt, self.claims
                    final = True
                elif event.event == "payment-timeout":
                    stopped = json_object(event.data)  # the receipt for what was sent still follows
        except TransportError as exc:
            raise OutcomeUnknown(f"stream broke off: {exc}", paid.session or "") from exc
        finally:
            close_stream(paid)
        if session is not None and not final:
            raise ReceiptInvalid("the stream ended without a payment-receipt event")
        if stopped is not None:
            raise PaymentFailed("the seller stopped the stream waiting for a voucher", 402, stopped)
