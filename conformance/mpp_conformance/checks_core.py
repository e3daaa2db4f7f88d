"""Profile `core`: what any Payment-scheme seller must do, checked without paying."""

from __future__ import annotations

import asyncio
import json
import random
import re
import secrets
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp

from mpp import Challenge, b64url_decode, b64url_encode, canonical_json, format_credential, format_rfc3339, parse_rfc3339
from mpp.protocol.wire import loads_strict
from mpp.protocol.errors import EXTENSION_PROBLEM_BASE
from mpp.protocol.models import Credential

from .base import CheckContext, CheckFailed, Response, Skip, register
from .expect import PROBLEM_BASE, describe, fail, fresh_challenges, no_5xx, no_receipt, problem, refused, status

__all__ = ["unpaid", "first_challenge", "credential_header", "DEFAULT_EXPIRY_WAIT"]


async def unpaid(ctx: CheckContext, headers: dict[str, str] | None = None) -> Response:
    """The target resource, requested without a credential."""
    return await ctx.request(ctx.options.get("method", "GET"), ctx.target, headers=headers, data=ctx.options.get("data"))


async def first_challenge(ctx: CheckContext) -> tuple[Response, Challenge]:
    resp = await unpaid(ctx)
    status(resp, 402, "unpaid request")
    return resp, fresh_challenges(resp, "unpaid request")[0]


def credential_header(challenge: Challenge, payload: dict | None = None, **echo_changes: str) -> str:
    """A credential echoing ``challenge`` (optionally altered) with a payload no target will accept."""
    echoed = challenge.model_copy(update=echo_changes) if echo_changes else challenge
    return format_credential(Credential(challenge=echoed, payload=payload or {"type": "conformance-probe"}))


async def send(ctx: CheckContext, authorization: str | list[str]) -> Response:
    values = [authorization] if isinstance(authorization, str) else authorization
    return await ctx.request(ctx.options.get("method", "GET"), ctx.target,
                             headers=[("Authorization", v) for v in values], data=ctx.options.get("data"))


@register("core.challenge-well-formed", "402 carries a well-formed Payment challenge, not cacheable, without a receipt", "core",
          ["CORE-CHAL-01", "CORE-CHAL-09", "CORE-ERR-02", "CORE-ERR-10"],
          draft="draft §4.2 MUST; draft §4.4.2 MUST NOT; draft §5.1.1 MUST; draft §11.10 MUST")
async def challenge_well_formed(ctx: CheckContext) -> str:
    # The draft's shape only: a problem document on the 402 is a SHOULD (draft.problem-details),
    # expires a SHOULD (draft.expires), MPP's own members are core.problem-documents'.
    resp = await unpaid(ctx)
    status(resp, 402, "unpaid request")
    challenges = fresh_challenges(resp, "unpaid request", no_store=True)
    now = datetime.now(timezone.utc)
    for c in challenges:
        if c.method != c.method.lower():
            fail(f"challenge {c.id[:12]}...: method {c.method!r} is not lowercase (draft §5.1.1)")
        raw = b64url_decode(c.request)
        if raw != canonical_json(loads_strict(raw, "request")):
            fail(f"challenge {c.id[:12]}...: request is not RFC 8785 (JCS) canonical JSON (draft §5.1.1)")
        if c.expires is not None and parse_rfc3339(c.expires) <= now:
            fail(f"challenge {c.id[:12]}...: expires {c.expires} is not in the future")
    return f"{len(challenges)} challenge(s): " + ", ".join(f"{c.method}/{c.intent}" for c in challenges)


@register("draft.expires", "challenges carry expires", "draft", ["CORE-CHAL-02"], draft="draft §5.1.2 SHOULD")
async def has_expires(ctx: CheckContext) -> str:
    _, challenge = await first_challenge(ctx)
    if challenge.expires is None:
        fail("the challenge carries no expires (the draft: servers SHOULD include it)")
    return f"expires {challenge.expires}"


# The refusals core.problem-documents asks for, each with the slug MPP's profile gives it.
_PROBLEM_PROBES = (("unpaid request", None, "payment-required"), ("garbage credential", "garbage", "malformed-credential"),
                   ("credential with a random challenge id", "random-id", "invalid-challenge"),
                   ("credential echoing the challenge with another amount", "request", "invalid-challenge"),
                   ("credential echoing the challenge with expires one hour later", "expires", "invalid-challenge"),
                   ("credential echoing the challenge with another realm", "realm", "invalid-challenge"))


async def _problem_probe(ctx: CheckContext, kind: str | None) -> tuple[Response, set[str]]:
    if kind is None:
        return await unpaid(ctx), set()
    if kind == "garbage":
        return await send(ctx, "Payment !!!not-base64!!!"), set()
    _, real = await first_challenge(ctx)
    changes = {"random-id": {"id": _random_id()}, "request": {"request": _other_request(real)},
               "expires": {"expires": _later(real.expires, 3600)},
               "realm": {"realm": "conformance-probe." + real.realm}}[kind]
    return await send(ctx, credential_header(real, **changes)), {real.id}


@register("core.problem-documents", "every 402 is a problem document of MPP's type for its cause, naming its fresh challenge", "core",
          ["CORE-ERR-01", "CORE-ERR-03", "CORE-ERR-04", "CORE-BIND-07"])
async def problem_documents(ctx: CheckContext) -> str:
    for what, kind, slug in _PROBLEM_PROBES:
        resp, used = await _problem_probe(ctx, kind)
        status(resp, 402, what)
        doc = problem(resp, slug, what)
        challenges = fresh_challenges(resp, what, not_ids=used)
        if not isinstance(doc.get("detail"), str):
            fail(f"{what}: the problem document has no detail (CORE-ERR-01)")
        if doc.get("challengeId") not in {c.id for c in challenges}:
            fail(f"{what}: the problem document does not name its fresh challenge in challengeId (CORE-ERR-01)")
    return f"{len(_PROBLEM_PROBES)} refusals: problem documents of MPP's types, each naming its fresh challenge"


@register("draft.problem-details", "402s carry RFC 9457 problem documents of the draft's types", "draft", ["CORE-ERR-01"],
          draft="draft §8.1 SHOULD")
async def problem_details(ctx: CheckContext) -> str:
    for what, kind, _ in _PROBLEM_PROBES[:2]:
        resp, _ = await _problem_probe(ctx, kind)
        if resp.status >= 500:  # the 5xx is the finding (core.no-5xx and the refusal checks), not its body
            raise Skip(f"{what}: HTTP {resp.status}, not a payment problem to describe")
        ctype = resp.headers.get("Content-Type", "")
        if "application/problem+json" not in ctype:
            fail(f"{what}: HTTP {resp.status} with Content-Type {ctype!r}, not a problem document (draft §8.1 SHOULD)")
        kind_uri = problem(resp, None, what).get("type", "")
        if not kind_uri.startswith(PROBLEM_BASE):
            fail(f"{what}: problem type {kind_uri!r} is not one of the draft's ({PROBLEM_BASE}...)")
    return "the 402 and a malformed-credential refusal carry problem documents of the draft's types"


@register("core.fresh-id-per-402", "each 402 carries a new challenge id", "core", ["CORE-ERR-10", "CORE-BIND-01"],
          draft="draft §5.1.1 prose")
async def fresh_id_per_402(ctx: CheckContext) -> str:
    _, first = await first_challenge(ctx)
    _, second = await first_challenge(ctx)
    if first.id == second.id:
        fail("two unpaid requests got the same challenge id; a used id would then block the next buyer")
    return "ids differ"


@register("core.garbage-credential", "a garbage credential gets 402 (malformed-credential) with a fresh challenge", "core",
          ["CORE-CRED-01", "CORE-ERR-03", "CORE-ERR-10"], draft="draft §4.2 MUST")
async def garbage_credential(ctx: CheckContext) -> str:
    # Labels, not values, in messages: a credential never reaches a report.
    for label, value in (("garbage", "Payment !!!not-base64!!!"), ("non-JSON", "Payment " + "QUJD" * 3),
                         ("truncated JSON", "Payment eyJjaGFsbGVuZ2UiOnsiaWQiOiJ4")):
        resp = await send(ctx, value)
        refused(resp, f"{label} credential", ("malformed-credential",))
        fresh_challenges(resp, f"{label} credential", no_store=True)
    return "garbage, non-JSON and truncated credentials refused"


@register("core.strict-json", "credentials that are not strict JSON (NaN, a repeated member, deep nesting) are malformed", "core",
          ["CORE-CRED-07", "CORE-ERR-03", "CORE-ERR-10"])
async def strict_json(ctx: CheckContext) -> str:
    # A real echo and a probe payload: a lenient parser reads each of these as a credential and
    # refuses it later, for another reason (verification-failed, say), which this check tells apart.
    _, real = await first_challenge(ctx)
    head = '{"challenge":' + json.dumps(real.echo(), separators=(",", ":")) + ',"payload":{"type":"conformance-probe"'
    for label, raw in (("NaN", head + ',"n":NaN}}'), ("Infinity", head + ',"n":-Infinity}}'),
                       ("repeated member", head + '},"payload":{"type":"conformance-probe"}}'),
                       ("nesting 40 deep", head + ',"deep":' + "[" * 40 + "]" * 40 + "}}")):
        resp = await send(ctx, "Payment " + b64url_encode(raw.encode()))
        if refused(resp, f"{label} credential", ("malformed-credential",)) is None:
            fail(f"{label} credential: refused without a problem document, so not shown to be judged malformed "
                 "rather than refused later for another reason (CORE-CRED-07)")
    return "NaN, -Infinity, a repeated member and 40-deep nesting refused as malformed"


# -- refusals ---------------------------------------------------------------
#
# Every probe below echoes a *real* challenge of the target (so it works against any seller,
# whatever its payment method) and carries a payload no method accepts. Messages describe the
# probe by name, never by value: a credential must not reach a report (CORE-CRED-06).

PROBE_METHOD = "conformanceprobe"


def _refusal(resp: Response, what: str, slugs: tuple[str, ...], *, expected_status: int = 402,
             not_ids: set[str] = frozenset()) -> str | None:
    """A refusal as the draft shapes it (expect.refused): the status, fresh challenges (new ids)
    and a problem document, if any, of one of ``slugs``."""
    return refused(resp, what, slugs, expected_status=expected_status, not_ids=not_ids)


def _random_id() -> str:
    return b64url_encode(secrets.token_bytes(32))


def _other_request(challenge: Challenge) -> str:
    """The challenge's ``request`` re-encoded with a lower (or at least different) amount."""
    try:
        quote = json.loads(b64url_decode(challenge.request))
    except ValueError:
        fail(f"challenge {challenge.id[:12]}...: request is not base64url JSON")
    if not isinstance(quote, dict):
        fail(f"challenge {challenge.id[:12]}...: request is not a JSON object")
    quote["amount"] = "2" if quote.get("amount") in ("1", 1) else "1"  # pay less (or, if already 1, more)
    return b64url_encode(canonical_json(quote))


def _later(expires: str | None, seconds: int) -> str:
    try:
        base = parse_rfc3339(expires) if expires else datetime.now(timezone.utc)
    except ValueError:  # unreadable: core.challenge-well-formed reports it
        base = datetime.now(timezone.utc)
    return format_rfc3339(base + timedelta(seconds=seconds))


async def _challenges(ctx: CheckContext, n: int) -> list[Challenge]:
    """The first challenge of ``n`` separate unpaid requests (sent together)."""
    got = await asyncio.gather(*(first_challenge(ctx) for _ in range(n)))
    return [c for _, c in got]


@register("core.unknown-challenge-id", "a credential with an unknown challenge id gets 402 (invalid-challenge)", "core",
          ["CORE-ERR-04", "CORE-ERR-10"], draft="draft §4.2 MUST")
async def unknown_challenge_id(ctx: CheckContext) -> str:
    _, real = await first_challenge(ctx)
    forged = _random_id()
    resp = await send(ctx, credential_header(real, id=forged))
    _refusal(resp, "credential with a random challenge id", ("invalid-challenge",), not_ids={real.id, forged})
    return "random id refused as invalid-challenge with a fresh challenge"


_BROKEN_BINDING = ("invalid-challenge",)  # the id does not verify for what was echoed: an unknown id (§4.2)


@register("core.tampered-request", "a credential whose echoed request was altered gets 402 with a fresh challenge", "core",
          ["CORE-ID-01", "CORE-ERR-04", "CORE-ERR-10"], draft="draft §5.1.2.1 MUST; draft §4.2 MUST")
async def tampered_request(ctx: CheckContext) -> str:
    _, real = await first_challenge(ctx)
    resp = await send(ctx, credential_header(real, request=_other_request(real)))
    slug = _refusal(resp, "credential echoing the challenge with another amount", _BROKEN_BINDING, not_ids={real.id})
    return f"altered amount refused ({slug or 'no problem document'})"


@register("core.tampered-expires", "a credential whose echoed expires was pushed later gets 402 with a fresh challenge", "core",
          ["CORE-ID-01", "CORE-ERR-04", "CORE-ERR-10"], draft="draft §5.1.2.1 MUST; draft §4.2 MUST")
async def tampered_expires(ctx: CheckContext) -> str:
    _, real = await first_challenge(ctx)
    resp = await send(ctx, credential_header(real, expires=_later(real.expires, 3600)))
    slug = _refusal(resp, "credential echoing the challenge with expires one hour later", _BROKEN_BINDING + ("payment-expired",),
                    not_ids={real.id})
    return f"extended expires refused ({slug or 'no problem document'})"


@register("core.tampered-realm", "a credential whose echoed realm was altered gets 402 with a fresh challenge", "core",
          ["CORE-ID-01", "CORE-ERR-04", "CORE-ERR-10"], draft="draft §5.1.2.1 MUST; draft §4.2 MUST")
async def tampered_realm(ctx: CheckContext) -> str:
    _, real = await first_challenge(ctx)
    resp = await send(ctx, credential_header(real, realm="conformance-probe." + real.realm))
    slug = _refusal(resp, "credential echoing the challenge with another realm", _BROKEN_BINDING, not_ids={real.id})
    return f"altered realm refused ({slug or 'no problem document'})"


@register("core.expired-echo", "a credential echoing an expires in the past is refused", "core",
          ["CORE-ERR-04", "CORE-ERR-05", "CORE-ERR-10"], draft="draft §5.1.2.1 MUST; draft §4.2 MUST")
async def expired_echo(ctx: CheckContext) -> str:
    _, real = await first_challenge(ctx)
    past = format_rfc3339(datetime.now(timezone.utc) - timedelta(hours=1))
    resp = await send(ctx, credential_header(real, expires=past))
    slug = _refusal(resp, "credential echoing the challenge with expires one hour ago", _BROKEN_BINDING + ("payment-expired",),
                    not_ids={real.id})
    if slug != "payment-expired":
        return "refused as invalid-challenge (the id binding was checked before the expiry)"
    return ("refused as payment-expired: the seller judged the altered expiry before the id binding "
            "(CORE-BIND-07 wants invalid-challenge; see core.tampered-expires)")


DEFAULT_EXPIRY_WAIT = 15.0  # seconds core.expired-challenge waits at most (--expiry-wait)
_EXPIRY_MARGIN = 0.5  # seconds past expires before sending: room for the target's clock lagging ours


@register("core.expired-challenge", "a genuine credential sent after its challenge expired gets 402 (payment-expired)", "core",
          ["CORE-BIND-06", "CORE-ERR-05", "CORE-ERR-10"], draft="draft §4.2 MUST; charge §7.1 MUST")
async def expired_challenge(ctx: CheckContext) -> str:
    """Unlike core.expired-echo, nothing echoed is altered (an altered ``expires`` breaks the id
    binding, so that only re-tests tampering): the id binding holds and time alone has passed.
    With --pay-with the credential is the payer's real payment, which a seller ignoring expiry
    settles; without it, a probe payload, which a seller judging in CORE-ERR-13's order refuses as
    payment-expired before it looks at the payload. The target's TTL is read from its challenge."""
    wait = ctx.options.get("expiry_wait")
    limit = DEFAULT_EXPIRY_WAIT if wait is None else float(wait)  # 0 is a choice: check only expired-on-arrival targets
    if ctx.options.get("pay_with"):
        from .checks_full import fresh_credential

        paid = await fresh_credential(ctx)
        challenge, value, kind = paid.challenge, paid.authorization, "the payer's credential"
    else:
        _, challenge = await first_challenge(ctx)
        value, kind = credential_header(challenge), "a probe credential"
    balance = None
    try:
        ttl = (parse_rfc3339(challenge.expires or "") - datetime.now(timezone.utc)).total_seconds()
    except ValueError:
        raise Skip("the challenge has no readable expires to wait for (core.challenge-well-formed reports it)") from None
    if ttl > limit:
        raise Skip(f"the target's challenges live {ttl:.0f} s (expires minus now), longer than --expiry-wait {limit:g} s: "
                   f"give --expiry-wait {int(ttl) + 1} or shorten the target's challenge lifetime to check expiry")
    if ctx.options.get("pay_with"):
        from .balance import watch_balance
        from .checks_full import payer_for

        balance = await watch_balance(ctx, payer_for(ctx), challenge)
    await asyncio.sleep(max(ttl, 0.0) + _EXPIRY_MARGIN)
    resp = await send(ctx, value)
    # payment-expired is -02's type; -00 (and our older peers) said invalid-challenge for an expired id.
    refused(resp, f"{kind}, sent {_EXPIRY_MARGIN:g} s after its challenge expired", ("payment-expired", "invalid-challenge"),
            not_ids={challenge.id}, accepted="a credential for an expired challenge was taken (CORE-BIND-06)")
    if balance is not None:
        await balance.unmoved(f"{kind}, refused after its challenge expired")
    return (f"waited {max(ttl, 0.0) + _EXPIRY_MARGIN:.1f} s (challenge TTL {ttl:.1f} s); {kind} refused as payment-expired"
            + (balance.note if balance is not None else ""))


@register("draft.two-credentials", "two Authorization: Payment fields get 400 (Bad Request)", "draft",
          ["CORE-CRED-04"], draft="draft §B.4 SHOULD")
async def two_credentials_draft(ctx: CheckContext) -> str:
    first, second = await _challenges(ctx, 2)
    resp = await send(ctx, [credential_header(first), credential_header(second)])
    no_5xx(resp, "request with two Authorization: Payment fields")
    if 200 <= resp.status < 300:
        fail(f"request with two Authorization: Payment fields: accepted ({describe(resp)})")
    if resp.status != 400:
        fail(f"request with two Authorization: Payment fields: {describe(resp)}; the draft says servers SHOULD reject "
             "multiple credentials with 400")
    return "two credentials refused with 400"


@register("core.two-credentials", "two Authorization: Payment fields get 402 malformed-credential", "core",
          ["CORE-CRED-04", "CORE-ERR-03", "CORE-ERR-10"])
async def two_credentials(ctx: CheckContext) -> str:
    # MPP's choice (the draft's SHOULD is 400, draft.two-credentials): a 402 lets the buyer retry.
    first, second = await _challenges(ctx, 2)
    resp = await send(ctx, [credential_header(first), credential_header(second)])
    slug = _problem_slug(resp)
    if resp.status == 402 and slug not in (None, "malformed-credential"):
        fail(f"request with two Authorization: Payment fields: answered 402 {slug}, so one of the credentials was "
             "judged on its own (the seller or its HTTP stack may keep only one Authorization field); the request "
             "must be refused as malformed-credential (CORE-CRED-04, CORE-ERR-03)")
    _refusal(resp, "request with two Authorization: Payment fields", ("malformed-credential",),
             not_ids={first.id, second.id})
    return "two credentials refused with 402" + (f" {slug}" if slug else "")


@register("core.unknown-method-refused", "a credential naming a method the seller does not take is refused", "core",
          ["CORE-ERR-10"], draft="draft §4.2 MUST; draft §8.2 prose")
async def unknown_method_refused(ctx: CheckContext) -> str:
    # The draft allows two answers: its error table gives method-unsupported 400, and its status
    # table a 402 with a fresh challenge for a credential that fails validation (the changed method
    # also breaks the id binding, so invalid-challenge fits). Which one is MPP's is core.unsupported-method.
    _, real = await first_challenge(ctx)
    resp = await send(ctx, credential_header(real, method=PROBE_METHOD))
    what = f"credential naming method {PROBE_METHOD!r}"
    if resp.status == 400:
        # No sentence of the draft asks a 400 for a challenge: judged without one (MPP's is core.unsupported-method).
        no_5xx(resp, what)
        slug = _problem_slug(resp) if "application/problem+json" in resp.headers.get("Content-Type", "") else None
        if slug not in (None, "method-unsupported", "bad-request"):
            fail(f"{what}: HTTP 400 with problem type {slug!r}, not method-unsupported")
    else:
        slug = refused(resp, what, ("invalid-challenge", "method-unsupported", "verification-failed"), not_ids={real.id})
    return f"refused: HTTP {resp.status}" + (f" {slug}" if slug else "")


@register("core.unsupported-method", "a credential naming an unknown method gets 400 method-unsupported", "core",
          ["CORE-ERR-01", "CORE-ERR-08", "CORE-ERR-10", "CORE-ERR-13"])
async def unsupported_method(ctx: CheckContext) -> str:
    # The echoed id no longer verifies once the method is changed: CORE-ERR-13 has the seller judge
    # the method before the id, so 400 is the answer, and invalid-challenge means the id came first.
    _, real = await first_challenge(ctx)
    resp = await send(ctx, credential_header(real, method=PROBE_METHOD))
    what = f"credential naming method {PROBE_METHOD!r}"
    if resp.status == 402:
        slug = _problem_slug(resp)
        fail(f"{what}: answered 402 ({slug or 'no problem document'}); MPP's profile requires 400 method-unsupported "
             "(the draft's error table, §8.2) with fresh challenges for the accepted methods (CORE-ERR-08), judged "
             "before the challenge id (CORE-ERR-13); the draft itself also allows a 402 (core.unknown-method-refused)")
    _refusal(resp, what, ("method-unsupported",), expected_status=400, not_ids={real.id})
    fresh = fresh_challenges(resp, what, not_ids={real.id})
    if any(c.method == PROBE_METHOD for c in fresh):
        fail(f"{what}: the fresh challenges offer the unsupported method itself")
    return f"400 method-unsupported, offering {', '.join(sorted({c.method for c in fresh}))}"


def _problem_slug(resp: Response) -> str | None:
    try:
        kind = resp.json().get("type")
    except (ValueError, AttributeError):
        return None
    return kind[len(PROBLEM_BASE):] if isinstance(kind, str) and kind.startswith(PROBLEM_BASE) else kind


@register("draft.accept-payment", "Accept-Payment is considered: a q=0 range is left out and the preferred one comes first",
          "draft", ["CORE-NEG-02"], draft="draft §7.4 SHOULD")
async def accept_payment_draft(ctx: CheckContext) -> str:
    m, i = (await _preferred_first(ctx))[0]
    return f"{m}/{i} first when preferred, the q=0 range left out"


async def _preferred_first(ctx: CheckContext) -> list[tuple[str, str]]:
    """The target's normal offers; fails unless preferring the first (and a q=0 probe range) puts
    it first and leaves the probe out. Shared by the draft's SHOULD and MPP's stricter check."""
    baseline_resp = await unpaid(ctx)
    status(baseline_resp, 402, "unpaid request")
    baseline = [(c.method, c.intent) for c in fresh_challenges(baseline_resp, "unpaid request")]
    m, i = baseline[0]
    header = f"{m}/{i}, {PROBE_METHOD}/{i};q=0"
    resp = await unpaid(ctx, {"Accept-Payment": header})
    status(resp, 402, f"unpaid request with Accept-Payment preferring {m}/{i}")
    offered = fresh_challenges(resp, f"unpaid request with Accept-Payment preferring {m}/{i}")
    if (offered[0].method, offered[0].intent) != (m, i):
        fail(f"Accept-Payment {header!r}: the first challenge is {offered[0].method}/{offered[0].intent}, not {m}/{i}")
    if any(c.method == PROBE_METHOD for c in offered):
        fail(f"Accept-Payment {header!r}: a challenge for the q=0 method {PROBE_METHOD!r}")
    return baseline


@register("core.accept-payment", "Accept-Payment is honoured, and an unmatched or malformed one still gets challenges", "core",
          ["CORE-NEG-01", "CORE-NEG-02", "CORE-CHAL-01"])
async def accept_payment(ctx: CheckContext) -> str:
    baseline = await _preferred_first(ctx)
    notes = []
    m, i = baseline[0]

    distinct = list(dict.fromkeys(baseline))
    if len(distinct) > 1:  # reordering is a SHOULD (CORE-NEG-02): reported, never failed
        lm, li = distinct[-1]
        resp = await unpaid(ctx, {"Accept-Payment": f"{lm}/{li}, {m}/{i};q=0.5"})
        status(resp, 402, f"unpaid request with Accept-Payment preferring {lm}/{li}")
        got = fresh_challenges(resp, f"unpaid request with Accept-Payment preferring {lm}/{li}")[0]
        notes.append(f"preferring {lm}/{li} put it first" if (got.method, got.intent) == (lm, li)
                     else f"preferring {lm}/{li} did not reorder (SHOULD, CORE-NEG-02)")

    resp = await unpaid(ctx, {"Accept-Payment": "nosuch/charge"})
    status(resp, 402, "unpaid request with Accept-Payment: nosuch/charge")
    unmatched = [(c.method, c.intent) for c in fresh_challenges(resp, "unpaid request with Accept-Payment: nosuch/charge")]
    notes.append("unmatched range: normal set" if unmatched == baseline else
                 "unmatched range: still a challenge, not the normal set (SHOULD, CORE-NEG-02)")

    resp = await unpaid(ctx, {"Accept-Payment": ";q=zz, ///"})
    status(resp, 402, "unpaid request with a malformed Accept-Payment")
    malformed = [(c.method, c.intent) for c in fresh_challenges(resp, "unpaid request with a malformed Accept-Payment")]
    if malformed != baseline:
        fail(f"with a malformed Accept-Payment the seller offered {malformed}, not its normal set {baseline} (CORE-NEG-01)")
    return f"{m}/{i} first when preferred; " + "; ".join(notes) + "; malformed header: normal set"


def _sized_credential(challenge: Challenge, size: int) -> str:
    """A well-formed credential of at least ``size`` characters, padded by an unknown payload member."""
    pad = 0
    while True:
        value = credential_header(challenge, {"type": "conformance-probe", "conformancePadding": "x" * pad})
        if len(value) >= size:
            return value
        pad += (size - len(value)) * 3 // 4 + 1


@register("core.large-credential", "a well-formed 4 KB credential is parsed and answered as its short twin is", "core",
          ["CORE-CRED-05", "CORE-ERR-10"], draft="draft §9.4 MUST")
async def large_credential(ctx: CheckContext) -> str:
    a, b = await _challenges(ctx, 2)
    small = await send(ctx, _sized_credential(a, 0))
    large_value = _sized_credential(b, 4200)
    try:
        large = await send(ctx, large_value)
    except aiohttp.ClientError as exc:
        fail(f"a well-formed credential of {len(large_value)} bytes got no HTTP answer ({type(exc).__name__}); "
             "sellers must accept credentials of at least 4 KB")
    if large.status in (413, 431) or (large.status == 400 and "application/problem+json" not in large.headers.get("Content-Type", "")):
        fail(f"a well-formed credential of {len(large_value)} bytes was refused with HTTP {large.status} before the payment "
             "layer read it; sellers must accept credentials of at least 4 KB")
    # Which payment problem the probe payload earns is the method's business (CORE-ERR-06, not cited
    # here); what this check asks is that size changes nothing: the short twin decides.
    what = f"well-formed credential of {len(large_value)} bytes"
    no_5xx(large, what)
    if 200 <= large.status < 300:
        fail(f"{what}: a probe credential was accepted ({describe(large)})")
    if large.status != small.status:
        fail(f"{what}: HTTP {large.status}, but its short twin got HTTP {small.status}: its size changed how it was read")
    if large.status == 402:
        fresh_challenges(large, what, not_ids={b.id})
    slug, small_slug = _problem_slug(large), _problem_slug(small)
    if small_slug != slug:
        fail(f"the same credential answered {small_slug} when short but {slug} at {len(large_value)} bytes: "
             "its size changed how it was parsed")
    return f"{len(large_value)}-byte credential refused as its short twin was (HTTP {large.status}{' ' + slug if slug else ''})"


# core.oversized-credential's sizes (characters of the Authorization value): past the 4 KB every
# seller must read (CORE-CRED-05), up to just under 32 KB, the field limit a seller configured for
# large credentials (mandate chains) typically has (`mpp seller serve`: 32 KiB), so that such a
# seller reads each one through and any 5xx is its payment layer's, not a header-limit refusal.
OVERSIZED = (8 * 1024, 16 * 1024, 24 * 1024, 32 * 1024 - 256)


@register("core.oversized-credential", "well-formed credentials of 8 to 32 KB get a 4xx (431 is fine), never a 5xx", "core",
          ["CORE-ERR-11"], draft="draft §4.2 MUST")
async def oversized_credential(ctx: CheckContext) -> str:
    # One challenge serves every size: the probe payload is refused, so the challenge is never used up.
    _, real = await first_challenge(ctx)
    answers = []
    for size in OVERSIZED:
        value = _sized_credential(real, size)
        what = f"well-formed credential of {len(value)} bytes"
        try:
            resp = await send(ctx, value)
        except aiohttp.ClientError as exc:
            fail(f"{what}: no HTTP answer ({type(exc).__name__}); a credential too large to read must be "
                 "refused with a 4xx such as 431, not a dropped connection (CORE-ERR-11)")
        no_5xx(resp, what)
        if not 400 <= resp.status < 500:
            fail(f"{what}: answered {describe(resp)}; a probe credential must be refused with a 4xx")
        answers.append(f"{len(value)} bytes: {resp.status}")
    return "; ".join(answers)


# A long echoed value strewn with control and format characters (C0 and C1 controls, DEL, a bidi
# override, line and paragraph separators, a BOM); the credential stays below 4 KB (CORE-CRED-05).
_ECHO_PROBE = ("probe\x00\x07\x1b[2J\n\r\x7f\x85\u202e\u2028\u2029\ufeff" + "x" * 40) * 15
_DETAIL_MAX = 512
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _unprintable(value: Any) -> set[str]:
    """The code points of CORE-ERR-12's removed categories in every string of a JSON value."""
    import unicodedata

    if isinstance(value, str):
        return {f"U+{ord(ch):04X}" for ch in value if unicodedata.category(ch) in _UNPRINTABLE}
    if isinstance(value, dict):
        value = list(value.values())
    return set().union(*map(_unprintable, value)) if isinstance(value, list) else set()


@register("core.bounded-echo", "a long intent or method full of control characters is not copied whole into the problem",
          "core", ["CORE-ERR-12"])
async def bounded_echo(ctx: CheckContext) -> str:
    _, real = await first_challenge(ctx)
    sizes = []
    for member in ("intent", "method"):
        what = f"credential echoing a {len(_ECHO_PROBE)}-character {member} with control characters"
        resp = await send(ctx, credential_header(real, **{member: _ECHO_PROBE}))
        no_5xx(resp, what)
        if not 400 <= resp.status < 500:
            fail(f"{what}: answered HTTP {resp.status}; it must be refused with a 4xx")
        if "application/problem+json" not in resp.headers.get("Content-Type", ""):
            sizes.append(f"{member}: no problem document (core.problem-documents judges that)")
            if "x" * 40 in resp.text:
                fail(f"{what}: the {len(resp.body)}-byte answer copies the echoed value (CORE-ERR-12)")
            continue
        doc = problem(resp, None, what)
        detail = doc.get("detail", "")
        if not isinstance(detail, str):
            fail(f"{what}: the problem document's detail is not a string (CORE-ERR-01)")
        if len(detail) > _DETAIL_MAX:
            fail(f"{what}: the problem detail has {len(detail)} characters; at most {_DETAIL_MAX} (CORE-ERR-12)")
        found = _unprintable(doc)
        if found:
            fail(f"{what}: the problem document contains control character(s) {', '.join(sorted(found))} (CORE-ERR-12)")
        sizes.append(f"{member}: {len(detail)}-character detail")
    return "; ".join(sizes) + ", no control characters"


_BAD_CREDENTIALS = ("garbage", "random id", "altered amount", "unsupported method", "probe payload on an intact challenge")


@register("core.no-receipt-on-errors", "no error response carries Payment-Receipt", "core", ["CORE-RCPT-02", "CORE-ERR-11"],
          draft="draft §5.3.1 MUST NOT")
async def no_receipt_on_errors(ctx: CheckContext) -> str:
    cs = await _challenges(ctx, 4)
    values = ["Payment !!!not-a-credential!!!", credential_header(cs[0], id=_random_id()),
              credential_header(cs[1], request=_other_request(cs[1])), credential_header(cs[2], method=PROBE_METHOD),
              credential_header(cs[3])]
    statuses = []
    unpaid_resp = await unpaid(ctx)
    no_receipt(unpaid_resp, "unpaid request")
    for label, value in zip(_BAD_CREDENTIALS, values):
        resp = await send(ctx, value)
        no_5xx(resp, f"credential ({label})")
        if resp.status < 400:
            fail(f"credential ({label}): answered HTTP {resp.status}; a probe credential must be refused")
        no_receipt(resp, f"credential ({label})")
        statuses.append(str(resp.status))
    return f"the unpaid 402 and {len(values)} refusals ({', '.join(statuses)}), none with Payment-Receipt"


# -- fuzzing ----------------------------------------------------------------

FUZZ_SEED = 20250402
FUZZ_COUNT = 200
FUZZ_CONCURRENCY = 10
FUZZ_MAX = 7000  # characters of Authorization value; below every common header limit
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))


def _fuzz_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 2**63, 2**64 + 1, 1e308, -0.0, 123456789012345678901234567890])
    if kind == 2:
        return "".join(rng.choice(_PRINTABLE) for _ in range(rng.randrange(0, 40)))
    if kind == 3:
        return rng.choice(["", "\u0000", "\u202e", "\U0001F4B8", "Payment", "null", "\\u0000"])
    if kind == 4:
        return rng.randrange(-1000, 1000)
    if kind in (5, 6):
        return [_fuzz_json(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {rng.choice(["challenge", "payload", "source", "id", "x", ""]): _fuzz_json(rng, depth + 1)
            for _ in range(rng.randrange(0, 4))}


def _token(doc: Any) -> str:
    return b64url_encode(json.dumps(doc, separators=(",", ":")).encode())


def _fuzz_value(rng: random.Random, n: int, echo: dict[str, str]) -> tuple[str, str]:
    """One malformed Authorization value and the name of its family."""
    family = n % 10
    if family == 0:
        return "garbage", "Payment " + "".join(rng.choice(_PRINTABLE + " \t") for _ in range(rng.randrange(1, 300)))
    if family == 1:
        alphabet = _B64 + rng.choice(["", "=", "+/", "=="])
        return "random base64url", "Payment " + "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 600)))
    if family == 2:
        return "random bytes", "Payment " + b64url_encode(rng.randbytes(rng.randrange(1, 400)))
    if family == 3:
        return "random JSON", "Payment " + _token(_fuzz_json(rng))
    if family == 4:  # a real echo with one member of the wrong type, missing or empty
        challenge = dict(echo)
        name = rng.choice(list(challenge))
        bad = rng.choice([None, 0, 1.5, True, [], {}, "", [challenge[name]], {"v": challenge[name]}, "MISSING"])
        if bad == "MISSING":
            del challenge[name]
        else:
            challenge[name] = bad
        return "wrong types in challenge", "Payment " + _token({"challenge": challenge, "payload": {"type": "conformance-probe"}})
    if family == 5:  # the credential's own shape is wrong
        doc = rng.choice([
            {"challenge": echo}, {"payload": {}}, {"challenge": echo, "payload": rng.choice([None, [], "x", 1, True])},
            {"challenge": json.dumps(echo), "payload": {}}, {"challenge": [echo], "payload": {}},
            {"challenge": echo, "payload": {}, "source": rng.choice([1, [], {}, None, True])}, [echo, {}], "challenge",
        ])
        return "wrong credential shape", "Payment " + _token(doc)
    if family == 6:  # members that must decode but do not
        challenge = dict(echo)
        name = rng.choice(["request", "opaque", "expires", "digest", "method", "intent", "id"])
        challenge[name] = rng.choice([
            "!!!", "e30", "W10", "bnVsbA", "=" * 8, "A", b64url_encode(b"\xff\xfe\xfd"), "yesterday",
            "9999-99-99T99:99:99Z", "2000-01-01T00:00:00Z", "sha-256=:AAAA:", "UPPER", "has space", "a" * 2000,
            "\u0000", "\ud800", "x|y|z",
        ])
        return f"undecodable {name}", "Payment " + _token({"challenge": challenge, "payload": {"type": "conformance-probe"}})
    if family == 7:  # large, below FUZZ_MAX
        size = rng.randrange(2500, 4400)
        payload: Any = {"type": "conformance-probe", "pad": "".join(rng.choice(_B64) for _ in range(size))}
        if rng.random() < 0.5:
            payload = {"type": "conformance-probe", "deep": json.loads("[" * 400 + "]" * 400)}
        return "large", "Payment " + _token({"challenge": echo, "payload": payload})
    if family == 8:  # scheme, spacing and framing
        tok = _token({"challenge": echo, "payload": {"type": "conformance-probe"}})
        return "framing", rng.choice([
            "Payment", "Payment ", "payment " + tok, "PAYMENT  " + tok, "Payment\t" + tok, "Payment " + tok + "=",
            "Payment " + tok + " extra", "Payment " + tok + ", Payment " + tok, "Payment " + tok[:-1],
            "Payment " + tok[: len(tok) // 2] + " " + tok[len(tok) // 2:], "Bearer " + tok, "Basic Zm9vOmJhcg==",
            "Payment=" + tok, " Payment " + tok, "Payment " + tok.replace("-", "+").replace("_", "/"),
        ])
    # family 9: JSON edge cases, hand-written so they survive the encoder
    raw = rng.choice([
        '{"challenge":' + json.dumps(echo) + ',"payload":{},"payload":[]}',
        '{"challenge":' + json.dumps(echo) + ',"payload":{"n":1e99999}}',
        '{"challenge":' + json.dumps(echo) + ',"payload":{"s":"\\ud800"}}',
        '{"challenge":' + json.dumps(echo) + ',"payload":{"n":' + "9" * 4400 + "}}",
        '\ufeff{"challenge":' + json.dumps(echo) + ',"payload":{}}',
        '{"challenge":' + json.dumps(echo) + ',"payload":{}',
        '{"challenge":' + json.dumps(echo) + ',"payload":{}} trailing',
        '{"challenge":' + json.dumps(echo) + ",'payload':{}}",
        '{"challenge":' + json.dumps(echo) + ',"payload":' + "[" * 2000 + "]" * 2000 + "}",
        '{"challenge":' + json.dumps(echo) + ',"payload":NaN}',
    ])
    return "JSON edge case", "Payment " + b64url_encode(raw.encode("utf-8", errors="surrogatepass"))


@register("core.no-5xx", f"{FUZZ_COUNT} malformed credentials: always a 4xx, never a 5xx", "core",
          ["CORE-ERR-11"], draft="draft §4.2 MUST")
async def no_5xx_fuzz(ctx: CheckContext) -> str:
    _, real = await first_challenge(ctx)
    echo = real.echo()
    rng = random.Random(FUZZ_SEED)
    inputs = []
    for n in range(FUZZ_COUNT):
        family, value = _fuzz_value(rng, n, echo)
        if len(value) > FUZZ_MAX:  # a few decodable-but-huge cases are cut; they stay malformed
            value = value[:FUZZ_MAX]
        inputs.append((n, family, value))
    gate = asyncio.Semaphore(FUZZ_CONCURRENCY)
    problems: list[tuple[int, str, int | None, str]] = []
    positions: dict[int, int] = {}

    async def probe(n: int, family: str, value: str) -> None:
        async with gate:
            positions[n] = len(ctx.exchanges)  # ctx.request records before its first await
            try:
                resp = await send(ctx, value)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                problems.append((n, family, None, f"no response ({type(exc).__name__})"))
                return
        try:
            no_5xx(resp, "")
            if not 400 <= resp.status < 500:
                fail(f"HTTP {resp.status}; a malformed credential must be refused with a 4xx")
        except CheckFailed as exc:
            problems.append((n, family, resp.status, str(exc).lstrip(": ")))

    await asyncio.gather(*(probe(*item) for item in inputs))
    # Evidence: the unpaid request, every offending exchange, and the first ten others.
    bad = {positions[n] for n, *_ in problems if n in positions}
    keep = sorted({0} | bad | {positions[n] for n in range(min(10, FUZZ_COUNT)) if n in positions})
    ctx.exchanges[:] = [ctx.exchanges[k] for k in keep]
    if problems:
        problems.sort()
        shown = "; ".join(f"#{n} ({family}): {why}" for n, family, _, why in problems[:5])
        fail(f"{len(problems)} of {FUZZ_COUNT} malformed credentials (seed {FUZZ_SEED}) were mishandled: {shown}"
             + (" ..." if len(problems) > 5 else ""))
    return f"{FUZZ_COUNT} malformed credentials (seed {FUZZ_SEED}, {FUZZ_CONCURRENCY} at a time): all 4xx"


def _origin(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@register("core.challenge-parameters", "challenges carry expires in whole UTC seconds and no credential-field switch", "core",
          ["CORE-BIND-05", "CORE-CHAL-11"])
async def challenge_parameters(ctx: CheckContext) -> str:
    import re

    _, challenge = await first_challenge(ctx)
    if challenge.header is not None:
        fail(f"the challenge selects the credential field {challenge.header!r}; this profile sends credentials in Authorization only")
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", challenge.expires or "") is None:
        fail(f"expires {challenge.expires!r} is not RFC 3339 UTC with Z and whole seconds (MPP's profile; the draft "
             "allows any RFC 3339 date-time)")
    return f"expires {challenge.expires}"


def _charge_requests(challenges: list[Challenge]) -> list[tuple[Challenge, dict]]:
    return [(c, c.request_json) for c in challenges if c.intent == "charge"]


@register("core.charge-request", "a charge challenge's request has amount (base units, digits) and currency", "core",
          ["CHARGE-02"], draft="charge §5 MUST; charge §5.1.1 MUST; charge §5.1.2 MUST NOT")
async def charge_request(ctx: CheckContext) -> str:
    import re

    resp = await unpaid(ctx)
    status(resp, 402, "unpaid request")
    charges = _charge_requests(fresh_challenges(resp, "unpaid request"))
    if not charges:
        raise Skip("the target offers no charge challenge")
    for challenge, request in charges:
        amount, currency = request.get("amount"), request.get("currency")
        if not isinstance(amount, str) or re.fullmatch(r"0|[1-9][0-9]*", amount) is None:
            fail(f"charge request amount {amount!r} is not a string of base units (digits)")
        if not isinstance(currency, str) or not currency:
            fail(f"charge request currency {currency!r} is not a non-empty string")
        if "expires" in request:
            fail("the charge request carries its own expires; the expiry belongs in the challenge's expires parameter")
    return f"{len(charges)} charge request(s): " + ", ".join(f"{r['amount']} {r['currency']}" for _, r in charges)


_CURRENCY = re.compile(r"[a-z][a-z0-9]{0,31}|0x[0-9a-fA-F]{40}")  # CHARGE-02: a code, or a token's address


@register("core.charge-terms", "a charge request names its recipient and a lowercase currency or a token address; ledger amounts fit", "core",
          ["CHARGE-02", "LEDGER-04"])
async def charge_terms(ctx: CheckContext) -> str:
    # MPP's profile: the draft makes recipient OPTIONAL (charge §5.1.2) and allows other currency formats.
    _, challenge = await first_challenge(ctx)
    if challenge.intent != "charge":
        raise Skip(f"the target's first challenge is {challenge.method}/{challenge.intent}, not a charge")
    request = challenge.request_json
    currency = request.get("currency")
    if not isinstance(currency, str) or _CURRENCY.fullmatch(currency) is None:
        fail(f"charge request currency {currency!r} is neither a lowercase code nor a token's 0x address (CHARGE-02)")
    if not isinstance(request.get("recipient"), str):
        fail("charge request has no recipient (CHARGE-02; OPTIONAL in the charge draft)")
    if challenge.method == "ledger":
        amount, details = request.get("amount"), request.get("methodDetails")
        if not isinstance(amount, str) or not amount.isdigit() or amount == "0" or int(amount) > 2**63 - 1:
            fail(f"ledger charge amount {amount} is not between 1 and 2^63-1 (LEDGER-04)")
        if not isinstance(details, dict) or not isinstance(details.get("ledger"), str) or not details["ledger"]:
            fail("ledger charge request names no ledger in methodDetails.ledger (LEDGER-04)")
    return f"{challenge.method}/{challenge.intent} to {request.get('recipient')!r} in {currency}"


@register("core.discovery-jwks", "the seller publishes its receipt keys as a JWKS", "core", ["CORE-DISC-01", "CHARGE-06"])
async def discovery_jwks(ctx: CheckContext) -> str:
    resp = await ctx.request("GET", _origin(ctx.target) + "/.well-known/jwks.json")
    status(resp, 200, "GET /.well-known/jwks.json")
    try:
        keys = resp.json().get("keys")
    except (ValueError, AttributeError):
        fail("the JWKS is not a JSON object")
    usable = [k for k in keys or [] if isinstance(k, dict) and k.get("kty") == "OKP" and k.get("crv") == "Ed25519" and k.get("kid")]
    if not usable:
        fail("the JWKS holds no Ed25519 key with a kid")
    if any("d" in k for k in keys):
        fail("the JWKS publishes a private key member 'd'")
    return f"{len(usable)} Ed25519 key(s)"


@register("core.discovery-openapi", "openapi.json lists the priced operation with x-payment-info agreeing with the 402", "core",
          ["CORE-DISC-02", "CORE-DISC-03"])
async def discovery_openapi(ctx: CheckContext) -> str:
    from urllib.parse import urlsplit

    resp = await ctx.request("GET", _origin(ctx.target) + "/openapi.json")
    status(resp, 200, "GET /openapi.json")
    try:
        doc = resp.json()
    except ValueError:
        fail("openapi.json is not JSON")
    path = urlsplit(ctx.target).path or "/"
    method = ctx.options.get("method", "GET").lower()
    op = ((doc.get("paths") or {}).get(path) or {}).get(method)
    if not isinstance(op, dict):
        fail(f"openapi.json has no operation {method.upper()} {path}")
    info = op.get("x-payment-info")
    offers = info.get("offers") if isinstance(info, dict) and "offers" in info else [info] if isinstance(info, dict) else None
    if not offers:
        elsewhere = " (it sits on the Path Item; it belongs on the Operation Object)" if "x-payment-info" in (
            (doc.get("paths") or {}).get(path) or {}) else ""
        fail(f"{method.upper()} {path} has no x-payment-info on its operation object "
             f"(paths.{path}.{method}; CORE-DISC-02){elsewhere}")
    if "402" not in (op.get("responses") or {}):
        fail(f"{method.upper()} {path} declares no 402 response")
    _, challenge = await first_challenge(ctx)
    request = challenge.request_json
    matching = [o for o in offers if isinstance(o, dict) and o.get("method") == challenge.method and o.get("intent") == challenge.intent
                and (o.get("amount") is None or o.get("amount") == request.get("amount")) and o.get("currency") in (None, request.get("currency"))]
    if not matching:
        fail(f"no x-payment-info offer agrees with the 402 ({challenge.method}/{challenge.intent}, {request.get('amount')} {request.get('currency')})")
    return f"{len(offers)} offer(s), one matching the 402"


# -- credentials sent back ------------------------------------------------------

@register("core.no-credential-leak", "no response carries back a credential the suite sent", "core", ["CORE-CRED-06"],
          draft="draft §11.2.1 MUST NOT", last=True)
async def no_credential_leak(ctx: CheckContext) -> str:
    # Runs after every other check of the run (full ones included, so paid credentials count too):
    # ctx.request has compared each of their responses with every credential sent before it. Its own
    # probes (one refusal of each kind, the payload with a signature) make it meaningful alone too.
    values = ["Payment " + "conformance-probe-not-base64!" * 2]
    try:
        _, real = await first_challenge(ctx)
    except CheckFailed:  # a malformed 402 is other checks' finding; the run's responses still count
        real = None
    if real is not None:
        signed = {"type": "conformance-probe", "signature": _random_id()}
        values += [credential_header(real, id=_random_id()), credential_header(real, method=PROBE_METHOD),
                   credential_header(real, payload=signed)]
    for value in values:
        await send(ctx, value)
    if ctx.sent.leaks:
        shown = "; ".join(ctx.sent.leaks[:5])
        fail(f"{len(ctx.sent.leaks)} response(s) carry back a credential the suite sent, which a seller must never "
             f"copy into a problem document or any answer (CORE-CRED-06): {shown}" + (" ..." if len(ctx.sent.leaks) > 5 else ""))
    return "no response of the run carried back any credential the suite sent"
