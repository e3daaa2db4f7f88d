"""Data-driven vectors: every scenario of the hand-written files in spec/vectors/ is one test case (the
files tools/gen_vectors.py writes run in test_identity_vectors.py and test_signed_vectors.py).

The data (inputs, expected outputs, expected error labels of spec/README.md) lives in the JSON files; this module
only knows how to run each kind of scenario. Upstream scenarios come from the cross-SDK vectors
(tempoxyz/mpp-tools conformance/vectors); the files name their source.

Covers: CORE-ID-01, CORE-ID-02, CORE-ID-03 (challenge-id.json); CORE-CHAL-03 .. CORE-CHAL-11
(www-authenticate.json); CORE-CRED-01, CORE-CRED-02 (authorization.json, base64url.json);
CORE-RCPT-01, CORE-RCPT-04 (receipt.json); CORE-BIND-03, CORE-BIND-04 (digest.json);
LEDGER-07, LEDGER-08 (did-key.json).
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import mpp
import test_identity_vectors
import test_signed_vectors
from _vectors import VECTORS, known_label, raises




def _load() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(VECTORS.glob("*.json"))}


FILES = _load()
# The generated files (tools/gen_vectors.py) run in test_identity_vectors.py and test_signed_vectors.py.
GENERATED_FILES = set(test_identity_vectors.FILES) | set(test_signed_vectors.RUNS)
CASES = [pytest.param(stem, scenario, id=f"{stem}/{scenario['name']}") for stem, doc in FILES.items()
         if stem not in GENERATED_FILES for scenario in doc["scenarios"]]


def expect_error(label: str):
    """The vector's error label (spec/README.md, "Vectors"), as tests/_vectors.py maps it onto our exceptions."""
    return raises(label)


# -- helpers ------------------------------------------------------------------------------------


def _wire_value(wire: Any) -> Any:
    """A field value: a string, a list of field values, or {prefix, repeat, count}."""
    if isinstance(wire, dict):
        return wire["prefix"] + wire["repeat"] * wire["count"]
    return wire


def _challenge_as_object(challenge: mpp.Challenge) -> dict[str, Any]:
    """A parsed challenge in the vectors' shape: request (and opaque) decoded."""
    obj = challenge.model_dump(exclude_none=True)
    obj["request"] = challenge.request_json
    if challenge.opaque is not None:
        obj["opaque"] = challenge.opaque_json
    return obj


def _challenge_from_object(obj: dict[str, Any]) -> mpp.Challenge:
    fields = dict(obj)
    fields["request"] = mpp.encode_json_b64(obj["request"])
    if isinstance(obj.get("opaque"), dict):
        fields["opaque"] = mpp.encode_json_b64(obj["opaque"])
    return mpp.Challenge(**fields)


def _credential_as_object(credential: mpp.Credential) -> dict[str, Any]:
    obj = credential.to_json()
    obj["challenge"] = _challenge_as_object(credential.challenge)
    return obj


def _credential_from_object(obj: dict[str, Any]) -> mpp.Credential:
    return mpp.Credential(challenge=_challenge_from_object(obj["challenge"]), payload=obj["payload"], source=obj.get("source"))


# -- runners, one per file ----------------------------------------------------------------------


def run_challenge_id(s: dict[str, Any]) -> None:
    inp = dict(s["input"])
    secret = inp.pop("secretKey").encode("utf-8")
    request = mpp.encode_json_b64(inp.pop("request"))
    inp.pop("description", None)  # never part of the id: the vectors include it to prove that
    if "error" in s:
        with expect_error(s["error"]):
            mpp.compute_challenge_id(secret, request=request, **inp)
        return
    assert mpp.compute_challenge_id(secret, request=request, **inp) == s["expected"]


def run_www_authenticate(s: dict[str, Any]) -> None:
    if s["operation"] == "parse":
        wire = _wire_value(s["wire"])
        if "error" in s:
            with expect_error(s["error"]):
                mpp.parse_challenges(wire)
            return
        started = time.monotonic()
        parsed = mpp.parse_challenges(wire)
        elapsed_ms = (time.monotonic() - started) * 1000
        assert [_challenge_as_object(c) for c in parsed] == s["expected"]
        if "maxDurationMs" in s:
            assert elapsed_ms < s["maxDurationMs"]
        return
    assert s["operation"] == "format"
    if "error" in s:
        with expect_error(s["error"]):
            mpp.format_challenge(_challenge_from_object(s["object"]))
        return
    challenge = _challenge_from_object(s["object"])
    # Our formatter writes id, realm, method, intent, request, then the optional parameters in
    # a fixed order; every upstream format vector uses that same order, so the comparison is exact.
    assert mpp.format_challenge(challenge) == s["expected"]
    if s.get("roundtrip"):
        assert mpp.parse_challenges(s["expected"]) == [challenge]


def run_authorization(s: dict[str, Any]) -> None:
    if s["operation"] == "parse":
        if "error" in s:
            with expect_error(s["error"]):
                mpp.parse_credential(s["wire"])
            return
        assert _credential_as_object(mpp.parse_credential(s["wire"])) == s["expected"]
        return
    assert s["operation"] == "format"
    credential = _credential_from_object(s["object"])
    assert mpp.format_credential(credential) == s["expected"]
    if s.get("roundtrip"):
        assert mpp.parse_credential(s["expected"]) == credential


def run_base64url(s: dict[str, Any]) -> None:
    op = s["operation"]
    if op == "encode":
        assert mpp.b64url_encode(s["decoded"].encode("utf-8")) == s["expected"]
        return
    if op == "decode":
        if "error" in s:
            with expect_error(s["error"]):
                mpp.b64url_decode(s["encoded"]).decode("utf-8")
            return
        assert mpp.b64url_decode(s["encoded"]).decode("utf-8") == s["expected"]
        return
    assert op == "decode_json"
    if "error" in s:
        with expect_error(s["error"]):
            mpp.decode_json_b64(s["encoded"], "value")
        return
    assert mpp.decode_json_b64(s["encoded"], "value") == s["expected"]


def run_receipt(s: dict[str, Any]) -> None:
    if s["operation"] == "format":
        assert mpp.format_receipt(mpp.PaymentReceipt(**s["object"])) == s["expected"]
        assert mpp.parse_receipt(s["expected"]).to_json() == s["object"]
        return
    assert s["operation"] == "parse"
    if "decoded" in s and "padded" not in s["name"] and "not_base64url" not in s["name"]:
        # the data's own consistency: the wire value encodes what 'decoded' shows
        assert json.loads(mpp.b64url_decode(s["wire"].strip(" \t"))) == s["decoded"]
    if "error" in s:
        with expect_error(s["error"]):
            mpp.parse_receipt(s["wire"])
        return
    assert mpp.parse_receipt(s["wire"]).to_json() == s["expected"]


def run_digest(s: dict[str, Any]) -> None:
    body = s["body"].encode("utf-8")
    if s["operation"] == "compute":
        assert mpp.content_digest(body, s["algorithm"]) == s["expected"]
        return
    assert s["operation"] == "verify"
    if "error" in s:
        with expect_error(s["error"]):
            mpp.verify_content_digest(s["digest"], body)
        return
    assert mpp.verify_content_digest(s["digest"], body) is None


def run_did_key(s: dict[str, Any]) -> None:
    op = s["operation"]
    if op == "roundtrip":
        raw = bytes.fromhex(s["publicKeyHex"])
        assert mpp.did_from_public_key(Ed25519PublicKey.from_public_bytes(raw)) == s["expected"]
        back = mpp.public_key_from_did(s["expected"])
        assert back.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == raw
        return
    if op == "verify":
        message = bytes.fromhex(s["messageHex"])
        if "error" in s:
            with expect_error(s["error"]):
                mpp.verify_signature(s["did"], message, s["signature"])
            return
        assert mpp.verify_signature(s["did"], message, s["signature"]) is None
        return
    assert op == "parse"
    with expect_error(s["error"]):
        mpp.public_key_from_did(s["did"])


RUNNERS = {
    "challenge-id": run_challenge_id,
    "www-authenticate": run_www_authenticate,
    "authorization": run_authorization,
    "base64url": run_base64url,
    "receipt": run_receipt,
    "digest": run_digest,
    "did-key": run_did_key,
}


@pytest.mark.parametrize(("stem", "scenario"), CASES)
def test_vector(stem: str, scenario: dict[str, Any]) -> None:
    RUNNERS[stem](scenario)


# -- the data itself ----------------------------------------------------------------------------


def test_every_vector_file_has_a_runner():
    """Every file in spec/vectors/ is run by exactly one of the three runners, and every file a runner
    names exists: a new vector file fails here until a test runs it."""
    runners = [set(RUNNERS), set(test_identity_vectors.FILES), set(test_signed_vectors.RUNS)]
    assert set(FILES) == set().union(*runners)
    assert sum(len(r) for r in runners) == len(FILES), "a file is run by two runners"


@pytest.mark.parametrize("stem", sorted(set(FILES) - GENERATED_FILES))
def test_vector_file_shape(stem: str):
    """Each file: description, source, scenarios; each scenario: a unique name, tags, and exactly
    one of expected/error, with an error label of spec/README.md ("Vectors")."""
    doc = FILES[stem]
    assert isinstance(doc["description"], str) and doc["description"]
    assert isinstance(doc["source"], str) and doc["source"]
    names = [s["name"] for s in doc["scenarios"]]
    assert len(names) == len(set(names)), "scenario names repeat"
    for s in doc["scenarios"]:
        assert isinstance(s["tags"], list) and s["tags"], s["name"]
        assert ("expected" in s) != ("error" in s), s["name"]
        if "error" in s:
            assert known_label(s["error"]), s["name"]


def test_upstream_challenge_id_vectors_are_all_present():
    """The cross-SDK challenge-id file has 29 scenarios; all of them are carried over."""
    upstream = [s for s in FILES["challenge-id"]["scenarios"] if s.get("origin") == "upstream"]
    assert len(upstream) == 29
    assert sum("error" in s for s in upstream) == 1


def test_rfc9530_examples_are_standard_base64():
    """The digest file's expected values are standard base64 of 32/64 bytes (not base64url)."""
    for s in FILES["digest"]["scenarios"]:
        if s["operation"] == "compute":
            alg, _, value = s["expected"].partition("=:")
            raw = base64.b64decode(value.rstrip(":"), validate=True)
            assert len(raw) == {"sha-256": 32, "sha-512": 64}[alg]
