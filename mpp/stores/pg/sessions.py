"""The seller's session records on PostgreSQL: the same contract as
:class:`mpp.stores.sessions.SqliteSessionStore`, for seller processes sharing one database.

Where SQLite takes its one write lock (``BEGIN IMMEDIATE``), each change here is one
transaction that first locks the session's row (``SELECT ... FOR NO KEY UPDATE``): every reserve,
commit, voucher and close of one session takes turns, in whatever process it runs, so the value
set aside and spent never exceeds the authorized value (SESSION-USE-02), while different
sessions proceed in parallel. Opening a session under a mandate link takes a transaction-scoped
advisory lock per link, so the seller's share of the link's budget is checked and counted at
once (SESSION-ID-02). Times are kept to the second, as the SQLite store keeps them.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import asyncpg

from mpp.protocol.models import format_rfc3339
from mpp.intents.session import SessionCapExceeded, SessionClosed, SessionInsufficient, SessionTerms, SessionUnknown, Voucher, VoucherInvalid
from mpp.stores.sessions import INSTANCE_TTL, SessionState, UsageLine
from mpp.stores.payments import StoredResponse
from mpp.stores.pg._base import PgStoreBase, stamp

__all__ = ["PgSessionStore", "PgSessionKeys", "PgSessionMandates"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    terms TEXT NOT NULL,
    payer TEXT NOT NULL,
    signer TEXT NOT NULL,
    unit_type TEXT NOT NULL,
    cap BIGINT NOT NULL,
    authorized BIGINT NOT NULL DEFAULT 0,
    voucher_seq BIGINT NOT NULL DEFAULT 0,
    voucher_sig TEXT,
    spent BIGINT NOT NULL DEFAULT 0,
    status TEXT NOT NULL CHECK (status IN ('opening', 'open', 'closing', 'closed')),
    idle_timeout BIGINT NOT NULL,
    identity TEXT,
    opened_at TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ NOT NULL,
    closed_at TIMESTAMPTZ,
    captured BIGINT,
    released BIGINT,
    settlement TEXT,
    final_receipt TEXT,
    CHECK (spent <= authorized AND authorized <= cap)
);
CREATE INDEX IF NOT EXISTS sessions_not_closed ON sessions (last_used_at) WHERE status != 'closed';
CREATE TABLE IF NOT EXISTS session_holds (
    session_id TEXT NOT NULL REFERENCES sessions(id),
    request_id TEXT NOT NULL,
    amount BIGINT NOT NULL,
    owner TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (session_id, request_id)
);
CREATE TABLE IF NOT EXISTS session_links (
    session_id TEXT NOT NULL REFERENCES sessions(id),
    link_key TEXT NOT NULL,
    period TEXT NOT NULL,
    PRIMARY KEY (session_id, link_key)
);
CREATE INDEX IF NOT EXISTS session_links_by_link ON session_links (link_key, period);
CREATE TABLE IF NOT EXISTS seller_instances (
    id TEXT PRIMARY KEY,
    last_seen TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS session_responses (
    session_id TEXT NOT NULL REFERENCES sessions(id),
    idempotency_key TEXT NOT NULL,
    resource TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'done')),
    owner TEXT NOT NULL,
    status INTEGER,
    headers TEXT,
    body BYTEA,
    PRIMARY KEY (session_id, idempotency_key)
);
CREATE TABLE IF NOT EXISTS session_usage (
    session_id TEXT NOT NULL REFERENCES sessions(id),
    request_id TEXT NOT NULL,
    resource TEXT NOT NULL,
    unit_type TEXT NOT NULL,
    unit_price BIGINT NOT NULL,
    per BIGINT NOT NULL,
    units BIGINT NOT NULL,
    amount BIGINT NOT NULL,
    at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (session_id, request_id)
);
"""

_COLUMNS = ("id, terms, payer, signer, unit_type, cap, authorized, voucher_seq, voucher_sig, spent, status, idle_timeout, "
            "identity, opened_at, last_used_at, captured, released, settlement, final_receipt")


def _state(row: asyncpg.Record) -> SessionState:
    (sid, terms, payer, signer, unit_type, cap, authorized, seq, sig, spent, status, idle, identity, opened, last,
     captured, released, settlement, final) = row
    voucher = Voucher(authorized, seq, sig) if sig else None
    return SessionState(sid, SessionTerms.from_json(json.loads(terms)), payer, signer, unit_type, cap, authorized, voucher,
                        spent, status, idle, json.loads(identity) if identity else None, format_rfc3339(opened),
                        format_rfc3339(last), captured, released, settlement, final)


class PgSessionStore(PgStoreBase):
    """``PgSessionStore(pool_or_url)``; ``await store.open()`` (or first use) creates the tables.
    ``keys`` (Idempotency-Keys) and ``mandates`` (the mandate links' shares) are its other facets."""

    _SCHEMA = _SCHEMA
    _LOCK_NAME = "mpp.sessions.schema"

    def __init__(self, pool: asyncpg.Pool | str, *, instance_ttl: timedelta = INSTANCE_TTL, **kwargs: Any) -> None:
        super().__init__(pool, **kwargs)
        self.instance = secrets.token_urlsafe(12)  # this process's name on its reservations
        self.instance_ttl = instance_ttl
        self.keys = PgSessionKeys(self)
        self.mandates = PgSessionMandates(self)

    # -- helpers (each takes a connection inside a transaction) -------------

    async def _beat(self, conn: asyncpg.Connection, now: datetime) -> None:
        await conn.execute("INSERT INTO seller_instances(id, last_seen) VALUES ($1, $2) "
                           "ON CONFLICT (id) DO UPDATE SET last_seen=excluded.last_seen", self.instance, stamp(now))

    async def _held(self, conn: asyncpg.Connection, session_id: str, now: datetime) -> int:
        """Value reserved by requests still running in live seller processes."""
        return int(await conn.fetchval(
            "SELECT COALESCE(SUM(h.amount), 0) FROM session_holds h JOIN seller_instances i ON i.id = h.owner "
            "WHERE h.session_id=$1 AND i.last_seen > $2",
            session_id, stamp(now - self.instance_ttl),
        ))

    # -- the interface ----------------------------------------------------

    async def heartbeat(self, now: datetime) -> None:
        """This process is alive: its reservations still count."""
        pool = await self.pool()
        async with pool.acquire() as conn:
            await self._beat(conn, now)

    async def create(self, terms: SessionTerms, *, payer: str, signer: str, unit_type: str, cap: int, idle_timeout: int,
                     identity: dict[str, Any] | None, now: datetime) -> tuple[SessionState, bool]:
        """Record an opening session; (state, True) if this call created it, (existing, False) if not."""
        at = stamp(now)
        links = identity.get("links") if identity else None
        pool = await self.pool()
        async with pool.acquire() as conn, conn.transaction():
            if links:
                # the seller's own share of each mandate link's budget, checked and counted at once
                # (SESSION-ID-02): one opener per link at a time, links locked in one order
                for key, period in sorted({(key, period) for key, period, _ in links}):
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"mpp.link:{key}:{period}")
                existing = await _get(conn, terms.session_id)
                if existing is not None:  # a repeated open: the session as it is, whatever the budget says now
                    return existing, False
                for key, period, budget in links:
                    held = await _link_held(conn, key, period, exclude=terms.session_id) + identity.get("charged", {}).get(key, 0)
                    if held + cap > budget:
                        from mpp.identity import BudgetExceeded

                        raise BudgetExceeded(f"this seller's share of mandate {key}'s budget ({budget}) would be exceeded",
                                             rule="budget", mandate=key)
            row = await conn.fetchrow(
                "INSERT INTO sessions(id, terms, payer, signer, unit_type, cap, status, idle_timeout, identity, "
                "opened_at, last_used_at) VALUES ($1, $2, $3, $4, $5, $6, 'opening', $7, $8, $9, $9) "
                f"ON CONFLICT (id) DO NOTHING RETURNING {_COLUMNS}",
                terms.session_id, json.dumps(terms.as_json()), payer, signer, unit_type, cap, idle_timeout,
                json.dumps(identity) if identity is not None else None, at,
            )
            if row is None:
                return await _must(conn, terms.session_id, usable=False), False
            if links:
                await conn.executemany(
                    "INSERT INTO session_links(session_id, link_key, period) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    [(terms.session_id, key, period) for key, period, _ in links],
                )
            return _state(row), True

    async def get(self, session_id: str) -> SessionState | None:
        """The session as stored, whatever its status, or None if this store has no record of it."""
        pool = await self.pool()
        return await _get(pool, session_id)

    async def mark_open(self, session_id: str, cap: int) -> SessionState:
        """The ledger holds the cap (SESSION-OPEN-03): an ``opening`` session becomes ``open``, its cap raised
        to ``cap`` if that is more, in one UPDATE; the state after. A session in another status is returned
        unchanged; SessionUnknown if there is none."""
        pool = await self.pool()
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                f"UPDATE sessions SET status='open', cap=GREATEST(cap, $2) WHERE id=$1 AND status='opening' RETURNING {_COLUMNS}",
                session_id, cap)
            return _state(row) if row else await _must(conn, session_id, usable=False)

    async def set_cap(self, session_id: str, cap: int) -> SessionState:
        """A top-up the ledger has held (SESSION-VOUCHER-08): the open session's cap rises to ``cap`` (never
        falls), under the session's row lock; the state after. SessionUnknown, or SessionClosed unless ``open``."""
        pool = await self.pool()
        async with pool.acquire() as conn, conn.transaction():
            await _must(conn, session_id, lock=True)
            return await _update(conn, "cap=GREATEST(cap, $2)", session_id, cap)

    async def advance(self, session_id: str, voucher: Voucher, now: datetime) -> SessionState:
        """Accept a (signature-checked) voucher: a higher one raises the authorized value; an
        equal or lower one is a harmless retry that changes nothing."""
        pool = await self.pool()
        async with pool.acquire() as conn, conn.transaction():
            await _advance(conn, await _must(conn, session_id, lock=True), voucher)
            return await _update(conn, "last_used_at=$2", session_id, stamp(now))

    async def reserve(self, session_id: str, request_id: str, amount: int, now: datetime,
                      voucher: Voucher | None = None) -> SessionState:
        """Set ``amount`` of the authorized value aside for one request, or raise SessionInsufficient;
        with ``voucher`` (signature-checked), accept it first, in the same transaction."""
        at = stamp(now)
        pool = await self.pool()
        async with pool.acquire() as conn, conn.transaction():
            state = await _must(conn, session_id, lock=True)
            if voucher is not None:
                state = await _advance(conn, state, voucher)
            held = await self._held(conn, session_id, now)
            required = state.spent + held + amount
            if required > state.authorized:
                raise SessionInsufficient(
                    f"this request needs vouchers for {required}; {state.authorized} accepted so far",
                    sessionId=session_id, required=str(required), authorized=str(state.authorized),
                    spent=str(state.spent), cap=str(state.cap),
                )
            await self._beat(conn, now)
            await conn.execute("INSERT INTO session_holds(session_id, request_id, amount, owner, created_at) VALUES ($1, $2, $3, $4, $5)",
                               session_id, request_id, amount, self.instance, at)
            await conn.execute("UPDATE sessions SET last_used_at=$2 WHERE id=$1", session_id, at)
            return state

    async def commit(self, session_id: str, request_id: str, *, resource: str, unit_price: int, per: int, units: int,
                     amount: int, now: datetime, release_hold: bool = True, idempotency_key: str | None = None,
                     render: Callable[[SessionState], StoredResponse | None] | None = None) -> SessionState:
        """Count ``amount`` as spent and add it to the request's usage line, in one transaction.

        Without a hold (streaming), the amount must fit in the authorized value still free. With
        an ``idempotency_key``, ``render(state after the commit)`` gives the response to keep for
        retries, stored in the same transaction (SESSION-USE-06)."""
        at = stamp(now)
        pool = await self.pool()
        async with pool.acquire() as conn, conn.transaction():
            state = await _must(conn, session_id, lock=True)  # nothing is spent once a close has begun (SESSION-STREAM-05)
            hold = await conn.fetchval("SELECT amount FROM session_holds WHERE session_id=$1 AND request_id=$2",
                                       session_id, request_id)
            if hold is None:
                free = state.authorized - state.spent - await self._held(conn, session_id, now)
                if amount > free:
                    raise SessionInsufficient(
                        f"this chunk needs vouchers for {state.spent + amount}; {state.authorized} accepted so far",
                        sessionId=session_id, required=str(state.authorized - free + amount),
                        authorized=str(state.authorized), spent=str(state.spent), cap=str(state.cap),
                    )
            elif amount > hold:
                raise ValueError(f"request used {amount}, more than the {hold} reserved for it")
            await conn.execute(
                "INSERT INTO session_usage(session_id, request_id, resource, unit_type, unit_price, per, units, amount, at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (session_id, request_id) DO UPDATE SET "
                "units = session_usage.units + excluded.units, amount = session_usage.amount + excluded.amount, at = excluded.at",
                session_id, request_id, resource, state.unit_type, unit_price, per, units, amount, at,
            )
            if hold is not None and release_hold:
                await conn.execute("DELETE FROM session_holds WHERE session_id=$1 AND request_id=$2", session_id, request_id)
            after = await _update(conn, "spent = spent + $2, last_used_at=$3", session_id, amount, at) if amount else state
            kept = render(after) if render is not None else None
            if idempotency_key is not None and kept is not None:
                await conn.execute(
                    "UPDATE session_responses SET state='done', status=$3, headers=$4, body=$5 "
                    "WHERE session_id=$1 AND idempotency_key=$2",
                    session_id, idempotency_key, kept.status, json.dumps(kept.headers), bytes(kept.body))
            return after

    async def release(self, session_id: str, request_id: str) -> None:
        """Drop the hold of ``request_id`` with nothing spent (SESSION-USE-05), in one DELETE; a request with
        no hold is ignored."""
        pool = await self.pool()
        await pool.execute("DELETE FROM session_holds WHERE session_id=$1 AND request_id=$2", session_id, request_id)

    async def begin_close(self, session_id: str, now: datetime) -> SessionState:
        """Stop new spending. Refuses while requests are in flight (RequestInProgress)."""
        pool = await self.pool()
        async with pool.acquire() as conn, conn.transaction():
            state = await _must(conn, session_id, usable=False, lock=True)
            if state.status in ("closing", "closed"):
                return state
            if await self._held(conn, session_id, now):
                from mpp.protocol.errors import RequestInProgress

                raise RequestInProgress("requests of this session are still running; close again when they finish")
            return await _update(conn, "status='closing'", session_id)

    async def finish_close(self, session_id: str, *, captured: int, released: int, settlement: str, final_receipt: str,
                           now: datetime) -> SessionState:
        """Record the close in one UPDATE: a ``closing`` session becomes ``closed`` with what was captured and
        released (base units), the capture's reference and the final receipt (SESSION-CLOSE-02); the state
        after. A session not ``closing`` is returned unchanged; SessionUnknown if there is none."""
        pool = await self.pool()
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                "UPDATE sessions SET status='closed', captured=$2, released=$3, settlement=$4, final_receipt=$5, closed_at=$6 "
                f"WHERE id=$1 AND status='closing' RETURNING {_COLUMNS}",
                session_id, captured, released, settlement, final_receipt, stamp(now),
            )
            return _state(row) if row else await _must(conn, session_id, usable=False)

    async def usage(self, session_id: str) -> list[UsageLine]:
        """The session's usage lines for its final receipt: per resource, unit type, unit price and ``per``,
        units and amount summed and requests counted, in order of first use."""
        pool = await self.pool()
        rows = await pool.fetch(
            "SELECT resource, unit_type, unit_price, per, SUM(units), SUM(amount), COUNT(*) FROM session_usage "
            "WHERE session_id=$1 GROUP BY resource, unit_type, unit_price, per ORDER BY MIN(at), resource",
            session_id,
        )
        return [UsageLine(r[0], r[1], r[2], r[3], int(r[4]), int(r[5]), int(r[6])) for r in rows]

    async def idle(self, now: datetime) -> list[str]:
        """Sessions nobody has used for their idle timeout (or left opening/closing by a crash)."""
        pool = await self.pool()
        rows = await pool.fetch(
            "SELECT id FROM sessions WHERE status != 'closed' AND last_used_at + idle_timeout * interval '1 second' <= $1 "
            "ORDER BY opened_at, id",
            now,
        )
        return [r[0] for r in rows]

    async def closed_between(self, since: datetime, until: datetime):
        """Sessions closed in [since, until] (to the second), as
        :meth:`mpp.stores.sessions.SqliteSessionStore.closed_between`."""
        from mpp.stores.sessions import ClosedSession

        pool = await self.pool()
        rows = await pool.fetch(
            f"SELECT {_COLUMNS}, closed_at FROM sessions WHERE status='closed' AND closed_at >= $1 AND closed_at <= $2 "
            "ORDER BY closed_at, id",
            stamp(since), stamp(until),
        )
        return [ClosedSession(_state(tuple(row)[:-1]), format_rfc3339(row[-1]), await self.usage(row[0])) for row in rows]


class PgSessionKeys:
    """``store.keys``: a session's Idempotency-Keys (SESSION-USE-06), in the store's database and
    under its process's heartbeat."""

    def __init__(self, store: PgSessionStore) -> None:
        self._store = store

    async def claim(self, session_id: str, key: str, resource: str) -> tuple[str, StoredResponse | None]:
        """An Idempotency-Key under a session (SESSION-USE-06): ("new", None) for the first request
        with it, ("running", None) while that one runs, ("done", response) once it answered, and
        ("conflict", None) if the key was used for another resource. A running key whose process
        died never committed (a commit marks it done in its own transaction): a retry takes it
        over as "new", and is charged once."""
        now = datetime.now(timezone.utc)
        pool = await self._store.pool()
        async with pool.acquire() as conn:
            await self._store._beat(conn, now)
            while True:
                async with conn.transaction():
                    inserted = await conn.fetchval(
                        "INSERT INTO session_responses(session_id, idempotency_key, resource, state, owner) "
                        "VALUES ($1, $2, $3, 'running', $4) ON CONFLICT (session_id, idempotency_key) DO NOTHING RETURNING 1",
                        session_id, key, resource, self._store.instance,
                    )
                    if inserted is not None:
                        return "new", None
                    # the row exists (its insert committed, or we would have waited): lock it, so one
                    # retry at a time may take over a dead owner's key
                    row = await conn.fetchrow(
                        "SELECT r.resource, r.state, r.status, r.headers, r.body, "
                        "EXISTS (SELECT 1 FROM seller_instances i WHERE i.id = r.owner AND i.last_seen > $3) "
                        "FROM session_responses r WHERE r.session_id=$1 AND r.idempotency_key=$2 FOR UPDATE OF r",
                        session_id, key, stamp(now - self._store.instance_ttl),
                    )
                    if row is None:  # dropped between our insert and our read (the first request failed)
                        continue
                    if row[0] != resource:
                        return "conflict", None
                    if row[1] == "running":
                        if row[5]:
                            return "running", None
                        await conn.execute("UPDATE session_responses SET owner=$3 WHERE session_id=$1 AND idempotency_key=$2",
                                           session_id, key, self._store.instance)
                        return "new", None
                    return "done", StoredResponse(row[2], [tuple(h) for h in json.loads(row[3])], bytes(row[4]))

    async def save(self, session_id: str, key: str, response: StoredResponse) -> None:
        """Keep ``response`` for a claimed key and mark it ``done`` (one UPDATE): later claims replay it. A
        key not claimed is not created."""
        pool = await self._store.pool()
        await pool.execute(
            "UPDATE session_responses SET state='done', status=$3, headers=$4, body=$5 WHERE session_id=$1 AND idempotency_key=$2",
            session_id, key, response.status, json.dumps(response.headers), bytes(response.body))

    async def drop(self, session_id: str, key: str) -> None:
        """Forget a key still ``running`` (its request failed: nothing was charged), so a retry runs anew; a
        ``done`` key is kept."""
        pool = await self._store.pool()
        await pool.execute("DELETE FROM session_responses WHERE session_id=$1 AND idempotency_key=$2 AND state='running'",
                           session_id, key)


class PgSessionMandates:
    """``store.mandates``: this seller's share of each mandate link's budget, as its sessions hold it."""

    def __init__(self, store: PgSessionStore) -> None:
        self._store = store

    async def held(self, periods: dict[str, str]) -> dict[str, int]:
        """What the store's sessions under each link (key: period) hold or took."""
        pool = await self._store.pool()
        return {key: await _link_held(pool, key, period) for key, period in periods.items()}


async def _get(conn: asyncpg.Connection | asyncpg.Pool, session_id: str, *, lock: bool = False) -> SessionState | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM sessions WHERE id=$1" + (" FOR NO KEY UPDATE" if lock else ""), session_id)
    return _state(row) if row else None


async def _must(conn: asyncpg.Connection, session_id: str, *, usable: bool = True, lock: bool = False) -> SessionState:
    state = await _get(conn, session_id, lock=lock)
    if state is None:
        raise SessionUnknown("no such session here")
    if usable and state.status != "open":
        raise SessionClosed(f"session is {state.status}")
    return state


async def _advance(conn: asyncpg.Connection, state: SessionState, voucher: Voucher) -> SessionState:
    """The voucher judged against the (locked) session (SESSION-VOUCHER-02..04): the state with it accepted."""
    if voucher.cumulative > state.cap:
        raise SessionCapExceeded(f"voucher for {voucher.cumulative} exceeds the session cap {state.cap}",
                                 sessionId=state.session_id, cap=str(state.cap), authorized=str(state.authorized))
    if voucher.cumulative <= state.authorized:
        return state  # a stale voucher: a harmless retry
    previous = state.voucher.sequence if state.voucher else 0
    if voucher.sequence <= previous:
        raise VoucherInvalid(f"a higher voucher must carry a sequence above {previous}")
    return await _update(conn, "authorized=$2, voucher_seq=$3, voucher_sig=$4", state.session_id, voucher.cumulative,
                         voucher.sequence, voucher.signature)


async def _update(conn: asyncpg.Connection, sql: str, *args: Any) -> SessionState:
    """Run ``UPDATE sessions SET ... WHERE id=$1`` and return the row as it is now."""
    row = await conn.fetchrow(f"UPDATE sessions SET {sql} WHERE id=$1 RETURNING {_COLUMNS}", *args)
    assert row is not None  # callers hold the row's lock
    return _state(row)


async def _link_held(conn: asyncpg.Connection | asyncpg.Pool, key: str, period: str, *, exclude: str | None = None) -> int:
    """What this seller's sessions under a mandate link hold or took: the cap while open, the
    capture once closed."""
    return int(await conn.fetchval(
        "SELECT COALESCE(SUM(CASE WHEN s.status = 'closed' THEN s.captured ELSE s.cap END), 0) "
        "FROM session_links l JOIN sessions s ON s.id = l.session_id WHERE l.link_key=$1 AND l.period=$2 AND s.id != $3",
        key, period, exclude or "",
    ))
