"""The identity commands of the `mpp` CLI end to end, run as a subprocess the way a user runs them:
principal and agent keys, mandates and delegation, paying with identity, approvals, revocation,
offline receipt verification and the audit log."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import mpp
from conftest import REPO
from mpp.cli.main import main
from mpp.protocol.keys import SigningKey, did_from_public_key

IDENT = mpp.EXTENSION_PROBLEM_BASE


@pytest.fixture
def home(mpp_init_home: Path) -> Path:
    """Here the home is exactly what `mpp init` makes: the agent is mandate-bound."""
    return mpp_init_home


def mpp_cli(*args: object, real: bool = False, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run `mpp ARGS`. With ``real`` as a subprocess (`python -m mpp.cli.main`), exactly as a user does;
    otherwise through the same `main()` in this process with stdout and stderr captured, which
    saves the interpreter start-up of each of the many offline commands below."""
    argv = [str(a) for a in args]
    if real:
        return subprocess.run([sys.executable, "-m", "mpp.cli.main", *argv], capture_output=True, text=True, cwd=REPO, timeout=timeout)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def ok(*args: object, real: bool = False) -> subprocess.CompletedProcess[str]:
    result = mpp_cli(*args, real=real)
    assert result.returncode == 0, (args, result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    return result


def one_line_error(result: subprocess.CompletedProcess[str], *, code: int | None = None) -> str:
    """A failure is one `mpp: ...` line on stderr, a non-zero exit, and never a traceback."""
    assert result.returncode != 0, result
    if code is not None:
        assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpp: "), result.stderr
    return lines[0]


def refusal(result: subprocess.CompletedProcess[str]) -> dict:
    """`mpp fetch` refused by the seller: exit 4, one `mpp:` line, then the problem document."""
    assert result.returncode == 4, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    stderr = "".join(ln for ln in result.stderr.splitlines(keepends=True) if not ln.startswith("approving: "))
    first, _, rest = stderr.partition("\n")
    assert first.startswith("mpp: seller refused the credential"), result.stderr
    return json.loads(rest)


def receipt_line(result: subprocess.CompletedProcess[str]) -> dict:
    [line] = [ln for ln in result.stderr.splitlines() if ln.startswith("receipt: ")]
    return json.loads(line.removeprefix("receipt: "))


def new_agent(directory: Path, *extra: str) -> str:
    """`mpp agent init`; returns the printed DID."""
    out = ok("agent", "init", directory, "--account", "acct:buyer", *extra).stdout
    assert out.startswith("agent did:key:z")
    return out.split()[1]


def root_mandate(home: Path, subject: str, out: Path, *extra: str) -> str:
    """`mpp mandate issue` signed by the home's principal for ``subject``; returns the new jti."""
    result = ok("mandate", "issue", "--issuer", home / "principal" / "principal.key", "--subject", subject,
                "--audience", "mpp.local", "--out", out, *extra)
    assert f"wrote {out}: 1 link(s)" in result.stdout
    return jwt.decode(json.loads(out.read_text())["mandates"][-1], options={"verify_signature": False})["jti"]


def principal_did(home: Path) -> str:
    return SigningKey.load(home / "principal" / "principal.key").did


def charges(home: Path) -> list:
    from mpp.ledger import SqliteLedger

    ledger = SqliteLedger(str(home / "ledger.db"))
    try:
        return [t for t in ledger.transfers() if t.kind == "charge"]
    finally:
        ledger.close()


def _did_of_jwk(jwk: dict) -> str:
    x = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
    return did_from_public_key(Ed25519PublicKey.from_public_bytes(x))


def test_principal_init_writes_key_and_jwks(tmp_path: Path):
    """IDENT-KEY-01, IDENT-KEY-04: `mpp principal init` writes a private key and a JWKS whose single
    OKP/Ed25519 key derives (from x) to the printed did:key; it never overwrites an existing key."""
    directory = tmp_path / "alice"
    result = ok("principal", "init", directory, real=True)
    did = result.stdout.splitlines()[0].removeprefix("principal ")
    assert did.startswith("did:key:z6Mk")
    key = SigningKey.load(directory / "principal.key")
    assert key.did == did
    jwks = json.loads((directory / "jwks.json").read_text())
    [jwk] = jwks["keys"]
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
    assert "d" not in jwk and "PRIVATE" not in result.stdout
    assert _did_of_jwk(jwk) == did

    pem = (directory / "principal.key").read_bytes()
    again = mpp_cli("principal", "init", directory, real=True)
    assert "refusing to overwrite" in one_line_error(again, code=2)
    assert (directory / "principal.key").read_bytes() == pem  # the old key survives

    agent_dir = tmp_path / "bot"
    new_agent(agent_dir)
    assert "refusing to overwrite" in one_line_error(mpp_cli("agent", "init", agent_dir, "--account", "acct:buyer"), code=2)


def test_mandate_issue_show_and_delegation(home: Path, tmp_path: Path):
    """IDENT-MDT-01, IDENT-DLG-01, IDENT-DLG-02, IDENT-DLG-06: a root mandate from the principal key
    verifies against that principal and is mandate-untrusted under another; an agent's narrower
    delegation verifies as a 2-link chain; a widening delegation is refused by `mandate issue`
    (nothing written) and, if forged with the library, by `mandate show` (delegation-invalid)."""
    prn = principal_did(home)
    agent_a = new_agent(tmp_path / "a")
    root = tmp_path / "root.json"
    root_mandate(home, agent_a, root, "--ceiling", "500", "--budget", "5000", "--max-depth", "1", "--approval-threshold", "300")
    [token] = json.loads(root.read_text())["mandates"]
    header = jwt.get_unverified_header(token)
    assert (header["alg"], header["typ"], header["kid"]) == ("EdDSA", "mpp-mandate+jwt", prn)

    shown = ok("mandate", "show", root, "--trust", prn, "--realm", "mpp.local")
    assert f"valid: principal {prn} -> agent {agent_a}, 1 link(s)" in shown.stdout
    other = SigningKey.generate().did
    untrusted = mpp_cli("mandate", "show", root, "--trust", other, "--realm", "mpp.local", real=True)
    assert "mandate-untrusted" in one_line_error(untrusted, code=1)
    wrong_realm = mpp_cli("mandate", "show", root, "--trust", prn, "--realm", "elsewhere.example")
    assert "mandate-audience" in one_line_error(wrong_realm, code=1)
    # without --trust / --realm the chain is checked against its own root and audience
    assert "valid: " in ok("mandate", "show", root).stdout

    # agent A delegates a narrower mandate to sub-agent B; unset fields are inherited from the parent
    agent_b = new_agent(tmp_path / "b")
    sub = tmp_path / "sub.json"
    result = ok("mandate", "issue", "--issuer", tmp_path / "a" / "agent.key", "--subject", agent_b, "--parent", root,
                "--out", sub, "--ceiling", "200", "--budget", "1000", "--scope", "GET /agent-report")
    assert f"wrote {sub}: 2 link(s)" in result.stdout
    chain = json.loads(sub.read_text())["mandates"]
    assert chain[0] == token and len(chain) == 2
    leaf = jwt.decode(chain[1], options={"verify_signature": False})
    assert (leaf["iss"], leaf["sub"], leaf["prn"], leaf["aud"]) == (agent_a, agent_b, prn, ["mpp.local"])
    assert leaf["approval_threshold"] == 300 and leaf["ceiling"] == 200 and leaf["max_depth"] == 0
    shown = ok("mandate", "show", sub, "--trust", prn, "--realm", "mpp.local")
    assert f"valid: principal {prn} -> agent {agent_b}, 2 link(s)" in shown.stdout

    # IDENT-DLG-06: the CLI refuses to sign a delegation that widens its parent, or goes too deep
    widened = tmp_path / "widened.json"
    for extra in (("--ceiling", "900", "--budget", "1000"), ("--ceiling", "100", "--budget", "100", "--approval-threshold", "400"),
                  ("--ceiling", "100", "--budget", "100", "--valid-for", "90d")):
        refused = mpp_cli("mandate", "issue", "--issuer", tmp_path / "a" / "agent.key", "--subject", agent_b,
                          "--parent", root, "--out", widened, *extra, real=extra[1] == "900")
        line = one_line_error(refused, code=2)
        assert "refusing to sign this delegation" in line and ("delegation-invalid" in line or "delegation-too-deep" in line), line
        assert not widened.exists()
    # only the parent's subject may delegate it
    not_subject = mpp_cli("mandate", "issue", "--issuer", home / "principal" / "principal.key", "--subject", agent_b,
                          "--parent", root, "--out", widened, "--ceiling", "100", "--budget", "100")
    assert "not the subject of the parent" in one_line_error(not_subject, code=2)
    # B's mandate allows no further delegation
    agent_c = new_agent(tmp_path / "c")
    too_deep = mpp_cli("mandate", "issue", "--issuer", tmp_path / "b" / "agent.key", "--subject", agent_c,
                       "--parent", sub, "--out", widened, "--ceiling", "10", "--budget", "10")
    assert "delegation-too-deep" in one_line_error(too_deep, code=2)
    assert not widened.exists()

    # a widening link signed with the library directly is caught by `mandate show`
    from mpp.identity import issue_mandate

    now = datetime.now(timezone.utc)
    forged = issue_mandate(SigningKey.load(tmp_path / "a" / "agent.key"), subject=agent_b, audience=["mpp.local"], currency="usd",
                           ceiling=900, budget_amount=1000, budget_period="day", approval_threshold=300,
                           not_before=now, expires=now + timedelta(hours=1), principal=prn)
    widened.write_text(json.dumps({"mandates": [token, forged]}))
    bad = mpp_cli("mandate", "show", widened, "--trust", prn, "--realm", "mpp.local")
    line = one_line_error(bad, code=1)
    assert "delegation-invalid" in line and "ceiling" in line


def test_fetch_with_identity_and_audit(served, tmp_path: Path):
    """IDENT-POP-01, IDENT-POP-03, IDENT-RCPT-01, IDENT-AUD-07: the `mpp init` wallet pays the
    identity-only route with its mandate (the receipt names agent, principal and mandate);
    --no-identity gets identity-required; a wallet made by `mpp agent init --mandate` pays too; the
    seller's audit log lists each agent's purchases and verifies."""
    home = served.home
    prn = principal_did(home)
    home_agent = served.wallet.key.did
    home_jti = jwt.decode(served.wallet.mandates[-1], options={"verify_signature": False})["jti"]
    url = served.url + "/agent-report"

    paid = ok("fetch", "--wallet", home / "agent", url, real=True)
    assert json.loads(paid.stdout)["result"] == {"report": "attributed"}
    receipt = receipt_line(paid)
    assert (receipt["agent"], receipt["principal"], receipt["mandate"], receipt["decision"]) == (home_agent, prn, home_jti, "allow")
    assert receipt["amount"] == "150"

    problem = refusal(mpp_cli("fetch", "--wallet", home / "agent", "--no-identity", url, real=True))
    assert problem["type"] == IDENT + "identity-required"
    assert len(charges(home)) == 1

    # a fresh agent: key from `mpp agent init`, mandate from `mpp mandate issue`, attached by `agent init --mandate`
    wallet_dir = tmp_path / "bot"
    bot = new_agent(wallet_dir)
    chain = tmp_path / "chain.json"
    jti = root_mandate(home, bot, chain, "--ceiling", "400", "--budget", "2000", "--scope", "GET /agent-report")
    assert new_agent(wallet_dir, "--mandate", chain) == bot

    bought = ok("fetch", "--wallet", wallet_dir, url)
    receipt = receipt_line(bought)
    assert (receipt["agent"], receipt["principal"], receipt["mandate"], receipt["decision"]) == (bot, prn, jti, "allow")
    assert len(charges(home)) == 2

    log = home / "ledger.db"  # the seller's audit log, kept in its ledger's database
    rows = json.loads(ok("audit", "show", "--log", log, "--agent", bot, "--json").stdout)
    assert [(r["agent"], r["principal"], r["outcome"], r["resource"]) for r in rows] == [(bot, prn, "settled", "GET /agent-report")]
    assert rows[0]["challengeId"] == receipt["challengeId"] and rows[0]["decision"] == "allow"
    mine = json.loads(ok("audit", "show", "--log", log, "--agent", home_agent, "--json").stdout)
    assert [r["outcome"] for r in mine if r["outcome"] == "settled"] == ["settled"]
    everyone = json.loads(ok("audit", "show", "--log", log, "--principal", prn, "--json").stdout)
    assert {r["agent"] for r in everyone if r["outcome"] == "settled"} == {bot, home_agent}
    table = ok("audit", "show", "--log", log, "--agent", bot).stdout
    assert "settled" in table and "GET /agent-report" in table
    verified = ok("audit", "verify", "--log", log)
    assert verified.stdout.startswith("audit log intact: ")
    ok("audit", "verify", "--log", wallet_dir / "audit.db")
    assert "no audit log" in one_line_error(mpp_cli("audit", "verify", "--log", tmp_path / "none.db"), code=2)


def test_agent_init_attaches_only_its_own_mandate(home: Path, tmp_path: Path):
    """`mpp agent init DIR --mandate CHAIN` attaches a chain whose leaf names the
    wallet's own key; a chain for another agent, or a directory with no key yet, is refused with
    one line and nothing written."""
    first, second = tmp_path / "first", tmp_path / "second"
    did = new_agent(first, "--max-amount", "700")
    other = new_agent(second)
    chain = tmp_path / "chain.json"
    root_mandate(home, did, chain, "--ceiling", "300", "--budget", "3000")

    wrong = mpp_cli("agent", "init", second, "--account", "acct:buyer", "--mandate", chain)
    assert f"not this agent ({other})" in one_line_error(wrong, code=2)
    assert not (second / "mandate.json").exists() and "mandates" not in json.loads((second / "wallet.json").read_text())
    fresh = mpp_cli("agent", "init", tmp_path / "fresh", "--account", "acct:buyer", "--mandate", chain)
    assert "no agent key yet" in one_line_error(fresh, code=2)
    assert not (tmp_path / "fresh").exists()

    new_agent(first, "--mandate", chain)
    wallet = json.loads((first / "wallet.json").read_text())
    assert (wallet["did"], wallet["account"], wallet["mandates"], wallet["max_amount"]) == (did, "acct:buyer", "mandate.json", 700)
    assert json.loads((first / "mandate.json").read_text()) == json.loads(chain.read_text())
    from mpp.cli.config import load_wallet

    loaded = load_wallet(first)
    assert loaded.key.did == did and loaded.mandates == json.loads(chain.read_text())["mandates"]


def test_approval_through_the_cli(served, tmp_path: Path):
    """IDENT-APR-01, IDENT-APR-03, IDENT-APR-04, IDENT-RCPT-01: above the mandate's approval threshold
    the seller answers approval-required (exit 7, nothing paid); `mpp approve` signs a one-time
    approval bound to that problem's challenge and quote; `mpp fetch --approve-with` completes the
    purchase with decision allow-with-approval."""
    home = served.home
    prn = principal_did(home)
    wallet = tmp_path / "careful"
    agent = new_agent(wallet)
    chain = tmp_path / "chain.json"
    jti = root_mandate(home, agent, chain, "--ceiling", "400", "--budget", "2000", "--approval-threshold", "100")
    new_agent(wallet, "--mandate", chain)
    url = served.url + "/agent-report"

    asked = mpp_cli("fetch", "--wallet", wallet, url, real=True)
    assert asked.returncode == 7, asked.stderr  # approval required: its own exit code (issue 17, finding 4)
    first, _, rest = asked.stderr.partition("\n")
    assert first.startswith("mpp: the seller asks for the principal's approval of 150 usd") and "--problem-out" in first
    problem = json.loads(rest)
    assert problem["type"] == IDENT + "approval-required"
    assert (problem["amount"], problem["currency"], problem["mandate"]) == ("150", "usd", jti)
    assert problem["rule"] and problem["quoteHash"] and problem["challengeId"]
    assert charges(home) == []

    problem_file, approval_file = tmp_path / "problem.json", tmp_path / "approval.jwt"
    problem_file.write_text(json.dumps(problem))
    # the seller's own document carries no quote: signed only on request (--without-quote; tests/test_cli_flows.py
    # shows the refusal without it and the checked flow with `mpp fetch --problem-out`)
    approved = ok("approve", "--key", home / "principal" / "principal.key", "--problem", problem_file,
                  "--agent", agent, "--out", approval_file, "--without-quote")
    assert f"approval written to {approval_file}" in approved.stdout
    token = approval_file.read_text().strip()
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (header["alg"], header["typ"], header["kid"]) == ("EdDSA", "mpp-approval+jwt", prn)
    assert (claims["iss"], claims["sub"], claims["mandate"]) == (prn, agent, jti)
    assert (claims["challengeId"], claims["amount"], claims["currency"]) == (problem["challengeId"], "150", "usd")
    assert claims["jti"].startswith("apr_") and claims["exp"] - claims["iat"] <= 600
    # without --out the approval goes to stdout; from stdin with --problem -
    piped = subprocess.run([sys.executable, "-m", "mpp.cli.main", "approve", "--key", str(home / "principal" / "principal.key"),
                            "--problem", "-", "--agent", agent, "--without-quote"], input=json.dumps(problem), capture_output=True, text=True, cwd=REPO)
    assert piped.returncode == 0 and piped.stdout.count(".") == 2, piped.stderr
    # a problem that is not approval-required, or lacks members, is refused with one line
    identity_required = {"type": IDENT + "identity-required", "title": "Identity Required", "status": 402}
    problem_file.write_text(json.dumps(identity_required))
    not_approval = mpp_cli("approve", "--key", home / "principal" / "principal.key", "--problem", problem_file, "--agent", agent)
    assert "not an approval-required problem" in one_line_error(not_approval, code=2)
    problem_file.write_text(json.dumps({k: v for k, v in problem.items() if k != "quoteHash"}))
    lacking = mpp_cli("approve", "--key", home / "principal" / "principal.key", "--problem", problem_file, "--agent", agent)
    assert "quoteHash" in one_line_error(lacking, code=2)

    paid = mpp_cli("fetch", "--wallet", wallet, "--approve-with", home / "principal" / "principal.key", url, real=True)
    assert paid.returncode == 0, paid.stderr
    assert "approving: " in paid.stderr
    receipt = receipt_line(paid)
    assert (receipt["agent"], receipt["principal"], receipt["mandate"]) == (agent, prn, jti)
    assert receipt["decision"] == "allow-with-approval" and receipt["approval"].startswith("apr_")
    assert receipt["approval"] != claims["jti"]  # a fresh approval for the new challenge
    assert len(charges(home)) == 1

    # an approval signed by a key that is neither the principal nor a listed approver is refused
    stranger = tmp_path / "stranger"
    ok("principal", "init", stranger)
    refused = refusal(mpp_cli("fetch", "--wallet", wallet, "--approve-with", stranger / "principal.key", url))
    assert refused["type"] == IDENT + "approval-invalid"
    assert len(charges(home)) == 1


def test_revoke_then_fetch_is_refused(served):
    """IDENT-REV-01, IDENT-REV-03, IDENT-ERR-03: a fetch under the mandate succeeds; after
    `mpp mandate revoke` with the principal key the next fetch with that wallet is refused
    mandate-revoked (exit 4) and nothing moves."""
    home = served.home
    url = served.url + "/agent-report"
    before = mpp_cli("fetch", "--wallet", home / "agent", url)
    assert before.returncode == 0, before.stderr
    assert len(charges(home)) == 1

    # only the link's issuer or its principal may revoke it
    stranger = home.parent / "stranger"
    ok("principal", "init", stranger)
    not_theirs = mpp_cli("mandate", "revoke", home / "agent" / "mandate.json", "--key", stranger / "principal.key",
                         "--ledger", home / "ledger.db")
    one_line_error(not_theirs, code=2)
    assert mpp_cli("fetch", "--wallet", home / "agent", url).returncode == 0
    assert len(charges(home)) == 2

    jti = jwt.decode(served.wallet.mandates[-1], options={"verify_signature": False})["jti"]
    revoked = ok("mandate", "revoke", home / "agent" / "mandate.json", "--key", home / "principal" / "principal.key",
                 "--ledger", home / "ledger.db")
    assert revoked.stdout.startswith("revoked mandate ") and jti in revoked.stdout
    problem = refusal(mpp_cli("fetch", "--wallet", home / "agent", url, real=True))
    assert problem["type"] == IDENT + "mandate-revoked"
    assert len(charges(home)) == 2
    # LEDGER-ACCT-03: the agent's key does not step around its revoked mandate by paying bare
    bare = refusal(mpp_cli("fetch", "--wallet", home / "agent", "--no-identity", served.url + "/weather", real=True))
    assert bare["type"] == IDENT + "mandate-required"
    assert len(charges(home)) == 2
    missing = mpp_cli("mandate", "revoke", home / "agent" / "mandate.json", "--key", home / "principal" / "principal.key",
                      "--ledger", home / "nowhere.db")
    assert "no ledger" in one_line_error(missing, code=2)


async def test_receipt_verify_offline(served, tmp_path: Path):
    """CORE-RCPT-01, IDENT-RCPT-01: `mpp receipt verify` checks a Payment-Receipt value (or the bare
    JWS, or a file holding either) against the seller's JWKS and prints the claims; under another
    key's JWKS it exits 1 (receipt INVALID); garbage is a one-line error."""
    from mpp.aio import PaymentClient
    from mpp.purchase.agent import AgentIdentity
    from mpp.methods.ledger import LedgerBuyerMethod

    wallet = served.wallet
    async with aiohttp.ClientSession() as session:
        client = PaymentClient(session, [LedgerBuyerMethod(key=wallet.key, account=wallet.account)], wallet.policy,
                               identity=AgentIdentity(wallet.key, wallet.mandates))
        resp = await client.request("GET", served.url + "/agent-report")
        assert resp.status == 200 and resp.paid
        value = resp.headers["Payment-Receipt"]
        async with session.get(served.url + "/.well-known/jwks.json") as r:
            jwks = await r.json()
    jwks_file = tmp_path / "seller-jwks.json"
    jwks_file.write_text(json.dumps(jwks))

    result = ok("receipt", "verify", value, "--jwks", jwks_file, real=True)
    doc = json.loads(result.stdout)
    assert doc["verified"] is True
    claims = doc["claims"]
    assert claims == resp.claims
    assert (claims["iss"], claims["amount"], claims["agent"], claims["principal"]) == ("mpp.local", "150", wallet.key.did, principal_did(served.home))
    assert claims["challengeId"] == resp.receipt.challengeId

    bare = resp.receipt.receipt
    assert json.loads(ok("receipt", "verify", bare, "--jwks", jwks_file, "--issuer", "mpp.local").stdout)["claims"] == claims
    saved = tmp_path / "receipt.txt"
    saved.write_text(value + "\n")
    assert json.loads(ok("receipt", "verify", saved, "--jwks", jwks_file).stdout)["claims"] == claims

    other = SigningKey.generate()
    other_jwks = tmp_path / "other-jwks.json"
    other_jwks.write_text(json.dumps({"keys": [other.jwk()]}))
    assert "receipt INVALID" in one_line_error(mpp_cli("receipt", "verify", value, "--jwks", other_jwks, real=True), code=1)
    # same kid as the seller's key, another key's x: the signature does not verify
    [seller_jwk] = jwks["keys"]
    other_jwks.write_text(json.dumps({"keys": [{**other.jwk(), "kid": seller_jwk["kid"]}]}))
    assert "receipt INVALID" in one_line_error(mpp_cli("receipt", "verify", value, "--jwks", other_jwks), code=1)
    wrong_issuer = mpp_cli("receipt", "verify", value, "--jwks", jwks_file, "--issuer", "evil.example")
    assert "receipt INVALID" in one_line_error(wrong_issuer, code=1)

    for garbage in ("not-a-receipt", "a.b.c", "e30"):
        one_line_error(mpp_cli("receipt", "verify", garbage, "--jwks", jwks_file))
    one_line_error(mpp_cli("receipt", "verify", value, "--jwks", tmp_path / "no-such-jwks.json"), code=2)
