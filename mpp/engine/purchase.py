"""What a paid handler can know: the payment that let it run, its task, its grant, its meter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from mpp.engine.core import Verified
from mpp.engine.quotes import QuotedTerms
from mpp.identity import MandateChain, PolicyDecision
from mpp.engine.rails import Settlement
from mpp.ledger import MandateCharge
from mpp.stores.pricing import TaskRecord

__all__ = ["Payment", "TaskDesk", "TaskControl", "IdentityContext", "Context"]


@dataclass
class Payment:
    """What a paid handler can know about the payment that let it run."""

    verified: Verified
    settlement: Settlement
    claims: dict[str, Any]
    receipt_header: str
    refunded: bool = False
    terms: QuotedTerms | None = None  # the quoted pricing terms (spec/pricing.md), when the route is listed
    recorded: bool = True  # the receipt is signed and the settlement recorded (a task's waits for its id)
    task_id: str | None = None
    grant: str | None = None  # Payment-Grant for the response: a task's or a seat's
    seat: tuple[str, int] | None = None  # (subscription, period) this payment bought
    book: Any = None  # the book it was committed in, in one transaction (mpp.ledger.book), if any

    @property
    def payer(self) -> str | None:
        """The account that paid, as the rail settled it."""
        return self.settlement.payer

    @property
    def source(self) -> str | None:
        """The credential's ``source`` (who says it pays)."""
        return self.verified.credential.source


class TaskDesk(Protocol):
    """Where tasks are kept (the engine's :class:`~mpp.engine.offers.OfferDesk`)."""

    async def task(self, task_id: str) -> TaskRecord | None:
        """The task's record as stored, or None (no such task, or no pricing store)."""

    async def finish_task(self, task_id: str, *, ok: bool, detail: str | None = None) -> bool:
        """Mark the task succeeded (``ok``) or failed; True if this call moved it. A failure before the
        result was delivered refunds the task's charge once when its quoted rule says so (PRICE-TASK-04).
        RuntimeError without a pricing store."""

    async def task_delivered(self, task_id: str) -> bool:
        """The task's result reached the buyer: from now on a failure refunds nothing; True if this call
        moved it. RuntimeError without a pricing store."""


class TaskControl:
    """A handler's hold on the task it started (PRICE-TASK-01..05)."""

    def __init__(self, offers: TaskDesk, task_id: str) -> None:
        self._offers = offers
        self.task_id = task_id

    async def record(self) -> TaskRecord | None:
        """The task's record as stored now."""
        return await self._offers.task(self.task_id)

    async def succeed(self) -> bool:
        """Mark the task succeeded; True if this call moved it."""
        return await self._offers.finish_task(self.task_id, ok=True)

    async def fail(self, detail: str | None = None) -> bool:
        """Mark the task failed (refunded if its quoted rule says so); True if this call moved it."""
        return await self._offers.finish_task(self.task_id, ok=False, detail=detail)

    async def delivered(self) -> bool:
        """The result reached the buyer: from now on a failure refunds nothing."""
        return await self._offers.task_delivered(self.task_id)


@dataclass(frozen=True)
class IdentityContext:
    """The identity extension, checked: the chain, the policy's decision, what the ledger is asked
    to charge against, the approval used, and the budget period of each link."""

    chain: MandateChain
    decision: PolicyDecision
    charge: MandateCharge
    approval: Any  # the verified Approval, required or not: it is used up either way
    periods: dict[str, str]  # link key -> budget period key
    audit: tuple[tuple[str, dict[str, Any]], ...] = ()  # entries left to the purchase's own transaction


@dataclass
class Context:
    """What the engine hands the route's handler (through the adapter): at most one payment, and
    the task, grant or meter that goes with the request."""

    payment: Payment | None = None
    task: TaskControl | None = None
    grant: Any = None
    meter: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
