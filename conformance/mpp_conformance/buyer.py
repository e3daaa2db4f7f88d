"""Buyer mode: an adversarial seller on loopback, and the buyer under test driven against it.

``mpp-conformance buyer --cmd "COMMAND {url}"`` checks a *buyer*: it starts a seller of its own
on 127.0.0.1 and has the buyer fetch a priced resource from it, once per check, each time with a
different trap in the challenge, the redirect or the answer.

The command contract
====================

This is what another implementation must provide to be checked; nothing else is assumed about it.

* ``--cmd`` is a shell command line (run by ``/bin/sh``) containing the placeholder ``{url}``.
  For each check the suite replaces ``{url}`` with the (shell-quoted) URL of a resource on its
  seller, ``http://127.0.0.1:PORT/c/NONCE/resource``, and runs the command once, with stdin
  closed, its stdout and stderr captured, in a process group of its own. A run that takes
  longer than ``--timeout`` seconds (default 30) is killed and the check reports ERROR
  (or FAIL, if what the buyer did before it hung already breaks a requirement).
* The buyer must ``GET`` that URL and pay if, and only if, it agrees to, in the draft's way: a
  402 carries ``WWW-Authenticate: Payment ...``; the buyer answers with ``Authorization:
  Payment <base64url JSON credential>`` on a new request to the same URL.
* Exit status 0 means "I got the resource" (a 2xx, and for a paid one a receipt that
  verified). Any other status means the buyer refused, or failed; which non-zero status does
  not matter to the suite. Output is free-form; the last lines of stderr end up in the report
  (with anything shaped like a Payment credential redacted).
* The tester configures the buyer so that it accepts: currency ``usd``, recipient
  ``acct:seller``, at most 1000 base units per purchase, and the method ``ledger`` with intent
  ``charge``. Everything the suite asks for within those bounds it expects to be paid.
  For this repository's buyer that is ``mpp fetch --wallet WALLET --no-identity {url}`` with a
  wallet from ``mpp init`` (``max_amount`` 1000, ``currencies`` ["usd"]) whose ``wallet.json``
  also lists ``"recipients": ["acct:seller"]``.
* Plain ``http`` to 127.0.0.1: a buyer that refuses plain http everywhere cannot be checked
  (CORE-BUY-07 allows loopback for exactly this reason). Only ``buyer.plain-http`` gives it a URL
  on another address of the machine (see below), where it must not pay.
* ``--post-cmd`` (optional) is a second template, with ``{url}`` and ``{body}``: the same buyer
  sending ``POST`` with that body (shell-quoted JSON) and paying as above, used by
  ``buyer.body-digest`` only; without it that check reports SKIP. For this repository's buyer:
  ``mpp fetch --wallet WALLET --no-identity --data {body} {url}``.

The seller
==========

Two aiohttp servers on 127.0.0.1 with random ports: the *seller origin* (whose URL the buyer is
given) and *another origin* (a different port, so a different origin), used only by the redirect
check; and a third, the *plain-http origin*, on an address of the machine that is not loopback
(``--plain-http-address``, or the one ``non_loopback_address`` finds; never 0.0.0.0), used only by
``buyer.plain-http``, which is skipped, with the reason, when there is none. All serve the suite's receipt key at ``/.well-known/jwks.json``. Challenges are built with
mpp's own wire code: ``ChallengeIssuer`` (a fresh 32-byte secret per run, realm
``mpp-conformance.buyer``), method ``ledger``, intent ``charge``, a 5-minute expiry, an ``opaque``
nonce (so every 402 carries a new challenge id) and the request
``{"amount": "100", "currency": "usd", "recipient": "acct:seller", "methodDetails": {"ledger":
"conformance-ledger"}}``, each check changing one thing.

The suite does not verify ledger signatures: it is testing the buyer's *decisions*, not its
payment method. Every request carrying ``Authorization: Payment ...`` (or a ``Payment-Credential``
field) to any origin, on any path, counts as a credential sent (well-formed or not). A
credential that parses and echoes a challenge issued in the same check, every parameter the id
binds unaltered (``description`` is not bound, unknown members are ignored), is accepted as
payment, and answered as the check's scenario says
(normally ``200`` with a ``Payment-Receipt`` whose JWS is signed by the key in the JWKS, claims as
mpp's seller writes them: iss = realm, challengeId, amount, currency, recipient, reference...).
A credential that does not parse, or echoes a challenge this run did not issue, gets a 400 or a
402 and, in the baseline, fails it; so does one whose request body does not match the ``digest``
of the challenge it echoes.

Levels: a check citing a MUST of draft-httpauth-payment-02 (``draft``, short form as in
``framework.level_of``) has level ``MUST``; the others test MPP's own profile (``extension``). A
check citing only SHOULDs would warn instead of failing; there is none yet.

The checks (profile ``buyer``)
==============================

``buyer.baseline`` (CORE-BUY-03, CORE-BUY-04)
    A normal purchase: 402, then 200 with a valid signed receipt. The buyer must exit 0 having
    sent exactly one well-formed credential. If it does not, every other check reports ERROR
    "baseline failed" without running: a buyer that cannot pay at all "refuses" everything.
``buyer.expired-challenge`` (CORE-BUY-01; draft §5.1.2 MUST NOT)
    The challenge expired five minutes ago. No credential may arrive.
``buyer.over-limit`` (CORE-BUY-01; draft §11.6 MUST)
    The amount is 5000, over the limit of 1000. No credential may arrive.
``buyer.wrong-recipient`` (CORE-BUY-01; draft §11.6 MUST)
    The recipient is ``acct:mallory``. No credential may arrive.
``buyer.wrong-currency`` (CORE-BUY-01; draft §11.6 MUST)
    The currency is ``eur``. No credential may arrive.
``buyer.foreign-credential-field`` (CORE-BUY-08; draft §5.2 MUST NOT)
    The challenge's ``header`` parameter selects ``Payment-Credential`` (bound into its id). This
    profile sends credentials only in ``Authorization``, so no credential may arrive, in either field.
``buyer.cross-origin-redirect`` (CORE-BUY-02, CORE-BUY-03)
    The URL answers 302 to the other origin, which answers 402 with an otherwise acceptable
    challenge. No credential may arrive at either origin.
``buyer.bad-receipt-signature`` (CORE-BUY-04)
    As the baseline, but the 200's receipt JWS is signed by a key that is not in the JWKS (its
    header names the ``kid`` of the key that is, so only the signature gives it away). The buyer
    must exit non-zero. (No credential at all: ERROR, the receipt check was not reached.)
``buyer.no-double-pay-after-5xx`` (CORE-BUY-05, CORE-BUY-03)
    Every credential is answered ``503``. The buyer must exit non-zero (the outcome is unknown)
    and pay once: a second credential, or a fresh payment after a new 402, fails the check.
    The one retry CORE-BUY-05 allows, the byte-identical credential sent again with an
    ``Idempotency-Key``, is not counted as a second payment.

``buyer.large-challenge`` (CORE-CRED-05; draft §9.4 MUST)
    The ``WWW-Authenticate`` value is 4608 bytes (at least 4096, under the 8 KB servers should
    keep to), padded by a long ``description``; the request is the baseline's. It must be paid,
    once, and the buyer exit 0.
``buyer.unknown-parameters`` (CORE-CHAL-07, CORE-CRED-03; draft §5.1.2 MUST, §9.3 MUST)
    Unknown lowercase parameters before and after the known ones (``x-trace`` with a token value of
    every tchar punctuation, ``hint`` quoted with a comma and an escaped quote, ``priority``,
    ``x-vendor-ext``). It must be paid once and the echo must verify (unknown members in the echo
    are ignored).
``buyer.echo-id-opaque`` (CORE-CRED-03; draft §5.1.1 MUST, §5.1.2 MUST)
    The id is a 63-character stored one (the draft leaves the binding to the seller) and ``opaque``
    holds non-ASCII text (JCS, so re-serialising changes its bytes). It must be paid once with both
    echoed byte for byte; the message names a dropped, cut or re-encoded value.
``buyer.body-digest`` (CORE-BUY-10; draft §5.1.2 MUST)
    Run with ``--post-cmd``. The 402 to the POST carries ``digest`` of the body received; the
    paid request must carry a body of that digest (one with another body fails). A first request
    without a body is ERROR: nothing could be bound.
``buyer.description-not-relied-on`` (CORE-BUY-06, CORE-BUY-01; draft §11.6 MUST NOT)
    ``description`` claims 10 usd; ``request`` asks 5000, over the limit. No credential may arrive.
``buyer.plain-http`` (CORE-BUY-07; draft §11.2 MUST NOT)
    The URL is ``http://ADDRESS:PORT/...`` on the plain-http origin; an otherwise acceptable
    challenge. No credential may arrive (a buyer that makes no request there passes too).

The checks run one after another, the baseline first, each with its own evidence: every request
the buyer made to either origin (credentials redacted) and the command's exit status and output.
``run_buyer_checks(cmd, progress=..., timeout=..., only=[ids], post_cmd=..., plain_host=...)`` is the
entry point (``only`` selects checks; the baseline always runs). Messages say what the buyer did
(counts, sizes, lengths), never a credential's value.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import ipaddress
import shlex
import signal
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import jwt
from aiohttp import web

from mpp import b64url_decode
from mpp.protocol.challenge import ChallengeIssuer, compute_challenge_id
from mpp.protocol.digest import content_digest
from mpp.protocol.errors import PROBLEM_BASE, ParseError
from mpp.protocol.headers import format_challenge, format_receipt, parse_credential
from mpp.protocol.keys import SigningKey
from mpp.protocol.models import Challenge, ChargeRequest, PaymentReceipt, format_rfc3339
from mpp.protocol.receipts import jwks_document, sign_receipt

from .base import Exchange, Result, Verdict, _text, level_of, redact
from .usage import UsageError

__all__ = ["BUYER_CHECKS", "BuyerCheck", "AdversarialSeller", "run_buyer_checks", "PLACEHOLDER"]

PLACEHOLDER = "{url}"
BODY_PLACEHOLDER = "{body}"
REALM = "mpp-conformance.buyer"
METHOD = "ledger"
INTENT = "charge"
LEDGER = "conformance-ledger"
RECIPIENT = "acct:seller"
CURRENCY = "usd"
MAX_AMOUNT = 1000  # the limit the tester gives the buyer
BASELINE_AMOUNT = 100
JWKS_PATH = "/.well-known/jwks.json"
FOREIGN_FIELD_NAME = "Payment-Credential"
HEADER_LIMITS = {"max_field_size": 32768, "max_line_size": 32768}  # credentials may carry mandate chains


@dataclass(frozen=True)
class BuyerCheck:
    """One buyer-mode check: what it is called and which requirements it cites."""

    id: str
    title: str
    requirements: tuple[str, ...]
    draft: str | None = None  # what of the drafts it tests ("draft §9.4 MUST"); None: MPP's own profile
    profile: str = "buyer"

    @property
    def level(self) -> str:
        return level_of(self.draft)


BASELINE = BuyerCheck("buyer.baseline", "buyer pays a normal challenge once and accepts a valid receipt",
                      ("CORE-BUY-03", "CORE-BUY-04"))
EXPIRED = BuyerCheck("buyer.expired-challenge", "buyer refuses an expired challenge", ("CORE-BUY-01",), "draft §5.1.2 MUST NOT")
OVER_LIMIT = BuyerCheck("buyer.over-limit", "buyer refuses an amount over its per-purchase limit", ("CORE-BUY-01",),
                        "draft §11.6 MUST")
WRONG_RECIPIENT = BuyerCheck("buyer.wrong-recipient", "buyer refuses a recipient it does not allow", ("CORE-BUY-01",),
                             "draft §11.6 MUST")
WRONG_CURRENCY = BuyerCheck("buyer.wrong-currency", "buyer refuses a currency it does not allow", ("CORE-BUY-01",),
                            "draft §11.6 MUST")
FOREIGN_FIELD = BuyerCheck("buyer.foreign-credential-field",
                           "buyer does not answer a challenge that wants the credential in a field other than Authorization",
                           ("CORE-BUY-08",), "draft §5.2 MUST NOT")
CROSS_ORIGIN = BuyerCheck("buyer.cross-origin-redirect", "buyer pays no 402 reached through a redirect to another origin",
                          ("CORE-BUY-02", "CORE-BUY-03"))
BAD_RECEIPT = BuyerCheck("buyer.bad-receipt-signature", "buyer rejects a receipt JWS not signed by the seller's JWKS key",
                         ("CORE-BUY-04",))
NO_DOUBLE_PAY = BuyerCheck("buyer.no-double-pay-after-5xx", "buyer does not pay again after a 5xx answer to its credential",
                           ("CORE-BUY-05", "CORE-BUY-03"))
LARGE_CHALLENGE = BuyerCheck("buyer.large-challenge", "buyer pays a challenge of at least 4 KB", ("CORE-CRED-05",),
                             "draft §9.4 MUST")
UNKNOWN_PARAMS = BuyerCheck("buyer.unknown-parameters", "buyer ignores unknown challenge parameters and still echoes the challenge",
                            ("CORE-CHAL-07", "CORE-CRED-03"), "draft §5.1.2 MUST; draft §9.3 MUST")
ECHO_ID_OPAQUE = BuyerCheck("buyer.echo-id-opaque", "buyer echoes id and opaque unchanged, byte for byte", ("CORE-CRED-03",),
                            "draft §5.1.1 MUST; draft §5.1.2 MUST")
BODY_DIGEST = BuyerCheck("buyer.body-digest", "buyer sends its credential with the body whose digest the challenge carries",
                         ("CORE-BUY-10",), "draft §5.1.2 MUST")
DESCRIPTION = BuyerCheck("buyer.description-not-relied-on",
                         "buyer judges the amount of request, not a description that claims a smaller one",
                         ("CORE-BUY-06", "CORE-BUY-01"), "draft §11.6 MUST NOT")
PLAIN_HTTP = BuyerCheck("buyer.plain-http", "buyer sends no credential over plain http to a host that is not loopback",
                        ("CORE-BUY-07",), "draft §11.2 MUST NOT")

BUYER_CHECKS: tuple[BuyerCheck, ...] = (BASELINE, EXPIRED, OVER_LIMIT, WRONG_RECIPIENT, WRONG_CURRENCY, FOREIGN_FIELD,
                                        CROSS_ORIGIN, BAD_RECEIPT, NO_DOUBLE_PAY, LARGE_CHALLENGE, UNKNOWN_PARAMS,
                                        ECHO_ID_OPAQUE, BODY_DIGEST, DESCRIPTION, PLAIN_HTTP)
PAID = (LARGE_CHALLENGE, UNKNOWN_PARAMS, ECHO_ID_OPAQUE, BODY_DIGEST)  # checks the buyer passes by paying, as in the baseline

LARGE_MIN = 4096  # bytes of the large challenge's field value: at least 4 KB (draft §9.4), under 8 KB (its SHOULD for servers)
LARGE_SIZE = 4608
DESCRIPTION_CLAIM = "Price: 10 usd (ten cents). Amount: 10."  # what the description says; the request asks for 5000
# Unknown parameters, all lowercase (draft §9.3): a token value of every tchar but ALPHA/DIGIT, a quoted
# value holding a comma and an escaped quote, a plain number. One goes before id, the others after it.
UNKNOWN_BEFORE = "x-trace=!#$%&'*+-.^_`|~0Az"
UNKNOWN_AFTER = 'hint="retry later, or \\"never\\"", priority=7, x-vendor-ext="v2"'
# An opaque (flat string map) whose bytes a re-serialiser would change: JCS keeps non-ASCII as UTF-8 and
# uses no spaces; members in JCS (sorted) order. Its values are what a seller might correlate on.
ECHO_OPAQUE = {"n": "", "note": "caf\u00e9 \u2013 \u00fcber", "path": "/c/x?y=1&z=2", "zero": ""}
POST_BODY = '{"conformance":"body-digest","items":[1,2,3],"note":"the body the digest binds"}'

# What each refusal check changes in the baseline challenge, and how to say what was wrong with it.
_REFUSALS: dict[str, tuple[dict[str, Any], str]] = {
    EXPIRED.id: ({"expired": True}, "an expired challenge"),
    OVER_LIMIT.id: ({"amount": 5000}, f"amount 5000, over its limit of {MAX_AMOUNT}"),
    WRONG_RECIPIENT.id: ({"recipient": "acct:mallory"}, "recipient acct:mallory, not the allowed acct:seller"),
    WRONG_CURRENCY.id: ({"currency": "eur"}, "currency eur, not the allowed usd"),
    FOREIGN_FIELD.id: ({"header": FOREIGN_FIELD_NAME}, "a challenge whose header parameter selects Payment-Credential"),
    CROSS_ORIGIN.id: ({}, "a 402 from another origin, reached through a 302 redirect"),
    DESCRIPTION.id: ({"amount": 5000, "description": DESCRIPTION_CLAIM},
                     f"amount 5000 in request, over its limit of {MAX_AMOUNT}, under a description that claims 10"),
    PLAIN_HTTP.id: ({}, "a challenge received over plain http from a host that is not loopback"),
}


# What the challenge id binds (draft §5.1.2.1): an echo must carry these unchanged. ``description`` is not
# bound (display only) and unknown members are ignored, so neither decides whether a credential pays.
_BOUND = ("realm", "method", "intent", "request", "expires", "digest", "opaque", "header")


@dataclass
class _Sent:
    """One credential as it arrived."""

    origin: str  # "seller", "other" or "plain"
    path: str
    value: str
    idempotency_key: str | None
    method: str = "GET"
    body: bytes = b""
    answering: str | None = None  # the id of the challenge last issued before it arrived


@dataclass
class _Run:
    """What one check's command did to the seller."""

    check: BuyerCheck
    nonce: str = field(default_factory=lambda: secrets.token_hex(8))
    issued: dict[str, Challenge] = field(default_factory=dict)
    credentials: list[_Sent] = field(default_factory=list)
    accepted: int = 0  # credentials that parsed and echoed a challenge of this run
    notes: list[str] = field(default_factory=list)  # what was wrong with credentials that were not accepted
    jwks_fetches: int = 0
    exchanges: list[Exchange] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)  # bodies of the requests that got a challenge (body-digest)
    field_sizes: list[int] = field(default_factory=list)  # bytes of each WWW-Authenticate value issued
    plain_origin: str = ""
    last_issued: str | None = None

    @property
    def resource_path(self) -> str:
        return f"/c/{self.nonce}/resource"


def _problem(status: int, slug: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    doc = {"type": PROBLEM_BASE + slug, "title": slug.replace("-", " "), "status": status, "detail": detail}
    return web.Response(status=status, text=json.dumps(doc), content_type="application/problem+json",
                        headers={"Cache-Control": "no-store", **(headers or {})})


def _redact(name: str, value: str) -> str:
    if name.lower() == FOREIGN_FIELD_NAME.lower():
        return f"[redacted {len(value)} chars]"
    return redact(name, value)


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"}, text="moved")


def non_loopback_address() -> tuple[str | None, str]:
    """An address of this machine that is not loopback (IPv4 first), and how it was found, or (None, why not)."""
    found: list[str] = []
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET, "10.255.255.255"), (socket.AF_INET6, "2001:db8::1")):
        try:  # a UDP "connection" sends nothing: it only asks the kernel which source address it would use
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.connect((probe, 9))
                found.append(sock.getsockname()[0])
        except OSError:
            continue
    try:
        found += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, proto=socket.IPPROTO_TCP)]
    except OSError:
        pass
    for address in found:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            continue
        if not (ip.is_loopback or ip.is_unspecified or ip.is_link_local):
            return str(ip), "the machine's own address"
    return None, "this machine has no address but loopback"


class AdversarialSeller:
    """The suite's seller: two loopback origins, challenges and receipts per the current check, and a
    third origin on an address of the machine that is not loopback (plain http), for buyer.plain-http.

    ``plain_host``: the address of that third origin; None finds one (non_loopback_address), ""
    means none (buyer.plain-http then skips)."""

    def __init__(self, plain_host: str | None = None) -> None:
        self._secret = secrets.token_bytes(32)
        self.issuer = ChallengeIssuer(self._secret, REALM)
        self.key = SigningKey.generate()
        self.rogue = SigningKey.generate()  # signs the bad receipt; never in the JWKS
        self.run: _Run | None = None
        self.seller_origin = ""
        self.other_origin = ""
        self.plain_origin = ""  # "" when there is none; then plain_missing says why
        self.plain_missing = ""
        self._plain_host = plain_host
        self._runners: list[web.AppRunner] = []

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        try:
            self.seller_origin = await self._serve("seller")
            self.other_origin = await self._serve("other")
            await self._serve_plain()
        except BaseException:
            await self.stop()
            raise

    async def _serve_plain(self) -> None:
        host, how = (non_loopback_address() if self._plain_host is None
                     else (self._plain_host or None, "no address was given for it"))
        if host is None:
            self.plain_missing = how
            return
        try:
            if ipaddress.ip_address(host).is_loopback:
                self.plain_missing = f"{host} is a loopback address"
                return
        except ValueError:
            self.plain_missing = f"{host!r} is not an IP address"
            return
        try:
            self.plain_origin = await self._serve("plain", host)
        except OSError as exc:
            self.plain_missing = f"cannot listen on {host}: {exc.strerror or exc}"

    async def stop(self) -> None:
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()

    async def __aenter__(self) -> "AdversarialSeller":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, origin: str, host: str = "127.0.0.1") -> str:
        app = web.Application()

        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(request, origin)

        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0, **HEADER_LIMITS)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, host, 0)
        await site.start()
        bound, port = runner.addresses[-1][:2]
        return f"http://[{bound}]:{port}" if ":" in bound else f"http://{bound}:{port}"

    def url_for(self, run: _Run) -> str:
        return (self.plain_origin if run.check is PLAIN_HTTP else self.seller_origin) + run.resource_path

    def _base(self, origin: str) -> str:
        return {"seller": self.seller_origin, "other": self.other_origin, "plain": self.plain_origin}[origin]

    # -- requests -----------------------------------------------------------

    async def _handle(self, request: web.Request, origin: str) -> web.StreamResponse:
        body = await request.read()
        run = self.run
        exchange = Exchange(request.method, self._base(origin) + request.path_qs,
                            [(k, _redact(k, v)) for k, v in request.headers.items()], _text(body))
        try:
            response = self._respond(request, origin, run, body)
        except Exception as exc:  # noqa: BLE001 - a bug of the suite is reported as ERROR, not as a 500 the buyer judges
            if run is not None:
                run.crashes.append(f"{type(exc).__name__}: {exc}")
            response = web.Response(status=500, text="conformance seller error")
        if run is not None:
            exchange.status = response.status
            exchange.response_headers = [(k, _redact(k, v)) for k, v in response.headers.items()]
            exchange.response_body = _text(response.body if isinstance(response.body, bytes) else b"")
            run.exchanges.append(exchange)
        return response

    def _respond(self, request: web.Request, origin: str, run: _Run | None, body: bytes) -> web.Response:
        payments = [v for v in request.headers.getall("Authorization", ()) if v.strip().split(" ", 1)[0].lower() == "payment"]
        payments += request.headers.getall(FOREIGN_FIELD_NAME, ())  # a credential in the field the foreign challenge names
        if run is not None:  # a credential anywhere on any origin counts, whatever it asks for
            for value in payments:
                run.credentials.append(_Sent(origin, request.path, value, request.headers.get("Idempotency-Key"),
                                             request.method, body, run.last_issued))
        if request.path == JWKS_PATH and request.method in ("GET", "HEAD"):
            if run is not None:
                run.jwks_fetches += 1
            return web.json_response(jwks_document([self.key]), headers={"Cache-Control": "max-age=60"})
        if run is None:
            return web.Response(status=404, text="no check is running")
        if request.path != run.resource_path:
            return web.Response(status=404, text="not here")
        check = run.check.id
        if check == CROSS_ORIGIN.id and origin == "seller":
            return _redirect(self.other_origin + run.resource_path)
        expected = {CROSS_ORIGIN.id: "other", PLAIN_HTTP.id: "plain"}.get(check, "seller")
        if origin != expected:
            return web.Response(status=404, text="not here")
        if not payments:
            if check == BODY_DIGEST.id:
                run.bodies.append(body)
            return self._challenge_response(run, "payment-required", "this resource costs money", body)
        return self._answer_credential(run, payments[0], request.path, body, request.method)

    def _challenge_response(self, run: _Run, slug: str, detail: str, body: bytes = b"") -> web.Response:
        change = _REFUSALS.get(run.check.id, ({}, ""))[0]
        check = run.check
        now = datetime.now(timezone.utc)
        request = {
            "amount": str(change.get("amount", BASELINE_AMOUNT)),
            "currency": change.get("currency", CURRENCY),
            "recipient": change.get("recipient", RECIPIENT),
            "methodDetails": {"ledger": LEDGER},
        }
        issued_at = now - timedelta(minutes=10) if change.get("expired") else now  # ttl 5 min: expired 5 min ago
        opaque = dict(ECHO_OPAQUE, n=secrets.token_hex(8)) if check is ECHO_ID_OPAQUE else {"n": secrets.token_hex(8)}
        digest = content_digest(body) if check is BODY_DIGEST and body else None
        challenge = self.issuer.issue(method=METHOD, intent=INTENT, request=request, now=issued_at, opaque=opaque, digest=digest,
                                      description=change.get("description", "MPP conformance test resource"))
        if change.get("header"):  # ChallengeIssuer mints Authorization challenges only: bind the header slot here
            challenge = challenge.model_copy(update={"header": change["header"], "id": compute_challenge_id(
                self._secret, realm=challenge.realm, method=challenge.method, intent=challenge.intent, request=challenge.request,
                expires=challenge.expires, digest=challenge.digest, opaque=challenge.opaque, header=change["header"])})
        if check is ECHO_ID_OPAQUE:  # the binding is the seller's choice (draft §5.1.2.1): here a stored id, longer than an HMAC's
            challenge = challenge.model_copy(update={"id": "ch_" + secrets.token_urlsafe(45)})
        if check is LARGE_CHALLENGE:  # a long description (display only, not bound) brings the field to LARGE_SIZE bytes
            short = len(format_challenge(challenge).encode())
            filler = (" This text pads the challenge to more than 4 KB; a buyer must handle challenges that large."
                      * (LARGE_SIZE // 60))
            description = (challenge.description or "") + filler[:max(0, LARGE_SIZE - short)]
            challenge = challenge.model_copy(update={"description": description})
        run.issued[challenge.id] = challenge
        run.last_issued = challenge.id
        field_value = format_challenge(challenge)
        if check is UNKNOWN_PARAMS:
            field_value = f"Payment {UNKNOWN_BEFORE}, {field_value[len('Payment '):]}, {UNKNOWN_AFTER}"
        run.field_sizes.append(len(field_value.encode()))
        return _problem(402, slug, detail, {"WWW-Authenticate": field_value})

    def _answer_credential(self, run: _Run, value: str, path: str, body: bytes = b"", method: str = "GET") -> web.Response:
        try:
            credential = parse_credential(value)
        except ParseError as exc:
            run.notes.append(f"a credential did not parse: {exc}")
            return _problem(400, "malformed-credential", f"credential does not parse: {exc}")
        issued = run.issued.get(credential.challenge.id)
        altered = [] if issued is None else [name for name in _BOUND if getattr(credential.challenge, name) != getattr(issued, name)]
        if issued is None or altered:
            run.notes.append("a credential echoed an id this seller did not issue in this check" if issued is None
                             else "a credential altered the echoed " + ", ".join(altered))
            return self._challenge_response(run, "invalid-challenge", "credential echoes no challenge issued here", body)
        if issued.digest is not None and content_digest(body) != issued.digest:
            run.notes.append(f"a credential came with a body ({len(body)} bytes) whose digest is not the challenge's")
            return self._challenge_response(run, "verification-failed", "the request body does not match the challenge digest", body)
        run.accepted += 1
        if run.check.id == NO_DOUBLE_PAY.id:
            return web.Response(status=503, text="service unavailable (conformance: outcome unknown to the buyer)",
                                headers={"Cache-Control": "no-store"})
        return self._paid(run, issued, credential.source, f"{method} {path}", bad_signature=run.check.id == BAD_RECEIPT.id)

    def _paid(self, run: _Run, challenge: Challenge, source: str | None, resource: str, *, bad_signature: bool) -> web.Response:
        request = ChargeRequest.from_challenge(challenge)
        now = datetime.now(timezone.utc)
        reference = "conformance-" + secrets.token_hex(8)
        claims = {
            "iss": self.issuer.realm, "sub": source or "anonymous", "iat": int(now.timestamp()), "jti": challenge.id,
            "challengeId": challenge.id, "method": challenge.method, "intent": challenge.intent,
            "amount": request.amount, "currency": request.currency, "recipient": request.recipient,
            "resource": resource, "reference": reference, "settledAt": format_rfc3339(now),
        }
        if bad_signature:  # the kid of the published key, the signature of another one
            jws = jwt.encode(claims, self.rogue.private_key, algorithm="EdDSA", headers={"kid": self.key.kid, "typ": "mpp-receipt+jwt"})
        else:
            jws = sign_receipt(self.key, claims)
        receipt = format_receipt(PaymentReceipt(status="success", method=challenge.method, timestamp=format_rfc3339(now),
                                                reference=reference, challengeId=challenge.id, receipt=jws))
        body = json.dumps({"resource": "mpp-conformance buyer check", "check": run.check.id})
        return web.Response(status=200, text=body, content_type="application/json",
                            headers={"Payment-Receipt": receipt, "Cache-Control": "private"})


# -- running the buyer ----------------------------------------------------------


@dataclass
class _Outcome:
    exit: int | None  # None: killed after the timeout
    stdout: str
    stderr: str
    seconds: float

    @property
    def timed_out(self) -> bool:
        return self.exit is None


_CREDENTIAL_TEXT = re.compile(r"(Payment\s+)[A-Za-z0-9_-]{16,}")


def _scrub(text: str, lines: int, chars: int) -> str:
    tail = "\n".join(text.rstrip().splitlines()[-lines:])
    tail = _CREDENTIAL_TEXT.sub(lambda m: f"{m.group(1)}[redacted]", tail)
    return tail if len(tail) <= chars else "..." + tail[-chars:]


async def _run_command(command: str, timeout: float) -> _Outcome:
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_shell(command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                 stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        code: int | None = proc.returncode
    except asyncio.TimeoutError:
        _kill_group(proc)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 5.0)
        except asyncio.TimeoutError:  # a grandchild left the group and holds the pipes
            out, err = b"", b""
        code = None
    except asyncio.CancelledError:
        _kill_group(proc)
        raise
    await asyncio.sleep(0.05)  # let the seller finish logging anything still in flight
    return _Outcome(code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), time.perf_counter() - start)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """The command runs in a session of its own: end its process group (it is ours), by id."""
    if proc.returncode is not None:
        return
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover
            proc.kill()
    except ProcessLookupError:
        pass


# -- verdicts -----------------------------------------------------------------


def _exit_text(outcome: _Outcome) -> str:
    if outcome.timed_out:
        return f"killed after the timeout ({outcome.seconds:.1f} s)"
    last = _scrub(outcome.stderr, 1, 200)
    return f"exit {outcome.exit}" + (f": {last}" if last else "")


_PLACES = {"seller": "the seller origin", "other": "the other origin", "plain": "the plain-http origin (not loopback)"}


def _where(sent: list[_Sent]) -> str:
    return " and ".join(sorted({_PLACES[s.origin] for s in sent}))


def _echoed(value: str) -> dict[str, Any] | None:
    """The challenge object a credential echoes, as sent (strings unparsed), or None."""
    token = value.strip(" \t").partition(" ")[2].strip(" \t")
    try:
        doc = json.loads(b64url_decode(token))
    except Exception:  # noqa: BLE001 - not a credential we can read: the seller's note says so
        return None
    challenge = doc.get("challenge") if isinstance(doc, dict) else None
    return challenge if isinstance(challenge, dict) else None


def _echo_problems(run: _Run) -> list[str]:
    """ECHO_ID_OPAQUE: what each credential did to the id and opaque of the challenge it answered."""
    problems: list[str] = []
    for sent in run.credentials:
        issued = run.issued.get(sent.answering or "")
        echo = _echoed(sent.value)
        if issued is None or echo is None:
            continue  # no challenge before it, or unreadable: the seller's notes say so
        if "id" not in echo:
            problems.append("dropped the id")
        elif echo["id"] != issued.id:
            got = echo["id"] if isinstance(echo["id"], str) else ""
            how = f"cut it to its first {len(got)} characters" if got and issued.id.startswith(got) else f"sent {len(got)} other characters"
            problems.append(f"altered the id ({how}; it was issued with {len(issued.id)})")
        if "opaque" not in echo:
            problems.append("dropped opaque")
        elif echo["opaque"] != issued.opaque:
            try:
                same = isinstance(echo["opaque"], str) and json.loads(b64url_decode(echo["opaque"])) == issued.opaque_json
            except Exception:  # noqa: BLE001
                same = False
            problems.append("re-encoded opaque (the same members, other bytes than the seller sent)" if same else "altered opaque")
    return list(dict.fromkeys(problems))


def _digest_problems(run: _Run) -> list[str]:
    """BODY_DIGEST: credentials sent with a body (or a method) other than the one the challenge's digest binds."""
    problems: list[str] = []
    for sent in run.credentials:
        issued = run.issued.get(sent.answering or "")
        if issued is None or issued.digest is None:
            continue
        if content_digest(sent.body) != issued.digest:
            problems.append(f"sent its credential on a {sent.method} with a body of {len(sent.body)} bytes whose digest is not the "
                            f"challenge's (the challenge was issued for a body of {len(run.bodies[-1]) if run.bodies else 0} bytes)")
    return list(dict.fromkeys(problems))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _judge(check: BuyerCheck, run: _Run, outcome: _Outcome) -> tuple[Verdict, str]:
    n = len(run.credentials)
    if run.crashes:
        return Verdict.ERROR, f"the conformance seller crashed: {run.crashes[0]}"
    if check is BASELINE:
        problems = []
        if outcome.timed_out:
            return Verdict.ERROR, f"the buyer command was {_exit_text(outcome)} on a normal purchase"
        if n != 1:
            problems.append(f"sent {_plural(n, 'credential')} instead of exactly one")
        problems += run.notes
        if outcome.exit != 0:
            problems.append(f"did not report success ({_exit_text(outcome)})")
        if problems:
            return Verdict.FAIL, (f"a normal purchase ({BASELINE_AMOUNT} {CURRENCY} to {RECIPIENT}, valid receipt) failed: "
                                  "the buyer " + "; ".join(problems))
        return Verdict.PASS, f"paid once and exited 0 (fetched the JWKS {_plural(run.jwks_fetches, 'time')})"
    if check in PAID:
        return _judge_paid(check, run, outcome)
    if check.id in _REFUSALS:
        what = _REFUSALS[check.id][1]
        if check is PLAIN_HTTP and not n and not any(e.url.startswith(run.plain_origin) for e in run.exchanges):
            what += " (it made no request to that origin)"
        if n:
            return Verdict.FAIL, (f"the buyer sent {_plural(n, 'credential')} to {_where(run.credentials)} for {what} "
                                  f"({_exit_text(outcome)})")
        if outcome.timed_out:
            return Verdict.ERROR, f"the buyer sent no credential but was {_exit_text(outcome)}: not a clean refusal"
        note = " (note: it exited 0, as if it had got the resource)" if outcome.exit == 0 else ""
        return Verdict.PASS, f"refused {what}: no credential sent ({_exit_text(outcome)}){note}"
    if check is BAD_RECEIPT:
        if n > 1:
            return Verdict.FAIL, f"the buyer sent {_plural(n, 'credential')} for one purchase ({_exit_text(outcome)})"
        if n == 0:
            return Verdict.ERROR, f"the buyer sent no credential, so its receipt check was never reached ({_exit_text(outcome)})"
        if outcome.exit == 0:
            return Verdict.FAIL, ("the buyer reported success (exit 0) although the receipt JWS was not signed by the key "
                                  "in the seller's JWKS")
        if outcome.timed_out:
            return Verdict.ERROR, f"the buyer paid, then was {_exit_text(outcome)} instead of rejecting the receipt"
        return Verdict.PASS, f"rejected the badly signed receipt ({_exit_text(outcome)})"
    if check is NO_DOUBLE_PAY:
        if n == 0:
            return Verdict.ERROR, f"the buyer sent no credential, so what it does after a 5xx was never seen ({_exit_text(outcome)})"
        first = run.credentials[0].value
        retries = [s for s in run.credentials[1:] if s.value == first and s.idempotency_key]
        extra = n - 1 - len(retries)
        if extra:
            again = [s for s in run.credentials[1:] if not (s.value == first and s.idempotency_key)]
            how = ("resent the same credential without an Idempotency-Key" if all(s.value == first for s in again)
                   else "paid again with a new credential")
            return Verdict.FAIL, (f"after a 503 the buyer {how}: {_plural(n, 'credential')} in all, "
                                  f"where only one payment is allowed ({_exit_text(outcome)})")
        if outcome.exit == 0:
            return Verdict.FAIL, "the buyer reported success (exit 0) after its credential got a 503: the outcome is unknown"
        if outcome.timed_out:
            return Verdict.ERROR, f"the buyer paid once, then was {_exit_text(outcome)}"
        retried = f", retried it {_plural(len(retries), 'time')} with an Idempotency-Key" if retries else ""
        return Verdict.PASS, f"paid once{retried} and reported failure after the 503 ({_exit_text(outcome)})"
    raise AssertionError(f"no verdict rule for {check.id}")  # pragma: no cover


def _judge_paid(check: BuyerCheck, run: _Run, outcome: _Outcome) -> tuple[Verdict, str]:
    """The checks a buyer passes by paying, once, as in the baseline: a large challenge, unknown parameters,
    an unusual id and opaque, a POST whose body the digest binds."""
    n = len(run.credentials)
    size = max(run.field_sizes, default=0)
    what = {LARGE_CHALLENGE.id: f"a challenge of {size} bytes (at least {LARGE_MIN})",
            UNKNOWN_PARAMS.id: "a challenge with unknown parameters (x-trace, hint, priority, x-vendor-ext)",
            ECHO_ID_OPAQUE.id: "a challenge with a 63-character id and an opaque holding non-ASCII text",
            BODY_DIGEST.id: f"a POST challenge whose digest binds the {len(run.bodies[0]) if run.bodies else 0}-byte body"}[check.id]
    if check is BODY_DIGEST and not (run.bodies and run.bodies[0]):
        return Verdict.ERROR, (f"the --post-cmd sent no body with its first request, so no digest could be bound "
                               f"({_exit_text(outcome)})")
    if outcome.timed_out and n == 0:
        return Verdict.ERROR, f"the buyer command was {_exit_text(outcome)} on {what}"
    problems = _echo_problems(run) if check is ECHO_ID_OPAQUE else _digest_problems(run) if check is BODY_DIGEST else []
    if n == 0:
        problems.append("sent no credential")
    elif not problems:  # what the seller found wrong (an echo that does not verify), when the check's own rule found nothing
        problems += [f"sent a credential the seller refused ({note})" for note in run.notes]
    if n > 1:
        problems.append(f"sent {_plural(n, 'credential')} instead of exactly one")
    if problems:
        return Verdict.FAIL, f"for {what} the buyer " + "; ".join(problems) + f" ({_exit_text(outcome)})"
    if outcome.exit != 0:
        return Verdict.FAIL, f"the buyer paid {what} but did not report success ({_exit_text(outcome)})"
    return Verdict.PASS, f"paid {what} once, the seller verified the echo, and it exited 0"


def _details(command: str, outcome: _Outcome) -> str:
    lines = [f"command: {command}", f"exit: {'killed (timeout)' if outcome.timed_out else outcome.exit} after {outcome.seconds:.2f} s"]
    err = _scrub(outcome.stderr, 12, 1500)
    out = _scrub(outcome.stdout, 6, 600)
    if err:
        lines.append("stderr (last lines):\n" + err)
    if out:
        lines.append("stdout (last lines):\n" + out)
    return "\n".join(lines)


async def _reachable(url: str) -> str | None:
    """None when the suite itself can fetch ``url`` (its own JWKS), else why not."""
    import aiohttp

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            async with session.get(url) as resp:
                return None if resp.status == 200 else f"HTTP {resp.status}"
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"


async def run_buyer_checks(cmd: str, *, progress: Callable[[Result, int, int], None] | None = None,
                           timeout: float = 30.0, only: list[str] | None = None, post_cmd: str | None = None,
                           plain_host: str | None = None) -> list[Result]:
    """Run the buyer checks (all of them, or those named in ``only``; the baseline always runs first).

    ``cmd`` is the command template (see the module docstring); ``timeout`` bounds each run of it.
    ``post_cmd`` is the template that POSTs ``{body}`` to ``{url}`` (buyer.body-digest skips without it);
    ``plain_host`` the non-loopback address for buyer.plain-http (None: found; "": none, the check skips).
    Returns one Result per check, in order, never raising for what the buyer does.
    """
    if PLACEHOLDER not in cmd:
        raise UsageError(f"mpp-conformance: --cmd must contain {PLACEHOLDER}, where the suite puts the resource URL")
    if post_cmd is not None and not (PLACEHOLDER in post_cmd and BODY_PLACEHOLDER in post_cmd):
        raise UsageError(f"mpp-conformance: --post-cmd must contain {PLACEHOLDER} and {BODY_PLACEHOLDER} "
                         "(where the suite puts the URL and the body to POST)")
    if timeout <= 0:
        raise UsageError("mpp-conformance: --timeout must be positive")
    checks = [c for c in BUYER_CHECKS if only is None or c is BASELINE or c.id in only]
    results: list[Result] = []
    baseline_failed: str | None = None
    # The plain-http origin listens on a real interface: only while its check is selected.
    async with AdversarialSeller(plain_host if PLAIN_HTTP in checks else "") as seller:
        for n, check in enumerate(checks, 1):
            start = time.perf_counter()
            run = _Run(check, plain_origin=seller.plain_origin)
            template = post_cmd if check is BODY_DIGEST else cmd
            skip = None
            if check is BODY_DIGEST and post_cmd is None:
                skip = ("no --post-cmd was given: the check needs a command that POSTs a body "
                        f"({PLACEHOLDER} and {BODY_PLACEHOLDER}) to bind a digest to")
            elif check is PLAIN_HTTP and not seller.plain_origin:
                skip = f"no plain-http origin on an address that is not loopback: {seller.plain_missing}"
            elif check is PLAIN_HTTP and baseline_failed is None:
                why = await _reachable(seller.plain_origin + JWKS_PATH)
                if why is not None:
                    skip = f"the suite cannot reach its own plain-http origin {seller.plain_origin} ({why})"
            if baseline_failed is not None:
                verdict, message = Verdict.ERROR, f"baseline failed ({baseline_failed}); a buyer that cannot pay proves nothing by refusing"
            elif skip is not None:
                verdict, message = Verdict.SKIP, skip
            else:
                assert template is not None
                url = seller.url_for(run)
                command = template.replace(PLACEHOLDER, shlex.quote(url)).replace(BODY_PLACEHOLDER, shlex.quote(POST_BODY))
                seller.run = run
                try:
                    outcome = await _run_command(command, timeout)
                except OSError as exc:
                    outcome = None
                    verdict, message = Verdict.ERROR, f"could not start the buyer command: {exc}"
                finally:
                    seller.run = None
                if outcome is not None:
                    verdict, message = _judge(check, run, outcome)
                    message += "\n" + _details(command, outcome)
                if check is BASELINE and verdict is not Verdict.PASS:
                    baseline_failed = f"{verdict.value}: {message.splitlines()[0]}"
            if verdict is Verdict.FAIL and check.level == "SHOULD":  # a SHOULD not followed is worth knowing, not a failure
                verdict = Verdict.WARN
            result = Result(check.id, check.title, check.profile, list(check.requirements), verdict, message,
                            (time.perf_counter() - start) * 1000, run.exchanges, template or cmd, check.level, check.draft)
            results.append(result)
            if progress is not None:
                progress(result, n, len(checks))
    return results
