"""The suite has teeth: against deliberately broken variants of our own seller (broken_sellers.py),
each breakage is caught by the check that names it, and only by the checks written down below.

Every variant runs the `full` profile (core included) on two targets of one `mpp init` home:
``GET /weather`` (other route ``GET /quote``) and ``POST /summarize`` with a body (other route
``POST /weather``, which ``prepare_home`` prices). For each (variant, target) the test asserts:

* the FAILED checks are exactly EXPECTED[variant], less the checks that do not apply to the target;
* the SKIPPED checks are exactly the target's SKIPPED set (they skip in every variant), so every
  other check PASSED, and no check ERRORED;
* every failure message names the variant's symptom (SYMPTOM), i.e. it failed for the injected
  fault, not for something incidental;
* the seller logged no unhandled exception.

Expected sets were derived from what each check inspects, then confirmed by running. A check
that inspects a response the fault changes fails; a check that does not look at that property
passes (the notable passes are noted per variant).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from broken_sellers import BASELINE, VARIANTS, prepare_home, serving
from mpp_conformance.framework import Verdict, checks_for, run_checks

BODY = b"Agents buy from services; every purchase is signed."


# (method, path, body, other route: "path" for the target's method, or "METHOD path")
TARGETS = {
    "GET /weather": ("GET", "/weather", None, "/quote"),
    "POST /summarize": ("POST", "/summarize", BODY, "POST /weather"),
}

# Checks that do not apply to a target: they skip against the baseline and every variant.
SKIPPED = {
    "GET /weather": {
        "full.changed-body",  # a GET without a body: no body to change
        "full.idempotency-retry",  # Idempotency-Key retries are checked on POST/PUT/PATCH targets
        "core.no-plaintext-challenges",  # plain http on loopback: a local target cannot show it
    },
    "POST /summarize": {
        "full.other-method",  # GET /summarize is not routed (405): no second method to pay for
        "core.no-plaintext-challenges",  # plain http on loopback: a local target cannot show it
    },
}

# Every check the expectations below were reasoned about. A new check must be reviewed against
# each variant (and added to EXPECTED where it should fail) before this list is extended.
KNOWN_CHECKS = {
    "core.challenge-well-formed", "core.fresh-id-per-402", "core.garbage-credential", "core.unknown-challenge-id",
    "core.tampered-request", "core.tampered-expires", "core.tampered-realm", "core.expired-echo",
    "core.two-credentials", "core.unsupported-method", "core.accept-payment", "core.large-credential",
    "core.bounded-echo", "core.no-receipt-on-errors", "core.no-5xx", "core.challenge-parameters", "core.discovery-jwks",
    "core.discovery-openapi", "core.strict-json", "core.no-credential-leak", "core.expired-challenge", "core.oversized-credential",
    "core.parameter-names-lowercase", "core.opaque-string-map", "core.unknown-fields-ignored", "core.no-plaintext-challenges",
    "core.discovery-document", "core.discovery-payment-info", "core.discovery-402-declared", "core.discovery-payable-operation",
    "full.paid-success", "full.replay", "full.concurrent-replay", "full.other-route", "full.other-query",
    "full.other-method", "full.changed-body", "full.idempotency-retry", "full.signed-receipt", "full.ledger-payload",
}

_UNPAID_402 = "gets its challenge from an unpaid 402, which now lacks Cache-Control: no-store (CORE-ERR-10)"

# variant -> {check that must fail: why}. Checks listed here that do not apply to a target
# (SKIPPED[target]) are dropped for that target.
EXPECTED: dict[str, dict[str, str]] = {
    BASELINE: {},
    "accepts-replays": {
        "full.replay": "the second use of a paid credential gets 200, not 402 invalid-challenge (CORE-ONCE-01)",
        "full.concurrent-replay": "all 10 simultaneous submissions of one credential get 200, not exactly one (CORE-ONCE-02)",
        "full.idempotency-retry": "the retry is claimed and served afresh instead of replayed from the store, so it "
                                  "lacks Idempotent-Replayed: true (CORE-ONCE-06); POST target only",
        # Passes: every other check uses each challenge once.
    },
    "payment-required-for-every-error": {
        "core.garbage-credential": "garbage must be refused as malformed-credential",
        "core.unknown-challenge-id": "a random challenge id must be refused as invalid-challenge",
        "core.tampered-request": "an altered echoed request must be refused as invalid-challenge",
        "core.tampered-expires": "an altered echoed expires must be refused as invalid-challenge",
        "core.tampered-realm": "an altered echoed realm must be refused as invalid-challenge",
        "core.expired-echo": "a past echoed expires must be refused as invalid-challenge or payment-expired",
        "core.two-credentials": "two Payment credentials must be refused as malformed-credential",
        "core.unsupported-method": "an unknown method must get 400 method-unsupported, not 402 payment-required",
        "core.strict-json": "credentials that are not strict JSON must be refused as malformed-credential",
        "core.expired-challenge": "a credential for an expired challenge must be refused as payment-expired",
        "full.replay": "the replay must be refused as invalid-challenge",
        "full.concurrent-replay": "the losing submissions must be refused as invalid-challenge",
        "full.other-route": "a credential for another route must be refused as invalid-challenge",
        "full.other-query": "a credential for another query must be refused as invalid-challenge",
        "full.other-method": "a credential for another HTTP method must be refused as invalid-challenge; GET target only",
        "full.changed-body": "a changed body must be refused as verification-failed; POST target only",
        "full.ledger-payload": "a bad ledger payload must be refused as verification-failed",
        # Passes: challenge-well-formed (an unpaid 402 *is* payment-required), large-credential (any
        # payment problem, as long as its short twin gets the same), no-receipt-on-errors and no-5xx
        # (any 4xx problem document), and the checks that only pay.
    },
    "omits-no-store": {
        "core.challenge-well-formed": "its unpaid 402 lacks Cache-Control: no-store (CORE-ERR-10)",
        "core.fresh-id-per-402": _UNPAID_402,
        "core.garbage-credential": "its malformed-credential 402s lack Cache-Control: no-store (CORE-ERR-10)",
        "core.unknown-challenge-id": _UNPAID_402,
        "core.tampered-request": _UNPAID_402,
        "core.tampered-expires": _UNPAID_402,
        "core.tampered-realm": _UNPAID_402,
        "core.expired-echo": _UNPAID_402,
        "core.two-credentials": _UNPAID_402,
        "core.unsupported-method": _UNPAID_402 + " (its own 400 still carries it)",
        "core.accept-payment": "its 402s, with and without Accept-Payment, lack Cache-Control: no-store",
        "core.large-credential": _UNPAID_402,
        "core.bounded-echo": _UNPAID_402,
        "core.no-receipt-on-errors": _UNPAID_402,
        "core.no-5xx": _UNPAID_402,
        "core.challenge-parameters": _UNPAID_402,
        "core.discovery-openapi": _UNPAID_402 + " (to compare with x-payment-info)",
        "core.strict-json": _UNPAID_402,
        "core.expired-challenge": _UNPAID_402,
        "core.oversized-credential": _UNPAID_402,
        "full.paid-success": _UNPAID_402,
        "full.replay": _UNPAID_402,
        "full.concurrent-replay": _UNPAID_402,
        "full.other-route": "the unpaid 402 of the other route lacks Cache-Control: no-store",
        "full.other-query": _UNPAID_402,
        "full.other-method": _UNPAID_402 + "; GET target only",
        "full.changed-body": _UNPAID_402 + "; POST target only",
        "full.idempotency-retry": _UNPAID_402 + "; POST target only",
        "full.signed-receipt": _UNPAID_402,
        "full.ledger-payload": _UNPAID_402,
        # Passes: discovery-jwks only (no 402 involved). Every 402 is held to no-store wherever a
        # check meets one (expect.fresh_challenges), so nearly every check notices.
    },
    "receipt-on-error": {
        "core.challenge-well-formed": "its unpaid 402 carries a Payment-Receipt (CORE-RCPT-02)",
        "core.garbage-credential": "its malformed-credential 402s carry a Payment-Receipt",
        "core.unknown-challenge-id": "the invalid-challenge 402 carries a Payment-Receipt",
        "core.tampered-request": "the invalid-challenge 402 carries a Payment-Receipt",
        "core.tampered-expires": "the invalid-challenge 402 carries a Payment-Receipt",
        "core.tampered-realm": "the invalid-challenge 402 carries a Payment-Receipt",
        "core.expired-echo": "the refusal 402 carries a Payment-Receipt",
        "core.expired-challenge": "the payment-expired 402 carries a Payment-Receipt",
        "core.two-credentials": "the malformed-credential 402 carries a Payment-Receipt",
        "core.unsupported-method": "the 400 method-unsupported carries a Payment-Receipt",
        "core.large-credential": "the refusal of the 4 KB credential carries a Payment-Receipt",
        "core.no-receipt-on-errors": "every refusal it sends for carries a Payment-Receipt (its very point)",
        "core.no-5xx": "every fuzzed refusal carries a Payment-Receipt",
        "full.replay": "the refused replay carries a Payment-Receipt",
        "full.concurrent-replay": "the refused losing submissions carry a Payment-Receipt",
        "full.other-route": "the refusal on the other route carries a Payment-Receipt",
        "full.other-query": "the refusal with another query carries a Payment-Receipt",
        "full.other-method": "the refusal on another HTTP method carries a Payment-Receipt; GET target only",
        "full.changed-body": "the refusal of a changed body carries a Payment-Receipt; POST target only",
        "full.ledger-payload": "the refusals of bad payloads carry a Payment-Receipt",
        # Passes: fresh-id-per-402, accept-payment, challenge-parameters, discovery-openapi (they read
        # only the challenges of a 402), strict-json (it judges the problem type and the fresh
        # challenge), discovery-jwks, and the paid 2xx checks.
    },
    "500-on-garbage": {
        "core.garbage-credential": "its garbage, non-JSON and truncated-JSON credentials get 500, not 402 (CORE-ERR-11)",
        "core.no-receipt-on-errors": "its first probe is a garbage credential, which gets 500",
        "core.no-5xx": "the fuzz families that are not base64url JSON get 500 (CORE-ERR-11)",
        # Passes: every other check sends only base64url JSON credentials (strict-json's too, as
        # Python's lenient json reads them).
    },
    "skips-route-binding": {
        "full.other-route": "a credential for one route is accepted (200) on another priced route (CORE-BIND-02)",
        "full.other-query": "a credential is accepted (200) with a query parameter added (CORE-BIND-02)",
        "full.other-method": "a credential for GET is accepted (200) on POST (CORE-BIND-02); GET target only",
        # Passes: core sends no credential whose resource differs from the request's.
    },
    "echoes-unbounded": {
        "core.bounded-echo": "an 885-character intent and method, control characters and all, are copied whole "
                             "into the problem's detail (CORE-ERR-12)",
        # Passes: every other check echoes short printable values (the fuzzed ones are judged only
        # on their status and problem shape), so the details it reads stay clean.
    },
    "leaks-credential": {
        "core.no-credential-leak": "its problem documents copy the credential they refuse (CORE-CRED-06)",
        # Passes: every other check reads the problem's type, detail and challenges, never a member
        # it does not know; the copied token is printable base64url, so bounded-echo stays clean.
    },
    "accepts-expired": {
        "core.expired-challenge": "the payer's credential, sent after its challenge expired, is paid (200), not refused "
                                  "402 payment-expired (CORE-BIND-06, CORE-ERR-05)",
        # Passes: core.expired-echo and core.tampered-expires alter expires, which breaks the id binding
        # the seller still checks; every other check sends its credential before expiry.
    },
    "settles-before-binding": {
        "full.other-route": "the credential refused on the other route was settled there, so on its own route it is "
                            "refused as used (CORE-ONCE-04)",
        "full.other-query": "the credential refused with another query was settled, so without it it is refused as used",
        "full.other-method": "the credential refused on POST was settled, so on GET it is refused as used; GET target only",
        "full.changed-body": "the credential refused with a changed body was settled, so with its own body it is refused "
                             "as used; POST target only",
        # Passes: the refusals themselves are as the spec shapes them; every other refused credential
        # fails a check before the binding (id, expiry, payload), where this seller settles nothing.
    },
    "500-on-large-credential": {
        "core.oversized-credential": "a 24 KB credential gets 500, not a 4xx (CORE-ERR-11)",
        # Passes: every other check sends credentials below 8 KB.
    },
    "uppercase-custom-parameter": {
        "core.parameter-names-lowercase": "every challenge carries the custom parameter Trace-Id, not lowercase (CORE-CHAL-12)",
        # Passes: every other check reads challenges through mpp's parser, which folds names to lowercase
        # and ignores the unknown parameter, as a buyer must.
    },
    "opaque-not-string-map": {
        "core.opaque-string-map": "every opaque holds a number (\"attempt\": 1), not only strings (CORE-CHAL-13)",
        # Passes: the opaque is still base64url JCS JSON bound by the id, so the seller, the payer and
        # every other check read it as before.
    },
    "refuses-unknown-members": {
        "core.unknown-fields-ignored": "a probe with unknown members gets malformed-credential, its twin without them "
                                       "verification-failed (CORE-CRED-02)",
        # Passes: no other check sends a member the draft does not define outside payload (the 4 KB
        # padding of core.large-credential sits inside payload).
    },
    "openapi-without-version": {
        "core.discovery-document": "/openapi.json lacks info.version (CORE-DISC-04)",
        # Passes: core.discovery-openapi, the other discovery checks read paths and offers only.
    },
    "openapi-zero-padded-amounts": {
        "core.discovery-payment-info": "every offer's amount has leading zeros (\"0025\"; CORE-DISC-06)",
        "core.discovery-openapi": "no offer's amount equals the 402's any more (CORE-DISC-03)",
        # Passes: discovery-document, discovery-402-declared and discovery-payable-operation (shape and
        # presence are untouched); every check that pays reads the 402, not discovery.
    },
}

# What every failure message of a variant must say: the failure is the injected fault's doing.
SYMPTOM = {
    "accepts-replays": r"accepted it|submissions of one credential succeeded|not marked Idempotent-Replayed",
    "payment-required-for-every-error": r"payment-required",
    "omits-no-store": r"must carry Cache-Control: no-store",
    "receipt-on-error": r"a Payment-Receipt on an error response",
    "500-on-garbage": r"the target answered 500",
    "skips-route-binding": r"the target accepted it \(HTTP 200",
    "echoes-unbounded": r"the problem (detail has \d+ characters|document contains control character)",
    "leaks-credential": r"carry back a credential the suite sent",
    "accepts-expired": r"sent 0\.5 s after its challenge expired: the target accepted it \(HTTP 200",
    "settles-before-binding": r"the genuine credential, sent as issued after .* was refused: HTTP 402 invalid-challenge",
    "500-on-large-credential": r"credential of \d+ bytes: the target answered 500",
    "uppercase-custom-parameter": r"'Trace-Id' \(challenge 1\) not lowercase",
    "opaque-not-string-map": r"not a flat string-to-string map: member 'attempt' is int",
    "refuses-unknown-members": r"got HTTP 402 malformed-credential, its twin without them HTTP 402 verification-failed",
    "openapi-without-version": r"lacks info\.version",
    "openapi-zero-padded-amounts": r"amount '00\d+' has leading zeros|no x-payment-info offer agrees with the 402",
}


def _report(results) -> str:
    return "\n".join(f"  {r.check_id}: {r.verdict.value}: {r.message[:300]}" for r in results)


def test_every_variant_has_written_expectations():
    assert set(EXPECTED) == set(VARIANTS)
    assert set(SYMPTOM) == set(VARIANTS) - {BASELINE}
    for variant, expected in EXPECTED.items():
        assert set(expected) <= KNOWN_CHECKS, (variant, set(expected) - KNOWN_CHECKS)
        assert all(reason.strip() for reason in expected.values())


def test_expectations_cover_every_registered_check():
    """A check added to (or dropped from) the `full` profile needs its expectation reviewed here."""
    registered = {c.id for c in checks_for("full")}
    assert registered == KNOWN_CHECKS, (
        f"review EXPECTED for new checks {sorted(registered - KNOWN_CHECKS)} "
        f"and drop vanished ones {sorted(KNOWN_CHECKS - registered)}")


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("variant", list(VARIANTS))
async def test_each_breakage_is_caught_by_exactly_its_checks(home: Path, variant: str, target: str, caplog):
    method, path, data, other = TARGETS[target]
    prepare_home(home)
    caplog.set_level(logging.ERROR)
    async with serving(home, variant) as server:
        other_method, _, other_path = other.rpartition(" ")
        other_url = (f"{other_method} " if other_method else "") + str(server.make_url(other_path))
        results = await run_checks(checks_for("full"), str(server.make_url(path)), {
            "method": method, "data": data, "pay_with": f"ledger:{home}/agent", "other_url": other_url,
            "concurrency": 10,
        })
    by_verdict = {v: {r.check_id for r in results if r.verdict is v} for v in Verdict}
    expected = set(EXPECTED[variant]) - SKIPPED[target]

    assert not by_verdict[Verdict.ERROR], f"{variant} on {target}: checks errored:\n{_report(results)}"
    assert by_verdict[Verdict.SKIP] == SKIPPED[target], f"{variant} on {target}: skips differ:\n{_report(results)}"
    missed, extra = expected - by_verdict[Verdict.FAIL], by_verdict[Verdict.FAIL] - expected
    assert not missed and not extra, (
        f"{variant} on {target}: not caught by {sorted(missed)} "
        f"({'; '.join(EXPECTED[variant][c] for c in sorted(missed))}); "
        f"unexpectedly failed {sorted(extra)}:\n{_report(results)}")
    if variant != BASELINE:
        off = [r for r in results if r.verdict is Verdict.FAIL and not re.search(SYMPTOM[variant], r.message)]
        assert not off, f"{variant} on {target}: failed for another reason than the fault:\n{_report(off)}"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, f"{variant} on {target}: the seller logged errors: {[r.getMessage() for r in errors]}"
