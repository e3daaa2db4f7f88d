"""The seller's session records: the highest voucher accepted, what was spent, usage lines.

Every change is one ``BEGIN IMMEDIATE`` transaction, so seller processes sharing the file
never both spend the same authorized value. The voucher and the spending a response depends
on are committed before that response is released (SESSION-USE-04), so a seller killed at
any point restarts with at most value it never delivered left uncaptured, and never more.

The interface is async so that a networked database can stand behind it.
"""

from __future__ import annotations

import functools
import json
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Protocol

from mpp.stores.sqlite import connect, immediate
from mpp.protocol.models import format_rfc3339, parse_rfc3339
from mpp.stores.payments import StoredResponse
from mpp.intents.session import SessionCapExceeded, SessionClosed, SessionInsufficient, SessionTerms, SessionUnknown, Voucher, VoucherInvalid

__all__ = ["SessionState", "UsageLine", "SessionStore", "SessionKeys", "SessionMandates", "SqliteSessionStore", "SqliteSessionKeys",
           "SqliteSessionMandates", "ClosedSession", "INSTANCE_TTL"]

INSTANCE_TTL = timedelta(seconds=15)
"""A reservation belongs to the seller process that made it. Each process writes a heartbeat with every
reservation and from its sweeper; reservations of a process silent for longer than this died with it
(SESSION-CLOSE-05): they no longer count against the authorized value and no longer hold up a close."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    terms TEXT NOT NULL,
    payer TEXT NOT NULL,
    signer TEXT NOT NULL,
    unit_type TEXT NOT NULL,
    cap INTEGER NOT NULL,
    authorized INTEGER NOT NULL DEFAULT 0,
    voucher_seq INTEGER NOT NULL DEFAULT 0,
    voucher_sig TEXT,
    spent INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL CHECK (status IN ('opening', 'open', 'closing', 'closed')),
    idle_timeout INTEGER NOT NULL,
    identity TEXT,
    opened_at TEXT NOT NULL,
    last_used_at TEXT NOT NULL,
    closed_at TEXT,
    captured INTEGER,
    released INTEGER,
    settlement TEXT,
    final_receipt TEXT,
    CHECK (spent <= authorized AND authorized <= cap)
);
CREATE TABLE IF NOT EXISTS session_holds (
    session_id TEXT NOT NULL REFERENCES sessions(id),
    request_id TEXT NOT NULL,
    amount INTEGER NOT NULL,
    owner TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (session_id, request_id)
);
CREATE TABLE IF NOT EXISTS session_links (
    session_id TEXT NOT NULL REFERENCES sessions(id),
    link_key TEXT NOT NULL,
    period TEXT NOT NULL,
    PRIMARY KEY (session_id, link_key)
);
CREATE TABLE IF NOT EXISTS seller_instances (
    id TEXT PRIMARY KEY,
    last_seen TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS session_responses (
    session_id TEXT NOT NULL REFERENCES sessions(id),
    idempotency_key TEXT NOT NULL,
    resource TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'done')),
    owner TEXT NOT NULL,
    status INTEGER,
    headers TEXT,
    body BLOB,
    PRIMARY KEY (session_id, idempotency_key)
);
CREATE TABLE IF NOT EXISTS session_usage (
    session_id TEXT NOT NULL REFERENCES sessions(id),
    request_id TEXT NOT NULL,
    resource TEXT NOT NULL,
    unit_type TEXT NOT NULL,
    unit_price INTEGER NOT NULL,
    per INTEGER NOT NULL,
    units INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (session_id, request_id)
)
"""


@dataclass(frozen=True)
class SessionState:
    """A metered session as the seller's store holds it: its terms, payer and signer, the cap held
    at the ledger, the value authorized by the latest voucher, what was spent, its status and idle
    timeout, and the identity (agent, principal, mandate chain) it was opened under."""

    session_id: str
    terms: SessionTerms
    payer: str
    signer: str
    unit_type: str
    cap: int
    authorized: int
    voucher: Voucher | None
    spent: int
    status: str
    idle_timeout: int
    identity: dict[str, Any] | None
    opened_at: str
    last_used_at: str
    captured: int | None = None
    released: int | None = None
    settlement: str | None = None
    final_receipt: str | None = None

    @property
    def remaining(self) -> int:
        """Authorized value not yet spent, in base units (``authorized - spent``); holds of requests still
        running are not subtracted."""
        return self.authorized - self.spent


@dataclass(frozen=True)
class UsageLine:
    """One line of a session's usage: the units of one resource at one unit price, the amount they
    cost (in base units) and how many requests used them; listed in the final receipt."""

    resource: str
    unit_type: str
    unit_price: int
    per: int
    units: int
    amount: int
    requests: int

    def as_json(self) -> dict[str, Any]:
        """The line as the final receipt lists it: camelCase keys, ``unitPrice``, ``per`` and ``amount`` as
        decimal strings, ``units`` and ``requests`` as numbers."""
        return {"resource": self.resource, "unitType": self.unit_type, "unitPrice": str(self.unit_price), "per": str(self.per),
                "units": self.units, "amount": str(self.amount), "requests": self.requests}


class SessionKeys(Protocol):
    """``store.keys``: the Idempotency-Keys of requests under a session, and the responses kept for them."""

    async def claim(self, session_id: str, key: str, resource: str) -> tuple[str, StoredResponse | None]:
        """Claim Idempotency-Key ``key`` for a request to ``resource`` (SESSION-USE-06): ("new", None) for the
        first request with it, now running under this process; ("running", None) while that one runs in a live
        process; ("done", response) once it answered; ("conflict", None) if the key was used for another
        resource. A key whose process died while running is taken over as "new"."""
    async def save(self, session_id: str, key: str, response: StoredResponse) -> None:
        """Keep ``response`` for a claimed key and mark it ``done``: later claims replay it. A key not
        claimed is not created."""
    async def drop(self, session_id: str, key: str) -> None:
        """Forget a key still ``running`` (its request failed: nothing was charged), so a retry runs anew; a
        ``done`` key is kept."""


class SessionMandates(Protocol):
    """``store.mandates``: what this seller's sessions hold or took under each mandate link."""

    async def held(self, periods: dict[str, str]) -> dict[str, int]:
        """What this seller's sessions under each mandate link (``{link key: period key}``) hold or took, in
        base units: a session's cap until it is closed, its capture after (IDENT-BUD-04, SESSION-ID-02)."""


class SessionStore(Protocol):
    """The session records; the Idempotency-Keys under them are ``keys``, the mandate links'
    shares ``mandates``."""

    keys: SessionKeys
    mandates: SessionMandates

    async def create(self, terms: SessionTerms, *, payer: str, signer: str, unit_type: str, cap: int, idle_timeout: int,
                     identity: dict[str, Any] | None, now: datetime) -> tuple[SessionState, bool]:
        """Record a session ``opening``: its terms, payer account, signer, cap (base units), idle timeout
        (seconds) and the identity it was opened under; ``(state, True)`` if this call created it, ``(existing,
        False)`` if it was there already. Under mandate links (``identity["links"]``) the seller's share of each
        link's budget is checked and counted in the same transaction (SESSION-ID-02): BudgetExceeded if the
        link's other sessions here, plus ``identity["charged"]``, plus ``cap`` exceed its budget."""
    async def get(self, session_id: str) -> SessionState | None:
        """The session as stored, whatever its status, or None if this store has no record of it."""
    async def mark_open(self, session_id: str, cap: int) -> SessionState:
        """The ledger holds the cap (SESSION-OPEN-03): an ``opening`` session becomes ``open``, its cap raised
        to ``cap`` if that is more; the state after. A session in another status is returned unchanged;
        SessionUnknown if there is none."""
    async def set_cap(self, session_id: str, cap: int) -> SessionState:
        """A top-up the ledger has held (SESSION-VOUCHER-08): the open session's cap rises to ``cap`` (a cap at
        or below the current one changes nothing); the state after. SessionUnknown, or SessionClosed unless the
        session is ``open``."""
    async def advance(self, session_id: str, voucher: Voucher, now: datetime) -> SessionState:
        """Accept a signature-checked voucher and mark the session used at ``now``: a higher cumulative with a
        higher sequence becomes the authorized value; an equal or lower one changes nothing (SESSION-VOUCHER-02..04).
        SessionCapExceeded above the cap, VoucherInvalid for a sequence not above the stored one; SessionUnknown,
        or SessionClosed unless the session is ``open``."""
    async def reserve(self, session_id: str, request_id: str, amount: int, now: datetime,
                      voucher: Voucher | None = None) -> SessionState:
        """Set ``amount`` (base units) aside for ``request_id``, held by this process, only if spent + what
        live processes hold + ``amount`` stays within the authorized value (SESSION-USE-01, SESSION-USE-02);
        with ``voucher`` (signature-checked), accept it first, in the same transaction. The state (the hold is
        not in it); SessionInsufficient otherwise (SESSION-USE-03), and the refusals of :meth:`advance`."""
    async def commit(self, session_id: str, request_id: str, *, resource: str, unit_price: int, per: int, units: int,
                     amount: int, now: datetime, release_hold: bool = True, idempotency_key: str | None = None,
                     render: Callable[[SessionState], StoredResponse | None] | None = None) -> SessionState:
        """Count ``amount`` (base units) as spent and add ``units`` to the request's usage line, in one
        transaction, before the response is released (SESSION-USE-04); the state after. ``amount`` may not exceed
        the request's hold (ValueError); without a hold (a stream's chunk) it must fit in the authorized value
        still free (SessionInsufficient). ``release_hold=False`` leaves the hold in place after the commit. With
        ``idempotency_key``, ``render(state after)`` is the response kept for retries, in the same transaction
        (SESSION-USE-06). SessionUnknown; SessionClosed once a close has begun (SESSION-STREAM-05)."""
    async def release(self, session_id: str, request_id: str) -> None:
        """Drop the hold of ``request_id`` with nothing spent (its handler failed or answered an error,
        SESSION-USE-05); a request with no hold is ignored."""
    async def heartbeat(self, now: datetime) -> None:
        """This process is alive at ``now``: its holds keep counting, and keep a close waiting, for the store's
        ``instance_ttl`` (:data:`INSTANCE_TTL` by default) more (SESSION-CLOSE-05)."""
    async def begin_close(self, session_id: str, now: datetime) -> SessionState:
        """Stop new spending: the session becomes ``closing``, and is returned; one already ``closing`` or
        ``closed`` is returned as it is. RequestInProgress while live processes hold value for its requests
        (SESSION-CLOSE-01); SessionUnknown if there is none."""
    async def finish_close(self, session_id: str, *, captured: int, released: int, settlement: str, final_receipt: str,
                           now: datetime) -> SessionState:
        """Record the close: a ``closing`` session becomes ``closed`` with what the ledger captured and released
        (base units), the capture's reference (``settlement``) and the final receipt (the ``Payment-Receipt``
        value), kept for later closes (SESSION-CLOSE-02); the state after. A session not ``closing`` is returned
        unchanged; SessionUnknown if there is none."""
    async def usage(self, session_id: str) -> list[UsageLine]:
        """The session's usage, for its final receipt: one line per resource, unit type, unit price and
        ``per``, its units and amount summed and its requests counted, in order of first use."""
    async def idle(self, now: datetime) -> list[str]:
        """Ids of the sessions not ``closed`` whose last use is at least their idle timeout before ``now``
        (SESSION-CLOSE-03), including those a crash left ``opening`` or ``closing``."""
    async def close(self) -> None:
        """Release the store's connection or pool."""


_COLUMNS = ("id, terms, payer, signer, unit_type, cap, authorized, voucher_seq, voucher_sig, spent, status, idle_timeout, "
            "identity, opened_at, last_used_at, captured, released, settlement, final_receipt")


@functools.lru_cache(maxsize=1024)
def _terms(text: str) -> SessionTerms:
    """A session's terms never change once written, and every request reads them again: parsed
    once per process (SessionTerms is immutable)."""
    return SessionTerms.from_json(json.loads(text))


def _state(row: tuple) -> SessionState:
    (sid, terms, payer, signer, unit_type, cap, authorized, seq, sig, spent, status, idle, identity, opened, last,
     captured, released, settlement, final) = row
    voucher = Voucher(authorized, seq, sig) if sig else None
    return SessionState(sid, _terms(terms), payer, signer, unit_type, cap, authorized, voucher,
                        spent, status, idle, json.loads(identity) if identity else None, opened, last,
                        captured, released, settlement, final)


class SqliteSessionStore:
    """The session records in SQLite; ``keys`` (Idempotency-Keys) and ``mandates`` (the mandate
    links' shares) are its other facets, on the same connection."""

    def __init__(self, location: str, *, instance_ttl: timedelta = INSTANCE_TTL) -> None:
        self._conn = connect(location, _SCHEMA)
        self.instance = secrets.token_urlsafe(12)  # this process's name on its reservations
        self.instance_ttl = instance_ttl
        self._last_beat: datetime | None = None
        self.keys = SqliteSessionKeys(self)
        self.mandates = SqliteSessionMandates(self)

    async def heartbeat(self, now: datetime) -> None:
        """This process is alive: its reservations still count."""
        with immediate(self._conn) as c:
            self._beat(c, now)

    def _beat(self, c, now: datetime, *, lazy: bool = False) -> None:
        if lazy and self._last_beat is not None and now - self._last_beat < self.instance_ttl / 8:
            return  # beaten recently enough: a reservation need not write the heartbeat every time
        self._last_beat = now
        c.execute("INSERT INTO seller_instances(id, last_seen) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET last_seen=excluded.last_seen",
                  (self.instance, format_rfc3339(now)))

    async def close(self) -> None:
        """Close the store's connection to the file (``keys`` and ``mandates`` use it too)."""
        self._conn.close()

    def _get(self, c, session_id: str) -> SessionState | None:
        row = c.execute(f"SELECT {_COLUMNS} FROM sessions WHERE id=?", (session_id,)).fetchone()
        return _state(row) if row else None

    def _must(self, c, session_id: str, *, usable: bool = True) -> SessionState:
        state = self._get(c, session_id)
        if state is None:
            raise SessionUnknown("no such session here")
        if usable and state.status != "open":
            raise SessionClosed(f"session is {state.status}")
        return state

    async def create(self, terms: SessionTerms, *, payer: str, signer: str, unit_type: str, cap: int, idle_timeout: int,
                     identity: dict[str, Any] | None, now: datetime) -> tuple[SessionState, bool]:
        """Record an opening session; (state, True) if this call created it, (existing, False) if not."""
        stamp = format_rfc3339(now)
        with immediate(self._conn) as c:
            existing = self._get(c, terms.session_id)
            if existing is not None:  # a repeated open: the session as it is, whatever the budget says now
                return existing, False
            if identity and identity.get("links"):
                # the seller's own share of each mandate link's budget, checked and counted at once
                # (SESSION-ID-02): what the link's other sessions here hold, plus the caller's own charges
                for key, period, budget in identity["links"]:
                    held = _link_held(c, key, period, exclude=terms.session_id) + identity.get("charged", {}).get(key, 0)
                    if held + cap > budget:
                        from mpp.identity import BudgetExceeded

                        raise BudgetExceeded(f"this seller's share of mandate {key}'s budget ({budget}) would be exceeded",
                                             rule="budget", mandate=key)
            cur = c.execute(
                "INSERT OR IGNORE INTO sessions(id, terms, payer, signer, unit_type, cap, status, idle_timeout, identity, "
                "opened_at, last_used_at) VALUES (?, ?, ?, ?, ?, ?, 'opening', ?, ?, ?, ?)",
                (terms.session_id, json.dumps(terms.as_json()), payer, signer, unit_type, cap, idle_timeout,
                 json.dumps(identity) if identity is not None else None, stamp, stamp),
            )
            if cur.rowcount == 1 and identity and identity.get("links"):
                for key, period, _ in identity["links"]:
                    c.execute("INSERT OR IGNORE INTO session_links(session_id, link_key, period) VALUES (?, ?, ?)",
                              (terms.session_id, key, period))
            return self._must(c, terms.session_id, usable=False), cur.rowcount == 1

    async def get(self, session_id: str) -> SessionState | None:
        """The session as stored, whatever its status, or None if this store has no record of it."""
        return self._get(self._conn, session_id)

    async def mark_open(self, session_id: str, cap: int) -> SessionState:
        """The ledger holds the cap (SESSION-OPEN-03): an ``opening`` session becomes ``open``, its cap raised
        to ``cap`` if that is more, in one IMMEDIATE transaction; the state after. A session in another status
        is returned unchanged; SessionUnknown if there is none."""
        with immediate(self._conn) as c:
            c.execute("UPDATE sessions SET status='open', cap=MAX(cap, ?) WHERE id=? AND status='opening'", (cap, session_id))
            return self._must(c, session_id, usable=False)

    async def set_cap(self, session_id: str, cap: int) -> SessionState:
        """A top-up the ledger has held (SESSION-VOUCHER-08): the open session's cap rises to ``cap`` (never
        falls), in one IMMEDIATE transaction; the state after. SessionUnknown, or SessionClosed unless ``open``."""
        with immediate(self._conn) as c:
            self._must(c, session_id)
            c.execute("UPDATE sessions SET cap=MAX(cap, ?) WHERE id=?", (cap, session_id))
            return self._must(c, session_id)

    async def advance(self, session_id: str, voucher: Voucher, now: datetime) -> SessionState:
        """Accept a (signature-checked) voucher: a higher one raises the authorized value; an
        equal or lower one is a harmless retry that changes nothing."""
        with immediate(self._conn) as c:
            state = self._advance(c, self._must(c, session_id), voucher)
            c.execute("UPDATE sessions SET last_used_at=? WHERE id=?", (format_rfc3339(now), session_id))
            return state

    @staticmethod
    def _advance(c, state: SessionState, voucher: Voucher) -> SessionState:
        """The voucher judged against the session in the caller's transaction (SESSION-VOUCHER-02..04):
        the state with it accepted."""
        if voucher.cumulative > state.cap:
            raise SessionCapExceeded(f"voucher for {voucher.cumulative} exceeds the session cap {state.cap}",
                                     sessionId=state.session_id, cap=str(state.cap), authorized=str(state.authorized))
        if voucher.cumulative <= state.authorized:
            return state  # a stale voucher: a harmless retry
        previous = state.voucher.sequence if state.voucher else 0
        if voucher.sequence <= previous:
            raise VoucherInvalid(f"a higher voucher must carry a sequence above {previous}")
        c.execute("UPDATE sessions SET authorized=?, voucher_seq=?, voucher_sig=? WHERE id=?",
                  (voucher.cumulative, voucher.sequence, voucher.signature, state.session_id))
        return replace(state, authorized=voucher.cumulative, voucher=voucher)

    def _held(self, c, session_id: str, now: datetime) -> int:
        """Value reserved by requests still running in live seller processes."""
        return c.execute(
            "SELECT COALESCE(SUM(h.amount), 0) FROM session_holds h JOIN seller_instances i ON i.id = h.owner "
            "WHERE h.session_id=? AND i.last_seen > ?",
            (session_id, format_rfc3339(now - self.instance_ttl)),
        ).fetchone()[0]

    async def reserve(self, session_id: str, request_id: str, amount: int, now: datetime,
                      voucher: Voucher | None = None) -> SessionState:
        """Set ``amount`` of the authorized value aside for one request, or raise SessionInsufficient;
        with ``voucher`` (signature-checked), accept it first, in the same transaction."""
        with immediate(self._conn) as c:
            state = self._must(c, session_id)
            if voucher is not None:
                state = self._advance(c, state, voucher)
            held = self._held(c, session_id, now)
            required = state.spent + held + amount
            if required > state.authorized:
                raise SessionInsufficient(
                    f"this request needs vouchers for {required}; {state.authorized} accepted so far",
                    sessionId=session_id, required=str(required), authorized=str(state.authorized),
                    spent=str(state.spent), cap=str(state.cap),
                )
            self._beat(c, now, lazy=True)
            c.execute("INSERT INTO session_holds(session_id, request_id, amount, owner, created_at) VALUES (?, ?, ?, ?, ?)",
                      (session_id, request_id, amount, self.instance, format_rfc3339(now)))
            c.execute("UPDATE sessions SET last_used_at=? WHERE id=?", (format_rfc3339(now), session_id))
            return state

    async def commit(self, session_id: str, request_id: str, *, resource: str, unit_price: int, per: int, units: int,
                     amount: int, now: datetime, release_hold: bool = True, idempotency_key: str | None = None,
                     render: Callable[[SessionState], StoredResponse | None] | None = None) -> SessionState:
        """Count ``amount`` as spent and add it to the request's usage line, in one transaction.

        Without a hold (streaming), the amount must fit in the authorized value still free. With
        an ``idempotency_key``, ``render(state after the commit)`` gives the response to keep for
        retries, stored in the same transaction: a retry finds either the charged request's
        response or no charge at all, whatever happens to this process (SESSION-USE-06)."""
        stamp = format_rfc3339(now)
        with immediate(self._conn) as c:
            state = self._must(c, session_id)  # nothing is spent once a close has begun (SESSION-STREAM-05)
            hold = c.execute("SELECT amount FROM session_holds WHERE session_id=? AND request_id=?",
                             (session_id, request_id)).fetchone()
            if hold is None:
                free = state.authorized - state.spent - self._held(c, session_id, now)
                if amount > free:
                    raise SessionInsufficient(
                        f"this chunk needs vouchers for {state.spent + amount}; {state.authorized} accepted so far",
                        sessionId=session_id, required=str(state.authorized - free + amount),
                        authorized=str(state.authorized), spent=str(state.spent), cap=str(state.cap),
                    )
            elif amount > hold[0]:
                raise ValueError(f"request used {amount}, more than the {hold[0]} reserved for it")
            if amount:
                c.execute("UPDATE sessions SET spent = spent + ?, last_used_at=? WHERE id=?", (amount, stamp, session_id))
            c.execute(
                "INSERT INTO session_usage(session_id, request_id, resource, unit_type, unit_price, per, units, amount, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(session_id, request_id) DO UPDATE SET "
                "units = units + excluded.units, amount = amount + excluded.amount, at = excluded.at",
                (session_id, request_id, resource, state.unit_type, unit_price, per, units, amount, stamp),
            )
            if hold is not None and release_hold:
                c.execute("DELETE FROM session_holds WHERE session_id=? AND request_id=?", (session_id, request_id))
            after = self._must(c, session_id, usable=False)
            kept = render(after) if render is not None else None
            if idempotency_key is not None and kept is not None:
                c.execute("UPDATE session_responses SET state='done', status=?, headers=?, body=? "
                          "WHERE session_id=? AND idempotency_key=?",
                          (kept.status, json.dumps(kept.headers), kept.body, session_id, idempotency_key))
            return after

    async def release(self, session_id: str, request_id: str) -> None:
        """Drop the hold of ``request_id`` with nothing spent (SESSION-USE-05), in one IMMEDIATE
        transaction; a request with no hold is ignored."""
        with immediate(self._conn) as c:
            c.execute("DELETE FROM session_holds WHERE session_id=? AND request_id=?", (session_id, request_id))

    async def begin_close(self, session_id: str, now: datetime) -> SessionState:
        """Stop new spending. Refuses (SessionInsufficient is not right here) while requests are in flight."""
        with immediate(self._conn) as c:
            state = self._must(c, session_id, usable=False)
            if state.status in ("closing", "closed"):
                return state
            if self._held(c, session_id, now):
                from mpp.protocol.errors import RequestInProgress

                raise RequestInProgress("requests of this session are still running; close again when they finish")
            c.execute("UPDATE sessions SET status='closing' WHERE id=?", (session_id,))
            return self._must(c, session_id, usable=False)

    async def finish_close(self, session_id: str, *, captured: int, released: int, settlement: str, final_receipt: str,
                           now: datetime) -> SessionState:
        """Record the close in one IMMEDIATE transaction: a ``closing`` session becomes ``closed`` with what
        was captured and released (base units), the capture's reference and the final receipt (SESSION-CLOSE-02);
        the state after. A session not ``closing`` is returned unchanged; SessionUnknown if there is none."""
        with immediate(self._conn) as c:
            c.execute(
                "UPDATE sessions SET status='closed', captured=?, released=?, settlement=?, final_receipt=?, closed_at=? "
                "WHERE id=? AND status='closing'",
                (captured, released, settlement, final_receipt, format_rfc3339(now), session_id),
            )
            return self._must(c, session_id, usable=False)

    async def usage(self, session_id: str) -> list[UsageLine]:
        """The session's usage lines for its final receipt: per resource, unit type, unit price and ``per``,
        units and amount summed and requests counted, in order of first use."""
        rows = self._conn.execute(
            "SELECT resource, unit_type, unit_price, per, SUM(units), SUM(amount), COUNT(*) FROM session_usage "
            "WHERE session_id=? GROUP BY resource, unit_type, unit_price, per ORDER BY MIN(at), resource",
            (session_id,),
        ).fetchall()
        return [UsageLine(*r) for r in rows]

    async def idle(self, now: datetime) -> list[str]:
        """Sessions nobody has used for their idle timeout (or left opening/closing by a crash)."""
        out = []
        for sid, status, last, idle in self._conn.execute(
            "SELECT id, status, last_used_at, idle_timeout FROM sessions WHERE status != 'closed'"
        ):
            if parse_rfc3339(last) + timedelta(seconds=idle) <= now:
                out.append(sid)
        return out

    async def closed_between(self, since: datetime, until: datetime) -> list["ClosedSession"]:
        """Sessions closed in [since, until] (to the second; the caller picks the exact window),
        with what each captured and its usage lines."""
        rows = self._conn.execute(
            f"SELECT {_COLUMNS}, closed_at FROM sessions WHERE status='closed' AND closed_at >= ? AND closed_at <= ? "
            "ORDER BY closed_at, id",
            (format_rfc3339(since), format_rfc3339(until)),
        ).fetchall()
        return [ClosedSession(_state(row[:-1]), row[-1], await self.usage(row[0])) for row in rows]


class SqliteSessionKeys:
    """``store.keys``: a session's Idempotency-Keys (SESSION-USE-06), in the store's database and
    under its process's heartbeat."""

    def __init__(self, store: SqliteSessionStore) -> None:
        self._store = store

    async def claim(self, session_id: str, key: str, resource: str) -> tuple[str, StoredResponse | None]:
        """An Idempotency-Key under a session (SESSION-USE-06): ("new", None) for the first request
        with it, ("running", None) while that one runs, ("done", response) once it answered, and
        ("conflict", None) if the key was used for another resource."""
        now = datetime.now(timezone.utc)
        with immediate(self._store._conn) as c:
            self._store._beat(c, now)
            row = c.execute("SELECT resource, state, status, headers, body, owner FROM session_responses "
                            "WHERE session_id=? AND idempotency_key=?", (session_id, key)).fetchone()
            if row is None:
                c.execute("INSERT INTO session_responses(session_id, idempotency_key, resource, state, owner) "
                          "VALUES (?, ?, ?, 'running', ?)", (session_id, key, resource, self._store.instance))
                return "new", None
            if row[0] != resource:
                return "conflict", None
            if row[1] == "running":
                # A running key whose process died never committed (a commit marks it done in the same
                # transaction): the retry takes it over and is charged once.
                alive = c.execute("SELECT 1 FROM seller_instances WHERE id=? AND last_seen > ?",
                                  (row[5], format_rfc3339(now - self._store.instance_ttl))).fetchone()
                if alive:
                    return "running", None
                c.execute("UPDATE session_responses SET owner=? WHERE session_id=? AND idempotency_key=?",
                          (self._store.instance, session_id, key))
                return "new", None
        return "done", StoredResponse(row[2], [tuple(h) for h in json.loads(row[3])], bytes(row[4]))

    async def save(self, session_id: str, key: str, response: StoredResponse) -> None:
        """Keep ``response`` for a claimed key and mark it ``done``, in one IMMEDIATE transaction: later
        claims replay it. A key not claimed is not created."""
        with immediate(self._store._conn) as c:
            c.execute("UPDATE session_responses SET state='done', status=?, headers=?, body=? WHERE session_id=? AND idempotency_key=?",
                      (response.status, json.dumps(response.headers), response.body, session_id, key))

    async def drop(self, session_id: str, key: str) -> None:
        """Forget a key still ``running`` (its request failed: nothing was charged), in one IMMEDIATE
        transaction, so a retry runs anew; a ``done`` key is kept."""
        with immediate(self._store._conn) as c:
            c.execute("DELETE FROM session_responses WHERE session_id=? AND idempotency_key=? AND state='running'", (session_id, key))


class SqliteSessionMandates:
    """``store.mandates``: this seller's share of each mandate link's budget, as its sessions hold it."""

    def __init__(self, store: SqliteSessionStore) -> None:
        self._store = store

    async def held(self, periods: dict[str, str]) -> dict[str, int]:
        """What the store's sessions under each link (key: period) hold or took."""
        return {key: _link_held(self._store._conn, key, period) for key, period in periods.items()}


def _link_held(c, key: str, period: str, *, exclude: str | None = None) -> int:
    """What this seller's sessions under a mandate link hold or took: the cap while open, the
    capture once closed."""
    return c.execute(
        "SELECT COALESCE(SUM(CASE WHEN s.status = 'closed' THEN s.captured ELSE s.cap END), 0) "
        "FROM session_links l JOIN sessions s ON s.id = l.session_id WHERE l.link_key=? AND l.period=? AND s.id != ?",
        (key, period, exclude or ""),
    ).fetchone()[0]


@dataclass(frozen=True)
class ClosedSession:
    """A closed session as the usage export reads it: its state (``captured``, ``settlement`` the
    capture's reference, ``identity``), when it closed (RFC 3339, to the second) and its usage lines."""

    state: SessionState
    closed_at: str
    lines: list[UsageLine]
