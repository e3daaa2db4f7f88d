"""Keep spec/coverage.md in step with the requirements, the conformance checks and spec/untestable.json.

    python tools/coverage_table.py          # exit 1 and show the difference if spec/coverage.md is stale
    python tools/coverage_table.py --write  # rewrite it
    python tools/coverage_table.py --json   # print the mapping as JSON (what the tests read)

Each requirement of spec/requirements.json gets one row: the conformance checks that cite it
(seller profiles and buyer mode alike), or the reason in spec/untestable.json why no black-box
check can, or NOT COVERED. A reason that starts with "Partly:" explains only the part a check
cannot see: such a requirement still needs a check, and counts as not covered until one cites it.

The checks are imported, not parsed: every `checks_*` module of mpp_conformance, its `buyer`
module, and whatever `framework.all_checks()` registers.
"""

from __future__ import annotations

import difflib
import importlib
import json
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "spec"
INDEX = SPEC / "requirements.json"
UNTESTABLE = SPEC / "untestable.json"
TABLE = SPEC / "coverage.md"
PARTLY = "Partly:"
LEVELS = ("MUST", "SHOULD", "MAY", "NONE")


@dataclass(frozen=True)
class CheckInfo:
    id: str
    profile: str
    title: str
    requirements: tuple[str, ...]


def _import_package():
    try:
        import mpp_conformance  # noqa: F401
    except ModuleNotFoundError:  # run from a checkout without the package installed
        for extra in (ROOT, ROOT / "conformance"):
            if str(extra) not in sys.path:
                sys.path.insert(0, str(extra))
    import mpp_conformance
    from mpp_conformance import framework

    return mpp_conformance, framework


def _check_like(obj: Any) -> bool:
    return isinstance(getattr(obj, "id", None), str) and isinstance(getattr(obj, "requirements", None), (list, tuple))


def _declared(module: Any) -> Iterable[Any]:
    """Checks a module holds outside the registry (a module-level list, tuple or dict of them)."""
    for value in vars(module).values():
        if _check_like(value):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (v for v in value if _check_like(v))
        elif isinstance(value, dict):
            yield from (v for v in value.values() if _check_like(v))


def load_checks() -> list[CheckInfo]:
    """Every check of the suite: registered ones (seller profiles, buyer) and any a module lists itself."""
    package, framework = _import_package()
    found: dict[str, Any] = {c.id: c for c in framework.all_checks()}
    for mod in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if mod.name.startswith("checks_") or mod.name == "buyer" or mod.name.startswith("buyer_"):
            module = importlib.import_module(f"{package.__name__}.{mod.name}")
            for chk in _declared(module):
                found.setdefault(chk.id, chk)
    for chk in getattr(framework, "_REGISTRY", {}).values():  # registered by the imports above
        found.setdefault(chk.id, chk)
    default_profile = lambda c: "buyer" if "buyer" in type(c).__module__ else ""  # noqa: E731
    return sorted(
        (CheckInfo(c.id, str(getattr(c, "profile", "") or default_profile(c)), str(getattr(c, "title", "")),
                   tuple(c.requirements)) for c in found.values()),
        key=lambda c: c.id,
    )


def build(checks: list[CheckInfo] | None = None) -> dict[str, Any]:
    """The mapping the table shows, plus what is inconsistent about it."""
    reqs = json.loads(INDEX.read_text(encoding="utf-8"))
    untestable: dict[str, str] = json.loads(UNTESTABLE.read_text(encoding="utf-8")) if UNTESTABLE.exists() else {}
    checks = load_checks() if checks is None else checks
    known = {r["id"] for r in reqs}
    citing: dict[str, list[str]] = {}
    for c in checks:
        for rid in dict.fromkeys(c.requirements):
            citing.setdefault(rid, []).append(c.id)
    rows = {}
    for r in reqs:
        cited_by = sorted(citing.get(r["id"], []))
        reason = untestable.get(r["id"])
        partly = bool(reason) and reason.startswith(PARTLY)
        if cited_by:
            status = "checked"
        elif reason and not partly:
            status = "reason"
        else:
            status = "uncovered"
        rows[r["id"]] = {"level": r["level"], "doc": r["doc"], "summary": r.get("summary", ""), "checks": cited_by,
                         "reason": reason, "partly": partly, "status": status}
    return {
        "requirements": rows,
        "checks": {c.id: {"profile": c.profile, "title": c.title, "requirements": list(c.requirements)} for c in checks},
        "unknown_cited": {c.id: sorted(set(c.requirements) - known) for c in checks if set(c.requirements) - known},
        "unknown_untestable": sorted(set(untestable) - known),
        # a reason that says no check can see the requirement, while a check cites it
        "contradictions": {rid: row["checks"] for rid, row in rows.items() if row["checks"] and row["reason"] and not row["partly"]},
    }


def counts(data: dict[str, Any]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for row in data["requirements"].values():
        level = out.setdefault(row["level"], {"total": 0, "checked": 0, "reason": 0, "uncovered": 0})
        level["total"] += 1
        level[row["status"]] += 1
    return {lvl: out[lvl] for lvl in LEVELS if lvl in out}


def summary_line(data: dict[str, Any]) -> str:
    parts = [f"{lvl} {c['total']}: {c['checked']} covered by checks, {c['reason']} with a stated reason, {c['uncovered']} uncovered"
             for lvl, c in counts(data).items()]
    return "; ".join(parts) + "."


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render(data: dict[str, Any]) -> str:
    by_profile: dict[str, int] = {}
    for chk in data["checks"].values():
        by_profile[chk["profile"] or "?"] = by_profile.get(chk["profile"] or "?", 0) + 1
    lines = [
        "# Requirement coverage by the conformance suite",
        "",
        "Generated by `tools/coverage_table.py` from `spec/requirements.json`, the checks of",
        "`conformance/mpp_conformance/` (seller profiles and buyer mode) and `spec/untestable.json`.",
        "Do not edit by hand: run `python tools/coverage_table.py --write`; the test suite fails while",
        "this file is stale.",
        "",
        "Each requirement lists the checks that cite it, or the reason no black-box check can (the",
        "suite sees only HTTP exchanges with a seller, or a buyer's requests to its own adversarial",
        "seller), or **NOT COVERED**. A reason starting with \"Partly:\" names what a check cannot see;",
        "the rest still needs a check. Requirements out of the suite's reach are still cited by the",
        "in-process tests in `tests/`.",
        "",
        f"**Summary:** {summary_line(data)}",
        "",
        f"{len(data['checks'])} checks ("
        + (", ".join(f"{p} {n}" for p, n in sorted(by_profile.items())) or "none") + ").",
        "",
        "| requirement | level | document | summary | checks, or why none can |",
        "|---|---|---|---|---|",
    ]
    for rid, row in data["requirements"].items():
        checks = ", ".join(f"`{cid}`" for cid in row["checks"])
        if row["status"] == "checked":
            cell = checks + (f" ({_cell(row['reason'])})" if row["reason"] else "")
        elif row["status"] == "reason":
            cell = "not checkable black-box: " + _cell(row["reason"])
        else:
            cell = "**NOT COVERED**" + (f" ({_cell(row['reason'])})" if row["reason"] else "")
        lines.append(f"| {rid} | {row['level']} | {row['doc'].removeprefix('spec/')} | {_cell(row['summary'])} | {cell} |")
    lines += ["", "## Checks", "", "| check | profile | title | requirements |", "|---|---|---|---|"]
    for cid, chk in data["checks"].items():
        unknown = set(data["unknown_cited"].get(cid, []))
        reqs = ", ".join(r + (" (unknown id)" if r in unknown else "") for r in chk["requirements"])
        lines.append(f"| `{cid}` | {chk['profile']} | {_cell(chk['title'])} | {reqs} |")
    return "\n".join(lines) + "\n"


def _warn(data: dict[str, Any]) -> None:
    for cid, ids in data["unknown_cited"].items():
        print(f"warning: check {cid} cites ids spec/requirements.json lacks: {', '.join(ids)}", file=sys.stderr)
    if data["unknown_untestable"]:
        print(f"warning: spec/untestable.json names unknown ids: {', '.join(data['unknown_untestable'])}", file=sys.stderr)
    for rid, cids in data["contradictions"].items():
        print(f"warning: {rid} is untestable per spec/untestable.json, yet cited by {', '.join(cids)}", file=sys.stderr)


def main(argv: list[str]) -> int:
    data = build()
    if "--json" in argv:
        print(json.dumps(dict(data, counts=counts(data)), indent=2))
        return 0
    _warn(data)
    text = render(data)
    if "--write" in argv:
        TABLE.write_text(text, encoding="utf-8")
        print(f"wrote {TABLE.relative_to(ROOT)}: {summary_line(data)}")
        return 0
    current = TABLE.read_text(encoding="utf-8") if TABLE.exists() else ""
    if current != text:
        diff = list(difflib.unified_diff(current.splitlines(), text.splitlines(), "spec/coverage.md", "generated", lineterm="", n=0))
        print("\n".join(diff[:60] + ([f"... ({len(diff) - 60} more diff lines)"] if len(diff) > 60 else [])), file=sys.stderr)
        print("spec/coverage.md is stale; run: python tools/coverage_table.py --write", file=sys.stderr)
        return 1
    print(f"spec/coverage.md is current: {summary_line(data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
