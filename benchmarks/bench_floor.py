"""The floor: the least work a seller can do and still sell a call over our wire (benchmarks/bench.py).

    python benchmarks/bench_floor.py KIND --workdir DIR --ledger URL [--identity] [--profile FILE]

KIND is ``floor`` (the only one). The command-line contract is bench_sellers.py's: listens on
127.0.0.1 (any free port), prints ``ready {"port": N, "pid": P}``; on SIGTERM prints ``stats
{"calls": N}`` (paid calls served) and exits; ``MPP_BENCH_CPU`` pins the process to that CPU.
DIR holds ``kit.json`` (the agent's and principal's DIDs and the mandate); ``--ledger`` names
the SQLite file (``sqlite:///path``) where the floor makes its own tables and accounts: the
payer ``acct:buyer`` funded and owned by the kit's agent and principal, the payee ``acct:seller``.

It speaks exactly our wire (the 402's ``WWW-Authenticate: Payment``, the ``ledger`` method's
signed authorization, the ``identity`` member, the signed ``Payment-Receipt`` and the JWKS at
``/.well-known/jwks.json``), so the harness's buyers and mpp.aio.PaymentClient pay it unchanged
and verify its receipts. Per purchase it does only what cannot be avoided:

  unpaid request   one HMAC-SHA256 (the challenge id, as mpp.protocol.challenge computes it)
                   over a challenge whose text is cached for the route but for the id, the
                   expiry and the opaque nonce; a 402 with the problem document.
  paid retry       decode the credential (stdlib base64 and json, no models); the echoed
                   challenge: realm, method, intent, the request text equal to the one quoted,
                   the HMAC recomputed, unexpired, its opaque bound to this resource, no body;
                   one Ed25519 verify of the payer's ledger authorization; with ``--identity``
                   one more, the agent's proof of possession over the quote, the chain itself
                   verified once (mpp.identity.verify_chain, with scope, currency, ceiling and
                   approval rules judged for this route's one price) and then cached by its
                   token text, only its validity window checked per use;
                   ONE SQLite statement in one transaction (autocommit): an INSERT into
                   ``floor_purchases`` keyed by the challenge id (exactly once by primary key),
                   whose triggers check the accounts, that the signer (with identity: the
                   mandate's principal) owns the payer account, revocation and the mandate's
                   budget, then post both legs (payer down, payee up) and count the budget;
                   one Ed25519 signature: the receipt JWS (the claims our seller signs, the
                   same header and encoding), and the 200 with ``Payment-Receipt``.

What it does not do (our seller does): the pydantic models and strict JSON parsing (duplicate
members, depth limits), Accept-Payment negotiation, bodies and digests (a request with a body is
refused), Idempotency-Key replays and stored responses (the receipt is not stored), audit log,
policy-decision and settlement records, refunds when the handler fails, approvals (a mandate
needing one is refused), chains longer than one link, sessions, price lists, other methods,
several routes, a payment record with states. It is not a seller to deploy: it is the cost of
the protocol's unavoidable cryptography, one durable write and aiohttp, against which
charge-sqlite and charge-sqlite-identity are measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import signal
import sqlite3
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiohttp import web

REALM = "bench.local"
PATH = "/item"
RESOURCE = "GET " + PATH
PAYER = "acct:buyer"
PAYEE = "acct:seller"
FUNDS = 10**15
PRICE = 1  # base units; never a float
CURRENCY = "usd"
DESCRIPTION = "bench item"
METHOD = "ledger"
INTENT = "charge"
TTL_S = 300  # our ChallengeIssuer's default ttl
CHAIN_LEEWAY_S = 30  # mpp.identity.chains.verify_chain's leeway on a mandate's times
BODY = json.dumps({"ok": True, "item": "forecast", "sky": "clear"}).encode()
JWKS_PATH = "/.well-known/jwks.json"
LEDGER_DOMAIN = b"mpp-ledger-charge-v1\n"  # mpp.methods.ledger.SIGNING_DOMAIN
PROOF_DOMAIN = b"mpp-identity-proof-v1\n"  # mpp.identity.proofs.PROOF_DOMAIN
PROBLEM_BASE = "https://paymentauth.org/problems/"

SCHEMA = """
CREATE TABLE IF NOT EXISTS floor_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS floor_accounts(
    id TEXT PRIMARY KEY, currency TEXT NOT NULL, balance INTEGER NOT NULL CHECK (balance >= 0)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS floor_owners(account TEXT NOT NULL, did TEXT NOT NULL, PRIMARY KEY (account, did)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS floor_revoked(mandate TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS floor_spent(
    mandate TEXT NOT NULL, period TEXT NOT NULL, spent INTEGER NOT NULL, PRIMARY KEY (mandate, period)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS floor_purchases(
    challenge_id TEXT PRIMARY KEY,
    payer TEXT NOT NULL, payee TEXT NOT NULL, amount INTEGER NOT NULL CHECK (amount > 0), currency TEXT NOT NULL,
    owner TEXT NOT NULL,  -- who must own the payer account: the signer, or the mandate's principal
    signer TEXT NOT NULL,
    mandate TEXT, period TEXT, budget INTEGER,  -- the mandate's key (issuer#jti), budget period and amount
    settled_at TEXT NOT NULL) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS floor_purchase_check BEFORE INSERT ON floor_purchases BEGIN
    SELECT RAISE(ABORT, 'unknown-account') WHERE (SELECT count(*) FROM floor_accounts
        WHERE id IN (NEW.payer, NEW.payee) AND currency = NEW.currency) < 2;
    SELECT RAISE(ABORT, 'unauthorized-signer') WHERE NOT EXISTS (SELECT 1 FROM floor_owners
        WHERE account = NEW.payer AND did = NEW.owner);
    SELECT RAISE(ABORT, 'mandate-revoked') WHERE NEW.mandate IS NOT NULL AND EXISTS (SELECT 1 FROM floor_revoked
        WHERE mandate = NEW.mandate);
    SELECT RAISE(ABORT, 'budget-exceeded') WHERE NEW.mandate IS NOT NULL AND coalesce((SELECT spent FROM floor_spent
        WHERE mandate = NEW.mandate AND period = NEW.period), 0) + NEW.amount > NEW.budget;
END;
CREATE TRIGGER IF NOT EXISTS floor_purchase_post AFTER INSERT ON floor_purchases BEGIN
    UPDATE floor_accounts SET balance = balance - NEW.amount WHERE id = NEW.payer;
    UPDATE floor_accounts SET balance = balance + NEW.amount WHERE id = NEW.payee;
END;
CREATE TRIGGER IF NOT EXISTS floor_purchase_budget AFTER INSERT ON floor_purchases WHEN NEW.mandate IS NOT NULL BEGIN
    INSERT INTO floor_spent(mandate, period, spent) VALUES (NEW.mandate, NEW.period, NEW.amount)
        ON CONFLICT (mandate, period) DO UPDATE SET spent = spent + excluded.spent;
END;
"""
INSERT = ("INSERT INTO floor_purchases(challenge_id, payer, payee, amount, currency, owner, signer, mandate, period, budget, "
          "settled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    """base64url without padding; the alphabet checked (binascii.Error otherwise)."""
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def rfc3339(seconds: int) -> str:
    """mpp.protocol.models.format_rfc3339 of a whole second."""
    u = time.gmtime(seconds)
    return f"{u.tm_year:04d}-{u.tm_mon:02d}-{u.tm_mday:02d}T{u.tm_hour:02d}:{u.tm_min:02d}:{u.tm_sec:02d}Z"


def canonical(value: dict[str, Any]) -> bytes:
    """RFC 8785 for what the floor signs and checks (string and small-integer members, ASCII keys):
    sorted keys, no spaces, UTF-8, as mpp.protocol.wire.canonical_json writes it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")


def sqlite_file(url: str) -> str:
    if url.startswith("sqlite:///"):
        return url[len("sqlite://"):]
    if "://" in url:
        raise SystemExit(f"the floor keeps its ledger in SQLite only, not {url!r}")
    return url


def _problems() -> dict[str, tuple[str, int]]:
    """Title and status of every payment problem by slug, as our seller writes them (refusals only)."""
    from mpp.identity import IDENTITY_PROBLEMS
    from mpp.protocol.errors import PaymentProblem

    found: dict[str, tuple[str, int]] = {}
    todo = [PaymentProblem]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        found.setdefault(cls.slug, (cls.title, cls.status))
    for slug, cls in IDENTITY_PROBLEMS.items():
        found[slug] = (cls.title, cls.status)
    return found


PROBLEMS = _problems()


class Refusal(Exception):
    """A payment problem: its slug and detail become the problem document (title and status: ours)."""

    def __init__(self, slug: str, detail: str) -> None:
        super().__init__(detail)
        self.slug, self.detail = slug, detail


class CachedChain:
    """A mandate chain verified once (mpp.identity.verify_chain) and judged for this route's price."""

    __slots__ = ("agent", "principal", "leaf_jti", "key", "budget", "budget_period", "nbf", "exp", "jtis")

    def __init__(self, chain: Any) -> None:
        leaf = chain.leaf
        self.agent, self.principal, self.leaf_jti, self.key = chain.agent, chain.principal, leaf.jti, leaf.key
        self.budget, self.budget_period = leaf.budget_amount, leaf.budget_period
        self.nbf, self.exp, self.jtis = leaf.nbf, leaf.exp, list(chain.jtis)


class Floor:
    def __init__(self, workdir: Path, ledger_url: str, identity: bool) -> None:
        from mpp.protocol.challenge import compute_challenge_id
        from mpp.protocol.keys import SigningKey
        from mpp.protocol.wire import encode_json_b64

        kit = json.loads((workdir / "kit.json").read_text())
        self.identity = identity
        self.principal = kit["principal"]
        self.calls = 0
        self.conn = self._open_ledger(sqlite_file(ledger_url), kit)
        ledger_id = self.conn.execute("SELECT value FROM floor_meta WHERE key = 'ledger_id'").fetchone()[0]

        secret = os.urandom(32)
        # The quote of the route, the same request our seller's ledger method quotes (request_for).
        self.request_b64 = encode_json_b64({"amount": str(PRICE), "currency": CURRENCY, "recipient": PAYEE,
                                            "methodDetails": {"ledger": ledger_id}, "description": DESCRIPTION})
        # HMAC-SHA256(secret, realm|method|intent|request|expires|digest|opaque): the fixed slots hashed once
        self._mac = hmac.new(secret, f"{REALM}|{METHOD}|{INTENT}|{self.request_b64}|".encode(), hashlib.sha256)
        self._middle = (f'realm="{REALM}", method="{METHOD}", intent="{INTENT}", request="{self.request_b64}", '
                        f'description="{DESCRIPTION}"')
        self.request_hash = b64url(hashlib.sha256(self.request_b64.encode("ascii")).digest())
        # the authorization message's fixed members (mpp.methods.ledger.authorization_message)
        self._auth_fixed = {"amount": str(PRICE), "currency": CURRENCY, "ledger": ledger_id, "realm": REALM,
                            "recipient": PAYEE}

        receipt_key = SigningKey.generate()
        self._sign = receipt_key.private_key.sign
        self.jwks = json.dumps({"keys": [receipt_key.jwk()]}).encode()
        # pyjwt's header for sign_receipt: sorted, compact
        self._jws_head = b64url(json.dumps({"alg": "EdDSA", "kid": receipt_key.kid, "typ": "mpp-receipt+jwt"},
                                           separators=(",", ":"), sort_keys=True).encode())
        self._second = -1
        self._clock()
        self._keys: dict[str, Any] = {}  # did:key -> Ed25519PublicKey
        self._chains: dict[tuple[str, ...], CachedChain] = {}

        # The HMAC as the floor computes it is the one mpp.protocol.challenge computes.
        nonce_opaque = self._opaque("check")
        assert self._challenge_id(self._expires, nonce_opaque) == compute_challenge_id(
            secret, realm=REALM, method=METHOD, intent=INTENT, request=self.request_b64, expires=self._expires,
            opaque=nonce_opaque)

    # -- setup ----------------------------------------------------------------------------

    @staticmethod
    def _open_ledger(path: str, kit: dict[str, Any]) -> sqlite3.Connection:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
        conn.execute("PRAGMA journal_mode=WAL")  # as mpp.stores.sqlite.connect: the same durability as our ledger
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.executescript(SCHEMA)  # CREATE ... IF NOT EXISTS: a rerun on the same file keeps its tables
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT OR IGNORE INTO floor_meta(key, value) VALUES ('ledger_id', ?)", ("floor-" + secrets.token_hex(8),))
        conn.execute("INSERT OR IGNORE INTO floor_accounts(id, currency, balance) VALUES (?, ?, 0)", (PAYEE, CURRENCY))
        conn.execute("INSERT OR IGNORE INTO floor_accounts(id, currency, balance) VALUES (?, ?, 0)", (PAYER, CURRENCY))
        conn.execute("UPDATE floor_accounts SET balance = balance + ? WHERE id = ?", (FUNDS, PAYER))
        conn.executemany("INSERT OR IGNORE INTO floor_owners(account, did) VALUES (?, ?)",
                         [(PAYER, kit["agent"]), (PAYER, kit["principal"])])
        conn.execute("COMMIT")
        return conn

    # -- per request ----------------------------------------------------------------------

    def _clock(self) -> int:
        """The strings that change once a second: now, a fresh challenge's expiry."""
        second = int(time.time())
        if second != self._second:
            self._second, self._now, self._expires = second, rfc3339(second), rfc3339(second + TTL_S)
        return second

    @staticmethod
    def _opaque(nonce: str) -> str:
        # encode_json_b64({"nonce": ..., "resource": ...}): token_urlsafe needs no escaping
        return b64url(f'{{"nonce":"{nonce}","resource":"{RESOURCE}"}}'.encode())

    def _challenge_id(self, expires: str, opaque: str) -> str:
        mac = self._mac.copy()
        mac.update(f"{expires}||{opaque}".encode())  # digest: none (a GET without a body)
        return b64url(mac.digest())

    def payment_required(self, problem: Refusal | None = None) -> web.Response:
        """A 402 (or another problem) with a fresh challenge, as our seller answers."""
        self._clock()
        expires, opaque = self._expires, self._opaque(secrets.token_urlsafe(16))
        cid = self._challenge_id(expires, opaque)
        slug, detail = ("payment-required", "this resource requires payment") if problem is None else (problem.slug, problem.detail)
        title, status = PROBLEMS.get(slug, (slug, 402))
        body = json.dumps({"type": PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail,
                           "instance": PATH, "challengeId": cid}).encode()
        headers = {"Cache-Control": "no-store"}
        if status == 402:
            headers["WWW-Authenticate"] = f'Payment id="{cid}", {self._middle}, expires="{expires}", opaque="{opaque}"'
        return web.Response(status=status, body=body, content_type="application/problem+json", headers=headers)

    def _key(self, did: str) -> Any:
        key = self._keys.get(did)
        if key is None:
            from mpp.protocol.errors import ParseError
            from mpp.protocol.keys import public_key_from_did

            try:
                key = public_key_from_did(did)
            except ParseError:
                raise Refusal("verification-failed", "signer is not an Ed25519 did:key") from None
            self._keys[did] = key
        return key

    def _verify(self, did: str, message: bytes, signature: str, what: str) -> None:
        from cryptography.exceptions import InvalidSignature

        try:
            self._key(did).verify(unb64url(signature), message)
        except (InvalidSignature, binascii.Error, ValueError):
            raise Refusal("verification-failed" if what == "authorization" else "proof-invalid",
                          f"{what} signature does not verify") from None

    def _chain(self, tokens: Any, now: int) -> CachedChain:
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
            raise Refusal("mandate-invalid", "identity.mandates must be a non-empty list of JWTs")
        key = tuple(tokens)
        chain = self._chains.get(key)
        if chain is None:
            chain = self._chains[key] = self._verify_chain(tokens)
        if chain.exp <= now - CHAIN_LEEWAY_S:
            raise Refusal("mandate-expired", "token has expired")
        if chain.nbf > now + CHAIN_LEEWAY_S:
            raise Refusal("mandate-not-yet-valid", "token is not yet valid")
        return chain

    def _verify_chain(self, tokens: list[str]) -> CachedChain:
        """Once per chain text: signatures, trust, audience, narrowing (mpp.identity), and the rules
        that depend only on the chain and this route's one price: currency, scope, ceiling, approval."""
        from mpp.identity import IdentityProblem, scope_matches, verify_chain

        try:
            chain = verify_chain(tokens, trusted_principals={self.principal}, realm=REALM, now=datetime.now(timezone.utc))
        except IdentityProblem as problem:
            raise Refusal(problem.slug, problem.detail) from None
        if len(chain.links) != 1:
            raise Refusal("delegation-too-deep", "the floor takes chains of one mandate (principal to agent) only")
        leaf = chain.leaf
        if leaf.currency != CURRENCY:
            raise Refusal("currency-not-allowed", f"mandate allows {leaf.currency!r}, quote is in {CURRENCY!r}")
        if not any(scope_matches(p, RESOURCE) for p in leaf.scope):
            raise Refusal("out-of-scope", f"{RESOURCE} is outside the mandate's scope")
        if PRICE > leaf.ceiling:
            raise Refusal("over-ceiling", f"amount {PRICE} is above the mandate's ceiling {leaf.ceiling}")
        if PRICE > leaf.budget_amount:
            raise Refusal("budget-exceeded", "the mandate's budget would be exceeded")
        if (leaf.approval_threshold is not None and PRICE > leaf.approval_threshold) or leaf.review:
            raise Refusal("approval-required", "the floor takes no approvals")
        if leaf.models is not None and "transaction" not in leaf.models:
            raise Refusal("model-not-allowed", "the mandate does not allow 'transaction' offers")
        return CachedChain(chain)

    def _period(self, chain: CachedChain) -> str:
        if chain.budget_period == "total":
            return "total"
        from mpp.identity import period_key

        return period_key(chain.budget_period, datetime.now(timezone.utc))

    async def item(self, request: web.Request) -> web.Response:
        authorization = request.headers.get("Authorization")
        if authorization is None or authorization.lstrip(" \t")[:8].lower() != "payment ":
            return self.payment_required()  # no Payment credential (another scheme's is not ours to judge)
        try:
            return self._paid(request, authorization)
        except Refusal as problem:
            return self.payment_required(problem)

    def _paid(self, request: web.Request, authorization: str) -> web.Response:
        now = self._clock()
        try:
            doc = json.loads(unb64url(authorization.strip(" \t")[8:].lstrip(" ")))
            challenge, payload = doc["challenge"], doc["payload"]
            cid, expires, opaque = challenge["id"], challenge["expires"], challenge["opaque"]
            if not (isinstance(cid, str) and isinstance(expires, str) and isinstance(opaque, str)
                    and isinstance(payload, dict)):
                raise TypeError
        except (ValueError, binascii.Error, KeyError, TypeError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise Refusal("malformed-credential", "credential is malformed") from None
        # The echoed challenge: ours, for this quote, unaltered, unexpired, for this resource.
        if (challenge.get("realm") != REALM or challenge.get("method") != METHOD or challenge.get("intent") != INTENT
                or challenge.get("request") != self.request_b64 or "digest" in challenge
                or challenge.get("header", "Authorization") != "Authorization"):
            raise Refusal("invalid-challenge", "challenge is not one this seller quoted")
        if not hmac.compare_digest(self._challenge_id(expires, opaque).encode(), cid.encode("utf-8", "replace")):
            raise Refusal("invalid-challenge", "challenge id does not match its parameters")
        if self._now >= expires:
            raise Refusal("payment-expired", "challenge has expired")
        try:
            bound = json.loads(unb64url(opaque)).get("resource")
        except (ValueError, binascii.Error, AttributeError):
            bound = None
        if bound != RESOURCE or request.method != "GET" or request.path != PATH or request.query_string:
            raise Refusal("invalid-challenge", "challenge was issued for another resource")
        if request.body_exists:
            raise Refusal("verification-failed", "request has a body but the challenge bound none")
        # The ledger method's authorization: one Ed25519 verify.
        account, signer, signature = payload.get("account"), payload.get("signer"), payload.get("signature")
        source = doc.get("source")
        if payload.get("type") != "authorization" or not all(isinstance(v, str) and v for v in (account, signer, signature)):
            raise Refusal("verification-failed", "ledger payload is incomplete")
        if len(account) > 128 or (source is not None and source != signer):
            raise Refusal("verification-failed", "ledger payload account or source is wrong")
        self._verify(signer, LEDGER_DOMAIN + canonical({**self._auth_fixed, "account": account, "challengeId": cid}),
                     signature, "authorization")
        mandate = period = budget = None
        owner, claims_extra = signer, None
        if self.identity:
            member = doc.get("identity")
            if not isinstance(member, dict):
                raise Refusal("identity-required", "this resource requires the identity extension")
            chain = self._chain(member.get("mandates"), now)
            if source != chain.agent or signer != chain.agent:
                raise Refusal("identity-mismatch", "the credential's source and signer must be the mandate's subject")
            proof = member.get("proof")
            if not isinstance(proof, str):
                raise Refusal("proof-invalid", "identity.proof is missing")
            if member.get("approval") is not None:
                raise Refusal("approval-invalid", "the floor takes no approvals")
            # The agent's proof of possession over this quote and chain: the second Ed25519 verify.
            self._verify(chain.agent, PROOF_DOMAIN + canonical({
                "amount": str(PRICE), "challengeId": cid, "currency": CURRENCY, "mandate": chain.leaf_jti, "realm": REALM,
                "requestHash": self.request_hash}), proof, "proof of possession")
            owner, mandate, period, budget = chain.principal, chain.key, self._period(chain), chain.budget
            claims_extra = {"agent": chain.agent, "principal": chain.principal, "mandate": chain.leaf_jti,
                            "chain": chain.jtis, "approval": None, "decision": "allow"}
        settled = self._now
        # ONE statement, one transaction: the claim (primary key), the checks and both legs (triggers).
        try:
            self.conn.execute(INSERT, (cid, account, PAYEE, PRICE, CURRENCY, owner, signer, mandate, period, budget, settled))
        except sqlite3.IntegrityError as exc:
            raise self._refusal(exc) from None
        # The receipt: the claims our seller signs (mpp.engine.core.receipt_claims), one Ed25519 signature.
        claims = {"iss": REALM, "sub": source or signer, "iat": now, "jti": cid, "challengeId": cid, "method": METHOD,
                  "intent": INTENT, "amount": str(PRICE), "currency": CURRENCY, "recipient": PAYEE, "resource": RESOURCE,
                  "reference": cid, "settledAt": settled, "account": account}
        if claims_extra is not None:
            claims |= claims_extra
        signing_input = f"{self._jws_head}.{b64url(json.dumps(claims, separators=(',', ':')).encode())}"
        jws = f"{signing_input}.{b64url(self._sign(signing_input.encode('ascii')))}"
        receipt = b64url(json.dumps({"status": "success", "method": METHOD, "timestamp": settled, "reference": cid,
                                     "challengeId": cid, "receipt": jws},
                                    separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
        self.calls += 1
        return web.Response(body=BODY, content_type="application/json",
                            headers={"Payment-Receipt": receipt, "Cache-Control": "private"})

    @staticmethod
    def _refusal(exc: sqlite3.IntegrityError) -> Refusal:
        name = getattr(exc, "sqlite_errorname", "")
        text = str(exc)
        if name == "SQLITE_CONSTRAINT_PRIMARYKEY" or "floor_purchases.challenge_id" in text:
            return Refusal("invalid-challenge", "challenge has already been used")
        if name == "SQLITE_CONSTRAINT_CHECK" or "CHECK constraint" in text:
            return Refusal("payment-insufficient", "payer account balance is too low for this charge")
        if text == "mandate-revoked":
            return Refusal("mandate-revoked", "a mandate in the chain has been revoked")
        if text == "budget-exceeded":
            return Refusal("budget-exceeded", "the ledger refuses: the mandate's budget would be exceeded")
        return Refusal("verification-failed", f"signer may not spend from that account: {text}")

    async def jwks_handler(self, request: web.Request) -> web.Response:
        return web.Response(body=self.jwks, content_type="application/json", headers={"Cache-Control": "public, max-age=300"})


async def serve(args: argparse.Namespace) -> dict[str, Any]:
    floor = Floor(Path(args.workdir), args.ledger, args.identity)
    app = web.Application()
    app.router.add_get(PATH, floor.item)
    app.router.add_get(JWKS_PATH, floor.jwks_handler)
    # a credential with a mandate chain can pass aiohttp's 8 KiB (mpp.cli.serve.HEADER_LIMITS)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, max_field_size=32768, max_line_size=32768)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready " + json.dumps({"port": port, "pid": os.getpid()}), flush=True)
    await stop.wait()
    await runner.cleanup()
    floor.conn.close()
    return {"calls": floor.calls}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("floor",))
    p.add_argument("--workdir", required=True)
    p.add_argument("--ledger", required=True, help="the floor's ledger, a SQLite file (sqlite:///path)")
    p.add_argument("--store", help="ignored: the floor keeps its purchases in the ledger's file")
    p.add_argument("--identity", action="store_true", help="the route requires a mandate chain and proof")
    p.add_argument("--profile", help="run under cProfile and write the stats here")
    args = p.parse_args(argv)
    cpu = os.environ.get("MPP_BENCH_CPU")
    if cpu and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(cpu)})
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            stats = asyncio.run(serve(args))
        finally:
            profiler.disable()
            profiler.dump_stats(args.profile)
    else:
        stats = asyncio.run(serve(args))
    print("stats " + json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
