"""mpp-conformance: black-box checks of a seller or a buyer against the MPP specification.

Every check names the requirement ids of ``spec/`` it covers; the runner knows nothing of the
target's language, and the target knows nothing of the checks.
"""

from .framework import Check, CheckContext, Exchange, Result, Verdict, checks_for, register

__all__ = ["Check", "CheckContext", "Exchange", "Result", "Verdict", "checks_for", "register"]
