"""Reports: live console lines, JSON, JUnit XML, and one self-contained HTML page."""

from __future__ import annotations

import html
import json
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Iterable, TextIO

from .framework import Result, Verdict

__all__ = ["ConsoleProgress", "summary", "to_json", "to_junit", "to_html"]

_MARK = {Verdict.PASS: "PASS", Verdict.FAIL: "FAIL", Verdict.WARN: "WARN", Verdict.SKIP: "SKIP", Verdict.ERROR: "ERR "}
_LEVEL = {"MUST": "MUST", "SHOULD": "SHLD", "extension": "EXT "}


class ConsoleProgress:
    """One line per check as it finishes: [n/N] verdict level id (requirements; draft cited) message."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream

    def __call__(self, result: Result, n: int, total: int) -> None:
        first = result.message.splitlines()[0] if result.message else ""
        width = len(str(total))
        source = f"; {result.cites}" if result.draft else ""
        self.stream.write(f"[{n:>{width}}/{total}] {_MARK[result.verdict]} {_LEVEL.get(result.level, result.level)} "
                          f"{result.check_id}  ({', '.join(result.requirements)}{source})  {first}\n")
        self.stream.flush()


def summary(results: Iterable[Result]) -> dict[str, int]:
    counts = Counter(r.verdict.value for r in results)
    return {v.value: counts.get(v.value, 0) for v in Verdict}


def to_json(results: list[Result], meta: dict[str, Any]) -> str:
    return json.dumps({"meta": meta, "summary": summary(results), "results": [r.to_json() for r in results]}, indent=2)


def to_junit(results: list[Result], meta: dict[str, Any]) -> str:
    counts = summary(results)
    suite = ET.Element("testsuite", name=f"mpp-conformance {meta.get('mode', '')} {meta.get('profile', '')}".strip(),
                       tests=str(len(results)), failures=str(counts["fail"]), errors=str(counts["error"]),
                       skipped=str(counts["skip"]), timestamp=meta.get("started", ""))
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=f"{r.profile}", name=r.check_id, time=f"{r.duration_ms / 1000:.3f}")
        ET.SubElement(case, "properties").extend(
            [ET.Element("property", name="level", value=r.level), ET.Element("property", name="cites", value=r.cites),
             ET.Element("property", name="verdict", value=r.verdict.value)]
            + [ET.Element("property", name="requirement", value=req) for req in r.requirements]
        )
        if r.verdict is Verdict.FAIL:
            ET.SubElement(case, "failure", message=r.message.splitlines()[0] if r.message else "").text = r.message
        elif r.verdict is Verdict.ERROR:
            ET.SubElement(case, "error", message=r.message.splitlines()[0] if r.message else "").text = r.message
        elif r.verdict is Verdict.SKIP:
            ET.SubElement(case, "skipped", message=r.message)
        elif r.verdict is Verdict.WARN:  # JUnit has no warning: a passing case that says so
            ET.SubElement(case, "system-err").text = f"WARNING (SHOULD, {r.cites}): {r.message}"
        ET.SubElement(case, "system-out").text = json.dumps([e.to_json() for e in r.exchanges], indent=1)
    suites = ET.Element("testsuites")
    suites.append(suite)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True)


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em} table{border-collapse:collapse} td,th{padding:.2em .8em;text-align:left}
.pass{color:#137333}.fail{color:#b3261e}.warn{color:#c25e00}.skip{color:#8a6d00}.error{color:#7b1fa2}
.level{font-family:monospace;border:1px solid #999;padding:0 .3em;border-radius:3px;margin-right:.3em}
details{border:1px solid #ddd;border-radius:4px;margin:.4em 0;padding:.3em .6em}
summary{cursor:pointer} pre{background:#f6f6f6;padding:.5em;overflow:auto;max-height:24em;white-space:pre-wrap}
.req{font-family:monospace;background:#eef;padding:0 .3em;border-radius:3px;margin-right:.3em}
"""


def _exchange_html(ex: dict[str, Any]) -> str:
    req = ex["request"]
    lines = [f"{req['method']} {req['url']}"] + [f"{k}: {v}" for k, v in req["headers"]]
    if req["body"]:
        lines += ["", req["body"]]
    out = "<pre>" + html.escape("\n".join(lines)) + "</pre>"
    resp = ex.get("response")
    if resp is not None:
        rl = [f"HTTP {resp['status']}"] + [f"{k}: {v}" for k, v in resp["headers"]] + ["", resp["body"]]
        out += "<pre>" + html.escape("\n".join(rl)) + "</pre>"
    if ex.get("error"):
        out += f"<p>error: {html.escape(ex['error'])}</p>"
    return out


def to_html(results: list[Result], meta: dict[str, Any]) -> str:
    counts = summary(results)
    rows = "".join(
        f"<tr><td class='{k}'>{k}</td><td>{v}</td></tr>" for k, v in counts.items()
    )
    items = []
    for r in results:
        data = r.to_json()
        reqs = "".join(f"<span class='req'>{html.escape(q)}</span>" for q in r.requirements)
        evidence = "".join(_exchange_html(e) for e in data["evidence"]) or "<p>(no HTTP exchange)</p>"
        items.append(
            f"<details class='check' data-verdict='{r.verdict.value}' data-level='{html.escape(r.level)}' id='{html.escape(r.check_id)}'"
            f"{' open' if r.verdict in (Verdict.FAIL, Verdict.ERROR) else ''}>"
            f"<summary><b class='{r.verdict.value}'>{r.verdict.value.upper()}</b> <span class='level'>{html.escape(r.level)}</span> "
            f"{html.escape(r.check_id)} — {html.escape(r.title)}</summary><p>{reqs} {html.escape(r.cites)}</p><p>{html.escape(r.message)}</p>{evidence}</details>"
        )
    title = f"MPP conformance: {meta.get('mode', '')} {meta.get('target', '')}"
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>profile {html.escape(str(meta.get('profile', '')))}, run {html.escape(meta.get('started', ''))}, "
        f"mpp-conformance {html.escape(meta.get('version', ''))}</p>"
        f"<table id='summary'><tr><th>verdict</th><th>checks</th></tr>{rows}</table>"
        f"<h2>Checks</h2>{''.join(items)}</body></html>"
    )


def meta_for(mode: str, target: str, profile: str) -> dict[str, Any]:
    from mpp import __version__

    return {"mode": mode, "target": target, "profile": profile, "version": __version__,
            "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
