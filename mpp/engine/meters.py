"""What a metered handler reports its usage to (spec/intents/session.md).

A handler of a metered route reports what it used through its meter; a streaming one charges
each chunk before sending it, as server-sent events through the adapter's stream (a
:class:`StreamSink`). The same handler serves a buyer that paid by ``charge``: its meter only
checks the units against what the charge covered.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from mpp.engine.core import SessionCall
from mpp.intents.session import SessionClosed, SessionInsufficient
from mpp.pricing.prices import Metered
from mpp.stores.sessions import SessionState

__all__ = ["VoucherDesk", "StreamSink", "StreamStopped", "Meter", "ChargeMeter", "SessionMeter", "usage_route"]


class VoucherDesk(Protocol):
    """What a session meter needs of the engine's session desk (:class:`~mpp.engine.sessions.SessionDesk`)."""

    store: Any
    engine: Any
    voucher_timeout: float

    async def wait_for_voucher(self, session_id: str, timeout: float) -> None:
        """Return when a voucher for the session arrives, or after ``timeout`` seconds, whichever is first; a
        timeout raises nothing (the caller tries the session again)."""

    def request_receipt(self, call: SessionCall, state: SessionState, metered: Metered, request_id: str, amount: int,
                        units: int) -> str:
        """The ``Payment-Receipt`` value for one request's use of the session: ``amount`` base units for
        ``units`` units, with the session's authorized, spent and remaining after it, its JWS signed by the
        seller's receipt key."""


class StreamStopped(Exception):
    """The buyer did not send the next voucher in time; the stream has been ended cleanly."""


class StreamSink(Protocol):
    """The adapter's streamed response: begun once with its headers, written to, ended."""

    async def start(self, headers: dict[str, str]) -> Any:
        """Send the status and headers; the framework's response object."""

    async def write(self, data: bytes) -> None:
        """Send a piece of the body now."""

    async def end(self) -> Any:
        """End the body; the framework's response object, for the handler to return."""


@dataclass
class Meter:
    """What a metered handler reports its usage to."""

    metered: Metered
    resource: str  # what the receipt names: method, path and query
    units: int = 0
    response: Any = None  # the streamed response, once started
    sink: StreamSink | None = None  # set by the adapter before the handler runs

    def report(self, units: int) -> None:
        """Add ``units`` of use by this (non-streaming) request; at most ``max_units`` in all."""
        if not isinstance(units, int) or isinstance(units, bool) or units < 0:
            raise ValueError("units must be a non-negative integer")
        if self.units + units > self.metered.max_units:
            raise ValueError(f"a request of this route may use at most {self.metered.max_units} {self.metered.unit}")
        self.units += units

    async def start(self, request: Any = None, *, headers: dict[str, str] | None = None) -> Any:
        """Begin a server-sent events response (``request`` is accepted for the aiohttp style
        ``await meter.start(request)``; the stream is the one the adapter gave this meter)."""
        if self.sink is None:
            raise RuntimeError("this meter has no stream: the adapter serving it does not stream")
        self.response = await self.sink.start({"Content-Type": "text/event-stream", "Cache-Control": "private, no-cache",
                                               **(headers or {})})
        return self.response

    async def _event(self, event: str | None, data: str) -> None:
        assert self.sink is not None and self.response is not None, "call start() first"
        lines = [f"event: {event}"] if event else []
        lines += [f"data: {line}" for line in data.split("\n")]
        await self.sink.write(("\n".join(lines) + "\n\n").encode())

    async def send(self, data: str, *, units: int, event: str | None = None) -> None:
        """Charge ``units``, then send ``data`` as one event."""
        raise NotImplementedError

    async def finish(self) -> Any:
        """End the stream; return what this gives back from the handler."""
        raise NotImplementedError

    async def stop(self) -> Any:
        """End the stream where it stands (after StreamStopped); return it from the handler."""
        assert self.sink is not None
        return await self.sink.end()


@dataclass
class ChargeMeter(Meter):
    """The route was paid by ``charge``: the price covered ``max_units``, and that is all."""

    async def send(self, data: str, *, units: int, event: str | None = None) -> None:
        """Send ``data`` if the charge still covers ``units`` more; else say so and stop."""
        if self.units + units > self.metered.max_units:
            await self._event("payment-exhausted", json.dumps({"units": self.units, "maxUnits": self.metered.max_units}))
            raise StreamStopped("the charge covered no more units")
        self.units += units
        await self._event(event, data)

    async def finish(self) -> Any:
        """End the stream."""
        return await self.stop()


@dataclass
class SessionMeter(Meter):
    """The route is paid from a session: each report or chunk is committed against it."""

    desk: VoucherDesk | None = None
    state: SessionState | None = None
    call: SessionCall | None = None
    request_id: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    charged: int = 0  # base units committed for this request so far

    async def send(self, data: str, *, units: int, event: str | None = None) -> None:
        """Charge ``units`` and then send ``data``; when the session's accepted value is short,
        ask for a voucher in-band and wait for it, instead of failing the stream."""
        assert self.desk is not None and self.state is not None
        if not isinstance(units, int) or isinstance(units, bool) or units < 0:
            raise ValueError("units must be a non-negative integer")
        amount = self.metered.cost(self.units + units) - self.charged
        deadline = time.monotonic() + self.desk.voucher_timeout
        asked = False
        while True:
            try:
                self.state = await self.desk.store.commit(
                    self.state.session_id, self.request_id, resource=usage_route(self.resource), unit_price=self.metered.price,
                    per=self.metered.per, units=units, amount=amount, now=self.desk.engine.config.clock())
                break
            except SessionClosed:  # closed while streaming: stop, with a receipt for what was sent
                await self._send_receipt()
                raise StreamStopped("the session was closed") from None
            except SessionInsufficient as short:
                if not asked:
                    await self._event("payment-required", json.dumps({k: short.extensions[k] for k in
                                                                      ("sessionId", "required", "authorized", "spent", "cap")}))
                    asked = True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    await self._event("payment-timeout", json.dumps({"sessionId": self.state.session_id}))
                    await self._send_receipt()
                    raise StreamStopped("no voucher arrived in time") from None
                await self.desk.wait_for_voucher(self.state.session_id, min(remaining, 0.5))
        self.units += units
        self.charged += amount
        await self._event(event, data)

    async def _send_receipt(self) -> None:
        assert self.desk is not None and self.state is not None and self.call is not None
        header = self.desk.request_receipt(self.call, self.state, self.metered, self.request_id, self.charged, self.units)
        await self._event("payment-receipt", json.dumps({"receipt": header}))

    async def finish(self) -> Any:
        """The last event is the signed receipt for what the stream charged; then the end."""
        await self._send_receipt()
        return await self.stop()


def usage_route(resource: str) -> str:
    """A usage line is per route: the resource without its query."""
    return resource.partition("?")[0]
