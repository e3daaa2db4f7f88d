"""The sans-I/O core imports neither asyncio nor aiohttp.

The list of core modules is read from the file system: every module under mpp/ except the I/O
packages below, so a new core module is covered the day it is added.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mpp"
FORBIDDEN = ("asyncio", "aiohttp")
# The I/O side, relative to mpp/: the aiohttp and ASGI adapters, the CLI (with its demos,
# configuration and servers), the PostgreSQL stores and ledger (asyncpg: its money, its facets
# and the book they share) with the throwaway PostgreSQL, the store chooser that reaches them,
# the ledger's HTTP service and its nonce stores, and the engine's session desk (a stream waiting
# for an in-band voucher, the idle sweeper) with the engine's front door that owns it and the
# adapters' common base, and how their background tasks are stopped (engine/background.py), and the
# buyer engine (purchase/: locks, awaited stores), its httpx transport (httpx/) and the MCP transport (mcp/, the mcp SDK). Both engines are framework-neutral instead: see ENGINE below.
IO_PATTERNS = ("aio/*", "asgi/*", "cli/*", "stores/pg/*", "connect.py", "ledger/pg.py", "ledger/pg_facets.py",
               "ledger/_pg_book.py", "ledger/service.py", "ledger/nonces.py", "engine/sessions.py", "engine/seller.py",
               "engine/front.py", "engine/background.py", "purchase/*", "httpx/*", "mcp/*")
# The seller engine runs under both adapters on the asyncio loop, so it may use asyncio, but it
# names no web framework: nothing in it imports aiohttp, starlette, fastapi or uvicorn. The same
# holds for the buyer engine (mpp/purchase), which aiohttp, httpx and MCP carry.
ENGINE = PACKAGE / "engine"
ENGINES = {"engine": ENGINE, "purchase": PACKAGE / "purchase"}
FRAMEWORKS = ("aiohttp", "starlette", "fastapi", "uvicorn", "httpx", "httpx2", "mcp")


def _is_io(path: Path) -> bool:
    rel = path.relative_to(PACKAGE).as_posix()
    return any(fnmatch(rel, pattern) for pattern in IO_PATTERNS)


def core_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if not _is_io(p) and "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


CORE_FILES = core_files()
CORE_MODULES = [module_name(p) for p in CORE_FILES]


def _forbidden_imports(tree: ast.AST, forbidden: tuple[str, ...] = FORBIDDEN) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            # relative imports (level > 0) stay inside mpp; their module may still be named e.g. "aio"
            names = [node.module or ""] if node.level == 0 else []
        else:
            continue
        for name in names:
            if name.split(".")[0] in forbidden:
                found.append(f"line {node.lineno}: {name}")
    # importlib.import_module("asyncio") / __import__("aiohttp") spelled out literally
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and str(node.args[0].value).split(".")[0] in forbidden:
                found.append(f"line {node.lineno}: {called}({node.args[0].value!r})")
    return found


def _relative_imports_of_io(tree: ast.AST, path: Path) -> list[str]:
    """A core module must not reach the I/O side through a relative import either."""
    found = []
    package_parts = list(path.relative_to(PACKAGE).parent.parts)
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        base = package_parts[: len(package_parts) - (node.level - 1)] if node.level > 1 else package_parts
        targets = [[*base, *(node.module or "").split(".")]] if node.module else [[*base, a.name] for a in node.names]
        for target in targets:
            target = [t for t in target if t]
            candidate_file = PACKAGE.joinpath(*target).with_suffix(".py")
            candidate_pkg = PACKAGE.joinpath(*target, "__init__.py")
            for candidate in (candidate_file, candidate_pkg):
                if candidate.exists() and _is_io(candidate):
                    found.append(f"line {node.lineno}: {'.' * node.level}{node.module or ''} -> {candidate.relative_to(PACKAGE)}")
    return found


def test_core_module_list_is_sane():
    """The file-system scan finds the core modules we know of and none of the I/O ones."""
    for known in ("mpp", "mpp.protocol.wire", "mpp.protocol.headers", "mpp.protocol.challenge", "mpp.engine.core", "mpp.buyer.core", "mpp.methods.ledger"):
        assert known in CORE_MODULES
    for io in ("mpp.cli.main", "mpp.cli.config", "mpp.cli.demo", "mpp.aio", "mpp.aio.seller", "mpp.aio.buyer"):
        assert io not in CORE_MODULES


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_core_module_source_has_no_async_imports(path: Path):
    """covers: sans-I/O core (mpp/__init__ docstring): no `import asyncio`/`aiohttp`, no `from asyncio
    import ...`, no relative import of the I/O side, in any core module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    assert _forbidden_imports(tree) == []
    assert _relative_imports_of_io(tree, path) == []


def test_importing_the_core_loads_neither_asyncio_nor_aiohttp():
    """covers: sans-I/O core: importing every core module in a fresh interpreter leaves asyncio and
    aiohttp out of sys.modules (so no transitive import pulls them in either)."""
    code = (
        "import importlib, sys\n"
        f"for name in {CORE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('asyncio', 'aiohttp'))\n"
        "assert not bad, bad\n"
        "print(len(" + repr(CORE_MODULES) + "))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(len(CORE_MODULES))


@pytest.mark.parametrize("path", sorted(p for d in ENGINES.values() for p in d.glob("*.py")),
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_engine_module_names_no_web_framework(path: Path):
    """The engines are framework-neutral: their modules import no web framework or HTTP client, so
    the aiohttp and ASGI sellers share the seller engine whole, and aiohttp, httpx and MCP the buyer's."""
    assert _forbidden_imports(ast.parse(path.read_text(encoding="utf-8")), FRAMEWORKS) == []


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_importing_the_engine_loads_no_web_framework(engine: str):
    code = (f"import importlib, pkgutil, sys, mpp.{engine}\n"
            f"for m in pkgutil.iter_modules(mpp.{engine}.__path__):\n"
            f"    importlib.import_module('mpp.{engine}.' + m.name)\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r})\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_check_would_notice_an_async_import():
    """The scanners are not vacuous: they flag the forms they look for."""
    for source in ("import asyncio", "import aiohttp.web", "from asyncio import sleep", "from aiohttp import web",
                   "import os, asyncio as aio", "importlib.import_module('aiohttp')", "__import__('asyncio.events')"):
        assert _forbidden_imports(ast.parse(source)), source
    assert _forbidden_imports(ast.parse("from starlette.requests import Request"), FRAMEWORKS)
    assert not _forbidden_imports(ast.parse("import asyncio"), FRAMEWORKS)
    for source in ("import json", "from .aio_helpers import x", "from . import errors"):
        assert not _forbidden_imports(ast.parse(source)), source
    assert _relative_imports_of_io(ast.parse("from ..aio import seller"), PACKAGE / "protocol" / "headers.py")
    assert _relative_imports_of_io(ast.parse("from ..cli import main"), PACKAGE / "methods" / "ledger.py")
    assert _relative_imports_of_io(ast.parse("from .. import connect"), PACKAGE / "stores" / "payments.py")
    assert not _relative_imports_of_io(ast.parse("from .errors import ParseError"), PACKAGE / "protocol" / "headers.py")
