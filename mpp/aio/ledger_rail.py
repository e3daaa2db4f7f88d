"""The ``ledger`` method settled at the ledger service (``mpp ledger serve``) over HTTP: the rail,
its signed and retried line to the service, and the charges left in doubt by a call without an
answer, voided once the service answers again."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Iterator
from urllib.parse import quote

import aiohttp

from mpp.aio.ledger_client import ServiceRefused, answer, send_signed, split_service_url
from mpp.engine.core import Verified
from mpp.engine.rails import Settlement
from mpp.intents.session import SessionTerms, Voucher
from mpp.ledger import LedgerError, MandateCharge, SessionClose, SessionHold, Transfer
from mpp.ledger.refusals import charge_refusals, session_refusals
from mpp.ledger.signing import TEXT_MAX, printable_text
from mpp.methods.ledger import LedgerAuthorization, LedgerSellerMethod
from mpp.protocol.errors import ExtensionProblem
from mpp.protocol.keys import SigningKey
from mpp.protocol.models import format_rfc3339
from mpp.protocol.wire import loads_strict
from mpp.stores.doubt import DoubtJournal, MemoryDoubtJournal
from mpp.engine.background import stop_task

__all__ = ["HttpLedgerRail", "LedgerUnavailable", "ServiceLine", "InDoubt"]

log = logging.getLogger("mpp.rails")

_ALLOWED_MAX = 4096  # spend-check answers an HttpLedgerRail keeps


class LedgerUnavailable(ExtensionProblem):
    """The seller could not get a usable answer from its ledger service. Nothing is delivered,
    and nothing stays charged for the request: a transfer the ledger may have made is voided
    as soon as it answers again (IDENT-REV-03, LEDGER-SVC-10)."""

    status = 503
    slug = "ledger-unavailable"
    title = "Ledger Unavailable"


class _NoAnswer(Exception):
    """No usable answer from the ledger service after every attempt: the outcome is unknown."""


class ServiceLine:
    """The rail's line to the ledger service: signed calls, retried with backoff, over one
    HTTP client session (its own unless one is given)."""

    def __init__(self, rail: "HttpLedgerRail", url: str, *, key: SigningKey, session: Any, timeout: float,
                 attempts: int, backoff: float) -> None:
        self.rail = rail
        self._origin, self._prefix = split_service_url(url)
        self.url = url.rstrip("/")
        self.key = key
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.session = session
        self.own_session = False
        self.ledger = ""  # the ledger id the calls are signed for

    def open(self) -> None:
        """A client session of its own, unless one was given."""
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
            self.own_session = True

    async def close(self) -> None:
        """Close the client session if it is the line's own."""
        if self.own_session and self.session is not None:
            await self.session.close()
        if self.own_session:
            self.session, self.own_session = None, False

    async def ledger_id(self) -> str:
        """The service's ledger id, from ``/v1/info``."""
        last = "no attempt"
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                async with self.session.get(self._origin + self._prefix + "/v1/info",
                                             timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                    doc = loads_strict(await resp.read(), "ledger service answer")
                    ledger = doc.get("ledger") if resp.status == 200 and isinstance(doc, dict) else None
                    if isinstance(ledger, str) and ledger:
                        return ledger
                    last = f"HTTP {resp.status} without a ledger id"
            except Exception as exc:  # noqa: BLE001 - any failure to learn the id is reported below
                last = type(exc).__name__
        raise LedgerUnavailable(f"the ledger service at {self.url} did not say its ledger id ({last})")

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                    attempts: int | None = None) -> dict[str, Any]:
        """One signed call, sent again while there is no answer; :class:`_NoAnswer` after the last attempt."""
        if self.session is None or not self.ledger:
            await self.rail.start()
        last = "no attempt"
        for attempt in range(attempts or self.attempts):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                status, raw = await send_signed(self.session, origin=self._origin, prefix=self._prefix, key=self.key,
                                                ledger_id=self.ledger, method=method, path=path, body=body,
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
    def reachable(what: str) -> Iterator[None]:
        """No answer, a refusal of the seller itself or an unreadable answer, as :class:`LedgerUnavailable`."""
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


class InDoubt:
    """Charges whose outcome is unknown, voided at the ledger once it answers (LEDGER-SVC-10):
    kept in a journal first (shared with the other seller processes on the same store), then
    in memory; a background task works through them."""

    def __init__(self, line: ServiceLine, journal: DoubtJournal, interval: float) -> None:
        self.line = line
        self.journal = journal
        self.interval = interval
        self.pending: dict[str, str] = {}  # in-doubt transfer id -> why: void once the ledger answers
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Take up what an earlier run left, and start voiding in the background."""
        self.pending.update(await self.journal.pending())
        if self.pending:
            log.warning("ledger service %s: %d in-doubt transfer(s) left by an earlier run will be voided", self.line.url,
                        len(self.pending))
        if self._task is None and self.interval > 0:
            self._task = asyncio.create_task(self.run_forever())

    async def stop(self) -> None:
        """Stop the background task, void what can be voided now, close the journal."""
        await stop_task(self._task)
        self._task = None
        if self.pending:
            await self.reconcile()
            if self.pending:
                log.error("ledger service %s: %d in-doubt transfer(s) left unvoided at shutdown (kept for the next "
                          "start if the store is persistent): %s", self.line.url, len(self.pending), ", ".join(sorted(self.pending)))
        await self.journal.close()

    async def add(self, transfer_id: str, why: str) -> None:
        """Remember a charge whose outcome is unknown (in the journal first); reconcile voids it at the ledger."""
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
                doc = await self.line.call("POST", f"/v1/transfers/{quote(tid, safe='')}/void", None, attempts=1)
            except _NoAnswer:
                break  # still unreachable: try again next round
            except (LedgerError, ServiceRefused) as exc:
                log.error("the ledger refused to void in-doubt transfer %s: %s", tid, exc)
                await self.resolved(tid)
            else:
                await self.resolved(tid)
                log.warning("in-doubt transfer %s voided at the ledger (%s)", tid,
                            "refunded" if doc.get("refund") else "it had not been made")
        return len(self.pending)

    async def resolved(self, tid: str) -> None:
        """The transfer is settled one way or the other: forget it."""
        await self.journal.remove(tid)
        self.pending.pop(tid, None)

    async def run_forever(self) -> None:
        """Every ``interval`` seconds: read the journal, void what the ledger now answers for."""
        while True:
            await asyncio.sleep(self.interval)
            try:  # another process on the same store may have left some (it stopped before the ledger answered)
                self.pending.update(await self.journal.pending())
            except Exception:  # noqa: BLE001
                log.exception("reading the in-doubt journal failed; retrying")
            if self.pending:
                try:
                    await self.reconcile()
                except Exception:  # noqa: BLE001 - the loop must outlive one bad round
                    log.exception("voiding in-doubt transfers failed; retrying")


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
        self.line = ServiceLine(self, url, key=key, session=session, timeout=timeout, attempts=attempts, backoff=backoff)
        self.line.ledger = self.ledger_id
        self.url, self.key = self.line.url, key
        self.doubt = InDoubt(self.line, journal if journal is not None else MemoryDoubtJournal(), reconcile_interval)
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
        self.line.open()
        if not self.ledger_id:
            try:
                self.ledger_id = await self.line.ledger_id()
            except BaseException:
                await self.line.close()
                raise
        self.line.ledger = self.ledger_id
        await self.doubt.start()

    async def stop(self) -> None:
        """Void what can be voided, close the journal and the client session."""
        await self.doubt.stop()
        await self.line.close()

    async def lifecycle(self, app: Any) -> AsyncIterator[None]:
        """For ``app.cleanup_ctx``: started before the seller serves, stopped after."""
        await self.start()
        yield
        await self.stop()

    async def reconcile(self) -> int:
        """Void every in-doubt charge the ledger now answers for; returns how many are still pending."""
        return await self.doubt.reconcile()

    # -- PaymentRail ------------------------------------------------------------------------

    async def settle(self, verified: Verified, mandate: MandateCharge | None = None) -> Settlement:
        """Make the transfer at the service (``POST /v1/transfers``, its id the challenge id, so a resend
        cannot pay twice, LEDGER-12), under ``mandate`` when given; the settlement. A refusal is raised as
        the problem a buyer sees (mpp.ledger.refusals). With no usable answer after every attempt the
        transfer is put in doubt, to be voided once the service answers again, and LedgerUnavailable (503) is
        raised (LEDGER-SVC-10), as it is when the service refuses the seller itself."""
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
            with charge_refusals():
                doc = await self.line.call("POST", "/v1/transfers", body)
            transfer = doc["transfer"]
            reference, created = str(transfer["id"]), str(transfer["createdAt"])
            settled = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        except (_NoAnswer, KeyError, TypeError, ValueError) as exc:
            # The transfer may or may not have been made: make sure it does not stand.
            await self.doubt.add(verified.challenge_id, "settle got no usable answer")
            with self.line.reachable("settle"):
                raise exc
        except ServiceRefused as exc:
            with self.line.reachable("settle"):
                raise exc
        return Settlement(reference=reference, settled_at=settled, payer=auth.account)

    async def refund(self, settlement: Settlement) -> None:
        """Give the transfer back at the service (``POST /v1/refunds``, at most once, LEDGER-15). When the
        service does not answer, or refuses the seller, nothing is raised: the transfer is put in doubt and
        voided (refunded) once the service answers again (LEDGER-SVC-10). A refusal that names a ledger error
        propagates as that LedgerError."""
        try:
            await self.line.call("POST", "/v1/refunds", {"transfer": settlement.reference})
        except (_NoAnswer, ServiceRefused) as exc:
            # Refunding and voiding a made charge are the same: it is given back once the ledger answers.
            await self.doubt.add(settlement.reference, f"refund got no answer: {exc}")

    async def precheck(self, verified: Verified, chain: tuple[str, ...] | None) -> None:
        """Before the challenge is consumed: may the payer and signer of ``verified`` spend, bare or under
        ``chain`` (LEDGER-ACCT-05, asked of the service as :meth:`check_payer` does)? A refusal is raised as
        the problem a buyer sees, no usable answer as LedgerUnavailable."""
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
        with self.line.reachable("spend check"), charge_refusals():
            await self.line.call("POST", "/v1/spend-check", {"payer": payer, "signer": signer,
                                                         "chain": list(chain) if chain is not None else None})
        if len(self._allowed) >= _ALLOWED_MAX:
            self._allowed = {k: t for k, t in self._allowed.items() if t > now}
            if len(self._allowed) >= _ALLOWED_MAX:
                self._allowed.clear()
        self._allowed[key] = now + self.spend_check_ttl

    async def revoked(self, jtis: tuple[str, ...]) -> set[str]:
        """Which of these mandates (by key, ``issuer#jti``, as
        :attr:`~mpp.identity.mandates.MandateChain.keys` gives them) the service has recorded as revoked
        (``POST /v1/revoked``); asked on every request, never cached (IDENT-REV-03). LedgerUnavailable when
        there is no usable answer."""
        with self.line.reachable("revocation check"):
            doc = await self.line.call("POST", "/v1/revoked", {"jtis": list(jtis)})
            revoked = doc["revoked"]
            if not isinstance(revoked, list):
                raise TypeError("'revoked' is not a list")
            return {j for j in revoked if isinstance(j, str)}

    async def transfers_between(self, since: datetime, until: datetime) -> list[Transfer]:
        """The transfers of [since, until) to or from this seller's payee account (LEDGER-SVC-11)."""
        query = f"since={quote(format_rfc3339(since), safe='')}&until={quote(format_rfc3339(until), safe='')}"
        with self.line.reachable("transfer listing"):
            doc = await self.line.call("GET", f"/v1/accounts/{quote(self.recipient, safe='')}/transfers?{query}")
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

    # -- the session intent over HTTP: hold at open, capture and release at close ---------------

    async def open_session(self, terms: SessionTerms, *, payer: str, signer: str, cap: int, cap_signature: str,
                           mandate: MandateCharge | None = None) -> SessionHold:
        """Hold ``cap`` base units from ``payer`` for the session at the service (``POST /v1/sessions``, once
        per session id, the challenge id), under ``mandate`` when given; the hold. A refusal is raised as the
        session problem a buyer sees (mpp.ledger.refusals), no usable answer as LedgerUnavailable."""
        body: dict[str, Any] = {"terms": terms.as_json(), "payer": payer, "signer": signer, "cap": str(cap),
                                "capSignature": cap_signature}
        if mandate is not None:
            body["mandate"] = {"tokens": list(mandate.tokens), "realm": mandate.realm}
        with self.line.reachable("session open"), session_refusals():
            return _hold(await self.line.call("POST", "/v1/sessions", body))

    async def top_up_session(self, session_id: str, *, cap: int, cap_signature: str) -> SessionHold:
        """Raise the session's held cap to ``cap`` base units in total (``POST /v1/sessions/{id}/top-up``,
        with the signer's ``cap_signature``); the hold after it. Refusals and no answer as for
        :meth:`open_session`."""
        with self.line.reachable("session top-up"), session_refusals():
            return _hold(await self.line.call("POST", f"/v1/sessions/{quote(session_id, safe='')}/top-up",
                                          {"cap": str(cap), "capSignature": cap_signature}))

    async def close_session(self, session_id: str, *, capture: int, voucher: Voucher | None) -> SessionClose:
        """Capture ``capture`` base units of the session, as ``voucher`` (the highest accepted) covers, and
        release the rest of its hold (``POST /v1/sessions/{id}/close``); the close. Refusals and no answer as
        for :meth:`open_session`."""
        body = {"capture": str(capture), "voucher": voucher.as_json() if voucher is not None else None}
        with self.line.reachable("session close"), session_refusals():
            doc = (await self.line.call("POST", f"/v1/sessions/{quote(session_id, safe='')}/close", body))["close"]
            return SessionClose(str(doc["sessionId"]), int(doc["captured"]), int(doc["released"]), doc["captureRef"],
                                doc["releaseRef"], str(doc["closedAt"]))


def _hold(doc: dict[str, Any]) -> SessionHold:
    h = doc["session"]
    return SessionHold(str(h["sessionId"]), str(h["payer"]), str(h["payee"]), str(h["currency"]), str(h["signer"]),
                       int(h["cap"]), int(h["captured"]), int(h["released"]), str(h["status"]), str(h["openedAt"]))
