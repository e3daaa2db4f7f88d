"""Before any check runs: `--discover BASE` (the priced operations of BASE/openapi.json,
x-payment-info), and the first probe of each target, which stops the run (UsageError, exit 2)
with one message when the target is down or not priced, instead of every check erroring."""

from __future__ import annotations

import asyncio
import re

import aiohttp

from .usage import UsageError

__all__ = ["discover_targets", "check_target"]

_PROBE_TIMEOUT = aiohttp.ClientTimeout(total=15)
_PAYMENT = re.compile(r"(?:^|,)\s*Payment(?:\s|$)", re.IGNORECASE)  # the scheme, first or after another challenge


def _unreachable(what: str, exc: BaseException) -> UsageError:
    reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else f"{type(exc).__name__}: {exc}"
    return UsageError(f"mpp-conformance: cannot reach {what} ({reason}); is the target running at that address?")


async def discover_targets(base: str) -> list[tuple[str, str, bytes | None]]:
    base = base.rstrip("/")
    try:
        async with aiohttp.ClientSession(timeout=_PROBE_TIMEOUT) as session:
            async with session.get(base + "/openapi.json") as resp:
                if resp.status != 200:
                    raise UsageError(f"mpp-conformance: {base}/openapi.json answered HTTP {resp.status}")
                doc = await resp.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        raise _unreachable(f"{base}/openapi.json", exc) from None
    except ValueError:
        raise UsageError(f"mpp-conformance: {base}/openapi.json is not JSON") from None
    if not isinstance(doc, dict):
        raise UsageError(f"mpp-conformance: {base}/openapi.json is not an OpenAPI document")
    targets = []
    for path, ops in (doc.get("paths") or {}).items():
        if "{" in path:
            continue  # templated paths need values we do not have
        for method, op in (ops or {}).items():
            if isinstance(op, dict) and "x-payment-info" in op:
                body = b"{}" if method.upper() in ("POST", "PUT", "PATCH") else None
                targets.append((base + path, method.upper(), body))
    return targets


async def check_target(url: str, method: str, data: bytes | None) -> None:
    """One unpaid request: the target must answer, and answer 402 with a Payment challenge. Whether
    that challenge is well formed is the checks' business (a malformed one is a failure to report,
    not a reason to stop); a target that offers no payment at all is the wrong URL."""
    try:
        async with aiohttp.ClientSession(timeout=_PROBE_TIMEOUT) as session:
            async with session.request(method, url, data=data, allow_redirects=False) as resp:
                status = resp.status
                offered = any(_PAYMENT.search(v) for v in resp.headers.getall("WWW-Authenticate", []))
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        raise _unreachable(f"{method} {url}", exc) from None
    if status != 402 or not offered:
        found = "a Payment challenge" if offered else "no Payment challenge"
        raise UsageError(f"mpp-conformance: {method} {url} is not priced: an unpaid request got HTTP {status} with {found}, "
                         "not 402 with a Payment challenge; give a priced URL (and --method/--data if it needs them)")
