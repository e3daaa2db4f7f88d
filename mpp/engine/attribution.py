"""Whether the request being handled is attributable: whether it has shown, by a signature this
seller checked, whose it is (a mandate chain rooted in a trusted principal, a payer the ledger
accepts, a session's own key). Only an attributable request's refusal is audited: anyone can
fetch challenges, so a refusal of a stranger's credential, even over a challenge we minted,
writes nothing (CORE-ONCE-09, IDENT-AUD-08).

The flag lives in a context variable; each entry point clears it first (requests on one
connection are handled one after another in one task), and the checks that establish who is
asking set it.
"""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["attributed", "attributed_to", "mark_attributed", "start_request"]

_ATTRIBUTED: ContextVar[bool] = ContextVar("mpp_attributed", default=False)
_WHO: ContextVar[dict[str, str]] = ContextVar("mpp_attributed_to", default={})


def start_request() -> None:
    """A new request begins: nobody has shown who they are yet."""
    _ATTRIBUTED.set(False)
    _WHO.set({})


def mark_attributed(**who: str) -> None:
    """A signature this seller checked says whose request this is; ``who`` names what it proved
    (``principal``, ``mandate`` of a verified chain), for the audit entry of a later refusal."""
    _ATTRIBUTED.set(True)
    if who:
        _WHO.set({**_WHO.get(), **who})


def attributed_to() -> dict[str, str]:
    """What the request being handled has proved about whose it is (empty if nothing)."""
    return dict(_WHO.get())


def attributed() -> bool:
    """Whether the request being handled has shown whose it is."""
    return _ATTRIBUTED.get()
