"""With ``--pay-with ledger:WALLET_DIR``: the payer's balance, read before and after the requests a
check expects to be refused. A refusal has no side effect (CORE-ONCE-04), so any movement is a
failure naming the amount; a seller that settles before it checks the binding is caught at the
refusal itself, not only when the genuine credential is later refused as used.

Where the balance is read. A ``ledger`` challenge names its ledger by id
(``request.methodDetails.ledger``); the suite reads the payer account's balance from the first
of these that *is* that ledger (its own id equal to the one the challenge names):

- ``--payer-ledger LOCATION`` (option ``payer_ledger``), and then that one alone: a SQLite ledger
  file, opened read-only (the suite runs on the ledger's machine), or a ledger service's
  ``http(s)://`` URL, asked ``GET /v1/accounts/{account}`` signed with the wallet's key
  (spec/methods/ledger.md §7). Our service answers that only to a seller about its own payee
  account (LEDGER-SVC-03), so for a buyer's key it is a note, not a comparison;
- ``methodDetails.ledger`` itself, when it is an ``http(s)://`` URL or the path of a file;
- the wallet's ``wallet.json`` member ``ledger`` (a path relative to WALLET_DIR, or a URL);
- ``WALLET_DIR/../ledger.db``, where ``mpp init HOME`` puts the ledger of the wallet ``HOME/agent``.

When none can be read (no such file, another ledger, a PostgreSQL ledger, a service that does
not let the key read the account) the comparison is skipped and the check's message says why; it
never fails for that. The account should see no other traffic during the run: a payment of
someone else's between the two reads would count as a movement.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import quote

import aiohttp

from .base import CheckContext
from .expect import fail

__all__ = ["BalanceWatch", "watch_balance", "read_balance"]

Reader = Callable[[], Awaitable[int]]


class _Unreadable(Exception):
    """This location does not give the payer's balance at the challenge's ledger; the message says why."""


@dataclass
class BalanceWatch:
    """The payer's balance before some refusals, and how to read it again; or why it cannot be read."""

    label: str = ""  # "acct:buyer at ledger ledger-1a2b (ledger.db)"
    currency: str = ""
    before: int | None = None
    reader: Reader | None = None
    why_not: str | None = None  # the reason the comparison is skipped
    compared: int = 0  # refusals compared so far

    async def unmoved(self, what: str) -> None:
        """Fail when the balance moved since ``before`` (``what``: the refused requests)."""
        if self.reader is None or self.before is None:
            return
        try:
            after = await self.reader()
        except _Unreadable as exc:
            self.why_not, self.reader = f"it could not be read again: {exc}", None
            return
        if after != self.before:
            moved = after - self.before
            fail(f"{what}: the payer's balance moved by {moved:+d} {self.currency} ({self.label}: {self.before} before, "
                 f"{after} after) though the request was refused: a refusal must move no money (CORE-ONCE-04)")
        self.compared += 1

    async def again(self) -> None:
        """A new ``before``: after a payment the check meant to make."""
        if self.reader is None:
            return
        try:
            self.before = await self.reader()
        except _Unreadable as exc:
            self.why_not, self.reader, self.before = f"it could not be read again: {exc}", None, None

    @property
    def note(self) -> str:
        """What the check's message says of the comparison ("" for a payer without a balance)."""
        if self.why_not is not None:
            return f"; the payer's balance was not compared: {self.why_not}"
        if self.compared:
            return f"; the payer's balance did not move on the refusals ({self.label})"
        return ""


def _ledger_named(challenge: Any) -> str | None:
    try:
        details = challenge.request_json.get("methodDetails")
    except ValueError:
        return None
    ledger = details.get("ledger") if isinstance(details, dict) else None
    return ledger if isinstance(ledger, str) and ledger else None


def _candidates(ctx: CheckContext, payer: Any, ledger_id: str) -> list[tuple[str, str]]:
    """(location, where it came from), in the order tried."""
    given = ctx.options.get("payer_ledger")
    if given:  # named: that one alone
        return [(str(given), "--payer-ledger")]
    out: list[tuple[str, str]] = []
    if ledger_id.startswith(("http://", "https://")) or Path(ledger_id).is_file():
        out.append((ledger_id, "the challenge's methodDetails.ledger"))
    wallet = Path(payer.directory)
    try:
        meta = json.loads((wallet / "wallet.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = {}
    named = meta.get("ledger") if isinstance(meta, dict) else None
    if isinstance(named, str) and named:
        out.append((named if "://" in named else str(wallet / named), "wallet.json's ledger"))
    beside = wallet.resolve().parent / "ledger.db"
    if beside.is_file():
        out.append((str(beside), "the ledger beside the wallet (mpp init)"))
    return out


def _sqlite_reader(path: str, ledger_id: str, account: str) -> tuple[Reader, str]:
    """A read-only reader of ``account`` in the SQLite ledger ``path``, which must be ``ledger_id``."""
    file = Path(path)
    if not file.is_file():
        raise _Unreadable(f"{path}: no such file")

    def query() -> tuple[str | None, tuple[int, str] | None]:
        try:
            conn = sqlite3.connect(f"file:{quote(str(file.resolve()))}?mode=ro", uri=True, timeout=5)
        except sqlite3.Error as exc:
            raise _Unreadable(f"{path}: cannot open it read-only: {exc}") from None
        try:
            row = conn.execute("SELECT value FROM meta WHERE key='ledger_id'").fetchone()
            acct = conn.execute("SELECT balance, currency FROM accounts WHERE id=?", (account,)).fetchone()
        except sqlite3.Error as exc:
            raise _Unreadable(f"{path}: not a ledger the suite can read ({exc})") from None
        finally:
            conn.close()
        return (row[0] if row else None), (acct if acct else None)

    found, acct = query()
    if found != ledger_id:
        raise _Unreadable(f"{path} is ledger {str(found)[:40]!r}, the challenge names {ledger_id[:40]!r}")
    if acct is None:
        raise _Unreadable(f"{path} has no account {account[:60]!r}")
    currency = str(acct[1])

    async def read() -> int:
        _, now = query()
        if now is None:
            raise _Unreadable(f"{path}: account {account[:60]!r} is gone")
        return int(now[0])

    return read, currency


async def _service_reader(ctx: CheckContext, url: str, ledger_id: str, payer: Any) -> tuple[Reader, str]:
    """A reader of the payer account at the ledger service ``url``, signed with the wallet's key."""
    from mpp.aio.ledger_client import answer, send_signed, split_service_url

    try:
        origin, prefix = split_service_url(url)
    except ValueError as exc:
        raise _Unreadable(str(exc)) from None
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with ctx.session.get(origin + prefix + "/v1/info", timeout=timeout) as resp:
            info = answer(resp.status, await resp.read())
    except Exception as exc:  # noqa: BLE001 - no answer, or not a ledger service: unreadable
        raise _Unreadable(f"{url}/v1/info: {type(exc).__name__}: {str(exc)[:160]}") from None
    if info.get("ledger") != ledger_id:
        raise _Unreadable(f"{url} is ledger {str(info.get('ledger'))[:40]!r}, the challenge names {ledger_id[:40]!r}")
    path = f"/v1/accounts/{quote(payer.account, safe='')}"

    async def account() -> dict[str, Any]:
        try:
            status, raw = await send_signed(ctx.session, origin=origin, prefix=prefix, key=payer.key, ledger_id=ledger_id,
                                            method="GET", path=path, body=None, timeout=10)
            doc = answer(status, raw).get("account")
        except Exception as exc:  # noqa: BLE001 - a refusal (Forbidden: not the key's to read), or no answer
            raise _Unreadable(f"the ledger service at {url} did not let the payer's key read {payer.account!r} "
                              f"({type(exc).__name__}: {str(exc)[:160]})") from None
        if not isinstance(doc, dict) or not str(doc.get("balance", "")).lstrip("-").isdigit():
            raise _Unreadable(f"the ledger service at {url} answered no balance for {payer.account!r}")
        return doc

    first = await account()

    async def read() -> int:
        return int((await account())["balance"])

    return read, str(first.get("currency") or "")


async def read_balance(ctx: CheckContext, payer: Any, challenge: Any) -> BalanceWatch:
    """The payer's balance at the ledger ``challenge`` names, with a way to read it again."""
    ledger_id = _ledger_named(challenge)
    if ledger_id is None:
        return BalanceWatch(why_not="the challenge names no ledger (methodDetails.ledger)")
    reasons = []
    for location, origin in _candidates(ctx, payer, ledger_id):
        try:
            if location.startswith(("http://", "https://")):
                reader, currency = await _service_reader(ctx, location, ledger_id, payer)
            elif "://" in location:
                raise _Unreadable(f"{location.split('://')[0]}:// ledgers are not read by the suite")
            else:
                reader, currency = _sqlite_reader(location, ledger_id, payer.account)
            before = await reader()
        except _Unreadable as exc:
            reasons.append(f"{origin}: {exc}")
            continue
        label = f"{payer.account} at ledger {ledger_id[:40]}"
        return BalanceWatch(label, currency, before, reader)
    if not reasons:
        return BalanceWatch(why_not=f"the challenge names ledger {ledger_id[:40]!r}, an id, not where to read it; give "
                                    "--payer-ledger (its SQLite file, or its service's URL) to check that refusals move no money")
    return BalanceWatch(why_not="; ".join(reasons))


async def watch_balance(ctx: CheckContext, payer: Any, challenge: Any) -> BalanceWatch:
    """The balance watch for ``payer``: a ledger payer's balance, nothing to say for another payer."""
    from .paying import LedgerPayer

    if not isinstance(payer, LedgerPayer) or challenge.method != "ledger":
        return BalanceWatch()
    return await read_balance(ctx, payer, challenge)
