"""The SQLite ledger's facets beside the money: who may spend (``ledger.keys``: members, mandate
revocations and budgets) and sessions held on the ledger (``ledger.sessions``). Each shares the
ledger's one connection; every write is one IMMEDIATE transaction, as in SqliteLedger."""

from __future__ import annotations

import json
import sqlite3

from mpp.protocol.errors import PaymentProblem
from mpp.intents.session import SessionTerms, Voucher, VoucherInvalid, verify_cap, verify_voucher
from mpp.stores.sqlite import immediate
from mpp.ledger import _sqlite_ops as ops
from mpp.ledger.core import (
    CapSignatureInvalid,
    CaptureRefused,
    InsufficientFunds,
    MandateCharge,
    SessionClose,
    SessionHold,
    SessionNotOpen,
    TransferConflict,
    UnknownAccount,
    UnknownSession,
    check_member,
    check_parties,
    check_spender,
    keeps_an_owner,
    holding_account,
)

__all__ = ["SqliteKeys", "SqliteSessions"]


class SqliteKeys:
    """Who may spend from an account (its members and their roles), the mandates revoked, and
    what each mandate link has spent: ``ledger.keys``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def allow(self, account_id: str, did: str, role: str) -> None:
        """Enrol ``did`` on the account as an ``owner`` or a mandate-bound ``agent`` (LEDGER-ACCT-02),
        replacing whatever role it had; ``denied`` is what :meth:`deny` records."""
        check_member(did, role)
        ops.not_holding(account_id)
        with immediate(self._conn) as c:
            kind = c.execute("SELECT kind FROM accounts WHERE id=?", (account_id,)).fetchone()
            if kind is None:
                raise UnknownAccount(f"no account {account_id!r}")
            if kind[0] != "asset":
                raise ValueError(f"{account_id!r} is the ledger's own {kind[0]} account: nobody spends from it")
            owners = {r[0] for r in c.execute("SELECT did FROM account_members WHERE account_id=? AND role='owner'", (account_id,))}
            keeps_an_owner(account_id, owners, did, role)
            c.execute("INSERT OR REPLACE INTO account_members(account_id, did, role) VALUES (?, ?, ?)", (account_id, did, role))

    def deny(self, account_id: str, did: str) -> None:
        """``did`` spends nothing from the account from now on, directly or in any mandate chain."""
        self.allow(account_id, did, "denied")

    def members(self, account_id: str) -> dict[str, str]:
        """Role by DID of everyone enrolled on the account."""
        ops.account(self._conn, account_id)  # UnknownAccount
        return dict(self._conn.execute("SELECT did, role FROM account_members WHERE account_id=? ORDER BY did", (account_id,)))

    def spend_check(self, payer: str, *, signer: str, chain: tuple[str, ...] | None) -> None:
        """Would the ledger let ``signer`` spend from ``payer`` (bare, or under a chain of these
        DIDs, principal first)? What a seller asks before it consumes a challenge (LEDGER-ACCT-05);
        the transfer itself checks again, with the chain's signatures."""
        ops.account(self._conn, payer)  # UnknownAccount
        check_spender(ops.roles(self._conn, payer, chain or (signer,)), signer=signer, chain=chain)

    def revoke(self, revocation_token: str, mandate_token: str) -> str:
        """Record a signed revocation; every later transfer under that mandate is refused."""
        from mpp.identity import verify_revocation

        jti, revoker = verify_revocation(revocation_token, mandate_token)
        with immediate(self._conn) as c:
            c.execute("INSERT OR IGNORE INTO revocations(jti, revoker, revoked_at, token) VALUES (?, ?, ?, ?)",
                      (jti, revoker, ops.now(), revocation_token))
        return jti

    def revoked(self, jtis: tuple[str, ...] | list[str]) -> set[str]:
        """Those of ``jtis`` (mandate keys, ``<iss>#<jti>``) that are revoked on this ledger; an empty
        set if none is (what a seller asks before it consumes a challenge, IDENT-REV-03)."""
        if not jtis:
            return set()
        marks = ",".join("?" * len(jtis))
        return {r[0] for r in self._conn.execute(f"SELECT jti FROM revocations WHERE jti IN ({marks})", tuple(jtis))}

    def mandate_spent(self, jti: str, period: str) -> int:
        """What the mandate link ``jti`` (its key) has counted against its budget in ``period``
        (``total``, or a day, week or month key), in base units, across every seller: charges and
        session holds, less refunds and what session closes released; 0 if nothing was counted."""
        return ops.spent(self._conn, jti, period)


class SqliteSessions:
    """Sessions on the ledger, ``ledger.sessions``: a cap held from the payer at open (and raised
    by top-ups), captured for the payee and released to the payer at close."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def open(
        self,
        terms: SessionTerms,
        *,
        payer: str,
        signer: str,
        cap: int,
        cap_signature: str,
        mandate: MandateCharge | None = None,
    ) -> SessionHold:
        """Hold ``cap`` from ``payer`` for the session ``terms.session_id`` (transfer ``hold:<id>``
        to ``holds:<currency>``), once. The ledger checks the cap signature itself; with
        ``mandate`` the whole cap counts against every link's budget until close.

        Repeating the same open returns the session as it is now; another open under the same
        id raises TransferConflict.
        """
        ops.check_amount(cap)
        sid = terms.session_id
        if not isinstance(sid, str) or not sid or ":" in sid:
            raise ValueError("a session id must be a non-empty string without ':'")
        _verify_cap(signer, terms, payer, cap, cap_signature)
        terms_json = ops.dumps(terms.as_json())
        tokens = ops.dumps(list(mandate.tokens)) if mandate is not None else None
        realm = mandate.realm if mandate is not None else None
        with immediate(self._conn) as c:
            row = c.execute("SELECT payer, signer, terms, open_cap, mandate, realm FROM sessions WHERE id=?", (sid,)).fetchone()
            if row is not None:
                if tuple(row) != (payer, signer, terms_json, cap, tokens, realm):
                    raise TransferConflict(f"session {sid!r} was opened with other terms")
                return _session(c, sid)
            if terms.ledger != ops.ledger_id(c):
                raise UnknownAccount(f"the session's terms name ledger {terms.ledger!r}, not this one")
            currency, payee = terms.currency, terms.recipient
            accounts = {r[0]: r for r in c.execute("SELECT id, currency, balance FROM accounts WHERE id IN (?, ?) AND kind='asset'",
                                                   (payer, payee))}
            check_parties({a: r[1] for a, r in accounts.items()}, payer, payee, currency)
            holds = holding_account(currency)
            if payer == payee or ops.is_holding(payer) or ops.is_holding(payee):
                raise UnknownAccount("a session's payer and payee must differ, and neither may be the holding account")
            links = ops.authorized_links(c, payer, signer, mandate, currency=currency, amount=None)
            if accounts[payer][2] < cap:
                raise InsufficientFunds(f"balance {accounts[payer][2]} is below the cap {cap}")
            hold_id = "hold:" + sid
            if ops.get(c, hold_id) is not None:
                raise TransferConflict(f"transfer {hold_id!r} already exists")
            ops.spend_budgets(c, links, hold_id, cap)
            ops.ensure_account(c, holds, currency, "asset")
            transfer = ops.post(c, hold_id, payer, holds, cap, currency, "hold", signer)
            c.execute(
                "INSERT INTO sessions(id, payer, payee, currency, signer, terms, open_cap, cap, status, mandate, realm, opened_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?, ?)",
                (sid, payer, payee, currency, signer, terms_json, cap, cap, tokens, realm, transfer.created_at),
            )
            return _session(c, sid)

    def top_up(self, session_id: str, *, cap: int, cap_signature: str) -> SessionHold:
        """Raise the session's cap to ``cap`` (a new total), holding the difference (transfer
        ``hold:<id>:<cap>``) within the balance and the mandate's budgets. A cap at or below the
        current one changes nothing and returns the session as it is."""
        ops.check_amount(cap)
        with immediate(self._conn) as c:
            row = c.execute("SELECT payer, signer, terms, cap, status, mandate, realm, currency FROM sessions WHERE id=?",
                            (session_id,)).fetchone()
            if row is None:
                raise UnknownSession(f"no session {session_id!r}")
            payer, signer, terms_json, current, status, tokens, realm, currency = row
            _verify_cap(signer, SessionTerms.from_json(json.loads(terms_json)), payer, cap, cap_signature)
            if status != "open":
                raise SessionNotOpen(f"session {session_id!r} is closed")
            if cap <= current:
                return _session(c, session_id)
            increase = cap - current
            mandate = MandateCharge(tuple(json.loads(tokens)), realm) if tokens is not None else None
            links = ops.authorized_links(c, payer, signer, mandate, currency=currency, amount=None)
            balance = c.execute("SELECT balance FROM accounts WHERE id=?", (payer,)).fetchone()[0]
            if balance < increase:
                raise InsufficientFunds(f"balance {balance} is below the increase {increase}")
            hold_id = f"hold:{session_id}:{cap}"
            ops.spend_budgets(c, links, hold_id, increase)
            ops.post(c, hold_id, payer, holding_account(currency), increase, currency, "hold", signer)
            c.execute("UPDATE sessions SET cap=? WHERE id=?", (cap, session_id))
            return _session(c, session_id)

    def close(self, session_id: str, *, capture: int, voucher: Voucher | None) -> SessionClose:
        """Capture ``capture`` for the payee (``capture:<id>``) and release the rest of the cap
        to the payer (``release:<id>``), giving the released part back to the mandate budgets.

        A capture above zero needs a voucher signed by the session's signer for at least that
        much; the cap bounds it. Closing again with the same capture returns the same record.
        """
        if not isinstance(capture, int) or isinstance(capture, bool) or capture < 0:
            raise ValueError("capture must be a non-negative integer in base units")
        with immediate(self._conn) as c:
            row = c.execute("SELECT payer, payee, currency, signer, terms, cap, status FROM sessions WHERE id=?",
                            (session_id,)).fetchone()
            if row is None:
                raise UnknownSession(f"no session {session_id!r}")
            payer, payee, currency, signer, terms_json, cap, status = row
            if status == "closed":
                closed = _closed(c, session_id)
                if closed.captured != capture:
                    raise TransferConflict(f"session {session_id!r} was closed capturing {closed.captured}, not {capture}")
                return closed
            if capture > cap:
                raise CaptureRefused(f"capture {capture} is above the session's cap {cap}")
            if capture > 0:
                if voucher is None:
                    raise CaptureRefused("a capture needs the agent's voucher")
                try:
                    verify_voucher(signer, SessionTerms.from_json(json.loads(terms_json)), voucher)
                except VoucherInvalid as exc:
                    raise CaptureRefused(f"voucher refused: {exc.detail}") from None
                if voucher.cumulative < capture:
                    raise CaptureRefused(f"capture {capture} is above the voucher's {voucher.cumulative}")
            holds = holding_account(currency)
            release = cap - capture
            capture_ref = release_ref = None
            if capture > 0:
                capture_ref = "capture:" + session_id
                closed_at = ops.post(c, capture_ref, holds, payee, capture, currency, "capture", None).created_at
            if release > 0:
                release_ref = "release:" + session_id
                closed_at = ops.post(c, release_ref, holds, payer, release, currency, "release", None).created_at
                _release_budgets(c, session_id, release_ref, release)
            c.execute("UPDATE sessions SET status='closed', captured=?, released=?, closed_at=?, capture_ref=?, release_ref=? "
                      "WHERE id=?", (capture, release, closed_at, capture_ref, release_ref, session_id))
            return _closed(c, session_id)

    def get(self, session_id: str) -> SessionHold | None:
        """The session's hold as it is now (cap, captured, released, status), or None if no session has
        that id."""
        return _session(self._conn, session_id)

    def all(self) -> list[SessionHold]:
        """Every session this ledger has held, oldest first."""
        return [SessionHold(*r) for r in self._conn.execute(ops.SELECT_SESSION + " ORDER BY rowid")]


def _verify_cap(signer: str, terms: SessionTerms, payer: str, cap: int, signature: str) -> None:
    try:
        verify_cap(signer, terms, account=payer, cap=cap, signature=signature)
    except PaymentProblem as exc:  # VoucherInvalid, or a signer that is no did:key
        raise CapSignatureInvalid(f"cap refused: {exc.detail}") from None


def _release_budgets(c: sqlite3.Connection, session_id: str, release_ref: str, release: int) -> None:
    """Give ``release`` back to every link the session's holds were counted against, latest
    hold first, in the period each hold was counted in (row ``release:<id>``, or
    ``release:<id>:<period>`` when the holds span periods)."""
    prefix = f"hold:{session_id}:"
    held = c.execute(
        "SELECT jti, period, SUM(amount) FROM mandate_spend WHERE transfer_id=? OR substr(transfer_id, 1, ?)=? "
        "GROUP BY jti, period ORDER BY jti, MAX(rowid) DESC",
        (f"hold:{session_id}", len(prefix), prefix),
    ).fetchall()
    periods: dict[str, list[tuple[str, int]]] = {}
    for jti, period, amount in held:
        periods.setdefault(jti, []).append((period, amount))
    rows = []
    for jti, spent in periods.items():
        left = release
        for period, amount in spent:
            give = min(left, amount)
            if give <= 0:
                break
            left -= give
            rows.append((release_ref if len(spent) == 1 else f"{release_ref}:{period}", jti, period, -give))
    ops.count_spend(c, rows)


def _session(c: sqlite3.Connection, session_id: str) -> SessionHold | None:
    row = c.execute(ops.SELECT_SESSION + " WHERE id=?", (session_id,)).fetchone()
    return SessionHold(*row) if row else None


def _closed(c: sqlite3.Connection, session_id: str) -> SessionClose:
    row = c.execute("SELECT id, captured, released, capture_ref, release_ref, closed_at FROM sessions WHERE id=?",
                    (session_id,)).fetchone()
    return SessionClose(*row)
