"""SQLite ledger: each transfer is one IMMEDIATE transaction, keyed by its id. The money is here
(accounts, funding, transfers, refunds); who may spend is ``ledger.keys`` and sessions held on the
ledger ``ledger.sessions`` (:mod:`mpp.ledger.sqlite_facets`), on the same connection."""

from __future__ import annotations

import secrets
import sqlite3
from datetime import datetime

from mpp.protocol.models import format_rfc3339
from mpp.ledger._schema import SCHEMA
from mpp.ledger import _sqlite_ops as ops
from mpp.ledger.sqlite_facets import SqliteKeys, SqliteSessions
from mpp.stores.sqlite import connect, immediate
from mpp.ledger.core import (
    MandateCharge,
    Account,
    InsufficientFunds,
    Transfer,
    TransferConflict,
    UnauthorizedSigner,
    UnknownAccount,
    check_parties,
    check_account_id,
    check_member,
    holding_account,
    issuance_account,
    second_ceiling,
)

__all__ = ["SqliteLedger"]


class SqliteLedger:
    """Accounts, transfers and their postings; ``keys`` (who may spend) and ``sessions`` (caps held
    on the ledger) are its other facets."""

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
            ops.migrate_members(c)
        self.keys = SqliteKeys(self._conn)
        self.sessions = SqliteSessions(self._conn)

    def close(self) -> None:
        """Close the ledger's one connection, which ``keys``, ``sessions`` and the stores kept beside it
        share: none of them can be used afterwards."""
        self._conn.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """The ledger's one connection: stores kept beside it (``SqlitePaymentStore.beside``,
        ``AuditLog.beside``) write on it, so a purchase commits in one transaction."""
        return self._conn

    @property
    def ledger_id(self) -> str:
        """This ledger's id (``ledger-`` and 16 hex digits), made the first time the database is opened
        as a ledger and kept in it: what a seller's challenges name (``methodDetails.ledger``) and
        agents sign, so that an authorization settles at this ledger only."""
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
            ops.ensure_account(c, account_id, currency, "asset")
            if owner is not None:
                c.execute("INSERT OR REPLACE INTO account_members(account_id, did, role) VALUES (?, ?, 'owner')",
                          (account_id, owner))
        return self.account(account_id)

    def account(self, account_id: str) -> Account:
        """The account's currency, balance (base units) and kind. UnknownAccount if there is none."""
        return ops.account(self._conn, account_id)

    def balance(self, account_id: str) -> int:
        """The account's balance in base units. UnknownAccount if there is none."""
        return self.account(account_id).balance

    def accounts(self) -> list[Account]:
        """Every account, the ledger's own (``issuance:<currency>``, ``holds:<currency>``) included,
        ordered by id."""
        return [Account(*r) for r in self._conn.execute("SELECT id, currency, balance, kind FROM accounts ORDER BY id")]

    def total(self) -> int:
        """Sum of every balance; zero unless the ledger is corrupt."""
        return self._conn.execute("SELECT COALESCE(SUM(balance), 0) FROM accounts").fetchone()[0]

    # -- moving value ------------------------------------------------------

    def fund(self, account_id: str, amount: int, *, reference: str | None = None) -> Transfer:
        """Credit ``account_id`` from its currency's issuance account (prepaid credit). The same
        reference again returns the first funding; with other terms it raises TransferConflict."""
        ops.check_amount(amount)
        ops.not_holding(account_id)
        reference = reference or "fund-" + secrets.token_hex(8)
        with immediate(self._conn) as c:
            row = c.execute("SELECT currency FROM accounts WHERE id=?", (account_id,)).fetchone()
            if row is None:
                raise UnknownAccount(f"no account {account_id!r}")
            source = issuance_account(row[0])
            ops.ensure_account(c, source, row[0], "issuance")
            existing = ops.get(c, reference)
            if existing is not None:  # the same reference again: the first funding (as PgLedger.fund)
                if (existing.payer, existing.payee, existing.amount, existing.kind) != (source, account_id, amount, "fund"):
                    raise TransferConflict(f"transfer {reference!r} exists with other terms")
                return existing
            return ops.post(c, reference, source, account_id, amount, row[0], "fund", None)

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
        ops.check_amount(amount)
        with immediate(self._conn) as c:
            existing = ops.get(c, transfer_id)
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
            check_parties({a: r[1] for a, r in accounts.items()}, payer, payee, currency)
            for acct in (payer, payee):
                if ops.is_holding(acct):
                    raise UnauthorizedSigner("only session operations move value into or out of a holding account")
            links = ops.authorized_links(c, payer, signer, mandate, currency=currency, amount=amount)
            if accounts[payer][3] == "asset" and accounts[payer][2] < amount:
                raise InsufficientFunds(f"balance {accounts[payer][2]} is below {amount}")
            ops.spend_budgets(c, links, transfer_id, amount)
            return ops.post(c, transfer_id, payer, payee, amount, currency, "charge", signer)

    def refund(self, transfer_id: str) -> Transfer:
        """Reverse a charge once (``refund:<id>``), e.g. when the seller could not deliver."""
        with immediate(self._conn) as c:
            original = ops.get(c, transfer_id)
            if original is None:
                raise UnknownAccount(f"no transfer {transfer_id!r}")
            if original.kind in ops.SESSION_KINDS:
                # Reversing one leg of a session would strand value in (or drain) the holding account.
                raise TransferConflict(f"transfer {transfer_id!r} belongs to a session; sessions end with close_session")
            if original.kind != "charge":  # a fund, or a refund: reversing it would issue or move value no purchase moved
                raise TransferConflict(f"transfer {transfer_id!r} is a {original.kind}, not a charge: only charges are refunded")
            refund_id = "refund:" + transfer_id
            existing = ops.get(c, refund_id)
            if existing is not None:
                return existing
            held = c.execute("SELECT balance, kind FROM accounts WHERE id=?", (original.payee,)).fetchone()
            if held is not None and held[1] == "asset" and held[0] < original.amount:
                raise InsufficientFunds(f"balance {held[0]} of {original.payee!r} is below the refund {original.amount}")
            # Give the mandate budgets back too: the refunded purchase never happened.
            ops.count_spend(c, [(refund_id, jti, period, -amount) for jti, period, amount in c.execute(
                "SELECT jti, period, amount FROM mandate_spend WHERE transfer_id=? ORDER BY rowid", (transfer_id,)).fetchall()])
            return ops.post(c, refund_id, original.payee, original.payer, original.amount, original.currency, "refund", None)

    def void(self, transfer_id: str, *, payee: str | None = None) -> Transfer | None:
        """Make sure no charge stands under ``transfer_id``: refund it if it was made (returns the
        refund), else record the id so that a transfer under it is refused from now on (None).
        For a seller that sent a transfer and got no answer: afterwards the outcome is known.
        With ``payee``, a charge to another payee is refused (TransferConflict), not refunded."""
        with immediate(self._conn) as c:
            original = ops.get(c, transfer_id)
            if original is None:
                c.execute("INSERT OR IGNORE INTO voided(transfer_id, voided_at) VALUES (?, ?)", (transfer_id, ops.now()))
                return None
            if original.kind != "charge" or (payee is not None and original.payee != payee):
                raise TransferConflict(f"transfer {transfer_id!r} is not a charge to this payee")
        return self.refund(transfer_id)  # a charge, once made, stays: refund() is idempotent, so this is too

    def get_transfer(self, transfer_id: str) -> Transfer | None:
        """The transfer recorded under ``transfer_id``, or None (also for an id only voided)."""
        return ops.get(self._conn, transfer_id)

    def transfers(self) -> list[Transfer]:
        """Every transfer on the ledger, of every kind, oldest first (unbounded: for inspection and
        tests)."""
        return [Transfer(*r) for r in self._conn.execute(ops.SELECT_TRANSFER + " ORDER BY rowid")]

    def transfers_of(self, account_id: str, since: datetime, until: datetime) -> list[Transfer]:
        """The transfers to or from ``account_id`` made in [since, until) (to the second, as they are
        stamped), oldest first."""
        lo, hi = format_rfc3339(second_ceiling(since)), format_rfc3339(second_ceiling(until))
        return [Transfer(*r) for r in self._conn.execute(
            ops.SELECT_TRANSFER + " WHERE (payer = ? OR payee = ?) AND created_at >= ? AND created_at < ? ORDER BY rowid",
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
