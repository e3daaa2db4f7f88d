"""The task model (PRICE-TASK-*): one charge starts a task, whose follow-up routes a task grant covers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from mpp.pricing.offers import Offer
from mpp.pricing.routes import _route_matches

__all__ = [
    "TaskOffer",
]

_TASK_ID = re.compile(r"[A-Za-z0-9._~-]{1,128}")


@dataclass(frozen=True)
class TaskOffer(Offer):
    """A charge that starts a task; a task grant then covers its follow-ups for ``grant_ttl`` seconds."""

    model: ClassVar[str] = "task"
    follow_ups: tuple[str, ...] = ()
    grant_ttl: int = 3600
    refund: str = "none"

    def grant_routes(self, task_id: str) -> list[str]:
        """The follow-ups with ``{task}`` filled in: the routes a task grant covers."""
        if not isinstance(task_id, str) or _TASK_ID.fullmatch(task_id) is None:
            raise ValueError("a task id is 1 to 128 characters of A-Z a-z 0-9 . _ ~ -")
        return [f.replace("{task}", task_id) for f in self.follow_ups]

    def follow_up_task(self, method: str, path: str) -> str | None:
        """The task id when (method, path) is one of this offer's follow-ups, else None."""
        for f in self.follow_ups:
            params = _route_matches(f, method, path)
            if params is not None:
                return params["task"]
        return None

    def pricing_member(self, now: datetime | None = None) -> dict[str, Any]:
        return {**super().pricing_member(now), "followUps": list(self.follow_ups), "grantTtl": str(self.grant_ttl),
                "refund": self.refund}
