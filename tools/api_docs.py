"""Build the API reference of ``mpp`` from its docstrings with pdoc, and say what it lacks.

    python tools/api_docs.py                 # write the HTML reference to docs/api/ (what `make docs` runs)
    python tools/api_docs.py --out DIR       # somewhere else
    python tools/api_docs.py --check         # build nothing; exit 1 listing every gap
    python tools/api_docs.py --check --only mpp.ledger   # the same, for some modules

The public modules are every module under ``mpp`` with no part of its dotted name starting with
``_`` (``__main__`` included in that), the rule tests/test_public_api.py uses, so a module is in
the reference the day it is added. pdoc itself would follow only the submodules a package's
``__all__`` names (none of ours do), so they are passed to it explicitly.

A gap is a public module pdoc could not import, a public module without a module docstring, or a
name its ``__all__`` lists, defined in it, without a docstring of its own: a class or function
(and each public method or property such a class defines, unless it overrides a documented one)
(pdoc drops the text ``dataclass`` and ``NamedTuple`` make up), or a variable assigned in the
module with no string literal right after the assignment (how pdoc documents a constant). A
re-exported name is judged where it is defined, so it is documented once. tests/test_docs.py
runs the check and a build into a temporary directory inside ``make test``.
"""

from __future__ import annotations

import argparse
import ast
import html
import importlib
import inspect
import pkgutil
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "api"


def public_module_names() -> list[str]:
    """``mpp`` and every module below it whose dotted name has no part starting with ``_``."""
    import mpp

    found = [info.name for info in pkgutil.walk_packages(mpp.__path__, "mpp.",
                                                         onerror=lambda name: None)]
    return ["mpp"] + sorted(n for n in found if not any(part.startswith("_") for part in n.split(".")))


def load_modules(names: list[str]) -> tuple[list, list[str]]:
    """pdoc's view of each module, and one line per module that could not be imported (with the error)."""
    import pdoc.doc

    modules, problems = [], []
    for name in names:
        try:
            importlib.import_module(name)
            modules.append(pdoc.doc.Module.from_name(name))
        except Exception as exc:  # noqa: BLE001 - any import failure is a gap to report
            problems.append(f"{name}: could not be imported: {type(exc).__name__}: {exc}")
    return modules, problems


def assigned_names(module) -> set[str]:
    """The names a module's own source assigns at top level (its constants, as opposed to re-exports)."""
    try:
        tree = ast.parse(Path(module.obj.__file__).read_text(encoding="utf-8"))
    except (OSError, TypeError, SyntaxError):
        return set()
    names: set[str] = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def docstring_gaps(module) -> list[str]:
    """What ``module`` (a ``pdoc.doc.Module``) lacks: its own docstring, and one for each public
    name it defines (see the module docstring for the rule)."""
    import pdoc.doc

    name = module.modulename
    gaps = [] if module.docstring.strip() else [f"{name}: no module docstring"]
    assigned = assigned_names(module)
    for member in module.members.values():
        if member.name.startswith("_"):
            continue
        if isinstance(member, pdoc.doc.Class) and member.taken_from[0] == name:
            gaps += method_gaps(member)
        if member.docstring.strip():
            continue
        if isinstance(member, (pdoc.doc.Class, pdoc.doc.Function)):
            if member.taken_from[0] == name:
                gaps.append(f"{member.fullname}: {type(member).__name__.lower()} without a docstring")
        elif isinstance(member, pdoc.doc.Variable) and member.name in assigned:
            gaps.append(f"{member.fullname}: variable without a docstring (a string literal after it)")
    return gaps


def method_gaps(cls) -> list[str]:
    """The public methods and properties a class (a ``pdoc.doc.Class``) defines itself without a
    docstring. One that overrides a documented method of a base class has that text (pdoc shows it,
    as ``inspect.getdoc`` finds it), so an implementation of a documented interface is covered."""
    import pdoc.doc

    gaps = []
    for member in cls.own_members:
        if member.name.startswith("_") or member.docstring.strip():
            continue
        if isinstance(member, pdoc.doc.Function):
            gaps.append(f"{member.fullname}: method without a docstring")
        elif isinstance(member, pdoc.doc.Variable) and isinstance(inspect.getattr_static(cls.obj, member.name, None), property):
            gaps.append(f"{member.fullname}: property without a docstring")
    return gaps


def check(names: list[str] | None = None) -> list[str]:
    """Every gap of the public modules (``names``, by default all of them), in module order."""
    modules, problems = load_modules(names or public_module_names())
    return problems + [gap for module in modules for gap in docstring_gaps(module)]


def build(out: Path, names: list[str] | None = None) -> list[Path]:
    """Write the HTML reference of the public modules into ``out``; the pages written."""
    import pdoc
    import pdoc.render

    pdoc.render.configure(docformat="restructuredtext", search=True, show_source=True)
    with warnings.catch_warnings():
        # annotations naming what a module imports only under TYPE_CHECKING are shown as written
        warnings.filterwarnings("ignore", message="Error parsing type annotation", category=UserWarning)
        pdoc.pdoc(*(names or public_module_names()), output_directory=out)
    (out / "index.html").write_text(index_page(names or public_module_names()), encoding="utf-8")
    return sorted(out.rglob("*.html"))


def index_page(names: list[str]) -> str:
    """The reference's front page: every public module, linked, with its docstring's first line.
    (pdoc's own index only redirects to ``mpp``, whose page lists no submodule: ``mpp.__all__``
    names none, and pdoc follows ``__all__``.)"""
    rows = []
    for name in names:
        doc = (importlib.import_module(name).__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        depth = name.count(".")
        rows.append(f'<li style="margin-left:{depth * 1.5}em"><a href="{name.replace(".", "/")}.html">'
                    f"<code>{html.escape(name)}</code></a> — {html.escape(doc)}</li>")
    return ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>mpp API reference</title></head>\n"
            "<body style=\"font-family:sans-serif;max-width:60em;margin:2em auto\">\n"
            "<h1>mpp API reference</h1>\n<p>Built from the docstrings by <code>make docs</code> "
            "(tools/api_docs.py, pdoc). Each page has a search box.</p>\n<ul style=\"list-style:none;padding:0\">\n"
            + "\n".join(rows) + "\n</ul>\n</body></html>\n")


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default docs/api)")
    parser.add_argument("--check", action="store_true", help="list what the reference lacks; build nothing")
    parser.add_argument("--only", metavar="PREFIX", action="append", default=[],
                        help="with --check: only the modules whose dotted name starts with PREFIX (repeatable)")
    args = parser.parse_args(argv)
    if args.only and not args.check:
        parser.error("--only narrows --check; the reference is always built whole")
    names = [n for n in public_module_names() if not args.only or any(n.startswith(p) for p in args.only)]
    if not names:
        parser.error(f"no public module starts with {' or '.join(args.only)}")
    gaps = check(names)
    if gaps:
        print(f"{len(gaps)} gap(s) in the API reference:", *gaps, sep="\n  ", file=sys.stderr)
        return 1
    if args.check:
        return 0
    pages = build(args.out)
    print(f"API reference: {len(pages)} pages in {args.out}/ (open {args.out / 'index.html'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
