"""The seller engine: every request to a priced route goes through one pipeline.

    price the request -> issue challenges -> parse and verify the credential -> identity and
    policy -> claim, settle and record -> run the handler -> receipt, or refund on failure

:class:`SellerEngine` routes a request to the step that prices it: a price-list route
(offers per pricing model: transaction, task, seat and unit), a follow-up served to a grant
(:mod:`mpp.engine.offers`), a per-request price (:mod:`mpp.engine.charge`, the ``charge`` and
``subscription`` intents) or a per-unit price (:mod:`mpp.engine.sessions`, the ``session``
intent). It knows no web framework: adapters hand it an :class:`~mpp.engine.http.HttpRequest`
and a coroutine that runs the handler, and turn its :class:`~mpp.engine.http.HttpResponse`
answers into their own responses.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from mpp.engine.charge import ChargeStep
from mpp.engine.config import SellerConfig
from mpp.engine.core import RequestInfo
from mpp.engine.http import HttpRequest, HttpResponse, Serve, Served, private_cache_control
from mpp.engine.offers import OfferDesk
from mpp.engine.publish import jwks_response, openapi_document
from mpp.engine.purchase import Context
from mpp.engine.sessions import SessionDesk
from mpp.engine.shop import Shop
from mpp.pricing import GRANT_HEADER, PriceList, PriceListError, Route, UnitOffer, check_reload, load_price_list
from mpp.pricing.loader import check_remembered
from mpp.pricing.prices import Metered, Price
from mpp.protocol.errors import MethodUnsupported, PaymentProblem

__all__ = ["SellerEngine"]

log = logging.getLogger("mpp.seller")


class SellerEngine(Shop):
    """One seller's purchase pipeline over its configuration (a :class:`SellerConfig`)."""

    def __init__(self, config: SellerConfig) -> None:
        super().__init__(config)
        self.offers = OfferDesk(self)
        self.charge = ChargeStep(self, self.offers)
        self.sessions = (SessionDesk(self, config.session_store, sweep_interval=config.session_sweep_interval)
                         if config.session_store else None)
        if config.price_list is not None:
            self._check_list(config.price_list)
            self.lists.append(config.price_list)

    # -- prices --------------------------------------------------------------

    def reload_prices(self, text: str, source: str) -> PriceList:
        """Replace the price list while serving (PRICE-VER-02). A list that does not load, or has
        the version of the running list or of any list served before with other content, raises PriceListError (``source:LINE: problem``)
        and the running list stays. Quotes and grants of earlier lists stay good (PRICE-VER-03)."""
        new = load_price_list(text, source=source)
        if self.config.price_list is not None:
            check_reload(self.config.price_list, new, self.lists, self.remembered)
        else:
            check_remembered(new, self.remembered)
        self._check_list(new)
        self.config.price_list = new  # one assignment: a request sees the old list or the new one, never a mix
        if all(known.version != new.version for known in self.lists):
            self.lists.append(new)
        log.info("price list %s loaded from %s", new.version, source)
        return new

    async def remember_list(self, plist: PriceList, *, refuse: bool = False) -> None:
        """Record ``plist``'s version and fingerprint in the pricing store, if the seller keeps one
        (PRICE-VER-02 across restarts). A version recorded earlier with other content raises
        PriceListError with ``refuse`` (at start: the seller does not serve it); otherwise (a reload
        another process raced) it is logged as an error."""
        remember = getattr(self.config.pricing_store, "remember_price_list", None)
        if remember is None:
            return
        fingerprint, since = await remember(plist.version, plist.fingerprint)
        self.remembered[plist.version] = fingerprint
        try:
            check_remembered(plist, {plist.version: fingerprint}, since)
        except PriceListError as exc:
            if refuse:
                raise
            log.error("%s", exc)

    def _check_list(self, plist: PriceList) -> None:
        unsold = sorted({f"{r.route} (currency {o.currency!r})" for r in plist.routes for o in r.offers
                         if not self.core.quoting(o.currency)})
        if unsold:
            raise PriceListError(plist.source, [(1, f"no rail of this seller can quote offers of {', '.join(unsold)}: "
                                                    "give it a rail that takes that currency")])
        needs = {o.model for r in plist.routes for o in r.offers}
        if needs & {"task", "seat"} and self.config.pricing_store is None:
            raise PriceListError(plist.source, [(1, "task and seat offers need a pricing store: "
                                                    "Seller(pricing_store=SqlitePricingStore(...))")])
        if "unit" in needs and self.config.session_store is None:
            raise PriceListError(plist.source, [(1, "unit offers need a session store: "
                                                    "Seller(session_store=SqliteSessionStore(...))")])

    # -- the pipeline ----------------------------------------------------------

    async def handle(self, request: HttpRequest, serve: Serve, price: Price | Metered | None, *,
                     listed: bool = True) -> HttpResponse | Served:
        """Serve one request: ``price`` is what the adapter's route table or decorators say the
        route costs (None: free, unless the price list names it); ``listed=False`` when the
        framework found no route for the request (the price list is then not consulted)."""
        plist = self.config.price_list
        if plist is not None and listed:
            route = plist.route_for(request.method, request.path)
            if route is not None:
                await request.read()
                return await self._listed(request, serve, route)
            follow_up = self.offers.follow_up(request.method, request.path)
            if follow_up is not None:
                await request.read()
                return await self.offers.serve_granted(request, serve, task_id=follow_up[1])
        if price is None:
            return await serve(Context())
        await request.read()
        if isinstance(price, Metered):
            return await self._metered(request, serve, price)
        return await self.charge.run(request, serve, price, request.info(), self.config.clock())

    async def _listed(self, request: HttpRequest, serve: Serve, route: Route) -> HttpResponse | Served:
        """A request to a route of the price list: served to a grant, or quoted and paid per offer."""
        if request.header(GRANT_HEADER) is not None:  # a seat grant covering this route (PRICE-SEAT-06)
            return await self.offers.serve_granted(request, serve, task_id=None)
        if any(isinstance(o, UnitOffer) for o in route.offers):
            return await self._metered(request, serve, route.price(), route)  # type: ignore[arg-type]
        price = route.offers[0].to_price(require_identity=route.require_identity)
        return await self.charge.run(request, serve, price, request.info(), self.config.clock(), route)

    async def _metered(self, request: HttpRequest, serve: Serve, metered: Metered,
                       route: Route | None = None) -> HttpResponse | Served:
        """A per-unit route: a session credential is served by the session desk; anything else
        goes down the charge path, with a meter that holds the handler to what a charge covers."""
        from mpp.engine.meters import ChargeMeter  # the meters take the stream primitives; only metered routes need them

        info = request.info()
        now = self.config.clock()
        call = None
        try:
            call = self.sessions.session_call(info, now) if self.sessions is not None else self.core_session_call(info, now)
            if call is not None:
                if self.sessions is None:
                    raise MethodUnsupported("this seller keeps no sessions")
                return await self.sessions.serve(request, serve, call, metered, route)
        except PaymentProblem as problem:
            await self.refused(problem, info, now, call.session_id if call else None, intent="session")
            return self.problem(problem, route or metered, info, now)
        return await self.charge.run(request, serve, metered, info, now, route, meter=ChargeMeter(metered, info.resource))

    def core_session_call(self, info: RequestInfo, now: Any) -> Any:
        """Without a session store a session credential is still recognised, to be refused."""
        return SessionDesk.parse_session_call(self.core, info, now)

    # -- answers -------------------------------------------------------------

    @staticmethod
    def paid_headers(context: Context | None, status: int, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The headers a response leaves with, given what it was paid by: the receipt and grant on
        a paid success (``Cache-Control`` made private), neither on an error or a refunded payment."""
        payment = context.payment if context is not None else None
        strip = (payment is not None and (payment.refunded or not payment.recorded)) or status >= 400
        if strip:
            return [(k, v) for k, v in headers if k.lower() not in ("payment-receipt", GRANT_HEADER.lower())]
        if payment is None:  # unpaid, or an Idempotency-Key replay, which carries the stored receipt itself
            return headers
        out = list(headers)
        if not any(k.lower() == "payment-receipt" for k, _ in out):
            out.append(("Payment-Receipt", payment.receipt_header))
        if payment.grant is not None:
            out = [(k, v) for k, v in out if k.lower() != GRANT_HEADER.lower()] + [(GRANT_HEADER, payment.grant)]
        cache = next((v for k, v in out if k.lower() == "cache-control"), None)
        return [(k, v) for k, v in out if k.lower() != "cache-control"] + [("Cache-Control", private_cache_control(cache))]

    # -- publishing ------------------------------------------------------------

    def jwks(self) -> HttpResponse:
        """The receipt keys, current and previous, as a JWKS document."""
        return jwks_response([self.config.receipt_key, *self.config.previous_receipt_keys])

    def openapi(self, priced: Iterable[tuple[str, str, Price | Metered]]) -> HttpResponse:
        """The discovery document (draft-payment-discovery): every priced route and its offers."""
        return HttpResponse.json(200, openapi_document(self, priced), [("Cache-Control", "max-age=300")])

    async def start(self) -> None:
        """Before serving: open the pricing store and complete refunds a crash interrupted; record
        the price list's version there, refusing (PriceListError) a version an earlier run served
        with other prices (PRICE-VER-02); an embedded ledger without the seller's recipient account
        is logged with the fix (CORE-ERR-14)."""
        await self.offers.start()
        for plist in list(self.lists):
            await self.remember_list(plist, refuse=True)
        if self.config.pricing_store is not None and hasattr(self.config.pricing_store, "price_lists"):
            self.remembered.update(await self.config.pricing_store.price_lists())
        for rail in self.rails.values():
            report = getattr(rail, "report_missing_recipient", None)
            if report is not None and getattr(rail, "ledger_id", ""):  # opened (a SQLite ledger is at once)
                await report()

    async def close(self) -> None:
        """After serving: close the payment store."""
        await self.config.store.close()
