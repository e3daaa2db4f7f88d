"""The third-party peers of the interoperability tests, found and run as subprocesses.

pympp (PyPI) runs under the interop virtualenv's python (``make interop-env`` builds
``.venv-interop``; ``make test`` sets MPP_INTEROP_PYTHON); mppx (npm) runs under node from the
folder ``make mppx`` installs it into (``.mppx/``, or MPP_INTEROP_MPPX). A peer that is missing
fails the test, naming the command that installs it: nothing is skipped.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def interop_python() -> str:
    """The interop environment's python (pympp installed), or the test fails saying how to make it."""
    python = os.environ.get("MPP_INTEROP_PYTHON")
    if not python or not Path(python).exists():
        pytest.fail(
            "MPP_INTEROP_PYTHON is not set to the interop environment's python: run `make test` "
            "(or `make interop-env` and set MPP_INTEROP_PYTHON=.venv-interop/bin/python); "
            "`make test-fast` runs everything else",
            pytrace=False,
        )
    return python


def mppx_env() -> dict[str, str]:
    """The environment the mppx driver runs in (MPP_INTEROP_MPPX set to the installed folder),
    or the test fails naming what is missing: node, or mppx (``make mppx``)."""
    if shutil.which("node") is None:
        pytest.fail("node is not on PATH: the mppx peer runs under Node.js 20 or newer (apt-get install nodejs npm)",
                    pytrace=False)
    folder = Path(os.environ.get("MPP_INTEROP_MPPX") or REPO / ".mppx")
    if not (folder / "node_modules" / "mppx" / "package.json").is_file():
        pytest.fail(f"mppx is not installed in {folder}: run `make mppx` (npm ci of the version tools/mppx/ pins), "
                    "or `make test`, which does it first", pytrace=False)
    return {**os.environ, "MPP_INTEROP_MPPX": str(folder)}


def run_json(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 60) -> dict[str, Any]:
    """Run a driver that prints one JSON object on its last stdout line; that object."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    lines = result.stdout.strip().splitlines()
    assert lines, f"{Path(argv[1]).name} printed nothing (exit {result.returncode}): {result.stderr[-3000:]}"
    return json.loads(lines[-1])


@contextmanager
def started(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 30) -> Iterator[str]:
    """Start a server driver, wait for the first line it prints (its URL) and yield it; stop the
    process after (terminate, then kill), also when the test fails. A driver that exits or says
    nothing in time fails the test with the end of its stderr."""
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, text=True,
                                   env=env)
        try:
            yield _first_line(process, errors, timeout)
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
            assert process.stdout is not None
            process.stdout.close()


def _first_line(process: subprocess.Popen, errors: Any, timeout: float) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=0.05):
                line = process.stdout.readline().strip()
                if line:
                    return line
            if process.poll() is not None:
                break
    errors.seek(0)
    what = f"exited with {process.returncode}" if process.poll() is not None else f"printed no URL within {timeout:.0f} s"
    pytest.fail(f"{Path(process.args[1]).name} {what}; its stderr ends:\n{errors.read()[-3000:]}", pytrace=False)
