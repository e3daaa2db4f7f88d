"""What the SQLite ledger's facets share: statements run on a connection, inside the caller's
IMMEDIATE transaction (or outside one, for reads). :class:`mpp.ledger.sqlite.SqliteLedger` (the
money), :class:`mpp.ledger.sqlite_facets.SqliteKeys` and :class:`mpp.ledger.sqlite_facets.SqliteSessions`
all write through these, on the one connection."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone

from mpp.protocol.models import format_rfc3339
from mpp.ledger.core import (
    Account,
    BudgetExhausted,
    MandateCharge,
    MandateRevokedError,
    Transfer,
    TransferConflict,
    UnknownAccount,
    check_spender,
    holding_account,
    verified_links,
)

__all__ = ["SELECT_TRANSFER", "SELECT_SESSION", "SESSION_KINDS", "now", "ledger_id", "account", "ensure_account", "roles",
           "spent", "count_spend", "authorized_links", "spend_budgets", "get", "post", "migrate_members", "is_holding",
           "not_holding", "dumps", "check_amount"]

SELECT_TRANSFER = "SELECT id, payer, payee, amount, currency, kind, created_at, signer FROM transfers"
SELECT_SESSION = "SELECT id, payer, payee, currency, signer, cap, captured, released, status, opened_at FROM sessions"
SESSION_KINDS = ("hold", "capture", "release")


def now() -> str:
    return format_rfc3339(datetime.now(timezone.utc))


def ledger_id(c: sqlite3.Connection) -> str:
    return c.execute("SELECT value FROM meta WHERE key='ledger_id'").fetchone()[0]


def account(c: sqlite3.Connection, account_id: str) -> Account:
    row = c.execute("SELECT id, currency, balance, kind FROM accounts WHERE id=?", (account_id,)).fetchone()
    if row is None:
        raise UnknownAccount(f"no account {account_id!r}")
    return Account(*row)


def ensure_account(c: sqlite3.Connection, account_id: str, currency: str, kind: str) -> None:
    row = c.execute("SELECT currency, kind FROM accounts WHERE id=?", (account_id,)).fetchone()
    if row is None:
        c.execute("INSERT INTO accounts(id, currency, kind, balance) VALUES (?, ?, ?, 0)", (account_id, currency, kind))
    elif row[0] != currency or row[1] != kind:
        raise TransferConflict(f"account {account_id!r} exists with currency {row[0]!r}, kind {row[1]!r}")


def roles(c: sqlite3.Connection, account_id: str, dids: tuple[str, ...] | list[str]) -> dict[str, str]:
    marks = ",".join("?" * len(dids))
    return dict(c.execute(f"SELECT did, role FROM account_members WHERE account_id=? AND did IN ({marks})",
                          (account_id, *dids)))


def spent(c: sqlite3.Connection, jti: str, period: str) -> int:
    row = c.execute("SELECT spent FROM mandate_totals WHERE jti=? AND period=?", (jti, period)).fetchone()
    return row[0] if row else 0


def count_spend(c: sqlite3.Connection, rows: list[tuple[str, str, str, int]]) -> None:
    """Record (transfer id, link key, period, amount) rows of mandate spend, and move each
    (link, period)'s running total with them, in the caller's transaction: the totals are
    what budgets are checked against (one row read, however long the history)."""
    c.executemany("INSERT INTO mandate_spend(transfer_id, jti, period, amount) VALUES (?, ?, ?, ?)", rows)
    c.executemany("INSERT INTO mandate_totals(jti, period, spent) VALUES (?, ?, ?) "
                  "ON CONFLICT (jti, period) DO UPDATE SET spent = spent + excluded.spent",
                  [(jti, period, amount) for _, jti, period, amount in rows])


def authorized_links(c: sqlite3.Connection, payer: str, signer: str | None, mandate: MandateCharge | None,
                     *, currency: str, amount: int | None) -> list[tuple[str, str, int]]:
    """May ``signer`` spend from ``payer``? Through a verified, unrevoked mandate chain rooted in
    an owner (its links are returned) or, without one, as an owner of the account (LEDGER-ACCT-03)."""
    if mandate is None:
        check_spender(roles(c, payer, (signer,)) if signer else {}, signer=signer, chain=None)
        return []
    owners = [r[0] for r in c.execute("SELECT did FROM account_members WHERE account_id=? AND role='owner'", (payer,))]
    dids, links = verified_links(owners, signer, mandate, currency=currency, amount=amount)
    check_spender(roles(c, payer, dids), signer=signer, chain=dids)
    keys = [key for key, _, _ in links]
    marks = ",".join("?" * len(keys))
    if c.execute(f"SELECT 1 FROM revocations WHERE jti IN ({marks})", keys).fetchone() is not None:
        raise MandateRevokedError("a mandate in the chain has been revoked")
    return links


def spend_budgets(c: sqlite3.Connection, links: list[tuple[str, str, int]], transfer_id: str, amount: int) -> None:
    """Count ``amount`` against every link's budget, or refuse if any would be exceeded."""
    for jti, period, budget in links:
        already = spent(c, jti, period)
        if already + amount > budget:
            raise BudgetExhausted(f"mandate {jti} has {budget - already} left of {budget} for {period}")
    count_spend(c, [(transfer_id, jti, period, amount) for jti, period, _ in links])


def get(c: sqlite3.Connection, transfer_id: str) -> Transfer | None:
    row = c.execute(SELECT_TRANSFER + " WHERE id=?", (transfer_id,)).fetchone()
    return Transfer(*row) if row else None


def post(c, transfer_id, payer, payee, amount, currency, kind, signer, *, created: str | None = None) -> Transfer:
    created = created or now()
    c.execute(
        "INSERT INTO transfers(id, payer, payee, amount, currency, kind, created_at, signer) VALUES (?,?,?,?,?,?,?,?)",
        (transfer_id, payer, payee, amount, currency, kind, created, signer),
    )
    c.execute("INSERT INTO postings(transfer_id, account_id, amount) VALUES (?, ?, ?)", (transfer_id, payer, -amount))
    c.execute("INSERT INTO postings(transfer_id, account_id, amount) VALUES (?, ?, ?)", (transfer_id, payee, amount))
    c.execute("UPDATE accounts SET balance = balance - ? WHERE id=?", (amount, payer))
    c.execute("UPDATE accounts SET balance = balance + ? WHERE id=?", (amount, payee))
    return Transfer(transfer_id, payer, payee, amount, currency, kind, created, signer)


def migrate_members(c: sqlite3.Connection) -> None:
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


def is_holding(account_id: str) -> bool:
    return account_id.startswith(holding_account(""))


def not_holding(account_id: str) -> None:
    if is_holding(account_id):
        raise ValueError(f"{account_id!r} is a holding account: only session operations move value into or out of it")


def dumps(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def check_amount(amount: int) -> None:
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise ValueError("amount must be a positive integer in base units")
