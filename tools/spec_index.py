"""Keep spec/requirements.json in step with the requirement bullets of spec/**/*.md.

    python tools/spec_index.py          # exit 1 and list differences if the index is stale
    python tools/spec_index.py --write  # rewrite it (summaries of known ids are kept)

A requirement is a bullet starting with **[ID]**; its level is the strongest BCP 14 keyword in it,
not counting the provenance marker at its end (spec/README.md, "Provenance markers"), which
quotes the keyword of the draft the requirement comes from.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "spec"
INDEX = SPEC / "requirements.json"
BULLET = re.compile(r"^- \*\*\[([A-Z]+(?:-[A-Z]+)?-\d{2})\]\*\*\s*(.*)$")
DOC_ORDER = ["core.md", "methods/ledger.md", "intents/charge.md", "identity.md"]
# "(draft §5.1.2 SHOULD; extension)": where a requirement comes from, as the last words of its bullet.
SOURCE = r"(?:extension|vectors|(?:draft|charge|discovery|mcp|RFC9110) §(?:[A-Z]|\d+)(?:\.\d+)* (?:MUST NOT|MUST|SHOULD NOT|SHOULD|MAY|ABNF|prose))"
PROVENANCE = re.compile(rf"\(({SOURCE}(?:; {SOURCE})*)\)$")


def provenance(text: str) -> list[str] | None:
    """The sources a bullet's provenance marker names, or None when it has none."""
    m = PROVENANCE.search(text.rstrip())
    return m.group(1).split("; ") if m else None


def without_provenance(text: str) -> str:
    return PROVENANCE.sub("", text.rstrip()).rstrip()


def _level(text: str) -> str:
    if re.search(r"\bMUST\b|\bREQUIRED\b|\bSHALL\b", text):
        return "MUST"
    if re.search(r"\bSHOULD\b|\bRECOMMENDED\b", text):
        return "SHOULD"
    if re.search(r"\bMAY\b|\bOPTIONAL\b", text):
        return "MAY"
    return "NONE"


def _docs() -> list[Path]:
    found = sorted(p for p in SPEC.rglob("*.md") if p.name != "README.md")
    ordered = [SPEC / d for d in DOC_ORDER if (SPEC / d) in found]
    return ordered + [p for p in found if p not in ordered]


def scan() -> list[dict[str, str]]:
    reqs = []
    for doc in _docs():
        lines = doc.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            m = BULLET.match(lines[i])
            if m:
                text = [m.group(2)]
                i += 1
                while i < len(lines) and lines[i].startswith("  ") and not lines[i].lstrip().startswith("- "):
                    text.append(lines[i].strip())
                    i += 1
                full = " ".join(text)
                reqs.append({"id": m.group(1), "level": _level(without_provenance(full)), "doc": str(doc.relative_to(ROOT)), "text": full})
                continue
            i += 1
    return reqs


def build() -> list[dict[str, str]]:
    old = {}
    if INDEX.exists():
        old = {r["id"]: r.get("summary", "") for r in json.loads(INDEX.read_text(encoding="utf-8"))}
    out = []
    for r in scan():
        summary = old.get(r["id"]) or without_provenance(r["text"]).split(". ")[0][:200]
        out.append({"id": r["id"], "level": r["level"], "doc": r["doc"], "summary": summary})
    return out


def main(argv: list[str]) -> int:
    built = build()
    ids = [r["id"] for r in built]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        print(f"duplicate requirement ids: {', '.join(dupes)}", file=sys.stderr)
        return 1
    if "--write" in argv:
        INDEX.write_text(json.dumps(built, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {INDEX.relative_to(ROOT)}: {len(built)} requirements")
        return 0
    current = json.loads(INDEX.read_text(encoding="utf-8")) if INDEX.exists() else []
    strip = lambda rs: [(r["id"], r["level"], r["doc"]) for r in rs]  # noqa: E731
    if strip(current) != strip(built):
        print("spec/requirements.json is stale; run: python tools/spec_index.py --write", file=sys.stderr)
        return 1
    print(f"spec/requirements.json is current: {len(built)} requirements")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
