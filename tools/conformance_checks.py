"""Keep the checks-per-profile table of conformance/README.md in step with the registered checks.

    python tools/conformance_checks.py          # exit 1 and show the difference if the table is stale
    python tools/conformance_checks.py --write  # rewrite it

The table sits between the two BEGIN/END markers of conformance/README.md. One row per seller
check: its id, its level (MUST and SHOULD cite a published draft, `extension` is MPP's own
profile), what it cites, and the profiles that run it.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "conformance" / "README.md"
BEGIN, END = "<!-- BEGIN checks (tools/conformance_checks.py) -->", "<!-- END checks -->"


def table() -> str:
    sys.path.insert(0, str(ROOT / "conformance"))
    from mpp_conformance.framework import PROFILES, all_checks, checks_for, cited

    runs = {c.id: [p for p in PROFILES if c.id in {k.id for k in checks_for(p)}] for c in all_checks()}
    rows = ["| check | level | cites | profiles |", "|---|---|---|---|"]
    for c in sorted(all_checks(), key=lambda c: (c.profile != "draft", c.id)):
        cites = cited(c.draft) if c.draft else ", ".join(c.requirements)
        rows.append(f"| `{c.id}` | {c.level} | {cites} | {', '.join(runs[c.id]) or '-'} |")
    counts = "; ".join(f"`{p}` {len(checks_for(p))}" for p in PROFILES)
    return "\n".join([BEGIN, "", f"Checks per profile: {counts}.", "", *rows, "", END])


def current() -> tuple[str, str]:
    text = README.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text, text[:start] + table() + text[end:]


def main(argv: list[str]) -> int:
    old, new = current()
    if "--write" in argv:
        README.write_text(new, encoding="utf-8")
        print(f"wrote {README.relative_to(ROOT)}")
        return 0
    if old != new:
        sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "README.md", "expected"))
        print("conformance/README.md's checks table is stale: run python tools/conformance_checks.py --write")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
