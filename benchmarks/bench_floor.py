"""The floors: the least work a seller can do and still sell a call over our wire (benchmarks/bench.py).

    python benchmarks/bench_floor.py charge  --workdir DIR --ledger URL [--identity] [--profile FILE]
    python benchmarks/bench_floor.py session --workdir DIR --ledger URL [--profile FILE]

The command-line contract is bench_sellers.py's: listens on 127.0.0.1 (any free port), prints
``ready {"port": N, "pid": P}``; on SIGTERM prints ``stats {"calls": N}`` (paid calls served) and
exits; ``MPP_BENCH_CPU`` pins the process to that CPU. DIR holds ``kit.json`` (the agent's and
principal's DIDs and the mandate). ``--ledger`` is where the floor makes its own tables and
accounts (the payer ``acct:buyer`` funded and owned by the kit's agent and principal, the payee
``acct:seller``): a SQLite file (``sqlite:///path``) or, for ``charge``, a PostgreSQL database
(``postgresql://...``, the tables and a function in the schema ``mpp_floor``). ``floor`` is the
old name of ``charge``.

Every floor speaks exactly our wire (the 402's ``WWW-Authenticate: Payment``, the ``ledger``
method's signed authorization or session payloads, the ``identity`` member, the signed
``Payment-Receipt`` and the JWKS at ``/.well-known/jwks.json``), so the harness's buyers and
mpp.aio.PaymentClient pay it unchanged and verify its receipts (tests/test_bench_smoke.py). It
is not a seller to deploy: it is the cost of the protocol's unavoidable cryptography, one durable
write and aiohttp, against which our seller is measured in the same run.

``charge`` (floor-charge-sqlite, floor-charge-sqlite-identity, floor-charge-pg, floor-charge-pg-identity)

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
                   ONE durable write in one transaction:
                     SQLite: one statement (autocommit, WAL, synchronous=NORMAL as our ledger):
                     an INSERT into ``floor_purchases`` keyed by the challenge id (exactly once by
                     primary key), whose triggers check the accounts, that the signer (with
                     identity: the mandate's principal) owns the payer account, revocation and
                     the mandate's budget, then post both legs (payer down, payee up) and count
                     the budget;
                     PostgreSQL: ONE round trip, ``SELECT mpp_floor.purchase(...)``, a PL/pgSQL
                     function made at startup doing the same in one implicit transaction (the
                     claim by primary key, owner, revocation, budget counted and checked, both
                     legs), on an asyncpg pool whose connections go back without the reset
                     query (``create_pool(reset=...)`` with a no-op: asyncpg >= 0.30 still rolls
                     back an open transaction, but sends nothing otherwise);
                   one Ed25519 signature: the receipt JWS (the claims our seller signs, the
                   same header and encoding), and the 200 with ``Payment-Receipt``.

``session`` (floor-session-voucher; SQLite): a metered route priced as bench_sellers.py's
(2 per 1,000 tokens, at most 4,000 per request, suggested cap 10^9); every request reports
1,000 tokens, so costs 2.

  unpaid request   as charge's, with the route's session request (intent ``session``).
  open             the echoed challenge checked as charge's; the cap signature and voucher 1
                   verified (two Ed25519); the cap covers one request; ONE statement: an INSERT
                   into ``floor_sessions`` whose triggers check the accounts and that the signer
                   owns the payer account and put the cap on hold (the payer debited by the cap,
                   the hold kept on the session); the open request is served and charged in
                   that row; the session's terms cached in process; a receipt as below.
  each voucher     decode the credential (stdlib); the session's terms from the in-process
  request          cache (signer, cap, the voucher message's fixed bytes); the payload's
                   signer, source and echoed challenge id must be the session's; the voucher
                   within the cap; ONE Ed25519 verify of the voucher (SESSION-VOUCHER-05: a
                   floor skipping it would be faster, but anyone who learns a session id could
                   then spend it); ONE statement in one transaction (autocommit, WAL,
                   synchronous=NORMAL as our session store), durable before the response leaves:
                     UPDATE floor_sessions SET spent = spent + cost, authorized = max(authorized, voucher),
                       units = units + n, requests = requests + 1
                     WHERE id = ? AND status = 'open' AND spent + cost <= max(authorized, voucher)
                     RETURNING spent, authorized
                   one Ed25519 signature: the request's receipt (our claims: amount, units,
                   authorized, spent, remaining, cap ...), and the 200 with ``Payment-Receipt``.
  close            ``POST /.well-known/mpp-session``: the close signature (and the last voucher)
                   verified; ONE statement closes the row, whose trigger captures what was spent
                   to the payee and releases the rest of the hold; the final receipt (our claims,
                   one usage line) signed. Not measured: the load generator closes after its window.

What the floors do not do (our seller does): the pydantic models and strict JSON parsing
(duplicate members, depth limits), Accept-Payment negotiation, bodies and digests (a request
with a body is refused), Idempotency-Key replays and stored responses (the receipt is not
stored), audit log, policy-decision and settlement records, refunds when the handler fails,
approvals (a mandate needing one is refused), chains longer than one link, price lists, other
methods, several routes, a payment record with states. Sessions besides: no reservation before
the handler runs (its use is known: the floor's handler cannot fail and always uses 1,000
tokens, so what it used is charged after it, in the one write), no re-check of the echoed
challenge's HMAC on voucher requests (its id must be the session's; the terms come from the
cache and the voucher's signature binds them), no highest-voucher record (the authorized amount
only), no top-ups, in-band vouchers, streams, identity on sessions, idle close or heartbeat.
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
SESSION_PATH = "/.well-known/mpp-session"
LEDGER_DOMAIN = b"mpp-ledger-charge-v1\n"  # mpp.methods.ledger.SIGNING_DOMAIN
PROOF_DOMAIN = b"mpp-identity-proof-v1\n"  # mpp.identity.proofs.PROOF_DOMAIN
CAP_DOMAIN = b"mpp-ledger-session-cap-v1\n"  # mpp.intents.session
VOUCHER_DOMAIN = b"mpp-ledger-session-voucher-v1\n"
CLOSE_DOMAIN = b"mpp-ledger-session-close-v1\n"
PROBLEM_BASE = "https://paymentauth.org/problems/"

# The session route: bench_sellers.py's metered one (2 per 1,000 tokens, at most 4,000 per request).
SESSION_INTENT = "session"
SESSION_DESCRIPTION = "bench"
UNIT_TYPE = "token"
UNIT_PRICE, PER, MAX_UNITS, SUGGESTED_CAP, IDLE_TIMEOUT_S = 2, 1000, 4000, 10**9, 300
UNITS = 1000  # what the floor's handler uses per request
COST = -(-UNITS * UNIT_PRICE // PER)  # mpp.intents.session.cost_of: rounded up
MAX_REQUEST_COST = -(-MAX_UNITS * UNIT_PRICE // PER)
MAX_AMOUNT = 2**63 - 1
MAX_SEQUENCE = 2**53 - 1

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

-- sessions: the hold is the cap, taken from the payer at open and kept on the session's row
CREATE TABLE IF NOT EXISTS floor_sessions(
    id TEXT PRIMARY KEY, payer TEXT NOT NULL, payee TEXT NOT NULL, signer TEXT NOT NULL, currency TEXT NOT NULL,
    cap INTEGER NOT NULL CHECK (cap > 0), authorized INTEGER NOT NULL, spent INTEGER NOT NULL,
    units INTEGER NOT NULL, requests INTEGER NOT NULL, status TEXT NOT NULL, opened_at TEXT NOT NULL,
    closed_at TEXT) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS floor_session_check BEFORE INSERT ON floor_sessions BEGIN
    SELECT RAISE(ABORT, 'unknown-account') WHERE (SELECT count(*) FROM floor_accounts
        WHERE id IN (NEW.payer, NEW.payee) AND currency = NEW.currency) < 2;
    SELECT RAISE(ABORT, 'unauthorized-signer') WHERE NOT EXISTS (SELECT 1 FROM floor_owners
        WHERE account = NEW.payer AND did = NEW.signer);
END;
CREATE TRIGGER IF NOT EXISTS floor_session_hold AFTER INSERT ON floor_sessions BEGIN
    UPDATE floor_accounts SET balance = balance - NEW.cap WHERE id = NEW.payer;
END;
CREATE TRIGGER IF NOT EXISTS floor_session_close AFTER UPDATE OF status ON floor_sessions
        WHEN OLD.status = 'open' AND NEW.status = 'closed' BEGIN
    UPDATE floor_accounts SET balance = balance + NEW.spent WHERE id = NEW.payee;
    UPDATE floor_accounts SET balance = balance + NEW.cap - NEW.spent WHERE id = NEW.payer;
END;
"""
INSERT = ("INSERT INTO floor_purchases(challenge_id, payer, payee, amount, currency, owner, signer, mandate, period, budget, "
          "settled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
OPEN_SESSION = ("INSERT INTO floor_sessions(id, payer, payee, signer, currency, cap, authorized, spent, units, requests, status, "
                "opened_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, 'open', ?)")
# the voucher request's one statement: ?1 cost, ?2 the voucher's cumulative, ?3 units, ?4 the session id
USE_SESSION = ("UPDATE floor_sessions SET spent = spent + ?1, authorized = max(authorized, ?2), units = units + ?3, "
               "requests = requests + 1 WHERE id = ?4 AND status = 'open' AND spent + ?1 <= max(authorized, ?2) "
               "RETURNING spent, authorized")
CLOSE_SESSION = ("UPDATE floor_sessions SET status = 'closed', authorized = max(authorized, ?1), closed_at = ?2 "
                 "WHERE id = ?3 AND status = 'open'")
SESSION_ROW = "SELECT payer, signer, cap, authorized, spent, units, requests, status FROM floor_sessions WHERE id = ?"

PG_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS mpp_floor;
CREATE TABLE IF NOT EXISTS mpp_floor.meta(key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS mpp_floor.accounts(id text PRIMARY KEY, currency text NOT NULL,
    balance bigint NOT NULL CHECK (balance >= 0));
CREATE TABLE IF NOT EXISTS mpp_floor.owners(account text NOT NULL, did text NOT NULL, PRIMARY KEY (account, did));
CREATE TABLE IF NOT EXISTS mpp_floor.revoked(mandate text PRIMARY KEY);
CREATE TABLE IF NOT EXISTS mpp_floor.spent(mandate text NOT NULL, period text NOT NULL, spent bigint NOT NULL,
    PRIMARY KEY (mandate, period));
CREATE TABLE IF NOT EXISTS mpp_floor.purchases(
    challenge_id text PRIMARY KEY, payer text NOT NULL, payee text NOT NULL, amount bigint NOT NULL CHECK (amount > 0),
    currency text NOT NULL, owner text NOT NULL, signer text NOT NULL, mandate text, period text, settled_at text NOT NULL);
-- One call per purchase, one implicit transaction: the claim (exactly once by primary key), the
-- owner, revocation and the mandate's budget, then both legs. A refusal raises: nothing stays.
CREATE OR REPLACE FUNCTION mpp_floor.purchase(p_challenge text, p_payer text, p_payee text, p_amount bigint,
        p_currency text, p_owner text, p_signer text, p_mandate text, p_period text, p_budget bigint, p_settled text)
        RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_spent bigint;
BEGIN
    INSERT INTO mpp_floor.purchases(challenge_id, payer, payee, amount, currency, owner, signer, mandate, period, settled_at)
        VALUES (p_challenge, p_payer, p_payee, p_amount, p_currency, p_owner, p_signer, p_mandate, p_period, p_settled);
    PERFORM 1 FROM mpp_floor.owners WHERE account = p_payer AND did = p_owner;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unauthorized-signer';
    END IF;
    IF p_mandate IS NOT NULL THEN
        PERFORM 1 FROM mpp_floor.revoked WHERE mandate = p_mandate;
        IF FOUND THEN
            RAISE EXCEPTION 'mandate-revoked';
        END IF;
        INSERT INTO mpp_floor.spent AS s(mandate, period, spent) VALUES (p_mandate, p_period, p_amount)
            ON CONFLICT (mandate, period) DO UPDATE SET spent = s.spent + excluded.spent
            RETURNING s.spent INTO v_spent;
        IF v_spent > p_budget THEN
            RAISE EXCEPTION 'budget-exceeded';
        END IF;
    END IF;
    UPDATE mpp_floor.accounts SET balance = balance - p_amount WHERE id = p_payer AND currency = p_currency;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown-account';
    END IF;
    UPDATE mpp_floor.accounts SET balance = balance + p_amount WHERE id = p_payee AND currency = p_currency;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown-account';
    END IF;
END $$;
"""
PG_PURCHASE = "SELECT mpp_floor.purchase($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"


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


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def sqlite_file(url: str) -> str:
    if url.startswith("sqlite:///"):
        return url[len("sqlite://"):]
    if "://" in url:
        raise SystemExit(f"this floor keeps its ledger in SQLite only, not {url!r}")
    return url


def amount_text(value: Any) -> int | None:
    """A non-negative integer written as our decimal strings are (no sign, no leading zero), or None."""
    if (not isinstance(value, str) or not value.isascii() or not value.isdigit() or len(value) > 19
            or (value[0] == "0" and len(value) > 1)):
        return None
    n = int(value)
    return n if n <= MAX_AMOUNT else None


def _problems() -> dict[str, tuple[str, int, str]]:
    """Title, status and type of every payment problem by slug, as our seller writes them (refusals only)."""
    import mpp.intents.session  # noqa: F401 - its problem classes join the walk below
    from mpp.identity import IDENTITY_PROBLEMS
    from mpp.protocol.errors import EXTENSION_PROBLEM_BASE, ExtensionProblem, PaymentProblem

    def kind(cls: type) -> str:
        return (EXTENSION_PROBLEM_BASE if issubclass(cls, ExtensionProblem) else PROBLEM_BASE) + cls.slug

    found: dict[str, tuple[str, int, str]] = {}
    todo = [PaymentProblem]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        found.setdefault(cls.slug, (cls.title, cls.status, kind(cls)))
    for slug, cls in IDENTITY_PROBLEMS.items():
        found[slug] = (cls.title, cls.status, kind(cls))
    return found


PROBLEMS = _problems()


class Refusal(Exception):
    """A payment problem: its slug and detail become the problem document (title, status and type:
    ours), with ``members`` added (a session problem's amounts)."""

    def __init__(self, slug: str, detail: str, **members: Any) -> None:
        super().__init__(detail)
        self.slug, self.detail, self.members = slug, detail, members


def _malformed() -> Refusal:
    return Refusal("malformed-credential", "credential is malformed")


class Wire:
    """What every floor shares: the route's challenge (an HMAC over cached text), refusals as our
    problem documents, did:key keys, Ed25519 verification, the receipt JWS and the JWKS."""

    def __init__(self, intent: str, request: dict[str, Any], description: str) -> None:
        from mpp.protocol.challenge import compute_challenge_id
        from mpp.protocol.keys import SigningKey
        from mpp.protocol.wire import encode_json_b64

        self.calls = 0
        self.intent = intent
        secret = os.urandom(32)
        # The quote of the route, as our seller's ledger method quotes it.
        self.request_b64 = encode_json_b64(request)
        # HMAC-SHA256(secret, realm|method|intent|request|expires|digest|opaque): the fixed slots hashed once
        self._mac = hmac.new(secret, f"{REALM}|{METHOD}|{intent}|{self.request_b64}|".encode(), hashlib.sha256)
        self._middle = (f'realm="{REALM}", method="{METHOD}", intent="{intent}", request="{self.request_b64}", '
                        f'description="{description}"')
        receipt_key = SigningKey.generate()
        self._sign = receipt_key.private_key.sign
        self.jwks = json.dumps({"keys": [receipt_key.jwk()]}).encode()
        # pyjwt's header for sign_receipt: sorted, compact
        self._jws_head = b64url(json.dumps({"alg": "EdDSA", "kid": receipt_key.kid, "typ": "mpp-receipt+jwt"},
                                           separators=(",", ":"), sort_keys=True).encode())
        self._second = -1
        self._clock()
        self._keys: dict[str, Any] = {}  # did:key -> Ed25519PublicKey

        # The HMAC as the floor computes it is the one mpp.protocol.challenge computes.
        nonce_opaque = self._opaque("check")
        assert self._challenge_id(self._expires, nonce_opaque) == compute_challenge_id(
            secret, realm=REALM, method=METHOD, intent=intent, request=self.request_b64, expires=self._expires,
            opaque=nonce_opaque)

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
        title, status, kind = PROBLEMS.get(slug, (slug, 402, PROBLEM_BASE + slug))
        doc = {"type": kind, "title": title, "status": status, "detail": detail, "instance": PATH, "challengeId": cid}
        if problem is not None:
            doc |= problem.members
        headers = {"Cache-Control": "no-store"}
        if status == 402:
            headers["WWW-Authenticate"] = f'Payment id="{cid}", {self._middle}, expires="{expires}", opaque="{opaque}"'
        return web.Response(status=status, body=json.dumps(doc).encode(), content_type="application/problem+json",
                            headers=headers)

    def _check_challenge(self, request: web.Request, challenge: dict[str, Any]) -> str:
        """The echoed challenge of a purchase or a session open: ours, for this quote, unaltered,
        unexpired, for this resource, no body. Its id."""
        cid, expires, opaque = challenge.get("id"), challenge.get("expires"), challenge.get("opaque")
        if not (isinstance(cid, str) and isinstance(expires, str) and isinstance(opaque, str)):
            raise _malformed()
        if (challenge.get("realm") != REALM or challenge.get("method") != METHOD or challenge.get("intent") != self.intent
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
        return cid

    @staticmethod
    def _credential(authorization: str) -> dict[str, Any]:
        """The credential's JSON (stdlib: base64, json), with a challenge and a payload object."""
        try:
            doc = json.loads(unb64url(authorization.strip(" \t")[8:].lstrip(" ")))
            if not isinstance(doc["challenge"], dict) or not isinstance(doc["payload"], dict):
                raise TypeError
        except (ValueError, binascii.Error, KeyError, TypeError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise _malformed() from None
        return doc

    def _key(self, did: str, slug: str = "verification-failed") -> Any:
        key = self._keys.get(did)
        if key is None:
            from mpp.protocol.errors import ParseError
            from mpp.protocol.keys import public_key_from_did

            try:
                key = public_key_from_did(did)
            except ParseError:
                raise Refusal(slug, "signer is not an Ed25519 did:key") from None
            self._keys[did] = key
        return key

    def _verify(self, did: str, message: bytes, signature: Any, what: str, slug: str = "verification-failed") -> None:
        from cryptography.exceptions import InvalidSignature

        try:
            self._key(did, slug).verify(unb64url(signature), message)
        except (InvalidSignature, binascii.Error, ValueError, TypeError, AttributeError):
            raise Refusal(slug, f"{what} signature does not verify") from None

    def _jws(self, claims: dict[str, Any]) -> str:
        """The receipt JWS: one Ed25519 signature over our claims, encoded as sign_receipt encodes them."""
        signing_input = f"{self._jws_head}.{b64url(json.dumps(claims, separators=(',', ':')).encode())}"
        return f"{signing_input}.{b64url(self._sign(signing_input.encode('ascii')))}"

    @staticmethod
    def _receipt_header(envelope: dict[str, Any]) -> str:
        return b64url(json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))

    async def jwks_handler(self, request: web.Request) -> web.Response:
        return web.Response(body=self.jwks, content_type="application/json", headers={"Cache-Control": "public, max-age=300"})

    def routes(self, app: web.Application) -> None:
        app.router.add_get(PATH, self.item)  # type: ignore[attr-defined]
        app.router.add_get(JWKS_PATH, self.jwks_handler)

    async def close(self) -> None:
        pass


# ==============================================================================================
# charge
# ==============================================================================================


class CachedChain:
    """A mandate chain verified once (mpp.identity.verify_chain) and judged for this route's price."""

    __slots__ = ("agent", "principal", "leaf_jti", "key", "budget", "budget_period", "nbf", "exp", "jtis")

    def __init__(self, chain: Any) -> None:
        leaf = chain.leaf
        self.agent, self.principal, self.leaf_jti, self.key = chain.agent, chain.principal, leaf.jti, leaf.key
        self.budget, self.budget_period = leaf.budget_amount, leaf.budget_period
        self.nbf, self.exp, self.jtis = leaf.nbf, leaf.exp, list(chain.jtis)


def open_sqlite(path: str, kit: dict[str, Any]) -> sqlite3.Connection:
    """The floor's tables in a SQLite file, the accounts made and funded; the same durability as our stores."""
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


def _refusal_of(text: str) -> Refusal:
    """A ledger refusal (a trigger's or the function's message) as our problem."""
    if text == "mandate-revoked":
        return Refusal("mandate-revoked", "a mandate in the chain has been revoked")
    if text == "budget-exceeded":
        return Refusal("budget-exceeded", "the ledger refuses: the mandate's budget would be exceeded")
    return Refusal("verification-failed", f"signer may not spend from that account: {text}")


class SqliteBook:
    """The charge's one write on SQLite: an INSERT whose triggers do the rest."""

    def __init__(self, url: str, kit: dict[str, Any]) -> None:
        self.conn = open_sqlite(sqlite_file(url), kit)
        self.ledger_id = self.conn.execute("SELECT value FROM floor_meta WHERE key = 'ledger_id'").fetchone()[0]

    def settle(self, params: tuple[Any, ...]) -> None:
        try:
            self.conn.execute(INSERT, params)
        except sqlite3.IntegrityError as exc:
            raise self._refusal(exc) from None

    @staticmethod
    def _refusal(exc: sqlite3.IntegrityError) -> Refusal:
        name = getattr(exc, "sqlite_errorname", "")
        text = str(exc)
        if name == "SQLITE_CONSTRAINT_PRIMARYKEY" or "floor_purchases.challenge_id" in text:
            return Refusal("invalid-challenge", "challenge has already been used")
        if name == "SQLITE_CONSTRAINT_CHECK" or "CHECK constraint" in text:
            return Refusal("payment-insufficient", "payer account balance is too low for this charge")
        return _refusal_of(text)

    async def close(self) -> None:
        self.conn.close()


async def _no_reset(conn: Any) -> None:
    """Pool release without the reset query (asyncpg still rolls back a transaction left open)."""


class PgBook:
    """The charge's one write on PostgreSQL: one call of mpp_floor.purchase, one round trip."""

    POOL_SIZE = 10  # as our PostgreSQL stores' pools (mpp.stores.pg._base)

    def __init__(self, pool: Any, ledger_id: str) -> None:
        self.pool, self.ledger_id = pool, ledger_id

    @classmethod
    async def open(cls, url: str, kit: dict[str, Any]) -> "PgBook":
        import asyncpg

        pool = await asyncpg.create_pool(url, min_size=cls.POOL_SIZE, max_size=cls.POOL_SIZE, reset=_no_reset)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('mpp_floor', 0))")
            await conn.execute(PG_SCHEMA)
            await conn.execute("INSERT INTO mpp_floor.meta(key, value) VALUES ('ledger_id', $1) ON CONFLICT DO NOTHING",
                               "floor-" + secrets.token_hex(8))
            for account in (PAYEE, PAYER):
                await conn.execute("INSERT INTO mpp_floor.accounts(id, currency, balance) VALUES ($1, $2, 0) "
                                   "ON CONFLICT DO NOTHING", account, CURRENCY)
            await conn.execute("UPDATE mpp_floor.accounts SET balance = balance + $1 WHERE id = $2", FUNDS, PAYER)
            for did in (kit["agent"], kit["principal"]):
                await conn.execute("INSERT INTO mpp_floor.owners(account, did) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                                   PAYER, did)
            ledger_id = await conn.fetchval("SELECT value FROM mpp_floor.meta WHERE key = 'ledger_id'")
        return cls(pool, ledger_id)

    async def settle(self, params: tuple[Any, ...]) -> None:
        import asyncpg

        cid, payer, payee, amount, currency, owner, signer, mandate, period, budget, settled = params
        try:
            await self.pool.execute(PG_PURCHASE, cid, payer, payee, amount, currency, owner, signer, mandate, period,
                                    budget, settled)
        except asyncpg.UniqueViolationError:
            raise Refusal("invalid-challenge", "challenge has already been used") from None
        except asyncpg.CheckViolationError:
            raise Refusal("payment-insufficient", "payer account balance is too low for this charge") from None
        except asyncpg.RaiseError as exc:
            raise _refusal_of(exc.args[0] if exc.args else str(exc)) from None

    async def close(self) -> None:
        await self.pool.close()


class ChargeFloor(Wire):
    """The floor of charge-sqlite(-identity) and charge-pg(-identity): one price, the ledger method."""

    def __init__(self, kit: dict[str, Any], book: Any, identity: bool) -> None:
        self.identity = identity
        self.principal = kit["principal"]
        self.book = book
        # SQLite settles synchronously (no await on the hot path); PostgreSQL with one awaited call
        self._settle_now = book.settle if isinstance(book, SqliteBook) else None
        self._settle_later = book.settle if self._settle_now is None else None
        ledger_id = book.ledger_id
        # the same request our seller's ledger method quotes (request_for)
        super().__init__(INTENT, {"amount": str(PRICE), "currency": CURRENCY, "recipient": PAYEE,
                                  "methodDetails": {"ledger": ledger_id}, "description": DESCRIPTION}, DESCRIPTION)
        self.request_hash = b64url(hashlib.sha256(self.request_b64.encode("ascii")).digest())
        # the authorization message's fixed members (mpp.methods.ledger.authorization_message)
        self._auth_fixed = {"amount": str(PRICE), "currency": CURRENCY, "ledger": ledger_id, "realm": REALM,
                            "recipient": PAYEE}
        self._chains: dict[tuple[str, ...], CachedChain] = {}

    @classmethod
    async def create(cls, kit: dict[str, Any], ledger_url: str, identity: bool) -> "ChargeFloor":
        book = await PgBook.open(ledger_url, kit) if is_postgres(ledger_url) else SqliteBook(ledger_url, kit)
        return cls(kit, book, identity)

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
            params, claims = self._paid(request, authorization)
            # ONE write, one transaction: the claim (primary key), the checks and both legs.
            if self._settle_now is not None:
                self._settle_now(params)
            else:
                await self._settle_later(params)  # type: ignore[misc]
        except Refusal as problem:
            return self.payment_required(problem)
        # The receipt: the claims our seller signs (mpp.engine.core.receipt_claims), one Ed25519 signature.
        cid = claims["challengeId"]
        receipt = self._receipt_header({"status": "success", "method": METHOD, "timestamp": claims["settledAt"],
                                        "reference": cid, "challengeId": cid, "receipt": self._jws(claims)})
        self.calls += 1
        return web.Response(body=BODY, content_type="application/json",
                            headers={"Payment-Receipt": receipt, "Cache-Control": "private"})

    def _paid(self, request: web.Request, authorization: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Every check of a paid retry; the write's parameters and the receipt's claims."""
        now = self._clock()
        doc = self._credential(authorization)
        payload = doc["payload"]
        cid = self._check_challenge(request, doc["challenge"])
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
                "requestHash": self.request_hash}), proof, "proof of possession", "proof-invalid")
            owner, mandate, period, budget = chain.principal, chain.key, self._period(chain), chain.budget
            claims_extra = {"agent": chain.agent, "principal": chain.principal, "mandate": chain.leaf_jti,
                            "chain": chain.jtis, "approval": None, "decision": "allow"}
        settled = self._now
        claims = {"iss": REALM, "sub": source or signer, "iat": now, "jti": cid, "challengeId": cid, "method": METHOD,
                  "intent": INTENT, "amount": str(PRICE), "currency": CURRENCY, "recipient": PAYEE, "resource": RESOURCE,
                  "reference": cid, "settledAt": settled, "account": account}
        if claims_extra is not None:
            claims |= claims_extra
        return (cid, account, PAYEE, PRICE, CURRENCY, owner, signer, mandate, period, budget, settled), claims

    async def close(self) -> None:
        await self.book.close()


# ==============================================================================================
# session
# ==============================================================================================


class OpenSession:
    """What never changes once a session is open, cached in process by its id."""

    __slots__ = ("id", "signer", "key", "payer", "cap", "voucher_head", "voucher_mid", "voucher_tail", "claims")

    def __init__(self, floor: "SessionFloor", sid: str, signer: str, payer: str, cap: int) -> None:
        self.id, self.signer, self.payer, self.cap = sid, signer, payer, cap
        self.key = floor._key(signer, "session-voucher-invalid")
        # voucher_message's canonical JSON, sorted keys: cumulative, currency, ledger, realm, recipient, sequence, sessionId
        self.voucher_head = VOUCHER_DOMAIN + b'{"cumulative":"'
        self.voucher_mid = (f'","currency":{json.dumps(CURRENCY)},"ledger":{json.dumps(floor.ledger_id, ensure_ascii=False)},'
                            f'"realm":{json.dumps(REALM)},"recipient":{json.dumps(PAYEE)},"sequence":').encode("utf-8")
        self.voucher_tail = f',"sessionId":{json.dumps(sid, ensure_ascii=False)}}}'.encode("utf-8")
        # the request receipt's claims (mpp.engine.sessions.request_receipt), in its order; None: per request
        self.claims = {"iss": REALM, "sub": signer, "iat": None, "jti": None, "challengeId": sid, "method": METHOD,
                       "intent": SESSION_INTENT, "reference": sid, "amount": str(COST), "units": UNITS, "unitType": UNIT_TYPE,
                       "unitPrice": str(UNIT_PRICE), "per": str(PER), "currency": CURRENCY, "recipient": PAYEE,
                       "resource": RESOURCE, "authorized": None, "spent": None, "remaining": None, "cap": str(cap),
                       "account": payer}

    def voucher_message(self, cumulative: str, sequence: int) -> bytes:
        return self.voucher_head + cumulative.encode("ascii") + self.voucher_mid + str(sequence).encode("ascii") + self.voucher_tail


class SessionFloor(Wire):
    """The floor of session-voucher: a metered route paid from sessions, SQLite."""

    def __init__(self, kit: dict[str, Any], ledger_url: str) -> None:
        self.conn = open_sqlite(sqlite_file(ledger_url), kit)
        self.ledger_id = self.conn.execute("SELECT value FROM floor_meta WHERE key = 'ledger_id'").fetchone()[0]
        # the same session request our seller's ledger method quotes (session_request_for)
        super().__init__(SESSION_INTENT, {
            "amount": str(UNIT_PRICE), "currency": CURRENCY, "recipient": PAYEE, "unitType": UNIT_TYPE,
            "methodDetails": {"ledger": self.ledger_id, "per": str(PER), "maxUnits": str(MAX_UNITS),
                              "suggestedCap": str(SUGGESTED_CAP), "idleTimeout": str(IDLE_TIMEOUT_S)},
            "description": SESSION_DESCRIPTION}, SESSION_DESCRIPTION)
        self.sessions: dict[str, OpenSession] = {}
        # terms as the signed session messages carry them (mpp.intents.session.SessionTerms.as_json, but the id)
        self._terms = {"realm": REALM, "recipient": PAYEE, "ledger": self.ledger_id, "currency": CURRENCY,
                       "unitPrice": str(UNIT_PRICE), "per": str(PER)}
        self._self_check()

    def _self_check(self) -> None:
        """The voucher bytes the floor builds are the ones mpp.intents.session signs."""
        from mpp.intents.session import SessionTerms, voucher_message

        sid = "check-" + secrets.token_urlsafe(8)
        probe = OpenSession(self, sid, "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK", PAYER, SUGGESTED_CAP)
        terms = SessionTerms(sid, REALM, PAYEE, self.ledger_id, CURRENCY, UNIT_PRICE, PER)
        assert probe.voucher_message("123", 7) == voucher_message(terms, cumulative=123, sequence=7)

    def routes(self, app: web.Application) -> None:
        super().routes(app)
        app.router.add_post(SESSION_PATH, self.endpoint)

    # -- the metered route ----------------------------------------------------------------

    async def item(self, request: web.Request) -> web.Response:
        authorization = request.headers.get("Authorization")
        if authorization is None or authorization.lstrip(" \t")[:8].lower() != "payment ":
            return self.payment_required()
        try:
            now = self._clock()
            doc = self._credential(authorization)
            payload = doc["payload"]
            if payload.get("type") != "session":
                raise Refusal("session-voucher-invalid", "ledger session payload type must be 'session'")
            action = payload.get("action")
            if action == "voucher":
                session, spent, authorized = self._voucher(doc, payload)
            elif action == "open":
                session, spent, authorized = self._open(request, doc, payload)
            else:
                raise Refusal("session-voucher-invalid", f"the floor takes open and voucher here, not {str(action)[:32]!r}")
        except Refusal as problem:
            return self.payment_required(problem)
        # The request's receipt: our claims, one Ed25519 signature.
        claims = session.claims.copy()
        claims["iat"], claims["jti"] = now, secrets.token_urlsafe(12)
        claims["authorized"], claims["spent"], claims["remaining"] = str(authorized), str(spent), str(authorized - spent)
        sid = session.id
        receipt = self._receipt_header({"status": "success", "method": METHOD, "timestamp": self._now, "reference": sid,
                                        "challengeId": sid, "receipt": self._jws(claims), "intent": SESSION_INTENT,
                                        "authorized": claims["authorized"], "spent": claims["spent"],
                                        "remaining": claims["remaining"]})
        self.calls += 1
        return web.Response(body=BODY, content_type="application/json",
                            headers={"Payment-Receipt": receipt, "Cache-Control": "private"})

    def _session(self, doc: dict[str, Any], payload: dict[str, Any]) -> OpenSession:
        """The open session the payload names (cached), and the payload bound to it."""
        sid = payload.get("sessionId")
        session = self.sessions.get(sid) if isinstance(sid, str) else None
        if session is None:
            session = self._load(sid)
        signer = payload.get("signer")
        if signer != session.signer or doc.get("source", signer) != signer:
            raise Refusal("session-voucher-invalid", "the session was opened by another key")
        if doc["challenge"].get("id") != sid:
            raise Refusal("session-voucher-invalid", "the credential's sessionId is not the id of the challenge it echoes")
        return session

    def _load(self, sid: Any) -> OpenSession:
        """A session this process has not cached (another process opened it, or the cache was dropped)."""
        row = self.conn.execute(SESSION_ROW, (sid,)).fetchone() if isinstance(sid, str) and len(sid) <= 128 else None
        if row is None:
            raise Refusal("session-unknown", "no such session at this seller")
        payer, signer, cap, _, _, _, _, status = row
        if status != "open":
            raise Refusal("session-closed", f"session is {status}; open a new one")
        session = self.sessions[sid] = OpenSession(self, sid, signer, payer, cap)
        return session

    def _voucher_of(self, session: OpenSession, payload: dict[str, Any]) -> int:
        """The payload's voucher, within the cap and signed by the session's key: its cumulative amount."""
        voucher = payload.get("voucher")
        if not isinstance(voucher, dict):
            raise Refusal("session-voucher-invalid", "the session action needs a voucher object")
        text, sequence = voucher.get("cumulative"), voucher.get("sequence")
        cumulative = amount_text(text)
        if (cumulative is None or not isinstance(sequence, int) or isinstance(sequence, bool)
                or not 0 < sequence <= MAX_SEQUENCE):
            raise Refusal("session-voucher-invalid", "voucher cumulative or sequence is malformed")
        if cumulative > session.cap:
            raise Refusal("session-cap-exceeded", f"voucher {cumulative} is above the session's cap {session.cap}",
                          sessionId=session.id, cap=str(session.cap))
        # SESSION-VOUCHER-05: every voucher is verified.
        self._verify(session.signer, session.voucher_message(text, sequence), voucher.get("signature"), "voucher",
                     "session-voucher-invalid")
        return cumulative

    def _voucher(self, doc: dict[str, Any], payload: dict[str, Any]) -> tuple[OpenSession, int, int]:
        session = self._session(doc, payload)
        cumulative = self._voucher_of(session, payload)
        # The handler ran (it cannot fail): COST for UNITS. ONE statement, one transaction, durable on return.
        rows = self.conn.execute(USE_SESSION, (COST, cumulative, UNITS, session.id)).fetchall()
        if not rows:
            raise self._why(session.id, cumulative)
        spent, authorized = rows[0]
        return session, spent, authorized

    def _why(self, sid: str, cumulative: int) -> Refusal:
        """Why the conditional write changed nothing: closed, gone, or not enough value signed."""
        row = self.conn.execute(SESSION_ROW, (sid,)).fetchone()
        if row is None:
            self.sessions.pop(sid, None)
            return Refusal("session-unknown", "no such session at this seller")
        _, _, cap, authorized, spent, _, _, status = row
        if status != "open":
            self.sessions.pop(sid, None)
            return Refusal("session-closed", f"session is {status}; open a new one")
        authorized = max(authorized, cumulative)
        return Refusal("session-insufficient", "the highest accepted voucher does not cover this request", sessionId=sid,
                       required=str(spent + MAX_REQUEST_COST), authorized=str(authorized), spent=str(spent), cap=str(cap))

    def _open(self, request: web.Request, doc: dict[str, Any], payload: dict[str, Any]) -> tuple[OpenSession, int, int]:
        """Open on the request that got the 402: cap and voucher 1 verified, the cap held, this request served."""
        sid = self._check_challenge(request, doc["challenge"])
        signer, account = payload.get("signer"), payload.get("account")
        if payload.get("sessionId") != sid:
            raise Refusal("session-voucher-invalid", "the credential's sessionId is not the id of the challenge it echoes")
        if not isinstance(signer, str) or not isinstance(account, str) or not account or len(account) > 128:
            raise Refusal("session-voucher-invalid", "session payload lacks a valid signer or account")
        if doc.get("source", signer) != signer:
            raise Refusal("verification-failed", "credential source is not the session's signer")
        if doc.get("identity") is not None:
            raise Refusal("session-voucher-invalid", "the floor opens no sessions under a mandate")
        cap = amount_text(payload.get("cap"))
        if not cap:
            raise Refusal("session-voucher-invalid", "cap must be a positive integer as a decimal string")
        self._verify(signer, CAP_DOMAIN + canonical({**self._terms, "sessionId": sid, "account": account, "cap": str(cap)}),
                     payload.get("capSignature"), "cap", "session-voucher-invalid")
        session = OpenSession(self, sid, signer, account, cap)
        cumulative = self._voucher_of(session, payload)
        if cap < MAX_REQUEST_COST or cumulative < COST:
            raise Refusal("session-insufficient", "the cap or voucher does not cover one request", sessionId=sid,
                          required=str(MAX_REQUEST_COST), authorized="0", spent="0", cap=str(cap))
        # ONE statement: the session recorded, its cap held (triggers), this request charged in it.
        try:
            self.conn.execute(OPEN_SESSION, (sid, account, PAYEE, signer, CURRENCY, cap, cumulative, COST, UNITS, self._now))
        except sqlite3.IntegrityError as exc:
            text = str(exc)
            if "floor_sessions.id" in text:
                raise Refusal("invalid-challenge", "challenge has already been used") from None
            if "CHECK constraint" in text:
                raise Refusal("payment-insufficient", "payer account balance is too low for this cap") from None
            raise _refusal_of(text) from None
        if len(self.sessions) >= 10_000:  # bounded, as our seller's; a dropped one is read again
            self.sessions.clear()
        self.sessions[sid] = session
        return session, COST, cumulative

    # -- the session endpoint: close ------------------------------------------------------

    async def endpoint(self, request: web.Request) -> web.Response:
        """POST /.well-known/mpp-session: close (the floor takes no in-band vouchers or top-ups)."""
        authorization = request.headers.get("Authorization")
        try:
            if authorization is None or authorization.lstrip(" \t")[:8].lower() != "payment ":
                raise Refusal("session-voucher-invalid", f"{SESSION_PATH} takes a session credential")
            doc = self._credential(authorization)
            payload = doc["payload"]
            if payload.get("type") != "session" or payload.get("action") != "close":
                raise Refusal("session-voucher-invalid", "the floor's session endpoint takes close only")
            sid = payload.get("sessionId")
            row = self.conn.execute(SESSION_ROW, (sid,)).fetchone() if isinstance(sid, str) and len(sid) <= 128 else None
            if row is None:
                raise Refusal("session-unknown", "no such session at this seller")
            payer, signer, cap, *_ = row
            session = self.sessions.get(sid) or OpenSession(self, sid, signer, payer, cap)
            if payload.get("signer") != signer or doc.get("source", signer) != signer or doc["challenge"].get("id") != sid:
                raise Refusal("session-voucher-invalid", "the session was opened by another key")
            self._verify(signer, CLOSE_DOMAIN + canonical({"sessionId": sid, "realm": REALM, "recipient": PAYEE,
                                                           "ledger": self.ledger_id, "action": "close"}),
                         payload.get("closeSignature"), "close", "session-voucher-invalid")
            cumulative = self._voucher_of(session, payload) if payload.get("voucher") is not None else 0
        except Refusal as problem:
            return self.payment_required(problem)
        now = self._clock()
        # ONE statement: closed; its trigger captures what was spent and releases the rest of the hold.
        self.conn.execute(CLOSE_SESSION, (cumulative, self._now, sid))
        self.sessions.pop(sid, None)
        payer, signer, cap, authorized, spent, units, requests, _ = self.conn.execute(SESSION_ROW, (sid,)).fetchone()
        reference = "capture:" + sid
        claims = {"iss": REALM, "sub": signer, "iat": now, "jti": "close:" + sid, "challengeId": sid, "method": METHOD,
                  "intent": SESSION_INTENT, "reference": sid, "final": True, "closedBy": "buyer", "currency": CURRENCY,
                  "recipient": PAYEE, "account": payer, "cap": str(cap), "authorized": str(authorized), "spent": str(spent),
                  "remaining": "0", "captured": str(spent), "released": str(cap - spent), "settlementRef": reference,
                  "amount": str(spent),
                  "lines": [{"resource": RESOURCE, "unitType": UNIT_TYPE, "unitPrice": str(UNIT_PRICE), "per": str(PER),
                             "units": units, "amount": str(spent), "requests": requests}],
                  "units": units, "requests": requests}
        receipt = self._receipt_header({"status": "success", "method": METHOD, "timestamp": self._now, "reference": sid,
                                        "challengeId": sid, "receipt": self._jws(claims), "intent": SESSION_INTENT,
                                        "authorized": str(authorized), "spent": str(spent), "remaining": "0",
                                        "settlementRef": reference, "final": True})
        body = {"sessionId": sid, "captured": str(spent), "released": str(cap - spent), "receipt": receipt}
        return web.Response(body=json.dumps(body).encode(), content_type="application/json",
                            headers={"Payment-Receipt": receipt, "Cache-Control": "private"})

    async def close(self) -> None:
        self.conn.close()


# ==============================================================================================
# the process
# ==============================================================================================


async def make_floor(args: argparse.Namespace) -> Wire:
    kit = json.loads((Path(args.workdir) / "kit.json").read_text())
    if args.kind == "session":
        if args.identity:
            raise SystemExit("the session floor takes no --identity")
        return SessionFloor(kit, args.ledger)
    return await ChargeFloor.create(kit, args.ledger, args.identity)


async def serve(args: argparse.Namespace) -> dict[str, Any]:
    floor = await make_floor(args)
    app = web.Application()
    floor.routes(app)
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
    await floor.close()
    return {"calls": floor.calls}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("charge", "floor", "session"), help="charge (floor is its old name) or session")
    p.add_argument("--workdir", required=True)
    p.add_argument("--ledger", required=True, help="the floor's ledger: sqlite:///path, or postgresql://... (charge only)")
    p.add_argument("--store", help="ignored: the floor keeps its purchases in the ledger's database")
    p.add_argument("--sessions", help="ignored: the session floor keeps its sessions in the ledger's file")
    p.add_argument("--identity", action="store_true", help="the route requires a mandate chain and proof (charge only)")
    p.add_argument("--profile", help="run under cProfile and write the stats here")
    args = p.parse_args(argv)
    if args.kind == "session" and is_postgres(args.ledger):
        p.error("the session floor keeps its ledger in SQLite only")
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
