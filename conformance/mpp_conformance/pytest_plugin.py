"""pytest plugin: `pytest --pyargs mpp_conformance --mpp-seller URL [--mpp-profile PROFILE] [--mpp-pay-with SPEC]`
runs the conformance checks as test items (one per check), so they sit in an existing suite.
Without --mpp-seller the plugin adds nothing.

As the CLI does, the target is probed once before any check: when it cannot be reached or is not
priced (no 402 with a Payment challenge), or an option is unusable (a bad --mpp-pay-with), the
first conformance item fails with that one reason and the others are skipped, instead of every
check failing alike. A SHOULD-level departure (verdict ``warn``) passes with a warning
(``MppConformanceWarning``, in pytest's warnings summary) and the user property
``mpp-conformance-warning`` (in a JUnit report)."""

from __future__ import annotations

import asyncio
import warnings

import pytest

from .checks_core import DEFAULT_EXPIRY_WAIT
from .framework import PROFILES, Verdict, checks_for, run_checks
from .paying import DEFAULT_MAX_AMOUNT, DEFAULT_PAY_TIMEOUT
from .usage import UsageError

__all__ = ["MppConformanceWarning", "gate", "run_one"]


class MppConformanceWarning(UserWarning):
    """A SHOULD of the drafts the target does not follow: worth knowing, not a failure."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mpp-conformance")
    group.addoption("--mpp-seller", metavar="URL", help="run the MPP conformance checks against this priced resource")
    group.addoption("--mpp-profile", default="core", choices=list(PROFILES),
                    help="the checks to run, as `mpp-conformance seller --profile` (default core)")
    group.addoption("--mpp-pay-with", metavar="SPEC",
                    help="ledger:WALLET_DIR, static:JSON or cmd:PROGRAM for the paying profiles (see `mpp-conformance seller --help`)")
    group.addoption("--mpp-method", default="GET")
    group.addoption("--mpp-data", metavar="BODY", help="request body for the target")
    group.addoption("--mpp-other-url", metavar="URL", help="a second priced resource (full profile)")
    group.addoption("--mpp-identity-keys", metavar="DIR", help="keys from `mpp-conformance principal DIR` (identity profile)")
    group.addoption("--mpp-expiry-wait", type=float, default=DEFAULT_EXPIRY_WAIT, metavar="SECONDS",
                    help="the longest core.expired-challenge waits for a challenge to expire (default %(default)g)")
    group.addoption("--mpp-max-amount", type=int, default=DEFAULT_MAX_AMOUNT, metavar="N",
                    help="the most (base units) the ledger payer pays for one request")
    group.addoption("--mpp-pay-timeout", type=float, default=DEFAULT_PAY_TIMEOUT, metavar="SECONDS",
                    help="the longest a cmd: payer program may take to answer one challenge")
    group.addoption("--mpp-payer-ledger", metavar="LOCATION",
                    help="with a ledger: payer, the ledger (SQLite file or service URL) to read the payer's balance from")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "mpp_conformance_check" in metafunc.fixturenames:
        url = metafunc.config.getoption("--mpp-seller")
        checks = checks_for(metafunc.config.getoption("--mpp-profile")) if url else []
        metafunc.parametrize("mpp_conformance_check", checks, ids=[c.id for c in checks])


def _options(config: pytest.Config) -> dict:
    data = config.getoption("--mpp-data")
    return {"method": config.getoption("--mpp-method").upper(), "data": data.encode() if data is not None else None,
            "pay_with": config.getoption("--mpp-pay-with"), "concurrency": 20,
            "other_url": config.getoption("--mpp-other-url"),
            "identity_keys": config.getoption("--mpp-identity-keys"),
            "expiry_wait": config.getoption("--mpp-expiry-wait"),
            "max_amount": config.getoption("--mpp-max-amount"),
            "pay_timeout": config.getoption("--mpp-pay-timeout"),
            "payer_ledger": config.getoption("--mpp-payer-ledger")}


@pytest.fixture
def mpp_conformance_options(request: pytest.FixtureRequest) -> dict:
    return _options(request.config)


def _unusable(config: pytest.Config) -> str | None:
    """Why no check can run against the target (the CLI's usage errors), or None."""
    from .discover import check_target

    options = _options(config)
    if config.getoption("--mpp-profile") == "full" and not options["pay_with"]:
        return "mpp-conformance: --mpp-profile full needs --mpp-pay-with (ledger:WALLET_DIR, static:JSON or cmd:PROGRAM)"
    try:
        if options["pay_with"]:
            from .paying import payer_from_spec

            try:
                payer_from_spec(options["pay_with"], max_amount=options["max_amount"], timeout=options["pay_timeout"])
            except ValueError as exc:
                return f"mpp-conformance: {exc}"
        if options["identity_keys"]:
            from .principal import load_keys

            try:
                load_keys(options["identity_keys"])
            except (OSError, ValueError) as exc:
                return f"mpp-conformance: --mpp-identity-keys: {exc}"
        asyncio.run(check_target(config.getoption("--mpp-seller"), options["method"], options["data"]))
    except UsageError as exc:  # a SystemExit: caught by name, so that it never ends the user's session
        return str(exc)
    return None


_GATE = pytest.StashKey[dict]()


def gate(config: pytest.Config) -> None:
    """Called first by each conformance item: the target is probed once per session; when it is
    unusable the first item fails with the reason (a failure, not a setup error), the rest skip."""
    state = config.stash.setdefault(_GATE, {})
    if "problem" not in state:
        state["problem"] = _unusable(config)
    problem = state["problem"]
    if problem is None:
        return
    if not state.get("reported"):
        state["reported"] = True
        pytest.fail(problem, pytrace=False)
    pytest.skip("the target cannot be checked: see the first mpp-conformance item's failure")


def run_one(check, url: str, options: dict, node: pytest.Item | None = None):
    [result] = asyncio.run(run_checks([check], url, options))
    if result.verdict is Verdict.SKIP:
        pytest.skip(result.message)
    if result.verdict is Verdict.WARN:  # a SHOULD not followed: reported, never a failure
        message = f"{check.id}: {result.message} (SHOULD: {result.cites})"
        if node is not None:
            node.user_properties.append(("mpp-conformance-warning", message))
        warnings.warn(MppConformanceWarning(message), stacklevel=2)
        return result
    assert result.verdict is Verdict.PASS, f"{result.verdict.value}: {result.message} (requirements {', '.join(result.requirements)})"
    return result
