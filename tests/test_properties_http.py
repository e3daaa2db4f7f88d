"""Property-based tests over HTTP: whatever a peer puts in Authorization, Payment-Grant,
Payment-Grant-Proof or a ledger-service body, the answer is never a 5xx, and every refusal is a
problem document (CORE-ERR-11, LEDGER-SVC-07).

The seller (with a price list: task follow-ups and seat-covered routes read Payment-Grant) and
the ledger service run in-process, each on its own event loop in a thread, so that the
synchronous hypothesis tests can send raw bytes to them over a socket (aiohttp's client would
refuse some of the header values we want to send).
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from http.client import HTTPMessage, HTTPResponse
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
from aiohttp import web
from hypothesis import example, given, strategies as st

import mpp
from mpp import identity as I
from mpp.protocol.wire import b64url_decode, b64url_encode
from mpp.aio import EmbeddedLedgerRail, Seller
from mpp.cli.serve import HEADER_LIMITS
from mpp.ledger.service import ledger_app
from mpp.ledger.signing import sign_request
from mpp.methods.ledger import LedgerBuyerMethod
from mpp.pricing import GRANT_HEADER, GRANT_PROOF_HEADER, issue_grant, load_price_list, sign_grant_proof
from mpp.stores.pricing import SqlitePricingStore
from mpp.stores.payments import SqlitePaymentStore

from _identity_support import PAYEE, PAYER, PLAIN_PAYER, mandate, new_ledger
from test_pricing_seller import PRICES_V1, build_app
from test_properties import json_values, mutated

REALM = "props.test"


class Background:
    """An aiohttp app on its own event loop in a thread. ``make_app`` runs on that loop, so what it
    opens (SQLite connections) belongs to the thread that uses it."""

    def __init__(self, make_app: Callable[[], Awaitable[web.Application]]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = self.run(self._start(make_app))

    def run(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _start(self, make_app: Callable[[], Awaitable[web.Application]]) -> int:
        self.runner = web.AppRunner(await make_app(), **HEADER_LIMITS)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return self.runner.addresses[0][1]

    def close(self) -> None:
        self.run(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def request(self, method: str, target: str, headers: list[tuple[str, bytes]], body: bytes = b"") -> tuple[int, HTTPMessage, bytes]:
        """One request with header values as raw bytes; (status, headers, body)."""
        head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n".encode()
        head += b"".join(name.encode() + b": " + value + b"\r\n" for name, value in headers)
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(head + b"\r\n" + body)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        resp = HTTPResponse(_Replay(b"".join(chunks)))  # type: ignore[arg-type]
        resp.begin()
        return resp.status, resp.msg, resp.read()


class _Replay:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, *args: Any, **kwargs: Any) -> io.BytesIO:
        return io.BytesIO(self.data)


def assert_answer(status: int, headers: HTTPMessage, body: bytes, *, problem_type: str) -> None:
    """CORE-ERR-11, CORE-ERR-01: never a 5xx; a refusal is a problem document of its status."""
    assert status < 500, (status, body[:300])
    if status >= 400:
        assert (headers.get("Content-Type") or "").startswith("application/problem+json"), (status, headers, body[:200])
        doc = json.loads(body)
        assert doc["status"] == status and doc["type"].startswith(problem_type) and isinstance(doc.get("title", doc.get("error")), str), doc


def field(text: str) -> bytes:
    """``text`` as a header field value can carry it: UTF-8 (lone surrogates too), no control
    bytes but HTAB (CR, LF and NUL end or break a field; no peer can send them in one)."""
    raw = text.encode("utf-8", "surrogatepass")
    return bytes(c for c in raw if c == 9 or c >= 0x20 and c != 0x7F).strip(b" \t")


field_bytes = st.binary(max_size=400).map(lambda b: bytes(c for c in b if c == 9 or c >= 0x20 and c != 0x7F).strip(b" \t"))


# -- the seller ------------------------------------------------------------------------------


@dataclass
class SellerWorld:
    server: Background
    credential: str  # a valid credential for GET /weather (one challenge; it may be spent once)
    grant: str  # a valid task grant for GET /jobs/t1, with its proof (valid for a few minutes)
    proof: str
    agent: mpp.SigningKey


@pytest.fixture(scope="module")
def seller_world(tmp_path_factory: pytest.TempPathFactory):
    tmp: Path = tmp_path_factory.mktemp("props-seller")
    principal, agent, receipt_key = mpp.SigningKey.generate(), mpp.SigningKey.generate(), mpp.SigningKey.generate()

    async def make_app() -> web.Application:
        ledger = new_ledger(str(tmp / "ledger.db"), principal.did)
        ledger.keys.allow(PLAIN_PAYER, agent.did, "owner")
        seller = Seller(realm=REALM, secret=b"s" * 32, receipt_key=receipt_key,
                        rails=[EmbeddedLedgerRail(ledger, recipient=PAYEE)], store=SqlitePaymentStore(str(tmp / "payments.db")),
                        trusted_principals={principal.did}, pricing_store=SqlitePricingStore(str(tmp / "pricing.db")),
                        price_list=load_price_list(PRICES_V1, source="prices.toml"))
        return build_app(seller)

    server = Background(make_app)
    status, headers, _ = server.request("GET", "/weather", [])
    assert status == 402
    challenge = next(c for c in mpp.parse_challenges(headers.get_all("WWW-Authenticate")) if c.intent == "charge")
    request = mpp.ChargeRequest.from_challenge(challenge)
    token = mandate(principal, agent, audience=[REALM], scope=["*"])
    credential = mpp.sign_quote(mpp.Quote(challenge, request, LedgerBuyerMethod(key=agent, account=PAYER)),
                                {"identity": I.identity_member([token], agent, challenge, request)})
    now = datetime.now(timezone.utc)
    grant = issue_grant(receipt_key, {"iss": REALM, "aud": REALM, "sub": agent.did, "jti": "grt_" + "A" * 22, "kind": "task",
                                      "iat": int(now.timestamp()), "exp": int(now.timestamp()) + 3600,
                                      "routes": ["GET /jobs/t1"], "priceList": "v1", "challengeId": challenge.id, "task": "t1"})
    proof = sign_grant_proof(agent, grant_id="grt_" + "A" * 22, method="GET", path="/jobs/t1", now=now)
    yield SellerWorld(server, credential, grant, proof, agent)
    server.close()


def _seller_answer(world: SellerWorld, method: str, target: str, headers: list[tuple[str, bytes]]) -> None:
    status, answer_headers, body = world.server.request(method, target, headers)
    assert_answer(status, answer_headers, body, problem_type="")
    if status >= 400:
        doc = json.loads(body)
        assert doc["type"].startswith((mpp.PROBLEM_BASE, mpp.EXTENSION_PROBLEM_BASE)), doc


authorization_values = st.one_of(
    field_bytes,
    st.text(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"), max_size=400)
    .map(lambda t: b"Payment " + t.encode()),
    json_values.map(lambda v: b"Payment " + b64url_encode(json.dumps(v).encode()).encode()),
)


@given(authorization_values)
@example(b"Payment " + b64url_encode(b'{"challenge":{},"payload":{},"payload":{}}').encode())
def test_seller_never_answers_a_credential_with_a_5xx(seller_world, value):
    """CORE-ERR-11, CORE-ERR-03: any Authorization value on a priced route: a 4xx problem document."""
    _seller_answer(seller_world, "GET", "/weather", [("Authorization", value)])


@given(st.data())
def test_seller_never_answers_a_mutated_credential_with_a_5xx(seller_world, data):
    """CORE-ERR-11: the valid credential with characters changed (or members replaced), never a 5xx."""
    credential = seller_world.credential
    if data.draw(st.booleans()):
        value = field(data.draw(mutated(credential)))
    else:
        doc = json.loads(b64url_decode(credential.split(" ", 1)[1]))
        holder = doc[data.draw(st.sampled_from(("challenge", "payload", "identity")))]
        holder[data.draw(st.sampled_from(sorted(holder)))] = data.draw(json_values)
        value = b"Payment " + b64url_encode(json.dumps(doc).encode()).encode()
    _seller_answer(seller_world, "GET", "/weather", [("Authorization", value)])


@given(st.data())
def test_seller_never_answers_a_grant_with_a_5xx(seller_world, data):
    """CORE-ERR-11, PRICE-GRANT-02: any Payment-Grant and Payment-Grant-Proof on a task follow-up
    and on a seat-covered route (random, or the valid ones with characters changed)."""
    grant = data.draw(field_bytes | mutated(seller_world.grant).map(field) | st.just(seller_world.grant.encode())
                      | st.just(b64url_encode(b'{"alg":"EdDSA","typ":"mpp-grant+jwt","kid":[]}').encode() + b".e30." + b"A" * 86))
    proof = data.draw(field_bytes | mutated(seller_world.proof).map(field) | st.just(seller_world.proof.encode()))
    target = data.draw(st.sampled_from(("/jobs/t1", "/forecast", "/jobs/t2/result")))
    _seller_answer(seller_world, "GET", target, [(GRANT_HEADER, grant), (GRANT_PROOF_HEADER, proof)])


# -- the ledger service ------------------------------------------------------------------------


@dataclass
class LedgerWorld:
    server: Background
    seller_key: mpp.SigningKey
    ledger_id: str
    transfer: dict[str, Any]


@pytest.fixture(scope="module")
def ledger_world(tmp_path_factory: pytest.TempPathFactory):
    tmp: Path = tmp_path_factory.mktemp("props-ledger")
    principal, agent, seller_key = mpp.SigningKey.generate(), mpp.SigningKey.generate(), mpp.SigningKey.generate()
    ids: list[str] = []

    async def make_app() -> web.Application:
        ledger = new_ledger(str(tmp / "ledger.db"), principal.did)
        ledger.keys.allow(PLAIN_PAYER, agent.did, "owner")
        ids.append(ledger.ledger_id)
        return ledger_app(ledger, sellers={seller_key.did: PAYEE}, close_ledger=True)

    server = Background(make_app)
    transfer = {"id": "t-props", "realm": REALM, "payer": PLAIN_PAYER, "payee": PAYEE, "amount": "100", "currency": "usd",
                "signer": agent.did, "signature": "A" * 86}
    yield LedgerWorld(server, seller_key, ids[0], transfer)
    server.close()


ENDPOINTS = (("POST", "/v1/transfers"), ("POST", "/v1/refunds"), ("POST", "/v1/revoked"), ("POST", "/v1/sessions"),
             ("POST", "/v1/sessions/x/top-up"), ("POST", "/v1/sessions/x/close"), ("POST", "/v1/transfers/t-props/void"),
             ("GET", "/v1/accounts/acct:seller"), ("GET", "/v1/accounts/acct:seller/transfers?since=x&until=y"))


@given(st.sampled_from(ENDPOINTS), field_bytes | mutated('MPP-Ledger keyid="did:key:z6Mk", ts="1", nonce="AAAAAAAAAAAAAAAA", '
                                                         'sig="' + "A" * 86 + '"').map(field))
def test_ledger_service_never_answers_an_authorization_with_a_5xx(ledger_world, endpoint, value):
    """LEDGER-SVC-07, LEDGER-SVC-02: any Authorization value: a 4xx problem document."""
    method, path = endpoint
    status, headers, body = ledger_world.server.request(method, path, [("Authorization", value)], b"{}")
    assert_answer(status, headers, body, problem_type="urn:mpp:ledger:")
    assert status >= 400


bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.sampled_from(("NaN", '{"id":Infinity}', '{"id":"a","id":"b"}', "[" * 50_000)).map(str.encode),
)


@given(st.sampled_from(ENDPOINTS), st.data())
def test_ledger_service_never_answers_a_signed_body_with_a_5xx(ledger_world, endpoint, data):
    """LEDGER-SVC-07, CORE-CRED-07: properly signed requests with any body (random, or a transfer
    with members replaced by any JSON): never a 5xx, a refusal is a problem document."""
    method, path = endpoint
    if data.draw(st.booleans()):
        body = data.draw(bodies)
    else:
        doc = dict(ledger_world.transfer)
        doc[data.draw(st.sampled_from(sorted(doc)) | st.text(max_size=5))] = data.draw(json_values)
        body = json.dumps(doc).encode()
    authorization = sign_request(ledger_world.seller_key, ledger_id=ledger_world.ledger_id, method=method, target=path, body=body)
    status, headers, answer = ledger_world.server.request(method, path, [("Authorization", authorization.encode())], body)
    assert_answer(status, headers, answer, problem_type="urn:mpp:ledger:")


def test_the_valid_values_the_properties_mutate_are_accepted(seller_world):
    """The starting points are real: the seller serves the valid grant, and takes the valid credential."""
    proof = sign_grant_proof(seller_world.agent, grant_id="grt_" + "A" * 22, method="GET", path="/jobs/t1",
                             now=datetime.now(timezone.utc))
    status, _, body = seller_world.server.request("GET", "/jobs/t1", [(GRANT_HEADER, seller_world.grant.encode()),
                                                                      (GRANT_PROOF_HEADER, proof.encode())])
    assert status == 200, body
    status, _, body = seller_world.server.request("GET", "/weather", [("Authorization", seller_world.credential.encode())])
    assert status in (200, 402), body  # 402 invalid-challenge once a property has spent it
    assert status == 200 or json.loads(body)["type"].endswith("invalid-challenge"), body
