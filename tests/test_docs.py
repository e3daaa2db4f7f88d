"""The API reference (`make docs`, tools/api_docs.py, pdoc) builds, covers every public module of
``mpp``, and has no gap: every public module imports and has a module docstring, and every name a
module's ``__all__`` lists and the module defines (class, function or constant) has a docstring.
(issue 17, "API reference": docstrings on every public name, a reference built from them, checked
by `make test`.)"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import api_docs  # noqa: E402


def test_every_public_module_is_in_the_reference() -> None:
    names = api_docs.public_module_names()
    assert {"mpp", "mpp.aio", "mpp.asgi", "mpp.identity", "mpp.ledger", "mpp.pricing", "mpp.protocol",
            "mpp.stores", "mpp.stores.pg", "mpp.connect", "mpp.cli.serve", "mpp.mcp"} <= set(names)
    assert not [n for n in names if any(part.startswith("_") for part in n.split("."))]


def test_the_reference_has_no_gap() -> None:
    gaps = api_docs.check()
    assert not gaps, f"{len(gaps)} gap(s) in the API reference (python tools/api_docs.py --check):\n  " + "\n  ".join(gaps)


def test_the_reference_builds(tmp_path: Path) -> None:
    pages = api_docs.build(tmp_path)
    expected = {tmp_path / (name.replace(".", "/") + ".html") for name in api_docs.public_module_names()}
    missing = sorted(str(p.relative_to(tmp_path)) for p in expected - set(pages))
    assert not missing, "modules without a page in the reference:\n  " + "\n  ".join(missing)
    assert (tmp_path / "search.js").exists()
    index = (tmp_path / "index.html").read_text(encoding="utf-8")
    unlinked = [n for n in api_docs.public_module_names() if f'href="{n.replace(".", "/")}.html"' not in index]
    assert not unlinked, "modules the front page (docs/api/index.html) does not link:\n  " + "\n  ".join(unlinked)
    seller_page = (tmp_path / "mpp" / "aio.html").read_text(encoding="utf-8")
    assert "Seller" in seller_page and "PaymentClient" in seller_page


@pytest.fixture
def synthetic_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A package with one documented module, one with every kind of gap, and one that cannot be imported."""
    pkg = tmp_path / "docsynth"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""A package for this test."""\n__all__ = []\n')
    (pkg / "good.py").write_text(textwrap.dedent('''\
        """Documented."""
        from dataclasses import dataclass
        __all__ = ["LIMIT", "Point", "Plane", "f"]
        LIMIT = 3
        """The limit."""
        @dataclass
        class Point:
            """A point."""
            x: int
            def norm(self) -> int:
                """Its size."""
                return abs(self.x)
            @property
            def twice(self) -> int:
                """Twice x."""
                return 2 * self.x
            def _private(self) -> None:
                pass
        class Plane(Point):
            """A point that overrides a documented method: the base's text is its own."""
            def norm(self) -> int:
                return 0
        def f():
            """Does f."""
        '''))
    (pkg / "bad.py").write_text(textwrap.dedent('''\
        from dataclasses import dataclass
        from docsynth.good import LIMIT
        __all__ = ["LIMIT", "WIDTH", "Point", "f"]
        WIDTH = 4  # a comment is not a docstring
        @dataclass
        class Point:
            x: int
            def norm(self) -> int:
                return abs(self.x)
            @property
            def twice(self) -> int:
                return 2 * self.x
        def f():
            pass
        '''))
    (pkg / "broken.py").write_text('"""Cannot be imported."""\nimport no_such_module_anywhere\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "docsynth"
    for name in [n for n in sys.modules if n == "docsynth" or n.startswith("docsynth.")]:
        del sys.modules[name]


def test_the_check_notices_every_kind_of_gap(synthetic_package: str) -> None:
    names = [synthetic_package + suffix for suffix in ("", ".good", ".bad", ".broken")]
    gaps = api_docs.check(names)
    assert gaps[0].startswith("docsynth.broken: could not be imported: ModuleNotFoundError")
    assert gaps[1:] == [
        "docsynth.bad: no module docstring",
        "docsynth.bad.WIDTH: variable without a docstring (a string literal after it)",
        "docsynth.bad.Point.norm: method without a docstring",
        "docsynth.bad.Point.twice: property without a docstring",
        "docsynth.bad.Point: class without a docstring",  # dataclass's made-up docstring does not count
        "docsynth.bad.f: function without a docstring",
    ]  # LIMIT, re-exported from good, is judged (and documented) there
    assert api_docs.check(names[:2]) == []
