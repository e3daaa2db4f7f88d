"""The command-line flows of issue 17, run as a user runs them against a real `mpp seller serve`:
a receipt kept with `mpp fetch --receipt-out` and verified with the seller's JWKS URL or a file;
an approval asked for, signed by `mpp approve` after it shows what it signs, and used by `mpp fetch
--approval` on the same challenge; what `mpp init` prints; the wallet paths a user mistypes; the
audit log of a principal's refusals."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mpp
from conftest import REPO, start_seller, stop_seller
from mpp.cli.main import main
from mpp.protocol.keys import SigningKey

IDENT = mpp.EXTENSION_PROBLEM_BASE


def run(*args: object, real: bool = False, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`mpp ARGS`: as a subprocess with ``real``, else through `main()` in this process."""
    argv = [str(a) for a in args]
    if real:
        return subprocess.run([sys.executable, "-m", "mpp.cli.main", *argv], capture_output=True, text=True, cwd=REPO,
                              timeout=timeout)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpp: "), result.stderr
    return lines[0]


def seller_balance(served) -> int:
    """acct:seller's balance in the served home's ledger (opened and closed here)."""
    ledger = served.ledger()
    try:
        return ledger.balance("acct:seller")
    finally:
        ledger.close()


@pytest.fixture
def seller(tmp_path: Path):
    """`mpp init` then `mpp seller serve` (aiohttp) on a free port; the home is ``seller.home``."""
    home = tmp_path / "home"
    assert run("init", home).returncode == 0
    served = start_seller(home)
    try:
        yield served
    finally:
        assert "Traceback" not in stop_seller(served)


def test_receipt_out_then_verify_with_the_sellers_url_or_a_file(seller, tmp_path: Path):
    """issue 17, finding 5 (CORE-RCPT-01): `mpp fetch --receipt-out FILE` writes the raw
    Payment-Receipt value, newline-terminated; `mpp receipt verify FILE --jwks URL` fetches the
    seller's /.well-known/jwks.json and verifies it, and so does --jwks with a file; a tampered
    receipt is `receipt INVALID`, exit 1; a missing file is named, exit 2."""
    home, receipt = seller.home, tmp_path / "receipt.txt"
    paid = run("fetch", "--wallet", home / "agent", "--receipt-out", receipt, seller.url + "/weather", real=True)
    assert paid.returncode == 0, paid.stderr
    text = receipt.read_text()
    assert text.endswith("\n") and text.count("\n") == 1 and not text.startswith("receipt:")
    url = seller.url + "/.well-known/jwks.json"
    verified = run("receipt", "verify", receipt, "--jwks", url)
    assert verified.returncode == 0, verified.stderr
    claims = json.loads(verified.stdout)["claims"]
    summary = json.loads([ln for ln in paid.stderr.splitlines() if ln.startswith("receipt: ")][0].removeprefix("receipt: "))
    assert (claims["challengeId"], claims["amount"], claims["iss"]) == (summary["challengeId"], "25", "mpp.local")

    jwks_file = tmp_path / "seller-jwks.json"
    with urllib.request.urlopen(url, timeout=10) as resp:
        jwks_file.write_bytes(resp.read())
    assert json.loads(run("receipt", "verify", receipt, "--jwks", jwks_file).stdout)["claims"] == claims

    # tamper with the signed receipt inside the header value: one flipped character of the JWS
    from mpp.protocol.headers import format_receipt, parse_receipt

    fields = parse_receipt(text.strip())
    head, body, sig = fields.receipt.split(".")
    forged = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    tampered = tmp_path / "tampered.txt"
    tampered.write_text(format_receipt(fields.model_copy(update={"receipt": f"{head}.{body}.{forged}"})) + "\n")
    assert "receipt INVALID" in one_line_error(run("receipt", "verify", tampered, "--jwks", url), 1)
    assert "no such file" in one_line_error(run("receipt", "verify", tmp_path / "nope.txt", "--jwks", url), 2)
    unreachable = run("receipt", "verify", receipt, "--jwks", "http://127.0.0.1:9/.well-known/jwks.json")
    assert "could not fetch the seller's JWKS" in one_line_error(unreachable, 2)


def test_approval_asked_signed_and_used_on_the_same_challenge(seller, tmp_path: Path):
    """issue 17, finding 4 (IDENT-APR-01, IDENT-APR-05, IDENT-APR-07): `mpp init`'s mandate asks an
    approval above 500, and its seller has /big-report at 750; `mpp fetch --problem-out` exits 7 and
    writes the problem with the quote; `mpp approve` shows amount, recipient, resource, seller and
    agent before it signs, refuses another agent and a quote whose hash is not the problem's; `mpp
    fetch --approval` retries that very challenge and is served with decision allow-with-approval."""
    home = seller.home
    wallet, key = home / "agent", home / "principal" / "principal.key"
    agent = json.loads((wallet / "wallet.json").read_text())["did"]
    url = seller.url + "/big-report"
    problem_file, approval_file = tmp_path / "problem.json", tmp_path / "approval.jwt"

    asked = run("fetch", "--wallet", wallet, "--problem-out", problem_file, url, real=True)
    assert asked.returncode == 7, asked.stderr
    line = one_line_error(asked, 7)
    assert "approval" in line and "mpp approve" in line and "--approval approval.jwt" in line
    problem = json.loads(problem_file.read_text())
    assert problem["type"] == IDENT + "approval-required" and problem["amount"] == "750"
    assert problem["quote"]["agent"] == agent and problem["quote"]["url"] == url
    assert seller_balance(seller) == 0

    # the approver sees what it signs; another agent is refused; a forged quote hash is refused
    other = run("approve", "--key", key, "--problem", problem_file, "--agent", SigningKey.generate().did)
    assert "not did:key:" in one_line_error(other, 2) or "another agent" in other.stderr
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({**problem, "quoteHash": "A" * 43}))
    assert "quoteHash" in one_line_error(run("approve", "--key", key, "--problem", forged), 2)
    garbage = tmp_path / "stderr.txt"
    garbage.write_text("mpp: seller refused the credential\n")
    assert "mpp fetch --problem-out" in one_line_error(run("approve", "--key", key, "--problem", garbage), 2)
    # a problem document without the quote (the seller's own body) is not signed blind
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({k: v for k, v in problem.items() if k != "quote"}))
    refused = one_line_error(run("approve", "--key", key, "--problem", bare, "--agent", agent), 2)
    assert "carries no quote" in refused and "--problem-out" in refused and "--without-quote" in refused
    blind = run("approve", "--key", key, "--problem", bare, "--agent", agent, "--without-quote")
    assert blind.returncode == 0 and "resource : unknown" in blind.stderr and "750 usd" in blind.stderr
    approved = run("approve", "--key", key, "--problem", problem_file, "--out", approval_file)
    assert approved.returncode == 0, approved.stderr
    for shown in ("750 usd", "acct:seller", "GET /big-report", "mpp.local at " + seller.url, agent):
        assert shown in approved.stderr, (shown, approved.stderr)
    claims = jwt.decode(approval_file.read_text().strip(), options={"verify_signature": False})
    assert (claims["sub"], claims["challengeId"]) == (agent, problem["challengeId"])

    paid = run("fetch", "--wallet", wallet, "--approval", approval_file, url, real=True)
    assert paid.returncode == 0, paid.stderr
    receipt = json.loads([ln for ln in paid.stderr.splitlines() if ln.startswith("receipt: ")][0].removeprefix("receipt: "))
    assert receipt["challengeId"] == problem["challengeId"]  # the same challenge, not a fresh one
    assert receipt["decision"] == "allow-with-approval" and receipt["approval"] == claims["jti"]
    assert seller_balance(seller) == 750
    # a quote whose challenge expired, or a file that is not ours, is dropped at the next save
    pending = wallet / "pending-approvals"
    (pending / "junk.json").write_text("not json")
    asked_again = run("fetch", "--wallet", wallet, "--problem-out", problem_file, url)
    assert asked_again.returncode == 7, asked_again.stderr
    assert not (pending / "junk.json").exists() and len(list(pending.glob("*.json"))) == 1
    # used up: the wallet no longer keeps that quote, and the command says what to do
    again = run("fetch", "--wallet", wallet, "--approval", approval_file, url)
    assert "--problem-out" in one_line_error(again, 2)


def test_init_prints_every_did_it_made(tmp_path: Path):
    """issue 17, finding 6: `mpp init` prints the principal's, the agent's and the seller's receipt
    key's DIDs, each labelled, which later commands (`mandate issue --subject`, `--trust`, `audit show
    --principal`) need."""
    home = tmp_path / "home"
    out = run("init", home).stdout
    principal = SigningKey.load(home / "principal" / "principal.key").did
    agent = SigningKey.load(home / "agent" / "agent.key").did
    receipts = SigningKey.load(home / "seller" / "receipt.key").did
    assert re.search(rf"principal\s*: {re.escape(principal)}", out), out
    assert re.search(rf"agent\s*: {re.escape(agent)}", out), out
    assert re.search(rf"receipt key\s*: {re.escape(receipts)}", out), out


def test_wallet_given_as_the_home_or_as_wallet_json(tmp_path: Path):
    """issue 17, finding 6: `--wallet home` (an `mpp init` home) says to use home/agent instead of
    "run `mpp init`"; `--wallet home/agent/wallet.json` is taken as its folder (it was `[Errno 20]
    Not a directory`)."""
    from mpp.cli.config import ConfigError, load_wallet

    home = tmp_path / "home"
    run("init", home)
    with pytest.raises(ConfigError, match=re.escape(f"use --wallet {home / 'agent'}")):
        load_wallet(home)
    assert load_wallet(home / "agent" / "wallet.json").key.did == load_wallet(home / "agent").key.did
    line = one_line_error(run("fetch", "--wallet", home, "http://127.0.0.1:9/weather"), 2)
    assert "is an MPP home, not a wallet" in line


def test_credential_only_ends_with_a_newline(seller):
    """issue 17, finding 12: `mpp fetch --credential-only` prints the Authorization value and a newline."""
    out = run("fetch", "--wallet", seller.home / "agent", "--credential-only", seller.url + "/weather", real=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Payment ") and out.stdout.endswith("\n") and out.stdout.count("\n") == 1


def test_audit_show_principal_includes_its_refusals(seller, tmp_path: Path):
    """issue 17, finding 12 (IDENT-AUD-01): a purchase the seller refused for want of an approval is in
    the seller's `mpp audit show --principal DID` (the refusal entry names the principal of the
    verified chain), not only in the unfiltered listing."""
    home = seller.home
    principal = SigningKey.load(home / "principal" / "principal.key").did
    asked = run("fetch", "--wallet", home / "agent", seller.url + "/big-report", real=True)
    assert asked.returncode == 7, asked.stderr
    rows = json.loads(run("audit", "show", "--log", home / "ledger.db", "--principal", principal, "--json").stdout)
    assert [(r["outcome"], r["resource"]) for r in rows] == [("refused", "GET /big-report")], rows
    assert "approval-required" in rows[0]["reason"]
    stranger = SigningKey.generate().did
    assert json.loads(run("audit", "show", "--log", home / "ledger.db", "--principal", stranger, "--json").stdout) == []


def test_fetch_help_documents_the_approval_exit_code():
    """issue 17, finding 4: exit 7 (approval required) is in `mpp fetch --help`'s list."""
    out = run("fetch", "--help").stdout
    assert re.search(r"^\s+7\s+the seller asks for the principal's approval", out, re.M), out


def test_postgresql_flow_of_the_readme(tmp_path: Path, pg_url: str):
    """issue 17, finding 3 (LEDGER-ACCT-01): the README's PostgreSQL block completes: on an empty
    PostgreSQL ledger `mpp ledger account create` makes the seller's and the buyer's accounts (the
    principal `mpp init` printed as owner), `mpp ledger allow` enrols the agent, `mpp ledger fund`
    funds the buyer (it said `no account 'acct:buyer'` before the accounts existed), and a seller
    whose ledger, store and audit log are that database sells to the agent."""
    home = tmp_path / "home"
    init = run("init", home).stdout
    principal = re.search(r"principal\s*: (did:key:\S+)", init).group(1)
    agent = re.search(r"agent\s*: (did:key:\S+)", init).group(1)
    assert "no account 'acct:buyer'" in one_line_error(run("ledger", "fund", "acct:buyer", "100000", "--ledger", pg_url), 2)
    for args in (("ledger", "account", "create", "acct:seller"),
                 ("ledger", "account", "create", "acct:buyer", "--owner", principal),
                 ("ledger", "allow", "acct:buyer", agent, "--as", "agent"),
                 ("ledger", "fund", "acct:buyer", "100000")):
        done = run(*args, "--ledger", pg_url)
        assert done.returncode == 0, (args, done.stderr)
    config = home / "seller.toml"
    text = config.read_text()
    for name in ("ledger", "store", "audit_log"):
        text = re.sub(rf'^{name} = .*$', f'{name} = "{pg_url}"', text, flags=re.M)
    config.write_text(text)
    served = start_seller(home)
    try:
        paid = run("fetch", "--wallet", home / "agent", served.url + "/weather", real=True)
        assert paid.returncode == 0, paid.stderr
    finally:
        assert "Traceback" not in stop_seller(served)
    assert re.search(r"^acct:seller +25 usd$", run("ledger", "balance", "--ledger", pg_url).stdout, re.M)
    assert run("audit", "verify", "--log", pg_url).stdout.startswith("audit log intact")


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=40),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                     max_leaves=8)


@given(quote=_json, text=st.text(max_size=300))
@settings(max_examples=150, deadline=None)
def test_approval_inputs_fail_only_with_a_message(quote, text):
    """issue 17, finding 4: the problem file `mpp approve` reads and the --approval value `mpp fetch`
    reads are untrusted input: any content is either accepted or refused with ValueError (a one-line
    message), never another exception."""
    from mpp.cli.approvals import describe_for_approver, read_approval

    problem = {"type": IDENT + "approval-required", "challengeId": "c", "quoteHash": "h", "amount": "1",
               "currency": "usd", "rule": "threshold", "mandate": "m", "quote": quote}
    for candidate in (problem, {**problem, "quote": {"challenge": text, "url": quote, "agent": quote}}):
        try:
            describe_for_approver(candidate)
        except ValueError:
            pass
    try:
        read_approval(text)
    except ValueError:
        pass
