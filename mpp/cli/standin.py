"""The stand-in service `mpp seller serve` sells, written once for both adapters.

Each adapter's handlers (mpp.cli.serve for aiohttp, mpp.cli.serve_asgi for ASGI) read the
request their framework's way and answer with what these functions decide: the echo of a paid
request, the units a metered request uses, the stream of a streaming one, a task started or
reported.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from mpp.engine.meters import Meter, StreamStopped
from mpp.engine.purchase import Payment, TaskControl

__all__ = ["echo", "listed_result", "query_int", "stream", "metered_doc", "task_started", "follow_up"]


def echo(resource: str, configured: Any, body: bytes, payment: Payment | None) -> dict[str, Any]:
    """A priced route's answer: its configured response, or a digest of the body it was sent, and
    what paid for it."""
    if configured is not None:
        result = configured
    else:
        text = body.decode("utf-8", errors="replace")
        result = {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(), "summary": text[:80]}
    paid = None
    if payment is not None:
        paid = {"challengeId": payment.verified.challenge_id, "amount": payment.verified.request.amount,
                "currency": payment.verified.request.currency, "payer": payment.payer}
    return {"resource": resource, "result": result, "paid": paid}


def listed_result(route: Any, body: bytes) -> dict[str, Any] | None:
    """What a price-list route answers (a price list names no response): for a request without a
    body, the route and its description, so a paid GET shows what was bought rather than the
    digest of an empty body; with a body, None (the digest of what was sent, as :func:`echo`)."""
    if body:
        return None
    return {"route": route.route, "description": route.description or "",
            "note": "the stand-in service of `mpp seller serve`: put your own service behind this route"}


def query_int(query: Mapping[str, str], name: str, default: int, top: int) -> int:
    """``?name=N`` as an integer from 0 to ``top``; ValueError (a 400 for the buyer) otherwise."""
    text = query.get(name, str(default))
    if not text.isdigit() or not 0 <= int(text) <= top:
        raise ValueError(f"{name} must be an integer from 0 to {top}")
    return int(text)


async def stream(meter: Meter, request: Any, chunks: int, units: int) -> Any:
    """Send ``chunks`` events of ``units`` units each; end cleanly when the payment runs out."""
    await meter.start(request)
    try:
        for i in range(chunks):
            await meter.send(json.dumps({"chunk": i, "units": units}), units=units)
    except StreamStopped:  # the payment ran out and the buyer sent no more: end the stream cleanly
        return await meter.stop()
    return await meter.finish()


def metered_doc(resource: str, configured: Any, units: int, unit: str) -> dict[str, Any]:
    """A metered request's answer once its units are reported."""
    return {"resource": resource, "result": configured if configured is not None else {"units": units, "unit": unit}}


async def task_started(control: TaskControl, fail: bool) -> dict[str, Any]:
    """A stand-in task: it succeeds at once, or fails (``?fail=1``) and the quoted refund rule applies."""
    if fail:
        await control.fail("the stand-in task was asked to fail")
    else:
        await control.succeed()
    record = await control.record()
    return {"task": control.task_id, "state": record.state if record else "running"}


async def follow_up(task: TaskControl, method: str, path: str) -> dict[str, Any] | None:
    """A follow-up's answer: the task's state, or its result (delivering it) at ``.../result``;
    None when the task is unknown."""
    record = await task.record()
    if record is None:
        return None
    if method == "GET" and path.endswith("/result") and record.state in ("succeeded", "delivered"):
        await task.delivered()
        return {"task": task.task_id, "result": {"done": True}}
    doc = {"task": task.task_id, "state": record.state}
    if record.state == "refunded":
        doc["refund"] = record.reference  # the charge refunded (PRICE-TASK-04)
    return doc
