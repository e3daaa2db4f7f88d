"""No report shows a credential the suite sent, even when the target copies it into its answers.

The leaking seller (broken_sellers "leaks-credential") puts every credential it refuses into its
problem documents; the CLI runs the full profile against it and writes every report. The credentials
are taken from the seller's side (what actually arrived), not from the suite's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from pathlib import Path

from broken_sellers import prepare_home, serving
from mpp_conformance.cli import main
from mpp_conformance.framework import MIN_FRAGMENT, REDACTED


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
