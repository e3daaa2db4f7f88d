"""SQLite ledger: each transfer is one IMMEDIATE transaction, keyed by its id."""

from __future__ import annotations

import json
import secrets
import sqlite3
from datetime import datetime, timezone

from mpp.protocol.errors import PaymentProblem
from mpp.protocol.models import format_rfc3339
from mpp.intents.session import SessionTerms, Voucher, VoucherInvalid, verify_cap, verify_voucher
from mpp.ledger._schema import SCHEMA
from mpp.stores.sqlite import connect, immediate
from mpp.ledger.core import (
    BudgetExhausted,
    CapSignatureInvalid,
    CaptureRefused,
    MandateCharge,
    MandateRevokedError,
    Account,
    InsufficientFunds,
    SessionClose,
    SessionHold,
    SessionNotOpen,
    Transfer,
    TransferConflict,
    UnauthorizedSigner,
    UnknownAccount,
    UnknownSession,
    check_account_id,
    check_member,
    check_spender,
    keeps_an_owner as _keeps_an_owner,
    holding_account,
    issuance_account,
    second_ceiling,
    verified_links,
)

__all__ = ["SqliteLedger"]


def _now() -> str:
    return format_rfc3339(datetime.now(timezone.utc))


class SqliteLedger:
    """Accounts, keys allowed to spend from them, transfers and their postings."""

    def __init__(self, location: str) -> None:
        self.location = location
        self._conn = connect(location, SCHEMA)
        with immediate(self._conn) as c:
            row = c.execute("SELECT value FROM meta WHERE key='ledger_id'").fetchone()
            if row is None:
                c.execute("INSERT INTO meta(key, value) VALUES ('ledger_id', ?)", ("ledger-" + secrets.token_hex(8),))
            if c.execute("SELECT 1 FROM meta WHERE key='mandate_totals'").fetchone() is None:
                # A ledger made before the running totals existed: count them once from the rows.
                c.execute("DELETE FROM mandate_totals")
                c.execute("INSERT INTO mandate_totals(jti, period, spent) "
                          "SELECT jti, period, SUM(amount) FROM mandate_spend GROUP BY jti, period")
                c.execute("INSERT INTO meta(key, value) VALUES ('mandate_totals', '1')")
            _migrate_members(c)

    def close(self) -> None:
        self._conn.close()

    @property
    def ledger_id(self) -> str:
        return self._conn.execute("SELECT value FROM meta WHERE key='ledger_id'").fetchone()[0]

    # -- accounts ----------------------------------------------------------

    def create_account(self, account_id: str, currency: str, *, owner: str | None = None, exclusive: bool = False) -> Account:
        """An asset account (the same call again is a no-op, or with ``exclusive`` a TransferConflict);
        with ``owner``, that DID is made one of its owners."""
        check_account_id(account_id, currency)
        if owner is not None:
            check_member(owner, "owner")
        with immediate(self._conn) as c:
            if exclusive and c.execute("SELECT 1 FROM accounts WHERE id=?", (account_id,)).fetchone() is not None:
                raise TransferConflict(f"account {account_id!r} exists already")
            self._ensure_account(c, account_id, currency, "asset")
            if owner is not None:
                c.execute("INSERT OR REPLACE INTO account_members(account_id, did, role) VALUES (?, ?, 'owner')",
                          (account_id, owner))
        return self.account(account_id)

    @staticmethod
    def _ensure_account(c: sqlite3.Connection, account_id: str, currency: str, kind: str) -> None:
        row = c.execute("SELECT currency, kind FROM accounts WHERE id=?", (account_id,)).fetchone()
        if row is None:
            c.execute("INSERT INTO accounts(id, currency, kind, balance) VALUES (?, ?, ?, 0)", (account_id, currency, kind))
        elif row[0] != currency or row[1] != kind:
            raise TransferConflict(f"account {account_id!r} exists with currency {row[0]!r}, kind {row[1]!r}")

    def allow(self, account_id: str, did: str, role: str) -> None:
        """Enrol ``did`` on the account as an ``owner`` or a mandate-bound ``agent`` (LEDGER-ACCT-02),
        replacing whatever role it had; ``denied`` is what :meth:`deny` records."""
        check_member(did, role)
        _not_holding(account_id)
        with immediate(self._conn) as c:
            kind = c.execute("SELECT kind FROM accounts WHERE id=?", (account_id,)).fetchone()
            if kind is None:
                raise UnknownAccount(f"no account {account_id!r}")
            if kind[0] != "asset":
                raise ValueError(f"{account_id!r} is the ledger's own {kind[0]} account: nobody spends from it")
            owners = {r[0] for r in c.execute("SELECT did FROM account_members WHERE account_id=? AND role='owner'", (account_id,))}
            _keeps_an_owner(account_id, owners, did, role)
            c.execute("INSERT OR REPLACE INTO account_members(account_id, did, role) VALUES (?, ?, ?)", (account_id, did, role))

    def deny(self, account_id: str, did: str) -> None:
        """``did`` spends nothing from the account from now on, directly or in any mandate chain."""
        self.allow(account_id, did, "denied")

    def members(self, account_id: str) -> dict[str, str]:
        """Role by DID of everyone enrolled on the account."""
        self.account(account_id)  # UnknownAccount
        return dict(self._conn.execute("SELECT did, role FROM account_members WHERE account_id=? ORDER BY did", (account_id,)))

    def spend_check(self, payer: str, *, signer: str, chain: tuple[str, ...] | None) -> None:
        """Would the ledger let ``signer`` spend from ``payer`` (bare, or under a chain of these
        DIDs, principal first)? What a seller asks before it consumes a challenge (LEDGER-ACCT-05);
        the transfer itself checks again, with the chain's signatures."""
        self.account(payer)  # UnknownAccount
        check_spender(self._roles(self._conn, payer, chain or (signer,)), signer=signer, chain=chain)

    @staticmethod
    def _roles(c: sqlite3.Connection, account_id: str, dids: tuple[str, ...] | list[str]) -> dict[str, str]:
        marks = ",".join("?" * len(dids))
        return dict(c.execute(f"SELECT did, role FROM account_members WHERE account_id=? AND did IN ({marks})",
                              (account_id, *dids)))

    # -- revocation ----------------------------------------------------------

    def revoke(self, revocation_token: str, mandate_token: str) -> str:
        """Record a signed revocation; every later transfer under that mandate is refused."""
        from mpp.identity import verify_revocation

        jti, revoker = verify_revocation(revocation_token, mandate_token)
        with immediate(self._conn) as c:
            c.execute("INSERT OR IGNORE INTO revocations(jti, revoker, revoked_at, token) VALUES (?, ?, ?, ?)",
                      (jti, revoker, _now(), revocation_token))
        return jti

    def revoked(self, jtis: tuple[str, ...] | list[str]) -> set[str]:
        if not jtis:
            return set()
        marks = ",".join("?" * len(jtis))
        return {r[0] for r in self._conn.execute(f"SELECT jti FROM revocations WHERE jti IN ({marks})", tuple(jtis))}

    def mandate_spent(self, jti: str, period: str) -> int:
        return self._spent(self._conn, jti, period)

    @staticmethod
    def _spent(c: sqlite3.Connection, jti: str, period: str) -> int:
        row = c.execute("SELECT spent FROM mandate_totals WHERE jti=? AND period=?", (jti, period)).fetchone()
        return row[0] if row else 0

    @staticmethod
    def _count_spend(c: sqlite3.Connection, rows: list[tuple[str, str, str, int]]) -> None:
        """Record (transfer id, link key, period, amount) rows of mandate spend, and move each
        (link, period)'s running total with them, in the caller's transaction: the totals are
        what budgets are checked against (one row read, however long the history)."""
        c.executemany("INSERT INTO mandate_spend(transfer_id, jti, period, amount) VALUES (?, ?, ?, ?)", rows)
        c.executemany("INSERT INTO mandate_totals(jti, period, spent) VALUES (?, ?, ?) "
                      "ON CONFLICT (jti, period) DO UPDATE SET spent = spent + excluded.spent",
                      [(jti, period, amount) for _, jti, period, amount in rows])

    def account(self, account_id: str) -> Account:
        row = self._conn.execute("SELECT id, currency, balance, kind FROM accounts WHERE id=?", (account_id,)).fetchone()
        if row is None:
            raise UnknownAccount(f"no account {account_id!r}")
        return Account(*row)

    def balance(self, account_id: str) -> int:
        return self.account(account_id).balance

    def accounts(self) -> list[Account]:
        return [Account(*r) for r in self._conn.execute("SELECT id, currency, balance, kind FROM accounts ORDER BY id")]

    def total(self) -> int:
        """Sum of every balance; zero unless the ledger is corrupt."""
        return self._conn.execute("SELECT COALESCE(SUM(balance), 0) FROM accounts").fetchone()[0]

    # -- moving value ------------------------------------------------------

    def fund(self, account_id: str, amount: int, *, reference: str | None = None) -> Transfer:
        """Credit ``account_id`` from its currency's issuance account (prepaid credit). The same
        reference again returns the first funding; with other terms it raises TransferConflict."""
        _check_amount(amount)
        _not_holding(account_id)
        reference = reference or "fund-" + secrets.token_hex(8)
        with immediate(self._conn) as c:
            row = c.execute("SELECT currency FROM accounts WHERE id=?", (account_id,)).fetchone()
            if row is None:
                raise UnknownAccount(f"no account {account_id!r}")
            source = issuance_account(row[0])
            self._ensure_account(c, source, row[0], "issuance")
            existing = self._get(c, reference)
            if existing is not None:  # the same reference again: the first funding (as PgLedger.fund)
                if (existing.payer, existing.payee, existing.amount, existing.kind) != (source, account_id, amount, "fund"):
                    raise TransferConflict(f"transfer {reference!r} exists with other terms")
                return existing
            return self._post(c, reference, source, account_id, amount, row[0], "fund", None)

    def transfer(
        self,
        transfer_id: str,
        *,
        payer: str,
        payee: str,
        amount: int,
        currency: str,
        signer: str | None,
        mandate: MandateCharge | None = None,
    ) -> Transfer:
        """Move ``amount`` once. Repeating the same call returns the first transfer unchanged.

        With ``mandate``, the revocation list and every link's budget are checked in the same
        transaction as the postings, so concurrent purchases through any number of sellers
        cannot take a mandate past its budget.
        """
        _check_amount(amount)
        with immediate(self._conn) as c:
            existing = self._get(c, transfer_id)
            if existing is not None:
                if (existing.payer, existing.payee, existing.amount, existing.currency) != (payer, payee, amount, currency):
                    raise TransferConflict(f"transfer {transfer_id!r} exists with other terms")
                return existing
            if c.execute("SELECT 1 FROM voided WHERE transfer_id=?", (transfer_id,)).fetchone() is not None:
                raise TransferConflict(f"transfer {transfer_id!r} was voided before it was made")
            accounts = {
                r[0]: r
                for r in c.execute("SELECT id, currency, balance, kind FROM accounts WHERE id IN (?, ?)", (payer, payee))
            }
            if payer not in accounts:
                raise UnknownAccount(f"no payer account {payer!r}")
            if payee not in accounts:
                raise UnknownAccount(f"no payee account {payee!r}")
            for acct in (payer, payee):
                if accounts[acct][1] != currency:
                    raise UnknownAccount(f"account {acct!r} does not hold {currency!r}")
                if _is_holding(acct):
                    raise UnauthorizedSigner("only session operations move value into or out of a holding account")
            links = self._authorized_links(c, payer, signer, mandate, currency=currency, amount=amount)
            if accounts[payer][3] == "asset" and accounts[payer][2] < amount:
                raise InsufficientFunds(f"balance {accounts[payer][2]} is below {amount}")
            self._spend_budgets(c, links, transfer_id, amount)
            return self._post(c, transfer_id, payer, payee, amount, currency, "charge", signer)

    def _authorized_links(self, c: sqlite3.Connection, payer: str, signer: str | None, mandate: MandateCharge | None,
                          *, currency: str, amount: int | None) -> list[tuple[str, str, int]]:
        """May ``signer`` spend from ``payer``? Through a verified, unrevoked mandate chain rooted in
        an owner (its links are returned) or, without one, as an owner of the account (LEDGER-ACCT-03)."""
        if mandate is None:
            check_spender(self._roles(c, payer, (signer,)) if signer else {}, signer=signer, chain=None)
            return []
        owners = [r[0] for r in c.execute("SELECT did FROM account_members WHERE account_id=? AND role='owner'", (payer,))]
        dids, links = verified_links(owners, signer, mandate, currency=currency, amount=amount)
        check_spender(self._roles(c, payer, dids), signer=signer, chain=dids)
        keys = [key for key, _, _ in links]
        marks = ",".join("?" * len(keys))
        if c.execute(f"SELECT 1 FROM revocations WHERE jti IN ({marks})", keys).fetchone() is not None:
            raise MandateRevokedError("a mandate in the chain has been revoked")
        return links

    @classmethod
    def _spend_budgets(cls, c: sqlite3.Connection, links: list[tuple[str, str, int]], transfer_id: str, amount: int) -> None:
        """Count ``amount`` against every link's budget, or refuse if any would be exceeded."""
        for jti, period, budget in links:
            spent = cls._spent(c, jti, period)
            if spent + amount > budget:
                raise BudgetExhausted(f"mandate {jti} has {budget - spent} left of {budget} for {period}")
        cls._count_spend(c, [(transfer_id, jti, period, amount) for jti, period, _ in links])

    def refund(self, transfer_id: str) -> Transfer:
        """Reverse a charge once (``refund:<id>``), e.g. when the seller could not deliver."""
        with immediate(self._conn) as c:
            original = self._get(c, transfer_id)
            if original is None:
                raise UnknownAccount(f"no transfer {transfer_id!r}")
            if original.kind in _SESSION_KINDS:
                # Reversing one leg of a session would strand value in (or drain) the holding account.
                raise TransferConflict(f"transfer {transfer_id!r} belongs to a session; sessions end with close_session")
            refund_id = "refund:" + transfer_id
            existing = self._get(c, refund_id)
            if existing is not None:
                return existing
            # Give the mandate budgets back too: the refunded purchase never happened.
            self._count_spend(c, [(refund_id, jti, period, -amount) for jti, period, amount in c.execute(
                "SELECT jti, period, amount FROM mandate_spend WHERE transfer_id=? ORDER BY rowid", (transfer_id,)).fetchall()])
            return self._post(c, refund_id, original.payee, original.payer, original.amount, original.currency, "refund", None)

    def void(self, transfer_id: str, *, payee: str | None = None) -> Transfer | None:
        """Make sure no charge stands under ``transfer_id``: refund it if it was made (returns the
        refund), else record the id so that a transfer under it is refused from now on (None).
        For a seller that sent a transfer and got no answer: afterwards the outcome is known.
        With ``payee``, a charge to another payee is refused (TransferConflict), not refunded."""
        with immediate(self._conn) as c:
            original = self._get(c, transfer_id)
            if original is None:
                c.execute("INSERT OR IGNORE INTO voided(transfer_id, voided_at) VALUES (?, ?)", (transfer_id, _now()))
                return None
            if original.kind != "charge" or (payee is not None and original.payee != payee):
                raise TransferConflict(f"transfer {transfer_id!r} is not a charge to this payee")
        return self.refund(transfer_id)  # a charge, once made, stays: refund() is idempotent, so this is too

    # -- sessions: a cap held at open, captured and released at close -----------

    def open_session(
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
        _check_amount(cap)
        sid = terms.session_id
        if not isinstance(sid, str) or not sid or ":" in sid:
            raise ValueError("a session id must be a non-empty string without ':'")
        self._verify_cap(signer, terms, payer, cap, cap_signature)
        terms_json = _dumps(terms.as_json())
        tokens = _dumps(list(mandate.tokens)) if mandate is not None else None
        realm = mandate.realm if mandate is not None else None
        with immediate(self._conn) as c:
            row = c.execute("SELECT payer, signer, terms, open_cap, mandate, realm FROM sessions WHERE id=?", (sid,)).fetchone()
            if row is not None:
                if tuple(row) != (payer, signer, terms_json, cap, tokens, realm):
                    raise TransferConflict(f"session {sid!r} was opened with other terms")
                return self._session(c, sid)
            if terms.ledger != self._ledger_id(c):
                raise UnknownAccount(f"the session's terms name ledger {terms.ledger!r}, not this one")
            currency, payee = terms.currency, terms.recipient
            accounts = {r[0]: r for r in c.execute("SELECT id, currency, balance FROM accounts WHERE id IN (?, ?) AND kind='asset'",
                                                   (payer, payee))}
            for name, acct in (("payer", payer), ("payee", payee)):
                if acct not in accounts:
                    raise UnknownAccount(f"no {name} account {acct!r}")
                if accounts[acct][1] != currency:
                    raise UnknownAccount(f"account {acct!r} does not hold {currency!r}")
            holds = holding_account(currency)
            if payer == payee or _is_holding(payer) or _is_holding(payee):
                raise UnknownAccount("a session's payer and payee must differ, and neither may be the holding account")
            links = self._authorized_links(c, payer, signer, mandate, currency=currency, amount=None)
            if accounts[payer][2] < cap:
                raise InsufficientFunds(f"balance {accounts[payer][2]} is below the cap {cap}")
            hold_id = "hold:" + sid
            if self._get(c, hold_id) is not None:
                raise TransferConflict(f"transfer {hold_id!r} already exists")
            self._spend_budgets(c, links, hold_id, cap)
            self._ensure_account(c, holds, currency, "asset")
            transfer = self._post(c, hold_id, payer, holds, cap, currency, "hold", signer)
            c.execute(
                "INSERT INTO sessions(id, payer, payee, currency, signer, terms, open_cap, cap, status, mandate, realm, opened_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?, ?)",
                (sid, payer, payee, currency, signer, terms_json, cap, cap, tokens, realm, transfer.created_at),
            )
            return self._session(c, sid)

    def top_up_session(self, session_id: str, *, cap: int, cap_signature: str) -> SessionHold:
        """Raise the session's cap to ``cap`` (a new total), holding the difference (transfer
        ``hold:<id>:<cap>``) within the balance and the mandate's budgets. A cap at or below the
        current one changes nothing and returns the session as it is."""
        _check_amount(cap)
        with immediate(self._conn) as c:
            row = c.execute("SELECT payer, signer, terms, cap, status, mandate, realm, currency FROM sessions WHERE id=?",
                            (session_id,)).fetchone()
            if row is None:
                raise UnknownSession(f"no session {session_id!r}")
            payer, signer, terms_json, current, status, tokens, realm, currency = row
            self._verify_cap(signer, SessionTerms.from_json(json.loads(terms_json)), payer, cap, cap_signature)
            if status != "open":
                raise SessionNotOpen(f"session {session_id!r} is closed")
            if cap <= current:
                return self._session(c, session_id)
            increase = cap - current
            mandate = MandateCharge(tuple(json.loads(tokens)), realm) if tokens is not None else None
            links = self._authorized_links(c, payer, signer, mandate, currency=currency, amount=None)
            balance = c.execute("SELECT balance FROM accounts WHERE id=?", (payer,)).fetchone()[0]
            if balance < increase:
                raise InsufficientFunds(f"balance {balance} is below the increase {increase}")
            hold_id = f"hold:{session_id}:{cap}"
            self._spend_budgets(c, links, hold_id, increase)
            self._post(c, hold_id, payer, holding_account(currency), increase, currency, "hold", signer)
            c.execute("UPDATE sessions SET cap=? WHERE id=?", (cap, session_id))
            return self._session(c, session_id)

    def close_session(self, session_id: str, *, capture: int, voucher: Voucher | None) -> SessionClose:
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
                closed = self._closed(c, session_id)
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
                closed_at = self._post(c, capture_ref, holds, payee, capture, currency, "capture", None).created_at
            if release > 0:
                release_ref = "release:" + session_id
                closed_at = self._post(c, release_ref, holds, payer, release, currency, "release", None).created_at
                self._release_budgets(c, session_id, release_ref, release)
            c.execute("UPDATE sessions SET status='closed', captured=?, released=?, closed_at=?, capture_ref=?, release_ref=? "
                      "WHERE id=?", (capture, release, closed_at, capture_ref, release_ref, session_id))
            return self._closed(c, session_id)

    def session(self, session_id: str) -> SessionHold | None:
        return self._session(self._conn, session_id)

    def sessions(self) -> list[SessionHold]:
        return [SessionHold(*r) for r in self._conn.execute(_SELECT_SESSION + " ORDER BY rowid")]

    def _ledger_id(self, c: sqlite3.Connection) -> str:
        return c.execute("SELECT value FROM meta WHERE key='ledger_id'").fetchone()[0]

    @staticmethod
    def _verify_cap(signer: str, terms: SessionTerms, payer: str, cap: int, signature: str) -> None:
        try:
            verify_cap(signer, terms, account=payer, cap=cap, signature=signature)
        except PaymentProblem as exc:  # VoucherInvalid, or a signer that is no did:key
            raise CapSignatureInvalid(f"cap refused: {exc.detail}") from None

    @classmethod
    def _release_budgets(cls, c: sqlite3.Connection, session_id: str, release_ref: str, release: int) -> None:
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
        cls._count_spend(c, rows)

    @staticmethod
    def _session(c: sqlite3.Connection, session_id: str) -> SessionHold | None:
        row = c.execute(_SELECT_SESSION + " WHERE id=?", (session_id,)).fetchone()
        return SessionHold(*row) if row else None

    @staticmethod
    def _closed(c: sqlite3.Connection, session_id: str) -> SessionClose:
        row = c.execute("SELECT id, captured, released, capture_ref, release_ref, closed_at FROM sessions WHERE id=?",
                        (session_id,)).fetchone()
        return SessionClose(*row)

    def get_transfer(self, transfer_id: str) -> Transfer | None:
        return self._get(self._conn, transfer_id)

    def transfers(self) -> list[Transfer]:
        return [Transfer(*r) for r in self._conn.execute(_SELECT_TRANSFER + " ORDER BY rowid")]

    def transfers_of(self, account_id: str, since: datetime, until: datetime) -> list[Transfer]:
        """The transfers to or from ``account_id`` made in [since, until) (to the second, as they are
        stamped), oldest first."""
        lo, hi = format_rfc3339(second_ceiling(since)), format_rfc3339(second_ceiling(until))
        return [Transfer(*r) for r in self._conn.execute(
            _SELECT_TRANSFER + " WHERE (payer = ? OR payee = ?) AND created_at >= ? AND created_at < ? ORDER BY rowid",
            (account_id, account_id, lo, hi))]

    def check(self) -> list[str]:
        """Invariants: each transfer's postings sum to zero; each balance equals its postings; each
        holding account holds exactly the caps of its currency's open sessions."""
        problems = []
        for tid, total in self._conn.execute("SELECT transfer_id, SUM(amount) FROM postings GROUP BY transfer_id HAVING SUM(amount) != 0"):
            problems.append(f"transfer {tid} postings sum to {total}")
        for acct, balance, posted in self._conn.execute(
            "SELECT a.id, a.balance, COALESCE((SELECT SUM(amount) FROM postings p WHERE p.account_id=a.id), 0) FROM accounts a"
        ):
            if balance != posted:
                problems.append(f"account {acct} balance {balance} != postings {posted}")
        for acct, balance, held in self._conn.execute(
            "SELECT a.id, a.balance, COALESCE((SELECT SUM(s.cap) FROM sessions s WHERE s.status='open' "
            "AND ? || s.currency = a.id), 0) FROM accounts a WHERE a.id LIKE ?", (holding_account(""), holding_account("%"))
        ):
            if balance != held:
                problems.append(f"holding account {acct} balance {balance} != open sessions' caps {held}")
        for jti, period, total, counted in self._conn.execute(
            "SELECT jti, period, SUM(t), SUM(s) FROM (SELECT jti, period, spent AS t, 0 AS s FROM mandate_totals "
            "UNION ALL SELECT jti, period, 0, amount FROM mandate_spend) GROUP BY jti, period HAVING SUM(t) != SUM(s)"
        ):
            problems.append(f"mandate {jti} running total {total} for {period} != its spend rows {counted}")
        return problems

    # -- internals ---------------------------------------------------------

    @staticmethod
    def _get(c: sqlite3.Connection, transfer_id: str) -> Transfer | None:
        row = c.execute(_SELECT_TRANSFER + " WHERE id=?", (transfer_id,)).fetchone()
        return Transfer(*row) if row else None

    @staticmethod
    def _post(c, transfer_id, payer, payee, amount, currency, kind, signer) -> Transfer:
        created = _now()
        c.execute(
            "INSERT INTO transfers(id, payer, payee, amount, currency, kind, created_at, signer) VALUES (?,?,?,?,?,?,?,?)",
            (transfer_id, payer, payee, amount, currency, kind, created, signer),
        )
        c.execute("INSERT INTO postings(transfer_id, account_id, amount) VALUES (?, ?, ?)", (transfer_id, payer, -amount))
        c.execute("INSERT INTO postings(transfer_id, account_id, amount) VALUES (?, ?, ?)", (transfer_id, payee, amount))
        c.execute("UPDATE accounts SET balance = balance - ? WHERE id=?", (amount, payer))
        c.execute("UPDATE accounts SET balance = balance + ? WHERE id=?", (amount, payee))
        return Transfer(transfer_id, payer, payee, amount, currency, kind, created, signer)


_SELECT_TRANSFER = "SELECT id, payer, payee, amount, currency, kind, created_at, signer FROM transfers"
_SELECT_SESSION = "SELECT id, payer, payee, currency, signer, cap, captured, released, status, opened_at FROM sessions"
_SESSION_KINDS = ("hold", "capture", "release")


def _migrate_members(c: sqlite3.Connection) -> None:
    """A ledger made before accounts had members: its owner becomes an owner, and a key listed
    beside an owner becomes a mandate-bound agent (that is what `mpp init` listed it for); a key on
    an account with no owner keeps spending on its own signature, as an owner."""
    tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "account_owners" in tables:
        c.execute("INSERT OR IGNORE INTO account_members(account_id, did, role) "
                  "SELECT account_id, principal, 'owner' FROM account_owners")
    if "account_keys" in tables:
        owned = "account_owners" in tables
        c.execute("INSERT OR IGNORE INTO account_members(account_id, did, role) SELECT k.account_id, k.did, "
                  + ("CASE WHEN EXISTS (SELECT 1 FROM account_owners o WHERE o.account_id = k.account_id) "
                     "THEN 'agent' ELSE 'owner' END" if owned else "'owner'")
                  + " FROM account_keys k")
    for table in ("account_keys", "account_owners"):
        if table in tables:
            c.execute(f"DROP TABLE {table}")


def _is_holding(account_id: str) -> bool:
    return account_id.startswith(holding_account(""))


def _not_holding(account_id: str) -> None:
    if _is_holding(account_id):
        raise ValueError(f"{account_id!r} is a holding account: only session operations move value into or out of it")


def _dumps(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _check_amount(amount: int) -> None:
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise ValueError("amount must be a positive integer in base units")
