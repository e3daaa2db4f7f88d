"""Profile `pricing`: a seller that prices from a price list (spec/pricing.md).

The target URL is a route of the price list. Without payment the checks read the 402 (one
challenge per offer, each naming the price list, the offer and its model, discovery listing
the same offers) and probe the grant-protected follow-up routes a task offer names (refused
without a grant, and with a grant the target did not sign). With ``--pay-with ledger:DIR``
they also buy: a task offer (one charge, a task grant, follow-ups served free to the paying
agent only) and a seat offer (one charge per period: a second purchase within the period is
refused `seat-already-paid`, which carries a grant that keeps the period covered).

Checks skip, saying why, when the target's 402 has no offer of the model they need, or when
they need to pay and have no ledger payer.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mpp import Challenge, ParseError
from mpp.protocol.errors import EXTENSION_PROBLEM_BASE
from mpp.protocol.keys import SigningKey
from mpp.pricing import (
    GRANT_HEADER,
    GRANT_PROOF_HEADER,
    MODELS,
    issue_grant,
    match_template,
    sign_grant_proof,
)

from .base import CheckContext, Response, Skip, register
from .checks_full import Paid, paid_ok, payer_for, skip_if_payer_limited
from .expect import describe, fail, fresh_challenges, no_receipt, problem, status
from .paying import CannotPay, LedgerPayer

INTENT_OF_MODEL = {"transaction": ("charge",), "unit": ("session",), "task": ("charge",), "seat": ("subscription",)}


def _method(ctx: CheckContext) -> str:
    return (ctx.options.get("method") or "GET").upper()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def _pricing(challenge: Challenge) -> dict[str, Any] | None:
    try:
        member = challenge.request_json.get("pricing")
    except ParseError:
        return None
    return member if isinstance(member, dict) else None


async def _quote(ctx: CheckContext) -> tuple[list[Challenge], list[tuple[Challenge, dict[str, Any]]]]:
    """The target's 402: every challenge, and those that carry a `pricing` member (skip when none does)."""
    resp = await ctx.request(_method(ctx), ctx.target, data=ctx.options.get("data"))
    status(resp, 402, "unpaid request")
    challenges = fresh_challenges(resp, "unpaid request")
    priced = [(c, p) for c in challenges if (p := _pricing(c)) is not None]
    if not priced:
        raise Skip("no challenge of this route carries a `pricing` member: the route is not priced from a price list")
    return challenges, priced


def _offer(priced: list[tuple[Challenge, dict[str, Any]]], model: str) -> tuple[Challenge, dict[str, Any]]:
    for challenge, member in priced:
        if member.get("model") == model and challenge.intent in INTENT_OF_MODEL[model]:
            return challenge, member
    raise Skip(f"this route offers no {model} model")


def _extension_problem(resp: Response, slugs: tuple[str, ...], expected_status: int, what: str) -> str:
    """A refusal of spec/pricing.md §9: status, one of ``slugs`` under urn:mpp:problem:, no challenge, no receipt."""
    if 200 <= resp.status < 300:
        fail(f"{what}: the target served it ({describe(resp)})")
    status(resp, expected_status, what)
    doc = problem(resp, None, what)
    allowed = [EXTENSION_PROBLEM_BASE + s for s in slugs]
    if doc["type"] not in allowed:
        fail(f"{what}: problem type is {doc['type']!r}, expected {' or '.join(map(repr, allowed))}")
    if resp.headers.getall("WWW-Authenticate", []):
        fail(f"{what}: the refusal carries a challenge (WWW-Authenticate); PRICE-ERR-01 says it carries none")
    if "no-store" not in resp.headers.get("Cache-Control", ""):
        fail(f"{what}: the refusal lacks Cache-Control: no-store (PRICE-ERR-01)")
    no_receipt(resp, what)
    return doc["type"][len(EXTENSION_PROBLEM_BASE):]


def _route_url(ctx: CheckContext, route: str) -> tuple[str, str, str]:
    """A route string ("GET /jobs/abc") as (method, URL on the target's origin, path)."""
    method, _, path = route.partition(" ")
    return method.upper(), _origin(ctx.target) + path, path


def _follow_up(member: dict[str, Any], task: str) -> str:
    follow_ups = member.get("followUps")
    if not isinstance(follow_ups, list) or not follow_ups or not all(isinstance(r, str) for r in follow_ups):
        fail("the task offer's pricing member has no followUps array of route strings (PRICE-MODEL-04)")
    return follow_ups[0].replace("{task}", task)


def _grant_request(ctx: CheckContext, route: str, grant: str, key: SigningKey) -> tuple[str, str, dict[str, str]]:
    """Method, URL and header fields of a follow-up request with the grant and a fresh proof."""
    method, url, path = _route_url(ctx, route)
    jti = _unverified_claims(grant).get("jti", "")
    proof = sign_grant_proof(key, grant_id=jti, method=method, path=path, now=datetime.now(timezone.utc))
    return method, url, {GRANT_HEADER: grant, GRANT_PROOF_HEADER: proof}


async def _with_grant(ctx: CheckContext, route: str, grant: str, key: SigningKey) -> Response:
    method, url, headers = _grant_request(ctx, route, grant, key)
    return await ctx.request(method, url, headers=headers)


def _unverified_claims(token: str) -> dict[str, Any]:
    import jwt

    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        fail("the Payment-Grant is not a JWS")
    return claims if isinstance(claims, dict) else {}


async def _verified_grant(ctx: CheckContext, token: str, what: str) -> dict[str, Any]:
    """The grant's claims, its signature checked against the target's JWKS (PRICE-GRANT-01)."""
    import jwt

    resp = await ctx.request("GET", _origin(ctx.target) + "/.well-known/jwks.json")
    status(resp, 200, "JWKS")
    try:
        header = jwt.get_unverified_header(token)
        keys = {k.get("kid"): k for k in resp.json().get("keys", [])}
        jwk = keys.get(header.get("kid"))
        if jwk is None:
            fail(f"{what}: the grant's kid is not in the target's JWKS (PRICE-GRANT-01)")
        if header.get("alg") != "EdDSA" or header.get("typ") != "mpp-grant+jwt":
            fail(f"{what}: the grant's header is alg {header.get('alg')!r} typ {header.get('typ')!r}, "
                 "not EdDSA / mpp-grant+jwt (PRICE-GRANT-01)")
        key = jwt.PyJWK(jwk).key
        return jwt.decode(token, key, algorithms=["EdDSA"], options={"verify_aud": False, "verify_exp": False})
    except (jwt.InvalidTokenError, jwt.PyJWKError, ValueError) as exc:
        fail(f"{what}: the grant does not verify against the target's JWKS: {exc} (PRICE-GRANT-01)")
    raise AssertionError("unreachable")


def _ledger_payer(ctx: CheckContext) -> LedgerPayer:
    payer = payer_for(ctx)
    if not isinstance(payer, LedgerPayer):
        raise Skip("grants are bound to the paying agent's key: these checks need --pay-with ledger:WALLET_DIR")
    return payer


async def _buy(ctx: CheckContext, payer: LedgerPayer, challenge: Challenge) -> Response:
    try:
        authorization = payer.authorize_seat(challenge) if challenge.intent == "subscription" else payer.authorize(challenge)
    except CannotPay as exc:
        raise Skip(f"not paid: {exc}") from None
    resp = await ctx.request(_method(ctx), ctx.target, headers={"Authorization": authorization}, data=ctx.options.get("data"))
    # Every purchase, first or second: a refusal for what the payer cannot give is a skip, not the target's failure.
    skip_if_payer_limited(resp, Paid(challenge, authorization), f"{challenge.intent} purchase")
    return resp


# -- checks that pay nothing ----------------------------------------------------------------


@register("pricing.offers-name-their-price-list", "every challenge from a price list names its version, offer and model, "
          "one challenge per offer", "pricing", ["PRICE-MODEL-03", "PRICE-MODEL-04", "PRICE-VER-01"])
async def offers_name_their_price_list(ctx: CheckContext) -> str:
    _, priced = await _quote(ctx)
    versions, seen = set(), set()
    for challenge, member in priced:
        label = f"{challenge.method}/{challenge.intent} challenge"
        for name in ("priceList", "offer", "model"):
            if not isinstance(member.get(name), str) or not member[name]:
                fail(f"{label}: its pricing member lacks a non-empty string {name!r} (PRICE-MODEL-04)")
        if member["model"] not in MODELS:
            fail(f"{label}: unknown model {member['model']!r} (PRICE-MODEL-04)")
        if challenge.intent not in INTENT_OF_MODEL[member["model"]] and not (member["model"] == "unit" and challenge.intent == "charge"):
            fail(f"{label}: model {member['model']!r} quoted with intent {challenge.intent!r}")
        if member["model"] == "task":
            for name in ("followUps", "grantTtl", "refund"):
                if name not in member:
                    fail(f"{label}: a task offer's pricing member lacks {name!r} (PRICE-MODEL-04)")
        versions.add(member["priceList"])
        key = (challenge.method, challenge.intent, member["offer"])
        if key in seen:
            fail(f"{label}: offer {member['offer']!r} is quoted twice in one 402 (PRICE-MODEL-03)")
        seen.add(key)
    if len(versions) != 1:
        fail(f"one 402 quotes from several price-list versions: {sorted(versions)} (PRICE-VER-01)")
    return f"{len(priced)} offer(s) quoted from price list {versions.pop()!r}"


@register("pricing.discovery-lists-the-offers", "/openapi.json lists every offer of the route with its pricing member",
          "pricing", ["PRICE-MODEL-03"])
async def discovery_lists_the_offers(ctx: CheckContext) -> str:
    _, priced = await _quote(ctx)
    resp = await ctx.request("GET", _origin(ctx.target) + "/openapi.json")
    status(resp, 200, "GET /openapi.json")
    try:
        doc = resp.json()
    except ValueError:
        fail("/openapi.json is not JSON")
    path = urlsplit(ctx.target).path or "/"
    operation = None
    for template, operations in (doc.get("paths") or {}).items():
        if match_template(template, path) is not None and isinstance(operations, dict):
            operation = operations.get(_method(ctx).lower())
            if operation is not None:
                break
    if not isinstance(operation, dict):
        fail(f"/openapi.json has no operation for {_method(ctx)} {path} (CORE-DISC-02)")
    offers = (operation.get("x-payment-info") or {}).get("offers")
    if not isinstance(offers, list):
        fail(f"{_method(ctx)} {path}: x-payment-info has no offers list")
    listed = {(o.get("pricing") or {}).get("offer") for o in offers if isinstance(o, dict)}
    quoted = {m["offer"] for _, m in priced}
    missing = quoted - listed
    if missing:
        fail(f"offers quoted in the 402 but not listed in x-payment-info: {sorted(missing)} (PRICE-MODEL-03)")
    return f"x-payment-info lists the {len(quoted)} offer(s) the 402 quotes"


@register("pricing.follow-up-needs-a-grant", "a task's follow-up route without a grant is refused 403 grant-required, "
          "without a challenge", "pricing", ["PRICE-TASK-03", "PRICE-ERR-01"])
async def follow_up_needs_a_grant(ctx: CheckContext) -> str:
    _, priced = await _quote(ctx)
    _, member = _offer(priced, "task")
    route = _follow_up(member, "t" + secrets.token_hex(6))
    method, url, _ = _route_url(ctx, route)
    resp = await ctx.request(method, url)
    _extension_problem(resp, ("grant-required",), 403, f"{route} without a grant")
    return f"{route} refused grant-required"


@register("pricing.forged-grant-refused", "a grant the seller did not sign is refused grant-invalid", "pricing",
          ["PRICE-GRANT-02", "PRICE-ERR-01"])
async def forged_grant_refused(ctx: CheckContext) -> str:
    _, priced = await _quote(ctx)
    challenge, member = _offer(priced, "task")
    task = "t" + secrets.token_hex(6)
    route = _follow_up(member, task)
    agent, forger = SigningKey.generate(), SigningKey.generate()
    now = int(datetime.now(timezone.utc).timestamp())
    grant = issue_grant(forger, {"iss": challenge.realm, "aud": challenge.realm, "sub": agent.did,
                                 "jti": "grt_" + secrets.token_urlsafe(16)[:22], "iat": now, "exp": now + 600,
                                 "kind": "task", "task": task, "routes": [route], "priceList": member["priceList"],
                                 "challengeId": challenge.id})
    resp = await _with_grant(ctx, route, grant, agent)
    _extension_problem(resp, ("grant-invalid",), 403, f"{route} with a grant signed by a stranger")
    return "a forged grant is refused grant-invalid"


# -- checks that pay ----------------------------------------------------------------------------


@register("pricing.task-bought-once", "a task is charged once; its grant serves the follow-ups free, to the paying "
          "agent and for that task only, each proof once", "pricing",
          ["PRICE-TASK-01", "PRICE-TASK-02", "PRICE-TASK-03", "PRICE-GRANT-01", "PRICE-GRANT-02", "PRICE-GRANT-03",
           "PRICE-GRANT-04", "PRICE-GRANT-06"])
async def task_bought_once(ctx: CheckContext) -> str:
    payer = _ledger_payer(ctx)
    _, priced = await _quote(ctx)
    challenge, member = _offer(priced, "task")
    resp = await _buy(ctx, payer, challenge)
    receipt = paid_ok(resp, Paid(challenge, ""), "task purchase")
    token = resp.headers.get(GRANT_HEADER)
    if not token:
        fail(f"the paid task answer carries no {GRANT_HEADER} (PRICE-TASK-02)")
    claims = await _verified_grant(ctx, token, "task grant")
    if claims.get("kind") != "task" or not isinstance(claims.get("task"), str):
        fail(f"the grant is not a task grant: kind {claims.get('kind')!r} (PRICE-TASK-02)")
    if claims.get("sub") != payer.signer:
        fail("the task grant names another agent than the payment's signer (PRICE-TASK-02)")
    if claims.get("iss") != challenge.realm or claims.get("aud") != challenge.realm:
        fail("the task grant's iss/aud is not the seller's realm (PRICE-GRANT-01)")
    task = claims["task"]
    route = _follow_up(member, task)
    if route not in (claims.get("routes") or []):
        fail(f"the task grant does not cover {route} (PRICE-TASK-02)")
    method, url, headers = _grant_request(ctx, route, token, payer.key)
    served = await ctx.request(method, url, headers=headers)
    if not 200 <= served.status < 300:
        fail(f"{route} with the task grant: {describe(served)}; it must be served free (PRICE-GRANT-04)")
    if "Payment-Receipt" in served.headers:
        fail(f"{route} with the task grant carries a Payment-Receipt: a follow-up is not a purchase (PRICE-GRANT-04)")
    replayed = await ctx.request(method, url, headers=headers)
    _extension_problem(replayed, ("grant-proof-invalid",), 403, f"{route}: the same grant proof sent again (PRICE-GRANT-06)")
    again = await _with_grant(ctx, route, token, payer.key)
    if not 200 <= again.status < 300:
        fail(f"{route} with the task grant and a new proof: {describe(again)}; it must be served (PRICE-GRANT-03)")
    stranger = SigningKey.generate()
    other_agent = await _with_grant(ctx, route, token, stranger)
    _extension_problem(other_agent, ("grant-agent", "grant-proof-invalid"), 403, f"{route}: the grant with another agent's proof")
    other_task = _follow_up(member, task + "x")
    wrong = await _with_grant(ctx, other_task, token, payer.key)
    _extension_problem(wrong, ("grant-task", "grant-route"), 403, f"{other_task}: the grant of task {task!r}")
    return f"task {task!r} bought once (receipt {str(receipt.reference)[:12]}...), follow-up served free"


@register("pricing.seat-once-per-period", "a seat is charged at most once per period: a second purchase is refused "
          "seat-already-paid with a grant that keeps the period covered", "pricing",
          ["PRICE-SEAT-01", "PRICE-SEAT-03", "PRICE-SEAT-05", "PRICE-SEAT-06", "PRICE-ERR-01"])
async def seat_once_per_period(ctx: CheckContext) -> str:
    payer = _ledger_payer(ctx)
    _, priced = await _quote(ctx)
    challenge, member = _offer(priced, "seat")
    request = challenge.request_json
    for name in ("periodUnit", "periodCount", "periodSeconds", "subscriptionExpires"):
        if name not in request:
            fail(f"the seat challenge's request lacks {name!r} (PRICE-SEAT-01)")
    resp = await _buy(ctx, payer, challenge)
    paid = False
    if 200 <= resp.status < 300:
        paid = True
        paid_ok(resp, Paid(challenge, ""), "seat purchase")
        token = resp.headers.get(GRANT_HEADER)
        if not token:
            fail(f"the paid seat answer carries no {GRANT_HEADER} (PRICE-SEAT-05)")
        claims = await _verified_grant(ctx, token, "seat grant")
        subscription = claims.get("subscriptionId")
        if claims.get("kind") != "seat" or not subscription:
            fail("the grant of a paid seat is not a seat grant naming its subscription (PRICE-SEAT-05)")
    elif resp.status == 409:
        pass  # the period was bought earlier (another run): the second purchase below shows the same thing
    else:
        fail(f"seat purchase: {describe(resp)}")
    _, again = await _quote(ctx)
    second, _ = _offer(again, "seat")
    refused = await _buy(ctx, payer, second)
    _extension_problem(refused, ("seat-already-paid",), 409, "a second seat purchase in the same period")
    doc = refused.json()
    for name in ("subscriptionId", "period", "periodEnd", "grant"):
        if name not in doc:
            fail(f"seat-already-paid lacks {name!r} (PRICE-SEAT-03)")
    claims = await _verified_grant(ctx, doc["grant"], "grant of seat-already-paid")
    covered = [r for r in claims.get("routes") or [] if "{" not in r]
    route = f"{_method(ctx)} {urlsplit(ctx.target).path}"
    if route not in covered:
        fail(f"the seat grant does not cover the route bought ({route}) (PRICE-SEAT-05)")
    served = await _with_grant(ctx, route, doc["grant"], payer.key)
    if not 200 <= served.status < 300 or "Payment-Receipt" in served.headers:
        fail(f"{route} with the seat grant: {describe(served)}; it must be served without payment (PRICE-SEAT-06)")
    return ("seat bought once; " if paid else "seat already bought this period; ") + \
        f"a second purchase refused seat-already-paid, the period served with its grant"

