"""The runner: which checks each profile runs, and running them. What a check is made of
(mpp_conformance.base) is re-exported here, where the suite's users import it from."""

from __future__ import annotations

import asyncio
import time
import traceback
from typing import Any, Callable

import aiohttp

from .base import (_SOURCE, DRAFTS, LEAK_MIN, MIN_FRAGMENT, REDACTED, Check, CheckContext, CheckError, CheckFailed,  # noqa: F401
                   CheckFn, Exchange, Response, Result, SentCredentials, Skip, Verdict, cited, level_of, redact, register,
                   registered)

__all__ = ["Verdict", "Exchange", "Result", "Check", "CheckContext", "register", "checks_for", "run_checks", "CheckFailed", "redact",
           "SentCredentials", "REDACTED", "CheckError", "DRAFTS", "PROFILES", "level_of", "cited", "all_checks"]


CHECK_MODULES = ("checks_full", "checks_discovery", "checks_session", "checks_identity", "checks_pricing")


def all_checks() -> list[Check]:
    """Every check of the suite: its check modules imported, which registers their checks."""
    from . import checks_core  # noqa: F401 - registration by import
    for name in CHECK_MODULES:
        try:
            __import__(f"{__package__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{name}":
                raise
    return registered()


# What each profile runs: the groups of checks it includes. `draft` is the exception: every check
# of its groups that cites a draft (MUST and SHOULD levels), none that tests MPP's own profile.
# Group "draft" holds the draft's SHOULDs that MPP's profile replaces by a stricter check of its
# own (draft.two-credentials's 400 against core.two-credentials's 402): only `draft` runs them.
PROFILE_INCLUDES = {"draft": ("draft", "core", "full"), "core": ("core",), "full": ("core", "full"),
                    "identity": ("core", "identity"), "pricing": ("core", "pricing"), "session": ("core", "session")}
PROFILES = tuple(PROFILE_INCLUDES)


def checks_for(profile: str) -> list[Check]:
    """The checks ``profile`` runs: those of the groups PROFILE_INCLUDES gives it."""
    wanted = PROFILE_INCLUDES.get(profile, (profile,))
    return [c for c in all_checks() if c.profile in wanted and (profile != "draft" or c.draft is not None)]


async def run_checks(checks: list[Check], target: str, options: dict[str, Any],
                     progress: Callable[[Result, int, int], None] | None = None) -> list[Result]:
    """Run checks one after another (each gets its own evidence), never stopping at a failure."""
    results: list[Result] = []
    sent = SentCredentials()
    checks = sorted(checks, key=lambda c: c.last)  # stable: the order given, `last` ones at the end
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for n, chk in enumerate(checks, 1):
            ctx = CheckContext(target, session, options, sent=sent, check_id=chk.id)
            start = time.perf_counter()
            try:
                note = await chk.fn(ctx)
                verdict, message = Verdict.PASS, note or "as the spec requires"
            except CheckFailed as exc:  # a SHOULD not followed is worth knowing, not a failure
                verdict, message = (Verdict.WARN if chk.level == "SHOULD" else Verdict.FAIL), str(exc)
            except Skip as exc:
                verdict, message = Verdict.SKIP, str(exc)
            except CheckError as exc:
                verdict, message = Verdict.ERROR, str(exc)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                verdict, message = Verdict.ERROR, f"could not talk to the target: {type(exc).__name__}: {exc}"
            except Exception as exc:  # noqa: BLE001 - a check bug is reported, never fatal to the run
                verdict, message = Verdict.ERROR, f"check crashed: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
            # Evidence was scrubbed as recorded; the message may quote a response, so it is scrubbed too.
            result = Result(chk.id, chk.title, chk.profile, list(chk.requirements), verdict, sent.scrub(message),
                            (time.perf_counter() - start) * 1000, ctx.exchanges, target, chk.level, chk.draft)
            results.append(result)
            if progress is not None:
                progress(result, n, len(checks))
    return results
