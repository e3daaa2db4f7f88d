"""Profile `core`: what any Payment-scheme seller must do, checked without paying."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from mpp import Challenge, b64url_decode, canonical_json, format_credential, parse_rfc3339
from mpp.models import Credential

from .expect import fail, fresh_challenges, no_receipt, problem, status
from .framework import CheckContext, Response, register

__all__ = ["unpaid", "first_challenge", "credential_header"]


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


@register("core.challenge-well-formed", "402 carries a well-formed Payment challenge", "core",
          ["CORE-CHAL-01", "CORE-CHAL-02", "CORE-CHAL-09", "CORE-BIND-05", "CORE-ERR-01", "CORE-ERR-02", "CORE-ERR-10"])
async def challenge_well_formed(ctx: CheckContext) -> str:
    resp = await unpaid(ctx)
    status(resp, 402, "unpaid request")
    challenges = fresh_challenges(resp, "unpaid request")
    problem(resp, "payment-required", "unpaid request")
    no_receipt(resp, "unpaid request")
    now = datetime.now(timezone.utc)
    for c in challenges:
        if c.method != c.method.lower():
            fail(f"challenge {c.id[:12]}...: method {c.method!r} is not lowercase")
        raw = b64url_decode(c.request)
        if raw != canonical_json(json.loads(raw)):
            fail(f"challenge {c.id[:12]}...: request is not RFC 8785 canonical JSON")
        if c.expires is None:
            fail(f"challenge {c.id[:12]}...: no expires")
        if parse_rfc3339(c.expires) <= now:
            fail(f"challenge {c.id[:12]}...: expires {c.expires} is not in the future")
    return f"{len(challenges)} challenge(s): " + ", ".join(f"{c.method}/{c.intent}" for c in challenges)


@register("core.fresh-id-per-402", "each 402 carries a new challenge id", "core", ["CORE-ERR-10", "CORE-BIND-01"])
async def fresh_id_per_402(ctx: CheckContext) -> str:
    _, first = await first_challenge(ctx)
    _, second = await first_challenge(ctx)
    if first.id == second.id:
        fail("two unpaid requests got the same challenge id; a used id would then block the next buyer")
    return "ids differ"


@register("core.garbage-credential", "a garbage credential gets 402 malformed-credential", "core",
          ["CORE-CRED-01", "CORE-ERR-03", "CORE-ERR-10", "CORE-ERR-11", "CORE-RCPT-02"])
async def garbage_credential(ctx: CheckContext) -> str:
    for value in ("Payment !!!not-base64!!!", "Payment " + "QUJD" * 3, "Payment eyJjaGFsbGVuZ2UiOnsiaWQiOiJ4"):
        resp = await send(ctx, value)
        status(resp, 402, f"credential {value[:24]!r}")
        problem(resp, "malformed-credential", f"credential {value[:24]!r}")
        fresh_challenges(resp, f"credential {value[:24]!r}")
        no_receipt(resp, f"credential {value[:24]!r}")
    return "garbage, non-JSON and truncated credentials refused"
