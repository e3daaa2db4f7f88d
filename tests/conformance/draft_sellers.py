"""Two sellers written from the published drafts alone, for ``--profile draft``.

They use nothing of the ``mpp`` package: challenges, credentials, problem documents and receipts
are built and read here with hmac, hashlib, json, base64 and ``rfc8785`` (JCS), as an independent
reading of draft-httpauth-payment-02 ("the draft" below), draft-payment-intent-charge-00 ("the
charge draft") and draft-payment-discovery-01. What they do is what those documents ask, and where
a document leaves a choice, the two take different sides of it (see ``LETTER_A`` and ``LETTER_B``).
Nothing of MPP's own profile is here: no ``challengeId`` in problem documents or receipts, no
signed receipts and no ``/.well-known/jwks.json``, no identity extension, no ``Idempotent-Replayed``.

Each serves two priced routes: ``GET /letter`` (read a letter) and ``POST /letters`` (write one: a
side effect, done only once paid, counted in ``app[DELIVERIES]``). Both sell the ``charge`` intent
(charge draft) through a test payment method whose payload is accepted when its ``token`` member is
``"letter"`` (other members are ignored: the draft's §9.2 "implementations MUST ignore unknown
parameters and fields"), so the suite pays with ``--pay-with 'static:{"token": "letter"}'``.

Common to both, each from the draft:

* §4.2: 402 with a fresh challenge for no credential (``payment-required``), a malformed one
  (``malformed-credential``: not ``Payment`` 1*SP base64url-nopad, not JSON, not the credential's
  shape), an unknown or used id, or echoed parameters that break the binding (``invalid-challenge``),
  an expired one (``payment-expired``), a proof that fails (``verification-failed``; a payload
  without the method's ``token`` is ``invalid-payload``, §8.2). A used id is refused: single use
  (§11.3, charge draft §6.2, §8.3), check and insert done in one step with no ``await`` between
  them, so concurrent submissions of one credential succeed at most once (§11.5).
* §5.1.1/§5.1.2.1.1: ``id`` is base64url(HMAC-SHA256(secret, the seven slots joined by ``|``)),
  the eighth (``header``) slot appended when a credential echoes one (these sellers never select
  ``Payment-Authorization``, so such an echo never verifies). ``request`` is base64url of JCS.
  Once the id verifies, the echoed ``request`` must be the one this route sells (charge draft §7.1:
  the amount and recipient match the request), else ``invalid-challenge``.
* §5.1.3: a challenge for a request with a body carries ``digest`` (RFC 9530, ``sha-256=:b64:``);
  a credential whose digest does not match the body it comes with is refused
  (``verification-failed``; the draft names no type for it).
* §5.3: a paid 200 carries ``Payment-Receipt``: base64url of JSON with ``status`` "success",
  ``method``, ``timestamp`` and ``reference``; errors never carry one (§5.3.1).
* §8.1: error bodies are RFC 9457 problem documents of type ``https://paymentauth.org/problems/<code>``
  with ``type``, ``title``, ``status`` and a fixed ``detail``, never quoting the credential (§11.2.1).
* §11.10: ``Cache-Control: no-store`` on every 402 (and every refusal); ``private`` with a receipt.
* §11.4: an unpaid request changes nothing (the ids are stateless; only consumed ids are stored).
* §7.4: ``Accept-Payment`` is read (ranges with q=0 dropped, best q first); an unmatched or
  malformed one gets the normal set (MAY).
* §9.4: header fields up to 64 KiB are read (aiohttp's default 8 KiB limit answers a 400 whose body
  quotes the start of the oversized field, which for an Authorization field is the credential).

Not followed: §11.2 (TLS; these serve plain HTTP on loopback, as tests do).

Where the documents leave a choice, the two differ (each side is one the text allows):

========================  =====================================  =====================================
choice                    letter-a                               letter-b
========================  =====================================  =====================================
payment method            ``example``                            ``sample``
``expires``               fractional seconds,                    whole seconds, ``...T18:00:04Z``,
                          ``...T18:00:00.123Z``, 3.5 s ahead     3 to 4 s ahead (§5.1.2: an RFC 3339
                                                                 date-time; time-secfrac is optional)
``recipient`` in request  present (``acct_letter_a``)            absent (charge draft §5.1.2: OPTIONAL)
per-challenge nonce       ``request.methodDetails.nonce`` (the   ``opaque`` = JCS of a flat string map
(so every id is unique)   draft's own "signed" example does)     ``{"nonce", "order"}`` (§5.1.2; bound
                                                                 as slot 6 of the id)
two Payment credentials   400 ``bad-request``, no challenge      402 ``malformed-credential`` with a
                          (§B.4: servers SHOULD answer 400)      fresh challenge (the SHOULD not taken:
                                                                 a 402 lets the client retry at once)
unknown method            400 ``method-unsupported`` (§8.2),     402 ``invalid-challenge``: the echoed
                          with a fresh challenge naming the      method is in the id's binding, which
                          method it takes (the draft neither     no longer verifies (§4.2, §5.1.2.1)
                          asks for nor forbids one on a 400)
discovery                 ``GET /openapi.json`` (discovery-01:   none: ``/openapi.json`` is 404
                          OpenAPI 3.1, ``x-payment-info`` with   (discovery is OPTIONAL)
                          ``offers`` on each priced operation,
                          a 402 response declared)
Idempotency-Key (§11.4)   a paid POST retried with the same      not read (a SHOULD): every reuse of
                          key and credential gets the original   a used id is ``invalid-challenge``
                          response (status, body, receipt),
                          with no second delivery
========================  =====================================  =====================================
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, AsyncIterator

import rfc8785
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

__all__ = ["Choices", "LETTER_A", "LETTER_B", "FIXTURES", "TOKEN", "PAY_WITH", "DELIVERIES", "build_app", "serving"]

TOKEN = "letter"  # the test method's accepted payload: {"token": "letter"}
PAY_WITH = 'static:{"token": "letter"}'
PROBLEM_BASE = "https://paymentauth.org/problems/"
HEADER_LIMITS = {"max_field_size": 65536, "max_line_size": 65536}
MAX_DEPTH = 32  # JSON nesting a credential may have (RFC 8259 §9: parsers may limit depth)

TITLES = {
    "payment-required": "Payment Required",
    "malformed-credential": "Malformed Credential",
    "invalid-challenge": "Invalid Challenge",
    "payment-expired": "Payment Expired",
    "verification-failed": "Payment Verification Failed",
    "invalid-payload": "Invalid Payload",
    "method-unsupported": "Method Unsupported",
    "bad-request": "Bad Request",
}
DETAILS = {  # fixed texts: nothing of the request is ever copied into an answer (§11.2.1)
    "payment-required": "Payment is required for this resource.",
    "malformed-credential": "The Payment credential could not be read.",
    "invalid-challenge": "The credential does not answer an outstanding challenge of this resource.",
    "payment-expired": "The challenge has expired.",
    "verification-failed": "The payment could not be verified.",
    "invalid-payload": "The credential payload does not match the payment method's schema.",
    "method-unsupported": "The payment method is not accepted here.",
    "bad-request": "A request may carry only one Payment credential.",
}


@dataclass(frozen=True)
class Choices:
    """Where the drafts leave a seller a choice, which side one fixture takes."""

    name: str
    realm: str
    method: str  # payment method identifier (1*LOWERALPHA)
    recipient: str | None  # charge draft §5.1.2: OPTIONAL
    fractional_expires: bool  # RFC 3339 allows time-secfrac
    ttl: float  # seconds a challenge lives
    opaque: bool  # §5.1.2 opaque: OPTIONAL; where the per-challenge nonce lives (else request.methodDetails)
    discovery: bool  # discovery draft: OPTIONAL
    two_credentials_400: bool  # §B.4 SHOULD 400; else 402 malformed-credential
    unknown_method_400: bool  # §8.2 method-unsupported 400; else the broken binding's 402 invalid-challenge
    idempotency: bool  # §11.4 SHOULD: a POST retried with its Idempotency-Key and credential gets the original response
    prices: dict[tuple[str, str], str] = field(default_factory=dict)  # (HTTP method, path) -> amount, base units
    currency: str = "usd"


LETTER_A = Choices(
    name="letter-a", realm="letter-a.example", method="example", recipient="acct_letter_a",
    fractional_expires=True, ttl=3.5, opaque=False, discovery=True, two_credentials_400=True, unknown_method_400=True,
    idempotency=True,
    prices={("GET", "/letter"): "100", ("POST", "/letters"): "250"})
LETTER_B = Choices(
    name="letter-b", realm="letter-b.example", method="sample", recipient=None,
    fractional_expires=False, ttl=4.0, opaque=True, discovery=False, two_credentials_400=False, unknown_method_400=False,
    idempotency=False,
    prices={("GET", "/letter"): "5", ("POST", "/letters"): "7"})
FIXTURES = {c.name: c for c in (LETTER_A, LETTER_B)}

DELIVERIES = web.AppKey("deliveries", list)  # (HTTP method, path, receipt reference) per paid request served


# -- encodings ---------------------------------------------------------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(value: Any) -> str:
    return b64url(rfc8785.dumps(value))


def body_digest(body: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii") + ":"


def rfc3339(ts: float, fractional: bool) -> str:
    u = datetime.fromtimestamp(ts, timezone.utc)
    whole = f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}"
    return whole + (f".{u.microsecond // 1000:03d}Z" if fractional else "Z")


def parse_rfc3339(value: str) -> float | None:
    try:
        dt = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return None
    return None if dt.tzinfo is None else dt.timestamp()


def challenge_id(secret: bytes, params: dict[str, str]) -> bytes:
    """§5.1.2.1.1: HMAC-SHA256 over realm|method|intent|request|expires|digest|opaque[|header]."""
    slots = [params.get(k) or "" for k in ("realm", "method", "intent", "request", "expires", "digest", "opaque")]
    if "header" in params:
        slots.append(params["header"])
    text = "|".join(slots).encode("utf-8", "surrogatepass")  # echoed strings may hold lone surrogates
    return hmac.new(secret, text, hashlib.sha256).digest()


# -- reading a credential -------------------------------------------------------------------------

_CREDENTIAL = re.compile(r"Payment +([A-Za-z0-9_-]+)", re.IGNORECASE)  # §5.2: "Payment" 1*SP base64url-nopad
_OPTIONAL = ("description", "digest", "expires", "opaque", "header")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise ValueError("repeated member")
        doc[key] = value
    return doc


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _too_deep(doc: Any) -> bool:
    stack = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(value, dict):
            stack += [(v, depth + 1) for v in value.values()]
        elif isinstance(value, list):
            stack += [(v, depth + 1) for v in value]
    return False


def read_credential(value: str) -> dict[str, Any] | None:
    """The credential's JSON object, when ``value`` is one as §5.2 shapes it; else None (malformed)."""
    m = _CREDENTIAL.fullmatch(value.strip(" "))
    if m is None:
        return None
    token = m.group(1)
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_object, parse_constant=_not_json)
    except (binascii.Error, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(doc, dict) or _too_deep(doc):
        return None
    challenge, payload, source = doc.get("challenge"), doc.get("payload"), doc.get("source", "")
    if not isinstance(challenge, dict) or not isinstance(payload, dict) or not isinstance(source, str):
        return None
    if not all(isinstance(challenge.get(k), str) and challenge[k] for k in ("id", "realm", "method", "intent", "request")):
        return None
    if not all(isinstance(challenge[k], str) for k in _OPTIONAL if k in challenge):
        return None
    return doc


def payment_fields(request: web.Request) -> list[str]:
    """The Authorization fields of the Payment scheme (§5.2: only Authorization, as no challenge of
    these sellers selects Payment-Authorization); the scheme name is case-insensitive (RFC 9110 §11.1)."""
    return [v for v in request.headers.getall("Authorization", [])
            if re.match(r"[^ \t]*", v.strip(" \t")).group(0).lower() == "payment"]


# -- Accept-Payment (§7.4) ---------------------------------------------------------------------------

_RANGE = re.compile(r"([a-z]+|\*)/([A-Za-z0-9-]+|\*)(?:[ \t]*;[ \t]*q=(0(?:\.\d{0,3})?|1(?:\.0{0,3})?))?", re.IGNORECASE)


def negotiate(header: str | None, offers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``offers`` filtered to ranges with q>0 and ordered by q (server order on ties); an absent,
    malformed or unmatched header gets the normal set."""
    if header is None:
        return offers
    ranges = []
    for part in header.split(","):
        m = _RANGE.fullmatch(part.strip(" \t"))
        if m is None:
            return offers  # malformed: MAY ignore it
        ranges.append((m.group(1).lower(), m.group(2).lower(), float(m.group(3) or 1)))

    def weight(offer: tuple[str, str]) -> float | None:
        best = None  # the most specific matching range decides
        for method, intent, q in ranges:
            if method in ("*", offer[0]) and intent in ("*", offer[1]):
                specificity = (method != "*") + (intent != "*")
                if best is None or specificity > best[0]:
                    best = (specificity, q)
        return None if best is None else best[1]

    weighted = [(weight(o), n, o) for n, o in enumerate(offers)]
    chosen = [(w, n, o) for w, n, o in weighted if w]
    if not chosen:
        return offers  # nothing matches with q>0: MAY return the normal set
    return [o for _, _, o in sorted(chosen, key=lambda t: (-t[0], t[1]))]


# -- the seller ----------------------------------------------------------------------------------------

class Seller:
    def __init__(self, choices: Choices, secret: bytes | None = None) -> None:
        self.c = choices
        self.secret = secret or secrets.token_bytes(32)
        self.used: dict[str, float] = {}  # consumed challenge id -> its expiry (purged once past)
        self.deliveries: list[tuple[str, str, str]] = []
        # challenge id -> (Idempotency-Key, body digest, the original response's status, headers, body)
        self.responses: dict[str, tuple[str, str | None, int, dict[str, str], bytes]] = {}

    # challenges ---------------------------------------------------------------------------------

    def charge_request(self, route: tuple[str, str]) -> dict[str, Any]:
        """The charge request (charge draft §5) this route sells, without per-challenge data."""
        request: dict[str, Any] = {"amount": self.c.prices[route], "currency": self.c.currency}
        if self.c.recipient is not None:
            request["recipient"] = self.c.recipient
        return request

    def challenge(self, route: tuple[str, str], body: bytes | None) -> str:
        nonce = secrets.token_urlsafe(12)  # every challenge unique, so every id is (§5.1.1)
        request = self.charge_request(route)
        params = {"realm": self.c.realm, "method": self.c.method, "intent": "charge"}
        if not self.c.opaque:
            request["methodDetails"] = {"nonce": nonce}  # as the draft's own "signed" example does
        params["request"] = b64url_json(request)
        params["expires"] = rfc3339(time.time() + self.c.ttl, self.c.fractional_expires)
        if body is not None:
            params["digest"] = body_digest(body)
        if self.c.opaque:
            params["opaque"] = b64url_json({"nonce": nonce, "order": f"{route[0]} {route[1]}"})
        params = {"id": b64url(challenge_id(self.secret, params)), **params}
        return "Payment " + ", ".join(f'{k}="{v}"' for k, v in params.items())

    def answer(self, status: int, code: str, request: web.Request, route: tuple[str, str], body: bytes | None,
               *, challenges: bool = True) -> web.Response:
        """A refusal: an RFC 9457 problem document, no-store, fresh challenges (§4.2, §8.1, §11.10)."""
        headers = CIMultiDict({"Cache-Control": "no-store"})
        if challenges:
            for method, _ in negotiate(request.headers.get("Accept-Payment"), [(self.c.method, "charge")]):
                headers.add("WWW-Authenticate", self.challenge(route, body))
        doc = {"type": PROBLEM_BASE + code, "title": TITLES[code], "status": status, "detail": DETAILS[code]}
        return web.Response(status=status, headers=headers, body=json.dumps(doc).encode(),
                            content_type="application/problem+json")

    # credentials ----------------------------------------------------------------------------------

    def route_matches(self, echoed: dict[str, str], route: tuple[str, str]) -> bool:
        """The echoed (and id-verified) request is what this route sells (charge draft §7.1 4, 5)."""
        try:
            request = json.loads(base64.urlsafe_b64decode(echoed["request"] + "=" * (-len(echoed["request"]) % 4)))
        except (binascii.Error, ValueError):
            return False
        if not isinstance(request, dict):
            return False
        shared = {k: v for k, v in request.items() if k != "methodDetails"}
        return shared == self.charge_request(route)

    async def priced(self, request: web.Request) -> web.Response:
        route = ("GET" if request.method == "HEAD" else request.method, request.path)
        raw = await request.read()
        body = raw if raw or request.method in ("POST", "PUT", "PATCH") else None  # what has a digest (§5.1.3)
        fields = payment_fields(request)
        if not fields:
            return self.answer(402, "payment-required", request, route, body)
        if len(fields) > 1:  # §B.4
            if self.c.two_credentials_400:
                return self.answer(400, "bad-request", request, route, body, challenges=False)
            return self.answer(402, "malformed-credential", request, route, body)
        credential = read_credential(fields[0])
        if credential is None:
            return self.answer(402, "malformed-credential", request, route, body)
        echoed: dict[str, str] = credential["challenge"]
        if self.c.unknown_method_400 and echoed["method"] != self.c.method:
            return self.answer(400, "method-unsupported", request, route, body)  # §8.2, offering the method taken
        given = echoed["id"].encode("utf-8", "surrogatepass")
        if not hmac.compare_digest(given, b64url(challenge_id(self.secret, echoed)).encode()):
            return self.answer(402, "invalid-challenge", request, route, body)  # §5.1.2.1: binding broken
        # From here the echoed parameters are this seller's own.
        if not self.route_matches(echoed, route):
            return self.answer(402, "invalid-challenge", request, route, body)  # issued for another resource
        expires = parse_rfc3339(echoed.get("expires", ""))
        now = time.time()
        if expires is None or now >= expires:
            return self.answer(402, "payment-expired", request, route, body)
        if body is not None and echoed.get("digest") != body_digest(body):
            return self.answer(402, "verification-failed", request, route, body)  # §5.1.3
        payload = credential["payload"]
        if not isinstance(payload.get("token"), str):
            return self.answer(402, "invalid-payload", request, route, body)
        if not hmac.compare_digest(payload["token"].encode("utf-8", "surrogatepass"), TOKEN.encode()):
            return self.answer(402, "verification-failed", request, route, body)
        # Consume: check and insert in one synchronous step (no await since the body was read), so of
        # concurrent submissions of one credential exactly one gets past here (§11.5).
        if echoed["id"] in self.used:
            kept = self.responses.get(echoed["id"])
            if kept is not None and kept[0] == request.headers.get("Idempotency-Key"):
                return web.Response(status=kept[2], headers=kept[3], body=kept[4])  # a retry: the original (§11.4)
            return self.answer(402, "invalid-challenge", request, route, body)  # already used (§11.3)
        if len(self.used) > 1000:
            self.used = {k: v for k, v in self.used.items() if v > now}
            self.responses = {k: v for k, v in self.responses.items() if k in self.used}
        self.used[echoed["id"]] = expires
        reference = f"{self.c.name}-{secrets.token_hex(8)}"
        self.deliveries.append((route[0], route[1], reference))
        receipt = {"status": "success", "method": self.c.method, "timestamp": rfc3339(now, self.c.fractional_expires),
                   "reference": reference}
        content = {"letter": "Dear agent, thank you for paying." if route[0] == "GET" else "Your letter is written.",
                   "bytes": len(raw)}
        headers = {"Payment-Receipt": b64url_json(receipt), "Cache-Control": "private", "Content-Type": "application/json"}
        payload_bytes = json.dumps(content).encode()
        key = request.headers.get("Idempotency-Key")
        if self.c.idempotency and key is not None and route[0] in ("POST", "PUT", "PATCH", "DELETE"):
            self.responses[echoed["id"]] = (key, echoed.get("digest"), 200, headers, payload_bytes)  # digest: bound already
        return web.Response(status=200, headers=headers, body=payload_bytes)

    # discovery ---------------------------------------------------------------------------------

    async def openapi(self, request: web.Request) -> web.Response:
        paths: dict[str, dict[str, Any]] = {}
        for (method, path), amount in self.c.prices.items():
            op: dict[str, Any] = {
                "summary": "Read a letter" if method == "GET" else "Write a letter",
                "x-payment-info": {"offers": [{"intent": "charge", "method": self.c.method, "amount": amount,
                                                "currency": self.c.currency}]},
                "responses": {
                    "200": {"description": "The letter", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["letter"],
                        "properties": {"letter": {"type": "string"}, "bytes": {"type": "integer"}}}}}},
                    "402": {"description": "Payment Required"},
                },
            }
            if method == "POST":
                op["requestBody"] = {"content": {"application/json": {"schema": {"type": "object"}}}}
            paths.setdefault(path, {})[method.lower()] = op
        doc = {"openapi": "3.1.0", "info": {"title": f"{self.c.name} (draft fixture)", "version": "1.0.0"}, "paths": paths}
        return web.json_response(doc, headers={"Cache-Control": "max-age=300"})


def build_app(choices: Choices, secret: bytes | None = None) -> web.Application:
    seller = Seller(choices, secret)
    app = web.Application()
    app[DELIVERIES] = seller.deliveries
    for method, path in choices.prices:
        app.router.add_route(method, path, seller.priced)
    if choices.discovery:
        app.router.add_get("/openapi.json", seller.openapi)
    return app


@asynccontextmanager
async def serving(name: str) -> AsyncIterator[tuple[TestServer, web.Application]]:
    """The fixture ``name`` served in-process on 127.0.0.1 (an ephemeral port), reading header
    fields up to 64 KiB."""
    app = build_app(FIXTURES[name])
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(**HEADER_LIMITS)  # runner options go to start_server, not TestServer()
    try:
        yield server, app
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> None:
    """Serve one fixture for a manual run of the suite:

        python tests/conformance/draft_sellers.py letter-a --port 8402
        mpp-conformance seller http://127.0.0.1:8402/letter --profile draft \\
            --pay-with 'static:{"token": "letter"}' --other-url 'POST http://127.0.0.1:8402/letters' --expiry-wait 4
    """
    import argparse

    parser = argparse.ArgumentParser(description="serve a draft-only seller fixture on loopback")
    parser.add_argument("name", choices=sorted(FIXTURES))
    parser.add_argument("--port", type=int, default=8402)
    args = parser.parse_args(argv)
    web.run_app(build_app(FIXTURES[args.name]), host="127.0.0.1", port=args.port, **HEADER_LIMITS)


if __name__ == "__main__":
    main()
