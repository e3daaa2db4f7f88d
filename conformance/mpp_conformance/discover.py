"""`--discover BASE`: the priced operations of BASE/openapi.json (x-payment-info)."""

from __future__ import annotations

import aiohttp

__all__ = ["discover_targets"]


async def discover_targets(base: str) -> list[tuple[str, str, bytes | None]]:
    base = base.rstrip("/")
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/openapi.json") as resp:
            if resp.status != 200:
                raise SystemExit(f"mpp-conformance: {base}/openapi.json answered HTTP {resp.status}")
            doc = await resp.json(content_type=None)
    targets = []
    for path, ops in (doc.get("paths") or {}).items():
        if "{" in path:
            continue  # templated paths need values we do not have
        for method, op in (ops or {}).items():
            if isinstance(op, dict) and "x-payment-info" in op:
                body = b"{}" if method.upper() in ("POST", "PUT", "PATCH") else None
                targets.append((base + path, method.upper(), body))
    return targets
