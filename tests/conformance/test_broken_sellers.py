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
        "core.body-digest",  # nor one to digest
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
    "core.body-digest", "core.charge-request", "core.charge-terms", "core.problem-documents", "core.unknown-method-refused",
    "full.receipt-fields", "full.replay-answer", "full.other-field",
}

_UNPAID_402 = "gets its challenge from an unpaid 402, which now lacks Cache-Control: no-store (CORE-ERR-10)"

# Checks a variant makes inapplicable: what a used credential is answered cannot be judged when it is accepted.
EXTRA_SKIPS = {"accepts-replays": {"full.replay-answer"}}
# The variants whose expected verdicts involve expiry: the others run with --expiry-wait 0, so
# core.expired-challenge skips there instead of waiting out a challenge (about 3.5 s a run).
EXPIRY_VARIANTS = {BASELINE, "accepts-expired", "payment-required-for-every-error"}


def _expiry(variant: str) -> tuple[dict, set[str]]:
    """The option and the extra skip for ``variant``'s expiry check."""
    return ({}, set()) if variant in EXPIRY_VARIANTS else ({"expiry_wait": 0}, {"core.expired-challenge"})

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
        "core.unknown-method-refused": "a 402 refusing an unknown method must not call itself payment-required",
        "core.problem-documents": "each refusal must carry MPP's problem type for its cause",
        "core.strict-json": "credentials that are not strict JSON must be refused as malformed-credential",
        "core.expired-challenge": "a credential for an expired challenge must be refused as payment-expired",
        "full.replay-answer": "the replay must be refused as invalid-challenge",
        # (full.replay and full.concurrent-replay judge only that nothing was accepted twice: they pass)
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
        "core.challenge-well-formed": "its unpaid 402 lacks Cache-Control: no-store (draft §11.10, CORE-ERR-10)",
        "core.garbage-credential": "its malformed-credential 402s lack Cache-Control: no-store (CORE-ERR-10)",
        # Passes: every other check; no-store is asked of the unpaid 402 and of refusals once each
        # (one result per cause), not of every 402 a check meets on its way.
    },
    "receipt-on-error": {
        "core.no-receipt-on-errors": "the unpaid 402 and every refusal it sends carry a Payment-Receipt (draft §5.3.1)",
        # Passes: every other check; a receipt on an error is that one check's finding.
    },
    "500-on-garbage": {
        "core.garbage-credential": "its garbage, non-JSON and truncated-JSON credentials get 500, not 402 (CORE-ERR-11)",
        "core.no-receipt-on-errors": "its first probe is a garbage credential, which gets 500",
        "core.no-5xx": "the fuzz families that are not base64url JSON get 500 (CORE-ERR-11)",
        "core.problem-documents": "its garbage probe gets 500, not 402 malformed-credential",
        # Passes: every other check sends only base64url JSON credentials (strict-json's too, as
        # Python's lenient json reads them).
    },
    "skips-route-binding": {
        "full.other-route": "a credential for one route is accepted (200) on another priced route (CORE-BIND-02)",
        "full.other-query": "a credential is accepted (200) with a query parameter added (CORE-BIND-02)",
        "full.other-method": "a credential for GET is accepted (200) on POST (CORE-BIND-02); GET target only",
        # Passes: core sends no credential whose resource differs from the request's.
    },
    "reads-any-field": {
        "full.other-field": "a credential sent in Payment-Authorization, a field its challenge did not select, is "
                            "accepted (200) (draft §5.2)",
        # Passes: every other check sends its credentials in Authorization.
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
        "full.other-route": "the credential refused on the other route was settled there: the payer's balance moved on "
                            "a refusal (CORE-ONCE-04)",
        "full.other-query": "the credential refused with another query was settled: the payer's balance moved",
        "full.other-method": "the credential refused on POST was settled: the payer's balance moved; GET target only",
        "full.changed-body": "the credential refused with a changed body was settled: the payer's balance moved; "
                             "POST target only",
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
    "500-on-garbage": r"the target answered 500|expected HTTP 402, got 500",
    "skips-route-binding": r"the target accepted it \(HTTP 200",
    "reads-any-field": r"the target accepted it \(HTTP 200",
    "echoes-unbounded": r"the problem (detail has \d+ characters|document contains control character)",
    "leaks-credential": r"carry back a credential the suite sent",
    "accepts-expired": r"sent 0\.5 s after its challenge expired: the target accepted it \(HTTP 200",
    # the ledger `mpp init` put beside the wallet is read around each refusal (mpp_conformance.balance)
    "settles-before-binding": r"refused .*: the payer's balance moved by -\d+ usd \(acct:buyer at ledger ledger-\w+: "
                              r"\d+ before, \d+ after\) though the request was refused",
    "500-on-large-credential": r"credential of \d+ bytes: the target answered 500",
    "uppercase-custom-parameter": r"'Trace-Id' \(challenge 1\) not lowercase",
    "opaque-not-string-map": r"not a flat string-to-string map: member 'attempt' is int",
    "refuses-unknown-members": r"got HTTP 402 malformed-credential, its twin without them HTTP 402 verification-failed",
    "openapi-without-version": r"lacks info\.version",
    "openapi-zero-padded-amounts": r"amount '00\d+' has leading zeros|no x-payment-info offer agrees with the 402",
}


# The checks of the `draft` profile: what a variant's defect must fail there is EXPECTED's part of it.
DRAFT_CHECKS = {c.id for c in checks_for("draft")}
# The variants whose defect the drafts themselves forbid: each must fail the draft profile too.
DRAFT_DEFECTS = {"accepts-replays", "reads-any-field", "payment-required-for-every-error", "omits-no-store", "receipt-on-error",
                 "500-on-garbage", "leaks-credential", "accepts-expired", "settles-before-binding", "500-on-large-credential"}


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
            "concurrency": 10, **_expiry(variant)[0],
        })
    by_verdict = {v: {r.check_id for r in results if r.verdict is v} for v in Verdict}
    expected = set(EXPECTED[variant]) - SKIPPED[target]

    assert not by_verdict[Verdict.ERROR], f"{variant} on {target}: checks errored:\n{_report(results)}"
    skipped = SKIPPED[target] | EXTRA_SKIPS.get(variant, set()) | _expiry(variant)[1]
    assert by_verdict[Verdict.SKIP] == skipped, f"{variant} on {target}: skips differ:\n{_report(results)}"
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


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("variant", sorted(DRAFT_DEFECTS | {BASELINE}))
async def test_the_draft_profile_catches_what_the_drafts_forbid(home: Path, variant: str, target: str):
    """Each defect the drafts forbid fails `--profile draft` too, by the same draft-level checks that
    catch it in `full` and no others; only SHOULDs may warn (our seller's 402 for two credentials)."""
    method, path, data, other = TARGETS[target]
    prepare_home(home)
    async with serving(home, variant) as server:
        other_method, _, other_path = other.rpartition(" ")
        other_url = (f"{other_method} " if other_method else "") + str(server.make_url(other_path))
        results = await run_checks(checks_for("draft"), str(server.make_url(path)), {
            "method": method, "data": data, "pay_with": f"ledger:{home}/agent", "other_url": other_url,
            "concurrency": 10, **_expiry(variant)[0],
        })
    failed = {r.check_id for r in results if r.verdict is Verdict.FAIL}
    expected = (set(EXPECTED[variant]) & DRAFT_CHECKS) - SKIPPED[target]
    assert not [r for r in results if r.verdict is Verdict.ERROR], _report(results)
    assert failed == expected, f"{variant} on {target} (draft): expected {sorted(expected)}:\n{_report(results)}"
    if variant != BASELINE:
        caught_somewhere = set(EXPECTED[variant]) & DRAFT_CHECKS
        assert caught_somewhere, f"{variant}: no draft-level check is written down as catching it"
    assert {r.check_id for r in results if r.verdict is Verdict.WARN} <= {"draft.two-credentials"}, _report(results)
