"""The `mpp` command line, run as a subprocess (`python -m mpp.cli.main`) the way a user runs it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import mpp
from conftest import REPO, start_seller, stop_seller


def mpp_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mpp.cli.main", *args], capture_output=True, text=True, cwd=REPO, timeout=timeout)


def charges(home: Path) -> list:
    from mpp.ledger import SqliteLedger

    ledger = SqliteLedger(str(home / "ledger.db"))
    try:
        return [t for t in ledger.transfers() if t.kind == "charge"]
    finally:
        ledger.close()


def assert_one_line_error(result: subprocess.CompletedProcess[str], *, code: int | None = None) -> str:
    """A failure is one `mpp: ...` line on stderr, a non-zero exit, and never a traceback."""
    assert result.returncode != 0, result
    if code is not None:
        assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mpp: "), result.stderr
    return lines[0]


def test_help_mentions_exit_codes():
    """`mpp --help` and `mpp fetch --help` document the exit codes."""
    top = mpp_cli("--help")
    assert top.returncode == 0
    assert "exit codes" in top.stdout
    fetch = mpp_cli("fetch", "--help")
    assert fetch.returncode == 0
    assert "exit codes" in fetch.stdout
    for code in "0123456":
        assert f"  {code}  " in fetch.stdout


def test_init_then_fetch_pays_and_prints_receipt(tmp_path: Path):
    """CORE-BUY-04, CORE-RCPT-01: `mpp init` then `mpp fetch` against its seller prints the body on
    stdout and a verified receipt summary on stderr; the ledger shows the payment and sums to 0."""
    home = tmp_path / "cli-home"
    init = mpp_cli("init", str(home))
    assert init.returncode == 0, init.stderr
    assert "initialised" in init.stdout and (home / "agent" / "wallet.json").exists()
    again = mpp_cli("init", str(home))
    assert "already initialised" in assert_one_line_error(again, code=2)

    seller = start_seller(home)
    try:
        result = mpp_cli("fetch", "--wallet", str(home / "agent"), seller.url + "/weather")
        assert result.returncode == 0, result.stderr
        body = json.loads(result.stdout)
        assert body["result"]["city"] == "Lisbon" and body["paid"]["payer"] == "acct:buyer"
        [line] = [ln for ln in result.stderr.splitlines() if ln.startswith("receipt: ")]
        receipt = json.loads(line.removeprefix("receipt: "))
        assert receipt["verified"] is True
        assert (receipt["amount"], receipt["currency"], receipt["recipient"]) == ("25", "usd", "acct:seller")
        assert receipt["resource"] == "GET /weather" and receipt["issuer"] == "mpp.local"
        assert [t.id for t in charges(home)] == [receipt["reference"]] == [receipt["challengeId"]]

        posted = mpp_cli("fetch", "--wallet", str(home / "agent"), "--data", "summarize me",
                         "--header", "Idempotency-Key: cli-1", seller.url + "/summarize")
        assert posted.returncode == 0, posted.stderr
        assert json.loads(posted.stdout)["result"]["summary"] == "summarize me"
        assert len(charges(home)) == 2

        free = mpp_cli("fetch", "--wallet", str(home / "agent"), seller.url + "/openapi.json")
        assert free.returncode == 0 and "receipt:" not in free.stderr
        assert "/weather" in json.loads(free.stdout)["paths"]
    finally:
        err = stop_seller(seller)
        assert "Traceback" not in err, err

    balance = mpp_cli("ledger", "balance", "--ledger", str(home / "ledger.db"), "--json")
    assert balance.returncode == 0, balance.stderr
    doc = json.loads(balance.stdout)
    assert doc["accounts"]["acct:buyer"] == 100_000 - 25 - 250
    assert doc["accounts"]["acct:seller"] == 275
    assert doc["total"] == 0


def test_credential_only_prints_credential_and_moves_no_money(served):
    """CORE-CRED-01, CORE-CRED-03, CORE-BUY-01: --credential-only prints a parseable Payment
    credential for the current quote and does not send it."""
    result = mpp_cli("fetch", "--wallet", str(served.home / "agent"), "--credential-only", served.url + "/quote?symbol=ACME")
    assert result.returncode == 0, result.stderr
    value = result.stdout.strip()
    assert value.startswith("Payment ") and "\n" not in value
    credential = mpp.parse_credential(value)
    assert credential.challenge.method == "ledger"
    assert credential.challenge.opaque_json["resource"] == "GET /quote?symbol=ACME"
    assert mpp.ChargeRequest.from_challenge(credential.challenge).amount == "100"
    assert credential.payload["account"] == "acct:buyer" and credential.source == served.wallet.key.did
    assert charges(served.home) == []


def test_max_amount_refusal_exits_3_without_paying(served):
    """CORE-BUY-01: a quote above --max-amount (or the wallet's own limit) exits 3; nothing is signed or moved."""
    low = mpp_cli("fetch", "--wallet", str(served.home / "agent"), "--max-amount", "10", served.url + "/weather")
    assert low.returncode == 3, (low.returncode, low.stderr)
    assert "mpp: refused to pay (max-amount)" in low.stderr and "25" in low.stderr
    assert low.stdout == ""
    wallet_limit = mpp_cli("fetch", "--wallet", str(served.home / "agent"), served.url + "/premium-report")
    assert wallet_limit.returncode == 3 and "max-amount" in wallet_limit.stderr
    assert charges(served.home) == []


def test_fetch_refused_credential_exits_4(served):
    """CORE-ERR-06: a seller refusal (unauthorized wallet key) exits 4 with the problem document."""
    other = served.home.parent / "other"
    assert mpp_cli("init", str(other)).returncode == 0  # a key the served ledger does not know
    result = mpp_cli("fetch", "--wallet", str(other / "agent"), "--no-identity", served.url + "/weather")
    assert result.returncode == 4, (result.returncode, result.stderr)
    assert result.stderr.startswith("mpp: seller refused the credential: HTTP 402")
    problem = json.loads(result.stderr.split("\n", 1)[1])
    assert problem["type"] == mpp.PROBLEM_BASE + "verification-failed"
    assert "Traceback" not in result.stderr
    # with its mandate, the same wallet is refused earlier: its principal is not one the seller trusts
    result = mpp_cli("fetch", "--wallet", str(other / "agent"), served.url + "/weather")
    assert result.returncode == 4, (result.returncode, result.stderr)
    assert json.loads(result.stderr.split("\n", 1)[1])["type"] == mpp.EXTENSION_PROBLEM_BASE + "mandate-untrusted"
    assert charges(served.home) == []


def test_ledger_balance_and_check(home: Path):
    """LEDGER-03: `mpp ledger balance` lists accounts and a zero total; `check` passes; `fund` credits."""
    ledger = str(home / "ledger.db")
    result = mpp_cli("ledger", "balance", "--ledger", ledger)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1] for line in result.stdout.strip().splitlines()}
    assert rows["acct:buyer"] == "100000" and rows["acct:seller"] == "0" and rows["issuance:usd"] == "-100000"
    assert rows["(total)"] == "0"
    one = mpp_cli("ledger", "balance", "--ledger", ledger, "acct:buyer", "--json")
    assert json.loads(one.stdout) == {"accounts": {"acct:buyer": 100_000}, "total": 0}

    fund = mpp_cli("ledger", "fund", "--ledger", ledger, "acct:seller", "7")
    assert fund.returncode == 0 and "balance 7" in fund.stdout
    check = mpp_cli("ledger", "check", "--ledger", ledger)
    assert check.returncode == 0, check.stderr
    assert "consistent" in check.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_inputs_give_one_line_errors(home: Path, tmp_path: Path):
    """Errors are one `mpp: ...` line and a non-zero exit, never a traceback."""
    wallet = str(home / "agent")
    url = f"http://127.0.0.1:{_free_port()}/weather"
    assert "no wallet" in assert_one_line_error(mpp_cli("fetch", "--wallet", str(tmp_path / "nowhere"), url), code=2)
    assert "--header" in assert_one_line_error(mpp_cli("fetch", "--wallet", wallet, "--header", "NoColonHere", url), code=2)
    assert "request failed" in assert_one_line_error(mpp_cli("fetch", "--wallet", wallet, url), code=1)
    ledger = str(home / "ledger.db")
    assert "acct:nobody" in assert_one_line_error(mpp_cli("ledger", "fund", "--ledger", ledger, "acct:nobody", "5"), code=2)
    assert "no ledger" in assert_one_line_error(mpp_cli("ledger", "balance", "--ledger", str(tmp_path / "none.db")), code=2)
    assert "acct:nobody" in assert_one_line_error(mpp_cli("ledger", "balance", "--ledger", ledger, "acct:nobody"), code=2)
    assert "no such file" in assert_one_line_error(mpp_cli("seller", "serve", "--config", str(tmp_path / "none.toml"), "--port", "0"), code=2)


@pytest.mark.parametrize(
    "old, new, words",
    [
        ("amount = 25\n", "amount = -1\n", "amount"),
        ('currency = "usd"\n', 'currency = "USD"\n', "currency"),
        ('realm = "mpp.local"\n', 'realm = "mpp.local"\nbogus = 1\n', "bogus"),
        ("challenge_ttl = 300\n", "challenge_ttl = [\n", "TOML"),
    ],
)
def test_invalid_seller_config_is_one_line_error(home: Path, old: str, new: str, words: str):
    """An invalid seller.toml stops `mpp seller serve` with one line naming the problem."""
    config = home / "seller.toml"
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new, 1))
    line = assert_one_line_error(mpp_cli("seller", "serve", "--config", str(config), "--port", "0", timeout=20), code=2)
    assert words in line and str(config) in line
