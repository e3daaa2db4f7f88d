"""Coverage-guided fuzzing (atheris, libFuzzer) of the parsers of untrusted input.

An optional long run, not part of `make test` (tests/test_properties*.py run a fixed hypothesis
budget there). atheris is not a dependency of the project; install it in a side environment:

    python3 -m venv /tmp/mpp-fuzz && /tmp/mpp-fuzz/bin/pip install atheris -e .
    /tmp/mpp-fuzz/bin/python tools/fuzz_parsers.py -max_total_time=600 -rss_limit_mb=4096 /tmp/mpp-fuzz-corpus
    /tmp/mpp-fuzz/bin/python tools/fuzz_parsers.py crash-<sha1>          # replay one finding

Each input picks a parser and either feeds it the bytes as they are or splices them into a valid
value (a header, a credential, a JWS), so that the fuzzer starts past the first syntax check.
A parser may return or raise its documented error (ParseError, the PaymentProblem it names,
PriceListError); anything else escapes, and libFuzzer writes the input as crash-<sha1>.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports():
    import mpp
    from mpp import identity as I
    from mpp.protocol.wire import decode_jws, loads_strict
    from mpp.protocol.errors import ParseError, PaymentProblem
    from mpp.protocol.headers import parse_accept_payment
    from mpp.ledger.signing import parse_authorization, sign_request
    from mpp.methods.ledger import LedgerBuyerMethod, LedgerSellerMethod
    from mpp.pricing import PriceListError, issue_grant, load_price_list, parse_grant_proof, verify_grant
    from mpp.intents.session import parse_session_payload

NOW = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)
REALM = "fuzz.test"
AGENT, PRINCIPAL, SELLER = mpp.SigningKey.generate(), mpp.SigningKey.generate(), mpp.SigningKey.generate()
METHOD = LedgerSellerMethod(recipient="acct:seller", ledger_id="ledger-1")
CORE = mpp.SellerCore(mpp.ChallengeIssuer(b"f" * 32, REALM), {"ledger": METHOD})
CHALLENGE = CORE.challenges(mpp.Price(25, "usd", "fuzz"), mpp.RequestInfo("GET", "/thing"), NOW)[0]
REQUEST = mpp.ChargeRequest.from_challenge(CHALLENGE)
MANDATE = I.issue_mandate(PRINCIPAL, subject=AGENT.did, audience=[REALM], scope=["*"], currency="usd", ceiling=500,
                          budget_amount=5000, budget_period="total", not_before=NOW, expires=NOW.replace(year=2027))
CHAIN = I.verify_chain([MANDATE], trusted_principals={PRINCIPAL.did}, realm=REALM, now=NOW)
APPROVAL = I.issue_approval(PRINCIPAL, agent=AGENT.did, challenge_id=CHALLENGE.id, quote=I.quote_hash(CHALLENGE), amount="25",
                            currency="usd", rule="threshold", mandate=CHAIN.leaf.jti, now=NOW)
CREDENTIAL = mpp.sign_quote(mpp.Quote(CHALLENGE, REQUEST, LedgerBuyerMethod(key=AGENT, account="acct:buyer")),
                            {"identity": I.identity_member([MANDATE], AGENT, CHALLENGE, REQUEST, approval=APPROVAL)})
GRANT = issue_grant(SELLER, {"iss": REALM, "aud": REALM, "sub": AGENT.did, "jti": "grt_" + "A" * 22, "kind": "task",
                             "iat": int(NOW.timestamp()), "exp": int(NOW.timestamp()) + 3600, "routes": ["GET /jobs/t1"],
                             "priceList": "v1", "challengeId": CHALLENGE.id, "task": "t1"})
PRICES = """version = "v1"
currency = "usd"

[[routes]]
method = "GET"
path = "/jobs"

  [[routes.offers]]
  model = "task"
  amount = 500
  follow_ups = ["GET /jobs/{task}"]
  grant_ttl = 3600
  refund = "full"
"""


def _challenges(text: str) -> None:
    for skip in (False, True):
        try:
            for c in mpp.parse_challenges(text, skip_invalid=skip):
                c.request_json, c.opaque_json, c.expires_at  # noqa: B018 - what a buyer reads next
        except ParseError:
            pass


def _credential(text: str) -> None:
    try:
        credential = mpp.parse_credential(text)
    except ParseError:
        return
    for check in (lambda: METHOD.verify(credential, REQUEST), lambda: parse_session_payload(credential.payload),
                  lambda: I.verify_identity(credential, REQUEST, payment_signer=credential.source,
                                            trusted_principals={PRINCIPAL.did}, realm=REALM, now=NOW)):
        try:
            check()
        except PaymentProblem:
            pass


def _receipt(text: str) -> None:
    try:
        mpp.parse_receipt(text)
    except ParseError:
        pass


def _json(text: str) -> None:
    try:
        loads_strict(text, "document")
    except ParseError:
        pass


def _tokens(text: str) -> None:
    for check in (lambda: decode_jws(text), lambda: I.decode_mandate(text, now=NOW),
                  lambda: I.verify_chain([MANDATE, text], trusted_principals={PRINCIPAL.did}, realm=REALM, now=NOW),
                  lambda: I.verify_approval(text, chain=CHAIN, challenge=CHALLENGE, request=REQUEST, now=NOW)):
        try:
            check()
        except (ParseError, PaymentProblem):
            pass


def _grant(text: str) -> None:
    for keys in ([SELLER], mpp.jwks_document([SELLER])):
        try:
            verify_grant(text, keys, realm=REALM, agent=AGENT.did, now=NOW, task_id="t1", route=("GET", "/jobs/t1"))
        except PaymentProblem:
            pass
    try:
        parse_grant_proof(text)
    except PaymentProblem:
        pass


def _ledger_authorization(text: str) -> None:
    try:
        parse_authorization(text)
    except ParseError:
        pass


def _price_list(text: str) -> None:
    try:
        load_price_list(text, source="prices.toml")
    except PriceListError:
        pass


def _accept_payment(text: str) -> None:
    parse_accept_payment(text)  # None when malformed: never raises


def _b64(text: str) -> str:
    return mpp.b64url_encode(text.encode("utf-8", "surrogatepass"))


def _decoded(token: str) -> str:
    """A compact JWS as 'header JSON' LF 'payload JSON', what the fuzzer edits before `_signed` wraps it."""
    head, body, _ = token.split(".")
    return mpp.b64url_decode(head).decode() + "\n" + mpp.b64url_decode(body).decode()


def _signed(key: mpp.SigningKey):
    """Past base64url and the signature: the edited header and payload, signed by the right key,
    so that the claim checks behind them are fuzzed too."""
    def wrap(text: str) -> str:
        header, _, payload = text.partition("\n")
        signing_input = f"{_b64(header)}.{_b64(payload)}"
        return f"{signing_input}.{key.sign(signing_input.encode('ascii'))}"
    return wrap


def _raw(text: str) -> str:
    return text


RECEIPT = mpp.format_receipt(mpp.PaymentReceipt(status="success", method="ledger", timestamp="2026-06-01T12:00:00Z",
                                                reference="r1", challengeId=CHALLENGE.id, receipt=GRANT))

# (parser, a valid value to splice into, what wraps the edited value before it is parsed)
TARGETS = [
    (_challenges, mpp.format_challenge(CHALLENGE), _raw),
    (_credential, CREDENTIAL, _raw),
    (_credential, mpp.b64url_decode(CREDENTIAL.split(" ", 1)[1]).decode(), lambda text: "Payment " + _b64(text)),
    (_receipt, RECEIPT, _raw),
    (_receipt, mpp.b64url_decode(RECEIPT).decode(), _b64),
    (_json, mpp.b64url_decode(CREDENTIAL.split(" ", 1)[1]).decode(), _raw),
    (_tokens, MANDATE, _raw),
    (_tokens, _decoded(MANDATE), _signed(PRINCIPAL)),
    (_tokens, _decoded(APPROVAL), _signed(PRINCIPAL)),
    (_grant, GRANT, _raw),
    (_grant, _decoded(GRANT), _signed(SELLER)),
    (_ledger_authorization, sign_request(SELLER, ledger_id="ledger-1", method="POST", target="/v1/transfers", body=b"{}"), _raw),
    (_price_list, PRICES, _raw),
    (_accept_payment, "ledger/charge;q=0.5, */*;q=0.1", _raw),
]


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    parse, valid, wrap = TARGETS[fdp.ConsumeIntInRange(0, len(TARGETS) - 1)]
    if fdp.ConsumeBool():  # splice the rest into the valid value, between two cut points
        a, b = sorted((fdp.ConsumeIntInRange(0, len(valid)), fdp.ConsumeIntInRange(0, len(valid))))
        text = valid[:a] + fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes()) + valid[b:]
    else:
        text = fdp.ConsumeUnicode(fdp.remaining_bytes())  # may hold lone surrogates, as surrogateescape'd headers do
    parse(wrap(text))


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
