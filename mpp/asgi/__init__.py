"""The ASGI adapter: a seller for Starlette and FastAPI applications (see :mod:`mpp.asgi.seller`)."""

from mpp.asgi.seller import (
    JWKS_PATH,
    OPENAPI_PATH,
    SESSION_PATH,
    PaymentMiddleware,
    Seller,
    grant_of,
    meter_of,
    payment_of,
    start_task,
    task_of,
)
from mpp.engine.embedded_rail import EmbeddedLedgerRail
from mpp.engine.meters import StreamStopped
from mpp.engine.purchase import Payment, TaskControl

__all__ = ["Seller", "PaymentMiddleware", "EmbeddedLedgerRail", "Payment", "TaskControl", "StreamStopped", "payment_of", "meter_of",
           "start_task", "task_of", "grant_of", "JWKS_PATH", "OPENAPI_PATH", "SESSION_PATH"]
