"""CORE-CRED-07: the one strict JSON loader, and the JWS a party is given read through it.

The seller (tests/test_seller_http.py) and the ledger service (tests/test_ledger_service.py)
are checked over HTTP; here the loader itself and the signed tokens: each token below is
correctly signed, so only the strict reading can refuse it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone

import pytest

import mpp
from mpp import identity as I
from mpp.protocol.wire import MAX_JSON_DEPTH, b64url_decode, b64url_encode, loads_strict
from mpp.protocol.errors import ParseError
from mpp.pricing import GrantInvalid, issue_grant, verify_grant

from _identity_support import MANDATE_TIME, mandate

NOT_STRICT = {
    "NaN": '{"a":NaN}',
    "Infinity": '{"a":[Infinity]}',
    "-Infinity": '{"a":{"b":-Infinity}}',
    "number overflowing to infinity": '{"a":-1e400}',
    "repeated member": '{"a":1,"b":2,"a":1}',
    "repeated member, nested": '{"a":[{"b":1,"b":1}]}',
    "escaped lone surrogate": '{"a":"\\udc00"}',
    "33 deep": "[" * 33 + "]" * 33,
    "past the recursion limit": "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("label", sorted(NOT_STRICT))
def test_loader_refuses_what_lenient_json_accepts(label: str):
    """CORE-CRED-07: Python's json takes each of these; the strict loader raises ParseError, and
    only ParseError, for text and for bytes alike."""
    text = NOT_STRICT[label]
    if label != "past the recursion limit":
        json.loads(text)  # lenient: accepted
    for data in (text, text.encode()):
        with pytest.raises(ParseError):
            loads_strict(data, "document")


def test_deep_nesting_is_refused_even_where_the_recursion_limit_was_raised():
    """CORE-CRED-07 with ``sys.setrecursionlimit(100_000)`` (py_ecc, which eth-account imports for the
    evm method, does that on import): a million brackets, and deep ones hidden after strings full
    of brackets, are refused from the text before json.loads recurses, so they cannot overflow the
    C stack. Run in a child process, so a crash is this test's failure, not a dead test worker."""
    program = (
        "import sys; sys.setrecursionlimit(100_000)\n"
        "from mpp.protocol.wire import loads_strict\n"
        "from mpp.protocol.errors import ParseError\n"
        "deep = ['[' * 1_000_000 + ']' * 1_000_000, '[' + '\"[[[[\",' * 40 + '[' * 200_000 + ']' * 200_001,\n"
        "        '{\"a\":' * 150_000 + '1' + '}' * 150_000]\n"
        "for text in deep:\n"
        "    try:\n"
        "        loads_strict(text, 'doc')\n"
        "    except ParseError as exc:\n"
        "        assert 'nests deeper than 32 levels' in str(exc), exc\n"
        "    else:\n"
        "        raise SystemExit('accepted')\n"
        "shallow = '[' + '\"[[[[[[[[[[\",' * 40 + '1]'\n"
        "assert loads_strict(shallow, 'doc')[-1] == 1\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stdout, done.stderr[-2000:])


def test_loader_takes_strict_json_up_to_the_depth_bound():
    """CORE-CRED-07: 32 levels, finite numbers, distinct members in sibling objects, escapes of
    whole characters: all accepted, as the same values json.loads gives."""
    for text in ("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, '{"a":1.5e300,"b":[{"a":1},{"a":2}],"c":"\\ud83d\\udcb8"}',
                 '{"n":-0,"t":true,"z":null}'):
        assert loads_strict(text, "document") == json.loads(text)


def test_loader_refuses_other_encodings_and_lone_surrogates_in_text():
    """CORE-CRED-07: bytes are UTF-8 only (json.loads would guess UTF-16), and text with a lone
    surrogate is not text."""
    for data in ('{"a":1}'.encode("utf-16"), b'{"a":"\xff"}', '{"a":"\ud800"}', b"\xef\xbb\xbf{}"):
        with pytest.raises(ParseError):
            loads_strict(data, "document")


def _resign(token: str, key: mpp.SigningKey, *, header: str | None = None, payload: str | None = None) -> str:
    """``token`` with its header or payload JSON text replaced, correctly signed again by ``key``."""
    head, body, _ = token.split(".")
    head = b64url_encode(header.encode()) if header is not None else head
    body = b64url_encode(payload.encode()) if payload is not None else body
    return f"{head}.{body}.{key.sign(f'{head}.{body}'.encode('ascii'))}"


def _text(part: str) -> str:
    return b64url_decode(part).decode()


@pytest.mark.parametrize("extra", [',"x":NaN', ',"x":Infinity', ',"iss":"ISS"', ',"x":' + "[" * 40 + "]" * 40])
def test_a_signed_mandate_that_is_not_strict_json_is_invalid(extra: str):
    """CORE-CRED-07, IDENT-MDT-03: a mandate signed by its issuer but whose payload holds NaN,
    Infinity, a repeated claim or deep nesting is mandate-invalid."""
    principal, agent = mpp.SigningKey.generate(), mpp.SigningKey.generate()
    token = mandate(principal, agent)
    payload = _text(token.split(".")[1])
    extra = extra.replace("ISS", principal.did)
    I.decode_mandate(_resign(token, principal, payload=payload), now=MANDATE_TIME)  # re-signing alone keeps it valid
    with pytest.raises(I.MandateInvalid):
        I.decode_mandate(_resign(token, principal, payload=payload[:-1] + extra + "}"), now=MANDATE_TIME)


def _receipt(key: mpp.SigningKey) -> str:
    now = int(datetime.now(timezone.utc).timestamp())
    return mpp.sign_receipt(key, {"iss": "api.test", "sub": "did:key:z6Mk", "iat": now, "jti": "c1", "challengeId": "c1",
                                  "amount": "25", "currency": "usd", "reference": "c1"})


@pytest.mark.parametrize("part", ["header", "payload"])
def test_a_signed_receipt_that_is_not_strict_json_is_invalid(part: str):
    """CORE-CRED-07, CORE-BUY-04: a receipt signed by the seller's key whose header or claims
    repeat a member (which pyjwt alone would read, last one winning) does not verify."""
    key = mpp.SigningKey.generate()
    token, jwks = _receipt(key), mpp.jwks_document([key])
    head, body = _text(token.split(".")[0]), _text(token.split(".")[1])
    mpp.verify_receipt_jws(_resign(token, key), jwks, issuer="api.test", challenge_id="c1")
    tampered = (_resign(token, key, header=head[:-1] + ',"alg":"EdDSA"}') if part == "header"
                else _resign(token, key, payload=body[:-1] + ',"amount":"25"}'))
    with pytest.raises(mpp.ReceiptInvalid, match="not a JWS"):
        mpp.verify_receipt_jws(tampered, jwks, issuer="api.test", challenge_id="c1")


def test_a_grant_with_a_kid_that_is_not_a_string_is_invalid():
    """PRICE-GRANT-02: a grant header whose kid is a list or an object is grant-invalid (it was a
    TypeError: unhashable, a 500 on Payment-Grant)."""
    key, agent = mpp.SigningKey.generate(), mpp.SigningKey.generate().did
    claims = {"iss": "api.test", "aud": "api.test", "sub": agent, "jti": "grt_" + "A" * 22, "kind": "task", "iat": 1,
              "exp": 2, "routes": ["GET /t/t1"], "priceList": "v1", "challengeId": "c1", "task": "t1"}
    token = issue_grant(key, claims)
    now = datetime.fromtimestamp(1, timezone.utc)
    assert verify_grant(token, [key], realm="api.test", agent=agent, now=now).jti == claims["jti"]
    for kid in ([key.kid], {"k": key.kid}):
        header = json.dumps({"alg": "EdDSA", "typ": "mpp-grant+jwt", "kid": kid})
        with pytest.raises(GrantInvalid):
            verify_grant(_resign(token, key, header=header), [key], realm="api.test", agent=agent, now=now)
