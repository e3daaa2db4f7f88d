"""The PostgreSQL ledger's facets beside the money (:class:`mpp.ledger.pg.PgLedger`): who may spend
(``ledger.keys``: members, mandate revocations and budgets) and sessions held on the ledger
(``ledger.sessions``). Both run their transactions through the ledger's :class:`PgBook`, taking
locks in the order :mod:`mpp.ledger.pg` describes."""

from __future__ import annotations

import json

import asyncpg

from mpp.protocol.errors import PaymentProblem
from mpp.protocol.models import format_rfc3339
from mpp.intents.session import SessionTerms, Voucher, VoucherInvalid, verify_cap, verify_voucher
from mpp.ledger._pg_book import (
    OWNERS,
    ROLES,
    SELECT_SESSION,
    SESSION_COLUMNS,
    PgBook,
    advisory,
    check_amount,
    count_spend,
    dumps,
    is_holding,
    lock_key,
    not_holding,
    now,
    row_hold,
)
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

__all__ = ["PgKeys", "PgSessions"]


class PgKeys:
    """Who may spend from an account (its members and their roles), the mandates revoked, and
    what each mandate link has spent: ``ledger.keys``. Coroutines; see SqliteKeys."""

    def __init__(self, book: PgBook) -> None:
        self._book = book

    async def allow(self, account_id: str, did: str, role: str) -> None:
        """Enrol ``did`` as an ``owner`` or a mandate-bound ``agent``, replacing its role (LEDGER-ACCT-02)."""
        check_member(did, role)
        not_holding(account_id)

        async def work(conn: asyncpg.Connection) -> None:
            # The account's row lock orders this against transfers, which read the members under it.
            kind = await conn.fetchval("SELECT kind FROM ledger_accounts WHERE id=$1 FOR NO KEY UPDATE", account_id)
            if kind is None:
                raise UnknownAccount(f"no account {account_id!r}")
            if kind != "asset":
                raise ValueError(f"{account_id!r} is the ledger's own {kind} account: nobody spends from it")
            keeps_an_owner(account_id, {r[0] for r in await conn.fetch(OWNERS, account_id)}, did, role)
            await conn.execute("INSERT INTO ledger_account_members(account_id, did, role) VALUES ($1, $2, $3) "
                               "ON CONFLICT (account_id, did) DO UPDATE SET role=excluded.role", account_id, did, role)

        await self._book.atomic(work)

    async def deny(self, account_id: str, did: str) -> None:
        """``did`` spends nothing from the account from now on, directly or in any mandate chain."""
        await self.allow(account_id, did, "denied")

    async def members(self, account_id: str) -> dict[str, str]:
        """Role by DID (``owner``, ``agent`` or ``denied``) of every member of the account, sorted by
        DID. UnknownAccount if there is no such account."""
        await self._book.account(account_id)  # UnknownAccount
        pool = await self._book.pool()
        return {r[0]: r[1] for r in await pool.fetch(
            "SELECT did, role FROM ledger_account_members WHERE account_id=$1 ORDER BY did", account_id)}

    async def spend_check(self, payer: str, *, signer: str, chain: tuple[str, ...] | None) -> None:
        """See SqliteKeys.spend_check."""
        await self._book.account(payer)  # UnknownAccount
        pool = await self._book.pool()
        roles = {r[0]: r[1] for r in await pool.fetch(ROLES, payer, list(chain or (signer,)))}
        check_spender(roles, signer=signer, chain=chain)

    async def revoke(self, revocation_token: str, mandate_token: str) -> str:
        """Record a signed revocation; every later transfer under that mandate is refused."""
        from mpp.identity import verify_revocation

        jti, revoker = verify_revocation(revocation_token, mandate_token)
        pool = await self._book.pool()
        await pool.execute("INSERT INTO ledger_revocations(jti, revoker, revoked_at, token) VALUES ($1, $2, $3, $4) "
                           "ON CONFLICT (jti) DO NOTHING", jti, revoker, now(), revocation_token)
        return jti

    async def revoked(self, jtis: tuple[str, ...] | list[str]) -> set[str]:
        """Those of ``jtis`` (mandate keys, ``<iss>#<jti>``) that are revoked on this ledger; an empty
        set if none is (IDENT-REV-03)."""
        if not jtis:
            return set()
        pool = await self._book.pool()
        return {r[0] for r in await pool.fetch("SELECT jti FROM ledger_revocations WHERE jti = ANY($1::text[])", list(jtis))}

    async def mandate_spent(self, jti: str, period: str) -> int:
        """What the mandate link ``jti`` (its key) has counted against its budget in ``period``
        (``total``, or a day, week or month key), in base units, across every seller and process:
        charges and session holds, less refunds and what session closes released; 0 if nothing was
        counted."""
        pool = await self._book.pool()
        return int(await pool.fetchval(
            "SELECT COALESCE((SELECT spent FROM ledger_mandate_totals WHERE jti=$1 AND period=$2), 0)::bigint", jti, period))


class PgSessions:
    """Sessions on the ledger, ``ledger.sessions``: a cap held from the payer at open (and raised
    by top-ups), captured for the payee and released to the payer at close. Coroutines; see
    SqliteSessions."""

    def __init__(self, book: PgBook) -> None:
        self._book = book

    async def open(
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
        to ``holds:<currency>``), once; see SqliteSessions.open."""
        check_amount(cap)
        sid = terms.session_id
        if not isinstance(sid, str) or not sid or ":" in sid:
            raise ValueError("a session id must be a non-empty string without ':'")
        _verify_cap(signer, terms, payer, cap, cap_signature)
        terms_json = dumps(terms.as_json())
        tokens = dumps(list(mandate.tokens)) if mandate is not None else None
        realm = mandate.realm if mandate is not None else None
        ledger_id = (await self._book.open()).ledger_id
        verified = await self._book.preverify(payer, signer, mandate, currency=terms.currency, amount=None)

        async def work(conn: asyncpg.Connection) -> SessionHold:
            await advisory(conn, [lock_key("session", sid)])
            row = await conn.fetchrow("SELECT payer, signer, terms, open_cap, mandate, realm FROM ledger_sessions WHERE id=$1",
                                      sid)
            if row is not None:
                if tuple(row) != (payer, signer, terms_json, cap, tokens, realm):
                    raise TransferConflict(f"session {sid!r} was opened with other terms")
                return await _session(conn, sid)  # type: ignore[return-value]
            if terms.ledger != ledger_id:
                raise UnknownAccount(f"the session's terms name ledger {terms.ledger!r}, not this one")
            currency, payee = terms.currency, terms.recipient
            holds = holding_account(currency)
            accounts = await self._book.lock_accounts(conn, [payer, payee, holds])
            check_parties({a: r["currency"] for a, r in accounts.items() if r["kind"] == "asset"}, payer, payee, currency)
            if payer == payee or is_holding(payer) or is_holding(payee):
                raise UnknownAccount("a session's payer and payee must differ, and neither may be the holding account")
            links = await self._book.authorized_links(conn, payer, signer, mandate, verified, currency=currency, amount=None)
            balance = accounts[payer]["balance"]
            if balance < cap:
                raise InsufficientFunds(f"balance {balance} is below the cap {cap}")
            hold_id = "hold:" + sid
            if await self._book.get(conn, hold_id) is not None:
                raise TransferConflict(f"transfer {hold_id!r} already exists")
            await self._book.spend_budgets(conn, links, hold_id, cap, sid)
            if holds not in accounts:  # the currency's first session: its row is new, and ours until commit
                await self._book.ensure_account(conn, holds, currency, "asset")
            elif (accounts[holds]["currency"], accounts[holds]["kind"]) != (currency, "asset"):
                raise TransferConflict(f"account {holds!r} exists with currency {accounts[holds]['currency']!r}, "
                                       f"kind {accounts[holds]['kind']!r}")
            opened_at = now()
            await self._book.post(conn, hold_id, payer, holds, cap, currency, "hold", signer, at=opened_at)
            await conn.execute(
                "INSERT INTO ledger_sessions(id, payer, payee, currency, signer, terms, open_cap, cap, status, mandate, realm, "
                "opened_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, 'open', $8, $9, $10)",
                sid, payer, payee, currency, signer, terms_json, cap, tokens, realm, opened_at,
            )
            return SessionHold(sid, payer, payee, currency, signer, cap, 0, 0, "open", format_rfc3339(opened_at))

        return await self._book.atomic(work)

    async def top_up(self, session_id: str, *, cap: int, cap_signature: str) -> SessionHold:
        """Raise the session's cap to ``cap`` (a new total), holding the difference (transfer
        ``hold:<id>:<cap>``) within the balance and the mandate's budgets. A cap at or below the
        current one changes nothing and returns the session as it is."""
        check_amount(cap)
        pool = await self._book.pool()
        # payer, signer, terms, mandate and realm never change once a session is open
        row = await pool.fetchrow("SELECT payer, signer, terms, mandate, realm, currency FROM ledger_sessions WHERE id=$1",
                                  session_id)
        if row is None:
            raise UnknownSession(f"no session {session_id!r}")
        payer, signer, terms_json, tokens, realm, currency = row
        _verify_cap(signer, SessionTerms.from_json(json.loads(terms_json)), payer, cap, cap_signature)
        mandate = MandateCharge(tuple(json.loads(tokens)), realm) if tokens is not None else None
        holds = holding_account(currency)
        verified = await self._book.preverify(payer, signer, mandate, currency=currency, amount=None)

        async def work(conn: asyncpg.Connection) -> SessionHold:
            current, status = await conn.fetchrow("SELECT cap, status FROM ledger_sessions WHERE id=$1 FOR NO KEY UPDATE",
                                                  session_id)
            if status != "open":
                raise SessionNotOpen(f"session {session_id!r} is closed")
            if cap <= current:
                return await _session(conn, session_id)  # type: ignore[return-value]
            increase = cap - current
            accounts = await self._book.lock_accounts(conn, [payer, holds])
            links = await self._book.authorized_links(conn, payer, signer, mandate, verified, currency=currency, amount=None)
            balance = accounts[payer]["balance"]
            if balance < increase:
                raise InsufficientFunds(f"balance {balance} is below the increase {increase}")
            hold_id = f"hold:{session_id}:{cap}"
            await self._book.spend_budgets(conn, links, hold_id, increase, session_id)
            await self._book.post(conn, hold_id, payer, holds, increase, currency, "hold", signer)
            return row_hold(await conn.fetchrow(f"UPDATE ledger_sessions SET cap=$2 WHERE id=$1 RETURNING {SESSION_COLUMNS}",
                                             session_id, cap))

        return await self._book.atomic(work)

    async def close(self, session_id: str, *, capture: int, voucher: Voucher | None) -> SessionClose:
        """Capture ``capture`` for the payee (``capture:<id>``) and release the rest of the cap
        to the payer (``release:<id>``), giving the released part back to the mandate budgets.
        Closing again with the same capture returns the same record."""
        if not isinstance(capture, int) or isinstance(capture, bool) or capture < 0:
            raise ValueError("capture must be a non-negative integer in base units")
        pool = await self._book.pool()
        row = await pool.fetchrow("SELECT payer, payee, currency, signer, terms FROM ledger_sessions WHERE id=$1", session_id)
        if row is None:
            raise UnknownSession(f"no session {session_id!r}")
        payer, payee, currency, signer, terms_json = row
        # The voucher is checked before the row is locked (signatures hold no locks); its refusal
        # is raised where SqliteLedger raises it.
        refusal: CaptureRefused | None = None
        if capture > 0:
            if voucher is None:
                refusal = CaptureRefused("a capture needs the agent's voucher")
            else:
                try:
                    verify_voucher(signer, SessionTerms.from_json(json.loads(terms_json)), voucher)
                except VoucherInvalid as exc:
                    refusal = CaptureRefused(f"voucher refused: {exc.detail}")
                else:
                    if voucher.cumulative < capture:
                        refusal = CaptureRefused(f"capture {capture} is above the voucher's {voucher.cumulative}")
        holds = holding_account(currency)

        async def work(conn: asyncpg.Connection) -> SessionClose:
            cap, status = await conn.fetchrow("SELECT cap, status FROM ledger_sessions WHERE id=$1 FOR NO KEY UPDATE", session_id)
            if status == "closed":
                closed = await _closed(conn, session_id)
                if closed.captured != capture:
                    raise TransferConflict(f"session {session_id!r} was closed capturing {closed.captured}, not {capture}")
                return closed
            if capture > cap:
                raise CaptureRefused(f"capture {capture} is above the session's cap {cap}")
            if refusal is not None:
                raise refusal
            await self._book.lock_accounts(conn, [holds, payee, payer])
            release = cap - capture
            capture_ref = release_ref = None
            closed_at = now()
            if capture > 0:
                capture_ref = "capture:" + session_id
                await self._book.post(conn, capture_ref, holds, payee, capture, currency, "capture", None, at=closed_at)
            if release > 0:
                release_ref = "release:" + session_id
                await self._book.post(conn, release_ref, holds, payer, release, currency, "release", None, at=closed_at)
                await _release_budgets(conn, session_id, release_ref, release)
            await conn.execute("UPDATE ledger_sessions SET status='closed', captured=$2, released=$3, closed_at=$4, "
                               "capture_ref=$5, release_ref=$6 WHERE id=$1",
                               session_id, capture, release, closed_at, capture_ref, release_ref)
            return SessionClose(session_id, capture, release, capture_ref, release_ref, format_rfc3339(closed_at))

        return await self._book.atomic(work)

    async def get(self, session_id: str) -> SessionHold | None:
        """The session's hold as it is now (cap, captured, released, status), or None if no session has
        that id."""
        return await _session(await self._book.pool(), session_id)

    async def all(self) -> list[SessionHold]:
        """Every session this ledger has held, oldest first."""
        pool = await self._book.pool()
        return [row_hold(r) for r in await pool.fetch(SELECT_SESSION + " ORDER BY seq")]


def _verify_cap(signer: str, terms: SessionTerms, payer: str, cap: int, signature: str) -> None:
    try:
        verify_cap(signer, terms, account=payer, cap=cap, signature=signature)
    except PaymentProblem as exc:  # VoucherInvalid, or a signer that is no did:key
        raise CapSignatureInvalid(f"cap refused: {exc.detail}") from None


async def _release_budgets(conn: asyncpg.Connection, session_id: str, release_ref: str, release: int) -> None:
    """Give ``release`` back to every link the session's holds were counted against, latest
    hold first, in the period each hold was counted in (row ``release:<id>``, or
    ``release:<id>:<period>`` when the holds span periods)."""
    held = await conn.fetch(
        "SELECT jti, period, SUM(amount)::bigint FROM ledger_mandate_spend WHERE session_id=$1 "
        "GROUP BY jti, period ORDER BY jti, MAX(seq) DESC",
        session_id,
    )
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
    if rows:
        await conn.execute(
            count_spend("INSERT INTO ledger_mandate_spend(transfer_id, jti, period, amount) "
                        "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])"),
            *(list(column) for column in zip(*rows)),
        )


async def _session(conn: asyncpg.Connection | asyncpg.Pool, session_id: str) -> SessionHold | None:
    row = await conn.fetchrow(SELECT_SESSION + " WHERE id=$1", session_id)
    return row_hold(row) if row else None


async def _closed(conn: asyncpg.Connection, session_id: str) -> SessionClose:
    sid, captured, released, capture_ref, release_ref, closed_at = await conn.fetchrow(
        "SELECT id, captured, released, capture_ref, release_ref, closed_at FROM ledger_sessions WHERE id=$1", session_id)
    return SessionClose(sid, captured, released, capture_ref, release_ref, format_rfc3339(closed_at))
