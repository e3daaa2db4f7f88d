"""Session receipts, checked without I/O: each request's (SESSION-BUY-05) and the final one's
(SESSION-BUY-07), against what the buyer signed and saw; and amounts read from a seller's problem."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

from mpp.intents.session import INTENT, cost_of
from mpp.protocol.errors import ParseError, ReceiptInvalid
from mpp.protocol.headers import parse_receipt
from mpp.protocol.models import PaymentReceipt
from mpp.protocol.receipts import verify_receipt_jws

__all__ = ["verify_session_receipt", "problem_amount"]


def _amount(claims: Mapping[str, Any], name: str) -> int:
    value = claims.get(name)
    if isinstance(value, bool):
        raise ReceiptInvalid(f"receipt {name} is not an amount")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise ReceiptInvalid(f"receipt {name} {value!r} is not an amount")


def problem_amount(problem: Mapping[str, Any], name: str) -> int | None:
    """An amount the seller names (``required``, ``spent``, ...), or None if it is not one."""
    try:
        return _amount(problem, name)
    except ReceiptInvalid:
        return None


def _count(claims: Mapping[str, Any], name: str) -> int:
    """A JSON integer >= 0 (``units``, ``requests``)."""
    value = claims.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ReceiptInvalid(f"receipt {name} {value!r} is not a count")
    return value


def _price(claims: Mapping[str, Any], where: str = "receipt") -> tuple[int, int]:
    unit_price, per = _amount(claims, "unitPrice"), _amount(claims, "per")
    if unit_price <= 0 or per <= 0:
        raise ReceiptInvalid(f"{where} prices {unit_price} per {per} units")
    return unit_price, per


def _check_request_receipt(claims: Mapping[str, Any], spent: int) -> None:
    """SESSION-BUY-05: one request's receipt charges cost(units) at its own price, within spent."""
    amount, units = _amount(claims, "amount"), _count(claims, "units")
    unit_price, per = _price(claims)
    if amount != cost_of(units, unit_price, per):
        raise ReceiptInvalid(f"receipt charges {amount} for {units} units at {unit_price} per {per}, "
                             f"not their cost {cost_of(units, unit_price, per)}")
    if spent < amount:
        raise ReceiptInvalid(f"receipt says {spent} spent, less than the {amount} this request cost")


def _check_final_receipt(claims: Mapping[str, Any], session: Any, spent: int) -> None:
    """SESSION-BUY-07: what the whole session cost, line by line, against what we signed and saw.

    Each request is rounded up on its own (SESSION-REQ-03), so the total is not cost(total units):
    a line of n requests costs from cost(its units) to cost(its units) + n - 1."""
    if claims.get("final") is not True:
        raise ReceiptInvalid("close answered with a receipt that is not final")
    captured, amount, released, cap = (_amount(claims, n) for n in ("captured", "amount", "released", "cap"))
    if not captured == amount == spent:
        raise ReceiptInvalid(f"final receipt: captured {captured}, amount {amount} and spent {spent} differ")
    if spent < session.spent:
        raise ReceiptInvalid(f"final receipt says {spent} spent, less than the {session.spent} an earlier receipt said")
    if cap > session.cap or captured + released != cap:
        raise ReceiptInvalid(f"final receipt: captured {captured} + released {released} is not its cap {cap}, "
                             f"or that cap is above the {session.cap} we signed")
    lines = claims.get("lines")
    if not isinstance(lines, list) or not all(isinstance(line, dict) for line in lines):
        raise ReceiptInvalid("final receipt lists no usage lines")
    totals = [0, 0, 0]  # amount, units, requests
    for line in lines:
        line_amount, units, requests = _amount(line, "amount"), _count(line, "units"), _count(line, "requests")
        unit_price, per = _price(line, "a usage line")
        least = cost_of(units, unit_price, per)
        if requests == 0 or not least <= line_amount <= least + requests - 1:
            raise ReceiptInvalid(f"usage line of {requests} requests, {units} units at {unit_price} per {per} "
                                 f"charges {line_amount}, outside {least} to {least + max(requests - 1, 0)}")
        totals = [totals[0] + line_amount, totals[1] + units, totals[2] + requests]
    if totals != [captured, _count(claims, "units"), _count(claims, "requests")]:
        raise ReceiptInvalid(f"final receipt: its lines add up to {totals[0]} for {totals[1]} units in {totals[2]} "
                             f"requests, not {captured}, {claims.get('units')!r} and {claims.get('requests')!r}")


def verify_session_receipt(header: str | None, session: Any, jwks: Mapping[str, Any], now: datetime, *,
                           final: bool = False) -> tuple[PaymentReceipt, dict[str, Any]]:
    """Check a session receipt's JWS, that it is for this session and within what we signed, and
    its arithmetic: a request's (SESSION-BUY-05) or, with ``final``, the whole session's (SESSION-BUY-07)."""
    if not header:
        raise ReceiptInvalid("session response carries no Payment-Receipt")
    try:
        receipt = parse_receipt(header)
    except ParseError as exc:
        raise ReceiptInvalid(f"Payment-Receipt is malformed: {exc}") from exc
    if receipt.challengeId != session.id:
        raise ReceiptInvalid("receipt names another session")
    if not receipt.receipt:
        raise ReceiptInvalid("receipt carries no signed JWS")
    claims = verify_receipt_jws(receipt.receipt, jwks, issuer=session.realm, challenge_id=session.id, now=now)
    for name, expected in (("intent", INTENT), ("reference", session.id), ("currency", session.terms.currency),
                           ("recipient", session.terms.recipient)):
        if claims.get(name) != expected:
            raise ReceiptInvalid(f"signed receipt {name} {claims.get(name)!r} differs from {expected!r}")
    if receipt.reference != session.id:
        raise ReceiptInvalid("receipt reference is not the session id")
    spent, authorized = _amount(claims, "spent"), _amount(claims, "authorized")
    if spent > session.voucher.cumulative:
        raise ReceiptInvalid(f"receipt says {spent} spent, above our highest voucher {session.voucher.cumulative}")
    if authorized > session.cap or authorized > session.voucher.cumulative:
        raise ReceiptInvalid(f"receipt says {authorized} authorized, above what we signed")
    if spent > authorized:
        raise ReceiptInvalid("receipt says more spent than authorized")
    if final:
        _check_final_receipt(claims, session, spent)
    else:
        _check_request_receipt(claims, spent)
    return receipt, claims
