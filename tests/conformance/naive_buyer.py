"""A deliberately naive buyer, for the buyer-mode tests: it pays whatever it is asked.

    python naive_buyer.py [--resend-same | --resend-idempotent] URL

It follows redirects wherever they lead and pays the 402 it ends up at; it answers the first
Payment challenge without looking at amount, currency, recipient or expiry; it never looks at
the receipt; and after a 5xx it starts over, paying again (up to three times). Exit 0 when it got
a 2xx. Its credential carries a dummy payload (the conformance seller does not verify payloads).

``--resend-same`` sends the same credential again after a 5xx instead of paying anew;
``--resend-idempotent`` does so with an ``Idempotency-Key`` (the one retry CORE-BUY-05 allows).
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from mpp.headers import format_credential, parse_challenges
from mpp.models import Credential

PAYLOAD = {"type": "authorization", "account": "acct:naive", "signer": "did:key:naive", "signature": "naive"}


def get(url: str, headers: dict[str, str] | None = None):
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # follows redirects
            return resp.status, resp.headers, resp.read(), resp.geturl()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read(), exc.geturl()


def main(url: str, resend: str | None = None) -> int:
    credential = where = None
    for _ in range(3):
        if credential is None or resend is None:
            status, headers, body, where = get(url)
            if status != 402:
                return 0 if status < 400 else 1
            challenge = parse_challenges(headers.get_all("WWW-Authenticate") or [])[0]
            credential = format_credential(Credential(challenge=challenge, payload=PAYLOAD))
        extra = {"Idempotency-Key": "naive-1"} if resend == "--resend-idempotent" else {}
        status, headers, body, _ = get(where, {"Authorization": credential, **extra})
        if status < 400:
            sys.stdout.write(body.decode("utf-8", "replace") + "\n")
            return 0
        print(f"naive buyer: HTTP {status}", file=sys.stderr)
        if status < 500:
            return 4
    return 5


if __name__ == "__main__":
    sys.exit(main(sys.argv[-1], sys.argv[1] if len(sys.argv) > 2 else None))
