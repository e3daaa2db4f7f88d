"""Paying for HTTP through httpx (or httpx2): a transport that wraps any httpx transport and pays
402s with the buyer engine (:mod:`mpp.purchase`) — the same buyer as :class:`mpp.aio.PaymentClient`.
Agent frameworks that take an ``httpx.AsyncClient`` (pydantic-ai, openai-agents) pay through it.
See :mod:`mpp.httpx.transport`."""

from mpp.httpx.exchange import HttpxExchange, SyncHttpxExchange
from mpp.httpx.transport import FIRST_URL_EXTENSION, PAYMENT_EXTENSION, AsyncPaymentTransport, PaymentTransport, payment_of

__all__ = ["AsyncPaymentTransport", "PaymentTransport", "payment_of", "HttpxExchange", "SyncHttpxExchange",
           "PAYMENT_EXTENSION", "FIRST_URL_EXTENSION"]
