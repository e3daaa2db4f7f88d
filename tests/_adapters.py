"""The two seller adapters side by side, for the seller tests that run against both: the seller
class of each, and an in-process server for an ASGI application shaped like aiohttp's TestServer
(``start_server``, ``make_url``, ``close``), so a test's world does not care which one it holds."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer

from yarl import URL

import mpp.aio
import mpp.asgi
from mpp.aio.workers import bind
from mpp.cli.config import load_seller_config
from mpp.cli.serve import build_seller_app
from mpp.cli.serve_asgi import build_seller_asgi, quiet_server

ADAPTERS = ("aiohttp", "asgi")
SELLERS = {"aiohttp": mpp.aio.Seller, "asgi": mpp.asgi.Seller}


class AsgiTestServer:
    """uvicorn on a free loopback port, in this event loop, with the application's lifespan."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.port = 0
        self._server = None
        self._task: asyncio.Task | None = None

    async def start_server(self, **_: Any) -> None:
        sock = bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self._server = quiet_server(self.app)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("the ASGI test server stopped before it started")
            await asyncio.sleep(0.01)

    def make_url(self, path: str) -> URL:
        return URL(f"http://127.0.0.1:{self.port}{path}")

    async def close(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task


def served_in_process(home: Path, adapter: str) -> tuple[TestServer | AsgiTestServer, Any]:
    """The seller of ``home``'s configuration (`mpp seller serve`'s application) on an in-process
    server of ``adapter``, not yet started; and the seller."""
    config = load_seller_config(home / "seller.toml")
    if adapter == "asgi":
        app, seller, _ = build_seller_asgi(config)
        return AsgiTestServer(app), seller
    app, seller = build_seller_app(config)
    return TestServer(app, host="127.0.0.1"), seller
