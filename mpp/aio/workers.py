"""Several seller processes on one listening socket (pre-fork), sharing their stores.

The parent binds the socket, forks ``workers`` children, and each child builds its own
application (its own database connections: nothing is shared across ``fork`` but the socket)
and accepts on it; the kernel spreads connections among them. Challenges are stateless
(HMAC), so any worker verifies any challenge; consuming one is a transaction in the shared
store, so exactly one worker ever settles it.

The parent forwards SIGINT/SIGTERM to the children and waits for them, and SIGHUP (reload the
price list) to every child, which reloads it if its app has a ``RELOAD_KEY`` callable; if a child dies on
its own, the parent stops the others and exits non-zero, so a supervisor sees the failure.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from typing import Awaitable, Callable

from aiohttp import web

__all__ = ["WORKER_HEADER", "RELOAD_KEY", "bind", "serve_forked", "on_reload_signal"]

WORKER_HEADER = "MPP-Worker"
"""Which worker answered (an index, never a pid): lets tests see the spread."""
RELOAD_KEY = web.AppKey("mpp_reload", object)
"""A callable run on SIGHUP (the price list reload)"""


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening, non-blocking TCP socket on ``host``:``port`` (IPv6 when ``host`` has a colon), with
    SO_REUSEADDR: bound once, before any worker forks, and shared by the workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # inherited by every accepted connection: a response's head and body, written apart (as uvicorn
    # does), are not held back by Nagle's algorithm for the peer's delayed ACK (40 ms a request)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def _tag(index: int):
    @web.middleware
    async def tag(request: web.Request, handler):
        response = await handler(request)
        response.headers[WORKER_HEADER] = str(index)
        return response

    return tag


async def _child(make_app: Callable[[], web.Application], sock: socket.socket, index: int, runner_kwargs: dict,
                 ready_fd: int | None = None) -> None:
    app = make_app()
    app.middlewares.insert(0, _tag(index))
    runner = web.AppRunner(app, access_log=None, **runner_kwargs)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    on_reload_signal(app)
    if ready_fd is not None:  # serving, and SIGHUP now reloads: tell the parent
        os.write(ready_fd, b".")
        os.close(ready_fd)
    await stop.wait()
    await runner.cleanup()


def on_reload_signal(app: web.Application) -> None:
    """SIGHUP runs the app's RELOAD_KEY callable (if any) on the running loop; else it is ignored."""
    reload = app.get(RELOAD_KEY)
    loop = asyncio.get_running_loop()
    if callable(reload):
        loop.add_signal_handler(signal.SIGHUP, reload)
    else:
        loop.add_signal_handler(signal.SIGHUP, lambda: None)


def serve_forked(make_app: Callable[[], web.Application] | None, sock: socket.socket, workers: int, *,
                 runner_kwargs: dict | None = None, on_ready: Callable[[], None] | None = None,
                 child: Callable[[socket.socket, int, int | None], Awaitable[None]] | None = None) -> int:
    """Run ``workers`` processes on ``sock`` until SIGINT/SIGTERM; the exit status for the CLI.
    Each serves the aiohttp application ``make_app`` builds, or runs ``child(sock, index,
    ready_fd)`` (another server on the same socket; it writes a byte to ``ready_fd`` once serving)."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if child is None:
        assert make_app is not None, "serve_forked needs make_app or child"

        def child(sock: socket.socket, index: int, ready_fd: int | None) -> Awaitable[None]:
            return _child(make_app, sock, index, runner_kwargs or {}, ready_fd)
    children: dict[int, int] = {}
    ready_r, ready_w = os.pipe()  # each child writes one byte once it serves: "ready" means every worker is
    for index in range(workers):
        pid = os.fork()
        if pid == 0:  # the child: its own event loop and connections, then exit without parent cleanup
            code = 0
            try:
                os.close(ready_r)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the child's loop handles it (a reload)
                asyncio.run(child(sock, index, ready_w))
            except BaseException as exc:  # noqa: BLE001 - reported, then the parent sees the status
                print(f"mpp: worker {index} failed: {exc}", file=sys.stderr, flush=True)
                code = 1
            finally:
                sys.stdout.flush()
                os._exit(code)
        children[pid] = index
    sock.close()
    stopping = False

    def forward(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def forward_reload(signum, _frame) -> None:
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGHUP, forward_reload)
    os.close(ready_w)
    started = 0
    with os.fdopen(ready_r, "rb", buffering=0) as ready:
        while started < workers:
            byte = ready.read(1)  # b"" once every child has either reported or died
            if not byte:
                break
            started += 1
    if on_ready is not None and started == workers:
        on_ready()
    status = 0
    while children:
        try:
            pid, raw = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid, None)
        code = os.waitstatus_to_exitcode(raw)
        if not stopping:
            print(f"mpp: worker {index} exited ({code}); stopping the others", file=sys.stderr, flush=True)
            status = 1
            forward(signal.SIGTERM, None)
    return status
