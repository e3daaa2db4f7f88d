"""The shape of the code, checked: the import-linter contracts in pyproject.toml (layers, no
import circles, a black-box conformance suite), and no module or class too big to read."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import mpp

ROOT = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 600
MAX_CLASS_METHODS = 20


def test_import_contracts_hold():
    """Every contract in [tool.importlinter] is kept: each layer of mpp imports only layers below
    it, no import circle in mpp or mpp_conformance, the conformance suite reads no seller insides."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout and "kept" in result.stdout


def test_the_contracts_would_notice_a_breach(tmp_path):
    """The layers contract is not vacuous: the same configuration breaks on a package whose low
    layer imports a high one."""
    pkg = tmp_path / "layered"
    (pkg / "protocol").mkdir(parents=True)
    (pkg / "cli").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "protocol" / "__init__.py").write_text("from layered.cli import main\n")
    (pkg / "cli" / "__init__.py").write_text("main = 1\n")
    (tmp_path / ".importlinter").write_text(
        "[importlinter]\nroot_package = layered\n\n[importlinter:contract:layers]\nname = layers\ntype = layers\n"
        "containers = layered\nlayers =\n    cli\n    protocol\n")
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1 and "layered.protocol is not allowed to import layered.cli" in result.stdout, result.stdout


def _modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(mpp.__path__, "mpp.") if not m.name.endswith("__main__")]


def test_no_module_over_600_lines():
    too_long = {}
    for path in (ROOT / "mpp").rglob("*.py"):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES:
            too_long[path.relative_to(ROOT).as_posix()] = lines
    assert too_long == {}


def methods_of(cls: type) -> set[str]:
    """The methods (and properties) a class has from itself and every mpp class it derives from;
    dunder methods aside."""
    return {name for klass in cls.__mro__ if klass.__module__.startswith("mpp") for name, value in vars(klass).items()
            if not (name.startswith("__") and name.endswith("__"))
            and (inspect.isfunction(value) or isinstance(value, (staticmethod, classmethod, property)))}


def test_no_class_with_more_than_20_methods():
    big = {}
    for name in _modules():
        module = importlib.import_module(name)
        for cname, cls in vars(module).items():
            if inspect.isclass(cls) and cls.__module__ == name and len(methods_of(cls)) > MAX_CLASS_METHODS:
                big[f"{name}.{cname}"] = len(methods_of(cls))
    assert big == {}


def test_the_method_count_sees_inherited_methods():
    class Base:
        def a(self): ...
        def b(self): ...

    class Child(Base):
        def c(self): ...

    Base.__module__ = Child.__module__ = "mpp.example"
    assert methods_of(Child) == {"a", "b", "c"}
