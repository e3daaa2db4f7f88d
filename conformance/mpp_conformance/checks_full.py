"""Profile `full`: the checks that pay. Each one asks the target for a fresh challenge (an unpaid
request), has the payer of ``--pay-with`` (see ``paying``) answer it, and sends the credential
the way the check needs: once, twice, many times at once, to another route, query or HTTP
method, with another body, or with an ``Idempotency-Key``.

Options read: ``pay_with`` (the payer spec), ``max_amount`` (ledger payer cap, default 10 000),
``concurrency`` (parallel submissions in full.concurrent-replay, default 20), ``other_url``
(a second priced URL of the target, ``URL`` or ``METHOD URL``; without it full.other-route
skips), plus the target's ``method`` and ``data`` as in every profile.

Cost: every check pays once when the target behaves (the binding checks, full.other-route,
full.other-query, full.other-method and full.changed-body, pay with the genuine credential after
its refusal, to show the refusal had no side effect), full.ledger-payload twice at most.
Messages name credentials by what they are for, never by value (CORE-CRED-06).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlsplit

from mpp import Challenge, ParseError, PaymentReceipt, parse_credential, parse_receipt
from mpp.protocol.errors import EXTENSION_PROBLEM_BASE

from .balance import watch_balance
from .base import CheckContext, Response, Skip, register
from .expect import describe, fail, fresh_challenges, no_5xx, problem_slug, refused, status
from .paying import DEFAULT_MAX_AMOUNT, DEFAULT_PAY_TIMEOUT, CannotPay, Payer, payer_from_spec

__all__ = ["payer_for", "Paid", "OTHER_QUERY", "skip_if_payer_limited"]

BODY_METHODS = ("POST", "PUT", "PATCH")
OTHER_QUERY = "mpp_conformance"
NOT_THERE = (404, 405, 501)  # "no such route or method" answers: nothing to pay for there


def payer_for(ctx: CheckContext) -> Payer:
    """The payer ``--pay-with`` names; without one the check does not apply (skip)."""
    spec = ctx.options.get("pay_with")
    if not spec:
        raise Skip("no --pay-with: this check pays the target (ledger:WALLET_DIR, static:JSON or cmd:PROGRAM)")
    max_amount, timeout = ctx.options.get("max_amount"), ctx.options.get("pay_timeout")
    return payer_from_spec(spec, max_amount=DEFAULT_MAX_AMOUNT if max_amount is None else int(max_amount),
                           timeout=DEFAULT_PAY_TIMEOUT if timeout is None else float(timeout))


def _method(ctx: CheckContext) -> str:
    return (ctx.options.get("method") or "GET").upper()


def _data(ctx: CheckContext) -> bytes | None:
    return ctx.options.get("data")


@dataclass
class Paid:
    """A fresh challenge of the target and the credential answering it."""

    challenge: Challenge
    authorization: str

    @property
    def label(self) -> str:
        return f"{self.challenge.method}/{self.challenge.intent} challenge {self.challenge.id[:12]}..."


async def fresh_credential(ctx: CheckContext, payer: Payer | None = None) -> Paid:
    """An unpaid request to the target, and the payer's credential for the challenge it chose."""
    payer = payer or payer_for(ctx)
    resp = await ctx.request(_method(ctx), ctx.target, data=_data(ctx))
    status(resp, 402, "unpaid request")
    challenges = fresh_challenges(resp, "unpaid request")
    request = {"url": ctx.target, "http_method": _method(ctx)}
    try:
        challenge = payer.choose(challenges, **request)
        return Paid(challenge, payer.authorize(challenge, **request))
    except CannotPay as exc:
        raise Skip(f"not paid: {exc}") from None


async def send(ctx: CheckContext, paid: Paid, *, method: str | None = None, url: str | None = None,
               data: bytes | None | object = ..., headers: list[tuple[str, str]] = ()) -> Response:
    """The request carrying ``paid``'s credential (by default to the target, as the target expects)."""
    body = _data(ctx) if data is ... else data
    return await ctx.request(method or _method(ctx), url or ctx.target,
                             headers=[("Authorization", paid.authorization), *headers], data=body)


def _detail(resp: Response, paid: Paid) -> str:
    """The problem's ``detail``, short, for a message; a copy of the credential is cut out."""
    try:
        doc = resp.json()
    except ValueError:
        return ""
    detail = doc.get("detail") if isinstance(doc, dict) else None
    if not isinstance(detail, str) or not detail:
        return ""
    token = paid.authorization.partition(" ")[2]
    if token and token[:16] in detail:  # the target copied the credential (CORE-CRED-06): never repeat it
        return " (its detail quotes the credential)"
    return f" ({detail[:160]})"


# Refusals of a genuine credential that are the payer's limitation, not the target's fault: the
# suite pays bare (no identity extension), so a route or a ledger that asks for a mandate chain
# cannot be paid by it. Such a check is skipped with the way out, never failed.
_PAYER_LIMITS = {
    "identity-required": "the route requires the identity extension (a mandate chain and a proof), which the "
                         "suite's payer does not send; the identity profile checks such routes (--profile identity)",
    "mandate-required": "the target's ledger lets the payer's key spend only under a mandate chain, which the "
                        "suite's payer does not send; make the key an owner of its account at the target "
                        "(mpp ledger allow {account} {signer} --as owner --ledger ...) to run this check",
}


def skip_if_payer_limited(resp: Response, paid: Paid, what: str) -> None:
    """Skip (never fail) when ``resp`` refuses ``paid`` for what the payer cannot give."""
    slug = problem_slug(resp) if resp.status >= 400 else None
    if not slug or not slug.startswith(EXTENSION_PROBLEM_BASE):
        return
    why = _PAYER_LIMITS.get(slug[len(EXTENSION_PROBLEM_BASE):])
    if why is None:
        return
    try:
        payload = parse_credential(paid.authorization).payload
    except (ParseError, ValueError):  # the pricing checks pass no authorization
        payload = {}
    names = {"account": payload.get("account") or "ACCOUNT", "signer": payload.get("signer") or "DID"}
    raise Skip(f"not paid ({what}: {describe(resp)}): the payer's limitation, not the target's fault: "
               + why.format(**{k: str(v) for k, v in names.items()}))


def accepted(resp: Response, paid: Paid, what: str) -> PaymentReceipt | None:
    """``resp`` is the success of a payment as the draft has it: a 2xx; its receipt, when it has one
    (a SHOULD, §5.3), one base64url JSON object with status "success" (§5.3.1) on a response
    cacheable only privately (§11.10). MPP's own receipt members are paid_ok's."""
    no_5xx(resp, what)
    skip_if_payer_limited(resp, paid, what)
    if not 200 <= resp.status < 300:
        fail(f"{what}: the target refused a fresh credential for its own {paid.label}: {describe(resp)}{_detail(resp, paid)}")
    values = resp.headers.getall("Payment-Receipt", [])
    if not values:
        return None
    if len(values) > 1:
        fail(f"{what}: HTTP {resp.status} with {len(values)} Payment-Receipt fields")
    try:
        receipt = parse_receipt(values[0])
    except ParseError as exc:
        fail(f"{what}: the Payment-Receipt does not parse as the draft's receipt: {exc}")
    if receipt.status != "success":
        fail(f"{what}: the receipt's status is {receipt.status!r}, not \"success\" (draft §5.3.1)")
    directives = {d.strip().split("=")[0].lower() for d in ",".join(resp.headers.getall("Cache-Control", [])).split(",") if d.strip()}
    if "public" in directives:
        fail(f"{what}: a response with a receipt is marked Cache-Control public (draft §11.10)")
    if not directives & {"private", "no-store"}:
        fail(f"{what}: a response with a receipt lacks Cache-Control private "
             f"(got {resp.headers.get('Cache-Control')!r}; draft §11.10 MUST)")
    return receipt


def paid_ok(resp: Response, paid: Paid, what: str) -> PaymentReceipt:
    """``resp`` is the success of a payment as MPP's profile has it: a 2xx with one Payment-Receipt
    for this challenge (``challengeId``, a signed JWS; CORE-RCPT-01)."""
    no_5xx(resp, what)
    skip_if_payer_limited(resp, paid, what)
    if not 200 <= resp.status < 300:
        fail(f"{what}: the target refused a fresh credential for its own {paid.label}: {describe(resp)}{_detail(resp, paid)}")
    values = resp.headers.getall("Payment-Receipt", [])
    if len(values) != 1:
        fail(f"{what}: HTTP {resp.status} with {len(values)} Payment-Receipt fields; a paid 2xx carries exactly one (CORE-RCPT-01)")
    try:
        receipt = parse_receipt(values[0])
    except ParseError as exc:
        fail(f"{what}: the Payment-Receipt does not parse: {exc} (CORE-RCPT-01)")
    if receipt.challengeId != paid.challenge.id:
        fail(f"{what}: the receipt's challengeId is {str(receipt.challengeId)[:16]!r}..., not the paid challenge's "
             f"{paid.challenge.id[:16]!r}... (CORE-RCPT-01)")
    if receipt.method != paid.challenge.method:
        fail(f"{what}: the receipt names method {receipt.method!r}, the paid challenge {paid.challenge.method!r} (CORE-RCPT-01)")
    if not receipt.receipt:
        fail(f"{what}: the receipt carries no signed receipt JWS (CORE-RCPT-01)")
    return receipt  # its Cache-Control is the draft's rule: full.paid-success judges it


def _reference(resp: Response) -> str | None:
    try:
        return parse_receipt(resp.headers["Payment-Receipt"]).reference
    except (KeyError, ParseError):
        return None


async def pay_once(ctx: CheckContext, payer: Payer, what: str = "paid request") -> tuple[Paid, Response, PaymentReceipt]:
    paid = await fresh_credential(ctx, payer)
    resp = await send(ctx, paid)
    return paid, resp, paid_ok(resp, paid, what)


async def still_pays(ctx: CheckContext, paid: Paid, refusal: str) -> None:
    """CORE-ONCE-04: a refused request has no side effect, so ``paid``'s credential, sent after
    ``refusal`` to the very request it was issued for, still pays. A seller that claims or settles a
    challenge before checking its binding has used it up by then (and moved money for a refusal).
    Only acceptance is judged: the receipt's own conformance is full.paid-success's."""
    resp = await send(ctx, paid)
    what = f"the genuine credential, sent as issued after {refusal} was refused"
    no_5xx(resp, what)
    skip_if_payer_limited(resp, paid, what)  # a payer that could never have paid here proves nothing
    if not 200 <= resp.status < 300:
        fail(f"{what}: {describe(resp)}{_detail(resp, paid)}; the refused request used up the challenge (and may "
             "have moved money): a refusal must have no side effect (CORE-ONCE-04)")


# -- the checks -------------------------------------------------------------

@register("full.paid-success", "a fresh credential pays: 2xx; a receipt, if any, says success and is cacheable only privately",
          "full", ["CORE-RCPT-03", "CHARGE-01"], draft="charge §7.1 MUST; draft §5.3.1 MUST; draft §11.10 MUST")
async def paid_success(ctx: CheckContext) -> str:
    paid = await fresh_credential(ctx)
    resp = await send(ctx, paid)
    receipt = accepted(resp, paid, "paid request")
    if receipt is None:
        return f"HTTP {resp.status}, no Payment-Receipt (a SHOULD: draft.receipt)"
    return (f"HTTP {resp.status}, {receipt.method} receipt reference {receipt.reference[:24]}, "
            f"Cache-Control {resp.headers.get('Cache-Control')!r}")


@register("draft.receipt", "a paid 2xx carries a Payment-Receipt", "draft", ["CORE-RCPT-01"], draft="draft §5.3 SHOULD")
async def has_receipt(ctx: CheckContext) -> str:
    paid = await fresh_credential(ctx)
    resp = await send(ctx, paid)
    if accepted(resp, paid, "paid request") is None:
        fail(f"paid request: HTTP {resp.status} without a Payment-Receipt (servers SHOULD include one)")
    return "the paid response carries a Payment-Receipt"


@register("full.receipt-fields", "the receipt names the paid challenge (challengeId) and carries the signed receipt JWS", "full",
          ["CORE-RCPT-01"])
async def receipt_fields(ctx: CheckContext) -> str:
    paid, resp, receipt = await pay_once(ctx, payer_for(ctx))
    return f"challengeId {str(receipt.challengeId)[:12]}..., a {len(receipt.receipt or '')}-character JWS"


@register("full.replay", "the same credential sent again is not accepted: one payment, one delivery", "full",
          ["CORE-ONCE-01"], draft="draft §11.3 MUST; charge §6.2 MUST")
async def replay(ctx: CheckContext) -> str:
    # Replay safety only: what the second use was answered (status, problem type, fresh challenge)
    # is full.replay-answer's question, so a seller that never pays twice passes here however it refuses.
    paid, first, second = await _used_twice(ctx)
    no_5xx(second, "the same credential again")
    if 200 <= second.status < 300:
        fail(f"the same credential again: the target accepted it ({describe(second)}); a challenge id was consumed "
             "twice (CORE-ONCE-01)")
    return f"paid once; the replay not accepted ({describe(second)})"


async def _used_twice(ctx: CheckContext) -> tuple[Paid, Response, Response]:
    """A fresh credential sent twice, the first use accepted (else the check cannot judge the second)."""
    payer = payer_for(ctx)
    paid = await fresh_credential(ctx, payer)
    first = await send(ctx, paid)
    # Only acceptance matters for the first use: the receipt's own conformance is full.paid-success's.
    no_5xx(first, "first use of the credential")
    skip_if_payer_limited(first, paid, "first use of the credential")
    if not 200 <= first.status < 300:
        fail(f"first use of the credential: the target refused a fresh credential for its own {paid.label}: {describe(first)}")
    return paid, first, await send(ctx, paid)


@register("full.replay-answer", "a used credential is answered 402 with a fresh challenge (invalid-challenge)", "full",
          ["CORE-ERR-04", "CORE-ERR-10"], draft="draft §4.2 MUST")
async def replay_answer(ctx: CheckContext) -> str:
    paid, _, second = await _used_twice(ctx)
    if 200 <= second.status < 300:
        raise Skip("the replay was accepted: full.replay reports it")
    slug = refused(second, "the same credential again", ("invalid-challenge",), not_ids={paid.challenge.id})
    return f"the replay refused with 402 ({slug or 'no problem document'}) and a fresh challenge"


@register("full.concurrent-replay", "the same credential sent many times at once succeeds exactly once", "full",
          ["CORE-ONCE-02", "CORE-ONCE-01"], draft="draft §11.5 MUST; draft §11.3 MUST")
async def concurrent_replay(ctx: CheckContext) -> str:
    payer = payer_for(ctx)
    n = max(2, int(ctx.options.get("concurrency") or 20))
    paid = await fresh_credential(ctx, payer)
    responses = await asyncio.gather(*(send(ctx, paid) for _ in range(n)))
    wins = [r for r in responses if 200 <= r.status < 300]
    tally = ", ".join(f"{k} x{v}" for k, v in Counter(describe(r) for r in responses).most_common())
    for r in responses:
        no_5xx(r, f"one of {n} concurrent submissions of one credential")
    if len(wins) > 1:
        refs = {_reference(r) for r in wins} - {None}
        fail(f"{len(wins)} of {n} concurrent submissions of one credential succeeded ({tally}); "
             f"{len(refs)} distinct receipt reference(s): a challenge id paid for more than one request (CORE-ONCE-02)")
    if not wins:
        skip_if_payer_limited(responses[0], paid, f"{n} concurrent submissions of one credential")
        fail(f"none of {n} concurrent submissions of one fresh credential succeeded ({tally}); "
             "exactly one must proceed to settlement (CORE-ONCE-02)")
    return f"{n} concurrent submissions: {tally}"


def _other_target(ctx: CheckContext) -> tuple[str, str]:
    raw = (ctx.options.get("other_url") or "").strip()
    if not raw:
        raise Skip("no --other-url: give a second priced URL of the target to check route binding")
    method, sep, url = raw.partition(" ")
    if not sep or "://" in method:
        method, url = _method(ctx), raw
    method, url = method.upper(), url.strip()
    if urlsplit(url).scheme not in ("http", "https"):
        raise Skip(f"--other-url {url[:80]!r} is not an http(s) URL")
    if (method, url) == (_method(ctx), ctx.target):
        raise Skip("--other-url is the target itself; give another priced route")
    return method, url


@register("full.other-route", "a credential for one route is refused on another priced route, and then still pays on its own", "full",
          ["CORE-BIND-02", "CORE-ERR-04", "CHARGE-01", "CORE-ONCE-04"])
async def other_route(ctx: CheckContext) -> str:
    payer = payer_for(ctx)
    method, url = _other_target(ctx)
    body = _data(ctx) if method == _method(ctx) else None
    probe = await ctx.request(method, url, data=body)
    no_5xx(probe, f"unpaid {method} to the other URL")
    if probe.status != 402:
        raise Skip(f"the other URL ({method} {urlsplit(url).path}) answered an unpaid request {describe(probe)}, "
                   "not 402: give a priced route as --other-url")
    offered = {c.method for c in fresh_challenges(probe, f"unpaid {method} to the other URL")}
    paid = await fresh_credential(ctx, payer)
    if paid.challenge.method not in offered:
        raise Skip(f"the other URL does not offer method {paid.challenge.method!r} (it offers {', '.join(sorted(offered))}); "
                   "give a route priced in the same method")
    balance = await watch_balance(ctx, payer, paid.challenge)
    resp = await send(ctx, paid, method=method, url=url, data=body)
    where = f"{method} {urlsplit(url).path}"
    refused(resp, f"the credential for {_method(ctx)} {urlsplit(ctx.target).path} sent to {where}", ("invalid-challenge",),
            not_ids={paid.challenge.id}, accepted="a challenge paid for a route it was not issued for (CORE-BIND-02)")
    await balance.unmoved(f"the credential for {_method(ctx)} {urlsplit(ctx.target).path} refused on {where}")
    await still_pays(ctx, paid, f"its use on {where}")
    return f"a credential for the target refused on {where} as invalid-challenge, then paid on the target" + balance.note


def _with_query(url: str) -> tuple[str, str]:
    """``url`` with the parameter ``mpp_conformance`` added (or changed); the URL and the parameter."""
    base, hash_, fragment = url.partition("#")
    param = f"{OTHER_QUERY}=1"
    if param in urlsplit(base).query.split("&"):
        param = f"{OTHER_QUERY}=2"
    return base + ("&" if "?" in base else "?") + param + hash_ + fragment, param


@register("full.other-query", "a credential is refused when the query is changed, and then still pays with the query it was issued for", "full",
          ["CORE-BIND-02", "CORE-BIND-01", "CORE-ERR-04", "CORE-ONCE-04"])
async def other_query(ctx: CheckContext) -> str:
    payer = payer_for(ctx)
    paid = await fresh_credential(ctx, payer)
    url, added = _with_query(ctx.target)
    balance = await watch_balance(ctx, payer, paid.challenge)
    resp = await send(ctx, paid, url=url)
    refused(resp, f"the credential sent with {added!r} added to the query", ("invalid-challenge",),
            not_ids={paid.challenge.id}, accepted="the seller does not bind the query (CORE-BIND-02)")
    await balance.unmoved(f"the credential refused with {added!r} added to the query")
    await still_pays(ctx, paid, f"its use with {added!r} added to the query")
    return f"refused as invalid-challenge with {added!r} added, then paid without it" + balance.note


@register("full.other-field", "a credential sent in a field its challenge did not select pays nothing, and then still pays in Authorization",
          "full", ["CORE-CHAL-11", "CORE-ONCE-04"], draft="draft §5.2 MUST; draft §5.2 MUST NOT")
async def other_field(ctx: CheckContext) -> str:
    # The draft: a credential counts only in the field its challenge selects (Authorization when it
    # has no `header`); one in any other field MUST NOT satisfy it. The request carries no
    # Authorization at all, so a seller that falls back to Payment-Authorization is caught.
    payer = payer_for(ctx)
    paid = await fresh_credential(ctx, payer)
    if paid.challenge.header not in (None, "Authorization"):
        raise Skip(f"the challenge selects {paid.challenge.header!r}; this check sends a credential the challenge did not select")
    resp = await ctx.request(_method(ctx), ctx.target, headers=[("Payment-Authorization", paid.authorization)], data=_data(ctx))
    what = "the credential sent in Payment-Authorization, which the challenge did not select"
    no_5xx(resp, what)
    if 200 <= resp.status < 300:
        fail(f"{what}: the target accepted it ({describe(resp)}); a credential in another field must not satisfy "
             "the challenge (draft §5.2)")
    await still_pays(ctx, paid, "its use in Payment-Authorization")
    return f"not accepted in Payment-Authorization ({describe(resp)}), then paid in Authorization"


@register("full.other-method", "a credential for one HTTP method is refused on another, and then still pays on its own", "full",
          ["CORE-BIND-02", "CORE-ERR-04", "CORE-ONCE-04"])
async def other_method(ctx: CheckContext) -> str:
    payer = payer_for(ctx)
    mine = _method(ctx)
    other = "POST" if mine == "GET" else "GET"
    body = _data(ctx) if other in BODY_METHODS else None
    probe = await ctx.request(other, ctx.target, data=body)
    no_5xx(probe, f"unpaid {other} to the target")
    if probe.status in NOT_THERE:
        raise Skip(f"the target answers {other} with HTTP {probe.status}: there is no {other} on this path to pay for")
    if probe.status != 402:
        raise Skip(f"an unpaid {other} to the target got {describe(probe)}, not 402: {other} on this path is not priced")
    paid = await fresh_credential(ctx, payer)
    balance = await watch_balance(ctx, payer, paid.challenge)
    resp = await send(ctx, paid, method=other, data=body)
    refused(resp, f"the credential for {mine} sent with {other}", ("invalid-challenge",), not_ids={paid.challenge.id},
            accepted=f"a challenge issued for {mine} paid for {other} (CORE-BIND-02)")
    await balance.unmoved(f"the credential for {mine} refused on {other}")
    await still_pays(ctx, paid, f"its use with {other}")
    return f"a credential for {mine} refused on {other} as invalid-challenge, then paid on {mine}" + balance.note


@register("full.changed-body", "a credential bound to one body is refused with another, and then still pays with its own", "full",
          ["CORE-BIND-04", "CORE-ERR-06", "CORE-ONCE-04"], draft="draft §5.1.3 MUST; draft §11.4 MUST NOT")
async def changed_body(ctx: CheckContext) -> str:
    payer = payer_for(ctx)
    mine, body = _method(ctx), _data(ctx) or b""
    if mine not in BODY_METHODS and not body:
        raise Skip(f"{mine} target without a body: there is no body to change")
    paid = await fresh_credential(ctx, payer)
    if paid.challenge.digest is None:  # whether it must is core.body-digest's question
        raise Skip(f"the challenge for a {mine} request with a {len(body)}-byte body carries no digest: no body "
                   "binding to test (core.body-digest and draft.body-digest judge its absence)")
    other = body + b"\n[changed by mpp-conformance]"
    balance = await watch_balance(ctx, payer, paid.challenge)
    resp = await send(ctx, paid, data=other)
    # verification-failed is MPP's type (CORE-ERR-06); the draft names none for a digest mismatch.
    slug = refused(resp, "the credential sent with a changed body", ("verification-failed", "invalid-challenge", "invalid-payload"),
                   not_ids={paid.challenge.id}, accepted="a credential for one body paid for another (CORE-BIND-04)")
    await balance.unmoved("the credential refused with a changed body")
    await still_pays(ctx, paid, "its use with a changed body")
    return f"a changed body refused ({slug or 'no problem document'}), then the original body paid" + balance.note


async def _body_digest(ctx: CheckContext) -> str:
    import base64
    import hashlib

    mine, body = _method(ctx), _data(ctx) or b""
    if mine not in BODY_METHODS and not body:
        raise Skip(f"{mine} target without a body: nothing to digest")
    resp = await ctx.request(mine, ctx.target, data=body)
    status(resp, 402, "unpaid request")
    challenges = fresh_challenges(resp, "unpaid request")
    expected = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    for c in challenges:
        if c.digest is None:
            fail(f"the {c.method}/{c.intent} challenge for a {mine} request with a {len(body)}-byte body carries no digest")
        if c.digest != expected:
            fail(f"the {c.method}/{c.intent} challenge's digest {c.digest[:60]!r} is not the request body's sha-256 ({expected})")
    return f"{len(challenges)} challenge(s) bind the {len(body)}-byte body ({expected[:20]}...)"


register("core.body-digest", "a challenge for a request with a body carries the body's digest", "core",
         ["CORE-BIND-03"])(_body_digest)
register("draft.body-digest", "a challenge for a request with a body carries the body's digest", "draft",
         ["CORE-BIND-03"], draft="draft §5.1.3 SHOULD")(_body_digest)


@register("full.idempotency-retry", "a retry with the same credential and Idempotency-Key replays the response", "full",
          ["CORE-ONCE-06", "CORE-RCPT-01", "CORE-RCPT-03"])
async def idempotency_retry(ctx: CheckContext) -> str:
    payer = payer_for(ctx)
    mine = _method(ctx)
    if mine not in BODY_METHODS:
        raise Skip(f"{mine} target: Idempotency-Key retries are checked on POST, PUT and PATCH targets")
    key = "mpp-conformance-" + secrets.token_hex(8)
    paid = await fresh_credential(ctx, payer)
    first = await send(ctx, paid, headers=[("Idempotency-Key", key)])
    original = paid_ok(first, paid, "paid request with an Idempotency-Key")
    again = await send(ctx, paid, headers=[("Idempotency-Key", key)])
    what = "retry with the same credential and Idempotency-Key"
    no_5xx(again, what)
    if again.status != first.status:
        fail(f"{what}: {describe(again)}{_detail(again, paid)}, the original was HTTP {first.status} (CORE-ONCE-06)")
    if again.body != first.body:
        fail(f"{what}: the body differs from the original's ({len(again.body)} vs {len(first.body)} bytes; CORE-ONCE-06)")
    if "Payment-Receipt" not in again.headers:
        fail(f"{what}: the replay carries no Payment-Receipt; it must repeat the original's (CORE-ONCE-06)")
    replayed = paid_ok(again, paid, what)
    if replayed.reference != original.reference:
        fail(f"{what}: the replay's receipt reference {replayed.reference[:24]!r} differs from the original's "
             f"{original.reference[:24]!r}: a second charge (CORE-ONCE-06)")
    if again.headers.getall("Payment-Receipt") != first.headers.getall("Payment-Receipt"):
        fail(f"{what}: the replay's Payment-Receipt is not the original's, though it names the same reference (CORE-ONCE-06)")
    if again.headers.get("Idempotent-Replayed", "").strip().lower() != "true":
        fail(f"{what}: the replay is not marked Idempotent-Replayed: true "
             f"(got {again.headers.get('Idempotent-Replayed')!r}; CORE-ONCE-06)")
    return f"the retry replayed HTTP {again.status}, the same body and receipt reference, marked Idempotent-Replayed"


_RECEIPT_CLAIMS = ("iss", "sub", "iat", "jti", "challengeId", "method", "intent", "amount", "currency", "recipient",
                   "resource", "reference", "account")


@register("full.signed-receipt", "the receipt JWS verifies against the seller's JWKS and names exactly what was paid", "full",
          ["CHARGE-03", "CHARGE-06", "CHARGE-07", "LEDGER-17", "CORE-BUY-04"])
async def signed_receipt(ctx: CheckContext) -> str:
    from urllib.parse import urlsplit

    from mpp.protocol.errors import ReceiptInvalid
    from mpp.protocol.receipts import verify_receipt_jws

    payer = payer_for(ctx)
    paid, resp, receipt = await pay_once(ctx, payer)
    parts = urlsplit(ctx.target)
    jwks_resp = await ctx.request("GET", f"{parts.scheme}://{parts.netloc}/.well-known/jwks.json")
    if jwks_resp.status != 200:
        fail(f"the seller publishes no JWKS at /.well-known/jwks.json (HTTP {jwks_resp.status}), so its receipt cannot be verified (CHARGE-06)")
    try:
        claims = verify_receipt_jws(receipt.receipt or "", jwks_resp.json(), issuer=paid.challenge.realm, challenge_id=paid.challenge.id)
    except (ReceiptInvalid, ValueError) as exc:
        fail(f"the receipt JWS does not verify against the seller's JWKS: {exc} (CHARGE-06)")
    missing = [c for c in _RECEIPT_CLAIMS if c not in claims]
    if missing:
        fail(f"the receipt JWS lacks the claims {', '.join(missing)} (CHARGE-07)")
    request = paid.challenge.request_json
    for name in ("amount", "currency", "recipient"):
        if claims.get(name) != request.get(name):
            fail(f"the signed receipt says {name} {claims.get(name)!r}, the quote said {request.get(name)!r} (CHARGE-03)")
    if claims.get("reference") != receipt.reference or claims.get("jti") != paid.challenge.id:
        fail("the signed receipt's reference or jti disagree with the Payment-Receipt and the challenge (CHARGE-07)")
    if paid.challenge.method == "ledger":
        credential = parse_credential(paid.authorization)
        payload = credential.payload
        if claims.get("account") != payload.get("account") or claims.get("sub") != payload.get("signer"):
            fail("the ledger receipt's account or sub is not the payer account and signer of the credential (LEDGER-17)")
    return f"receipt signed by kid {_jws_kid(receipt.receipt)!r}, {len(claims)} claims, terms as quoted"


def _jws_kid(jws: str) -> str | None:
    """The ``kid`` of a JWS's protected header (already verified, so it decodes)."""
    from mpp.protocol.wire import b64url_decode

    try:
        header = json.loads(b64url_decode(jws.split(".", 1)[0]))
    except ValueError:
        return None
    return header.get("kid") if isinstance(header, dict) else None


@register("full.ledger-payload", "the ledger method refuses a payload that is not the agent's signature over this quote", "full",
          ["LEDGER-05", "LEDGER-06", "LEDGER-07", "LEDGER-08", "LEDGER-09", "LEDGER-10", "LEDGER-11", "LEDGER-12"])
async def ledger_payload(ctx: CheckContext) -> str:
    """Each altered credential answers a genuine challenge, so only the payload is at fault; the
    untouched credential must then still pay (refusals happen before the challenge is used up)."""
    from mpp import SigningKey, format_credential
    from mpp.methods.ledger import authorization_message

    payer = payer_for(ctx)
    paid = await fresh_credential(ctx, payer)
    if paid.challenge.method != "ledger":
        raise Skip(f"the target's challenge is for method {paid.challenge.method!r}, not ledger")
    credential = parse_credential(paid.authorization)
    payload = dict(credential.payload)
    if not {"account", "signer", "signature"} <= payload.keys():
        raise Skip("the payer does not produce ledger authorizations (use --pay-with ledger:WALLET_DIR)")
    stranger = SigningKey.generate()
    request = paid.challenge.request_json
    from mpp.protocol.models import ChargeRequest

    def signed_by(key: SigningKey, account: str, challenge_id: str | None = None) -> str:
        message = authorization_message(challenge_id=challenge_id or paid.challenge.id, realm=paid.challenge.realm,
                                        request=ChargeRequest.model_validate(request), account=account)
        return key.sign(message)

    variants = {
        "signature over another challenge id": dict(payload, signature=signed_by(stranger, payload["account"], "other-challenge")),
        "signature by a key that is not the signer": dict(payload, signature=signed_by(stranger, payload["account"])),
        "signer not a did:key": dict(payload, signer="did:web:example.com"),
        "payload type missing": {k: v for k, v in payload.items() if k != "type"},
        "signature missing": {k: v for k, v in payload.items() if k != "signature"},
        "signature over another account": dict(payload, account=payload["account"] + "-other"),
    }
    balance = await watch_balance(ctx, payer, paid.challenge)
    for label, altered in variants.items():
        source = credential.source if "signer" not in altered or altered["signer"] == payload["signer"] else altered["signer"]
        value = format_credential(credential.model_copy(update={"payload": altered, "source": source}))
        resp = await ctx.request(_method(ctx), ctx.target, headers=[("Authorization", value)], data=_data(ctx))
        refused(resp, label, ("verification-failed",), not_ids={paid.challenge.id})
    mismatched = format_credential(credential.model_copy(update={"source": stranger.did}))
    resp = await ctx.request(_method(ctx), ctx.target, headers=[("Authorization", mismatched)], data=_data(ctx))
    refused(resp, "source not the payload's signer", ("verification-failed",), not_ids={paid.challenge.id})
    await balance.unmoved(f"the {len(variants) + 1} altered payloads refused")
    resp = await send(ctx, paid)
    receipt = paid_ok(resp, paid, "the untouched credential after the refusals")
    if receipt.reference != paid.challenge.id:
        fail(f"the ledger transfer id (receipt reference {receipt.reference[:16]!r}...) is not the challenge id (LEDGER-12)")
    # A well-signed authorization by a key the payer account does not authorize passes every offline
    # check, so it is refused at settlement (and uses its challenge up): give it a challenge of its own.
    other = await fresh_credential(ctx, payer)
    await balance.again()  # after the genuine payment
    other_credential = parse_credential(other.authorization)
    message = authorization_message(challenge_id=other.challenge.id, realm=other.challenge.realm,
                                    request=ChargeRequest.model_validate(other.challenge.request_json), account=payload["account"])
    forged = dict(other_credential.payload, signer=stranger.did, signature=stranger.sign(message))
    value = format_credential(other_credential.model_copy(update={"payload": forged, "source": stranger.did}))
    resp = await ctx.request(_method(ctx), ctx.target, headers=[("Authorization", value)], data=_data(ctx))
    refused(resp, "a key the payer account does not authorize", ("verification-failed",), not_ids={other.challenge.id})
    await balance.unmoved("the authorization by a key the payer account does not authorize, refused")
    return f"{len(variants) + 2} altered payloads refused as verification-failed; the genuine one paid" + balance.note
