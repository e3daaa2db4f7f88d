"""The identity extension's vectors: spec/vectors/mandate.json, approval.json, identity-proof.json.

One test per scenario (its id is the scenario's name). The data lives in the JSON files, written by
tools/gen_vectors.py from fixed keys, times and jtis; this module only runs them through
mpp.identity with the scenario's own ``now`` and compares the result or the exact problem slug.

Covers: IDENT-KEY-01, IDENT-KEY-02, IDENT-KEY-03, IDENT-KEY-05; IDENT-MDT-01 .. IDENT-MDT-08;
IDENT-DLG-01 .. IDENT-DLG-05 (mandate.json); IDENT-APR-02 .. IDENT-APR-05 (approval.json);
IDENT-POP-05, IDENT-POP-06 (identity-proof.json).
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import mpp
from _vectors import raises
from mpp import identity as I

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "spec" / "vectors"
FILES = {stem: json.loads((VECTORS / f"{stem}.json").read_text(encoding="utf-8")) for stem in ("mandate", "approval", "identity-proof")}
SPEC_IDS = {r["id"] for r in json.loads((ROOT / "spec" / "requirements.json").read_text(encoding="utf-8"))}


def _cases(stem: str) -> list[Any]:
    return [pytest.param(s, id=s["name"]) for s in FILES[stem]["scenarios"]]


def _when(unix: int) -> datetime:
    return datetime.fromtimestamp(unix, timezone.utc)


def _chain(inp: dict[str, Any]) -> I.MandateChain:
    return I.verify_chain(inp["tokens"], trusted_principals=set(inp["trusted"]), realm=inp["realm"], now=_when(inp["now"]),
                          max_depth=inp["max_depth"], leeway=inp["leeway"])


@pytest.mark.parametrize("scenario", _cases("mandate"))
def test_mandate_chain(scenario: dict[str, Any]) -> None:
    """IDENT-MDT-01 .. IDENT-MDT-08, IDENT-DLG-01 .. IDENT-DLG-05: verify_chain accepts exactly the
    valid chains and refuses the others with the problem of the first failing check."""
    inp, expected = scenario["input"], scenario["expected"]
    if "error" in expected:
        with raises(expected["error"]) as caught:
            _chain(inp)
        assert caught["exc"].type == "urn:mpp:problem:" + expected["error"]
        return
    chain = _chain(inp)
    assert (chain.principal, chain.agent, list(chain.jtis)) == (expected["principal"], expected["agent"], expected["jtis"])
    assert chain.tokens == inp["tokens"]


@pytest.mark.parametrize("scenario", _cases("approval"))
def test_approval(scenario: dict[str, Any]) -> None:
    """IDENT-APR-02 .. IDENT-APR-05: an approval counts only for its challenge, quote, amount,
    currency, agent and leaf mandate, signed by the principal or a listed approver, in time."""
    inp, expected = scenario["input"], scenario["expected"]
    chain = _chain(inp)  # every chain of this file is valid
    challenge = mpp.Challenge(**inp["challenge"])
    request = mpp.ChargeRequest.from_challenge(challenge)
    now = _when(inp["now"])
    if "error" in expected:
        with raises(expected["error"]):
            I.verify_approval(inp["approval"], chain=chain, challenge=challenge, request=request, now=now, leeway=inp["leeway"])
        return
    approval = I.verify_approval(inp["approval"], chain=chain, challenge=challenge, request=request, now=now, leeway=inp["leeway"])
    assert (approval.jti, approval.iss, approval.rule) == (expected["jti"], expected["iss"], expected["rule"])
    assert I.quote_hash(challenge) == expected["quoteHash"]


@pytest.mark.parametrize("scenario", _cases("identity-proof"))
def test_identity_proof(scenario: dict[str, Any]) -> None:
    """IDENT-POP-05, IDENT-POP-06, IDENT-KEY-05: the exact proof bytes, and a proof verifies only
    for the challenge, leaf mandate and agent it was made for."""
    inp, expected = scenario["input"], scenario["expected"]
    challenge = mpp.Challenge(**inp["challenge"])
    message = I.proof_message(challenge, mpp.ChargeRequest.from_challenge(challenge), inp["mandate"])
    if "error" in expected:
        # the seller's step (mpp.identity.verify_identity) turns a signature that does not verify into proof-invalid
        assert expected["error"] == "proof-invalid"
        with raises("signature-invalid"):
            mpp.verify_signature(inp["agent"], message, inp["signature"])
        return
    assert I.request_hash(challenge) == expected["requestHash"]
    assert message == bytes.fromhex(expected["proofHex"]) == expected["proofText"].encode("ascii")
    assert mpp.verify_signature(inp["agent"], message, expected["signature"]) is None
    # Ed25519 is deterministic: the agent's key from its published seed makes the same signature.
    seed = next(k["seedHex"] for k in FILES["identity-proof"]["keys"].values() if k["did"] == inp["agent"])
    key = mpp.SigningKey(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed)))
    assert key.did == inp["agent"] and key.sign(message) == expected["signature"]


# -- the data itself ----------------------------------------------------------------------------


@pytest.mark.parametrize("stem", sorted(FILES))
def test_identity_vector_file_shape(stem: str) -> None:
    """Each scenario: unique name, tags, description, the requirement ids it exercises (all known
    to spec/requirements.json), input, and expected either {valid: true, ...} or {error: slug}."""
    doc = FILES[stem]
    names = [s["name"] for s in doc["scenarios"]]
    assert len(names) == len(set(names))
    for s in doc["scenarios"]:
        assert s["tags"] and s["description"] and s["input"], s["name"]
        assert s["requirements"] and set(s["requirements"]) <= SPEC_IDS, s["name"]
        expected = s["expected"]
        assert (expected.get("valid") is True) != ("error" in expected), s["name"]
        if "error" in expected:
            assert expected["error"] in I.IDENTITY_PROBLEMS, s["name"]
    for key in doc["keys"].values():
        assert mpp.SigningKey(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key["seedHex"]))).did == key["did"]


def test_generated_vectors_are_current() -> None:
    """The committed files (these and those of test_signed_vectors.py) are exactly what tools/gen_vectors.py
    writes (it runs in check mode): a stale vector fails here."""
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_vectors.py")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
