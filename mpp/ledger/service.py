"""The ledger as a standalone aiohttp service (`mpp ledger serve`; spec/methods/ledger.md §7).

    app = ledger_app(SqliteLedger("ledger.db"), sellers={seller_did: "acct:seller"})

Sellers sign every request with their own key (mpp.ledger.signing); each may credit only the
payee account it is registered with. Every mutating call is idempotent by its natural id
(transfer id, session id), so a seller that got no answer simply sends it again. Refusals are
problem documents naming the ledger error class; request content never yields a 5xx.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, Awaitable, Callable, Mapping

from aiohttp import web

from mpp.protocol.wire import loads_strict
from mpp.protocol.errors import ParseError
from mpp.protocol.keys import SignatureInvalid, public_key_from_did, verify_signature
from mpp.methods.ledger import authorization_message
from mpp.protocol.models import ChargeRequest, parse_rfc3339
from mpp.intents.session import SessionTerms, Voucher
from mpp.ledger.api import AsyncLedger, as_async_ledger
from mpp.ledger.core import (
    Account,
    AuthorizationInvalid,
    LedgerError,
    ROLES,
    MandateCharge,
    SessionClose,
    SessionHold,
    Transfer,
    TransferConflict,
    UnknownAccount,
    UnknownSession,
)
from mpp.ledger.nonces import MemoryNonces, NonceStore
from mpp.ledger.signing import SCHEME, TEXT_MAX, WINDOW, parse_authorization, printable_text, verify_request

__all__ = ["ledger_app", "LedgerService", "SERVICE_KEY", "ERROR_STATUS", "PROBLEM_BASE",
           "transfer_json", "hold_json", "close_json"]

log = logging.getLogger("mpp.ledger.service")

PROBLEM_BASE = "urn:mpp:ledger:"
"""The prefix of the ledger service's own problem types (a URN: we claim no host)."""
MAX_BODY = 256 * 1024
MAX_LISTED = 10_000  # transfers one listing may return

ERROR_STATUS: dict[str, int] = {
    "InvalidRequest": 400,
    "Unauthenticated": 401,
    "Forbidden": 403,
    "NotFound": 404,
    "MethodNotAllowed": 405,
    "PayloadTooLarge": 413,
    "AuthorizationInvalid": 403,
    "UnauthorizedSigner": 403,
    "MandateRequired": 403,
    "OverMandate": 403,
    "MandateRevokedError": 403,
    "BudgetExhausted": 403,
    "UnknownAccount": 404,
    "UnknownPayee": 404,
    "WrongCurrency": 409,
    "UnknownSession": 404,
    "InsufficientFunds": 409,
    "TransferConflict": 409,
    "SessionNotOpen": 409,
    "LedgerError": 409,
    "CapSignatureInvalid": 422,
    "CaptureRefused": 422,
    "InternalError": 500,
}
"""HTTP status per error name: the ledger's refusals (mpp.ledger.core) and the service's own."""

_UINT = re.compile(r"0|[1-9][0-9]{0,18}")
_MAX_AMOUNT = 2**63 - 1


class ServiceError(Exception):
    """A refusal of the service itself (authentication, permission, malformed request)."""

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail


def _problem(error: str, detail: str, status: int | None = None) -> web.Response:
    status = status or ERROR_STATUS.get(error, 409)
    doc = {"type": PROBLEM_BASE + error, "title": error, "status": status, "detail": detail, "error": error}
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = SCHEME
    return web.Response(status=status, body=json.dumps(doc).encode(), content_type="application/problem+json",
                        headers=headers)


# -- wire forms of the ledger's records ----------------------------------------------


def transfer_json(t: Transfer) -> dict[str, Any]:
    """A transfer as the ledger service sends it: camelCase keys, the amount as a decimal string."""
    return {"id": t.id, "payer": t.payer, "payee": t.payee, "amount": str(t.amount), "currency": t.currency,
            "kind": t.kind, "createdAt": t.created_at, "signer": t.signer}


def hold_json(h: SessionHold) -> dict[str, Any]:
    """A session hold as the ledger service sends it: camelCase keys, amounts as decimal strings."""
    return {"sessionId": h.session_id, "payer": h.payer, "payee": h.payee, "currency": h.currency, "signer": h.signer,
            "cap": str(h.cap), "captured": str(h.captured), "released": str(h.released), "status": h.status,
            "openedAt": h.opened_at}


def close_json(c: SessionClose) -> dict[str, Any]:
    """A session close as the ledger service sends it: camelCase keys, amounts as decimal strings."""
    return {"sessionId": c.session_id, "captured": str(c.captured), "released": str(c.released),
            "captureRef": c.capture_ref, "releaseRef": c.release_ref, "closedAt": c.closed_at}


def account_json(a: Account) -> dict[str, Any]:
    return {"id": a.id, "currency": a.currency, "balance": str(a.balance), "kind": a.kind}


# -- reading request bodies strictly -------------------------------------------------


def _bad(detail: str) -> ServiceError:
    return ServiceError("InvalidRequest", detail)


def _text(doc: Mapping[str, Any], name: str, *, max_len: int = TEXT_MAX, required: bool = True) -> str | None:
    value = doc.get(name)
    if value is None and not required:
        return None
    if not printable_text(value, max_len):
        raise _bad(f"{name!r} must be a non-empty printable string of at most {max_len} characters")
    return value


def _uint(doc: Mapping[str, Any], name: str, *, positive: bool) -> int:
    value = doc.get(name)
    if not isinstance(value, str) or _UINT.fullmatch(value) is None or int(value) > _MAX_AMOUNT or (positive and value == "0"):
        kind = "a positive" if positive else "a non-negative"
        raise _bad(f"{name!r} must be {kind} integer of base units as a decimal string")
    return int(value)


def _did(doc: Mapping[str, Any], name: str) -> str:
    value = _text(doc, name, max_len=128)
    try:
        public_key_from_did(value)
    except ParseError:
        raise _bad(f"{name!r} must be an Ed25519 did:key") from None
    return value  # type: ignore[return-value]


def _path_id(request: web.Request) -> str:
    value = request.match_info["id"]
    if not printable_text(value):
        raise _bad(f"the id in the path must be 1 to {TEXT_MAX} printable characters")
    return value


def _mandate(doc: Mapping[str, Any], realm: str) -> MandateCharge | None:
    raw = doc.get("mandate")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _bad("'mandate' must be an object with 'tokens' and 'realm'")
    tokens = raw.get("tokens")
    if (not isinstance(tokens, list) or not 1 <= len(tokens) <= 16
            or not all(isinstance(t, str) and 0 < len(t) <= 16384 for t in tokens)):
        raise _bad("'mandate.tokens' must be a list of 1 to 16 JWTs")
    mandate_realm = _text(raw, "realm")
    if mandate_realm != realm:
        raise AuthorizationInvalid("the mandate is presented for another realm than the one the agent signed for")
    return MandateCharge(tuple(tokens), mandate_realm)  # type: ignore[arg-type]


def _terms(raw: Any) -> SessionTerms:
    if not isinstance(raw, dict):
        raise _bad("'terms' must be an object")
    try:
        return SessionTerms(_text(raw, "sessionId"), _text(raw, "realm"), _text(raw, "recipient", max_len=128),  # type: ignore[arg-type]
                            _text(raw, "ledger"), _text(raw, "currency", max_len=32),  # type: ignore[arg-type]
                            _uint(raw, "unitPrice", positive=False), _uint(raw, "per", positive=True))
    except ServiceError as exc:
        raise _bad(f"terms: {exc.detail}") from None


def _voucher(raw: Any) -> Voucher | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _bad("'voucher' must be an object or null")
    sequence = raw.get("sequence")
    if not isinstance(sequence, int) or isinstance(sequence, bool) or not 0 <= sequence <= _MAX_AMOUNT:
        raise _bad("'voucher.sequence' must be a non-negative integer")
    return Voucher(_uint(raw, "cumulative", positive=False), sequence, _text(raw, "signature", max_len=128))  # type: ignore[arg-type]


# -- the service -----------------------------------------------------------------------


class LedgerService:
    """The handlers, the sellers' keys and payees, and the nonces seen within the window."""

    def __init__(self, ledger: Any, sellers: Mapping[str, str], *, window: int = WINDOW,
                 clock: Callable[[], float] = time.time, nonces: NonceStore | None = None,
                 open_accounts: bool = False) -> None:
        for did, payee in sellers.items():
            public_key_from_did(did)  # ParseError names a bad entry
            if not isinstance(payee, str) or not payee:
                raise ValueError(f"seller {did}: the payee account must be a non-empty string")
        self.ledger: AsyncLedger = as_async_ledger(ledger)
        self.sellers = dict(sellers)
        self.window = window
        self.clock = clock
        self.nonces: NonceStore = nonces if nonces is not None else MemoryNonces()
        self.open_accounts = open_accounts  # LEDGER-SVC-14: anyone may create an account it then owns

    @property
    def ledger_id(self) -> str:
        """The served ledger's id: what ``GET /v1/info`` reports and every request is signed over (for a
        PgLedger, known once the app has started and opened it)."""
        return self.ledger.ledger_id

    # -- authentication ------------------------------------------------------------------

    async def authenticate(self, request: web.Request, body: bytes, *, owner_of: str | None = None,
                           anyone: bool = False, record_nonce: bool = True) -> tuple[str, str]:
        """The signer's DID and, for a seller, its registered payee; ServiceError otherwise.

        With ``owner_of`` the signer must be an owner of that account (LEDGER-SVC-13) instead of a
        registered seller; with ``anyone``, any key, where the service opens account creation to
        all (LEDGER-SVC-14). Whoever may not is refused before anything is recorded: a stranger's
        request leaves no nonce behind."""
        header = request.headers.get("Authorization")
        if header is None:
            raise ServiceError("Unauthenticated", f"requests must be signed ({SCHEME} authorization)")
        try:
            signed = parse_authorization(header)
        except ParseError as exc:
            raise ServiceError("Unauthenticated", f"malformed authorization: {exc}") from None
        if anyone and not self.open_accounts:
            raise ServiceError("Forbidden", "this ledger service does not create accounts: its operator does "
                                            "(`mpp ledger account create`)")
        payee = self.sellers.get(signed.keyid) if owner_of is None and not anyone else ""
        if payee is None:
            raise ServiceError("Unauthenticated", "the signing key is not registered with this ledger")
        now = self.clock()
        if abs(now - signed.ts) > self.window:
            raise ServiceError("Unauthenticated", f"timestamp is more than {self.window} s away from the ledger's clock")
        try:
            verify_request(signed, ledger_id=self.ledger_id, method=request.method, target=request.raw_path, body=body)
        except SignatureInvalid:
            raise ServiceError("Unauthenticated", "the request signature does not verify") from None
        if owner_of is not None:
            try:
                role = (await self.ledger.keys.members(owner_of)).get(signed.keyid)
            except UnknownAccount:
                role = None  # the same answer as for a non-owner: account ids are not told to strangers
            if role != "owner":
                raise ServiceError("Forbidden", "only an owner of the account may change or list its members")
        expires = now + 2 * self.window  # the timestamp is acceptable until at most ts + window <= now + 2 * window
        if record_nonce and not await self.nonces.first_use(signed.keyid, signed.nonce, now=now, expires=expires):
            raise ServiceError("Unauthenticated", "this nonce was already used (a replayed request)")
        return signed.keyid, payee

    @staticmethod
    def _own(payee: str, account: str, what: str) -> None:
        if account != payee:
            raise ServiceError("Forbidden", f"this seller may only {what} its own payee account")

    # -- handlers: each gets the JSON body (or None), the seller's DID and payee --------

    async def info(self, request: web.Request) -> web.Response:
        """``GET /v1/info``, unsigned: the ledger id, protocol version ``1``, the auth scheme and the
        signing window in seconds."""
        return _json({"ledger": self.ledger_id, "version": "1", "auth": SCHEME, "window": self.window})

    async def transfer(self, doc: dict[str, Any], request: web.Request, seller: str, payee: str) -> dict[str, Any]:
        """``POST /v1/transfers``: settle a charge for the seller's own payee (Forbidden otherwise). The
        service builds the signed bytes itself, with its own ledger id, and verifies the agent's
        signature before the ledger's transfer (LEDGER-16; AuthorizationInvalid, as for a ``mandate`` of
        another realm); an existing transfer under the id that is no charge raises TransferConflict.
        Answers ``{"transfer": T}``."""
        tid = _text(doc, "id")
        realm = _text(doc, "realm")
        payer = _text(doc, "payer", max_len=128)
        to = _text(doc, "payee", max_len=128)
        amount = _uint(doc, "amount", positive=True)
        currency = _text(doc, "currency", max_len=32)
        signer = _did(doc, "signer")
        signature = _text(doc, "signature", max_len=128)
        self._own(payee, to, "credit")  # type: ignore[arg-type]
        mandate = _mandate(doc, realm)  # type: ignore[arg-type]
        # LEDGER-16: the ledger checks the agent's authorization itself, over the bytes it builds.
        try:
            charge = ChargeRequest(amount=str(amount), currency=currency, recipient=to, methodDetails={"ledger": self.ledger_id})
            message = authorization_message(challenge_id=tid, realm=realm, request=charge, account=payer)  # type: ignore[arg-type]
            verify_signature(signer, message, signature)  # type: ignore[arg-type]
        except (SignatureInvalid, ValueError):
            raise AuthorizationInvalid("the agent's authorization does not verify for this transfer") from None
        t = await self.ledger.transfer(tid, payer=payer, payee=to, amount=amount, currency=currency, signer=signer,  # type: ignore[arg-type]
                                       mandate=mandate)
        if t.kind != "charge":
            raise TransferConflict(f"transfer {tid!r} exists and is not a charge")
        log.info("transfer id=%s payer=%s payee=%s amount=%s %s seller=%s", t.id, t.payer, t.payee, t.amount, t.currency, seller)
        return {"transfer": transfer_json(t)}

    async def void(self, doc: dict[str, Any] | None, request: web.Request, seller: str, payee: str) -> dict[str, Any]:
        """``POST /v1/transfers/{id}/void``: refund the charge ``{id}`` if it was made, else bar the id
        from every later transfer (LEDGER-SVC-06). A transfer under ``{id}`` that credits another
        account is refused (Forbidden), one that is no charge raises TransferConflict.
        Answers ``{"id", "voided": true, "refund": T or null}``."""
        tid = _path_id(request)
        existing = await self.ledger.get_transfer(tid)
        if existing is not None:
            self._own(payee, existing.payee, "void charges to")
        refund = await self.ledger.void(tid, payee=payee)
        log.info("void id=%s refunded=%s seller=%s", tid, refund is not None, seller)
        return {"id": tid, "voided": True, "refund": transfer_json(refund) if refund else None}

    async def refund(self, doc: dict[str, Any], request: web.Request, seller: str, payee: str) -> dict[str, Any]:
        """``POST /v1/refunds``: reverse the transfer named by ``transfer`` as ``refund:<id>``, once, if
        it credited the seller's own payee (Forbidden otherwise; UnknownAccount if there is none).
        Answers ``{"transfer": T}``."""
        tid = _text(doc, "transfer")
        original = await self.ledger.get_transfer(tid)  # type: ignore[arg-type]
        if original is None:
            raise UnknownAccount(f"no transfer {tid!r}")
        self._own(payee, original.payee, "refund charges to")
        t = await self.ledger.refund(tid)  # type: ignore[arg-type]
        log.info("refund id=%s seller=%s", t.id, seller)
        return {"transfer": transfer_json(t)}

    async def revoked(self, doc: dict[str, Any], request: web.Request, seller: str, payee: str) -> dict[str, Any]:
        """``POST /v1/revoked``: which of ``jtis`` (at most 64 mandate keys) are revoked (IDENT-REV-03).
        Answers ``{"revoked": [...]}``, sorted."""
        jtis = doc.get("jtis")
        if not isinstance(jtis, list) or len(jtis) > 64 or not all(isinstance(j, str) and 0 < len(j) <= 512 for j in jtis):
            raise _bad("'jtis' must be a list of at most 64 mandate keys")
        return {"revoked": sorted(await self.ledger.keys.revoked(tuple(jtis)))}

    async def open_session(self, doc: dict[str, Any], request: web.Request, seller: str, payee: str) -> dict[str, Any]:
        """``POST /v1/sessions``: hold the cap for a session whose terms credit the seller's own payee
        (Forbidden otherwise); the ledger verifies the cap signature itself, and a ``mandate`` must be
        for the terms' realm (AuthorizationInvalid). Answers ``{"session": H}``."""
        terms = _terms(doc.get("terms"))
        payer = _text(doc, "payer", max_len=128)
        signer = _did(doc, "signer")
        cap = _uint(doc, "cap", positive=True)
        cap_signature = _text(doc, "capSignature", max_len=128)
        self._own(payee, terms.recipient, "credit")
        mandate = _mandate(doc, terms.realm)
        hold = await self.ledger.sessions.open(terms, payer=payer, signer=signer, cap=cap, cap_signature=cap_signature,  # type: ignore[arg-type]
                                               mandate=mandate)
        log.info("session open id=%s payer=%s payee=%s cap=%s %s seller=%s", hold.session_id, hold.payer, hold.payee,
                 hold.cap, hold.currency, seller)
        return {"session": hold_json(hold)}

    async def _own_session(self, request: web.Request, payee: str) -> str:
        sid = _path_id(request)
        hold = await self.ledger.sessions.get(sid)
        if hold is None:
            raise UnknownSession(f"no session {sid!r}")
        self._own(payee, hold.payee, "act on sessions that credit")
        return sid

    async def top_up(self, doc: dict[str, Any], request: web.Request, seller: str, payee: str) -> dict[str, Any]:
        """``POST /v1/sessions/{id}/top-up``: raise the cap of a session crediting the seller's own
        payee to ``cap`` (a new total), with the signer's ``capSignature``. UnknownSession, Forbidden.
        Answers ``{"session": H}``."""
        cap = _uint(doc, "cap", positive=True)
        cap_signature = _text(doc, "capSignature", max_len=128)
        sid = await self._own_session(request, payee)
        hold = await self.ledger.sessions.top_up(sid, cap=cap, cap_signature=cap_signature)  # type: ignore[arg-type]
        log.info("session top-up id=%s cap=%s seller=%s", sid, hold.cap, seller)
        return {"session": hold_json(hold)}

    async def close_session(self, doc: dict[str, Any], request: web.Request, seller: str, payee: str) -> dict[str, Any]:
        """``POST /v1/sessions/{id}/close``: capture ``capture`` for the seller's own payee (with the
        agent's ``voucher``, or null for nothing captured) and release the rest. UnknownSession,
        Forbidden. Answers ``{"close": ...}``."""
        capture = _uint(doc, "capture", positive=False)
        voucher = _voucher(doc.get("voucher"))
        sid = await self._own_session(request, payee)
        closed = await self.ledger.sessions.close(sid, capture=capture, voucher=voucher)
        log.info("session close id=%s captured=%s released=%s seller=%s", sid, closed.captured, closed.released, seller)
        return {"close": close_json(closed)}

    async def spend_check(self, doc: dict[str, Any], request: web.Request, seller: str, payee: str) -> dict[str, Any]:
        """LEDGER-SVC-12: would the ledger let ``signer`` spend from ``payer``, bare (``chain`` null)
        or under a verified chain of these DIDs? 200 if so, the ledger's refusal otherwise."""
        payer = _text(doc, "payer", max_len=128)
        signer = _did(doc, "signer")
        raw = doc.get("chain")
        chain = None
        if raw is not None:
            if (not isinstance(raw, list) or not 2 <= len(raw) <= 17
                    or not all(isinstance(d, str) and 0 < len(d) <= 128 for d in raw)):
                raise _bad("'chain' must be null or a list of 2 to 17 DIDs, the principal first")
            chain = tuple(raw)
        await self.ledger.keys.spend_check(payer, signer=signer, chain=chain)  # type: ignore[arg-type]
        return {"payer": payer, "signer": signer, "allowed": True}

    async def create_account(self, doc: dict[str, Any], request: web.Request, signer: str, payee: str) -> dict[str, Any]:
        """LEDGER-SVC-14: an account made over the service, owned by the key that signed for it."""
        account_id = _text(doc, "id", max_len=128)
        currency = _text(doc, "currency", max_len=32)
        if account_id in self.sellers.values():  # a payee's revenue must never be spendable by whoever asked first
            raise ServiceError("Forbidden", "that id is a registered seller's payee account")
        account = await self.ledger.create_account(account_id, currency, owner=signer, exclusive=True)  # type: ignore[arg-type]
        log.info("account created id=%s currency=%s owner=%s", account.id, account.currency, signer)
        return {"account": account_json(account), "members": await self.ledger.keys.members(account.id)}

    async def members(self, doc: dict[str, Any] | None, request: web.Request, owner: str, payee: str) -> dict[str, Any]:
        """LEDGER-SVC-13: the account's members, to one of its owners."""
        return {"account": _path_id(request), "members": await self.ledger.keys.members(_path_id(request))}

    async def set_member(self, doc: dict[str, Any], request: web.Request, owner: str, payee: str) -> dict[str, Any]:
        """LEDGER-SVC-13: one of the account's owners enrols a DID as owner or agent, or denies it."""
        account_id = _path_id(request)
        did = _did(doc, "did")
        role = _text(doc, "role", max_len=16)
        if role not in ROLES:
            raise _bad(f"'role' must be one of {', '.join(ROLES)}")
        await self.ledger.keys.allow(account_id, did, role)  # type: ignore[arg-type]
        log.info("member account=%s did=%s role=%s by=%s", account_id, did, role, owner)
        return {"account": account_id, "members": await self.ledger.keys.members(account_id)}

    async def account(self, doc: dict[str, Any] | None, request: web.Request, seller: str, payee: str) -> dict[str, Any]:
        """``GET /v1/accounts/{id}``: the balance of the seller's own payee account, to that seller only
        (Forbidden otherwise). Answers ``{"account": {"id", "currency", "balance", "kind"}}``."""
        account_id = _path_id(request)
        self._own(payee, account_id, "read")
        return {"account": account_json(await self.ledger.account(account_id))}

    async def account_transfers(self, doc: dict[str, Any] | None, request: web.Request, seller: str,
                                payee: str) -> dict[str, Any]:
        """LEDGER-SVC-11: the transfers of [since, until) that credited or debited the seller's own
        account, oldest first (what `mpp seller usage` reconciles its records with)."""
        account_id = _path_id(request)
        self._own(payee, account_id, "list the transfers of")
        window = []
        for name in ("since", "until"):
            text = request.query.get(name)
            if text is None:
                raise _bad(f"query parameter {name!r} (RFC 3339) is required")
            try:
                window.append(parse_rfc3339(text))
            except (ParseError, ValueError):
                raise _bad(f"{name!r} is not an RFC 3339 date-time") from None
        since, until = window
        if since >= until:
            raise _bad("'since' must be before 'until'")
        listed = await self.ledger.transfers_of(account_id, since, until)
        if len(listed) > MAX_LISTED:
            raise _bad(f"more than {MAX_LISTED} transfers in that window: ask for a shorter one")
        return {"transfers": [transfer_json(t) for t in listed]}

    # -- plumbing -------------------------------------------------------------------------

    def signed(self, handler: Callable[..., Awaitable[dict[str, Any]]], *, body: bool = True, by_owner: bool = False,
               by_anyone: bool = False, read_only: bool = False):
        """Wrap a handler: read the body, authenticate (a registered seller, or with ``by_owner``
        an owner of the account in the path), parse the JSON object, answer JSON."""

        async def wrapped(request: web.Request) -> web.Response:
            raw = await request.read()
            seller, payee = await self.authenticate(request, raw, owner_of=_path_id(request) if by_owner else None,
                                                    anyone=by_anyone, record_nonce=not read_only)
            doc = None
            if body:
                try:
                    doc = loads_strict(raw, "the body")
                except ParseError as exc:
                    raise _bad(f"the body must be a JSON object: {exc}") from None
                if not isinstance(doc, dict):
                    raise _bad("the body must be a JSON object")
            return _json(await handler(doc, request, seller, payee))

        return wrapped


def _json(doc: dict[str, Any]) -> web.Response:
    return web.json_response(doc, headers={"Cache-Control": "no-store"})


@web.middleware
async def _problems(request: web.Request, handler) -> web.StreamResponse:
    """Every refusal as a problem document; a 5xx only for a fault of the service itself."""
    try:
        return await handler(request)
    except ServiceError as exc:
        return _problem(exc.error, exc.detail)
    except LedgerError as exc:
        name = type(exc).__name__
        return _problem(name, str(exc) or name, ERROR_STATUS.get(name, 409))
    except (ValueError, ParseError) as exc:  # the ledger's own argument checks
        return _problem("InvalidRequest", str(exc) or "invalid request")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        name = {404: "NotFound", 405: "MethodNotAllowed", 413: "PayloadTooLarge"}.get(exc.status, "InvalidRequest")
        return _problem(name, exc.reason, exc.status if exc.status < 500 else 400)
    except Exception:
        # A bug. The traceback names no request content (bodies and headers are never logged).
        log.exception("ledger service fault on %s %s", request.method, request.path)
        return _problem("InternalError", "the ledger service failed; nothing is known to have changed")


SERVICE_KEY = web.AppKey("mpp_ledger_service", LedgerService)
"""The aiohttp application key under which `ledger_app` stores its LedgerService."""


def ledger_app(ledger: Any, *, sellers: Mapping[str, str], window: int = WINDOW, clock: Callable[[], float] = time.time,
               close_ledger: bool = False, nonces: NonceStore | None = None, open_accounts: bool = False) -> web.Application:
    """The ledger service for ``ledger`` (a SqliteLedger or an AsyncLedger); ``sellers`` maps each
    seller's did:key to the one payee account it may credit. ``nonces`` keeps the accepted request
    nonces (default: in this process only; see mpp.ledger.nonces). With ``close_ledger`` the app
    closes the ledger (and the nonce store) at cleanup. With ``open_accounts`` any key may create
    an account over the service and own it (LEDGER-SVC-14); by default only the operator does."""
    service = LedgerService(ledger, sellers, window=window, clock=clock, nonces=nonces, open_accounts=open_accounts)
    app = web.Application(middlewares=[_problems], client_max_size=MAX_BODY)
    app[SERVICE_KEY] = service

    async def _lifecycle(app: web.Application):
        await service.ledger.open()
        yield
        if close_ledger:
            await service.nonces.close()
            await service.ledger.close()
            sync = getattr(service.ledger, "sync", None)
            if sync is not None and sync is ledger:
                sync.close()

    app.cleanup_ctx.append(_lifecycle)
    s = service.signed
    app.router.add_get("/v1/info", service.info)
    app.router.add_post("/v1/transfers", s(service.transfer))
    app.router.add_post("/v1/transfers/{id}/void", s(service.void, body=False))
    app.router.add_post("/v1/refunds", s(service.refund))
    app.router.add_post("/v1/revoked", s(service.revoked))
    app.router.add_post("/v1/sessions", s(service.open_session))
    app.router.add_post("/v1/sessions/{id}/top-up", s(service.top_up))
    app.router.add_post("/v1/sessions/{id}/close", s(service.close_session))
    app.router.add_get("/v1/accounts/{id}", s(service.account, body=False))
    app.router.add_get("/v1/accounts/{id}/transfers", s(service.account_transfers, body=False))
    # read-only: a replay gets the same answer, so its nonce is not kept (a seller asks it for strangers too)
    app.router.add_post("/v1/spend-check", s(service.spend_check, read_only=True))
    app.router.add_post("/v1/accounts", s(service.create_account, by_anyone=True))
    app.router.add_get("/v1/accounts/{id}/members", s(service.members, body=False, by_owner=True))
    app.router.add_post("/v1/accounts/{id}/members", s(service.set_member, by_owner=True))
    return app
