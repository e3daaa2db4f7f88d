"""Write a checked-in build artifact, or (``--check``) say whether it is up to date: what
tools/build_token.py and tools/build_permit2.py share."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["write_or_check"]


def write_or_check(output: Path, text: str, *, check: bool, root: Path, rebuild: str) -> int:
    """Write ``text`` to ``output``, or with ``check`` compare it with what is there; the exit
    status (1: it differs, run ``rebuild``)."""
    name = output.relative_to(root)
    if check:
        if output.exists() and output.read_text(encoding="utf-8") == text:
            print(f"{name} is up to date")
            return 0
        print(f"{name} differs from a fresh build: run {rebuild}", file=sys.stderr)
        return 1
    output.write_text(text, encoding="utf-8")
    print(f"wrote {name} ({len(text)} bytes)")
    return 0
