"""The throwaway PostgreSQL used by the tests and benchmarks (mpp.stores.pg.server): it starts, says
clearly why when it cannot, and leaves nothing behind."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from mpp.stores.pg import server as pgserver
from mpp.stores.pg.server import PostgresUnavailable, throwaway_postgres


def _leftovers() -> set[str]:
    return {p.name for p in Path("/tmp").glob("mpp-pg-*")}


def test_missing_postgres_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(pgserver.shutil, "which", lambda name: None)
    monkeypatch.setattr(pgserver.glob, "glob", lambda pattern: [])
    with pytest.raises(PostgresUnavailable, match=r"initdb.*apt-get install"):
        with throwaway_postgres():
            pass


def test_a_server_that_cannot_start_says_why_and_leaves_nothing():
    before = _leftovers()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PostgresUnavailable) as failed:
            with throwaway_postgres(port=port):
                pass
    message = str(failed.value)
    assert f"did not start on 127.0.0.1:{port}" in message and "last lines" in message
    assert "could not bind" in message or "Address already in use" in message, message
    assert _leftovers() <= before


def test_cli_prints_a_url_and_cleans_up_on_sigterm():
    before = _leftovers()
    proc = subprocess.Popen([sys.executable, "-m", "mpp.stores.pg.server", "--database"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("postgresql://postgres@127.0.0.1:") and url.rsplit("/", 1)[1].startswith("t_"), url
        import asyncio

        import asyncpg

        async def ask() -> int:
            conn = await asyncpg.connect(url)
            try:
                return await conn.fetchval("SELECT 41 + 1")
            finally:
                await conn.close()

        assert asyncio.run(ask()) == 42
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert _leftovers() <= before
