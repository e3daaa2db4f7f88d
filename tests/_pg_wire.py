"""A loopback TCP proxy in front of PostgreSQL that counts round trips: every message a client
sends that makes it wait for the server's answer (Sync and Query, and Flush, in the frontend
protocol) is one. The stores and ledger under test connect through it, so what is counted is
what really went over the wire, not a count of calls."""

from __future__ import annotations

import asyncio
import struct
from collections import Counter
from urllib.parse import urlsplit, urlunsplit

__all__ = ["WireCounter"]

_UNTYPED = {80877103, 80877104, 80877102}  # SSLRequest, GSSENCRequest, CancelRequest: before the startup message
_WAITS = {b"S", b"Q", b"H"}  # Sync, Query, Flush: the client waits for the server after each


class WireCounter:
    """``async with WireCounter(url) as wire``: ``wire.url`` reaches the same database through the
    proxy; ``wire.take()`` returns the round trips counted since the last take (by message type)."""

    def __init__(self, url: str) -> None:
        self.target = urlsplit(url)
        self.counts: Counter = Counter()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self.url = ""

    async def __aenter__(self) -> "WireCounter":
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        netloc = self.target.netloc.rsplit("@", 1)
        userinfo = netloc[0] + "@" if len(netloc) == 2 else ""
        self.url = urlunsplit((self.target.scheme, f"{userinfo}127.0.0.1:{port}", self.target.path,
                               "sslmode=disable", ""))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def take(self) -> int:
        total = sum(self.counts.values())
        self.counts.clear()
        return total

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.target.hostname, self.target.port)
        tasks = {asyncio.create_task(self._frontend(reader, up_writer)), asyncio.create_task(self._pump(up_reader, writer))}
        self._tasks |= tasks
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            self._tasks -= tasks
            writer.close()
            up_writer.close()

    async def _frontend(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started = False
        while True:
            if not started:
                head = await reader.readexactly(4)
                (length,) = struct.unpack("!I", head)
                body = await reader.readexactly(length - 4)
                code = struct.unpack("!I", body[:4])[0]
                started = code not in _UNTYPED
                writer.write(head + body)
            else:
                kind = await reader.readexactly(1)
                head = await reader.readexactly(4)
                (length,) = struct.unpack("!I", head)
                body = await reader.readexactly(length - 4)
                if kind in _WAITS:
                    self.counts[kind.decode()] += 1
                writer.write(kind + head + body)
            await writer.drain()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
