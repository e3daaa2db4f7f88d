"""The vectors of every other signed or hashed message MPP sends (issue 13): the ledger method's
authorization, the session messages, MPP-Ledger request signatures, receipt JWS, quote hashes,
revocations, audit logs, and task and seat grants with their proofs.

The files are written by tools/gen_vectors.py from fixed keys, times and nonces; this module runs
our implementation on each scenario and compares the bytes, the signature, the result or the
error label (tests/_vectors.py maps our exceptions onto the labels).

Covers: LEDGER-05, LEDGER-06, LEDGER-07, LEDGER-08 (ledger-authorization.json); SESSION-REQ-08,
SESSION-VOUCHER-05 (session-messages.json); LEDGER-SVC-01, LEDGER-SVC-12, LEDGER-SVC-13
(ledger-request.json); CHARGE-06, CHARGE-07, IDENT-RCPT-01, CORE-BUY-04 (receipt-jws.json);
IDENT-APR-02 (quote-hash.json); IDENT-REV-01, IDENT-REV-05 (revocation.json); IDENT-AUD-02,
IDENT-AUD-04, IDENT-AUD-05 (audit-log.json); PRICE-GRANT-01, PRICE-GRANT-02, PRICE-GRANT-03,
PRICE-GRANT-06 (grant.json).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import mpp
from _vectors import VECTORS, known_label, load, raises
from mpp import identity, pricing
from mpp.intents import session as session_core
from mpp.protocol import receipts
from mpp.stores import audit
from mpp.ledger import signing
from mpp.methods.ledger import LedgerSellerMethod, authorization_message

STEMS = ("ledger-authorization", "session-messages", "ledger-request", "receipt-jws", "quote-hash", "revocation",
         "audit-log", "grant")
FILES = {stem: load(stem) for stem in STEMS}
SPEC_IDS = {r["id"] for r in json.loads((VECTORS.parent / "requirements.json").read_text(encoding="utf-8"))}


def _when(unix: int) -> datetime:
    return datetime.fromtimestamp(unix, timezone.utc)


def _key(stem: str, did: str) -> mpp.SigningKey:
    seed = next(k["seedHex"] for k in FILES[stem]["keys"].values() if k["did"] == did)
    return mpp.SigningKey(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed)))


def _check_signed(stem: str, message: bytes, expected: dict[str, Any], signer: str) -> None:
    """The bytes are the file's, and the signer's published seed makes the file's signature (Ed25519 is deterministic)."""
    assert message == bytes.fromhex(expected["signedHex"]) == expected["signedText"].encode("utf-8")
    assert _key(stem, signer).sign(message) == expected["signature"]


# -- runners ---------------------------------------------------------------------------------------


def run_ledger_authorization(s: dict[str, Any]) -> None:
    inp, expected = s["input"], s["expected"]
    challenge = mpp.Challenge(**inp["challenge"])
    request = mpp.ChargeRequest.from_challenge(challenge)
    credential = mpp.Credential(challenge=challenge, payload=inp["payload"])
    method = LedgerSellerMethod(recipient=inp["recipient"], ledger_id=inp["ledger"])
    if "error" in expected:
        with raises(expected["error"]):
            method.verify(credential, request)
        return
    authorization = method.verify(credential, request)
    assert (authorization.account, authorization.signer) == (inp["payload"]["account"], inp["payload"]["signer"])
    message = authorization_message(challenge_id=challenge.id, realm=challenge.realm, request=request,
                                    account=inp["payload"]["account"])
    _check_signed("ledger-authorization", message, expected, inp["payload"]["signer"])
    assert inp["payload"]["signature"] == expected["signature"]


def run_session_message(s: dict[str, Any]) -> None:
    inp, expected = s["input"], s["expected"]
    terms = session_core.SessionTerms.from_json(inp["terms"])
    kind, signer = inp["message"], inp["signer"]
    if kind == "cap":
        message = session_core.cap_message(terms, account=inp["account"], cap=int(inp["cap"]))

        def verify(sig: str) -> None:
            session_core.verify_cap(signer, terms, account=inp["account"], cap=int(inp["cap"]), signature=sig)
    elif kind == "voucher":
        message = session_core.voucher_message(terms, cumulative=int(inp["cumulative"]), sequence=inp["sequence"])

        def verify(sig: str) -> None:
            session_core.verify_voucher(signer, terms, session_core.Voucher(int(inp["cumulative"]), inp["sequence"], sig))
    else:
        assert kind == "close"
        message = session_core.close_message(terms)

        def verify(sig: str) -> None:
            session_core.verify_close(signer, terms, sig)
    if "error" in expected:
        with raises(expected["error"]):
            verify(inp["signature"])
        return
    _check_signed("session-messages", message, expected, signer)
    verify(expected["signature"])
    key = _key("session-messages", signer)
    made = {"cap": lambda: session_core.sign_cap(key, terms, account=inp.get("account", ""), cap=int(inp.get("cap", 0))),
            "voucher": lambda: session_core.sign_voucher(key, terms, int(inp["cumulative"]), inp["sequence"]).signature,
            "close": lambda: session_core.sign_close(key, terms)}[kind]()
    assert made == expected["signature"]


def run_ledger_request(s: dict[str, Any]) -> None:
    inp, expected = s["input"], s["expected"]
    body = inp["body"].encode("utf-8")

    def verify() -> signing.SignedRequest:
        signed = signing.parse_authorization(inp["authorization"])
        signing.verify_request(signed, ledger_id=inp["ledger"], method=inp["method"], target=inp["target"], body=body)
        return signed

    if "error" in expected:
        with raises(expected["error"]):
            verify()
        return
    signed = verify()
    assert signed.keyid == expected["keyid"] and signing.body_digest(body) == expected["bodyHash"]
    message = signing.signed_bytes(ledger_id=inp["ledger"], method=inp["method"], target=inp["target"], ts=signed.ts,
                                   nonce=signed.nonce, body=body)
    _check_signed("ledger-request", message, expected, signed.keyid)
    assert signing.sign_request(_key("ledger-request", signed.keyid), ledger_id=inp["ledger"], method=inp["method"],
                                target=inp["target"], body=body, now=signed.ts, nonce=signed.nonce) == inp["authorization"]


def run_receipt_jws(s: dict[str, Any]) -> None:
    inp, expected = s["input"], s["expected"]

    def verify() -> dict[str, Any]:
        return receipts.verify_receipt_jws(inp["token"], inp["jwks"], issuer=inp["issuer"], challenge_id=inp["challengeId"],
                                           now=_when(inp["now"]))

    if "error" in expected:
        with raises(expected["error"]):
            verify()
        return
    assert verify() == expected["claims"]
    assert inp["token"].rsplit(".", 1)[0] == expected["signingInput"]
    header = json.loads(mpp.b64url_decode(inp["token"].split(".")[0]))
    assert header == expected["header"]
    # our own signer makes a receipt the same JWKS verifies, with the same claims
    kid_key = next(k for k in FILES["receipt-jws"]["keys"].values()
                   if mpp.SigningKey(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(k["seedHex"]))).kid == header["kid"])
    ours = receipts.sign_receipt(mpp.SigningKey(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(kid_key["seedHex"]))),
                                 expected["claims"])
    assert receipts.verify_receipt_jws(ours, inp["jwks"], issuer=inp["issuer"], now=_when(inp["now"])) == expected["claims"]


def run_quote_hash(s: dict[str, Any]) -> None:
    inp, expected = s["input"], s["expected"]
    challenge = mpp.Challenge(**inp["challenge"])
    ours = identity.quote_hash(challenge)
    if "error" in expected:
        assert expected["error"] == "approval-invalid"
        assert ours != inp["quoteHash"]
        return
    assert ours == expected["quoteHash"]


def run_revocation(s: dict[str, Any]) -> None:
    inp, expected = s["input"], s["expected"]
    if "error" in expected:
        with raises(expected["error"]):
            identity.verify_revocation(inp["revocation"], inp["mandate"])
        return
    assert identity.verify_revocation(inp["revocation"], inp["mandate"]) == (expected["mandateKey"], expected["revoker"])


def run_audit_log(s: dict[str, Any]) -> None:
    inp, expected = s["input"], s["expected"]
    anchor = (inp["anchor"]["seq"], inp["anchor"]["hash"]) if "anchor" in inp else None
    head = (inp["head"]["seq"], inp["head"]["hash"]) if inp["head"] is not None else None

    def verify() -> None:
        check = audit.ChainCheck(anchor)
        for e in inp["entries"]:
            check.row((e["seq"], e["ts"], e["kind"], json.dumps(e["data"], ensure_ascii=False), e["prev"], e["hash"]))
        check.finish(head)

    if "error" in expected:
        with raises(expected["error"]) as caught:
            verify()
        assert caught["exc"].seq == expected["seq"]
        return
    verify()
    for e, text, digest in zip(inp["entries"], expected["hashInputs"], expected["hashes"], strict=True):
        assert audit.entry_hash(e["seq"], e["ts"], e["kind"], e["data"], e["prev"]) == digest
        assert mpp.canonical_json({k: e[k] for k in ("data", "kind", "prev", "seq", "ts")}).decode("utf-8") == text
    assert expected["head"] == inp["head"]


def run_grant(s: dict[str, Any]) -> None:
    inp, expected = s["input"], s["expected"]
    req, now = inp["request"], _when(inp["now"])
    body = req["body"].encode("utf-8")
    seen = pricing.SeenGrantProofs()

    def present() -> pricing.Grant:
        proof = pricing.parse_grant_proof(inp["proof"])
        grant = pricing.verify_grant(inp["grant"], inp["jwks"], realm=inp["realm"], agent=proof.agent, now=now,
                                     task_id=inp.get("task"), route=(req["method"], req["path"]))
        pricing.verify_grant_proof(proof, grant=grant, method=req["method"], path=req["path"], query=req["query"],
                                   body=body, now=now)
        seen.admit(grant, proof, now)
        return grant

    if inp.get("replay"):
        present()
    if "error" in expected:
        with raises(expected["error"]):
            present()
        return
    grant = present()
    assert grant.token == inp["grant"]
    claims = expected["claims"]
    assert (grant.jti, grant.kind, grant.agent, grant.realm, list(grant.routes)) == (
        claims["jti"], claims["kind"], claims["sub"], claims["aud"], claims["routes"])
    if grant.kind == "seat":  # the subscription id of pricing.md §3.2, from realm, plan and agent
        assert pricing.subscription_id(grant.realm, claims["plan"], grant.agent) == claims["subscriptionId"]
    proof = pricing.parse_grant_proof(inp["proof"])
    message = pricing.grant_proof_message(agent=proof.agent, grant_id=grant.jti, method=req["method"], path=req["path"],
                                          query=req["query"], body=body, t=proof.t, nonce=proof.nonce)
    assert message == bytes.fromhex(expected["proofHex"]) == expected["proofText"].encode("utf-8")
    key = _key("grant", proof.agent)
    assert proof.sig == expected["signature"]
    assert pricing.sign_grant_proof(key, grant_id=grant.jti, method=req["method"], path=req["path"], query=req["query"],
                                    body=body, now=_when(proof.t), nonce=proof.nonce) == inp["proof"]


RUNNERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "ledger-authorization": run_ledger_authorization,
    "session-messages": run_session_message,
    "ledger-request": run_ledger_request,
    "receipt-jws": run_receipt_jws,
    "quote-hash": run_quote_hash,
    "revocation": run_revocation,
    "audit-log": run_audit_log,
    "grant": run_grant,
}
RUNS = frozenset(RUNNERS)
CASES = [pytest.param(stem, s, id=f"{stem}/{s['name']}") for stem in STEMS for s in FILES[stem]["scenarios"]]


@pytest.mark.parametrize(("stem", "scenario"), CASES)
def test_signed_vector(stem: str, scenario: dict[str, Any]) -> None:
    RUNNERS[stem](scenario)


@pytest.mark.parametrize("stem", STEMS)
def test_signed_vector_file_shape(stem: str) -> None:
    """Each scenario: unique name, tags, description, requirement ids known to spec/requirements.json,
    input, and expected either {valid: true, ...} or {error: label} with a label of spec/README.md."""
    doc = FILES[stem]
    names = [s["name"] for s in doc["scenarios"]]
    assert len(names) == len(set(names))
    assert any("error" in s["expected"] for s in doc["scenarios"]) and any("valid" in s["expected"] for s in doc["scenarios"])
    for s in doc["scenarios"]:
        assert s["tags"] and s["description"] and s["input"], s["name"]
        assert s["requirements"] and set(s["requirements"]) <= SPEC_IDS, (s["name"], set(s["requirements"]) - SPEC_IDS)
        expected = s["expected"]
        assert (expected.get("valid") is True) != ("error" in expected), s["name"]
        if "error" in expected:
            assert known_label(expected["error"]), s["name"]


def test_voucher_sequence_bound() -> None:
    """SESSION-REQ-07: a sequence above 2^53 - 1 cannot be signed as JCS (SESSION-REQ-08), so it is refused
    session-voucher-invalid when the payload is read, never later as an unexpected error."""
    voucher = {"cumulative": "1", "signature": "A" * 86}
    base = {"type": "session", "action": "voucher", "sessionId": "s", "signer": FILES["session-messages"]["keys"]["agent"]["did"]}
    assert session_core.parse_session_payload(base | {"voucher": voucher | {"sequence": 2**53 - 1}}).voucher.sequence == 2**53 - 1
    with raises("session-voucher-invalid"):
        session_core.parse_session_payload(base | {"voucher": voucher | {"sequence": 2**53}})
