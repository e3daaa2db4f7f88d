"""One purchase, one transaction: a seller whose payment records and audit log live in its
embedded SQLite ledger's own database (``SqlitePaymentStore.beside(ledger)``,
``AuditLog.beside(ledger)``) claims the challenge, moves the money, counts the mandate budgets,
records the payment with its signed receipt and appends its audit entries in one ``BEGIN
IMMEDIATE`` ... ``COMMIT`` (spec/core.md, CORE-ONCE-10).

The seller has verified the mandate chain (signatures, expiry, trust) in this process before it
calls :meth:`SqliteBook.purchase`; the transaction checks what only the ledger knows, once:
that the chain's principal owns the payer account and no key in it is denied, that no link is
revoked, this seller's own share of every link's budget (IDENT-BUD-04), the balance and every
link's budget across sellers. A refusal for who is paying (LEDGER-ACCT-05) or a
revocation rolls everything back, so the challenge stays unconsumed and the buyer can put it
right and retry it (the seller's share of a budget refused, too: a policy refusal, IDENT-POL-02);
a refusal for money (balance, budget) keeps the challenge consumed, its
record ``failed`` (IDENT-ERR-03), in the same transaction.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from mpp.ledger import _sqlite_ops as ops
from mpp.ledger.core import (
    BudgetExhausted,
    InsufficientFunds,
    LedgerError,
    MandateRevokedError,
    OverMandate,
    TransferConflict,
    UnauthorizedSigner,
    UnknownAccount,
    check_parties,
    check_spender,
)
from mpp.ledger.sqlite import SqliteLedger
from mpp.stores.audit import AuditLog, append_in
from mpp.stores.payments import SqlitePaymentStore

__all__ = ["MandateLink", "VerifiedMandate", "Purchase", "SqliteBook"]


@dataclass(frozen=True)
class MandateLink:
    """One link of a verified mandate chain as the ledger counts it."""

    key: str  # the link's budget key (issuer#jti)
    period: str  # the budget period it counts in now
    budget: int
    currency: str
    ceiling: int


@dataclass(frozen=True)
class VerifiedMandate:
    """A mandate chain verified in this process: its DIDs (principal first, the signer last) and links."""

    dids: tuple[str, ...]
    links: tuple[MandateLink, ...]


@dataclass(frozen=True)
class Purchase:
    """Everything one purchase writes."""

    challenge_id: str  # also the transfer's id and the receipt's reference
    resource: str
    idempotency_key: str | None
    payer: str
    payee: str
    amount: int
    currency: str
    signer: str | None
    settled_at: str  # RFC 3339 to the second: the transfer's time, as the receipt states it
    receipt: str  # the Payment-Receipt header value
    mandate: VerifiedMandate | None = None
    approval: str | None = None  # "iss#jti" of the approval used
    audit: tuple[tuple[str, dict[str, Any]], ...] = ()


class _MoneyRefusal(Exception):
    def __init__(self, error: LedgerError) -> None:
        self.error = error


class SqliteBook:
    """The ledger, the payment records and (optionally) the audit log on one connection."""

    def __init__(self, ledger: SqliteLedger, payments: SqlitePaymentStore, audit: AuditLog | None = None) -> None:
        conn = ledger.connection
        if payments.connection is not conn or (audit is not None and audit.connection is not conn):
            raise ValueError("the payment store and the audit log must be kept beside the ledger (on its connection)")
        self._conn = conn
        self.audit = audit is not None

    @staticmethod
    def fits(ledger: Any, payments: Any, audit: Any) -> bool:
        """Whether these three can be one book: the payments (and the log, if any) on the ledger's connection."""
        conn = getattr(ledger, "connection", None)
        return (isinstance(ledger, SqliteLedger) and isinstance(payments, SqlitePaymentStore)
                and payments.connection is conn
                and (audit is None or (isinstance(audit, AuditLog) and audit.connection is conn)))

    def purchase(self, p: Purchase) -> bool:
        """Claim, pay and record ``p`` in one write transaction. False if the challenge was claimed
        before (nothing written); a LedgerError if the ledger refuses (see the module docstring),
        with ``consumed = True`` set on it when the refusal is for money and the challenge stays used."""
        if not isinstance(p.amount, int) or p.amount <= 0:
            raise ValueError("amount must be a positive integer in base units")
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            if c.execute(
                "INSERT OR IGNORE INTO payments(challenge_id, resource, state, idempotency_key, payer, amount, currency, "
                "reference, receipt, created_at, updated_at) VALUES (?, ?, 'settled', ?, ?, ?, ?, ?, ?, ?, ?)",
                (p.challenge_id, p.resource, p.idempotency_key, p.payer, str(p.amount), p.currency, p.challenge_id,
                 p.receipt, p.settled_at, p.settled_at),
            ).rowcount != 1:
                c.execute("ROLLBACK")
                return False
            links, payer = self._who(c, p)
            try:
                self._money(c, p, links, payer)
            except _MoneyRefusal as refusal:  # the challenge stays consumed, its record failed (IDENT-ERR-03)
                c.execute("UPDATE payments SET state='failed', failure=?, reference=NULL, receipt=NULL WHERE challenge_id=?",
                          (type(refusal.error).__name__, p.challenge_id))
                c.execute("COMMIT")
                refusal.error.consumed = True  # type: ignore[attr-defined]  # the payer was accepted: it has shown who it is
                raise refusal.error from None
            if links:
                ops.count_spend(c, [(p.challenge_id, link.key, link.period, p.amount) for link in links])
                c.executemany("INSERT INTO seller_mandate_spend(challenge_id, jti, period, amount) VALUES (?, ?, ?, ?)",
                              [(p.challenge_id, link.key, link.period, p.amount) for link in links])
                c.executemany("INSERT INTO seller_mandate_totals(jti, period, spent) VALUES (?, ?, ?) "
                              "ON CONFLICT (jti, period) DO UPDATE SET spent = spent + excluded.spent",
                              [(link.key, link.period, p.amount) for link in links])
            if p.approval is not None:
                c.execute("INSERT OR IGNORE INTO approvals_used(jti, challenge_id) VALUES (?, ?)", (p.approval, p.challenge_id))
            ops.post(c, p.challenge_id, p.payer, p.payee, p.amount, p.currency, "charge", p.signer, created=p.settled_at)
            if self.audit and p.audit:
                append_in(c, p.audit)
            c.execute("COMMIT")
            return True
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise

    def refund(self, challenge_id: str, why: str, audit: tuple[tuple[str, dict[str, Any]], ...] = ()) -> None:
        """Undo a purchase the seller could not deliver, in one transaction: the money back
        (``refund:<id>``), the mandate budgets given back at the ledger and the seller, the record
        ``refunded``, the audit entries appended. Idempotent: a purchase refunded already is left alone."""
        c = self._conn
        refund_id = "refund:" + challenge_id
        c.execute("BEGIN IMMEDIATE")
        try:
            original = ops.get(c, challenge_id)
            if original is None:
                raise UnknownAccount(f"no transfer {challenge_id!r}")
            if ops.get(c, refund_id) is not None:
                c.execute("ROLLBACK")
                return
            ops.count_spend(c, [(refund_id, jti, period, -amount) for jti, period, amount in c.execute(
                "SELECT jti, period, amount FROM mandate_spend WHERE transfer_id=? ORDER BY rowid", (challenge_id,)).fetchall()])
            ops.post(c, refund_id, original.payee, original.payer, original.amount, original.currency, "refund", None)
            rows = c.execute("SELECT jti, period, amount FROM seller_mandate_spend WHERE challenge_id=?", (challenge_id,)).fetchall()
            c.execute("DELETE FROM seller_mandate_spend WHERE challenge_id=?", (challenge_id,))
            c.executemany("UPDATE seller_mandate_totals SET spent = spent - ? WHERE jti=? AND period=?",
                          [(amount, jti, period) for jti, period, amount in rows])
            c.execute("UPDATE payments SET state='refunded', failure=?, updated_at=? WHERE challenge_id=? "
                      "AND state IN ('settled', 'delivered')", (why, ops.now(), challenge_id))
            if self.audit and audit:
                append_in(c, audit)
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise

    @staticmethod
    def _who(c: sqlite3.Connection, p: Purchase) -> tuple[tuple[MandateLink, ...], tuple[Any, ...]]:
        """Accounts, signer, chain and revocation: refusals here consume nothing (LEDGER-ACCT-05)."""
        accounts = {r[0]: r for r in c.execute("SELECT id, currency, balance, kind FROM accounts WHERE id IN (?, ?)",
                                               (p.payer, p.payee))}
        check_parties({a: r[1] for a, r in accounts.items()}, p.payer, p.payee, p.currency)
        for acct in (p.payer, p.payee):
            if ops.is_holding(acct):
                raise UnauthorizedSigner("only session operations move value into or out of a holding account")
        if c.execute("SELECT 1 FROM transfers WHERE id=? UNION ALL SELECT 1 FROM voided WHERE transfer_id=?",
                     (p.challenge_id, p.challenge_id)).fetchone() is not None:
            raise TransferConflict(f"transfer {p.challenge_id!r} was made or voided before this purchase")
        if p.mandate is None:
            check_spender(ops.roles(c, p.payer, (p.signer,)) if p.signer else {}, signer=p.signer, chain=None)
            return (), accounts[p.payer]
        mandate = p.mandate
        check_spender(ops.roles(c, p.payer, mandate.dids), signer=p.signer, chain=mandate.dids)
        for link in mandate.links:
            if link.currency != p.currency:
                raise OverMandate(f"the mandate is for {link.currency!r}, not {p.currency!r}", rule="currency")
            if p.amount > link.ceiling:
                raise OverMandate(f"amount {p.amount} is above the mandate's ceiling {link.ceiling}")
        keys = [link.key for link in mandate.links]
        if c.execute(f"SELECT 1 FROM revocations WHERE jti IN ({','.join('?' * len(keys))})", keys).fetchone() is not None:
            raise MandateRevokedError("a mandate in the chain has been revoked")
        for link in mandate.links:  # this seller's own share (IDENT-BUD-04), after revocation as IDENT-POL-01 orders
            row = c.execute("SELECT spent FROM seller_mandate_totals WHERE jti=? AND period=?", (link.key, link.period)).fetchone()
            if (row[0] if row else 0) + p.amount > link.budget:
                raise OverMandate(f"budget of mandate {link.key} ({link.budget} for {link.period}) would be exceeded "
                                  "at this seller", rule="budget")
        return mandate.links, accounts[p.payer]

    @staticmethod
    def _money(c: sqlite3.Connection, p: Purchase, links: tuple[MandateLink, ...], payer: tuple[Any, ...]) -> None:
        """Balance (read in this transaction) and budgets: a refusal here keeps the challenge consumed."""
        _, _, balance, kind = payer
        if kind == "asset" and balance < p.amount:
            raise _MoneyRefusal(InsufficientFunds(f"balance {balance} is below {p.amount}"))
        for link in links:
            already = ops.spent(c, link.key, link.period)
            if already + p.amount > link.budget:
                raise _MoneyRefusal(BudgetExhausted(f"mandate {link.key} has {link.budget - already} left of "
                                                    f"{link.budget} for {link.period}"))
