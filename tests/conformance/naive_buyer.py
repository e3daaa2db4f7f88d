"""A deliberately naive buyer, for the buyer-mode tests: it pays whatever it is asked.

    python naive_buyer.py [FLAGS] URL

It follows redirects wherever they lead and pays the 402 it ends up at; it answers the first
Payment challenge without looking at amount, currency, recipient, expiry or transport; it never
looks at the receipt; and after a 5xx it starts over, paying again (up to three times). Exit 0 when
it got a 2xx. Its credential carries a dummy payload (the conformance seller does not verify payloads).

Flags that make it misbehave in one more way each (every one of them still pays the baseline):

``--resend-same``         after a 5xx, send the same credential again instead of paying anew;
``--resend-idempotent``   do so with an ``Idempotency-Key`` (the one retry CORE-BUY-05 allows);
``--max-field N``         give up (exit 2, nothing sent) on a ``WWW-Authenticate`` value over N bytes;
``--strict-params``       refuse (exit 2) a challenge carrying a parameter it does not know;
``--cut-id``              echo only the first 43 characters of the id (it assumes HMAC-SHA256 ids);
``--reencode-opaque``     echo opaque decoded and re-encoded by ``json.dumps`` (sorted, compact, but
                          non-ASCII escaped: not JCS), so an opaque holding non-ASCII text changes;
``--drop-long-opaque``    leave out of the echo an opaque longer than 64 characters;
``--data BODY``           POST BODY (the first request and the paid one);
``--change-body``         with ``--data``: re-serialise the JSON body for the paid request (other bytes);
``--trust-description``   with ``--max-amount``: take the amount from the first number in the
                          challenge's ``description`` when it has one (what draft §11.6 forbids).

And flags that make it better behaved, to show what a check accepts:

``--max-amount N``        refuse (exit 3) a request amount over N base units;
``--loopback-only-http``  refuse (exit 3) to send a credential over plain http to a non-loopback host.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from mpp import b64url_decode, b64url_encode
from mpp.protocol.headers import format_credential, parse_challenges
from mpp.protocol.models import Credential

PAYLOAD = {"type": "authorization", "account": "acct:naive", "signer": "did:key:naive", "signature": "naive"}
KNOWN = {"id", "realm", "method", "intent", "request", "expires", "digest", "description", "header", "opaque"}
_PARAM = re.compile(r"""(?:^\s*Payment\s+|,\s*)([A-Za-z0-9!#$%&'*+.^_`|~-]+)\s*=""", re.IGNORECASE)
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy from the environment: the suite is local


def get(url: str, headers: dict[str, str] | None = None, data: bytes | None = None):
    request = urllib.request.Request(url, headers=headers or {}, data=data, method="POST" if data is not None else "GET")
    try:
        with _OPENER.open(request, timeout=10) as resp:  # follows redirects
            return resp.status, resp.headers, resp.read(), resp.geturl()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read(), exc.geturl()


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refuse(args: argparse.Namespace, values: list[str], where: str) -> tuple[int, str] | None:
    """(exit status, reason) when one of the flags makes it refuse this 402, else None."""
    if args.max_field is not None and any(len(v.encode()) > args.max_field for v in values):
        return 2, f"WWW-Authenticate longer than {args.max_field} bytes"
    if args.strict_params:
        unknown = sorted({name.lower() for v in values for name in _PARAM.findall(v)} - KNOWN)
        if unknown:
            return 2, f"unknown challenge parameters {unknown}"
    if args.loopback_only_http and urlsplit(where).scheme == "http" and not _loopback(where):
        return 3, "plain http to a host that is not loopback"
    return None


def _amount(challenge, trust_description: bool) -> int:
    if trust_description and challenge.description:
        m = re.search(r"\d+", challenge.description)
        if m:
            return int(m.group())
    return int(challenge.request_json.get("amount", "0"))


def _credential(args: argparse.Namespace, challenge) -> str:
    update = {}
    if args.cut_id:
        update["id"] = challenge.id[:43]
    if challenge.opaque is not None and args.reencode_opaque:
        doc = json.loads(b64url_decode(challenge.opaque))
        update["opaque"] = b64url_encode(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    if challenge.opaque is not None and args.drop_long_opaque and len(challenge.opaque) > 64:
        update["opaque"] = None
    return format_credential(Credential(challenge=challenge.model_copy(update=update), payload=PAYLOAD))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="naive_buyer")
    p.add_argument("url")
    resend = p.add_mutually_exclusive_group()
    resend.add_argument("--resend-same", action="store_const", dest="resend", const="same")
    resend.add_argument("--resend-idempotent", action="store_const", dest="resend", const="idempotent")
    p.add_argument("--max-field", type=int)
    p.add_argument("--strict-params", action="store_true")
    p.add_argument("--cut-id", action="store_true")
    p.add_argument("--reencode-opaque", action="store_true")
    p.add_argument("--drop-long-opaque", action="store_true")
    p.add_argument("--data")
    p.add_argument("--change-body", action="store_true")
    p.add_argument("--max-amount", type=int)
    p.add_argument("--trust-description", action="store_true")
    p.add_argument("--loopback-only-http", action="store_true")
    args = p.parse_args(argv)
    data = args.data.encode() if args.data is not None else None
    paid_data = json.dumps(json.loads(args.data)).encode() if data is not None and args.change_body else data
    credential = where = None
    for _ in range(3):
        if credential is None or args.resend is None:
            status, headers, body, where = get(args.url, data=data)
            if status != 402:
                return 0 if status < 400 else 1
            values = headers.get_all("WWW-Authenticate") or []
            refused = _refuse(args, values, where)
            if refused is not None:
                print(f"naive buyer: refused: {refused[1]}", file=sys.stderr)
                return refused[0]
            challenge = parse_challenges(values)[0]
            if args.max_amount is not None and _amount(challenge, args.trust_description) > args.max_amount:
                print("naive buyer: refused: amount over the limit", file=sys.stderr)
                return 3
            credential = _credential(args, challenge)
        extra = {"Idempotency-Key": "naive-1"} if args.resend == "idempotent" else {}
        status, headers, body, _ = get(where, {"Authorization": credential, **extra}, data=paid_data)
        if status < 400:
            sys.stdout.write(body.decode("utf-8", "replace") + "\n")
            return 0
        print(f"naive buyer: HTTP {status}", file=sys.stderr)
        if status < 500:
            return 4
    return 5


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
