"""Shared fixtures: an initialised MPP home, and a real `mpp seller serve` process on loopback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from mpp.cli.config import init_home, load_seller_config, load_wallet, read_secret
# Before any test module imports eth-account: mpp.methods.evm imports it keeping the interpreter's
# recursion limit, which eth-account's py_ecc would raise to 100,000 (see mpp/methods/evm/__init__.py);
# a worker that imported it bare would then crash on the deep-JSON tests instead of refusing.
import mpp.methods.evm  # noqa: E402,F401

# Property tests (tests/test_properties*.py) run a fixed, reproducible budget inside `make test`;
# HYPOTHESIS_PROFILE=long explores more, with fresh randomness each run.
settings.register_profile("mpp", max_examples=150, derandomize=True, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "mpp"))

REPO = Path(__file__).resolve().parent.parent
READY = re.compile(r"mpp seller ready on (http://\S+)")


def owning_home(path: Path) -> Path:
    """`mpp init` output (seller.toml, agent/ wallet, funded ledger.db) whose agent key is also an
    owner of acct:buyer, so that it may pay on its own signature: what the tests of the bare
    Payment scheme (no identity extension) pay with. `mpp init` itself enrols the agent as
    mandate-bound only (LEDGER-ACCT-01); the tests of that use :func:`mpp_init_home`."""
    from mpp.cli.config import BUYER_ACCOUNT
    from mpp.ledger import SqliteLedger

    init_home(path)
    ledger = SqliteLedger(str(path / "ledger.db"))
    try:
        ledger.keys.allow(BUYER_ACCOUNT, load_wallet(path / "agent").key.did, "owner")
    finally:
        ledger.close()
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An `mpp init` home whose agent may also pay bare (see owning_home)."""
    return owning_home(tmp_path / "home")


@pytest.fixture
def mpp_init_home(tmp_path: Path) -> Path:
    """Exactly what `mpp init` makes: the principal owns acct:buyer, the agent is mandate-bound."""
    init_home(tmp_path / "home")
    return tmp_path / "home"


@dataclass
class ServedSeller:
    url: str
    home: Path
    process: subprocess.Popen

    @property
    def config(self):
        return load_seller_config(self.home / "seller.toml")

    @property
    def wallet(self):
        return load_wallet(self.home / "agent")

    @property
    def secret(self) -> bytes:
        return read_secret(self.home / "seller" / "hmac.secret")

    def ledger(self):
        from mpp.ledger import SqliteLedger

        return SqliteLedger(str(self.home / "ledger.db"))


def refused_in_one_line(result: subprocess.CompletedProcess[str]) -> str:
    """A seller that refused to start: exit 2, no traceback, never ready, one line on stderr (returned)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "ready" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def start_seller(home: Path, *extra: str, timeout: float = 20.0) -> ServedSeller:
    """Start `mpp seller serve` on a free loopback port and wait for its ready line."""
    cmd = [sys.executable, "-m", "mpp.cli.main", "seller", "serve", "--config", str(home / "seller.toml"), "--host", "127.0.0.1", "--port", "0", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = READY.search(line)
        if m:
            return ServedSeller(m.group(1), home, proc)
    proc.kill()
    _, err = proc.communicate(timeout=5)
    raise RuntimeError(f"seller did not start: {err}")


def stop_seller(seller: ServedSeller) -> str:
    seller.process.send_signal(signal.SIGTERM)
    try:
        _, err = seller.process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        seller.process.kill()
        _, err = seller.process.communicate()
    return err


# The seller adapters every test of a served seller runs against: aiohttp (`mpp seller serve`) and
# ASGI (`mpp seller serve --asgi`: Starlette under uvicorn), the same engine behind both.
ADAPTERS = {"aiohttp": (), "asgi": ("--asgi",)}


@pytest.fixture(params=sorted(ADAPTERS))
def adapter(request) -> str:
    return request.param


@pytest.fixture
def served(home: Path, adapter: str):
    seller = start_seller(home, *ADAPTERS[adapter])
    try:
        yield seller
    finally:
        err = stop_seller(seller)
        # A traceback in the seller's log means some input reached an unhandled path.
        assert "Traceback" not in err, err


# -- PostgreSQL ----------------------------------------------------------------------------
# One throwaway server for the whole run (mpp.stores.pg.server: as the postgres user when root, data
# in a temporary folder, loopback port); every test that asks for `pg_url` gets a fresh,
# empty database on it. Nothing is skipped: if PostgreSQL is missing or does not start, the
# tests that need it error with PostgresUnavailable's message (and the server log's tail).


@pytest.fixture(scope="session")
def pg_server():
    from mpp.stores.pg.server import throwaway_postgres

    with throwaway_postgres() as url:
        yield url


@pytest.fixture
def pg_url(pg_server: str) -> str:
    """postgresql://postgres@127.0.0.1:PORT/<fresh database>"""
    from mpp.stores.pg.server import create_database

    return create_database(pg_server)


# -- A local EVM chain ---------------------------------------------------------------------
# One throwaway chain for the whole run (mpp.methods.evm.devchain: Foundry's anvil on a loopback
# port it picks, the test token deployed). Nothing is skipped: if anvil is missing (`make anvil`)
# or does not start, the tests that need it error with ChainUnavailable's message.


@pytest.fixture(scope="session")
def chain():
    """The session's DevChain: rpc_url, chain_id, token, eip712_domain, new_payer(), balance_of()."""
    from mpp.methods.evm.devchain import throwaway_chain

    with throwaway_chain() as dev:
        yield dev
