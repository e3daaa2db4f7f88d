"""What the vector files' error labels mean for this implementation: the one place where our
exception classes are mapped onto the problem types and error categories of spec/README.md
("Vectors"). Every runner (test_vectors.py, test_identity_vectors.py, test_signed_vectors.py)
checks an expected error with :func:`raises`.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

import mpp
from mpp.stores.audit import AuditChainBroken

VECTORS = Path(__file__).resolve().parent.parent / "spec" / "vectors"

# Error categories (spec/README.md, "Vectors") -> the exceptions of ours that raise them.
CATEGORIES: dict[str, tuple[type[BaseException], ...]] = {
    "parse-error": (mpp.ParseError, UnicodeDecodeError),
    "format-error": (mpp.FormatError,),
    "signature-invalid": (mpp.SignatureInvalid,),
    "secret-refused": (ValueError,),  # a plain ValueError, never one of our MPPErrors (see matches)
    "receipt-invalid": (mpp.ReceiptInvalid,),
    "audit-chain-broken": (AuditChainBroken,),
    # Problem types whose refusal we raise as a parser's error: a seller answers a credential its parser
    # refuses malformed-credential (CORE-ERR-03). Every other problem type is matched by the slug the
    # exception carries (mpp.PaymentProblem and its subclasses).
    "malformed-credential": (mpp.ParseError,),
}


def matches(label: str, exc: BaseException) -> bool:
    """Whether ``exc`` is what the vectors call ``label``."""
    slug = getattr(exc, "slug", None)
    if isinstance(slug, str):
        return slug == label
    if label == "secret-refused" and isinstance(exc, mpp.MPPError):
        return False
    return isinstance(exc, CATEGORIES.get(label, ()))


KNOWN_PROBLEMS: set[str] = set()


def known_label(label: str) -> bool:
    """A label a vector may use: a category above or a problem slug some exception of ours carries."""
    if not KNOWN_PROBLEMS:
        from mpp import identity, pricing
        from mpp.intents import session as session_core

        KNOWN_PROBLEMS.update(cls.slug for cls in _subclasses(mpp.PaymentProblem))
        KNOWN_PROBLEMS.update(identity.IDENTITY_PROBLEMS, pricing.PRICING_PROBLEMS, session_core.SESSION_PROBLEMS)
    return label in CATEGORIES or label in KNOWN_PROBLEMS


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


@contextlib.contextmanager
def raises(label: str) -> Iterator[dict[str, BaseException]]:
    """Like pytest.raises, for a vector's label; the caught exception is in the yielded dict's "exc"."""
    caught: dict[str, BaseException] = {}
    try:
        yield caught
    except BaseException as exc:  # noqa: BLE001 - any exception is judged by matches()
        if not matches(label, exc):
            raise AssertionError(f"expected {label}, got {type(exc).__name__}: {exc}") from exc
        caught["exc"] = exc
        return
    raise AssertionError(f"expected {label}, nothing was raised")


def load(stem: str) -> dict[str, Any]:
    return json.loads((VECTORS / f"{stem}.json").read_text(encoding="utf-8"))
