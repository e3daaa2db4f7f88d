"""The specification stays consistent with itself and with what the tests claim to cover."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import jsonschema
import pytest
from aiohttp.test_utils import TestServer

import mpp
from mpp import identity as I
from mpp.methods.ledger import LedgerBuyerMethod, LedgerSellerMethod

from _identity_support import World, claims_of, credential, mandate, new_ledger, seller_app

ROOT = Path(__file__).resolve().parent.parent
ID = re.compile(r"\b(CORE-[A-Z]+-\d{2}|LEDGER-(?:[A-Z]+-)?\d{2}|CHARGE-\d{2}|IDENT-[A-Z]+-\d{2}|SESSION-[A-Z]+-\d{2}|PRICE-[A-Z]+-\d{2}|FILE-[A-Z]+-\d{2}|EVM-[A-Z]+-\d{2}|MCP-[A-Z]+-\d{2})\b")


def spec_ids() -> set[str]:
    return {r["id"] for r in json.loads((ROOT / "spec" / "requirements.json").read_text())}


def test_requirements_index_is_current():
    """spec/requirements.json lists exactly the ids, levels and documents of the Markdown."""
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "spec_index.py")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_cited_id_exists():
    """A test that cites a requirement id cites one the spec has."""
    known = spec_ids()
    unknown = {}
    for path in (ROOT / "tests").rglob("*.py"):
        for cited in ID.findall(path.read_text(encoding="utf-8")):
            if cited not in known:
                unknown.setdefault(cited, []).append(path.name)
    assert not unknown, f"tests cite ids the spec does not define: {unknown}"


def test_tests_cite_requirements():
    """Most of the spec is cited by at least one test (the rest waits for the conformance suite)."""
    cited = set()
    for path in (ROOT / "tests").rglob("*.py"):
        cited.update(ID.findall(path.read_text(encoding="utf-8")))
    known = spec_ids()
    assert len(cited & known) >= len(known) // 2, sorted(known - cited)


def _schemas() -> dict[str, dict]:
    return {p.stem.removesuffix(".schema"): json.loads(p.read_text()) for p in (ROOT / "spec" / "schemas").glob("*.json")}


def _validator(name: str):
    from referencing import Registry, Resource

    schemas = _schemas()
    registry = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas.values())
    return jsonschema.Draft202012Validator(schemas[name], registry=registry)


@pytest.mark.parametrize("name", sorted(_schemas()))
def test_schemas_are_valid_json_schema(name):
    jsonschema.Draft202012Validator.check_schema(_schemas()[name])


def test_real_wire_objects_match_the_schemas():
    """CHARGE-02, CHARGE-07, LEDGER-05, CORE-RCPT-01: what the code emits is what the schemas describe."""
    now = datetime.now(timezone.utc)
    seller_key, agent = mpp.SigningKey.generate(), mpp.SigningKey.generate()
    core = mpp.SellerCore(mpp.ChallengeIssuer(b"s" * 32, "api.test"), {"ledger": LedgerSellerMethod(recipient="acct:seller", ledger_id="ledger-1")})
    info = mpp.RequestInfo("POST", "/x", "", b"body")
    challenge = core.challenges(mpp.Price(25, "usd", "thing"), info, now)[0]
    quote = mpp.select_quote([challenge], [LedgerBuyerMethod(key=agent, account="acct:buyer")], mpp.BuyerPolicy(max_amount=100), now)
    header = mpp.sign_quote(quote)
    verified = core.verify(header, mpp.RequestInfo("POST", "/x", "", b"body", authorization=[header]), now)
    claims = core.receipt_claims(verified, reference=verified.challenge_id, settled_at=now, account="acct:buyer")
    receipt = mpp.PaymentReceipt(status="success", method="ledger", timestamp=mpp.format_rfc3339(now), reference=verified.challenge_id,
                                 challengeId=verified.challenge_id, receipt=mpp.sign_receipt(seller_key, claims))
    credential = mpp.decode_json_b64(header.split(" ", 1)[1], "credential")
    for name, instance in (
        ("charge-request", challenge.request_json),
        ("credential", credential),
        ("ledger-payload", credential["payload"]),
        ("receipt", receipt.to_json()),
        ("receipt-claims", claims),
    ):
        errors = [e.message for e in _validator(name).iter_errors(instance)]
        assert errors == [], (name, errors)


async def test_real_identity_objects_match_the_schemas(tmp_path):
    """IDENT-MDT-01, IDENT-APR-03, IDENT-POP-01, IDENT-RCPT-01: a two-link chain buys, with an
    approver's approval, from an in-process seller; its mandates, the approval, the credential's
    identity member and the receipt's claims are what the identity schemas describe."""
    P, A, B, X = (mpp.SigningKey.generate() for _ in range(4))
    t = datetime.now(timezone.utc)
    window = {"not_before": t - timedelta(minutes=5), "expires": t + timedelta(days=1)}
    root = mandate(P, A, approvers=[X.did], review=["GET /pricey"], **window)
    sub = mandate(A, B, principal=P.did, max_depth=1, review=["GET /pricey"], **window)
    ledger = new_ledger(str(tmp_path / "ledger.db"), P.did)
    server = TestServer(seller_app(ledger, str(tmp_path / "store.db"), [P.did]), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            world = World(ledger, server, session, P=P, A=A, B=B)
            quote = await world.quote("/pricey", B)  # 300: above the threshold, and under review
            approval = I.issue_approval(X, agent=B.did, challenge_id=quote.challenge.id, quote=I.quote_hash(quote.challenge),
                                        amount=quote.request.amount, currency=quote.request.currency, rule="threshold",
                                        mandate=claims_of(sub)["jti"], now=datetime.now(timezone.utc))
            authorization = credential(quote, [root, sub], B, approval=approval)
            code, doc, headers = await world.send("/pricey", authorization)
    finally:
        await server.close()
        ledger.close()
    assert code == 200, doc
    receipt = mpp.parse_receipt(headers["Payment-Receipt"])
    receipt_claims = claims_of(receipt.receipt)
    assert (receipt_claims["decision"], receipt_claims["approval"], len(receipt_claims["chain"])) == (
        "allow-with-approval", claims_of(approval)["jti"], 2)
    decoded = mpp.decode_json_b64(authorization.split(" ", 1)[1], "credential")
    for name, instance in (
        ("mandate-claims", claims_of(root)),
        ("mandate-claims", claims_of(sub)),
        ("approval-claims", claims_of(approval)),
        ("identity-extension", decoded["identity"]),
        ("credential", decoded),
        ("receipt", receipt.to_json()),
        ("receipt-claims", receipt_claims),
        ("identity-receipt-claims", receipt_claims),
    ):
        errors = [e.message for e in _validator(name).iter_errors(instance)]
        assert errors == [], (name, errors)


def _vector_scenarios(stem: str) -> dict[str, dict]:
    doc = json.loads((ROOT / "spec" / "vectors" / f"{stem}.json").read_text(encoding="utf-8"))
    return {s["name"]: s for s in doc["scenarios"]}


def test_identity_vectors_match_the_schemas():
    """IDENT-MDT-04, IDENT-MDT-08, IDENT-APR-03: every mandate of an accepted chain and every accepted
    approval of spec/vectors validates against its schema, and the schemas refuse the claim errors
    a schema can see."""
    mandates, approvals = _vector_scenarios("mandate"), _vector_scenarios("approval")
    accepted = [(name, "mandate-claims", claims_of(token)) for name, s in mandates.items() if s["expected"].get("valid")
                for token in s["input"]["tokens"]]
    accepted += [(name, "approval-claims", claims_of(s["input"]["approval"])) for name, s in approvals.items() if s["expected"].get("valid")]
    for name, schema, claims in accepted:
        errors = [e.message for e in _validator(schema).iter_errors(claims)]
        assert errors == [], (name, errors)
    for name in ("bad_jti_format", "currency_uppercase", "scope_wildcard_method", "scope_non_ascii_path", "scope_pattern_too_long",
                 "scope_too_many_patterns", "aud_star_among_realms", "aud_empty", "subject_not_did_key", "approver_not_did_key",
                 "ceiling_above_2_53", "ceiling_as_string", "missing_budget", "budget_period_unknown"):
        assert not _validator("mandate-claims").is_valid(claims_of(mandates[name]["input"]["tokens"][0])), name
    for name in ("approval_bad_jti", "approval_iat_boolean", "approval_unknown_rule", "approval_missing_rule"):
        assert not _validator("approval-claims").is_valid(claims_of(approvals[name]["input"]["approval"])), name


def test_untestable_names_the_tests_that_cite_each_requirement():
    """spec/untestable.json, where a reason says a requirement is covered in process by some test
    files, names files that really cite it."""
    reasons = json.loads((ROOT / "spec" / "untestable.json").read_text(encoding="utf-8"))
    wrong = {}
    for rid, why in reasons.items():
        if not why.startswith("Covered in process by "):
            continue
        for name in re.findall(r"tests/[\w/]+\.py", why.split(" (", 1)[0]):
            if rid not in ID.findall((ROOT / name).read_text(encoding="utf-8")):
                wrong.setdefault(rid, []).append(name)
    assert not wrong, f"spec/untestable.json names tests that do not cite the requirement: {wrong}"


def test_signed_vectors_match_the_schemas():
    """CHARGE-07, IDENT-RCPT-01, LEDGER-05: the claims of every accepted receipt JWS of
    spec/vectors/receipt-jws.json validate against receipt-claims (and identity-receipt-claims when
    they carry the identity claims), and every accepted ledger payload against ledger-payload."""
    receipts = _vector_scenarios("receipt-jws")
    for name, s in receipts.items():
        if s["expected"].get("valid"):
            claims = s["expected"]["claims"]
            for schema in ("receipt-claims",) + (("identity-receipt-claims",) if "agent" in claims else ()):
                errors = [e.message for e in _validator(schema).iter_errors(claims)]
                assert errors == [], (name, schema, errors)
    for name, s in _vector_scenarios("ledger-authorization").items():
        if s["expected"].get("valid"):
            errors = [e.message for e in _validator("ledger-payload").iter_errors(s["input"]["payload"])]
            assert errors == [], (name, errors)


def _tool(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_mpp_tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_checked_requirements_carry_a_provenance_marker():
    """Every requirement a conformance check cites, and every requirement of core.md, ends with a
    provenance marker (spec/README.md): the draft's section and keyword, or "extension"."""
    index = _tool("spec_index")
    checked = {rid for chk in _tool("coverage_table").load_checks() for rid in chk.requirements}
    assert checked, "no conformance check cites a requirement"
    bullets = index.scan()
    missing = sorted(r["id"] for r in bullets
                     if (r["id"] in checked or r["doc"] == "spec/core.md") and index.provenance(r["text"]) is None)
    assert not missing, f"requirements without a provenance marker: {missing}"
    assert checked <= {r["id"] for r in bullets}


def test_provenance_markers_are_parsed_and_do_not_set_the_level():
    """The marker quotes the draft's keyword; the level is the requirement's own (CORE-NEG-02 is a
    SHOULD although CORE-CHAL-02's marker names a SHOULD and a MUST)."""
    index = _tool("spec_index")
    assert index.provenance("A seller MUST x. (draft §5.1.1 MUST; draft §5.1.2 SHOULD)") == [
        "draft §5.1.1 MUST", "draft §5.1.2 SHOULD"]
    assert index.provenance("A buyer SHOULD y. (extension)") == ["extension"]
    assert index.provenance("A buyer SHOULD y (CORE-BUY-01).") is None
    assert index._level(index.without_provenance("A server SHOULD z. (draft §7.4 MUST)")) == "SHOULD"
    levels = {r["id"]: r["level"] for r in json.loads((ROOT / "spec" / "requirements.json").read_text())}
    assert levels["CORE-NEG-02"] == "SHOULD" and levels["CORE-ID-05"] == "MUST"


def test_the_implementing_guide_names_every_vector_file():
    """spec/README.md's "Implementing MPP" guide names every file of spec/vectors/ (a new file is
    added to the guide's table, where its piece is built)."""
    readme = (ROOT / "spec" / "README.md").read_text(encoding="utf-8")
    guide = readme.split("## Implementing MPP", 1)[1].split("\n## ", 1)[0]
    table = guide.split("Which conformance profile when", 1)[0]
    missing = sorted(p.name for p in (ROOT / "spec" / "vectors").glob("*.json") if f"`{p.name}`" not in table)
    assert not missing, f"vector files the Implementing MPP guide does not name: {missing}"
