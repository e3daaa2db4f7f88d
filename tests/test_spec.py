"""The specification stays consistent with itself and with what the tests claim to cover."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import jsonschema
import pytest

import mpp
from mpp.methods.ledger import LedgerBuyerMethod, LedgerSellerMethod

ROOT = Path(__file__).resolve().parent.parent
ID = re.compile(r"\b(CORE-[A-Z]+-\d{2}|LEDGER-\d{2}|CHARGE-\d{2}|IDENT-[A-Z]+-\d{2})\b")


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
