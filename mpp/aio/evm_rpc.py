"""A small Ethereum JSON-RPC client over aiohttp: what the ``evm`` rail asks of a node.

    rpc = EvmRpc("http://127.0.0.1:8545")
    await rpc.chain_id()                                    # 31337
    await rpc.read(token, "balanceOf(address)", [payer], ["uint256"])
    tx_hash = await rpc.send_raw_transaction(raw)           # raw: a transaction signed with eth-account
    receipt = await rpc.transaction_receipt(tx_hash)        # None until it is mined

Two failures, kept apart because they mean opposite things to a seller:

- :class:`EvmRpcError`: the node answered, with a JSON-RPC error (a revert found by ``eth_call`` or
  ``eth_estimateGas``, a transaction the node refuses). The node's ``message`` and its ``data`` (the
  revert data, when there is some) are kept; :attr:`EvmRpcError.reason` decodes a Solidity
  ``Error(string)``.
- :class:`EvmRpcUnavailable`: no usable answer (no connection, a timeout, an HTTP error, a body
  that is not JSON-RPC). After a transaction was sent, this is "outcome unknown".

ABI encoding and decoding are eth-abi's, Keccak is eth-utils'; nothing here signs (the rail signs
with eth-account).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any, Sequence

import aiohttp
import eth_abi
from eth_utils import keccak, to_checksum_address

__all__ = ["EvmRpc", "EvmRpcError", "EvmRpcUnavailable", "call_data", "quantity"]

_MAX_ANSWER = 8 * 1024 * 1024  # a receipt with many logs is large; anything larger is not an answer we use
_ERROR_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)


class EvmRpcError(Exception):
    """The node answered a call with a JSON-RPC error: ``method``, ``code``, the node's ``message``
    and its ``data`` (revert data for a reverted call, as the node gave it)."""

    def __init__(self, method: str, code: Any, message: str, data: Any = None) -> None:
        super().__init__(f"{method}: {message} (JSON-RPC error {code})")
        self.method, self.code, self.message, self.data = method, code, message, data

    @property
    def reason(self) -> str:
        """The revert reason: a Solidity ``Error(string)`` in ``data`` decoded, else the node's message."""
        data = self.data
        if isinstance(data, dict):  # some nodes nest it: {"data": "0x..."}
            data = data.get("data")
        if isinstance(data, str) and data.startswith("0x"):
            try:
                raw = bytes.fromhex(data[2:])
                if raw[:4] == _ERROR_SELECTOR:
                    return str(eth_abi.decode(["string"], raw[4:])[0])
            except Exception:  # noqa: BLE001 - undecodable revert data: the message says what the node said
                pass
        return self.message


class EvmRpcUnavailable(Exception):
    """No usable answer from the node (connection, timeout, HTTP status, malformed body)."""


def call_data(signature: str, *args: Any) -> str:
    """ABI-encoded call data, ``0x``-hex: the 4-byte selector of ``signature`` (e.g.
    ``"transfer(address,uint256)"``; flat types only) and the arguments encoded as its types."""
    inner = signature[signature.index("(") + 1:signature.rindex(")")]
    types = [t.strip() for t in inner.split(",")] if inner.strip() else []
    return "0x" + (keccak(text=signature)[:4] + eth_abi.encode(types, list(args))).hex()


def quantity(value: Any) -> int:
    """A JSON-RPC quantity (``0x``-hex) as an int; EvmRpcUnavailable for anything else (a node whose
    answer is not one gave no usable answer)."""
    try:
        if isinstance(value, str) and value.startswith("0x"):
            return int(value, 16)
    except ValueError:
        pass
    raise EvmRpcUnavailable(f"the node answered {str(value)[:80]!r} where a quantity (0x-hex) belongs")


class EvmRpc:
    """JSON-RPC to one node at ``url`` over an aiohttp session (its own unless ``session`` is given).
    A call without a usable answer is sent again up to ``attempts`` times in all (every call here is
    safe to repeat: reads, and raw transactions, which a node takes at most once); ``timeout`` bounds
    each attempt, in seconds."""

    def __init__(self, url: str, *, session: aiohttp.ClientSession | None = None, timeout: float = 10.0,
                 attempts: int = 2, backoff: float = 0.05) -> None:
        self.url = url
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self._session = session
        self._own = session is None
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"EvmRpc({self.url!r})"

    async def close(self) -> None:
        """Close the HTTP session if it is the client's own (a later call opens a new one)."""
        if self._own and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def call(self, method: str, *params: Any) -> Any:
        """One JSON-RPC call's ``result``; EvmRpcError for an error answer, EvmRpcUnavailable for none."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        body = json.dumps({"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)})
        last = "no attempt"
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                async with self._session.post(self.url, data=body, headers={"Content-Type": "application/json"},
                                              timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                    raw = await resp.content.read(_MAX_ANSWER + 1)
                    status = resp.status
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            answer = _answer(raw)
            if answer is None or (status >= 500 and "error" not in answer):
                last = f"HTTP {status}, no JSON-RPC answer"
                continue
            error = answer.get("error")
            if error is not None:
                error = error if isinstance(error, dict) else {"message": str(error)}
                raise EvmRpcError(method, error.get("code"), str(error.get("message", "")), error.get("data"))
            if "result" not in answer:
                last = f"HTTP {status}, an answer without result"
                continue
            return answer["result"]
        raise EvmRpcUnavailable(f"{method}: no usable answer from {self.url} after {self.attempts} attempt(s): {last}")

    # -- reads ------------------------------------------------------------------------

    async def chain_id(self) -> int:
        """``eth_chainId``."""
        return quantity(await self.call("eth_chainId"))

    async def eth_call(self, to: str, data: str, *, sender: str | None = None, block: str = "latest") -> bytes:
        """``eth_call`` of ``data`` on ``to`` (from ``sender`` if given): the returned bytes. A revert is an
        EvmRpcError (its :attr:`~EvmRpcError.reason` says why)."""
        call: dict[str, Any] = {"to": to, "data": data}
        if sender is not None:
            call["from"] = sender
        result = await self.call("eth_call", call, block)
        return _hex_bytes(result)

    async def read(self, to: str, signature: str, args: Sequence[Any], returns: Sequence[str]) -> Any:
        """``eth_call`` of ``signature`` with ``args`` on ``to``, decoded as ``returns`` (one type: that
        value, several: a tuple; addresses checksummed). EvmRpcUnavailable for an answer that does not
        decode (a contract without that function answers ``0x``)."""
        raw = await self.eth_call(to, call_data(signature, *args))
        try:
            values = [to_checksum_address(v) if t == "address" else v for t, v in zip(returns, eth_abi.decode(list(returns), raw))]
        except Exception as exc:  # noqa: BLE001 - eth-abi's decoding errors
            raise EvmRpcUnavailable(f"{signature} on {to} answered {len(raw)} bytes that do not decode as {list(returns)}") from exc
        return values[0] if len(values) == 1 else tuple(values)

    async def estimate_gas(self, tx: dict[str, Any]) -> int:
        """``eth_estimateGas`` of ``tx`` (``from``, ``to``, ``data``...); a revert is an EvmRpcError."""
        return quantity(await self.call("eth_estimateGas", tx))

    async def transaction_count(self, address: str, block: str = "pending") -> int:
        """``eth_getTransactionCount``: the next nonce of ``address`` (``pending``: counting the mempool)."""
        return quantity(await self.call("eth_getTransactionCount", address, block))

    async def balance(self, address: str) -> int:
        """``eth_getBalance`` at the latest block, in wei."""
        return quantity(await self.call("eth_getBalance", address, "latest"))

    async def latest_block(self) -> dict[str, Any]:
        """``eth_getBlockByNumber("latest")`` without its transactions."""
        block = await self.call("eth_getBlockByNumber", "latest", False)
        if not isinstance(block, dict):
            raise EvmRpcUnavailable("eth_getBlockByNumber: no latest block")
        return block

    async def block_timestamp(self, number: str = "latest") -> int:
        """The timestamp (seconds) of block ``number`` (a quantity, or ``latest``)."""
        block = await self.call("eth_getBlockByNumber", number, False)
        if not isinstance(block, dict):
            raise EvmRpcUnavailable(f"eth_getBlockByNumber: no block {number}")
        return quantity(block.get("timestamp"))

    async def fees(self) -> tuple[int, int]:
        """(``maxFeePerGas``, ``maxPriorityFeePerGas``) for an EIP-1559 transaction now: twice the latest
        base fee plus the tip the node suggests (``eth_maxPriorityFeePerGas``; else ``eth_gasPrice``
        less the base fee), so the transaction stays includable while the base fee rises."""
        base = quantity((await self.latest_block()).get("baseFeePerGas", "0x0"))
        try:
            tip = quantity(await self.call("eth_maxPriorityFeePerGas"))
        except EvmRpcError:  # a node without the method
            tip = max(quantity(await self.call("eth_gasPrice")) - base, 0)
        return 2 * base + tip, tip

    async def transaction(self, tx_hash: str) -> dict[str, Any] | None:
        """``eth_getTransactionByHash``: the transaction (mined or waiting in the node's pool), or None
        when the node does not know it."""
        found = await self.call("eth_getTransactionByHash", tx_hash)
        return found if isinstance(found, dict) else None

    async def transaction_receipt(self, tx_hash: str) -> dict[str, Any] | None:
        """``eth_getTransactionReceipt``: the receipt once mined, else None."""
        found = await self.call("eth_getTransactionReceipt", tx_hash)
        return found if isinstance(found, dict) else None

    # -- writes -----------------------------------------------------------------------

    async def send_raw_transaction(self, raw: bytes) -> str:
        """``eth_sendRawTransaction``: the transaction's hash. A node that already holds it (a resend
        after an answer was lost) counts as success; any other refusal is an EvmRpcError."""
        tx_hash = "0x" + keccak(raw).hex()
        try:
            answered = await self.call("eth_sendRawTransaction", "0x" + raw.hex())
        except EvmRpcError as exc:
            if "already known" in exc.message.lower() or "known transaction" in exc.message.lower():
                return tx_hash
            raise
        if not isinstance(answered, str) or answered.lower() != tx_hash:
            raise EvmRpcUnavailable(f"eth_sendRawTransaction answered {str(answered)[:80]!r}, not the hash {tx_hash}")
        return tx_hash


def _answer(raw: bytes) -> dict[str, Any] | None:
    if len(raw) > _MAX_ANSWER:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _hex_bytes(value: Any) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x") or len(value) % 2:
        raise EvmRpcUnavailable(f"expected 0x-hex bytes, the node answered {str(value)[:80]!r}")
    try:
        return bytes.fromhex(value[2:])
    except ValueError as exc:
        raise EvmRpcUnavailable(f"expected 0x-hex bytes, the node answered {value[:80]!r}") from exc
