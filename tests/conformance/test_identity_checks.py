"""The identity profile of the conformance suite against our own seller (`mpp seller serve` on a
home made by `mpp init`, route /agent-report, which requires the extension): every attack of
spec/identity.md is refused as the spec says; without a trusted principal the checks that need
one skip, saying how to register it; and the checks do catch a seller that departs."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import mpp
from mpp.cli.config import init_home
from mpp_conformance.checks_identity import NOT_TRUSTED
from mpp_conformance.cli import main as conformance_main
from mpp_conformance.framework import Verdict, checks_for, run_checks
from mpp_conformance.principal import KEY_FILES, create_keys, load_keys

from conftest import REPO, start_seller, stop_seller

IDENTITY_CHECKS = {
    "identity.alg-none", "identity.hmac-public-key", "identity.unknown-key", "identity.expired", "identity.not-yet-valid",
    "identity.wrong-audience", "identity.subject-not-signer", "identity.source-not-subject", "identity.proof-other-challenge",
    "identity.tampered-claim", "identity.widened-scope", "identity.widened-ceiling", "identity.widened-budget",
    "identity.widened-validity", "identity.too-deep", "identity.approval-reused", "identity.approval-other-amount",
    "identity.out-of-scope", "identity.over-ceiling", "identity.identity-required", "identity.revoked",
    "identity.valid-mandate-passes-checks",
    # beyond the attack table's rows: malformed members and mandates, delegation rules, the approval path
    "identity.malformed-mandate", "identity.malformed-member", "identity.malformed-proof", "identity.bad-delegation",
    "identity.approval-other-signer", "identity.approval-required",
}
# refused before the chain's trust check (IDENT-DLG-05), or not about the chain: checkable with any keys
WITHOUT_TRUST = {"identity.alg-none", "identity.hmac-public-key", "identity.unknown-key", "identity.tampered-claim",
                 "identity.identity-required", "identity.malformed-mandate", "identity.malformed-member"}


def identity_checks():
    return [c for c in checks_for("identity") if c.profile == "identity"]


def run(url: str, **options):
    results = asyncio.run(run_checks(identity_checks(), url, {"method": "GET", "data": None, **options}))
    return {r.check_id: r for r in results}


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("suite-keys")
    create_keys(directory)
    return directory


@pytest.fixture(scope="module")
def seller(tmp_path_factory, keys_dir):
    """`mpp seller serve --trust-principal <the suite's principal>` on a fresh `mpp init` home."""
    home = tmp_path_factory.mktemp("identity-home") / "home"
    init_home(home)
    served = start_seller(home, "--trust-principal", load_keys(keys_dir).principal.did)
    try:
        yield served
    finally:
        err = stop_seller(served)
        assert "Traceback" not in err, err


def test_principal_command_creates_keys_and_prints_the_did(tmp_path, capsys):
    """IDENT-KEY-01, IDENT-KEY-03: `mpp-conformance principal DIR` writes four owner-only Ed25519 keys and
    says how to register the principal; running it again keeps them."""
    directory = tmp_path / "keys"
    assert conformance_main(["principal", str(directory)]) == 0
    out = capsys.readouterr().out
    did = load_keys(directory).principal.did
    assert f"principal: {did}" in out
    assert f"--trust-principal {did}" in out and "trusted_principals in seller.toml" in out
    for name in KEY_FILES.values():
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
        mpp.public_key_from_did(mpp.SigningKey.load(directory / name).did)
    assert len({mpp.SigningKey.load(directory / name).did for name in KEY_FILES.values()}) == 4
    assert conformance_main(["principal", str(directory)]) == 0
    assert load_keys(directory).principal.did == did and "(kept)" in capsys.readouterr().out


def test_every_identity_check_passes_against_our_seller(seller, keys_dir):
    """IDENT-ERR-01, IDENT-DLG-05, IDENT-POP-07, IDENT-APR-05: the whole attack table, black-box over HTTP;
    only revocation (no endpoint to revoke through) skips."""
    results = run(seller.url + "/agent-report", identity_keys=str(keys_dir))
    assert set(results) == IDENTITY_CHECKS
    bad = {i: (r.verdict.value, r.message) for i, r in results.items() if r.verdict is not Verdict.PASS and i != "identity.revoked"}
    assert not bad, bad
    assert results["identity.revoked"].verdict is Verdict.SKIP
    assert "revocation" in results["identity.revoked"].message
    # the suite's principal owns no account at the target: the control is refused only at settlement
    assert "settlement refused" in results["identity.valid-mandate-passes-checks"].message
    # every exchange's credentials are redacted in the evidence
    for r in results.values():
        for ex in r.exchanges:
            assert all(v.startswith(("Payment [redacted", "[redacted")) for k, v in ex.request_headers if k.lower() == "authorization")


def test_without_keys_only_trust_free_checks_run(seller):
    """IDENT-KEY-03: throwaway keys cannot be trusted; the checks that need trust skip and say what to do."""
    results = run(seller.url + "/agent-report")
    for check_id, r in results.items():
        if check_id in WITHOUT_TRUST:
            assert r.verdict is Verdict.PASS, (check_id, r.message)
        else:
            assert r.verdict is Verdict.SKIP, (check_id, r.message)
            if check_id != "identity.revoked":
                assert r.message.startswith(NOT_TRUSTED), r.message
                assert "--identity-keys" in r.message
                assert not r.exchanges  # skipped before sending anything


def test_unregistered_keys_skip_naming_the_principal(seller, tmp_path):
    """IDENT-KEY-03, IDENT-DLG-01: keys the target does not trust: the answer is mandate-untrusted, so the checks
    that need trust skip, naming the DID to register and how."""
    keys, _ = create_keys(tmp_path / "unregistered")
    results = run(seller.url + "/agent-report", identity_keys=str(tmp_path / "unregistered"))
    for check_id, r in results.items():
        if check_id in WITHOUT_TRUST:
            assert r.verdict is Verdict.PASS, (check_id, r.message)
        elif check_id != "identity.revoked":
            assert r.verdict is Verdict.SKIP, (check_id, r.message)
            assert "does not trust the suite's principal" in r.message
            assert f"--trust-principal {keys.principal.did}" in r.message


def test_identity_required_skips_on_a_route_without_it(seller, keys_dir):
    """IDENT-POP-02, IDENT-POP-03: on /weather (identity optional) a plain credential is not identity-required, so that
    check skips; a present identity member is still verified there, so every attack is still refused."""
    results = run(seller.url + "/weather", identity_keys=str(keys_dir))
    assert results["identity.identity-required"].verdict is Verdict.SKIP
    assert "does not require identity" in results["identity.identity-required"].message
    bad = {i: r.message for i, r in results.items()
           if r.verdict is not Verdict.PASS and i not in ("identity.revoked", "identity.identity-required")}
    assert not bad, bad


def test_cli_identity_profile(seller, keys_dir, tmp_path, capsys):
    """IDENT-ERR-01: `mpp-conformance seller URL --profile identity --identity-keys DIR` writes the identity results."""
    report = tmp_path / "report.json"
    conformance_main(["seller", seller.url + "/agent-report", "--profile", "identity", "--identity-keys", str(keys_dir),
                      "--json", str(report)])
    doc = json.loads(report.read_text())
    verdicts = {r["id"]: r["verdict"] for r in doc["results"] if r["id"].startswith("identity.")}
    assert set(verdicts) == IDENTITY_CHECKS
    assert {i for i, v in verdicts.items() if v != "pass"} == {"identity.revoked"}
    assert f"wrote {report}" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="mpp-conformance principal"):
        conformance_main(["seller", seller.url + "/agent-report", "--profile", "identity", "--identity-keys", str(tmp_path / "none")])


def test_seller_serve_refuses_a_bad_trust_principal(home):
    """IDENT-KEY-01, IDENT-KEY-03: --trust-principal takes an Ed25519 did:key, else one line and exit 2."""
    cmd = [sys.executable, "-m", "mpp.cli.main", "seller", "serve", "--config", str(home / "seller.toml"), "--port", "0",
           "--trust-principal", "did:web:example.com"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--trust-principal" in result.stderr and "did:key" in result.stderr
    assert "Traceback" not in result.stderr


async def test_checks_catch_a_seller_that_does_not_narrow(tmp_path, keys_dir, monkeypatch):
    """IDENT-DLG-02: the delegation checks are not vacuous: a seller that skips the narrowing rules
    (and so settles a widened chain) fails every widened-* check."""
    from aiohttp.test_utils import TestServer

    from _identity_support import PAYER, new_ledger, seller_app
    from mpp.identity import chains

    monkeypatch.setattr(chains, "_narrowing_violation", lambda child, parent: None)
    principal = load_keys(keys_dir).principal
    ledger = new_ledger(str(tmp_path / "ledger.db"), principal.did)
    server = TestServer(seller_app(ledger, str(tmp_path / "store.db"), [principal.did]), host="127.0.0.1")
    await server.start_server()
    try:
        widened = [c for c in identity_checks() if c.id.startswith("identity.widened-")]
        results = await run_checks(widened, str(server.make_url("/thing")),
                                   {"method": "GET", "data": None, "identity_keys": str(keys_dir), "account": PAYER})
    finally:
        await server.close()
        ledger.close()
    assert len(results) == 4
    for r in results:
        assert r.verdict is Verdict.FAIL, (r.check_id, r.verdict, r.message)
        assert "expected HTTP 402" in r.message
