"""checks_discovery: the discovery draft's requirements when /openapi.json is offered, and the core
draft's wire rules on custom parameter names, ``opaque``, unknown credential members and plain HTTP.
Each check's teeth against a whole broken seller are in test_broken_sellers.py; here, what each
judgment accepts and refuses, and the paths a loopback test target cannot reach otherwise (a
non-loopback host name is pointed at the local seller by a resolver of the test's own)."""

from __future__ import annotations

import socket
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver

from aiohttp.test_utils import TestServer

from broken_sellers import _rewrite_openapi, build, prepare_home
from mpp.cli.serve import HEADER_LIMITS
from mpp import b64url_encode, canonical_json
from mpp_conformance import checks_discovery as disc
from mpp_conformance.framework import CheckContext, CheckFailed, Skip, checks_for, level_of

NEW_CHECKS = {
    "core.parameter-names-lowercase": "draft §9.3 MUST",
    "core.opaque-string-map": "draft §5.1.2 MUST",
    "core.unknown-fields-ignored": "draft §9.2.1 MUST",
    "core.no-plaintext-challenges": "draft §11.2 MUST NOT",
    "core.discovery-document": "discovery §4 MUST; discovery §4.1 MUST; discovery §4.2 MUST; discovery §4.3.1 MUST; "
                               "discovery §4.3.2 MUST",
    "core.discovery-payment-info": "discovery §4.4 MUST; discovery §4.4.1 MUST; discovery §4.4.1 MUST NOT",
    "core.discovery-402-declared": "discovery §4.5 MUST",
    "core.discovery-payable-operation": "discovery §4 MUST; discovery §4.4 MUST",
}


def test_checks_are_draft_musts_of_the_core_group():
    """CORE-CHAL-12, CORE-CHAL-13, CORE-CHAL-14, CORE-CRED-02, CORE-DISC-04, CORE-DISC-05, CORE-DISC-06: each new
    check is in the core group, cites its draft section at MUST level, and so runs in the draft profile too."""
    registered = {c.id: c for c in checks_for("core")}
    draft_ids = {c.id for c in checks_for("draft")}
    for cid, cites in NEW_CHECKS.items():
        check = registered[cid]
        assert check.draft == cites and level_of(check.draft) == "MUST" and check.profile == "core", cid
        assert cid in draft_ids, cid


# -- the raw challenge reader ---------------------------------------------------------------------

def test_payment_params_keep_names_as_sent():
    values = ['Basic realm="x", Payment id="a", Realm="r, with comma", Trace-Id=abc, x="q\\"uote"',
              "Bearer tok68==, Payment id=b, opaque=\"e30\"", "Newscheme"]
    assert disc.payment_params(values) == [
        [("id", "a"), ("Realm", "r, with comma"), ("Trace-Id", "abc"), ("x", 'q"uote')],
        [("id", "b"), ("opaque", "e30")],
    ]


# -- opaque ---------------------------------------------------------------------------------------

def _b64(text: str) -> str:
    return b64url_encode(text.encode())


@pytest.mark.parametrize("value, why", [
    (b64url_encode(canonical_json({"nonce": "n", "resource": "GET /x"})), None),
    (_b64("{}"), None),
    (_b64('{"a":"1"}') + "=", "padding"),
    ("e30+", "not base64url"),
    (_b64("not json"), "does not decode to JSON"),
    (_b64('["a"]'), "not an object"),
    (_b64('{"a":1}'), "member 'a' is int"),
    (_b64('{"a":{"b":"c"}}'), "member 'a' is dict"),
    (_b64('{"a":null}'), "member 'a' is null"),
    (_b64('{"b":"1","a":"2"}'), "not in RFC 8785 (JCS) canonical form"),
    (_b64('{"a": "1"}'), "not in RFC 8785 (JCS) canonical form"),
])
def test_opaque_judgment(value: str, why: str | None):
    """CORE-CHAL-13: base64url without padding of the JCS form of a flat string-to-string object."""
    got = disc.opaque_problem(value)
    assert (got is None) if why is None else (got is not None and why in got), got


# -- x-payment-info -------------------------------------------------------------------------------

@pytest.mark.parametrize("info, problem", [
    ({"intent": "charge", "method": "tempo", "amount": "500"}, None),
    ({"intent": "charge", "method": "tempo", "amount": None, "currency": "usd"}, None),
    ({"offers": [{"intent": "session", "method": "ledger", "amount": "0"}], "priceList": "v1"}, None),
    ({"offers": []}, "one or more payment offers"),
    ({"offers": {"intent": "charge"}}, "one or more payment offers"),
    ({"intent": "charge", "method": "tempo"}, "no amount"),
    ({"method": "tempo", "amount": "1"}, "no intent"),
    ({"offers": [{"intent": "charge", "method": "", "amount": "1"}]}, "offer 1 has no method"),
    ({"offers": [{"intent": "charge", "method": "m", "amount": "007"}]}, "amount '007' has leading zeros"),
    ({"intent": "charge", "method": "m", "amount": "7.5"}, "not a string of ASCII digits"),
    ({"intent": "charge", "method": "m", "amount": 7}, "not a string of ASCII digits"),
    ({"intent": "charge", "method": "m", "amount": "\u0667"}, "not a string of ASCII digits"),
    (["offers"], "not an object"),
])
def test_offer_judgment(info, problem: str | None):
    """CORE-DISC-06: one offer or offers[1..], each with intent, method and amount (digits or null)."""
    got = disc.offer_problems(info)
    assert got == [] if problem is None else any(problem in p for p in got), got


@pytest.mark.parametrize("info, problem", [
    ({}, None),
    ({"categories": ["compute", "data"], "docs": {"homepage": "https://api.example.com/docs",
                                                  "llms": "https://api.example.com/llms.txt?v=1#top"}, "x-more": 1}, None),
    ({"categories": "compute"}, "categories is not an array of strings"),
    ({"categories": ["compute", 3]}, "categories is not an array of strings"),
    ({"docs": ["https://x.example"]}, "docs is not an object"),
    ({"docs": {"homepage": "not a uri"}}, "docs.homepage 'not a uri' is not a URI"),
    ({"docs": {"apiReference": "/relative/only"}}, "docs.apiReference '/relative/only' is not a URI"),
    ({"docs": {"llms": "https://x.example/%zz"}}, "is not a URI"),
    ("compute", "not an object"),
])
def test_service_info_judgment(info, problem: str | None):
    """CORE-DISC-04: x-service-info, when present: categories an array of strings, docs an object of URIs."""
    got = disc.service_info_problems(info)
    assert got == [] if problem is None else any(problem in p for p in got), got


def test_find_operation_follows_templates_and_server_base_paths():
    """CORE-DISC-05: the target's path is found under a servers base path and through a path template."""
    doc = {"servers": [{"url": "https://api.example.com/v1"}],
           "paths": {"/items/{id}": {"get": {"x": 1}}, "/weather": {"post": {"y": 2}}}}
    assert disc.find_operation(doc, "https://api.example.com/v1/items/42", "GET") == ("/items/{id}", {"x": 1})
    assert disc.find_operation(doc, "https://api.example.com/weather", "post") == ("/weather", {"y": 2})
    assert disc.find_operation(doc, "https://api.example.com/weather", "get") == ("/weather", None)
    assert disc.find_operation(doc, "https://api.example.com/v1/items/42/more", "get") == (None, None)


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("[::1]", True),
                                            ("localhost", True), ("LOCALHOST.", True), ("10.0.0.1", False),
                                            ("seller.example", False), ("localhost.example", False), (None, False)])
def test_loopback_hosts(host, loopback: bool):
    """CORE-CHAL-14: localhost, 127.0.0.0/8 and ::1 are loopback; nothing else is."""
    assert disc.is_loopback(host) is loopback


# -- against a served seller ----------------------------------------------------------------------

@pytest.fixture
def home(home: Path) -> Path:
    """The shared `mpp init` home, prepared as the broken-seller tests prepare it (POST /weather priced too)."""
    prepare_home(home)
    return home


class _ToLocalhost(AbstractResolver):
    """Every host name resolves to 127.0.0.1: a non-loopback name reaches the local test seller."""

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        pass


def _no_discovery(app: web.Application, seller) -> None:
    @web.middleware
    async def gone(request: web.Request, handler):
        return web.Response(status=404) if request.path == "/openapi.json" else await handler(request)

    app.middlewares.insert(0, gone)


def _weather_unlisted(app: web.Application, seller) -> None:
    _rewrite_openapi(app, lambda doc: doc["paths"].pop("/weather"))


def _info_on_path_item(app: web.Application, seller) -> None:
    """GET /weather's x-payment-info moved from its operation to the Path Item, and its 402 response dropped."""
    def move(doc: dict) -> None:
        item = doc["paths"]["/weather"]
        item["x-payment-info"] = item["get"].pop("x-payment-info")
        item["get"]["responses"].pop("402")

    _rewrite_openapi(app, move)


def _no_opaque(app: web.Application, seller) -> None:
    issue = seller.core.issuer.issue
    seller.core.issuer.issue = lambda **kwargs: issue(**{**kwargs, "opaque": None})


@asynccontextmanager
async def _context(home: Path, variant: str = "baseline", path: str = "/weather", *, host: str | None = None,
                   tweak=None, **options):
    """A CheckContext on ``variant`` of our seller (``tweak`` applied on top), optionally by a host name."""
    app, seller = build(home, variant)
    if tweak is not None:
        tweak(app, seller)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(**HEADER_LIMITS)
    try:
        url = str(server.make_url(path))
        if host is not None:
            url = url.replace("127.0.0.1", host)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=_ToLocalhost())) as session:
            yield CheckContext(url, session, {"method": "GET", "data": None, **options})
    finally:
        await server.close()


async def test_plain_http_to_a_network_host_fails(home: Path):
    """CORE-CHAL-14, CORE-DISC-04: our seller reached as http://seller.example (not loopback) issues challenges
    and serves its discovery document in the clear: failures; by its loopback address the challenge check is a
    skip that says why, and an https target passes it."""
    async with _context(home, host="seller.example") as ctx:
        with pytest.raises(CheckFailed, match=r"over plain http to seller\.example, the unpaid request got HTTP 402 "
                                              r"with 1 Payment challenge"):
            await disc.no_plaintext_challenges(ctx)
        with pytest.raises(CheckFailed, match=r"served over plain http to seller\.example"):
            await disc.discovery_document(ctx)
    async with _context(home) as ctx:
        with pytest.raises(Skip, match="loopback host 127.0.0.1"):
            await disc.no_plaintext_challenges(ctx)
        ctx.target = "https://seller.example/weather"
        assert "TLS" in await disc.no_plaintext_challenges(ctx)


async def test_discovery_document_judges_x_service_info(home: Path):
    """CORE-DISC-04: a document whose x-service-info has categories as one string fails; a well-formed one passes."""
    def categories(value):
        return lambda app, seller: _rewrite_openapi(app, lambda doc: doc.update({"x-service-info": {"categories": value}}))

    async with _context(home, tweak=categories("compute")) as ctx:
        with pytest.raises(CheckFailed, match=r"x-service-info: categories is not an array of strings"):
            await disc.discovery_document(ctx)
    async with _context(home, tweak=categories(["compute"])) as ctx:
        assert "OpenAPI 3.1.0" in await disc.discovery_document(ctx)


async def test_every_discovery_check_skips_when_openapi_json_is_404(home: Path):
    """CORE-DISC-04: discovery is OPTIONAL in the draft: a target without /openapi.json is skipped, not failed."""
    async with _context(home, tweak=_no_discovery) as ctx:
        for check in (disc.discovery_document, disc.discovery_payment_info, disc.discovery_402_declared,
                      disc.discovery_payable_operation):
            with pytest.raises(Skip, match=r"HTTP 404: the target offers no discovery \(OPTIONAL\)"):
                await check(ctx)


async def test_payable_operation_missing_from_the_document_fails(home: Path):
    """CORE-DISC-05: a route answering 402 that the document does not list, or lists without x-payment-info on
    its operation, fails; so does a payable operation without a 402 response."""
    async with _context(home, tweak=_weather_unlisted) as ctx:
        with pytest.raises(CheckFailed, match=r"does not describe GET /weather, which answers 402"):
            await disc.discovery_payable_operation(ctx)
    async with _context(home, tweak=_info_on_path_item) as ctx:
        with pytest.raises(CheckFailed, match=r"carries no x-payment-info \(it sits on the Path Item"):
            await disc.discovery_payable_operation(ctx)
        with pytest.raises(CheckFailed, match=r"GET /weather declare no 402 response"):
            await disc.discovery_402_declared(ctx)
    async with _context(home) as ctx:
        assert await disc.discovery_payable_operation(ctx) == "GET /weather is listed with x-payment-info"


async def test_opaque_check_skips_without_opaque(home: Path):
    """CORE-CHAL-13: opaque is OPTIONAL in the draft: no opaque, nothing to judge (a skip, never a pass)."""
    async with _context(home, tweak=_no_opaque) as ctx:
        with pytest.raises(Skip, match="carries opaque"):
            await disc.opaque_string_map(ctx)


async def test_genuine_credential_with_an_unknown_member_must_still_pay(home: Path):
    """CORE-CRED-02: the paid half of core.unknown-fields-ignored: our seller takes the payer's credential with an
    unknown top-level member; a seller refusing unknown members refuses it, and the check says so."""
    async with _context(home, pay_with=f"ledger:{home}/agent") as ctx:
        note = await disc.unknown_fields_ignored(ctx)
        assert "paid (HTTP 200)" in note and "answered as its twin (HTTP 402 verification-failed)" in note
    async with _context(home, "refuses-unknown-members", pay_with=f"ledger:{home}/agent") as ctx:
        with pytest.raises(CheckFailed, match=r"the genuine credential with an unknown top-level member added: "
                                              r"HTTP 402 malformed-credential"):
            await disc._genuine_with_extension(ctx)
    async with _context(home) as ctx:  # no --pay-with: only the probe twins, and the note says so
        assert "no --pay-with" in await disc.unknown_fields_ignored(ctx)
