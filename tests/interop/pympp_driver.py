"""Drive pympp (PyPI ``pympp``, which also imports as ``mpp``) against our wire format.

Runs ONLY under a separate virtualenv holding pympp and cryptography (see requirements.txt);
it must never import this project, because both packages are called ``mpp``.
Each subcommand prints one JSON object on stdout; failures exit non-zero with a message on stderr.

  parse-challenge --header 'Payment id="...", ...' [--secret S]
  challenge-id    --secret S --realm R --method M --intent I --request-json J
                  [--expires E] [--digest D] [--opaque O | --opaque-json J] [--credential-header H]
  parse-receipt   --header B64
  pay             --url URL --key-pem PATH --account ACCT [--data BODY] [--content-type T]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from typing import Any

import rfc8785  # pympp's own JCS dependency
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import BaseModel, ConfigDict

from mpp import Challenge, Credential, Receipt, generate_challenge_id
from mpp.client import ClientMethod, CredentialParams, Method, Mpp

SIGNING_DOMAIN = b"mpp-ledger-charge-v1\n"
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def b64url_json(text: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


def base58btc(data: bytes) -> str:
    # Inline so the side venv needs no base58 package; leading zero bytes become "1".
    n, out = int.from_bytes(data, "big"), ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def challenge_json(c: Challenge) -> dict[str, Any]:
    echo = c.to_echo()  # what pympp would echo back in a credential
    return {
        "id": c.id, "realm": c.realm, "method": c.method, "intent": c.intent,
        "request": c.request, "request_b64": c.request_b64, "expires": c.expires,
        "digest": c.digest, "description": c.description, "opaque": c.opaque,
        "opaque_b64": echo.opaque, "header": c.header,
    }


def cmd_parse_challenge(a: argparse.Namespace) -> dict[str, Any]:
    c = Challenge.from_www_authenticate(a.header)
    out = challenge_json(c)
    if a.secret is not None:
        # pympp recomputes the HMAC from the *decoded* request/opaque (re-encoded as JCS).
        out["verified"] = c.verify(a.secret, c.realm)
    return out


def cmd_challenge_id(a: argparse.Namespace) -> dict[str, Any]:
    opaque = None
    if a.opaque_json is not None:
        opaque = json.loads(a.opaque_json)
    elif a.opaque is not None:
        # pympp only models opaque as a JSON object, so the wire value must decode to one.
        try:
            opaque = b64url_json(a.opaque)
        except ValueError as exc:
            raise SystemExit(f"pympp cannot represent opaque {a.opaque!r}: not base64url JSON ({exc})")
        if not isinstance(opaque, dict):
            raise SystemExit(f"pympp cannot represent opaque {a.opaque!r}: not a JSON object")
    cid = generate_challenge_id(
        secret_key=a.secret, realm=a.realm, method=a.method, intent=a.intent,
        request=json.loads(a.request_json), expires=a.expires, digest=a.digest,
        opaque=opaque, header=a.credential_header,
    )
    return {"id": cid}


def receipt_json(r: Receipt) -> dict[str, Any]:
    return {
        "status": r.status, "timestamp": r.timestamp.isoformat(), "reference": r.reference,
        "method": r.method, "externalId": r.external_id, "subscriptionId": r.subscription_id,
        "fundingCurrency": r.funding_currency, "extra": r.extra, "extensions": r.extensions,
    }


def cmd_parse_receipt(a: argparse.Namespace) -> dict[str, Any]:
    return receipt_json(Receipt.from_payment_receipt(a.header))


class _Open(BaseModel):
    # The client side never validates through these models; pympp's Method just requires them.
    model_config = ConfigDict(extra="allow")


def ledger_method(key_pem: str, account: str) -> ClientMethod:
    """A pympp client method named ``ledger`` that signs our ledger authorization."""
    with open(key_pem, "rb") as f:
        key = load_pem_private_key(f.read(), password=None)
    raw = key.public_key().public_bytes_raw()
    did = "did:key:z" + base58btc(b"\xed\x01" + raw)

    async def create_credential(params: CredentialParams) -> str:
        c = params.challenge
        req = c.request
        # Signed fields come from the challenge (docs/wire-decisions.md), including the ledger id.
        message = SIGNING_DOMAIN + rfc8785.dumps({
            "account": account, "amount": req["amount"], "challengeId": c.id,
            "currency": req["currency"], "ledger": req["methodDetails"]["ledger"],
            "realm": c.realm, "recipient": req["recipient"],
        })
        payload = {"type": "authorization", "account": account, "signer": did,
                   "signature": b64url(key.sign(message))}
        return Credential(challenge=c.to_echo(), payload=payload, source=did).to_authorization()

    definition = Method(name="ledger", intent="charge", request_model=_Open, payload_model=_Open)
    return ClientMethod(method=definition, create_credential=create_credential)


async def cmd_pay(a: argparse.Namespace) -> dict[str, Any]:
    failures: list[str] = []
    async with Mpp(methods=[ledger_method(a.key_pem, a.account)]) as client:
        # pympp returns an unanswered 402 silently when it cannot parse/match; record why.
        client.on_payment_failed(lambda p: failures.append(repr(p["error"])))
        kwargs: dict[str, Any] = {}
        if a.data is not None:
            kwargs = {"content": a.data.encode(), "headers": {"Content-Type": a.content_type}}
        resp = await client.fetch(a.url, method="POST" if a.data is not None else "GET", **kwargs)
    header = resp.headers.get("payment-receipt")
    out: dict[str, Any] = {"status": resp.status_code, "body": resp.text,
                           "receipt": b64url_json(header) if header else None,
                           "payment_failures": failures}
    if header:
        out["receipt_pympp"] = receipt_json(Receipt.from_payment_receipt(header))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("parse-challenge")
    s.add_argument("--header", required=True)
    s.add_argument("--secret")
    s = sub.add_parser("challenge-id")
    for name in ("--secret", "--realm", "--method", "--intent", "--request-json"):
        s.add_argument(name, required=True)
    for name in ("--expires", "--digest", "--credential-header"):
        s.add_argument(name)
    g = s.add_mutually_exclusive_group()
    g.add_argument("--opaque", help="wire value: base64url of a JSON object")
    g.add_argument("--opaque-json", help="the decoded JSON object")
    s = sub.add_parser("parse-receipt")
    s.add_argument("--header", required=True)
    s = sub.add_parser("pay")
    s.add_argument("--url", required=True)
    s.add_argument("--key-pem", required=True)
    s.add_argument("--account", required=True)
    s.add_argument("--data")
    s.add_argument("--content-type", default="application/json")
    a = p.parse_args()
    try:
        if a.cmd == "parse-challenge":
            out = cmd_parse_challenge(a)
        elif a.cmd == "challenge-id":
            out = cmd_challenge_id(a)
        elif a.cmd == "parse-receipt":
            out = cmd_parse_receipt(a)
        else:
            out = asyncio.run(cmd_pay(a))
    except SystemExit:
        raise
    except Exception as exc:  # report any pympp rejection as a clean failure
        print(f"{a.cmd}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
