"""Our real seller (``build_seller_app`` on an ``mpp init`` home), broken on purpose in exactly one way.

Each variant starts from the application ``mpp seller serve`` would run and changes one behaviour with
the smallest change that produces it: one method of one object of that instance replaced, one aiohttp
middleware put in front of the seller's, or one response hook put after the seller's. No library file
is touched; everything here lives and dies with one application object.

    async with serving(home, "accepts-replays") as server:
        url = str(server.make_url("/weather"))

``prepare_home(home)`` adds a priced ``POST /weather`` to the home's configuration, so that GET and
POST are both priced on one path (``full.other-method`` then has something to check); call it once,
before ``serving``, for the baseline and for every variant alike.
"""

from __future__ import annotations

import dataclasses
import json
import re
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Callable

from aiohttp import web
from aiohttp.test_utils import TestServer

from mpp import ParseError, b64url_decode, b64url_encode, canonical_json, parse_credential
from mpp.aio.seller import Seller
from mpp.cli.serve import HEADER_LIMITS, build_seller_app
from mpp.cli.config import load_seller_config
from mpp.protocol.errors import PaymentRequired

__all__ = ["VARIANTS", "BASELINE", "CHALLENGE_TTL", "short_lived_challenges", "prepare_home", "build", "serving"]

BASELINE = "baseline"
Breaker = Callable[[web.Application, Seller], None]


# Challenges live this long on every test target, so that core.expired-challenge waits seconds, not
# the default five minutes; long enough that a check sends its credential well before expiry.
CHALLENGE_TTL = 3


def short_lived_challenges(home: Path) -> None:
    """Set the home's ``challenge_ttl`` to CHALLENGE_TTL seconds (`mpp init` writes 300); idempotent."""
    config = home / "seller.toml"
    text, n = re.subn(r"(?m)^challenge_ttl = \d+$", f"challenge_ttl = {CHALLENGE_TTL}", config.read_text(encoding="utf-8"))
    assert n == 1, "the mpp init config no longer sets challenge_ttl"
    config.write_text(text, encoding="utf-8")


def prepare_home(home: Path) -> None:
    """Price ``POST /weather`` too (the `mpp init` config prices only GET there), and shorten the
    challenge lifetime to CHALLENGE_TTL seconds."""
    short_lived_challenges(home)
    with (home / "seller.toml").open("a", encoding="utf-8") as fh:
        fh.write('\n[[routes]]\nmethod = "POST"\npath = "/weather"\namount = 30\ncurrency = "usd"\n'
                 'description = "Weather, posted"\nresponse = { "city" = "Porto" }\n')


# -- the breakages ---------------------------------------------------------------------------

def _baseline(app: web.Application, seller: Seller) -> None:
    """Unbroken."""


def _accepts_replays(app: web.Application, seller: Seller) -> None:
    """The store's ``claim`` always succeeds: a used challenge is taken as new (its record is put back
    to 'settling', so the rest of the seller runs as for a first use) and served again. The ledger
    still moves the money once (a transfer is idempotent by challenge id); the buyer gets a second 200."""
    from mpp.stores.sqlite import immediate

    store = seller.store
    claim = store.claim

    async def claim_always(challenge_id: str, *, resource: str, idempotency_key: str | None) -> bool:
        if not await claim(challenge_id, resource=resource, idempotency_key=idempotency_key):
            with immediate(store._conn) as c:
                c.execute("UPDATE payments SET state='settling', idempotency_key=? WHERE challenge_id=?",
                          (idempotency_key, challenge_id))
        return True

    store.claim = claim_always
    seller.engine.books.clear()  # the claim made by the store, not inside a book's one transaction


def _payment_required_for_every_error(app: web.Application, seller: Seller) -> None:
    """Every problem document becomes ``payment-required`` (402, with fresh challenges), whatever the
    problem was: malformed-credential, invalid-challenge, verification-failed, and the 400
    method-unsupported too."""
    answer = seller.engine.problem

    def problem(problem, price, info, now):
        return answer(PaymentRequired(problem.detail), price, info, now)

    seller.engine.problem = problem


def _omits_no_store(app: web.Application, seller: Seller) -> None:
    """A middleware in front of the seller's drops Cache-Control from every 402."""

    @web.middleware
    async def fault(request: web.Request, handler):
        response = await handler(request)
        if response.status == 402:
            response.headers.popall("Cache-Control", None)
        return response

    app.middlewares.insert(0, fault)


# What the receipt-on-error seller adds: shaped like a receipt (base64url JSON), for nothing paid.
BOGUS_RECEIPT = b64url_encode(canonical_json({"status": "success", "method": "ledger", "timestamp": "2025-01-01T00:00:00Z",
                                              "reference": "receipt-on-error"}))


def _receipt_on_error(app: web.Application, seller: Seller) -> None:
    """A Payment-Receipt on every response of status >= 400. The seller's own response hook strips
    receipts from errors, so this one is a response hook too, registered after the seller's."""

    async def fault(request: web.Request, response: web.StreamResponse) -> None:
        if response.status >= 400:
            response.headers["Payment-Receipt"] = BOGUS_RECEIPT

    app.on_response_prepare.append(fault)


def _500_on_garbage(app: web.Application, seller: Seller) -> None:
    """A middleware in front of the seller's decodes the credential itself and, when an
    ``Authorization: Payment`` value is not base64url JSON, answers HTTP 500 (as a seller whose decoder
    error escapes would)."""

    @web.middleware
    async def fault(request: web.Request, handler):
        for value in request.headers.getall("Authorization", ()):
            scheme, _, token = value.strip(" \t").partition(" ")
            if scheme.lower() == "payment":
                try:
                    json.loads(b64url_decode(token.strip(" \t")))
                except (ParseError, ValueError, RecursionError):
                    return web.Response(status=500, text="500 Internal Server Error")
        return await handler(request)

    app.middlewares.insert(0, fault)


def _claimed_resource(header: str) -> str | None:
    """The resource (``METHOD target``) the credential's challenge was issued for, if it names one."""
    try:
        claimed = (parse_credential(header).challenge.opaque_json or {}).get("resource")
    except Exception:  # noqa: BLE001 - not a credential: the real verify refuses it as before
        return None
    return claimed if isinstance(claimed, str) and " " in claimed else None


def _reads_any_field(app: web.Application, seller: Seller) -> None:
    """A middleware in front of the seller's takes a credential from ``Payment-Authorization`` when
    there is no ``Authorization``, although its challenges never select that field (draft §5.2)."""

    @web.middleware
    async def fault(request: web.Request, handler):
        other = request.headers.get("Payment-Authorization")
        if other is not None and "Authorization" not in request.headers:
            request = request.clone(headers={**request.headers, "Authorization": other})
        return await handler(request)

    app.middlewares.insert(0, fault)


def _skips_route_binding(app: web.Application, seller: Seller) -> None:
    """``SellerCore.verify`` no longer compares the challenge's resource with the request's: it is
    handed the resource the credential was issued for, so a credential for one route, query or HTTP
    method is accepted on any other (the body digest is still checked against the actual body)."""
    verify = seller.core.verify

    def verify_anywhere(header, info, now):
        claimed = _claimed_resource(header)
        if claimed is not None:
            method, _, target = claimed.partition(" ")
            path, _, query = target.partition("?")
            info = dataclasses.replace(info, method=method, path=path, query=query)
        return verify(header, info, now)

    seller.core.verify = verify_anywhere


def _echoes_unbounded(app: web.Application, seller: Seller) -> None:
    """Every problem's detail ends with the credential's echoed method and intent, whole, control
    characters and all (as a seller formatting them into its message would)."""
    answer = seller.engine.problem

    def problem(problem, price, info, now):
        try:
            challenge = parse_credential(seller.core.payment_credential(info) or "").challenge
        except Exception:  # noqa: BLE001 - no credential, or not one: nothing to echo
            return answer(problem, price, info, now)
        problem.detail = f"{problem.detail} (method {challenge.method}, intent {challenge.intent})"
        return answer(problem, price, info, now)

    seller.engine.problem = problem


def _leaks_credential(app: web.Application, seller: Seller) -> None:
    """Every problem document answering a request with a credential copies that credential, whole,
    into a member of its own (as a seller "helpfully" echoing what it refused would); the detail is
    left alone, so only the leak is wrong."""
    answer = seller.engine.problem

    def problem(problem, price, info, now):
        response = answer(problem, price, info, now)
        try:
            credential = seller.core.payment_credential(info)
        except Exception:  # noqa: BLE001 - several credentials: the seller refuses them as before
            credential = None
        if credential:
            doc = json.loads(response.body)
            doc["credential"] = credential
            response.body = json.dumps(doc).encode()
        return response

    seller.engine.problem = problem


def _accepts_expired(app: web.Application, seller: Seller) -> None:
    """The challenge issuer still checks the id binding (the HMAC) but never ``expires``: a credential
    for a challenge past its expiry is taken, and paid, as a fresh one."""
    verify = seller.core.issuer.verify

    def verify_ignoring_expiry(challenge, *, now, check_expiry=True):
        return verify(challenge, now=now, check_expiry=False)

    seller.core.issuer.verify = verify_ignoring_expiry


def _settles_before_binding(app: web.Application, seller: Seller) -> None:
    """A credential whose challenge and payload verify is claimed and settled *before* the seller
    checks that it was issued for this request (route, query, HTTP method, body digest); the request
    is then refused as before. So a refused request moves the money, and the genuine credential,
    sent afterwards where it belongs, is refused as already used."""
    from mpp.protocol.errors import PaymentProblem
    from mpp.protocol.models import ChargeRequest
    from mpp.engine.core import Verified

    charge = seller.engine.charge.run

    async def settle_unbound(header: str, now) -> None:
        """Every offline check of SellerCore.verify but the binding, then the claim and the settlement."""
        claimed = _claimed_resource(header)
        try:
            credential = parse_credential(header)
            challenge = credential.challenge
            seller.core.issuer.verify(challenge, now=now)
            charge_request = ChargeRequest.from_challenge(challenge)
            proof = seller.core.methods[challenge.method].verify(credential, charge_request)
        except (PaymentProblem, ParseError, KeyError):
            return  # refused for more than its binding: the real charge step answers as before
        if claimed is None:
            return
        verified = Verified(credential=credential, request=charge_request, proof=proof, resource=claimed)
        if await seller.store.claim(verified.challenge_id, resource=claimed, idempotency_key=None):
            await seller.engine.rails[challenge.method].settle(verified, None)

    async def charge_settling_first(request, serve, price, info, now, route=None, *, meter=None):
        header = None
        try:
            header = seller.core.payment_credential(info)
            if header is not None:
                seller.core.verify(header, info, now)
        except PaymentProblem:
            if header is not None:  # None: not one readable credential, nothing to settle
                await settle_unbound(header, now)
        return await charge(request, serve, price, info, now, route, meter=meter)

    seller.engine.charge.run = charge_settling_first


# The largest credential the 500-on-large-credential seller survives: above the 4 KB the spec asks
# for (CORE-CRED-05), below the 32 KB header fields the CLI's aiohttp accepts (HEADER_LIMITS).
LARGE_CREDENTIAL_LIMIT = 20_000


def _500_on_large_credential(app: web.Application, seller: Seller) -> None:
    """A middleware in front of the seller's answers HTTP 500 to an ``Authorization`` value longer than
    LARGE_CREDENTIAL_LIMIT characters (as a seller with a fixed-size buffer whose overflow escapes would)."""

    @web.middleware
    async def fault(request: web.Request, handler):
        if any(len(value) > LARGE_CREDENTIAL_LIMIT for value in request.headers.getall("Authorization", ())):
            return web.Response(status=500, text="500 Internal Server Error")
        return await handler(request)

    app.middlewares.insert(0, fault)



def _uppercase_custom_parameter(app: web.Application, seller: Seller) -> None:
    """Every Payment challenge the seller sends gains a custom parameter whose name is not lowercase
    (``Trace-Id``); a response hook after the seller's, so the challenge itself, and its id, are untouched."""

    async def fault(request: web.Request, response: web.StreamResponse) -> None:
        values = response.headers.getall("WWW-Authenticate", [])
        if values:
            response.headers.popall("WWW-Authenticate")
            for value in values:
                response.headers.add("WWW-Authenticate", value + ', Trace-Id="conformance"' if value.startswith("Payment ") else value)

    app.on_response_prepare.append(fault)


def _opaque_not_string_map(app: web.Application, seller: Seller) -> None:
    """The challenge issuer puts a number into every ``opaque`` (``"attempt": 1`` next to the nonce and the
    resource): still base64url of JCS JSON, and bound by the id, but no longer a flat string-to-string map."""
    issue = seller.core.issuer.issue

    def issue_with_number(**kwargs):
        if kwargs.get("opaque") is not None:
            kwargs["opaque"] = {**kwargs["opaque"], "attempt": 1}
        return issue(**kwargs)

    seller.core.issuer.issue = issue_with_number


# The members a credential may carry for the refuses-unknown-members seller: the draft's, and ours.
_KNOWN_CREDENTIAL = {"challenge", "payload", "source", "identity"}
_KNOWN_ECHO = {"id", "realm", "method", "intent", "request", "description", "digest", "expires", "header", "opaque"}


def _refuses_unknown_members(app: web.Application, seller: Seller) -> None:
    """``SellerCore.verify`` first refuses, as malformed-credential, a credential with a top-level member or
    a member of its echoed challenge that the draft does not define (where the draft says to ignore them)."""
    from mpp.protocol.errors import MalformedCredential

    verify = seller.core.verify

    def verify_known_only(header, info, now):
        try:
            doc = json.loads(b64url_decode(header.strip(" \t").partition(" ")[2].strip(" \t")))
        except (ParseError, ValueError, RecursionError):
            doc = None  # not one readable credential: the real verify refuses it as before
        if isinstance(doc, dict) and isinstance(doc.get("challenge"), dict) and (
                set(doc) - _KNOWN_CREDENTIAL or set(doc["challenge"]) - _KNOWN_ECHO):
            raise MalformedCredential("credential carries a member this seller does not know")
        return verify(header, info, now)

    seller.core.verify = verify_known_only


def _rewrite_openapi(app: web.Application, change: Callable[[dict], None]) -> None:
    """A middleware in front of the seller's applies ``change`` to the JSON of every GET /openapi.json."""

    @web.middleware
    async def fault(request: web.Request, handler):
        response = await handler(request)
        if request.path == "/openapi.json" and response.status == 200:
            doc = json.loads(response.body)
            change(doc)
            response.body = json.dumps(doc).encode()
        return response

    app.middlewares.insert(0, fault)


def _openapi_without_version(app: web.Application, seller: Seller) -> None:
    """/openapi.json lacks ``info.version`` (the discovery draft requires it, §4.2); nothing else changes."""
    _rewrite_openapi(app, lambda doc: doc["info"].pop("version"))


def _openapi_zero_padded_amounts(app: web.Application, seller: Seller) -> None:
    """Every amount of every x-payment-info offer in /openapi.json gets two leading zeros ("30" becomes
    "0030"); the 402s still quote the plain amounts."""

    def pad(doc: dict) -> None:
        for item in doc["paths"].values():
            for op in item.values():
                for offer in op.get("x-payment-info", {}).get("offers", []):
                    if isinstance(offer.get("amount"), str):
                        offer["amount"] = "00" + offer["amount"]

    _rewrite_openapi(app, pad)

VARIANTS: dict[str, Breaker] = {
    BASELINE: _baseline,
    "accepts-replays": _accepts_replays,
    "payment-required-for-every-error": _payment_required_for_every_error,
    "omits-no-store": _omits_no_store,
    "receipt-on-error": _receipt_on_error,
    "500-on-garbage": _500_on_garbage,
    "skips-route-binding": _skips_route_binding,
    "reads-any-field": _reads_any_field,
    "echoes-unbounded": _echoes_unbounded,
    "leaks-credential": _leaks_credential,
    "accepts-expired": _accepts_expired,
    "settles-before-binding": _settles_before_binding,
    "500-on-large-credential": _500_on_large_credential,
    "uppercase-custom-parameter": _uppercase_custom_parameter,
    "opaque-not-string-map": _opaque_not_string_map,
    "refuses-unknown-members": _refuses_unknown_members,
    "openapi-without-version": _openapi_without_version,
    "openapi-zero-padded-amounts": _openapi_zero_padded_amounts,
}


def build(home: Path, variant: str) -> tuple[web.Application, Seller]:
    """Our seller for ``home`` (as `mpp seller serve` builds it), broken as ``variant`` says."""
    app, seller = build_seller_app(load_seller_config(home / "seller.toml"))
    VARIANTS[variant](app, seller)
    return app, seller


@asynccontextmanager
async def serving(home: Path, variant: str,
                  observe: Callable[[web.Request], None] | None = None) -> AsyncIterator[TestServer]:
    """The variant served in-process on 127.0.0.1 (an ephemeral port), with the CLI's header limits;
    ``observe`` sees every request first (a test's record of what the suite sent)."""
    app, _ = build(home, variant)
    if observe is not None:
        @web.middleware
        async def spy(request: web.Request, handler):
            observe(request)
            return await handler(request)

        app.middlewares.insert(0, spy)
    server = TestServer(app, host="127.0.0.1", **HEADER_LIMITS)
    await server.start_server()
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(**HEADER_LIMITS)  # TestServer() itself drops runner options such as these
    try:
        yield server
    finally:
        await server.close()
