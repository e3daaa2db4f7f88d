"""SQLite ledger: each transfer is one IMMEDIATE transaction, keyed by its id."""

from __future__ import annotations

import secrets
import sqlite3
from datetime import datetime, timezone

from ..models import format_rfc3339
from ._schema import SCHEMA
from .._sqlite import connect, immediate
from .core import (
    BudgetExhausted,
    MandateCharge,
    MandateRevokedError,
    Account,
    InsufficientFunds,
    Transfer,
    TransferConflict,
    UnauthorizedSigner,
    UnknownAccount,
    issuance_account,
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

    def close(self) -> None:
        self._conn.close()

    @property
    def ledger_id(self) -> str:
        return self._conn.execute("SELECT value FROM meta WHERE key='ledger_id'").fetchone()[0]

    # -- accounts ----------------------------------------------------------

    def create_account(self, account_id: str, currency: str) -> Account:
        with immediate(self._conn) as c:
            self._ensure_account(c, account_id, currency, "asset")
        return self.account(account_id)

    @staticmethod
    def _ensure_account(c: sqlite3.Connection, account_id: str, currency: str, kind: str) -> None:
        row = c.execute("SELECT currency, kind FROM accounts WHERE id=?", (account_id,)).fetchone()
        if row is None:
            c.execute("INSERT INTO accounts(id, currency, kind, balance) VALUES (?, ?, ?, 0)", (account_id, currency, kind))
        elif row[0] != currency or row[1] != kind:
            raise TransferConflict(f"account {account_id!r} exists with currency {row[0]!r}, kind {row[1]!r}")

    def set_owner(self, account_id: str, principal: str) -> None:
        """The principal whose mandates may spend from this account."""
        with immediate(self._conn) as c:
            if c.execute("SELECT 1 FROM accounts WHERE id=?", (account_id,)).fetchone() is None:
                raise UnknownAccount(f"no account {account_id!r}")
            c.execute("INSERT OR REPLACE INTO account_owners(account_id, principal) VALUES (?, ?)", (account_id, principal))

    def owner(self, account_id: str) -> str | None:
        row = self._conn.execute("SELECT principal FROM account_owners WHERE account_id=?", (account_id,)).fetchone()
        return row[0] if row else None

    # -- revocation ----------------------------------------------------------

    def revoke(self, revocation_token: str, mandate_token: str) -> str:
        """Record a signed revocation; every later transfer under that mandate is refused."""
        from ..identity import verify_revocation

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
        return self._conn.execute("SELECT COALESCE(SUM(amount), 0) FROM mandate_spend WHERE jti=? AND period=?", (jti, period)).fetchone()[0]

    def authorize_key(self, account_id: str, did: str) -> None:
        with immediate(self._conn) as c:
            if c.execute("SELECT 1 FROM accounts WHERE id=?", (account_id,)).fetchone() is None:
                raise UnknownAccount(f"no account {account_id!r}")
            c.execute("INSERT OR IGNORE INTO account_keys(account_id, did) VALUES (?, ?)", (account_id, did))

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
        """Credit ``account_id`` from its currency's issuance account (prepaid credit)."""
        _check_amount(amount)
        reference = reference or "fund-" + secrets.token_hex(8)
        with immediate(self._conn) as c:
            row = c.execute("SELECT currency FROM accounts WHERE id=?", (account_id,)).fetchone()
            if row is None:
                raise UnknownAccount(f"no account {account_id!r}")
            source = issuance_account(row[0])
            self._ensure_account(c, source, row[0], "issuance")
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
            links = self._verified_links(c, payer, signer, mandate) if mandate is not None else []
            if links:
                keys = [key for key, _, _ in links]
                marks = ",".join("?" * len(keys))
                if c.execute(f"SELECT 1 FROM revocations WHERE jti IN ({marks})", keys).fetchone() is not None:
                    raise MandateRevokedError("a mandate in the chain has been revoked")
            if signer is not None and not links and not self._may_spend(c, payer, signer):
                raise UnauthorizedSigner("signer may not spend from the payer account")
            if accounts[payer][3] == "asset" and accounts[payer][2] < amount:
                raise InsufficientFunds(f"balance {accounts[payer][2]} is below {amount}")
            if links:
                for jti, period, budget in links:
                    spent = c.execute(
                        "SELECT COALESCE(SUM(amount), 0) FROM mandate_spend WHERE jti=? AND period=?", (jti, period)
                    ).fetchone()[0]
                    if spent + amount > budget:
                        raise BudgetExhausted(f"mandate {jti} has {budget - spent} left of {budget} for {period}")
                for jti, period, _ in links:
                    c.execute("INSERT INTO mandate_spend(transfer_id, jti, period, amount) VALUES (?, ?, ?, ?)",
                              (transfer_id, jti, period, amount))
            return self._post(c, transfer_id, payer, payee, amount, currency, "charge", signer)

    @staticmethod
    def _may_spend(c: sqlite3.Connection, payer: str, signer: str) -> bool:
        return c.execute("SELECT 1 FROM account_keys WHERE account_id=? AND did=?", (payer, signer)).fetchone() is not None

    @staticmethod
    def _verified_links(c: sqlite3.Connection, payer: str, signer: str | None, mandate: MandateCharge) -> list[tuple[str, str, int]]:
        """Verify the chain here too: the payer account's owner is the only trusted root, and the
        leaf's subject must be the one who signed the payment. Returns (key, period, budget) per link."""
        from ..errors import PaymentProblem
        from ..identity import period_key, verify_chain

        row = c.execute("SELECT principal FROM account_owners WHERE account_id=?", (payer,)).fetchone()
        if row is None:
            raise UnauthorizedSigner("the payer account has no owning principal; mandates cannot spend from it")
        now = datetime.now(timezone.utc)
        try:
            chain = verify_chain(list(mandate.tokens), trusted_principals={row[0]}, realm=mandate.realm, now=now, max_depth=15)
        except PaymentProblem as exc:
            raise UnauthorizedSigner(f"mandate chain refused by the ledger: {exc.slug}: {exc.detail}") from None
        if signer is not None and chain.agent != signer:
            raise UnauthorizedSigner("the payment signer is not the mandate's subject")
        return [(link.key, period_key(link.budget_period, now), link.budget_amount) for link in chain.links]

    def refund(self, transfer_id: str) -> Transfer:
        """Reverse a charge once (``refund:<id>``), e.g. when the seller could not deliver."""
        with immediate(self._conn) as c:
            original = self._get(c, transfer_id)
            if original is None:
                raise UnknownAccount(f"no transfer {transfer_id!r}")
            refund_id = "refund:" + transfer_id
            existing = self._get(c, refund_id)
            if existing is not None:
                return existing
            # Give the mandate budgets back too: the refunded purchase never happened.
            c.execute(
                "INSERT INTO mandate_spend(transfer_id, jti, period, amount) "
                "SELECT ?, jti, period, -amount FROM mandate_spend WHERE transfer_id=?",
                (refund_id, transfer_id),
            )
            return self._post(c, refund_id, original.payee, original.payer, original.amount, original.currency, "refund", None)

    def get_transfer(self, transfer_id: str) -> Transfer | None:
        return self._get(self._conn, transfer_id)

    def transfers(self) -> list[Transfer]:
        return [Transfer(*r) for r in self._conn.execute(_SELECT_TRANSFER + " ORDER BY rowid")]

    def check(self) -> list[str]:
        """Invariants: each transfer's postings sum to zero; each balance equals its postings."""
        problems = []
        for tid, total in self._conn.execute("SELECT transfer_id, SUM(amount) FROM postings GROUP BY transfer_id HAVING SUM(amount) != 0"):
            problems.append(f"transfer {tid} postings sum to {total}")
        for acct, balance, posted in self._conn.execute(
            "SELECT a.id, a.balance, COALESCE((SELECT SUM(amount) FROM postings p WHERE p.account_id=a.id), 0) FROM accounts a"
        ):
            if balance != posted:
                problems.append(f"account {acct} balance {balance} != postings {posted}")
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


def _check_amount(amount: int) -> None:
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise ValueError("amount must be a positive integer in base units")
