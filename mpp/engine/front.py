"""What both adapters' ``Seller`` share: the configuration, the engine made from it, and the
framework-free calls a seller's own code makes (price-list reloads, tasks).

``mpp.aio.Seller`` and ``mpp.asgi.Seller`` derive from :class:`SellerFront` and add only the
framework's wiring: how a request reaches the engine and how its answer goes back.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Iterable

from mpp.engine.config import SellerConfig
from mpp.engine.seller import SellerEngine
from mpp.pricing import PriceList, PriceListError
from mpp.pricing.prices import Metered, Price
from mpp.stores.pricing import TaskRecord
from mpp.engine.background import stop_task

__all__ = ["SellerFront"]


@dataclass
class SellerFront(SellerConfig):
    """A configured seller with its engine (``self.engine``); see :class:`SellerConfig` for the fields."""

    def __post_init__(self) -> None:
        self.engine = SellerEngine(self)
        self.core, self.issuer, self.sessions = self.engine.core, self.engine.issuer, self.engine.sessions
        self._sweeper: asyncio.Task | None = None
        self._recording: set[asyncio.Task] = set()  # reloaded price lists being recorded in the pricing store

    def __repr__(self) -> str:
        return f"{type(self).__name__}(realm={self.realm!r}, rails={list(self.engine.rails)!r})"

    # -- serving -----------------------------------------------------------------

    async def start_serving(self, priced: Iterable[tuple[str, str, Price | Metered]]) -> None:
        """Before the first request: refuse metered routes without a session store and prices no rail
        can quote (ValueError naming the routes), open the pricing store, finish interrupted refunds,
        start closing idle sessions."""
        priced = list(priced)
        if self.sessions is None and any(isinstance(p, Metered) for _, _, p in priced):
            raise RuntimeError("metered routes need a session store: Seller(session_store=SqliteSessionStore(...))")
        unsold = [f"{method} {path} (currency {price.currency!r})" for method, path, price in priced
                  if not self.engine.core.offers(price)]
        if unsold:
            raise ValueError(f"no rail of this seller can quote the price of {', '.join(unsold)}: give it a rail that "
                             f"takes that currency (an evm rail a token for it), or price it in one its rails take")
        await self.engine.start()
        if self.sessions is not None and self._sweeper is None:
            self._sweeper = asyncio.create_task(self.sessions.sweep_forever())

    async def stop_serving(self) -> None:
        """After the last request: stop the idle-session sweeper, finish recording reloaded price
        lists, close the session and payment stores."""
        if self._recording:
            await asyncio.gather(*self._recording, return_exceptions=True)
        await stop_task(self._sweeper)
        self._sweeper = None
        if self.sessions is not None:
            await self.sessions.store.close()
        await self.engine.close()

    # -- prices ----------------------------------------------------------------

    def reload_prices(self, text: str, source: str) -> PriceList:
        """Replace the price list while serving (PRICE-VER-02); see SellerEngine.reload_prices.
        While serving, the new version is then recorded in the pricing store (if any) in the
        background, so a later run cannot reuse its name for other prices; before serving,
        :meth:`start_serving` records it."""
        new = self.engine.reload_prices(text, source)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return new
        task = loop.create_task(self.engine.remember_list(new))
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)
        return new

    def load_prices(self, path: str) -> PriceList:
        """``reload_prices`` from a file; an unreadable file is a PriceListError naming it."""
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise PriceListError(str(path), [(1, f"cannot read the price list: {exc}")]) from None
        return self.reload_prices(text, str(path))

    # -- tasks -----------------------------------------------------------------

    async def task(self, task_id: str) -> TaskRecord | None:
        """The task's record, if this seller keeps task records."""
        return await self.engine.offers.task(task_id)

    async def finish_task(self, task_id: str, *, ok: bool, detail: str | None = None) -> bool:
        """The task succeeded or failed; True if this call moved it (PRICE-TASK-04, -05)."""
        return await self.engine.offers.finish_task(task_id, ok=ok, detail=detail)

    async def refund_owed_tasks(self) -> int:
        """Complete the refunds of failed tasks a crash interrupted; how many were completed."""
        return await self.engine.offers.refund_owed_tasks()

    async def task_delivered(self, task_id: str) -> bool:
        """A follow-up returned the task's result: from now on a failure refunds nothing."""
        return await self.engine.offers.task_delivered(task_id)
