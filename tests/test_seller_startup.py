"""Start-up validation of `mpp seller serve` (issue 17, finding 2; CORE-ERR-14): a mistyped ledger
file, a recipient account the ledger lacks and a trusted principal that is not a did:key are each
refused before serving, with a one-line message naming the fix and a non-zero exit; with
``create_ledger = true`` a new ledger is made with the recipient account."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mpp.cli.config import init_home, load_seller_config
from mpp.cli.serve import rail_for
from mpp.ledger import SqliteLedger

from conftest import REPO, refused_in_one_line


def _serve(home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mpp.cli.main", "seller", "serve", "--config", str(home / "seller.toml"),
                           "--port", "0"], capture_output=True, text=True, cwd=REPO, timeout=60)


def _edit(home: Path, old: str, new: str) -> None:
    toml = home / "seller.toml"
    text = toml.read_text()
    assert old in text
    toml.write_text(text.replace(old, new))


def test_mistyped_ledger_file_is_refused_and_not_created(tmp_path: Path):
    """issue 17, finding 2: `ledger = "ledgr.db"` (no such file) refuses to start, naming the file,
    the key and `create_ledger = true`; no empty ledger is left behind."""
    home = tmp_path / "home"
    init_home(home)
    _edit(home, 'ledger = "ledger.db"', 'ledger = "ledgr.db"')
    line = refused_in_one_line(_serve(home))
    assert "ledgr.db" in line and "`ledger`" in line and "create_ledger = true" in line
    assert not (home / "ledgr.db").exists()


def test_create_ledger_makes_the_ledger_with_the_recipient(tmp_path: Path):
    """issue 17, finding 2: with `create_ledger = true` the new ledger is made, holding the recipient."""
    home = tmp_path / "home"
    init_home(home)
    _edit(home, 'ledger = "ledger.db"', 'ledger = "fresh.db"\ncreate_ledger = true')
    rail, ledger = rail_for(load_seller_config(home / "seller.toml"))
    assert ledger is not None
    try:
        assert [a.id for a in ledger.accounts()] == ["acct:seller"]
    finally:
        ledger.close()


def test_missing_recipient_account_is_refused(tmp_path: Path):
    """issue 17, finding 2: a recipient account the ledger lacks refuses to start, naming the account
    and `mpp ledger account create`."""
    home = tmp_path / "home"
    init_home(home)
    _edit(home, 'recipient = "acct:seller"', 'recipient = "acct:sellr"')
    line = refused_in_one_line(_serve(home))
    assert "acct:sellr" in line and "mpp ledger account create acct:sellr --currency usd" in line
    ledger = SqliteLedger(str(home / "ledger.db"))
    try:
        assert "acct:sellr" not in [a.id for a in ledger.accounts()]
    finally:
        ledger.close()


def test_trusted_principal_that_is_not_a_did_key_is_refused(tmp_path: Path):
    """issue 17, finding 2: a trusted_principals entry that does not parse refuses to start, naming it."""
    home = tmp_path / "home"
    init_home(home)
    toml = home / "seller.toml"
    text = toml.read_text()
    start = text.index("trusted_principals = [")
    end = text.index("\n", start)
    toml.write_text(text[:start] + 'trusted_principals = ["did:key:zNotAKey"]' + text[end:])
    line = refused_in_one_line(_serve(home))
    assert "trusted_principals" in line and "did:key:zNotAKey" in line


def test_missing_recipient_account_on_postgresql_is_refused_or_made(tmp_path: Path, pg_url: str):
    """issue 17, finding 2, on PostgreSQL: a ledger database without the recipient account refuses
    to start, naming the account and `mpp ledger account create ... --ledger URL` (not the URL);
    `create_ledger = true` makes the account instead, and the check then passes."""
    from mpp.cli.serve import check_embedded_ledger
    from mpp.connect import open_ledger

    home = tmp_path / "home"
    init_home(home)
    _edit(home, 'ledger = "ledger.db"', f'ledger = "{pg_url}"')
    result = _serve(home)
    line = refused_in_one_line(result)
    assert "acct:seller" in line and "PostgreSQL ledger" in line and "mpp ledger account create acct:seller" in line
    assert "--ledger URL" in line and pg_url not in result.stderr

    _edit(home, f'ledger = "{pg_url}"', f'ledger = "{pg_url}"\ncreate_ledger = true')
    check_embedded_ledger(load_seller_config(home / "seller.toml"))

    async def accounts() -> list[str]:
        ledger = await open_ledger(pg_url)
        try:
            return [a.id for a in await ledger.accounts()]
        finally:
            await ledger.close()

    import asyncio
    assert asyncio.run(accounts()) == ["acct:seller"]
    _edit(home, "\ncreate_ledger = true", "")
    check_embedded_ledger(load_seller_config(home / "seller.toml"))  # the account is there now: no refusal
