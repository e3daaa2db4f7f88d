"""The identity audit log: append-only, hash-chained, in SQLite.

Every entry is ``(seq, ts, kind, data, prev, hash)``: ``seq`` counts 1, 2, 3, ... without gaps,
``ts`` is an RFC 3339 UTC timestamp, ``kind`` one of :data:`KINDS`, ``data`` a JSON object
(agent, principal, mandate, challengeId, amount, currency, resource, realm, ... where known),
``prev`` the previous entry's ``hash`` ("" for entry 1), and

    hash = hex(SHA-256(JCS({"data": data, "kind": kind, "prev": prev, "seq": seq, "ts": ts})))

with JCS = RFC 8785 (:func:`mpp.protocol.wire.canonical_json`). A one-row table ``audit_head`` holds the
``(seq, hash)`` of the last entry and is written in the same transaction as each append.

Several processes may append to one file: an append takes the write lock first (``BEGIN
IMMEDIATE``), then reads the tail, then writes the entry and the head, so two writers never
both extend the same tail. Verify reads the entries and the head in one read transaction, so an
append running beside it is either wholly seen or not at all.

:class:`AuditLog` is the SQLite log; :class:`mpp.stores.pg.PgAuditLog` keeps the same tables in
PostgreSQL. Both are used through one async interface, :class:`AsyncAuditLog`
(:class:`AsyncSqliteAuditLog` wraps an AuditLog); choose one by URL with
:func:`mpp.connect.audit_log_for`. What is checked, and how, is written once here, as functions
over rows (:func:`prepare_entry`, :func:`next_link`, :class:`ChainCheck`, :func:`entries_of`,
:func:`purchases_of`) that both engines call.

What :meth:`AuditLog.verify` detects, and what it cannot
--------------------------------------------------------
* an edited entry (data, amount inside data, kind, ts, ...) whose hash was left alone: its hash
  no longer matches, and verify names it;
* an edited entry whose hash was recomputed: the next entry's ``prev`` no longer matches, and
  verify names that next entry (the chain breaks there);
* a deleted entry in the middle: a gap in ``seq``, named by the entry after the gap;
* deleted entries at the end: the head still records the old last entry, and verify names the
  first missing ``seq``.

Everything in one file can be rewritten by whoever can write the file. An attacker who deletes
or edits entries and then recomputes every later hash *and* the head produces a log that verifies
perfectly: a hash chain on its own proves internal consistency, not authenticity. That rewrite
is detected only by anchoring the head somewhere the attacker cannot reach: record
:meth:`AuditLog.head` elsewhere (print it, mail it, put it in another system's log, have a
principal sign it) and later call ``verify(anchor=(seq, hash))``, which checks that entry
``seq`` still has that hash, i.e. that today's log extends the anchored one. Entries after the
last anchor are only as trustworthy as the file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, Protocol, Sequence, runtime_checkable

from mpp.stores.sqlite import apply_schema, connect, immediate
from mpp.protocol.wire import canonical_json
from mpp.protocol.errors import MPPError

__all__ = ["KINDS", "AuditEntry", "AuditLog", "AuditChainBroken", "entry_hash", "AsyncAuditLog", "AsyncSqliteAuditLog",
           "append_in", "prepare_entry", "next_link", "tail_problem", "ChainCheck", "entries_of", "purchases_of"]

KINDS = ("quote-seen", "policy-decision", "authorization-signed", "settlement", "receipt", "refusal",
         "session-open", "session-top-up", "voucher-signed", "session-close")
"""The kinds of audit log entries: what the buyer and the seller record, in the order of a purchase."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq  INTEGER PRIMARY KEY,
    ts   TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
)
"""

# Purchase fields taken from entry data; a later entry's non-null value overrides an earlier one.
_PURCHASE_FIELDS = ("realm", "resource", "amount", "currency", "agent", "principal", "mandate", "approval")
_DENY = ("deny", "denied", "refused", "rejected")


class AuditChainBroken(MPPError):
    """The log is not the untouched chain it claims to be; ``seq`` is the first entry where that shows."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"audit log broken at entry {seq}: {reason}")
        self.seq = seq
        self.reason = reason


@dataclass(frozen=True)
class AuditEntry:
    """One entry of a hash-chained audit log: its sequence number, time, kind (one of ``KINDS``),
    data, the previous entry's hash and its own (:func:`entry_hash`), so that a removed or edited
    entry breaks the chain `mpp audit verify` checks."""

    seq: int
    ts: str
    kind: str
    data: dict[str, Any]
    prev: str
    hash: str


def entry_hash(seq: int, ts: str, kind: str, data: dict[str, Any], prev: str) -> str:
    """hex SHA-256 of JCS({"data", "kind", "prev", "seq", "ts"})."""
    return hashlib.sha256(canonical_json({"data": data, "kind": kind, "prev": prev, "seq": seq, "ts": ts})).hexdigest()


def _format_ts(when: datetime) -> str:
    if when.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_data(text: Any) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


# -- the rules, as functions over rows: what both engines share ------------------------------
# A row is (seq, ts, kind, data, prev, hash) as stored, data the JSON text; a head or a tail is
# (seq, hash), or None when there is none.


def _stored_entry_hash(seq: int, ts: str, kind: str, stored: str, prev: str) -> str:
    """:func:`entry_hash` of an entry whose data is already RFC 8785 text (``stored``): the JCS of
    the five members, keys in order, written around it rather than parsed and serialised again
    (tests/test_audit.py compares the two)."""
    text = '{"data":%s,"kind":%s,"prev":%s,"seq":%d,"ts":%s}' % (
        stored, json.dumps(kind, ensure_ascii=False), json.dumps(prev, ensure_ascii=False), seq,
        json.dumps(ts, ensure_ascii=False))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prepare_entry(kind: str, data: dict[str, Any], now: datetime | None = None) -> tuple[str, str, dict[str, Any]]:
    """``(ts, stored, data)`` for a new entry: its timestamp, its data as stored (RFC 8785 text) and
    that text read back, which is what the hash is computed over (verify reads exactly that).

    ValueError for an unknown kind, data that is not a JSON object RFC 8785 can serialise, or a
    naive ``now``."""
    if kind not in KINDS:
        raise ValueError(f"unknown audit entry kind {kind!r} (expected one of {', '.join(KINDS)})")
    if not isinstance(data, dict):
        raise ValueError("audit entry data must be a JSON object")
    ts = _format_ts(now or datetime.now(timezone.utc))
    try:
        stored = canonical_json(data).decode("utf-8")
    except ValueError as exc:  # ParseError is a ValueError
        raise ValueError(f"audit entry data cannot be canonicalised: {exc}") from exc
    return ts, stored, json.loads(stored)


def next_link(last: Sequence[Any] | None, head: Sequence[Any] | None) -> tuple[int, str]:
    """``(seq, prev)`` of the entry that extends a log whose last entry is ``last`` and whose head
    row is ``head``; AuditChainBroken if the two disagree (the tail was truncated or extended
    behind the log's back): extending such a chain would bury the evidence."""
    if last is None and head is None:
        return 1, ""
    if last is not None and head is not None and tuple(last) == tuple(head):
        return int(last[0]) + 1, str(last[1])
    raise tail_problem(last, head)


def tail_problem(last: Sequence[Any] | None, head: Sequence[Any] | None) -> AuditChainBroken:
    """Why the last entry and the head row disagree."""
    last_seq = int(last[0]) if last is not None else 0
    if head is None:
        return AuditChainBroken(last_seq, "the head row is missing: cannot tell whether later entries were removed")
    head_seq = int(head[0])
    if head_seq > last_seq:
        ends = f"ends at entry {last_seq}" if last_seq else "is empty"
        return AuditChainBroken(last_seq + 1, f"the head records {head_seq} entries but the log {ends}: truncated")
    if head_seq < last_seq:
        return AuditChainBroken(head_seq + 1, f"entries after {head_seq} were added without moving the head")
    return AuditChainBroken(last_seq, "the head hash does not match this entry: the entry was replaced")


class ChainCheck:
    """Verify's walk over a log (IDENT-AUD-04, IDENT-AUD-05), fed one row at a time in seq order,
    so either engine can stream its rows through it: ``check.row(r)`` for each, then
    ``check.finish(head)``. Raises AuditChainBroken naming the first broken entry.

    ``anchor``: a ``(seq, hash)`` from an earlier head, kept elsewhere; the entry ``seq`` must
    still carry that hash (a prefix of at least 16 hex digits is accepted)."""

    def __init__(self, anchor: tuple[int, str] | None = None) -> None:
        self.anchor = anchor
        self.expected_seq, self.prev_hash = 1, ""
        self.anchored = False

    def row(self, row: Sequence[Any]) -> None:
        """Check the next row, ``(seq, ts, kind, data, prev, hash)`` as stored (data the JSON text): its seq
        follows the last one's, its data is a JSON object, its kind is known, its hash recomputes, its ``prev``
        is the last one's hash, and, at the anchor's seq, it carries the anchored hash. AuditChainBroken
        otherwise, naming this row's seq (for deleted entries, the entry after the gap)."""
        seq, ts, kind, text, prev, digest = row
        expected_seq = self.expected_seq
        if seq != expected_seq:
            missing = f"entry {expected_seq}" if seq == expected_seq + 1 else f"entries {expected_seq}..{seq - 1}"
            raise AuditChainBroken(seq, f"{missing} missing (seq gap before this entry): deleted")
        data = _parse_data(text)
        if data is None:
            raise AuditChainBroken(seq, "data is not a JSON object: the entry was edited")
        if kind not in KINDS:
            raise AuditChainBroken(seq, f"unknown kind {kind!r}: the entry was edited")
        try:
            recomputed = entry_hash(seq, ts, kind, data, prev)
        except ValueError:
            raise AuditChainBroken(seq, "data cannot be canonicalised: the entry was edited") from None
        if recomputed != digest:
            raise AuditChainBroken(seq, "hash mismatch: the entry was edited")
        if prev != self.prev_hash:
            what = "entry 1 must have an empty prev" if seq == 1 else (
                f"prev does not match the hash of entry {seq - 1}: an earlier entry was replaced or rewritten")
            raise AuditChainBroken(seq, what)
        if self.anchor is not None and seq == self.anchor[0]:
            if not _hash_matches(digest, self.anchor[1]):
                raise AuditChainBroken(seq, "hash differs from the anchored head: the log was rewritten")
            self.anchored = True
        self.expected_seq, self.prev_hash = seq + 1, digest

    def finish(self, head: Sequence[Any] | None) -> None:
        """The walk is over: the head row must record the last entry, and the anchor must have been met."""
        last = (self.expected_seq - 1, self.prev_hash) if self.expected_seq > 1 else None
        if not (last is None and head is None) and not (last is not None and head is not None and tuple(head) == last):
            raise tail_problem(last, head)
        if self.anchor is not None and not self.anchored and self.anchor[0] > 0:
            raise AuditChainBroken(self.anchor[0],
                                   f"the anchored entry is missing (the log ends at {self.expected_seq - 1}): truncated")


def entries_of(rows: Iterable[Sequence[Any]], *, agent: str | None = None, principal: str | None = None) -> list[AuditEntry]:
    """Rows (already filtered on kind, in seq order) as entries, kept when the agent/principal
    named in their data match."""
    out = []
    for seq, ts, kind, text, prev, digest in rows:
        data = _parse_data(text)
        if data is None:
            raise AuditChainBroken(seq, "data is not a JSON object: the entry was edited")
        if agent is not None and data.get("agent") != agent:
            continue
        if principal is not None and data.get("principal") != principal:
            continue
        out.append(AuditEntry(seq, ts, kind, data, prev, digest))
    return out


def purchases_of(entries: Iterable[AuditEntry], *, agent: str | None = None, principal: str | None = None) -> list[dict[str, Any]]:
    """One row per challengeId, merging its entries in seq order (a later non-null field wins).

    outcome, from the entries in seq order:
      "settled"  a settlement or receipt entry (money moved); sticks, except that
      "refunded" a later refusal with problem "refunded" (the seller gave the money back);
      "refused"  the latest entry is a refusal, or a policy decision "deny";
      "unknown"  anything else: quote seen, allowed or approved, authorization signed with no
                 answer recorded, or a refusal marked ``outcome: "unknown"`` (5xx, network error:
                 the money may have moved).
    A purchase refused for want of an approval and retried with one therefore ends up
    settled or unknown, not refused. ``reason`` explains a refused/refunded/unknown outcome
    (problem or rule, then detail or reason, or the HTTP status).
    The agent/principal filters apply to the merged row, so entries that do not repeat
    the agent still count towards its purchases. Entries without a challengeId are not purchases.
    """
    rows: dict[str, dict[str, Any]] = {}
    for entry in entries:
        d = entry.data
        cid = d.get("challengeId")
        if not isinstance(cid, str) or not cid:
            continue
        row = rows.get(cid)
        if row is None:
            row = rows[cid] = {"challengeId": cid, **{f: None for f in _PURCHASE_FIELDS},
                               "decision": None, "reason": None, "outcome": "unknown", "reference": None,
                               "ts": entry.ts, "seqs": []}
        row["seqs"].append(entry.seq)
        for field in _PURCHASE_FIELDS:
            if d.get(field) is not None:
                row[field] = d[field]
        if d.get("decision") is not None and entry.kind in ("policy-decision", "receipt", "settlement"):
            row["decision"] = d["decision"]
        if d.get("reference") is not None:
            row["reference"] = d["reference"]
        if row["outcome"] == "refunded":
            continue
        if entry.kind == "refusal" and d.get("problem") == "refunded":
            row["outcome"], row["reason"] = "refunded", _reason(d)
        elif row["outcome"] == "settled":
            continue
        elif entry.kind in ("settlement", "receipt"):
            row["outcome"], row["reason"] = "settled", None
        elif entry.kind == "refusal":
            row["outcome"] = "unknown" if d.get("outcome") == "unknown" else "refused"
            row["reason"] = _reason(d)
        elif entry.kind == "policy-decision" and d.get("decision") in _DENY:
            row["outcome"], row["reason"] = "refused", _reason(d)
        else:  # quote seen, allowed, approved or signed: the answer is still to come (or never came)
            row["outcome"], row["reason"] = "unknown", None
    result = list(rows.values())
    if agent is not None:
        result = [r for r in result if r["agent"] == agent]
    if principal is not None:
        result = [r for r in result if r["principal"] == principal]
    return result


def _reason(data: dict[str, Any]) -> str | None:
    head = data.get("problem") or data.get("rule")
    tail = data.get("detail") or data.get("reason")
    if head and tail:
        return f"{head}: {tail}"
    if head or tail:
        return str(head or tail)
    return f"HTTP {data['status']}" if data.get("status") is not None else None


def _hash_matches(digest: str, expected: str) -> bool:
    expected = expected.strip().lower()
    if len(expected) < len(digest):
        return len(expected) >= 16 and digest.startswith(expected)
    return digest == expected


# -- SQLite ------------------------------------------------------------------------------------

_ROWS = "SELECT seq, ts, kind, data, prev, hash FROM audit"
_HEAD = "SELECT seq, hash FROM audit_head WHERE id = 1"


@contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One read transaction: every SELECT inside sees the same state of the file."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")


class AuditLog:
    """An audit log in one SQLite file (``location``: a path or ``sqlite:`` URL).

    Safe for several processes appending concurrently; see the module docstring for what
    :meth:`verify` can and cannot detect.
    """

    def __init__(self, location: str | None = None, *, connection: sqlite3.Connection | None = None) -> None:
        if (location is None) == (connection is None):
            raise ValueError("give a location or a connection")
        self._owned = connection is None
        self._conn = connect(location, _SCHEMA) if connection is None else apply_schema(connection, _SCHEMA)

    @classmethod
    def beside(cls, ledger: Any) -> "AuditLog":
        """The log in a :class:`~mpp.ledger.SqliteLedger`'s own database, on its connection: a
        purchase's entries then commit with its transfer (:class:`mpp.ledger.book.SqliteBook`)."""
        return cls(connection=ledger.connection)

    @property
    def connection(self) -> sqlite3.Connection:
        """The log's SQLite connection: its own, or the ledger's it was opened :meth:`beside` (a purchase's
        entries then commit in the ledger's transaction, :class:`mpp.ledger.book.SqliteBook`)."""
        return self._conn

    def close(self) -> None:
        """Close the connection if the log opened it; one it was given (:meth:`beside`) is left to its
        owner."""
        if self._owned:
            self._conn.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------

    def append(self, kind: str, data: dict[str, Any], *, now: datetime | None = None) -> AuditEntry:
        """Append one entry and move the head to it, in one transaction.

        Raises ValueError for an unknown kind or data that is not a JSON object RFC 8785 can
        serialise, and AuditChainBroken if the stored head does not match the last entry (the
        tail was truncated or extended behind the log's back): extending such a chain would
        bury the evidence, so the log refuses until someone looks at it.
        """
        with immediate(self._conn) as conn:
            return append_in(conn, [(kind, data)], now)[-1]

    # -- checking ------------------------------------------------------------

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last entry as recorded in the head row; ``(0, "")`` for an empty log.
        Record it outside this file to make a later wholesale rewrite detectable."""
        row = self._conn.execute(_HEAD).fetchone()
        return (int(row[0]), str(row[1])) if row else (0, "")

    def verify(self, *, anchor: tuple[int, str] | None = None) -> None:
        """Walk the whole chain; raise AuditChainBroken naming the first broken entry (:class:`ChainCheck`).

        ``anchor``: a ``(seq, hash)`` from an earlier :meth:`head`, kept elsewhere; the entry
        ``seq`` must still carry that hash (a prefix of at least 16 hex digits is accepted).
        """
        check = ChainCheck(anchor)
        with _snapshot(self._conn) as conn:
            rows = conn.execute(_ROWS + " ORDER BY seq")
            try:
                for row in rows:
                    check.row(row)
            finally:
                rows.close()
            head = conn.execute(_HEAD).fetchone()
        check.finish(head)

    # -- reading -------------------------------------------------------------

    def entries(self, *, agent: str | None = None, principal: str | None = None, kind: str | None = None) -> list[AuditEntry]:
        """Entries in seq order, filtered on kind and on the agent/principal named in their data."""
        query, params = _ROWS, ()
        if kind is not None:
            query, params = query + " WHERE kind = ?", (kind,)
        return entries_of(self._conn.execute(query + " ORDER BY seq", params), agent=agent, principal=principal)

    def purchases(self, *, agent: str | None = None, principal: str | None = None) -> list[dict[str, Any]]:
        """One row per challengeId (see :func:`purchases_of`), filtered on the merged row's agent/principal."""
        return purchases_of(self.entries(), agent=agent, principal=principal)


def append_in(conn: sqlite3.Connection, entries: Sequence[tuple[str, dict[str, Any]]],
              now: datetime | None = None) -> list[AuditEntry]:
    """Append ``(kind, data)`` entries in order and move the head to the last, inside the caller's
    write transaction on ``conn`` (the log's tables on it): the tail is read once, the head written
    once. ValueError and AuditChainBroken as :meth:`AuditLog.append`."""
    prepared = [(kind, *prepare_entry(kind, data, now)) for kind, data in entries]
    last = conn.execute(_HEAD).fetchone()
    tail = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = next_link(tail, last)
    out = []
    for kind, ts, stored, data in prepared:
        digest = _stored_entry_hash(seq, ts, kind, stored, prev)
        conn.execute("INSERT INTO audit (seq, ts, kind, data, prev, hash) VALUES (?, ?, ?, ?, ?, ?)",
                     (seq, ts, kind, stored, prev, digest))
        out.append(AuditEntry(seq, ts, kind, data, prev, digest))
        seq, prev = seq + 1, digest
    if out:
        conn.execute("INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?) "
                     "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash", (out[-1].seq, prev))
    return out


# -- one async interface -----------------------------------------------------------------------


@runtime_checkable
class AsyncAuditLog(Protocol):
    """The audit log behind one async interface: every :class:`AuditLog` operation, as a
    coroutine, with the same meaning and refusals (ValueError, AuditChainBroken)."""

    async def append(self, kind: str, data: dict[str, Any], *, now: datetime | None = None) -> AuditEntry:
        """Append one entry and move the head to it, in one transaction serialised with every other append
        (IDENT-AUD-03); the :class:`AuditEntry` written. ValueError for an unknown kind, data that is not a JSON
        object RFC 8785 can serialise, or a naive ``now``; AuditChainBroken if the head does not match the last
        entry (the log refuses to extend a tampered tail)."""

    async def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last entry as the head row records it; ``(0, "")`` for an empty log. Keep
        it outside the log to check a later :meth:`verify` against (IDENT-AUD-05)."""

    async def verify(self, *, anchor: tuple[int, str] | None = None) -> None:
        """Walk the whole chain and the head in one snapshot; AuditChainBroken names the first broken entry
        (IDENT-AUD-04, :class:`ChainCheck`). ``anchor``: a ``(seq, hash)`` from an earlier :meth:`head`; entry
        ``seq`` must still carry that hash (a prefix of at least 16 hex digits is accepted)."""

    async def entries(self, *, agent: str | None = None, principal: str | None = None,
                      kind: str | None = None) -> list[AuditEntry]:
        """Entries in seq order, filtered on ``kind`` and on the ``agent``/``principal`` named in their data;
        AuditChainBroken for an entry whose data is not a JSON object. Nothing is verified."""

    async def purchases(self, *, agent: str | None = None, principal: str | None = None) -> list[dict[str, Any]]:
        """One row per challengeId, its entries merged in seq order (:func:`purchases_of`: fields, outcome,
        reason), filtered on the merged row's agent/principal."""

    async def close(self) -> None:
        """Release the log's connection or pool (one the caller passed in stays open)."""


class AsyncSqliteAuditLog:
    """An :class:`AuditLog` behind :class:`AsyncAuditLog`. Each call runs to completion on the
    caller's thread, as the other SQLite stores here do (one short transaction; running it
    inline keeps two calls from interleaving on the one connection)."""

    def __init__(self, log: AuditLog, *, owned: bool = False) -> None:
        self.sync = log
        self._owned = owned

    @classmethod
    def at(cls, location: str) -> "AsyncSqliteAuditLog":
        """A log of its own on ``location`` (a path or ``sqlite:`` URL), closed with the wrapper."""
        return cls(AuditLog(location), owned=True)

    async def open(self) -> "AsyncSqliteAuditLog":
        """Nothing to open (the file was opened with the :class:`AuditLog`): ``self``, so the wrapper is
        opened as the PostgreSQL log is (:func:`mpp.connect.ensure_open`)."""
        return self

    async def close(self) -> None:
        """Close the wrapped :class:`AuditLog` if the wrapper owns it (made by :meth:`at`); one passed in
        is left to its caller."""
        if self._owned:
            self.sync.close()

    async def append(self, kind: str, data: dict[str, Any], *, now: datetime | None = None) -> AuditEntry:
        """:meth:`AuditLog.append`: one entry appended and the head moved to it, in one IMMEDIATE transaction;
        the entry written. ValueError, AuditChainBroken as there."""
        return self.sync.append(kind, data, now=now)

    async def head(self) -> tuple[int, str]:
        """:meth:`AuditLog.head`: ``(seq, hash)`` of the last entry as the head row records it; ``(0, "")``
        for an empty log."""
        return self.sync.head()

    async def verify(self, *, anchor: tuple[int, str] | None = None) -> None:
        """:meth:`AuditLog.verify`: walk the chain and the head in one read transaction; AuditChainBroken
        names the first broken entry."""
        self.sync.verify(anchor=anchor)

    async def entries(self, *, agent: str | None = None, principal: str | None = None,
                      kind: str | None = None) -> list[AuditEntry]:
        """:meth:`AuditLog.entries`: entries in seq order, filtered on kind and on the agent/principal named
        in their data."""
        return self.sync.entries(agent=agent, principal=principal, kind=kind)

    async def purchases(self, *, agent: str | None = None, principal: str | None = None) -> list[dict[str, Any]]:
        """:meth:`AuditLog.purchases`: one row per challengeId (:func:`purchases_of`), filtered on the merged
        row's agent/principal."""
        return self.sync.purchases(agent=agent, principal=principal)
