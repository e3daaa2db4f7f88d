"""Sellers that follow the published drafts to the letter, and none of MPP's extensions
(draft_sellers.py: ``letter-a`` and ``letter-b``, each taking the other side of every choice the
drafts leave open), pass ``--profile draft`` on GET and on POST: no check fails or errors (a SHOULD
they do not follow is a warning). Against ``--profile core`` they fail only checks of level
``extension``: departures from MPP's profile, never from the drafts.
"""

from __future__ import annotations

import pytest

from draft_sellers import DELIVERIES, FIXTURES, PAY_WITH, serving
from mpp_conformance.framework import Verdict, checks_for, run_checks

BODY = b'{"to": "agent", "text": "Payments, to the letter."}'
EXPIRY_WAIT = 4  # the fixtures' challenges live 3.5 s (letter-a) and at most 4 s (letter-b)

# (HTTP method, path, body, the other priced route)
TARGETS = {
    "GET /letter": ("GET", "/letter", None, ("POST", "/letters")),
    "POST /letters": ("POST", "/letters", BODY, ("GET", "/letter")),
}


def _table(results) -> str:
    rows = [f"{r.verdict.value:5} {r.level:9} {r.check_id:32} {r.message[:300]}" for r in results]
    return "\n".join(rows)


async def _run(name: str, target: str, profile: str, pay: bool):
    method, path, body, (other_method, other_path) = TARGETS[target]
    async with serving(name) as (server, app):
        options = {"method": method, "data": body, "pay_with": PAY_WITH if pay else None,
                   "other_url": f"{other_method} {server.make_url(other_path)}", "expiry_wait": EXPIRY_WAIT}
        results = await run_checks(checks_for(profile), str(server.make_url(path)), options)
        return results, list(app[DELIVERIES])


def _paid_2xx(results) -> int:
    """2xx answers the checks recorded (every one of them a paid request)."""
    return sum(1 for r in results for ex in r.exchanges if ex.status is not None and 200 <= ex.status < 300
               and ex.url.rsplit("/", 1)[-1] not in ("openapi.json", "jwks.json"))


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("name", list(FIXTURES))
async def test_draft_profile_passes(name: str, target: str):
    results, deliveries = await _run(name, target, "draft", pay=True)
    bad = [r for r in results if r.verdict in (Verdict.FAIL, Verdict.ERROR)]
    assert not bad, f"{name} {target}: --profile draft failed\n{_table(results)}"
    assert {r.level for r in results} <= {"MUST", "SHOULD"}
    # The paying checks ran and paid (not skipped for want of a payer), the expiry check waited it out.
    ran = {r.check_id for r in results if r.verdict is Verdict.PASS}
    assert {"full.paid-success", "full.replay", "full.concurrent-replay", "core.expired-challenge"} <= ran, _table(results)
    # Side effects only for paid requests (§11.4): one delivery per 2xx the checks saw.
    assert len(deliveries) == _paid_2xx(results), f"{len(deliveries)} deliveries\n{_table(results)}"


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("name", list(FIXTURES))
async def test_core_profile_fails_only_extensions(name: str, target: str):
    results, _ = await _run(name, target, "core", pay=False)
    errors = [r for r in results if r.verdict is Verdict.ERROR]
    assert not errors, f"{name} {target}: --profile core errored\n{_table(results)}"
    departures = [r for r in results if r.verdict is Verdict.FAIL and r.level != "extension"]
    assert not departures, f"{name} {target}: a draft-level check of --profile core failed\n{_table(results)}"
    # and they do depart from MPP's profile: no challengeId in problem documents, no JWKS
    failed = {r.check_id for r in results if r.verdict is Verdict.FAIL}
    assert {"core.problem-documents", "core.discovery-jwks"} <= failed, _table(results)
