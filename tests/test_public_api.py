"""The public API can be found: every public module of ``mpp`` defines ``__all__`` (unique names,
each one the module has), and has a docstring, as has every class and function its ``__all__``
names and it defines.

A public module is one ``pkgutil.walk_packages`` finds under ``mpp`` with no part of its name
starting with ``_`` and not ``__main__``, so a module is covered the day it is added.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types

import mpp


def public_modules() -> list[types.ModuleType]:
    names = ["mpp"] + [info.name for info in pkgutil.walk_packages(mpp.__path__, "mpp.")]
    return [importlib.import_module(name) for name in names
            if not any(part.startswith("_") for part in name.split("."))]


def all_problems(module: types.ModuleType) -> list[str]:
    """What is wrong with ``module.__all__``: absent, not a list or tuple of unique strings, or naming what it lacks."""
    name = module.__name__
    if not hasattr(module, "__all__"):
        return [f"{name}: no __all__"]
    exported = module.__all__
    if not isinstance(exported, (list, tuple)) or not all(isinstance(n, str) for n in exported):
        return [f"{name}: __all__ is not a list of names"]
    problems = [f"{name}: {n} listed more than once" for n in sorted(set(exported)) if exported.count(n) > 1]
    problems += [f"{name}: {n} listed but not defined" for n in exported if not hasattr(module, n)]
    return problems


def _has_doc(obj: object) -> bool:
    doc = getattr(obj, "__doc__", None)  # its own: a class does not inherit __doc__ (inspect.getdoc would)
    return isinstance(doc, str) and bool(doc.strip())


def docstring_problems(module: types.ModuleType) -> list[str]:
    """The module, if it has no docstring, and each class or function its ``__all__`` names, defined
    in it, without its own docstring (re-exports are judged where they are defined)."""
    name = module.__name__
    problems = [] if _has_doc(module) else [f"{name} (module)"]
    for export in getattr(module, "__all__", ()):
        obj = getattr(module, export, None)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == name and not _has_doc(obj):
            problems.append(f"{name}.{export}")
    return problems


def test_every_public_module_has_all() -> None:
    problems = [p for module in public_modules() for p in all_problems(module)]
    assert not problems, "public modules whose __all__ is missing or wrong:\n  " + "\n  ".join(problems)


def test_every_public_name_has_a_docstring() -> None:
    problems = [p for module in public_modules() for p in docstring_problems(module)]
    assert not problems, (f"{len(problems)} public module(s), class(es) or function(s) without a docstring:\n  "
                          + "\n  ".join(problems))


def test_the_checks_notice_what_is_missing() -> None:
    bare = types.ModuleType("mpp.synthetic")
    assert all_problems(bare) == ["mpp.synthetic: no __all__"]
    assert docstring_problems(bare) == ["mpp.synthetic (module)"]

    module = types.ModuleType("mpp.synthetic", "A module for this test.")

    def undocumented() -> None:
        pass

    def documented() -> None:
        """Has one."""

    class Undocumented(Exception):  # its base's docstring does not count
        pass

    for obj in (undocumented, documented, Undocumented):
        obj.__module__ = module.__name__
        setattr(module, obj.__name__, obj)
    module.__all__ = ["undocumented", "documented", "Undocumented", "absent", "documented"]
    assert all_problems(module) == ["mpp.synthetic: documented listed more than once",
                                    "mpp.synthetic: absent listed but not defined"]
    assert docstring_problems(module) == ["mpp.synthetic.undocumented", "mpp.synthetic.Undocumented"]
