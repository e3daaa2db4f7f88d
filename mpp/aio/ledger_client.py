"""Signed requests to a ledger service over HTTP (spec/methods/ledger.md §7), and the owner's side
of it: an account's owner enrols and denies DIDs on its account (LEDGER-SVC-13).

The seller's rail (mpp.aio.rails.HttpLedgerRail) sends its requests with :func:`send_signed` too.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from mpp.protocol.wire import dumps_wire, loads_strict
from mpp.protocol.errors import ParseError
from mpp.protocol.keys import SigningKey
from mpp.ledger.api import LEDGER_ERRORS
from mpp.ledger.core import LedgerError
from mpp.ledger.signing import sign_request

__all__ = ["send_signed", "answer", "split_service_url", "ServiceRefused", "LedgerClient"]


class ServiceRefused(LedgerError):
    """The service refused the request itself (its signature, its signer's rights, its form)."""

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(f"{error}: {detail}" if detail else error)
        self.error = error


def split_service_url(url: str) -> tuple[str, str]:
    """``http(s)://host[:port][/prefix]`` as (origin, prefix); ValueError for anything else."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"ledger URL must be http(s)://host[:port][/prefix], got {url!r}")
    return f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")


async def send_signed(session: aiohttp.ClientSession, *, origin: str, prefix: str, key: SigningKey, ledger_id: str,
                      method: str, path: str, body: dict[str, Any] | None, timeout: float) -> tuple[int, bytes]:
    """Send one request signed with ``key``; the status and the raw body. Network errors propagate."""
    data = b"" if body is None else dumps_wire(body, "ledger service request")
    target = prefix + path
    headers = {"Authorization": sign_request(key, ledger_id=ledger_id, method=method, target=target, body=data),
               "Content-Type": "application/json"}
    async with session.request(method, URL(origin + target, encoded=True), data=data, headers=headers,
                               timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        return resp.status, await resp.read()


def answer(status: int, raw: bytes) -> dict[str, Any]:
    """A 2xx JSON object as it is; a refusal as the ledger error it names (ServiceRefused for the
    service's own); ValueError for an answer the service does not send."""
    try:
        doc = loads_strict(raw, "ledger service answer")  # CORE-CRED-07
    except ParseError:
        doc = None
    if not isinstance(doc, dict):
        raise ValueError(f"HTTP {status} without a JSON object")
    if status >= 400:
        name, detail = str(doc.get("error", "")), str(doc.get("detail", ""))
        error = LEDGER_ERRORS.get(name)
        if error is not None:
            raise error(detail)
        raise ServiceRefused(name or f"HTTP {status}", detail)
    return doc


class LedgerClient:
    """An account owner's calls to a ledger service, each signed with the owner's key.

        async with LedgerClient("http://127.0.0.1:8403", key) as ledger:
            await ledger.keys.allow("acct:buyer", agent_did, "agent")
    """

    def __init__(self, url: str, key: SigningKey, *, timeout: float = 10.0) -> None:
        self.url = url
        self._origin, self._prefix = split_service_url(url)
        self.key = key
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self.ledger_id = ""

    async def __aenter__(self) -> "LedgerClient":
        self._session = aiohttp.ClientSession()
        try:
            async with self._session.get(self._origin + self._prefix + "/v1/info",
                                         timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                self.ledger_id = str(answer(resp.status, await resp.read()).get("ledger") or "")
            if not self.ledger_id:
                raise ValueError(f"{self.url} did not say its ledger id")
        except BaseException:
            await self._session.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def keys(self) -> "LedgerClient":
        """The calls a ledger makes on its ``keys`` (allow, deny, members) are this client's own:
        ``client.keys.allow(...)`` works as on a ledger."""
        return self

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self._session is not None, "use LedgerClient in `async with`"
        status, raw = await send_signed(self._session, origin=self._origin, prefix=self._prefix, key=self.key,
                                        ledger_id=self.ledger_id, method=method, path=path, body=body, timeout=self.timeout)
        return answer(status, raw)

    async def create_account(self, account_id: str, currency: str) -> dict[str, Any]:
        """An account owned by this client's key (LEDGER-SVC-14: where the service allows it)."""
        return (await self._call("POST", "/v1/accounts", {"id": account_id, "currency": currency}))["account"]

    async def members(self, account_id: str) -> dict[str, str]:
        """Role by DID (``owner``, ``agent`` or ``denied``) of everyone enrolled on ``account_id``. Only an
        owner may list them (LEDGER-SVC-13): anyone else gets ServiceRefused (``Forbidden``), the same as for
        an account that does not exist. Network errors propagate."""
        doc = await self._call("GET", f"/v1/accounts/{quote(account_id, safe='')}/members")
        return {str(k): str(v) for k, v in doc["members"].items()}

    async def allow(self, account_id: str, did: str, role: str) -> None:
        """Enrol ``did`` on ``account_id`` as ``owner`` or mandate-bound ``agent``, replacing whatever role
        it had (LEDGER-ACCT-02); signed with this client's key, which must be an owner of the account
        (LEDGER-SVC-13). A refusal is raised as the ledger error it names, else ServiceRefused (``Forbidden``
        for a key that is not an owner, ``InvalidRequest`` for a change that would leave the account without
        an owner)."""
        await self._call("POST", f"/v1/accounts/{quote(account_id, safe='')}/members", {"did": did, "role": role})

    async def deny(self, account_id: str, did: str) -> None:
        """``did`` spends nothing from ``account_id`` from now on, directly or in any mandate chain (role
        ``denied``, LEDGER-ACCT-04); refused as :meth:`allow` is."""
        await self.allow(account_id, did, "denied")
