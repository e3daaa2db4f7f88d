"""Background tasks of a seller (the idle-session sweeper, a rail's reconciling round): stopped
the same way everywhere."""

from __future__ import annotations

import asyncio

__all__ = ["stop_task"]


async def stop_task(task: asyncio.Task | None) -> None:
    """Cancel ``task`` (if any) and wait until it has stopped; its cancellation is not an error."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
