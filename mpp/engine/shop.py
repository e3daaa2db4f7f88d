"""What every step of the seller engine shares: the configuration, the challenge issuer, the rails
and the pure decisions over them (:class:`~mpp.engine.core.SellerCore`), and the answers every step
gives the same way: an audit entry, a refusal, a problem document with fresh challenges, a
settlement recorded with its signed receipt.

The steps (:mod:`mpp.engine.charge`, :mod:`mpp.engine.offers`, :mod:`mpp.engine.sessions`) hold
a :class:`Shop`; :class:`~mpp.engine.seller.SellerEngine` is the shop with its steps attached.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from mpp.engine.attribution import attributed, attributed_to
from mpp.engine.config import SellerConfig
from mpp.engine.core import RequestInfo, SellerCore
from mpp.engine.guard import RETRY_AFTER
from mpp.engine.http import HttpResponse
from mpp.engine.purchase import Payment
from mpp.engine.quotes import route_challenges
from mpp.pricing import PriceList, Route
from mpp.pricing.prices import Metered, Price
from mpp.protocol.challenge import ChallengeIssuer
from mpp.protocol.errors import RESOURCE_MAX, MethodUnsupported, PaymentProblem, clip
from mpp.protocol.headers import format_receipt
from mpp.protocol.models import PaymentReceipt, format_rfc3339
from mpp.protocol.receipts import sign_receipt
from mpp.stores.audit import AsyncSqliteAuditLog, AuditLog

__all__ = ["Shop"]

log = logging.getLogger("mpp.seller")


class Shop:
    """One seller's configuration (a :class:`SellerConfig`) with its issuer, rails and answers."""

    def __init__(self, config: SellerConfig) -> None:
        if isinstance(config.audit, AuditLog):
            config.audit = AsyncSqliteAuditLog(config.audit)  # used through the one async interface; the caller closes it
        self.config = config
        self.issuer = ChallengeIssuer(config.secret, config.realm, ttl=config.challenge_ttl)
        config.secret = b""  # held by the issuer only, so it is never printed with the seller
        self.rails = {rail.name: rail for rail in config.rails}
        for rail in config.rails:
            if hasattr(rail, "check_realm"):
                rail.check_realm(config.realm)
        self.core = SellerCore(self.issuer, self.rails)
        # rails whose ledger keeps the payment records (and audit log) in its own database: one
        # write transaction per purchase (mpp.ledger.book)
        self.books = {rail.name: book for rail in config.rails
                      if (book := getattr(rail, "book_with", lambda *_: None)(config.store, config.audit)) is not None}
        self.lists: list[PriceList] = []  # every list served since start: their follow-ups stay guarded (PRICE-VER-03)
        self.remembered: dict[str, str] = {}  # version -> fingerprint of every list the pricing store recorded (PRICE-VER-02)

    async def audit(self, kind: str, **data: Any) -> None:
        """Append to the audit log, if one is configured; text from the request is clipped
        (CORE-ERR-12, IDENT-AUD-08)."""
        if self.config.audit is not None:
            await self.config.audit.append(kind, self.audit_data(data))

    @staticmethod
    def audit_data(data: dict[str, Any]) -> dict[str, Any]:
        """An audit entry's data as written: no empty fields, text from the request clipped."""
        return {k: clip(v, RESOURCE_MAX) if isinstance(v, str) else v for k, v in data.items() if v is not None}

    async def refused(self, problem: PaymentProblem, info: RequestInfo, now: Any, minted: str | None = None,
                      **data: Any) -> None:
        """Note a refused request. Only a credential echoing a challenge this seller minted, from a
        requester who has shown who it is (mpp.engine.attribution), is audited; anything else is
        a stranger's and writes nothing (CORE-ONCE-09, IDENT-AUD-08), only a bounded log line."""
        minted = minted or self.core.minted_id(info, now)
        audited = minted is not None and attributed()
        log.log(logging.INFO if audited else logging.DEBUG, "refused %s: %s challenge=%s",
                clip(info.resource, RESOURCE_MAX), problem.slug, minted or "none of ours")
        if audited:
            who = {k: v for k, v in attributed_to().items() if data.get(k) is None}  # `audit show --principal` finds it
            await self.audit("refusal", problem=problem.slug, resource=info.resource, detail=problem.detail,
                             challengeId=minted, realm=self.config.realm, **who, **data)

    def problem(self, problem: PaymentProblem, price: Price | Metered | Route | None, info: RequestInfo,
                now: Any) -> HttpResponse:
        """A problem document; with fresh challenges when the problem calls for them."""
        with_challenges = price is not None and (problem.fresh_challenge or isinstance(problem, MethodUnsupported))
        challenges = self.challenges(price, info, now) if with_challenges else []  # type: ignore[arg-type]
        headers = self.core.problem_headers(challenges)  # includes Cache-Control: no-store
        if problem.status == 503:  # the seller's side cannot take payment now: say when to come back
            headers.append(("Retry-After", RETRY_AFTER))
        body = self.core.problem_body(problem, challenges, instance=info.path)
        return HttpResponse(problem.status, [("Content-Type", "application/problem+json"), *headers], json.dumps(body).encode())

    def challenges(self, price: Price | Metered | Route, info: RequestInfo, now: Any) -> list[Any]:
        """The challenges a 402 for this price carries: one per offer and method."""
        if isinstance(price, Route):
            return route_challenges(self.core, price, info, now, subscription=info.subscription)
        return self.core.challenges(price, info, now)

    async def record_settled(self, payment: Payment) -> None:
        """Sign the receipt and record the settlement (once)."""
        if payment.recorded:
            return
        verified, settlement = payment.verified, payment.settlement
        payment.receipt_header = self.receipt_header(payment)
        await self.config.store.mark_settled(
            verified.challenge_id,
            payer=settlement.payer or "",
            amount=verified.request.amount,
            currency=verified.request.currency,
            reference=settlement.reference,
            receipt=payment.receipt_header,
        )
        payment.recorded = True

    def receipt_header(self, payment: Payment) -> str:
        """The ``Payment-Receipt`` value of a settled payment: its claims signed (CORE-RCPT)."""
        verified, settlement = payment.verified, payment.settlement
        rail = self.rails[verified.credential.challenge.method]
        receipt = PaymentReceipt(
            status="success",
            method=rail.name,
            timestamp=format_rfc3339(settlement.settled_at),
            reference=settlement.reference,
            challengeId=verified.challenge_id,
            receipt=sign_receipt(self.config.receipt_key, payment.claims),
            **({"subscriptionId": payment.claims["subscriptionId"]} if "subscriptionId" in payment.claims else {}),
            **{k: v for k, v in getattr(settlement, "receipt_members", {}).items()
               if k not in PaymentReceipt.model_fields and k != "subscriptionId"},
        )
        return format_receipt(receipt)
