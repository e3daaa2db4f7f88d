"""The buyer's wire, over any :class:`~mpp.purchase.exchange.Exchange`: a credential sent once, the
seller's JWKS fetched and cached, and the event hook awaited in order.

A credential goes only to the URL that issued the challenge, once: no redirects, no silent
resend; a 5xx or a network error after sending it is OutcomeUnknown, never a retry, except a
503 ``seller-misconfigured``, which says nothing was consumed or moved: SellerFault (CORE-BUY-11).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping, Sequence

from mpp.buyer.core import origin_of
from mpp.purchase.exchange import Exchange, PaidResponse, TransportError
from mpp.protocol.errors import DETAIL_MAX, EXTENSION_PROBLEM_BASE, OutcomeUnknown, ParseError, ReceiptInvalid, SellerFault, SellerMisconfigured, clip
from mpp.protocol.wire import loads_strict

__all__ = ["BuyerWire", "Event", "JWKS_PATH", "close_stream", "json_object", "problem_of", "seller_fault", "problem_words",
           "maybe_await"]

JWKS_PATH = "/.well-known/jwks.json"
"""Where a seller publishes the keys that sign its receipts; the buyer fetches it from the seller's origin
to verify a receipt."""
Event = Callable[[str, dict[str, Any]], Awaitable[None] | None]
"""On_event: plain or async (an audit log's append)"""


class BuyerWire:
    """A client's wire: its exchange and its ``on_event`` hook (read at each call: a hook set later
    is heard), and its cache of seller JWKS by origin."""

    def __init__(self, client: Any, exchange: Exchange, jwks: dict[tuple[str, str, int], Mapping[str, Any]]) -> None:
        self._client = client
        self.exchange = exchange
        self._jwks = jwks

    async def emit(self, kind: str, **data: Any) -> None:
        """Tell the event hook; awaited before going on, so an audit log records each event before
        the next step runs."""
        if self._client.on_event is not None:
            await maybe_await(self._client.on_event(kind, data))

    async def send(self, method: str, url: str, authorization: str, data: bytes | None, headers: Mapping[str, str] | None,
                   challenge_id: str, keep_open: bool = False, omit_headers: Sequence[str] = (),
                   max_header_bytes: int | None = None) -> PaidResponse:
        """Send a credential once: no redirects, no silent resend; no usable answer is OutcomeUnknown."""
        hdrs = {**(headers or {}), "Authorization": authorization}
        try:
            # The credential goes only to the URL that issued the challenge, once: no redirects,
            # and no silent resend by the client's retry of idempotent requests on a dropped connection.
            paid = await self.exchange.send(method, url, data=data, headers=hdrs, follow_redirects=False, once=True,
                                            keep_open=keep_open, omit_headers=omit_headers, max_header_bytes=max_header_bytes)
        except TransportError as exc:
            await self.emit("refusal", challengeId=challenge_id, outcome="unknown", reason=str(exc))
            raise OutcomeUnknown(f"network error after sending the credential: {exc}", challenge_id) from exc
        if paid.status >= 500:
            problem = problem_of(paid)
            if paid.status == 503 and problem.get("type") == EXTENSION_PROBLEM_BASE + SellerMisconfigured.slug:
                await self.emit("refusal", challengeId=challenge_id, outcome="refused", status=paid.status,
                                reason="seller-misconfigured")
                raise seller_fault(paid, problem)
            await self.emit("refusal", challengeId=challenge_id, outcome="unknown", status=paid.status)
            said = problem_words(problem)
            raise OutcomeUnknown(f"seller answered {paid.status} after the credential was sent"
                                 + (f": {said}" if said else ""), challenge_id, status=paid.status, problem=problem)
        return paid

    async def jwks(self, url: str) -> Mapping[str, Any]:
        """The receipt keys of the seller at ``url``'s origin (fetched once, without redirects)."""
        origin = origin_of(url)
        cached = self._jwks.get(origin)
        if cached is not None:
            return cached
        scheme, host, port = origin
        jwks_url = f"{scheme}://{host}:{port}{JWKS_PATH}" if ":" not in host else f"{scheme}://[{host}]:{port}{JWKS_PATH}"
        try:
            resp = await self.exchange.send("GET", jwks_url)
            if resp.status != 200:
                raise ReceiptInvalid(f"seller JWKS answered HTTP {resp.status}")
            jwks = loads_strict(resp.body, "seller JWKS")
        except (TransportError, ValueError) as exc:
            raise ReceiptInvalid(f"could not fetch the seller's JWKS: {exc}") from exc
        if not isinstance(jwks, dict):
            raise ReceiptInvalid("seller JWKS is not a JSON object")
        self._jwks[origin] = jwks
        return jwks


def close_stream(paid: PaidResponse) -> None:
    """Close a kept-open event stream, if there is one."""
    if paid.stream is not None:
        paid.stream.close()
        paid.stream = None


def json_object(text: str | bytes) -> dict[str, Any]:
    """A JSON object the seller sent (problem document, payment event), strictly; {} otherwise."""
    try:
        doc = loads_strict(text, "seller's document")
    except ParseError:
        return {}
    return doc if isinstance(doc, dict) else {}


def problem_words(problem: Mapping[str, Any]) -> str:
    """The seller's ``title`` and ``detail`` as one line for a message ("" if it gave neither): its
    words, so each clipped and stripped of control characters (CORE-ERR-12), whatever it sent."""
    return "; ".join(clip(problem[k], DETAIL_MAX) for k in ("title", "detail") if isinstance(problem.get(k), str) and problem[k])


def seller_fault(paid: PaidResponse, problem: dict[str, Any]) -> SellerFault:
    """The buyer's error for a 503 ``seller-misconfigured`` (CORE-BUY-11): nothing was paid, the
    seller's words and its ``Retry-After`` carried."""
    said = problem_words(problem)
    raw = paid.headers.get("Retry-After", "")
    retry_after = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 9 else None
    wait = f"retry after {retry_after} s" if retry_after is not None else "retry later"
    return SellerFault(f"the seller cannot take payment because of its own configuration (503 seller-misconfigured)"
                       + (f": {said}" if said else "")
                       + f"; nothing was paid and the challenge was not used: {wait}, or tell the seller",
                       paid.status, problem, retry_after=retry_after)


def problem_of(resp: PaidResponse) -> dict[str, Any]:
    """The problem document in a response's body, or {}."""
    return json_object(resp.body)


async def maybe_await(value: Any) -> Any:
    """The value, awaited if it is awaitable (hooks may be plain or async)."""
    if hasattr(value, "__await__"):
        return await value
    return value
