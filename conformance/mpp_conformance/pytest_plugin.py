"""pytest plugin: `pytest --mpp-seller URL [--mpp-profile core|full|identity] [--mpp-pay-with SPEC]`
runs the conformance checks as test items (one per check), so they sit in an existing suite.
Without --mpp-seller the plugin adds nothing."""

from __future__ import annotations

import asyncio

import pytest

from .framework import Verdict, checks_for, run_checks


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mpp-conformance")
    group.addoption("--mpp-seller", metavar="URL", help="run the MPP conformance checks against this priced resource")
    group.addoption("--mpp-profile", default="core", choices=["core", "full", "identity"])
    group.addoption("--mpp-pay-with", metavar="SPEC", help="ledger:WALLET_DIR or static:JSON for the full profile")
    group.addoption("--mpp-method", default="GET")
    group.addoption("--mpp-other-url", metavar="URL", help="a second priced resource (full profile)")
    group.addoption("--mpp-identity-keys", metavar="DIR", help="keys from `mpp-conformance principal DIR` (identity profile)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "mpp_conformance_check" in metafunc.fixturenames:
        url = metafunc.config.getoption("--mpp-seller")
        checks = checks_for(metafunc.config.getoption("--mpp-profile")) if url else []
        metafunc.parametrize("mpp_conformance_check", checks, ids=[c.id for c in checks])




@pytest.fixture
def mpp_conformance_options(request: pytest.FixtureRequest) -> dict:
    return {"method": request.config.getoption("--mpp-method"), "data": None,
            "pay_with": request.config.getoption("--mpp-pay-with"), "concurrency": 20,
            "other_url": request.config.getoption("--mpp-other-url"),
            "identity_keys": request.config.getoption("--mpp-identity-keys")}


def run_one(check, url: str, options: dict):
    [result] = asyncio.run(run_checks([check], url, options))
    if result.verdict is Verdict.SKIP:
        pytest.skip(result.message)
    assert result.verdict is Verdict.PASS, f"{result.verdict.value}: {result.message} (requirements {', '.join(result.requirements)})"
    return result
