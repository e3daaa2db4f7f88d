"""Profile `session`: the seller's side of the ``session`` intent (spec/intents/session.md), probed
over HTTP. The target URL is a session-priced route: its 402 offers a ``ledger``/``session``
challenge. A check opens a session on such a challenge with the payer of ``--pay-with
ledger:WALLET_DIR`` (the wallet's agent key signs the cap, the vouchers and the close), sends the
vouchers (or forgeries) it means to, and closes the session at the end so that the hold is
released. Without a session challenge, or a payer that can open one, a check skips and says why.

The session intent is MPP's own extension: every check here is of level ``extension``.

Cost: with cost(maxUnits) = M (what the seller reserves for one request), each session holds a cap
of 4 M (at most ``--max-amount``) and captures what its requests used, at most 2 M;
session.charge-fallback pays one charge.
Messages name credentials by what they are for, never by value (CORE-CRED-06).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any
from urllib.parse import urlsplit

from mpp import Challenge, ParseError, SigningKey, b64url_decode
from mpp.protocol.errors import EXTENSION_PROBLEM_BASE

from .base import CheckContext, Response, Skip, register
from .checks_full import NOT_THERE, Paid, _data, _method, paid_ok, payer_for
from .expect import describe, fail, fresh_challenges, no_5xx, no_receipt, problem, status
from .paying import CannotPay, SuiteSession

SESSION_PATH = "/.well-known/mpp-session"
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")
_PAYER_LIMITS = {
    "identity-required": "the route requires the identity extension on the open, which the suite's payer does not send",
    "mandate-required": "the target's ledger lets the payer's key spend only under a mandate chain, which the suite's payer "
                        "does not send; make the key an owner of its account at the target "
                        "(mpp ledger allow ACCOUNT DID --as owner --ledger ...) to run this check",
}


# -- helpers ------------------------------------------------------------------------------

async def quote(ctx: CheckContext) -> tuple[Challenge, list[Challenge]]:
    """An unpaid request: the target's ``ledger``/``session`` challenge (skip without one) and all it offered."""
    resp = await ctx.request(_method(ctx), ctx.target, data=_data(ctx))
    status(resp, 402, "unpaid request")
    challenges = fresh_challenges(resp, "unpaid request")
    for challenge in challenges:
        if (challenge.method, challenge.intent) == ("ledger", "session"):
            return challenge, challenges
    offered = ", ".join(f"{c.method}/{c.intent}" for c in challenges) or "none"
    raise Skip(f"the target offers no ledger/session challenge here (offered: {offered}); "
               "point the suite at a session-priced route")


async def new_session(ctx: CheckContext, *, cap_factor: int = 4) -> SuiteSession:
    """A session to open on a fresh session challenge, with the payer's key and account: cap
    ``cap_factor`` × cost(maxUnits). Skips when there is no payer able to open it."""
    payer = payer_for(ctx)
    challenge, _ = await quote(ctx)
    if not hasattr(payer, "session"):
        raise Skip(f"not paid: the payer ({payer.description}) cannot sign session vouchers; use --pay-with ledger:WALLET_DIR")
    try:
        from mpp.intents.session import SessionRequest

        max_cost = SessionRequest.from_challenge(challenge).max_request_cost
    except ParseError as exc:
        raise Skip(f"not paid: the session challenge's request does not parse ({exc}); session.challenge-request judges it") from None
    try:
        return payer.session(challenge, cap=cap_factor * max_cost)  # type: ignore[attr-defined]
    except CannotPay as exc:
        raise Skip(f"not paid: {exc}") from None


async def send(ctx: CheckContext, authorization: str, *, url: str | None = None, method: str | None = None,
               data: bytes | None | object = ...) -> Response:
    body = _data(ctx) if data is ... else data
    return await ctx.request(method or _method(ctx), url or ctx.target, headers=[("Authorization", authorization)], data=body)


def endpoint(ctx: CheckContext) -> str:
    parts = urlsplit(ctx.target)
    return f"{parts.scheme}://{parts.netloc}{SESSION_PATH}"


async def post_endpoint(ctx: CheckContext, authorization: str) -> Response:
    return await ctx.request("POST", endpoint(ctx), headers=[("Authorization", authorization), ("Content-Length", "0")], data=b"")


def slug_of(resp: Response) -> str | None:
    try:
        doc = resp.json()
    except ValueError:
        return None
    kind = doc.get("type") if isinstance(doc, dict) else None
    return kind[len(EXTENSION_PROBLEM_BASE):] if isinstance(kind, str) and kind.startswith(EXTENSION_PROBLEM_BASE) else kind


def _skip_if_payer_limited(resp: Response, what: str) -> None:
    slug = slug_of(resp) if resp.status >= 400 else None
    if slug in _PAYER_LIMITS:
        raise Skip(f"not paid ({what}: {describe(resp)}): the payer's limitation, not the target's fault: {_PAYER_LIMITS[slug]}")


def receipt_object(resp: Response, what: str) -> dict[str, Any]:
    """The one ``Payment-Receipt`` of ``resp``, decoded (base64url JSON)."""
    values = resp.headers.getall("Payment-Receipt", [])
    if len(values) != 1:
        fail(f"{what}: HTTP {resp.status} with {len(values)} Payment-Receipt fields; a 2xx served under a session "
             "carries exactly one (SESSION-RCPT-01)")
    try:
        doc = json.loads(b64url_decode(values[0].strip()))
    except (ParseError, ValueError):
        fail(f"{what}: the Payment-Receipt is not base64url JSON (SESSION-RCPT-01)")
    if not isinstance(doc, dict):
        fail(f"{what}: the Payment-Receipt is not a JSON object (SESSION-RCPT-01)")
    return doc


def served(resp: Response, s: SuiteSession, what: str) -> dict[str, Any]:
    """``resp`` is a request served under ``s``: 2xx with a session receipt (SESSION-RCPT-01)."""
    no_5xx(resp, what)
    _skip_if_payer_limited(resp, what)
    if not 200 <= resp.status < 300:
        fail(f"{what}: the target refused it: {describe(resp)}{_detail(resp)}")
    doc = receipt_object(resp, what)
    if doc.get("status") != "success":
        fail(f"{what}: the receipt's status is {doc.get('status')!r}, not \"success\" (SESSION-RCPT-01)")
    for name in ("challengeId", "reference"):
        if doc.get(name) != s.id:
            fail(f"{what}: the receipt's {name} is {str(doc.get(name))[:16]!r}..., not the session id {s.id[:16]!r}... (SESSION-RCPT-01)")
    if doc.get("intent") != "session":
        fail(f"{what}: the receipt's intent is {doc.get('intent')!r}, not \"session\" (SESSION-RCPT-01)")
    for name in ("method", "timestamp", "receipt"):
        if not isinstance(doc.get(name), str) or not doc[name]:
            fail(f"{what}: the receipt lacks {name!r} (SESSION-RCPT-01)")
    for name in ("authorized", "spent", "remaining"):
        if not isinstance(doc.get(name), str) or _DECIMAL.fullmatch(doc[name]) is None:
            fail(f"{what}: the receipt's {name!r} is {doc.get(name)!r}, not a decimal string of base units (SESSION-RCPT-01)")
    if int(doc["remaining"]) != int(doc["authorized"]) - int(doc["spent"]):
        fail(f"{what}: the receipt says remaining {doc['remaining']} but authorized {doc['authorized']} − spent {doc['spent']} "
             "(SESSION-RCPT-01)")
    if int(doc["spent"]) > int(doc["authorized"]):
        fail(f"{what}: the receipt says spent {doc['spent']} above authorized {doc['authorized']}: the seller served past the "
             "vouchers it accepted (SESSION-USE-02)")
    return doc


def _detail(resp: Response) -> str:
    try:
        doc = resp.json()
    except ValueError:
        return ""
    detail = doc.get("detail") if isinstance(doc, dict) else None
    return f" ({detail[:160]})" if isinstance(detail, str) and detail else ""


def session_refused(resp: Response, what: str, slug: str, *, accepted: str, priced: bool = True) -> dict[str, Any]:
    """``resp`` refuses a session credential as SESSION-ERR-01 says: HTTP 402, a problem of type
    ``urn:mpp:problem:<slug>``, no receipt; on a priced route fresh challenges and no-store; at the
    session endpoint no challenge (SESSION-ERR-02)."""
    if 200 <= resp.status < 300:
        fail(f"{what}: the target accepted it ({describe(resp)}); {accepted}")
    status(resp, 402, what)
    doc = problem(resp, slug, what, base=EXTENSION_PROBLEM_BASE)
    if priced:
        fresh_challenges(resp, what)
    no_receipt(resp, what)
    return doc


async def open_session(ctx: CheckContext, s: SuiteSession, cumulative: int, what: str = "open") -> dict[str, Any]:
    resp = await send(ctx, s.open_credential(cumulative))
    return served(resp, s, what)


async def close_quietly(ctx: CheckContext, s: SuiteSession) -> None:
    """Release the session's hold once a check is done with it (best effort; never judged)."""
    try:
        await post_endpoint(ctx, s.close_credential())
    except Exception:  # noqa: BLE001 - the check's verdict stands; the seller's idle close releases it anyway
        pass


async def _jwks(ctx: CheckContext) -> Any:
    parts = urlsplit(ctx.target)
    resp = await ctx.request("GET", f"{parts.scheme}://{parts.netloc}/.well-known/jwks.json")
    if resp.status != 200:
        fail(f"the seller publishes no JWKS at /.well-known/jwks.json (HTTP {resp.status}), so its session receipts cannot be "
             "verified (SESSION-RCPT-02)")
    try:
        return resp.json()
    except ValueError as exc:
        fail(f"the seller's JWKS is not JSON ({exc})")


def _claims(receipt: dict[str, Any], jwks: Any, s: SuiteSession, what: str, req: str) -> dict[str, Any]:
    from mpp.protocol.receipts import verify_receipt_jws

    try:
        return verify_receipt_jws(receipt.get("receipt") or "", jwks, issuer=s.challenge.realm, challenge_id=s.id)
    except Exception as exc:  # noqa: BLE001 - any failure to verify is the finding
        fail(f"{what}: the receipt JWS does not verify against the seller's JWKS: {type(exc).__name__}: {exc} ({req})")


def _amount(claims: dict[str, Any], name: str, what: str, req: str) -> int:
    value = claims.get(name)
    if not isinstance(value, str) or _DECIMAL.fullmatch(value) is None:
        fail(f"{what}: claim {name!r} is {value!r}, not a decimal string of base units ({req})")
    return int(value)


# -- the checks -------------------------------------------------------------------------------

@register("session.challenge-request", "the 402 offers a ledger/session challenge whose request has the table's members, "
          "and a ledger/charge challenge beside it", "session", ["SESSION-REQ-02", "SESSION-REQ-05"])
async def challenge_request(ctx: CheckContext) -> str:
    challenge, challenges = await quote(ctx)
    doc = challenge.request_json
    if not isinstance(doc, dict):
        fail("the session challenge's request is not a JSON object (SESSION-REQ-02)")
    for name in ("amount", "currency", "recipient", "unitType", "methodDetails"):
        if name not in doc:
            fail(f"the session challenge's request lacks {name!r} (SESSION-REQ-02)")
    details = doc["methodDetails"]
    if not isinstance(details, dict):
        fail("the session challenge's methodDetails is not an object (SESSION-REQ-02)")
    if not isinstance(details.get("ledger"), str) or not details["ledger"]:
        fail("the session challenge's methodDetails lacks 'ledger' (SESSION-REQ-02)")
    for name, value in [("amount", doc["amount"])] + [(f"methodDetails.{k}", details.get(k))
                                                      for k in ("per", "maxUnits", "suggestedCap", "idleTimeout")]:
        if not isinstance(value, str) or re.fullmatch(r"[1-9][0-9]*", value) is None or int(value) > 2**63 - 1:
            fail(f"the session challenge's {name} is {value!r}, not a positive decimal string up to 2^63 − 1 (SESSION-REQ-02)")
    for name in ("currency", "recipient", "unitType"):
        if not isinstance(doc[name], str) or not doc[name]:
            fail(f"the session challenge's {name} is not a non-empty string (SESSION-REQ-02)")
    if not any((c.method, c.intent) == ("ledger", "charge") for c in challenges):
        offered = ", ".join(f"{c.method}/{c.intent}" for c in challenges)
        fail(f"the 402 offers {offered}: no ledger/charge fallback beside the session challenge (SESSION-REQ-05)")
    return (f"{doc['amount']} {doc['currency']} per {details['per']} {doc['unitType']}, at most {details['maxUnits']} a request; "
            "a ledger/charge fallback offered")


@register("session.charge-fallback", "the ledger/charge challenge offered beside the session challenge pays one request",
          "session", ["SESSION-REQ-05"])
async def charge_fallback(ctx: CheckContext) -> str:
    payer = payer_for(ctx)
    _, challenges = await quote(ctx)
    charges = [c for c in challenges if (c.method, c.intent) == ("ledger", "charge")]
    if not charges:
        fail("the 402 offers no ledger/charge fallback beside the session challenge (SESSION-REQ-05)")
    try:
        paid = Paid(charges[0], payer.authorize(charges[0]))
    except CannotPay as exc:
        raise Skip(f"not paid: {exc}") from None
    resp = await send(ctx, paid.authorization)
    receipt = paid_ok(resp, paid, "request paid by the charge fallback")
    return f"HTTP {resp.status}, charge receipt reference {receipt.reference[:24]}"


@register("session.open-serves", "an open on the session challenge is served with a session receipt, and so is a later "
          "voucher sent without a 402 first", "session", ["SESSION-REQ-01", "SESSION-REQ-08", "SESSION-OPEN-03", "SESSION-RCPT-01", "SESSION-VOUCHER-01"])
async def open_serves(ctx: CheckContext) -> str:
    s = await new_session(ctx)
    try:
        first = await open_session(ctx, s, 2 * s.max_cost, "open (cap 4 M, voucher 2 M)")
        later = served(await send(ctx, s.voucher_credential(3 * s.max_cost)), s, "a later voucher (3 M) on the open session")
        if int(later["authorized"]) != 3 * s.max_cost:
            fail(f"a later voucher for {3 * s.max_cost}: the receipt says authorized {later['authorized']} (SESSION-VOUCHER-03)")
        return f"opened with authorized {first['authorized']}, spent {first['spent']}; a later voucher served, spent {later['spent']}"
    finally:
        await close_quietly(ctx, s)


@register("session.request-receipt-signed", "a per-request session receipt's JWS verifies and carries the session's claims",
          "session", ["SESSION-RCPT-02", "SESSION-REQ-03"])
async def request_receipt_signed(ctx: CheckContext) -> str:
    s = await new_session(ctx)
    try:
        receipt = await open_session(ctx, s, 2 * s.max_cost)
        what, req = "the open's receipt", "SESSION-RCPT-02"
        claims = _claims(receipt, await _jwks(ctx), s, what, req)
        expected = {"iss": s.challenge.realm, "sub": s.key.did, "challengeId": s.id, "reference": s.id, "method": "ledger",
                    "intent": "session", "account": s.account, "currency": s.terms.currency, "recipient": s.terms.recipient}
        for name, value in expected.items():
            if claims.get(name) != value:
                fail(f"{what}: claim {name!r} is {str(claims.get(name))[:40]!r}, expected {value[:40]!r} ({req})")
        for name in ("jti", "resource", "unitType"):
            if not isinstance(claims.get(name), str) or not claims[name]:
                fail(f"{what}: claim {name!r} is missing ({req})")
        units = claims.get("units")
        if not isinstance(units, int) or isinstance(units, bool) or units < 0:
            fail(f"{what}: claim 'units' is {units!r}, not a non-negative JSON integer ({req})")
        price, per = _amount(claims, "unitPrice", what, req), _amount(claims, "per", what, req)
        amount = _amount(claims, "amount", what, req)
        if per <= 0 or amount != -(-units * price // per):
            fail(f"{what}: amount {amount} is not cost({units}) at {price} per {per} ({req}, SESSION-REQ-03)")
        for name in ("authorized", "spent", "remaining"):
            if claims.get(name) != receipt.get(name):
                fail(f"{what}: the JWS says {name} {claims.get(name)!r}, the Payment-Receipt object {receipt.get(name)!r} ({req})")
        if _amount(claims, "cap", what, req) != s.cap:
            fail(f"{what}: claim 'cap' is {claims.get('cap')!r}, the session's cap is {s.cap} ({req})")
        return f"the JWS verifies; {units} units cost {amount} at {price} per {per}"
    finally:
        await close_quietly(ctx, s)


@register("session.open-other-session-id", "an open whose sessionId is not the challenge's id is refused "
          "(session-voucher-invalid) and leaves the challenge usable", "session", ["SESSION-OPEN-01", "SESSION-ERR-01"])
async def open_other_session_id(ctx: CheckContext) -> str:
    s = await new_session(ctx)
    try:
        other = s.id[::-1] if s.id[::-1] != s.id else s.id + "x"
        resp = await send(ctx, s.open_credential(s.max_cost, session_id=other))
        _skip_if_payer_limited(resp, "open naming another session id")
        session_refused(resp, "open naming another session id", "session-voucher-invalid",
                        accepted="a session opened under an id that is not its challenge's (SESSION-OPEN-01)")
        await open_session(ctx, s, s.max_cost, "the genuine open, after the refused one")
        return "refused session-voucher-invalid; the genuine open was served afterwards"
    finally:
        await close_quietly(ctx, s)


@register("session.open-cap-below-request", "an open whose cap is below cost(maxUnits) is refused (session-insufficient) "
          "before the challenge is consumed", "session", ["SESSION-OPEN-02", "SESSION-ERR-01"])
async def open_cap_below_request(ctx: CheckContext) -> str:
    s = await new_session(ctx)
    if s.max_cost < 2:
        raise Skip("cost(maxUnits) is 1 base unit here: no positive cap is below it")
    try:
        resp = await send(ctx, s.open_credential(s.max_cost - 1, cap=s.max_cost - 1))
        _skip_if_payer_limited(resp, "open with a cap below one request")
        doc = session_refused(resp, "open with a cap of cost(maxUnits) − 1", "session-insufficient",
                              accepted="a session whose cap cannot pay one request (SESSION-OPEN-02)")
        missing = [m for m in ("sessionId", "required", "authorized", "spent", "cap") if m not in doc]
        if missing:
            fail(f"session-insufficient lacks {', '.join(missing)} (SESSION-ERR-01 MUST)")
        await open_session(ctx, s, s.max_cost, "the genuine open on the same challenge, after the refused one")
        return "refused session-insufficient with its members; the same challenge then opened"
    finally:
        await close_quietly(ctx, s)


@register("session.voucher-over-cap", "a voucher above the session's cap is refused (session-cap-exceeded) and changes nothing",
          "session", ["SESSION-VOUCHER-04", "SESSION-ERR-01", "SESSION-ERR-03"])
async def voucher_over_cap(ctx: CheckContext) -> str:
    s = await new_session(ctx)
    try:
        opened = await open_session(ctx, s, 2 * s.max_cost)
        resp = await send(ctx, s.voucher_credential(s.cap + 1))
        session_refused(resp, f"a voucher for cap + 1 ({s.cap + 1})", "session-cap-exceeded",
                        accepted="a voucher above the cap must be refused session-cap-exceeded, changing nothing (SESSION-VOUCHER-04)")
        after = served(await send(ctx, s.voucher_credential(2 * s.max_cost, 1)), s, "a stale voucher after the refusal")
        if after["authorized"] != opened["authorized"]:
            fail(f"after the refused voucher authorized is {after['authorized']}, was {opened['authorized']}: "
                 "the refusal changed the session (SESSION-ERR-03)")
        return f"refused session-cap-exceeded; authorized still {after['authorized']}"
    finally:
        await close_quietly(ctx, s)


@register("session.stale-voucher", "a voucher at or below the authorized value is a harmless retry: served, and authorized "
          "does not go down", "session", ["SESSION-VOUCHER-02"])
async def stale_voucher(ctx: CheckContext) -> str:
    s = await new_session(ctx)
    try:
        opened = await open_session(ctx, s, 3 * s.max_cost)
        resp = await send(ctx, s.voucher_credential(s.max_cost))  # lower cumulative, higher sequence
        if resp.status == 402 and slug_of(resp) == "session-insufficient":
            if int(opened["spent"]) + s.max_cost <= 3 * s.max_cost:
                fail(f"a lower voucher ({s.max_cost}) was refused session-insufficient, yet the {3 * s.max_cost} accepted before "
                     f"covers this request (spent {opened['spent']} + cost(maxUnits) {s.max_cost}): a stale voucher must "
                     "change nothing and not be refused (SESSION-VOUCHER-02)")
            raise Skip(f"the open's request spent {opened['spent']}, so the value accepted no longer covers one more request")
        after = served(resp, s, f"a lower voucher ({s.max_cost}, below the {3 * s.max_cost} accepted)")
        if int(after["authorized"]) != 3 * s.max_cost:
            fail(f"after a lower voucher authorized is {after['authorized']}, not the {3 * s.max_cost} accepted before: "
                 "authorized must never decrease (SESSION-VOUCHER-02)")
        return f"served; authorized stays {after['authorized']}"
    finally:
        await close_quietly(ctx, s)


@register("session.voucher-sequence", "a higher voucher whose sequence is not higher than the stored one is refused "
          "(session-voucher-invalid)", "session", ["SESSION-VOUCHER-03", "SESSION-ERR-01"])
async def voucher_sequence(ctx: CheckContext) -> str:
    s = await new_session(ctx)
    try:
        await open_session(ctx, s, s.max_cost)  # sequence 1
        resp = await send(ctx, s.voucher_credential(2 * s.max_cost, 1))
        session_refused(resp, "a higher voucher with the same sequence", "session-voucher-invalid",
                        accepted="a replayed sequence raised the authorized value (SESSION-VOUCHER-03)")
        after = served(await send(ctx, s.voucher_credential(2 * s.max_cost, 2)), s, "the same voucher with sequence 2")
        if int(after["authorized"]) != 2 * s.max_cost:
            fail(f"a voucher for {2 * s.max_cost} with a higher sequence: authorized is {after['authorized']} (SESSION-VOUCHER-03)")
        return "refused session-voucher-invalid; accepted with a higher sequence"
    finally:
        await close_quietly(ctx, s)


@register("session.voucher-other-key", "a voucher not signed by the session's key is refused (session-voucher-invalid) "
          "and changes nothing", "session", ["SESSION-VOUCHER-05", "SESSION-ERR-01", "SESSION-ERR-03"])
async def voucher_other_key(ctx: CheckContext) -> str:
    s = await new_session(ctx)
    try:
        opened = await open_session(ctx, s, s.max_cost)
        thief = SigningKey.generate()
        for what, credential in (
                ("a voucher naming the session's signer, signed by another key", s.voucher_credential(s.cap, key=thief)),
                ("a voucher signed by, and naming, another key", s.voucher_credential(s.cap, key=thief, signer=thief.did))):
            session_refused(await send(ctx, credential), what, "session-voucher-invalid",
                            accepted="a key that did not open the session spent from it (SESSION-VOUCHER-05)")
        after = served(await send(ctx, s.voucher_credential(2 * s.max_cost)), s, "a genuine voucher after the forgeries")
        if int(after["authorized"]) != 2 * s.max_cost:
            fail(f"after the forgeries and a genuine voucher for {2 * s.max_cost}, authorized is {after['authorized']} "
                 f"(was {opened['authorized']}; SESSION-ERR-03)")
        return "both forgeries refused session-voucher-invalid; the session's own voucher then served"
    finally:
        await close_quietly(ctx, s)


@register("session.unknown-session", "a voucher naming a session the seller never opened is refused (session-unknown)",
          "session", ["SESSION-VOUCHER-06", "SESSION-ERR-01"])
async def unknown_session(ctx: CheckContext) -> str:
    challenge, _ = await quote(ctx)
    try:
        s = SuiteSession.of(challenge, SigningKey.generate(), "acct:mpp-conformance", cap=1, max_amount=2**63 - 1)
    except CannotPay as exc:
        raise Skip(f"the session challenge cannot be answered: {exc}") from None
    resp = await send(ctx, s.voucher_credential(0))
    session_refused(resp, "a voucher on a challenge no session was opened on", "session-unknown",
                    accepted="service under a session that does not exist (SESSION-VOUCHER-06)")
    return "refused session-unknown"


@register("session.insufficient", "a request the authorized value cannot cover is refused (session-insufficient, with "
          "required, authorized, spent, cap); the open it carried stays", "session",
          ["SESSION-USE-01", "SESSION-USE-03", "SESSION-ERR-01", "SESSION-ERR-03"])
async def insufficient(ctx: CheckContext) -> str:
    s = await new_session(ctx)
    try:
        resp = await send(ctx, s.open_credential(0))
        _skip_if_payer_limited(resp, "open with a voucher for 0")
        doc = session_refused(resp, "open with a voucher for 0 (no request is covered)", "session-insufficient",
                              accepted="a request served with nothing authorized (SESSION-USE-01)")
        missing = [m for m in ("sessionId", "required", "authorized", "spent", "cap") if m not in doc]
        if missing:
            fail(f"session-insufficient lacks {', '.join(missing)} (SESSION-USE-03)")
        if doc["sessionId"] != s.id:
            fail(f"session-insufficient names session {str(doc['sessionId'])[:16]!r}..., not {s.id[:16]!r}... (SESSION-USE-03)")
        for name in ("required", "authorized", "spent", "cap"):
            if not isinstance(doc[name], str) or _DECIMAL.fullmatch(doc[name]) is None:
                fail(f"session-insufficient member {name!r} is {doc[name]!r}, not a decimal string (SESSION-USE-03)")
        if (doc["authorized"], doc["spent"]) != ("0", "0") or int(doc["required"]) != s.max_cost:
            fail(f"session-insufficient says required {doc['required']}, authorized {doc['authorized']}, spent {doc['spent']}; "
                 f"a new session with nothing authorized needs cost(maxUnits) = {s.max_cost} (SESSION-USE-03)")
        after = await send(ctx, s.voucher_credential(s.max_cost))
        if after.status == 402 and slug_of(after) == "session-unknown":
            fail("after session-insufficient on the open, the session does not exist: the open the request carried must "
                 "stay accepted (SESSION-ERR-03)")
        served(after, s, "a voucher for cost(maxUnits) on the session opened by the refused request")
        return f"refused session-insufficient (required {doc['required']}); the session then served a voucher"
    finally:
        await close_quietly(ctx, s)


@register("session.concurrent-use", "concurrent requests on one session never spend past the authorized value",
          "session", ["SESSION-USE-01", "SESSION-USE-02"])
async def concurrent_use(ctx: CheckContext) -> str:
    s = await new_session(ctx)
    n = int(ctx.options.get("concurrency") or 20)
    try:
        authorized = 2 * s.max_cost
        opened = await open_session(ctx, s, authorized)
        credential = s.voucher_credential(authorized, 1)  # stale: authorized stays 2 M throughout
        responses = await asyncio.gather(*(send(ctx, credential) for _ in range(n)))
        spent, ok = int(opened["spent"]), 0
        charged = _charged(opened, "the open")
        for i, resp in enumerate(responses, 1):
            what = f"concurrent request {i} of {n}"
            no_5xx(resp, what)
            if 200 <= resp.status < 300:
                receipt = served(resp, s, what)
                spent = max(spent, int(receipt["spent"]))
                charged += _charged(receipt, what)
                ok += 1
            elif not (resp.status == 402 and slug_of(resp) == "session-insufficient"):
                fail(f"{what}: {describe(resp)}; a request the session cannot cover is refused session-insufficient (SESSION-USE-03)")
        if charged > authorized:
            fail(f"{ok + 1} requests served under the session, their receipts charging {charged} in all, above the {authorized} "
                 "authorized: concurrent requests spent past the accepted voucher (SESSION-USE-02)")
        close = await post_endpoint(ctx, s.close_credential())
        if close.status == 200:
            final = receipt_object(close, "close after the concurrent requests")
            if _DECIMAL.fullmatch(str(final.get("spent"))) and int(final["spent"]) > authorized:
                fail(f"the session closed with spent {final['spent']} above the {authorized} authorized (SESSION-USE-02)")
        return f"{ok} of {n} concurrent requests served, spent at most {spent} of {authorized} authorized"
    finally:
        await close_quietly(ctx, s)


def _charged(receipt: dict[str, Any], what: str) -> int:
    """The ``amount`` a per-request receipt's JWS says the request was charged (read, not verified:
    session.request-receipt-signed judges the signature)."""
    try:
        claims = json.loads(b64url_decode(str(receipt.get("receipt", "")).split(".")[1]))
        amount = claims["amount"]
    except (IndexError, KeyError, TypeError, ValueError, ParseError):
        fail(f"{what}: the receipt's JWS has no readable 'amount' claim (SESSION-RCPT-02)")
    if not isinstance(amount, str) or _DECIMAL.fullmatch(amount) is None:
        fail(f"{what}: the receipt's 'amount' claim is {amount!r}, not a decimal string (SESSION-RCPT-02)")
    return int(amount)


@register("session.close-final-receipt", "close at the session endpoint answers 200 with the final receipt (header and JSON "
          "body), consistent with what was charged, and the same receipt again on a second close", "session",
          ["SESSION-CLOSE-01", "SESSION-CLOSE-02", "SESSION-RCPT-03"])
async def close_final_receipt(ctx: CheckContext) -> str:
    s = await new_session(ctx)
    try:
        charged = [int(c.get("spent", 0)) for c in [await open_session(ctx, s, 2 * s.max_cost)]]
        later = served(await send(ctx, s.voucher_credential(2 * s.max_cost, 1)), s, "a request before the close")
        charged.append(int(later["spent"]))
        resp = await post_endpoint(ctx, s.close_credential())
        what = "close at the session endpoint"
        no_5xx(resp, what)
        if resp.status != 200:
            fail(f"{what}: {describe(resp)}{_detail(resp)}; a close is answered 200 with the final receipt (SESSION-CLOSE-02)")
        if "application/json" not in resp.headers.get("Content-Type", ""):
            fail(f"{what}: Content-Type {resp.headers.get('Content-Type')!r}, not application/json (SESSION-CLOSE-02)")
        try:
            body = resp.json()
        except ValueError as exc:
            fail(f"{what}: the body is not JSON ({exc}; SESSION-CLOSE-02)")
        header = resp.headers.get("Payment-Receipt")
        if not isinstance(body, dict) or any(m not in body for m in ("sessionId", "captured", "released", "receipt")):
            fail(f"{what}: the body lacks sessionId, captured, released or receipt (SESSION-CLOSE-02)")
        if body["receipt"] != header:
            fail(f"{what}: the body's receipt is not the Payment-Receipt field value (SESSION-CLOSE-02)")
        final = receipt_object(resp, what)
        if final.get("final") is not True or not isinstance(final.get("settlementRef"), str):
            fail(f"{what}: the Payment-Receipt lacks final = true or settlementRef (SESSION-RCPT-03)")
        req = "SESSION-RCPT-03"
        claims = _claims(final, await _jwks(ctx), s, what, req)
        if claims.get("final") is not True:
            fail(f"{what}: the final JWS lacks final = true ({req})")
        captured, released, cap = (_amount(claims, n, what, req) for n in ("captured", "released", "cap"))
        amount, spent, authorized = (_amount(claims, n, what, req) for n in ("amount", "spent", "authorized"))
        lines = claims.get("lines")
        if not isinstance(lines, list) or not all(isinstance(x, dict) for x in lines):
            fail(f"{what}: the final JWS's lines is not an array of objects ({req})")
        line_sum = sum(_amount(x, "amount", what + " line", req) for x in lines)
        if not amount == captured == spent == line_sum:
            fail(f"{what}: amount {amount}, captured {captured}, spent {spent} and the lines' sum {line_sum} differ ({req})")
        if not captured <= authorized <= cap or captured + released != cap or cap != s.cap:
            fail(f"{what}: captured {captured}, authorized {authorized}, released {released}, cap {cap} (signed {s.cap}) "
                 f"break captured ≤ authorized ≤ cap = captured + released ({req})")
        if captured != max(charged):
            fail(f"{what}: captured {captured}, but the last per-request receipt said spent {max(charged)} ({req}, SESSION-CLOSE-01)")
        if (str(captured), str(released), s.id) != (str(body["captured"]), str(body["released"]), body["sessionId"]):
            fail(f"{what}: the body's sessionId, captured or released differ from the final receipt's (SESSION-CLOSE-02)")
        again = await post_endpoint(ctx, s.close_credential())
        no_5xx(again, "a second close")
        if again.status != 200 or again.headers.get("Payment-Receipt") != header:
            fail(f"a second close: {describe(again)}; every later close gets the same final receipt (SESSION-CLOSE-02)")
        return f"captured {captured}, released {released} of cap {cap}; a second close got the same receipt"
    finally:
        await close_quietly(ctx, s)


@register("session.closed-refuses", "after close the session takes no voucher and serves nothing (session-closed)",
          "session", ["SESSION-REQ-06", "SESSION-VOUCHER-06", "SESSION-ERR-01"])
async def closed_refuses(ctx: CheckContext) -> str:
    s = await new_session(ctx)
    try:
        await open_session(ctx, s, 2 * s.max_cost)
    except BaseException:
        await close_quietly(ctx, s)
        raise
    resp = await post_endpoint(ctx, s.close_credential())
    no_5xx(resp, "close")
    if resp.status != 200:
        fail(f"close at the session endpoint: {describe(resp)}{_detail(resp)} (SESSION-CLOSE-02); session.close-final-receipt judges it")
    for what, credential in (("a higher voucher after close", s.voucher_credential(3 * s.max_cost)),
                             ("a stale voucher after close", s.voucher_credential(s.max_cost, 1))):
        session_refused(await send(ctx, credential), what, "session-closed",
                        accepted="a closed session served a request (SESSION-REQ-06)")
    return "both refused session-closed"


@register("session.endpoint-refuses-open", "an open sent to the session endpoint is refused (session-voucher-invalid) with "
          "no challenge", "session", ["SESSION-OPEN-01", "SESSION-ERR-02"])
async def endpoint_refuses_open(ctx: CheckContext) -> str:
    s = await new_session(ctx)
    try:
        resp = await post_endpoint(ctx, s.open_credential(s.max_cost))
        what = "an open sent to the session endpoint"
        if resp.status in NOT_THERE and slug_of(resp) is None:
            raise Skip(f"the target has no session endpoint at {SESSION_PATH} (HTTP {resp.status})")
        doc = session_refused(resp, what, "session-voucher-invalid", priced=False,
                              accepted="a session opened away from the route it was offered for (SESSION-OPEN-01)")
        if resp.headers.getall("WWW-Authenticate", []) or "challengeId" in doc:
            fail(f"{what}: the problem carries a challenge or challengeId; the session endpoint prices nothing (SESSION-ERR-02)")
        return "refused session-voucher-invalid, with no challenge"
    finally:
        await close_quietly(ctx, s)


@register("session.malformed-payload", "a session payload with an ill-formed member is refused (session-voucher-invalid); "
          "an unknown member is ignored", "session", ["SESSION-REQ-07", "SESSION-ERR-01"])
async def malformed_payload(ctx: CheckContext) -> str:
    s = await new_session(ctx)
    try:
        await open_session(ctx, s, 3 * s.max_cost)

        def voucher_payload(**changes: Any) -> dict[str, Any]:
            from mpp.intents.session import SessionPayload

            doc = SessionPayload("voucher", s.id, s.key.did, voucher=s.voucher(2 * s.max_cost)).as_json()
            voucher = doc["voucher"]
            for name, value in changes.items():
                if name.startswith("voucher."):
                    voucher[name[8:]] = value
                else:
                    doc[name] = value
            return doc

        probes = (("a payload of type 'charge'", voucher_payload(type="charge")),
                  ("a payload with action 'spend'", voucher_payload(action="spend")),
                  ("a voucher with sequence 0", voucher_payload(**{"voucher.sequence": 0})),
                  ("a voucher with sequence \"5\" (a string)", voucher_payload(**{"voucher.sequence": "5"})),
                  ("a voucher with cumulative \"016\" (a leading zero)", voucher_payload(**{"voucher.cumulative": "016"})),
                  ("a voucher with cumulative 16 (a number)", voucher_payload(**{"voucher.cumulative": 16})),
                  ("a signer that is not an Ed25519 did:key", voucher_payload(signer="did:web:example.com")),
                  ("a voucher action without its voucher", {k: v for k, v in voucher_payload().items() if k != "voucher"}))
        for what, payload in probes:
            session_refused(await send(ctx, s.raw_credential(payload)), what, "session-voucher-invalid",
                            accepted="an ill-formed session payload was taken (SESSION-REQ-07)")
        extra = voucher_payload(mppConformance="an unknown member")
        served(await send(ctx, s.raw_credential(extra)), s, "a genuine voucher payload with an unknown member")
        return f"{len(probes)} ill-formed payloads refused session-voucher-invalid; an unknown member ignored"
    finally:
        await close_quietly(ctx, s)


@register("session.close-on-route", "a close sent to a priced route instead of the session endpoint is refused "
          "(session-voucher-invalid) and leaves the session open", "session", ["SESSION-CLOSE-01", "SESSION-ERR-03"])
async def close_on_route(ctx: CheckContext) -> str:
    s = await new_session(ctx)
    try:
        await open_session(ctx, s, 2 * s.max_cost)
        session_refused(await send(ctx, s.close_credential()), "a close sent to the priced route", "session-voucher-invalid",
                        accepted="a close is sent to the session endpoint (SESSION-CLOSE-01)")
        after = await send(ctx, s.voucher_credential(2 * s.max_cost, 1))
        if after.status == 402 and slug_of(after) == "session-closed":
            fail("after the refused close on the route the session is closed: a refused credential must leave the session "
                 "as it was (SESSION-ERR-03)")
        served(after, s, "a voucher after the refused close")
        return "refused session-voucher-invalid; the session still served a voucher"
    finally:
        await close_quietly(ctx, s)


@register("session.check-order", "a credential failing several checks is answered by the first in the spec's order "
          "(signature before cap, cap before sequence)", "session", ["SESSION-VOUCHER-09"])
async def check_order(ctx: CheckContext) -> str:
    s = await new_session(ctx)
    try:
        await open_session(ctx, s, s.max_cost)
        thief = SigningKey.generate()
        forged = await send(ctx, s.voucher_credential(s.cap, key=thief))
        no_5xx(forged, "a voucher within the cap, signed by another key")
        if 200 <= forged.status < 300:
            raise Skip("the target took a voucher signed by another key, so which check comes first cannot be seen "
                       "(session.voucher-other-key judges that)")
        # Only the order is judged here: a seller that never refuses one of the two faults is
        # session.voucher-other-key's or session.voucher-over-cap's finding, and the order cannot be seen.
        probes = (("a voucher above the cap, signed by another key", s.voucher_credential(s.cap + 1, key=thief),
                   "session-voucher-invalid", "session-cap-exceeded", "signatures (step 4) before the cap (step 5)"),
                  ("a voucher above the cap with a sequence already used", s.voucher_credential(s.cap + 1, 1),
                   "session-cap-exceeded", "session-voucher-invalid", "the cap (step 5) before the voucher's order (step 6)"))
        for what, credential, first, later, order in probes:
            resp = await send(ctx, credential)
            no_5xx(resp, what)
            slug = slug_of(resp) if resp.status >= 400 else None
            if slug == later:
                fail(f"{what}: refused {later}; the seller must judge {order} and answer {first} (SESSION-VOUCHER-09)")
            if slug != first:
                raise Skip(f"{what}: {describe(resp)}, neither {first} nor {later}: the order cannot be judged "
                           "(session.voucher-over-cap and session.voucher-other-key judge each fault)")
            session_refused(resp, what, first, accepted="")
        return "signatures judged before the cap (session-voucher-invalid), the cap before the sequence (session-cap-exceeded)"
    finally:
        await close_quietly(ctx, s)


@register("session.idempotency-retry", "a retry of a session request with the same credential and Idempotency-Key gets "
          "the original response and receipt and is not charged again", "session", ["SESSION-USE-06"])
async def idempotency_retry(ctx: CheckContext) -> str:
    import secrets

    s = await new_session(ctx)
    try:
        await open_session(ctx, s, 3 * s.max_cost)
        credential, key = s.voucher_credential(3 * s.max_cost, 1), "mpp-conformance-" + secrets.token_hex(8)
        headers = [("Authorization", credential), ("Idempotency-Key", key)]
        first = await ctx.request(_method(ctx), ctx.target, headers=headers, data=_data(ctx))
        original = served(first, s, "a session request with an Idempotency-Key")
        again = await ctx.request(_method(ctx), ctx.target, headers=headers, data=_data(ctx))
        no_5xx(again, "the retry with the same credential and Idempotency-Key")
        if (again.status, again.body, again.headers.get("Payment-Receipt")) != (first.status, first.body, first.headers.get("Payment-Receipt")):
            fail(f"the retry with the same credential and Idempotency-Key: {describe(again)}, not the original response and "
                 "receipt (SESSION-USE-06, CORE-ONCE-06)")
        third = served(await send(ctx, credential), s, "a request after the retry")
        expected = int(original["spent"]) + _charged(third, "a request after the retry")
        if int(third["spent"]) != expected:
            fail(f"after the retry the session's spent is {third['spent']}, expected {expected} (the original's spent plus this "
                 "request's charge): the retry was charged again (SESSION-USE-06)")
        return "the retry got the original response and receipt and was not charged"
    finally:
        await close_quietly(ctx, s)


@register("session.top-up", "a topUp raises the cap once held, and the voucher it carries may then exceed the old cap",
          "session", ["SESSION-VOUCHER-08"])
async def top_up(ctx: CheckContext) -> str:
    s = await new_session(ctx, cap_factor=2)
    try:
        await open_session(ctx, s, s.max_cost)
        new_cap = 4 * s.max_cost
        try:
            credential = s.topup_credential(new_cap, 3 * s.max_cost)
        except CannotPay as exc:
            raise Skip(f"not paid: {exc}") from None
        receipt = served(await send(ctx, credential), s, f"a topUp from cap {s.cap} to {new_cap} with a voucher for {3 * s.max_cost}")
        if int(receipt["authorized"]) != 3 * s.max_cost:
            fail(f"after the topUp authorized is {receipt['authorized']}, not the {3 * s.max_cost} its voucher carries (SESSION-VOUCHER-08)")
        s.cap = new_cap
        return f"cap raised to {new_cap}; a voucher for {3 * s.max_cost}, above the old cap, accepted"
    finally:
        await close_quietly(ctx, s)


@register("session.endpoint-http", "the session endpoint ignores a body sent with a close, and answers another HTTP method 405",
          "session", ["SESSION-CLOSE-07"])
async def endpoint_http(ctx: CheckContext) -> str:
    s = await new_session(ctx)
    try:
        resp = await ctx.request("GET", endpoint(ctx))
        no_5xx(resp, f"GET {SESSION_PATH}")
        if resp.status != 405:
            fail(f"GET {SESSION_PATH}: HTTP {resp.status}; another method than POST on the session endpoint is answered 405 "
                 "(SESSION-CLOSE-07)")
        await open_session(ctx, s, s.max_cost)
        body = b'{"mppConformance": "a body the session endpoint must ignore"}'
        close = await ctx.request("POST", endpoint(ctx) + "?mpp_conformance=1", data=body,
                                  headers=[("Authorization", s.close_credential()), ("Content-Type", "application/json")])
        no_5xx(close, "a close with a JSON body and a query")
        if close.status != 200:
            fail(f"a close with a JSON body and a query: {describe(close)}{_detail(close)}; the seller must ignore both (SESSION-CLOSE-07)")
        if "application/json" not in close.headers.get("Content-Type", ""):
            fail(f"a close: Content-Type {close.headers.get('Content-Type')!r}, not application/json (SESSION-CLOSE-07)")
        return f"GET {SESSION_PATH} answered 405; a close with a body and a query answered 200"
    finally:
        await close_quietly(ctx, s)
