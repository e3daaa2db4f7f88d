"""Nothing is written for strangers, and nothing copied from a request is unbounded.

The seller is the one `mpp seller serve` builds from an `mpp init` home (``build_seller_app``:
its real SQLite payment, session, pricing and audit stores and the embedded ledger), served over
HTTP on loopback with the CLI's header limits. A flood of unpaid requests with 30 KB queries and
of garbage credentials must leave every database file (with its -wal and -shm) the size it was,
byte for byte, and the audit log as long as it was (CORE-ONCE-09, IDENT-AUD-08); whatever the
seller copies from a request into a problem, an audit entry or a log line is short and free of
control characters (CORE-ERR-12).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import unicodedata
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

import mpp
from mpp import b64url_encode, canonical_json, format_rfc3339, parse_challenges, parse_rfc3339
from mpp.aio import Seller
from mpp.aio.metering import SESSION_PATH
from mpp.cli.serve import HEADER_LIMITS, build_seller_app
from mpp.buyer.core import Quote
from mpp.cli.config import load_seller_config, load_wallet
from mpp.identity import identity_member
from mpp.protocol.errors import DETAIL_MAX, ELLIPSIS, RESOURCE_MAX, PaymentRequired, clip
from mpp.methods.ledger import LedgerBuyerMethod
from mpp.protocol.models import ChargeRequest
from mpp.pricing import GRANT_HEADER, GRANT_PROOF_HEADER
from mpp.engine.core import SellerCore
from mpp_conformance.paying import LedgerPayer

QUERY = 30_000  # characters of query on every unpaid request (the attack review's 30 KB)
FLOOD = 1_000  # unpaid requests, and as many garbage credentials, per seller
CONCURRENCY = 16
UNPRINTABLE = {"Cc", "Cf", "Cs", "Zl", "Zp"}  # what CORE-ERR-12 removes
CONTROLS = "\x00\x07\x08\x1b\n\r\t\x7f\x85\u200e\u202e\u2028\u2029\ufeff"
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

# A price list with every kind of offer: per request, seat (covering a grant-served route), per
# unit (a session), and task (its follow-ups served on a grant).
PRICES = """\
version = "v1"
currency = "usd"

[[routes]]
method = "GET"
path = "/weather"

  [[routes.offers]]
  model = "transaction"
  amount = 25

  [[routes.offers]]
  model = "seat"
  plan = "pro"
  amount = 900
  period_unit = "day"
  covers = ["GET /forecast"]

[[routes]]
method = "GET"
path = "/forecast"

  [[routes.offers]]
  model = "transaction"
  amount = 10

[[routes]]
method = "GET"
path = "/complete"

  [[routes.offers]]
  model = "unit"
  unit = "token"
  amount = 2
  per = 1000
  max_units = 4000

  [[routes.offers]]
  model = "transaction"
  amount = 8

[[routes]]
method = "POST"
path = "/jobs"

  [[routes.offers]]
  model = "task"
  amount = 500
  follow_ups = ["GET /jobs/{task}", "GET /jobs/{task}/result"]
  grant_ttl = 3600
  refund = "full"
"""

# (method, path) of the priced routes of each home; POST routes get a body.
INIT_ROUTES = [("GET", "/weather"), ("GET", "/quote"), ("POST", "/summarize"), ("GET", "/premium-report"),
               ("GET", "/agent-report"), ("GET", "/complete"), ("GET", "/stream")]
LISTED_ROUTES = [("GET", "/weather"), ("GET", "/forecast"), ("GET", "/complete"), ("POST", "/jobs")]
# follow-ups of a task, and a seat-covered route (a Payment-Grant header takes it to the grant path)
GRANTED_ROUTES = [("GET", "/jobs/t_unknowntask01"), ("GET", "/jobs/t_unknowntask01/result"), ("GET", "/forecast")]


def listed_home(home: Path) -> Path:
    """The `mpp init` home, priced from PRICES instead of its [[routes]]."""
    (home / "prices.toml").write_text(PRICES)
    config = home / "seller.toml"
    head = config.read_text().split("[[routes]]")[0]
    config.write_text(head + 'price_list = "prices.toml"\n')
    return home


def database_files(home: Path) -> dict[str, int]:
    """Every database file the seller keeps (payments, sessions, pricing, audit log, ledger), with
    its -wal and -shm: name -> size in bytes. A file that appears counts as a change too."""
    found = [*home.glob("*.db*"), *(home / "seller").glob("*.db*")]
    return {str(p.relative_to(home)): p.stat().st_size for p in sorted(found)}


@asynccontextmanager
async def serving(home: Path) -> AsyncIterator[tuple[TestServer, Seller]]:
    app, seller = build_seller_app(load_seller_config(home / "seller.toml"))
    # The session sweeper's heartbeat writes on a timer whether or not anyone calls (it keeps this
    # process's reservations alive): one beat at start-up, then none while the flood runs.
    assert seller.sessions is not None
    seller.sessions.sweep_interval = 3600
    server = TestServer(app, host="127.0.0.1")
    # as `mpp seller serve` runs it (limits go to start_server: aiohttp drops TestServer's own kwargs)
    await server.start_server(access_log=None, **HEADER_LIMITS)
    try:
        yield server, seller
    finally:
        await server.close()


def client() -> aiohttp.ClientSession:
    # A 402 for a 30 KB query carries that query in each challenge's opaque: long header fields.
    return aiohttp.ClientSession(max_line_size=1 << 17, max_field_size=1 << 17)


async def send(http: aiohttp.ClientSession, url: str, method: str, headers: list[tuple[str, str]] | None = None,
               ) -> tuple[int, dict | None, list[str]]:
    body = b"some text to summarize" if method == "POST" else None
    async with http.request(method, url, headers=headers or [], data=body) as resp:
        raw = await resp.read()
        doc = json.loads(raw) if resp.content_type == "application/problem+json" else None
        return resp.status, doc, resp.headers.getall("WWW-Authenticate", [])


def junk(rng: random.Random, size: int) -> str:
    """Printable text with control and format characters strewn through it."""
    return "".join(rng.choice(CONTROLS) if rng.random() < 0.01 else rng.choice(B64 + " .:;'<>") for _ in range(size))


def token(doc: object) -> str:
    return b64url_encode(json.dumps(doc, separators=(",", ":")).encode())


def garbage(rng: random.Random, real: mpp.Challenge, did: str) -> list[str]:
    """Authorization values carrying no challenge id the seller minted: random, malformed, an
    unknown id, a tampered echo (each one parameter), two credentials, a session payload on a
    tampered echo, and 20 KB intents and methods full of control characters."""
    echo = real.echo()

    def cred(payload: dict | None = None, **changes: str) -> str:
        return "Payment " + token({"challenge": {**echo, **changes}, "payload": payload or {"type": "probe"}})

    family = rng.randrange(15)
    if family == 13:  # a challenge we minted, echoed as it was, with a payload that is not one
        return [cred(rng.choice([{}, {"type": "ledger"}, {"signature": "x" * 86, "account": junk(rng, 300)}]))]
    if family == 14:  # a challenge we minted, paid by a key of the stranger's own (the ledger knows it not)
        key = mpp.SigningKey.generate()
        return [mpp.sign_quote(Quote(real, ChargeRequest.from_challenge(real), LedgerBuyerMethod(key=key, account="acct:buyer")))]
    if family == 0:
        return ["Payment " + "".join(rng.choice(B64) for _ in range(rng.randrange(1, 3000)))]
    if family == 1:
        return ["Payment " + b64url_encode(rng.randbytes(rng.randrange(1, 2000)))]
    if family == 2:
        return [rng.choice(["Payment", "Payment ", "Payment !!!", "Payment " + token([1, 2]), "Payment e30",
                            "Payment " + token({"challenge": "x", "payload": {}}), "Bearer abc", "Payment ===="])]
    if family == 3:
        return [cred(id=b64url_encode(rng.randbytes(32)))]
    if family == 4:
        request = dict(real.request_json, amount="1")
        return [cred(request=b64url_encode(canonical_json(request)))]
    if family == 5:
        return [cred(expires=format_rfc3339(parse_rfc3339(real.expires or "") + timedelta(hours=1)))]
    if family == 6:
        return [cred(realm="other." + real.realm)]
    if family == 7:
        opaque = dict(real.opaque_json or {}, resource="GET /elsewhere")
        return [cred(opaque=b64url_encode(canonical_json(opaque)))]
    if family == 8:
        return [cred(intent=junk(rng, 20_000))]
    if family == 9:
        return [cred(method=junk(rng, 20_000))]
    if family == 10:
        return [cred(), cred(id=b64url_encode(rng.randbytes(32)))]
    if family == 11:  # a well-formed session payload on an echo whose id does not verify
        action = rng.choice(["open", "voucher", "topUp", "close"])
        payload = {"type": "session", "action": action, "sessionId": echo["id"] + "x", "signer": did, "account": "acct:buyer",
                   "cap": "100000", "capSignature": "sig", "closeSignature": "sig",
                   "voucher": {"cumulative": "10", "sequence": 1, "signature": "sig"}}
        return [cred(payload, id=echo["id"] + "x", intent="session")]
    return [cred(source=junk(rng, 5_000), id=b64url_encode(rng.randbytes(32)))]


async def flood(base: str, routes: list[tuple[str, str]], granted: list[tuple[str, str]], did: str) -> list[int]:
    """FLOOD unpaid requests with 30 KB queries, then FLOOD garbage credentials (some on grant-served
    routes, with garbage grants), CONCURRENCY at a time. Returns every status."""
    rng = random.Random(20261204)
    gate = asyncio.Semaphore(CONCURRENCY)
    statuses: list[int] = []
    real: dict[tuple[str, str], list[mpp.Challenge]] = {}

    async with client() as http:
        async def one(method: str, path: str, query: str, headers: list[tuple[str, str]], keep: bool = False) -> None:
            async with gate:
                status, doc, challenges = await send(http, f"{base}{path}?{query}", method, headers)
            statuses.append(status)
            assert status < 500 and doc is not None, (method, path, status, doc)  # every refusal a problem of ours
            if keep:
                real[(method, path)] = parse_challenges(challenges)

        # real challenges to tamper with, from short unpaid requests
        for method, path in routes:
            await one(method, path, "q=short", [], keep=True)
        await asyncio.gather(*(one(*routes[n % len(routes)], "q=" + "".join(rng.choices(B64, k=QUERY)), [])
                               for n in range(FLOOD)))
        bad = []
        for n in range(FLOOD):
            query = "q=" + ("x" * QUERY if n % 4 == 0 else str(n))
            if granted and n % 10 == 0:
                method, path = granted[n % len(granted)]
                bad.append((method, path, query, [(GRANT_HEADER, rng.choice(["x", "a.b.c", token({"alg": "EdDSA"}) + ".e30.AA"])),
                                                  (GRANT_PROOF_HEADER, rng.choice(["", "agent=x; t=1; sig=y", "".join(rng.choices(B64 + " ;=", k=50))]))]))
                continue
            method, path = routes[n % len(routes)]
            values = garbage(rng, rng.choice(real[(method, path)]), did)
            if n % 10 == 5:  # the session endpoint (in-band vouchers, close), on a metered route's challenges
                method, path = "POST", SESSION_PATH
                values = garbage(rng, rng.choice(real[("GET", "/complete")]), did)
            bad.append((method, path, query, [("Authorization", v) for v in values]))
        await asyncio.gather(*(one(*args) for args in bad))
    return statuses


async def paid_once(base: str, home: Path, path: str = "/weather") -> None:
    """One real purchase, so that every store is in use before the flood (and the test could see it)."""
    payer = LedgerPayer(str(home / "agent"))
    async with client() as http:
        _, _, challenges = await send(http, base + path, "GET")
        authorization = payer.authorize(payer.choose(parse_challenges(challenges)))
        status, doc, _ = await send(http, base + path, "GET", [("Authorization", authorization)])
        assert status == 200, doc


def mpp_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("mpp")]


def assert_clean(text: str, limit: int, what: str) -> None:
    assert len(text) <= limit, (what, len(text))
    bad = {f"U+{ord(ch):04X}" for ch in text if unicodedata.category(ch) in UNPRINTABLE}
    assert not bad, (what, sorted(bad))


@pytest.mark.parametrize("priced", ["routes", "price-list"])
async def test_strangers_write_nothing(home: Path, priced: str, caplog):
    """CORE-ONCE-09, IDENT-AUD-08: 1,000 unpaid requests with 30 KB queries and 1,000 garbage
    credentials (on per-request, identity, metered and streamed routes, the session endpoint, a
    price list's transaction, seat, unit and task offers and grant-served follow-ups) leave every
    database file byte for byte its size and the audit log its length. CORE-ERR-12: the log lines
    written meanwhile are bounded and free of control characters."""
    if priced == "price-list":
        listed_home(home)
    routes, granted = (LISTED_ROUTES, GRANTED_ROUTES) if priced == "price-list" else (INIT_ROUTES, [])
    caplog.set_level(logging.DEBUG, logger="mpp")
    async with serving(home) as (server, seller):
        base = str(server.make_url("")).rstrip("/")
        await paid_once(base, home)
        await asyncio.sleep(0.2)  # the sweeper's one heartbeat at start-up is done
        entries = len(await seller.audit.entries())
        assert entries >= 1  # the purchase was audited: this log is the one a refusal would reach
        before = database_files(home)
        # the payment records and the audit log are kept in ledger.db (one transaction per purchase)
        assert {"ledger.db", "sessions.db"} <= set(before)
        if priced == "price-list":
            assert "pricing.db" in before
        caplog.clear()

        statuses = await flood(base, routes, granted, mpp.SigningKey.generate().did)

        after = database_files(home)
        assert after == before, {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys()
                                 if before.get(k) != after.get(k)}
        assert len(await seller.audit.entries()) == entries
    assert len(statuses) > 2 * FLOOD and all(400 <= s < 500 for s in statuses), sorted(set(statuses))
    lines = mpp_lines(caplog)
    assert sum("refused" in line for line in lines) >= FLOOD  # the refusals are logged, briefly
    for line in lines:
        assert_clean(line, 2 * RESOURCE_MAX, "log line")


async def test_echoed_intent_and_method_are_bounded_in_problems(served_seller):
    """CORE-ERR-12: a 20 KB intent or a 20 KB method strewn with control characters, or a 20 KB id,
    give a problem whose detail is at most 512 characters and has none of them."""
    base, _, _ = served_seller
    rng = random.Random(12)
    async with client() as http:
        _, _, challenges = await send(http, base + "/weather", "GET")
        real = parse_challenges(challenges)[0]
        for changes, slug in (({"intent": junk(rng, 20_000)}, "invalid-challenge"),
                              ({"method": junk(rng, 20_000)}, "method-unsupported"),
                              ({"id": "A" * 20_000}, "invalid-challenge")):
            value = "Payment " + token({"challenge": {**real.echo(), **changes}, "payload": {"type": "probe"}})
            status, doc, _ = await send(http, base + "/weather", "GET", [("Authorization", value)])
            assert status in (400, 402) and doc is not None and doc["type"].endswith(slug), doc
            assert_clean(doc["detail"], DETAIL_MAX, "detail")
            for member in doc.values():
                if isinstance(member, str):
                    assert_clean(member, DETAIL_MAX, "problem member")
            if "id" not in changes:  # the value is cut, not dropped: the reader still sees what it was
                assert ELLIPSIS in doc["detail"] and len(doc["detail"]) < 200


async def test_long_paths_are_bounded_in_problems(home: Path):
    """CORE-ERR-12: a follow-up path of 3 KB, requested without a grant, gets a problem whose route
    member is at most 256 characters and which leaves the path out of instance rather than cut it."""
    listed_home(home)
    async with serving(home) as (server, _), client() as http:
        path = "/jobs/" + "t" * 3000
        status, doc, _ = await send(http, str(server.make_url(path)), "GET")
    assert status == 403 and doc is not None and doc["type"].endswith("grant-required"), doc
    assert len(doc["route"]) == RESOURCE_MAX and doc["route"].startswith("GET /jobs/tttt") and doc["route"].endswith(ELLIPSIS)
    assert "instance" not in doc
    assert SellerCore.problem_body(PaymentRequired(), [], "/short")["instance"] == "/short"


@pytest.fixture
async def served_seller(home: Path):
    async with serving(home) as (server, seller):
        yield str(server.make_url("")).rstrip("/"), seller, home


def mandate_with_alg(alg: str) -> str:
    """A compact JWS whose header names ``alg``: refused before any signature is looked at."""
    return f"{token({'alg': alg, 'typ': 'mandate+jwt'})}.{token({})}.AAAA"


async def test_refusals_of_our_own_challenges_are_audited_only_for_who_shows_itself(served_seller, caplog):
    """CORE-ONCE-09, IDENT-AUD-08, CORE-ERR-12: a credential for a challenge we minted (for a 5 KB
    query) from a requester who has not shown who it is (a key the ledger does not know; a mandate
    whose alg is 6 KB of junk) writes nothing; a refusal of an agent whose mandate chain verified
    (over its ceiling) is audited, once, every value at most 256 characters and free of control
    characters; so are the log lines."""
    base, seller, home = served_seller
    rng = random.Random(34)
    query = "q=" + "".join(rng.choices(B64, k=5_000))
    wallet = load_wallet(home / "agent")
    caplog.set_level(logging.DEBUG, logger="mpp")
    async with client() as http:
        async def quote(path: str, key: mpp.SigningKey = wallet.key) -> Quote:
            _, _, challenges = await send(http, f"{base}{path}?{query}", "GET")
            challenge = next(c for c in parse_challenges(challenges) if c.intent == "charge")
            return Quote(challenge, ChargeRequest.from_challenge(challenge), LedgerBuyerMethod(key=key, account=wallet.account))

        first = len(await seller.audit.entries())
        forged = await quote("/weather", mpp.SigningKey.generate())  # signs for an account it may not spend from
        status, doc, _ = await send(http, f"{base}/weather?{query}", "GET", [("Authorization", mpp.sign_quote(forged))])
        assert status == 402 and doc["type"].endswith("verification-failed"), doc

        mandated = await quote("/agent-report")
        junk_mandate = {"identity": {"mandates": [mandate_with_alg(junk(rng, 6_000))], "proof": "AAAA"}}
        status, doc, _ = await send(http, f"{base}/agent-report?{query}", "GET",
                                    [("Authorization", mpp.sign_quote(mandated, junk_mandate))])
        assert status == 402 and doc["type"].endswith("mandate-invalid"), doc
        assert_clean(doc["detail"], DETAIL_MAX, "detail")
        assert "algorithm" in doc["detail"] and ELLIPSIS in doc["detail"]
        assert len(await seller.audit.entries()) == first  # strangers, over our own challenges: nothing

        pricey = await quote("/premium-report")  # 5000: above the wallet mandate's ceiling of 1000
        member = identity_member(wallet.mandates, wallet.key, pricey.challenge, pricey.request)
        status, doc, _ = await send(http, f"{base}/premium-report?{query}", "GET",
                                    [("Authorization", mpp.sign_quote(pricey, {"identity": member}))])
        assert status == 403 and doc["type"].endswith("over-ceiling"), doc

    entries = (await seller.audit.entries())[first:]
    refusals = [e for e in entries if e.kind == "refusal"]
    assert [(e.data["challengeId"], e.data["problem"]) for e in refusals] == [(pricey.challenge.id, "over-ceiling")]
    for entry in entries:
        for name, value in entry.data.items():
            if isinstance(value, str):
                assert_clean(value, RESOURCE_MAX, f"audit {entry.kind}.{name}")
    assert all(e.data["resource"].endswith(ELLIPSIS) and len(e.data["resource"]) == RESOURCE_MAX for e in refusals)
    lines = mpp_lines(caplog)
    assert any("refused" in line and forged.challenge.id in line for line in lines)
    for line in lines:
        assert_clean(line, 2 * RESOURCE_MAX, "log line")


@pytest.mark.parametrize("value, limit, expected", [
    ("charge", 64, "charge"),
    ("a" * 64, 64, "a" * 64),
    ("a" * 65, 64, "a" * 63 + ELLIPSIS),
    ("a\x00b\x1b[31mc\nd\r\u202ee\u2028f\ufeffg\x85h", 64, "ab[31mcdefgh"),
    ("\x00" * 100 + "x", 64, "x"),
    (12345, 3, "12" + ELLIPSIS),
])
def test_clip(value, limit, expected):
    """CORE-ERR-12: controls and format characters go, then the value is cut to its bound with "…"."""
    assert clip(value, limit) == expected
