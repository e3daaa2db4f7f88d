"""The buyer engine, framework-neutral: the one buyer every transport wraps.

:class:`Buyer` answers a 402 within policy, mandate and budget, signs, sends the credential once,
verifies the receipt, keeps grants and runs sessions; an :class:`Exchange` carries its requests.
:class:`mpp.aio.PaymentClient` (aiohttp), :mod:`mpp.httpx` and :mod:`mpp.mcp` each supply one.
The decisions themselves are sans-I/O, in :mod:`mpp.buyer`.
"""

from mpp.purchase.agent import AgentIdentity, Approver
from mpp.purchase.client import Buyer, PaidStream
from mpp.purchase.exchange import EventLines, Exchange, PaidResponse, TransportError
from mpp.purchase.sessions import OpenSession, SessionManager, SessionPolicy, SSEEvent

__all__ = ["AgentIdentity", "Approver", "Buyer", "EventLines", "Exchange", "OpenSession", "PaidResponse", "PaidStream",
           "SessionManager", "SessionPolicy", "SSEEvent", "TransportError"]
