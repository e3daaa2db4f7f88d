"""Rails: a seller-side method plus its settlement. Settlement is idempotent by challenge id."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Iterator, Protocol
from urllib.parse import quote

import aiohttp

from mpp.protocol.wire import loads_strict
from mpp.stores.doubt import DoubtJournal, MemoryDoubtJournal
from mpp.protocol.errors import ExtensionProblem, InvalidChallenge, PaymentInsufficient, VerificationFailed
from mpp.identity import BudgetExceeded, CurrencyNotAllowed, MandateRequired, MandateRevoked, OverCeiling
from mpp.protocol.keys import SigningKey
from mpp.ledger import (
    AuthorizationInvalid,
    BudgetExhausted,
    CapSignatureInvalid,
    InsufficientFunds,
    MandateCharge,
    MandateRequired as MandateRequiredError,
    OverMandate,
    MandateRevokedError,
    SessionClose,
    SessionHold,
    SessionNotOpen,
    SqliteLedger,
    Transfer,
    TransferConflict,
    UnauthorizedSigner,
    UnknownAccount,
    UnknownSession,
    LedgerError,
)
from mpp.ledger.api import AsyncLedger, as_async_ledger
from mpp.ledger.signing import TEXT_MAX, printable_text
from mpp.aio.ledger_client import ServiceRefused, answer, send_signed, split_service_url
from mpp.methods import SellerMethod
from mpp.methods.ledger import LedgerAuthorization, LedgerSellerMethod
from mpp.protocol.models import format_rfc3339
from mpp.engine.core import Verified
from mpp.intents.session import SessionClosed, SessionTerms, SessionUnknown, Voucher, VoucherInvalid

__all__ = ["Settlement", "PaymentRail", "EmbeddedLedgerRail", "HttpLedgerRail", "LedgerUnavailable"]

log = logging.getLogger("mpp.rails")

_ALLOWED_MAX = 4096  # spend-check answers an HttpLedgerRail keeps


@dataclass(frozen=True)
class Settlement:
    reference: str
    settled_at: datetime
    payer: str | None = None


class PaymentRail(SellerMethod, Protocol):
    async def settle(self, verified: Verified, mandate: MandateCharge | None = None) -> Settlement:
        """Move the money, at most once per challenge id; with ``mandate``, within its budgets
        and only if no link is revoked. Raise a PaymentProblem to refuse."""

    async def revoked(self, jtis: tuple[str, ...]) -> set[str]:
        """Which of these mandate ids the rail knows to be revoked."""

    async def precheck(self, verified: Verified, chain: tuple[str, ...] | None) -> None:
        """Before the challenge is consumed: raise a PaymentProblem if the rail already knows that
        settlement would be refused for who is paying (the payer and signer of ``verified``, bare
        or under a verified mandate chain of these DIDs, principal first), so that the buyer can
        put it right and retry the same challenge."""

    async def refund(self, settlement: Settlement) -> None:
        """Give the money back (the seller could not deliver). Idempotent."""


@contextmanager
def _charge_problems() -> Iterator[None]:
    """The ledger's refusals of a charge as the problems a buyer sees, whichever way the ledger is reached."""
    try:
        yield
    except MandateRequiredError as exc:
        raise MandateRequired(f"the ledger refuses: {exc}") from exc
    except OverMandate as exc:
        problem = CurrencyNotAllowed if exc.rule == "currency" else OverCeiling
        raise problem(f"the ledger refuses: {exc}", rule=exc.rule) from exc
    except MandateRevokedError as exc:
        raise MandateRevoked("a mandate in the chain has been revoked") from exc
    except BudgetExhausted as exc:
        raise BudgetExceeded(f"the ledger refuses: {exc}", rule="budget") from exc
    except InsufficientFunds as exc:
        raise PaymentInsufficient("payer account balance is too low for this charge") from exc
    except (UnauthorizedSigner, UnknownAccount, AuthorizationInvalid) as exc:
        raise VerificationFailed(f"signer may not spend from that account: {exc}") from exc
    except TransferConflict as exc:
        raise InvalidChallenge("challenge id was already settled on other terms") from exc


class EmbeddedLedgerRail(LedgerSellerMethod):
    """The ``ledger`` method settled by this process on the ledger's own database: a SqliteLedger
    (each call inline, one short transaction) or any AsyncLedger, e.g. :class:`mpp.stores.pg.PgLedger`
    shared by several seller processes. An async ledger's id is learnt in :meth:`start` (or
    :meth:`lifecycle` in ``app.cleanup_ctx``), before the first challenge names it."""

    def __init__(self, ledger: SqliteLedger | AsyncLedger, *, recipient: str) -> None:
        super().__init__(recipient=recipient, ledger_id=ledger.ledger_id if isinstance(ledger, SqliteLedger) else "")
        self.ledger = ledger
        self._ledger: AsyncLedger = as_async_ledger(ledger)

    async def start(self) -> None:
        await self._ledger.open()
        self.ledger_id = self._ledger.ledger_id

    async def lifecycle(self, app: Any) -> AsyncIterator[None]:
        """For ``app.cleanup_ctx``: the ledger opened before the seller serves, closed after."""
        await self.start()
        yield
        await self._ledger.close()

    async def settle(self, verified: Verified, mandate: MandateCharge | None = None) -> Settlement:
        auth: LedgerAuthorization = verified.proof
        with _charge_problems():
            transfer = await self._ledger.transfer(
                verified.challenge_id,
                payer=auth.account,
                payee=auth.recipient,
                amount=auth.amount,
                currency=auth.currency,
                signer=auth.signer,
                mandate=mandate,
            )
        settled = datetime.strptime(transfer.created_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        return Settlement(reference=transfer.id, settled_at=settled, payer=auth.account)

    async def refund(self, settlement: Settlement) -> None:
        await self._ledger.refund(settlement.reference)

    async def revoked(self, jtis: tuple[str, ...]) -> set[str]:
        return await self._ledger.keys.revoked(jtis)

    async def precheck(self, verified: Verified, chain: tuple[str, ...] | None) -> None:
        auth: LedgerAuthorization = verified.proof
        await self.check_payer(auth.account, auth.signer, chain)

    async def check_payer(self, payer: str, signer: str, chain: tuple[str, ...] | None) -> None:
        """LEDGER-ACCT-05: may ``signer`` spend from ``payer`` (bare, or under a chain of these DIDs)?"""
        with _charge_problems():
            await self._ledger.keys.spend_check(payer, signer=signer, chain=chain)

    # -- the session intent: hold at open, capture and release at close ------------------

    async def open_session(self, terms: SessionTerms, *, payer: str, signer: str, cap: int, cap_signature: str,
                           mandate: MandateCharge | None = None) -> SessionHold:
        """Hold ``cap`` from ``payer`` for the session, once per session id (the challenge id)."""
        with self._session_problems():
            return await self._ledger.sessions.open(terms, payer=payer, signer=signer, cap=cap, cap_signature=cap_signature,
                                            mandate=mandate)

    async def top_up_session(self, session_id: str, *, cap: int, cap_signature: str) -> SessionHold:
        """Raise the session's cap to ``cap`` in total; a lower or equal cap changes nothing."""
        with self._session_problems():
            return await self._ledger.sessions.top_up(session_id, cap=cap, cap_signature=cap_signature)

    async def close_session(self, session_id: str, *, capture: int, voucher: Voucher | None) -> SessionClose:
        """Capture what was used and release the rest. A capture the voucher does not cover raises
        CaptureRefused (a LedgerError: the seller's own bug, not the buyer's)."""
        with self._session_problems():
            return await self._ledger.sessions.close(session_id, capture=capture, voucher=voucher)

    @staticmethod
    @contextmanager
    def _session_problems() -> Iterator[None]:
        """The ledger's session refusals as the problems a buyer sees (as settle() maps charges)."""
        try:
            yield
        except MandateRequiredError as exc:
            raise MandateRequired(f"the ledger refuses: {exc}") from exc
        except OverMandate as exc:
            raise CurrencyNotAllowed(f"the ledger refuses: {exc}", rule=exc.rule) from exc
        except MandateRevokedError as exc:
            raise MandateRevoked("a mandate in the chain has been revoked") from exc
        except BudgetExhausted as exc:
            raise BudgetExceeded(f"the ledger refuses: {exc}", rule="budget") from exc
        except InsufficientFunds as exc:
            raise PaymentInsufficient("payer account balance is too low for this cap") from exc
        except (UnauthorizedSigner, UnknownAccount) as exc:
            raise VerificationFailed(f"signer may not spend from that account: {exc}") from exc
        except CapSignatureInvalid as exc:
            raise VoucherInvalid("cap signature does not verify for the session's signer") from exc
        except TransferConflict as exc:
            raise InvalidChallenge("session was already opened or closed on other terms") from exc
        except SessionNotOpen as exc:
            raise SessionClosed("the session is closed") from exc
        except UnknownSession as exc:
            raise SessionUnknown("no such session on this ledger") from exc


# -- the ledger as a service (`mpp ledger serve`), over HTTP ---------------------------------


class LedgerUnavailable(ExtensionProblem):
    """The seller could not get a usable answer from its ledger service. Nothing is delivered,
    and nothing stays charged for the request: a transfer the ledger may have made is voided
    as soon as it answers again (IDENT-REV-03, LEDGER-SVC-10)."""

    status = 503
    slug = "ledger-unavailable"
    title = "Ledger Unavailable"


class _NoAnswer(Exception):
    """No usable answer from the ledger service after every attempt: the outcome is unknown."""


class HttpLedgerRail(LedgerSellerMethod):
    """The ``ledger`` method settled at a ledger service over HTTP (``mpp ledger serve``).

    Every request is signed with the seller's key (mpp.ledger.signing). Every call is idempotent
    at the ledger (by transfer id, session id), so a call without an answer is sent again, up to
    ``attempts`` times. When there is still no answer the buyer gets a 503 ``ledger-unavailable``
    problem; a charge that may have been made is then voided at the ledger (refunded if it was
    made, refused forever if it was not) by a background task, as soon as the ledger answers.
    The ledger id is read from ``/v1/info`` at startup: ``app.cleanup_ctx.append(rail.lifecycle)``.

    ``journal`` (mpp.stores.doubt) keeps the in-doubt charges across restarts and shares them with the
    other seller processes on the same store, so a void left undone by a process that stopped
    is done by the next one (LEDGER-SVC-10); without one they live in this process only. The
    rail closes the journal when it stops.
    """

    def __init__(self, url: str, *, key: SigningKey, recipient: str, ledger_id: str | None = None,
                 session: Any = None, timeout: float = 10.0, attempts: int = 3, backoff: float = 0.1,
                 reconcile_interval: float = 2.0, journal: DoubtJournal | None = None,
                 spend_check_ttl: float = 10.0) -> None:
        super().__init__(recipient=recipient, ledger_id=ledger_id or "")
        self._origin, self._prefix = split_service_url(url)
        self.url = url.rstrip("/")
        self.key = key
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.reconcile_interval = reconcile_interval
        self._session = session
        self._own_session = False
        self._reconciler: asyncio.Task | None = None
        self.pending: dict[str, str] = {}  # in-doubt transfer id -> why: void once the ledger answers
        self.journal: DoubtJournal = journal if journal is not None else MemoryDoubtJournal()
        self.spend_check_ttl = spend_check_ttl
        self._allowed: dict[tuple[str, str, tuple[str, ...] | None], float] = {}  # spend checks passed, until when

    @staticmethod
    def check_realm(realm: str) -> None:
        """The service refuses a transfer or an open whose realm it cannot take (LEDGER-SVC-15):
        a seller on it refuses to start with one, rather than answer every payment 503."""
        if not printable_text(realm):
            raise ValueError(f"a seller on a ledger service needs a realm of 1 to {TEXT_MAX} printable characters")

    def __repr__(self) -> str:
        return f"HttpLedgerRail(url={self.url!r}, recipient={self.recipient!r}, seller={self.key.did!r})"

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open the HTTP client, learn the ledger id, start voiding in-doubt charges in the background."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
            self._own_session = True
        if not self.ledger_id:
            try:
                self.ledger_id = await self._info()
            except BaseException:
                if self._own_session:
                    await self._session.close()
                    self._session, self._own_session = None, False
                raise
        self.pending.update(await self.journal.pending())
        if self.pending:
            log.warning("ledger service %s: %d in-doubt transfer(s) left by an earlier run will be voided", self.url,
                        len(self.pending))
        if self._reconciler is None and self.reconcile_interval > 0:
            self._reconciler = asyncio.create_task(self._reconcile_forever())

    async def stop(self) -> None:
        if self._reconciler is not None:
            self._reconciler.cancel()
            try:
                await self._reconciler
            except asyncio.CancelledError:
                pass
            self._reconciler = None
        if self.pending:
            await self.reconcile()
            if self.pending:
                log.error("ledger service %s: %d in-doubt transfer(s) left unvoided at shutdown (kept for the next "
                          "start if the store is persistent): %s", self.url, len(self.pending), ", ".join(sorted(self.pending)))
        await self.journal.close()
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None
            self._own_session = False

    async def lifecycle(self, app: Any) -> AsyncIterator[None]:
        """For ``app.cleanup_ctx``: started before the seller serves, stopped after."""
        await self.start()
        yield
        await self.stop()

    async def _info(self) -> str:
        last = "no attempt"
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                async with self._session.get(self._origin + self._prefix + "/v1/info",
                                             timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                    doc = loads_strict(await resp.read(), "ledger service answer")
                    ledger = doc.get("ledger") if resp.status == 200 and isinstance(doc, dict) else None
                    if isinstance(ledger, str) and ledger:
                        return ledger
                    last = f"HTTP {resp.status} without a ledger id"
            except Exception as exc:  # noqa: BLE001 - any failure to learn the id is reported below
                last = type(exc).__name__
        raise LedgerUnavailable(f"the ledger service at {self.url} did not say its ledger id ({last})")

    # -- one signed call, sent again while there is no answer ------------------------------

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                    attempts: int | None = None) -> dict[str, Any]:
        if self._session is None or not self.ledger_id:
            await self.start()
        last = "no attempt"
        for attempt in range(attempts or self.attempts):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                status, raw = await send_signed(self._session, origin=self._origin, prefix=self._prefix, key=self.key,
                                                ledger_id=self.ledger_id, method=method, path=path, body=body,
                                                timeout=self.timeout)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                last = f"{type(exc).__name__}"
                continue
            if status >= 500:
                last = f"HTTP {status}"
                continue
            try:
                return answer(status, raw)
            except ValueError as exc:
                last = str(exc)
        raise _NoAnswer(f"no answer from the ledger service at {self.url} after {attempts or self.attempts} attempt(s): {last}")

    @staticmethod
    @contextmanager
    def _reachable(what: str) -> Iterator[None]:
        try:
            yield
        except _NoAnswer as exc:
            log.warning("ledger unavailable during %s: %s", what, exc)
            raise LedgerUnavailable(f"the ledger did not answer ({what}); try again later") from exc
        except ServiceRefused as exc:
            log.error("ledger service refused this seller's %s request: %s", what, exc)
            raise LedgerUnavailable(f"the ledger refused this seller's request ({what}); nothing was moved") from exc
        except (KeyError, TypeError, ValueError) as exc:  # a 2xx answer that is not what the service sends
            log.error("ledger service answered %s with a malformed document: %s", what, exc)
            raise LedgerUnavailable(f"the ledger's answer could not be read ({what})") from exc

    # -- PaymentRail ------------------------------------------------------------------------

    async def settle(self, verified: Verified, mandate: MandateCharge | None = None) -> Settlement:
        auth: LedgerAuthorization = verified.proof
        credential = verified.credential
        body: dict[str, Any] = {
            "id": verified.challenge_id, "realm": credential.challenge.realm, "payer": auth.account,
            "payee": auth.recipient, "amount": str(auth.amount), "currency": auth.currency, "signer": auth.signer,
            "signature": credential.payload.get("signature"),
        }
        if mandate is not None:
            body["mandate"] = {"tokens": list(mandate.tokens), "realm": mandate.realm}
        try:
            with _charge_problems():
                doc = await self._call("POST", "/v1/transfers", body)
            transfer = doc["transfer"]
            reference, created = str(transfer["id"]), str(transfer["createdAt"])
            settled = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        except (_NoAnswer, KeyError, TypeError, ValueError) as exc:
            # The transfer may or may not have been made: make sure it does not stand.
            await self.void_later(verified.challenge_id, "settle got no usable answer")
            with self._reachable("settle"):
                raise exc
        except ServiceRefused as exc:
            with self._reachable("settle"):
                raise exc
        return Settlement(reference=reference, settled_at=settled, payer=auth.account)

    async def refund(self, settlement: Settlement) -> None:
        try:
            await self._call("POST", "/v1/refunds", {"transfer": settlement.reference})
        except (_NoAnswer, ServiceRefused) as exc:
            # Refunding and voiding a made charge are the same: it is given back once the ledger answers.
            await self.void_later(settlement.reference, f"refund got no answer: {exc}")

    async def precheck(self, verified: Verified, chain: tuple[str, ...] | None) -> None:
        auth: LedgerAuthorization = verified.proof
        await self.check_payer(auth.account, auth.signer, chain)

    async def check_payer(self, payer: str, signer: str, chain: tuple[str, ...] | None) -> None:
        """LEDGER-ACCT-05, asked of the service (LEDGER-SVC-12). An answer that allows is kept for
        ``spend_check_ttl`` seconds: the transfer is checked again at the ledger in any case, so a
        stale answer can only let a doomed settlement through, never a forbidden one."""
        key = (payer, signer, chain)
        now = time.monotonic()
        if self._allowed.get(key, 0.0) > now:
            return
        with self._reachable("spend check"), _charge_problems():
            await self._call("POST", "/v1/spend-check", {"payer": payer, "signer": signer,
                                                         "chain": list(chain) if chain is not None else None})
        if len(self._allowed) >= _ALLOWED_MAX:
            self._allowed = {k: t for k, t in self._allowed.items() if t > now}
            if len(self._allowed) >= _ALLOWED_MAX:
                self._allowed.clear()
        self._allowed[key] = now + self.spend_check_ttl

    async def revoked(self, jtis: tuple[str, ...]) -> set[str]:
        with self._reachable("revocation check"):
            doc = await self._call("POST", "/v1/revoked", {"jtis": list(jtis)})
            revoked = doc["revoked"]
            if not isinstance(revoked, list):
                raise TypeError("'revoked' is not a list")
            return {j for j in revoked if isinstance(j, str)}

    async def transfers_between(self, since: datetime, until: datetime) -> list[Transfer]:
        """The transfers of [since, until) to or from this seller's payee account (LEDGER-SVC-11)."""
        query = f"since={quote(format_rfc3339(since), safe='')}&until={quote(format_rfc3339(until), safe='')}"
        with self._reachable("transfer listing"):
            doc = await self._call("GET", f"/v1/accounts/{quote(self.recipient, safe='')}/transfers?{query}")
            listed = doc["transfers"]
            if not isinstance(listed, list):
                raise TypeError("'transfers' is not a list")
            return [Transfer(id=str(t["id"]), payer=str(t["payer"]), payee=str(t["payee"]), amount=int(t["amount"]),
                             currency=str(t["currency"]), kind=str(t["kind"]), created_at=str(t["createdAt"]),
                             signer=t.get("signer")) for t in listed]

    async def transfers(self) -> list[Transfer]:
        """The transfers of the last 10 years to or from the payee: what mpp.engine.usage reads of a ledger."""
        now = datetime.now(timezone.utc)
        return await self.transfers_between(now.replace(year=now.year - 10), now + timedelta(seconds=1))

    # -- in-doubt charges --------------------------------------------------------------------

    async def void_later(self, transfer_id: str, why: str) -> None:
        """Remember a charge whose outcome is unknown (in the journal first); reconcile() voids it at the ledger."""
        try:
            await self.journal.add(transfer_id, why)
        except Exception:  # noqa: BLE001 - still voided by this process; only a restart would forget it
            log.exception("could not record in-doubt transfer %s in the journal", transfer_id)
        self.pending[transfer_id] = why
        log.warning("transfer %s in doubt (%s): it will be voided when the ledger answers", transfer_id, why)

    async def reconcile(self) -> int:
        """Void every in-doubt charge the ledger now answers for; returns how many are still pending."""
        for tid in list(self.pending):
            try:
                doc = await self._call("POST", f"/v1/transfers/{quote(tid, safe='')}/void", None, attempts=1)
            except _NoAnswer:
                break  # still unreachable: try again next round
            except (LedgerError, ServiceRefused) as exc:
                log.error("the ledger refused to void in-doubt transfer %s: %s", tid, exc)
                await self._resolved(tid)
            else:
                await self._resolved(tid)
                log.warning("in-doubt transfer %s voided at the ledger (%s)", tid,
                            "refunded" if doc.get("refund") else "it had not been made")
        return len(self.pending)

    async def _resolved(self, tid: str) -> None:
        await self.journal.remove(tid)
        self.pending.pop(tid, None)

    async def _reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(self.reconcile_interval)
            try:  # another process on the same store may have left some (it stopped before the ledger answered)
                self.pending.update(await self.journal.pending())
            except Exception:  # noqa: BLE001
                log.exception("reading the in-doubt journal failed; retrying")
            if self.pending:
                try:
                    await self.reconcile()
                except Exception:  # noqa: BLE001 - the loop must outlive one bad round
                    log.exception("voiding in-doubt transfers failed; retrying")

    # -- the session intent over HTTP: hold at open, capture and release at close ---------------

    async def open_session(self, terms: SessionTerms, *, payer: str, signer: str, cap: int, cap_signature: str,
                           mandate: MandateCharge | None = None) -> SessionHold:
        body: dict[str, Any] = {"terms": terms.as_json(), "payer": payer, "signer": signer, "cap": str(cap),
                                "capSignature": cap_signature}
        if mandate is not None:
            body["mandate"] = {"tokens": list(mandate.tokens), "realm": mandate.realm}
        with self._reachable("session open"), EmbeddedLedgerRail._session_problems():
            return _hold(await self._call("POST", "/v1/sessions", body))

    async def top_up_session(self, session_id: str, *, cap: int, cap_signature: str) -> SessionHold:
        with self._reachable("session top-up"), EmbeddedLedgerRail._session_problems():
            return _hold(await self._call("POST", f"/v1/sessions/{quote(session_id, safe='')}/top-up",
                                          {"cap": str(cap), "capSignature": cap_signature}))

    async def close_session(self, session_id: str, *, capture: int, voucher: Voucher | None) -> SessionClose:
        body = {"capture": str(capture), "voucher": voucher.as_json() if voucher is not None else None}
        with self._reachable("session close"), EmbeddedLedgerRail._session_problems():
            doc = (await self._call("POST", f"/v1/sessions/{quote(session_id, safe='')}/close", body))["close"]
            return SessionClose(str(doc["sessionId"]), int(doc["captured"]), int(doc["released"]), doc["captureRef"],
                                doc["releaseRef"], str(doc["closedAt"]))


def _hold(doc: dict[str, Any]) -> SessionHold:
    h = doc["session"]
    return SessionHold(str(h["sessionId"]), str(h["payer"]), str(h["payee"]), str(h["currency"]), str(h["signer"]),
                       int(h["cap"]), int(h["captured"]), int(h["released"]), str(h["status"]), str(h["openedAt"]))
