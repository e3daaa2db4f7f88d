"""No report shows a credential the suite sent, even when the target copies it into its answers
(framework.SentCredentials scrubs evidence as it is recorded and messages as results are made).

The leaking seller (broken_sellers "leaks-credential") puts every credential it refuses into its
problem documents; the CLI runs the full profile against it and writes every report. The credentials
are taken from the seller's side (what actually arrived), not from the suite's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import secrets
from pathlib import Path

from broken_sellers import prepare_home, serving
from mpp_conformance.cli import main
from mpp_conformance.framework import MIN_FRAGMENT, REDACTED, Check, CheckContext, CheckFailed, SentCredentials, run_checks


def _fragments(value: str) -> set[str]:
    """The whole value, and the first and last MIN_FRAGMENT characters of its token. (Not any
    middle part: a stretch of the echoed challenge can line up with the seller's own base64url
    `request`, and so be public; the suite does not redact what the seller itself published.)"""
    token = value.strip(" \t").partition(" ")[2].strip(" \t") or value.strip(" \t")
    if len(token) < MIN_FRAGMENT:
        return set()
    return {value, token[:MIN_FRAGMENT], token[-MIN_FRAGMENT:]}


async def test_reports_never_show_a_sent_credential(home: Path, tmp_path: Path):
    prepare_home(home)
    sent: set[str] = set()
    reports = {kind: tmp_path / f"report.{kind}" for kind in ("json", "xml", "html")}
    console = io.StringIO()
    async with serving(home, "leaks-credential", lambda r: sent.update(r.headers.getall("Authorization", ()))) as server:
        argv = ["seller", str(server.make_url("/weather")), "--profile", "full", "--pay-with", f"ledger:{home}/agent",
                "--other-url", str(server.make_url("/quote")), "--json", str(reports["json"]),
                "--junit", str(reports["xml"]), "--html", str(reports["html"])]
        with contextlib.redirect_stdout(console):
            code = await asyncio.to_thread(main, argv)

    assert code == 1
    results = {r["id"]: r for r in json.loads(reports["json"].read_text())["results"]}
    assert results["core.no-credential-leak"]["verdict"] == "fail", results["core.no-credential-leak"]["message"]
    assert any(len(_fragments(v)) > 1 for v in sent), "the suite sent no credential worth redacting"
    texts = {str(path): path.read_text(encoding="utf-8") for path in reports.values()} | {"console": console.getvalue()}
    for where, text in texts.items():
        leaked = sorted(f for v in sent for f in _fragments(v) if f in text)
        assert not leaked, f"{where} shows {len(leaked)} fragment(s) of sent credentials, e.g. {leaked[0][:40]}..."
        if where != "console":  # the leaked copies were there to redact, and were
            assert REDACTED in text, where


def test_sent_credentials_redact_fragments_of_24_characters_and_more():
    token = secrets.token_urlsafe(60)
    sent = SentCredentials()
    sent.add("Payment " + token)
    assert sent.scrub(f"x {token} y") == f"x {REDACTED} y"
    assert sent.scrub(f"<{token[10:10 + MIN_FRAGMENT]}>") == f"<{REDACTED}>"
    short = token[10:10 + MIN_FRAGMENT - 1]  # shorter than a fragment: chance, not the credential
    assert sent.scrub(short) == short


async def test_a_failure_message_quoting_a_sent_credential_is_redacted(home: Path):
    value = "Payment " + secrets.token_urlsafe(60)

    async def quoting(ctx: CheckContext) -> str:
        await ctx.request("GET", ctx.target, headers={"Authorization": value})
        raise CheckFailed(f"refused {value}")  # a careless check: the runner still redacts it

    async with serving(home, "baseline") as server:
        [result] = await run_checks([Check("core.quoting", "quotes", "core", ("CORE-CRED-06",), quoting)],
                                    str(server.make_url("/weather")), {})
    assert result.message == f"refused Payment {REDACTED}"
    assert value.split()[1] not in json.dumps(result.to_json())
