"""The buyer side of the identity extension: an agent's mandate chain, its own budget counters,
and the approval hook. Used by the buyer (``Buyer``, aiohttp's ``PaymentClient``, the httpx and MCP transports) when it is given an ``AgentIdentity``.

The budget counters are any :class:`mpp.stores.budget.AsyncBudgetStore` (SQLite or PostgreSQL, chosen by
URL with :func:`mpp.connect.budget_store_for`); a plain SQLite :class:`mpp.stores.budget.BudgetStore`
is accepted too and used through the same interface (the caller still owns and closes it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, Sequence

from mpp.stores.budget import AsyncBudgetStore, AsyncSqliteBudgetStore, BudgetLink, BudgetRefused, BudgetStore
from mpp.buyer.core import Quote, check_mandate_offer
from mpp.protocol.errors import BudgetExceeded, PaymentProblem, QuoteRejected, clip
from mpp.protocol.models import format_rfc3339
from mpp.identity import (ApprovalRequired, MandateAudience, MandateChain, MandateExpired, MandateNotYetValid, evaluate_policy,
                          identity_member, period_key, verify_chain)
from mpp.protocol.keys import SigningKey
from mpp.pricing import MandateRestrictions, restrictions_from_claims
from mpp.protocol.challenge import resource_of

__all__ = ["AgentIdentity", "Approver"]

Approver = Callable[[dict[str, Any]], "Awaitable[str | None] | str | None"]
"""Called with the seller's approval-required problem document; returns an approval JWT or None."""


@dataclass
class AgentIdentity:
    """What an agent buys with under a mandate (spec/identity.md): its key, its mandate chain (root
    first), its budget counters and who approves a purchase above the threshold. Given to
    ``PaymentClient(identity=...)``, it presents the chain on every purchase, signs nothing the
    chain does not cover (IDENT-POP-09), reserves the budget before it signs and asks ``approver``
    when a seller answers ``approval-required``. A plain ``BudgetStore`` is wrapped, not owned."""

    key: SigningKey
    mandates: Sequence[str]  # the chain, root first, ending with this agent's own mandate
    budget: AsyncBudgetStore | BudgetStore | None = None
    approver: Approver | None = None
    _chain: MandateChain | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if isinstance(self.budget, BudgetStore):
            self.budget = AsyncSqliteBudgetStore(self.budget)  # not owned: the caller closes its store

    def chain_for(self, realm: str, now: datetime) -> MandateChain:
        """Our own chain, checked as a seller will check it (trusting its own root)."""
        try:
            root_iss = _root_issuer(self.mandates)
            chain = verify_chain(list(self.mandates), trusted_principals={root_iss}, realm=realm, now=now, max_depth=16)
        except (MandateExpired, MandateNotYetValid, MandateAudience) as exc:
            raise QuoteRejected("mandate", _why_not_valid(self.mandates, exc, realm, now, self.key.did)) from None
        except PaymentProblem as exc:
            raise QuoteRejected("mandate", f"our mandate does not cover this seller: {exc.detail}") from None
        if chain.agent != self.key.did:
            raise QuoteRejected("mandate", "the mandate chain is for another agent")
        return chain

    def restrictions(self) -> MandateRestrictions:
        """The pricing models and unit price the whole chain allows (PRICE-MDT-01: every link)."""
        try:
            return restrictions_from_claims(_claims(token) for token in self.mandates)
        except ValueError as exc:
            raise QuoteRejected("mandate", f"our mandate chain is not valid: {exc}") from None

    def check(self, quote: Quote, method: str, url_path_qs: str, now: datetime) -> MandateChain:
        """The buyer's own entitlement checks, before anything is reserved or signed."""
        chain = self.chain_for(quote.challenge.realm, now)
        check_mandate_offer(quote.challenge, self.restrictions())  # PRICE-MDT-02: never sign a model it excludes
        path, _, query = url_path_qs.partition("?")
        resource = resource_of(method, path, query)
        try:
            evaluate_policy(chain, quote.challenge, quote.request, resource, spent={}, approval=None)
        except ApprovalRequired:
            pass  # the seller will ask; the approver hook answers then
        except PaymentProblem as exc:
            raise QuoteRejected(exc.extensions.get("rule", exc.slug), exc.detail) from None
        return chain

    async def reserve(self, chain: MandateChain, quote: Quote, now: datetime, *, ttl: timedelta | None = None) -> None:
        """Reserve the quote's amount (base units) against every link of ``chain`` in our own budget
        counters, under the quote's challenge id, before anything is signed (IDENT-BUD-02); ``ttl`` overrides
        the store's reservation lifetime. Raises BudgetExceeded when a link's budget for the period cannot
        take it, QuoteRejected (rule ``budget``) when that challenge id was already committed or released.
        Without a budget store it does nothing."""
        await self.reserve_amount(quote.challenge.id, self.budget_links(chain, now), quote.request.amount_int, now, ttl=ttl)

    @staticmethod
    def budget_links(chain: MandateChain, now: datetime) -> list[BudgetLink]:
        """Each link of ``chain`` as its budget counter sees it: the link's key (``issuer#jti``), the key of
        its budget period holding ``now`` and its budget per period in base units (IDENT-BUD-01)."""
        return [BudgetLink(link.key, period_key(link.budget_period, now), link.budget_amount) for link in chain.links]

    async def reserve_amount(self, reservation_id: str, links: Sequence[BudgetLink], amount: int, now: datetime, *,
                             ttl: timedelta | None = None) -> None:
        """Reserve (or, for the same id, re-reserve at a new amount) against our own counters."""
        if self.budget is None:
            return
        try:
            await self.budget.reserve(reservation_id, links, amount, now=now, ttl=ttl)
        except BudgetRefused as exc:
            period = next((link.period for link in links if link.jti == exc.jti), None)
            if not exc.jti:  # a finished reservation offered again (ReservationFinished): not a budget figure
                raise QuoteRejected("budget", str(exc)) from None
            raise BudgetExceeded(exc.jti, period, exc.budget, exc.used, exc.amount) from None

    async def extend(self, reservation_id: str, now: datetime, ttl: timedelta | None = None) -> None:
        """Keep a live reservation (an open session's cap) from expiring for another ``ttl`` from ``now``
        (default: the store's reservation lifetime). Does nothing without a budget store."""
        if self.budget is not None:
            await self.budget.extend(reservation_id, ttl=ttl, now=now)

    async def settle(self, reservation_id: str, amount: int) -> None:
        """A session closed: exactly ``amount`` was captured; the rest of its reservation is released."""
        if self.budget is not None:
            await self.budget.settle(reservation_id, amount)

    def member(self, quote: Quote, approval: str | None = None) -> dict[str, Any]:
        """The credential's ``identity`` member for ``quote`` (IDENT-POP-01): our mandate chain, root first,
        our key's proof over the quote and the leaf mandate (IDENT-POP-05), and ``approval`` (an approval
        JWT) when one is given. Checks nothing: :meth:`check` and :meth:`reserve` come first."""
        return identity_member(self.mandates, self.key, quote.challenge, quote.request, approval)

    async def commit(self, challenge_id: str) -> None:
        """The purchase went through (its receipt verified): the reservation under ``challenge_id`` counts as
        spent for good (IDENT-BUD-03). Does nothing without a budget store, or when nothing is reserved under
        that id."""
        if self.budget is not None:
            await self.budget.commit(challenge_id)

    async def release(self, challenge_id: str) -> None:
        """The purchase did not go through (the seller refused it, or the credential was never sent): the
        reservation under ``challenge_id`` stops counting (IDENT-BUD-03). Does nothing without a budget
        store, or when nothing is reserved under that id (a committed reservation stays committed)."""
        if self.budget is not None:
            await self.budget.release(challenge_id)


_LEEWAY = 30.0  # the seller's default (verify_chain), so we refuse exactly what it would


def _why_not_valid(tokens: Sequence[str], exc: PaymentProblem, realm: str, now: datetime, agent: str) -> str:
    """Finding 7 and 8 of issue 17: which link of our chain a seller would refuse for its times
    (IDENT-MDT-06) or its audience (IDENT-MDT-07, IDENT-POP-09), and what to do about it."""
    t = now.timestamp()
    renew = (f"ask its issuer for a new one (`mpp mandate issue --issuer KEY.pem --subject {agent} --ceiling N --budget N "
             f"--out FILE`) and attach it (`mpp agent init DIR --account ACCOUNT --mandate FILE`)")
    for i, token in enumerate(tokens):
        c = _claims(token)
        jti, where = clip(c.get("jti", "?")), f"link {i + 1} of {len(tokens)}"
        exp, nbf, aud = c.get("exp"), c.get("nbf"), c.get("aud")
        if isinstance(exc, MandateExpired) and isinstance(exp, (int, float)) and exp <= t - _LEEWAY:
            return f"mandate {jti} ({where}) expired at {_when(exp)} (now {format_rfc3339(now)}); {renew}"
        if isinstance(exc, MandateNotYetValid):
            start = max(v for v in (nbf, c.get("iat"), 0) if isinstance(v, (int, float)))
            if start > t + _LEEWAY:
                return (f"mandate {jti} ({where}) is not valid before {_when(start)} (now {format_rfc3339(now)}); "
                        f"wait until then, or check this machine's clock")
        if isinstance(exc, MandateAudience) and isinstance(aud, list) and aud != ["*"] and realm not in aud:
            return (f"our mandate does not cover this seller: mandate {jti} ({where}) is for "
                    f"{', '.join(clip(a) for a in aud[:5])} only, not realm {clip(realm)!r}. A buyer holding a mandate "
                    f"presents it on every purchase and signs nothing outside its audience, also where the seller "
                    f"does not ask for identity (IDENT-POP-09). Way out: a mandate for this seller "
                    f"(`mpp mandate issue ... --audience {clip(realm)}`), or pay without the chain with "
                    f"`mpp fetch --no-identity` (PaymentClient without identity) if the key may spend outside its "
                    f"mandates (a mandate-bound ledger key may not: the seller answers mandate-required)")
    return f"our mandate does not cover this seller: {exc.detail}"


def _when(epoch: float) -> str:
    return format_rfc3339(datetime.fromtimestamp(epoch, timezone.utc))


def _claims(token: str) -> dict[str, Any]:
    import jwt

    try:
        claims = jwt.decode(token, options={"verify_signature": False})  # chain_for verifies the signatures
    except jwt.InvalidTokenError:
        raise QuoteRejected("mandate", "a mandate of our chain is not a JWT") from None
    return claims if isinstance(claims, dict) else {}


def _root_issuer(tokens: Sequence[str]) -> str:
    import jwt

    if not tokens:
        raise QuoteRejected("mandate", "no mandate")
    try:
        iss = jwt.decode(tokens[0], options={"verify_signature": False}).get("iss")
    except jwt.InvalidTokenError:
        raise QuoteRejected("mandate", "our root mandate is not a JWT") from None
    if not isinstance(iss, str):
        raise QuoteRejected("mandate", "our root mandate names no issuer")
    return iss
