"""conformance/targets/run.py, the generator of conformance/RESULTS.md: its run plan, its
rendering of reports (draft verdicts beside core/full ones, departures from the drafts apart from
departures from MPP's profile), and the committed RESULTS.md against the pinned SDK versions.
Nothing here starts a target or installs an SDK (``make conformance-results`` does)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ROOT / "conformance" / "targets"


@pytest.fixture(scope="module")
def run_py():
    spec = importlib.util.spec_from_file_location("conformance_targets_run", TARGETS / "run.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


def _res(cid: str, level: str, verdict: str, message: str, cites: str = "extension", reqs=("CORE-X-01",)):
    return {"id": cid, "title": cid, "profile": cid.split(".")[0], "level": level, "cites": cites,
            "requirements": list(reqs), "verdict": verdict, "message": message, "durationMs": 1,
            "target": "http://127.0.0.1:1/paid", "evidence": []}


MUST_CITE = "draft-httpauth-payment-02 §4.2 MUST; draft-payment-intent-charge-00 §7.1 MUST"
SHOULD_CITE = "draft-httpauth-payment-02 §B.4 SHOULD"


def _report(results):
    summary = {v: sum(1 for r in results if r["verdict"] == v) for v in ("pass", "fail", "warn", "skip", "error")}
    return {"meta": {}, "summary": summary, "results": results}


def _state(run_py, tmp_path, monkeypatch, by_label):
    monkeypatch.setattr(run_py, "ROOT", tmp_path)
    runs = []
    for label, profile, method in run_py.RUN_PLAN:
        if label not in by_label:
            continue
        path = tmp_path / f"{label.replace(' ', '-')}.json"
        path.write_text(json.dumps(_report(by_label[label])), encoding="utf-8")
        runs.append(run_py.Run(label, profile, method, [], path.name, seconds=1.0, exit_code=1, completed=True))
    return run_py.TargetState("sdk", "sdk (registry)", versions={"sdk": "1.2.3"}, url="http://127.0.0.1:1", runs=runs)


def test_run_plan_draft_pays_on_get_and_post_core_and_full(run_py):
    plan = {label: (profile, method) for label, profile, method in run_py.RUN_PLAN}
    assert plan == {"draft GET": ("draft", "GET"), "draft POST": ("draft", "POST"), "core GET": ("core", "GET"),
                    "full GET": ("full", "GET"), "full POST": ("full", "POST")}
    draft_post = run_py.run_args("URL", "draft", "POST")
    assert draft_post[:4] == ["seller", "URL/paid", "--profile", "draft"]
    assert draft_post[draft_post.index("--pay-with") + 1].startswith("static:")
    assert "--method" in draft_post and "--expiry-wait" in draft_post
    assert "--pay-with" not in run_py.run_args("URL", "core", "GET")


def test_render_separates_draft_departures_from_profile_departures(run_py, tmp_path, monkeypatch):
    draft = [_res("core.no-5xx", "MUST", "fail", "the target answered 500", MUST_CITE),
             _res("draft.two-credentials", "SHOULD", "warn", "HTTP 402; SHOULD be 400", SHOULD_CITE),
             _res("core.fresh-id-per-402", "MUST", "pass", "ids differ", MUST_CITE)]
    core = [_res("core.no-5xx", "MUST", "fail", "the target answered 500", MUST_CITE),
            _res("core.fresh-id-per-402", "MUST", "pass", "ids differ", MUST_CITE),
            _res("core.discovery-jwks", "extension", "fail", "GET /.well-known/jwks.json: expected HTTP 200, got 404"),
            _res("core.expired-challenge", "MUST", "skip", "challenges live 300 s", MUST_CITE)]
    state = _state(run_py, tmp_path, monkeypatch, {"draft GET": draft, "draft POST": draft, "core GET": core})
    text = run_py.render([state], 1.0, "2026-01-01 00:00 UTC")

    assert "- **sdk** (sdk 1.2.3): draft: 1 pass, 1 fail (1 MUST), 1 warn (SHOULD), 0 skip; " \
           "core/full: 1 pass, 2 fail (1 MUST, 1 extension), 1 skip" in text
    section = text.split("## sdk (registry)", 1)[1]
    drafts, rest = section.split("### Departures from the drafts", 1)[1].split("### Departures from MPP's profile only", 1)
    profile_only = rest.split("###", 1)[0]
    must, should = drafts.split("SHOULD (warn):", 1)
    assert "`core.no-5xx` (draft §4.2 MUST; charge §7.1 MUST; draft GET, draft POST, core GET)" in must
    assert "`draft.two-credentials` (draft §B.4 SHOULD; draft GET, draft POST): HTTP 402" in should
    assert "core.discovery-jwks" not in drafts
    assert "`core.discovery-jwks` (CORE-X-01; core GET): GET /.well-known/jwks.json" in profile_only
    assert "core.no-5xx" not in profile_only and "two-credentials" not in profile_only

    table = section.split("### Checks", 1)[1]
    assert "| check | level | cites | draft GET | draft POST | core GET |" in table
    assert "| `core.no-5xx` | MUST | draft §4.2 MUST; charge §7.1 MUST | **FAIL** | **FAIL** | **FAIL** |" in table
    assert "| `draft.two-credentials` | SHOULD | draft §B.4 SHOULD | *warn* | *warn* | — |" in table
    assert "| `core.discovery-jwks` | extension | CORE-X-01 | — | — | **FAIL** |" in table
    assert "`core.expired-challenge` (challenges live 300 s)" in section  # skipped everywhere: said why


def test_committed_results_match_the_pinned_sdks_and_the_layout(run_py):
    reqs = (TARGETS / "pympp-seller-requirements.txt").read_text(encoding="utf-8")
    pympp = re.search(r"^pympp==(\S+)$", reqs, re.M).group(1)
    mppx = json.loads((TARGETS / "mppx" / "package.json").read_text(encoding="utf-8"))["dependencies"]["mppx"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", mppx), "mppx must be pinned exactly"
    results = (ROOT / "conformance" / "RESULTS.md").read_text(encoding="utf-8")
    assert f"- **pympp** (pympp {pympp}): draft: " in results
    assert f"- **mppx** (mppx {mppx}): draft: " in results
    for heading in ("## pympp (PyPI)", "## mppx (npm)"):
        section = results.split(heading, 1)[1].split("\n## ", 1)[0]
        for part in ("### Departures from the drafts", "### Departures from MPP's profile only", "### Checks"):
            assert part in section, (heading, part)
        assert "| check | level | cites | draft GET | draft POST | core GET | full GET | full POST |" in section
    # Both targets run with the SDK's replay store; the page says which and why.
    assert "store=MemoryStore()" in results and "Store.memory()" in results
    assert "store=MemoryStore()" in (TARGETS / "pympp_seller.py").read_text(encoding="utf-8")
    assert "Store.memory()" in (TARGETS / "mppx_seller.mjs").read_text(encoding="utf-8")
