"""The ``evm`` seller's side of the chain: its own transactions (one nonce at a time), receipts
waited for, and the token's ``Transfer`` logs and state read back.

:class:`SellerWallet` sends the seller's transactions (``transferWithAuthorization`` for a payer's
EIP-3009 authorization, ``transfer`` for a refund): EIP-1559, signed with eth-account, gas
estimated by the node. Getting the next nonce, signing and sending happen under one
:class:`asyncio.Lock` per wallet, so concurrent settlements never sign two transactions with one
nonce; the nonce is the larger of the node's ``pending`` count and the one after the last this
wallet sent (a node behind a load balancer may not count it yet). One key per seller process:
two processes sending from one key can still collide, and the loser is refused by the node
("nonce too low") and tried once more with a fresh nonce.

Before sending, the wallet hands the signed transaction to the caller (``before``), so that it is
written down (the pending journal, the refund record) while its outcome is still sure: nothing
sent yet. A send without an answer is :class:`SendUnanswered`: the transaction may be in the
node's pool, and only the chain can tell later.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from eth_utils import keccak, to_checksum_address

from mpp.aio.evm_rpc import EvmRpc, EvmRpcError, EvmRpcUnavailable, quantity
from mpp.methods.evm.charge import TRANSFER_EVENT
from mpp.methods.evm.permit2 import nonce_position

__all__ = ["Sent", "SendUnanswered", "SendRefused", "SellerWallet", "TokenTransfer", "transfers_in", "succeeded", "wait_for_receipt",
           "token_balance", "token_allowance", "authorization_used", "permit2_nonce_used"]

_NONCE_TROUBLE = ("nonce too low", "nonce is too low", "replacement transaction underpriced", "already used",
                  "nonce has already been used")


@dataclass(frozen=True)
class Sent:
    """A transaction the wallet signed: its hash, its nonce and the signed bytes (``0x``-hex)."""

    tx_hash: str
    nonce: int
    raw: str


class SendUnanswered(Exception):
    """``eth_sendRawTransaction`` got no usable answer: ``sent`` may be in the node's pool or not."""

    def __init__(self, sent: Sent, cause: BaseException) -> None:
        super().__init__(f"no answer to the send of {sent.tx_hash}: {cause}")
        self.sent = sent


class SendRefused(Exception):
    """The node refused to take ``sent`` (``error``, its EvmRpcError): nothing was sent. Not the
    payer's doing: the seller's fees, nonce or ether."""

    def __init__(self, sent: Sent, error: EvmRpcError) -> None:
        super().__init__(f"the node refused {sent.tx_hash}: {error.message}")
        self.sent, self.error = sent, error


class SellerWallet:
    """The seller's key on one chain: signs and sends its transactions, one nonce at a time."""

    def __init__(self, rpc: EvmRpc, account: Any, chain_id: int, *, gas_headroom: float = 1.25) -> None:
        self.rpc = rpc
        self.account = account
        self.chain_id = chain_id
        self.gas_headroom = gas_headroom
        self.address = to_checksum_address(account.address)
        self._lock = asyncio.Lock()
        self._next = 0  # the nonce after the last transaction this wallet sent; 0 once unsure

    def __repr__(self) -> str:
        return f"SellerWallet({self.address}, chain {self.chain_id})"

    async def send(self, to: str, data: str, *, before: Callable[[Sent], Awaitable[None]],
                   refused: Callable[[Sent], Awaitable[None]] | None = None, retry: bool = True) -> Sent:
        """Send ``data`` to ``to`` from the seller's key: gas estimated (a revert is an EvmRpcError,
        nothing signed), then, under the wallet's lock, nonce, signature, ``before(sent)``, send.
        A node that refuses the transaction gets ``refused(sent)`` called, and with ``retry`` one more
        try on a fresh nonce if the refusal was about the nonce; then :class:`SendRefused`. No answer to
        the send: :class:`SendUnanswered`. An exception ``before`` raises stops the send (nothing sent)."""
        gas = await self.rpc.estimate_gas({"from": self.address, "to": to, "data": data})
        max_fee, tip = await self.rpc.fees()
        for attempt in range(2 if retry else 1):
            async with self._lock:
                nonce = max(await self.rpc.transaction_count(self.address, "pending"), self._next)
                signed = self.account.sign_transaction({
                    "type": 2, "chainId": self.chain_id, "nonce": nonce, "to": to, "data": data, "value": 0,
                    "gas": int(gas * self.gas_headroom), "maxFeePerGas": max_fee, "maxPriorityFeePerGas": tip})
                raw = bytes(signed.raw_transaction)
                sent = Sent("0x" + keccak(raw).hex(), nonce, "0x" + raw.hex())
                await before(sent)
                try:
                    await self.rpc.send_raw_transaction(raw)
                except EvmRpcError as exc:
                    self._next = 0
                    if refused is not None:
                        await refused(sent)
                    if attempt == 0 and retry and any(t in exc.message.lower() for t in _NONCE_TROUBLE):
                        continue
                    raise SendRefused(sent, exc) from exc
                except EvmRpcUnavailable as exc:
                    self._next = 0  # accepted or not: the node's pending count says which next time
                    raise SendUnanswered(sent, exc) from exc
                self._next = nonce + 1
                return sent
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def gas_cover(self, gas: int) -> tuple[int, int]:
        """(the ether the seller holds, what ``gas`` costs at today's ``maxFeePerGas``), in wei."""
        max_fee, _ = await self.rpc.fees()
        return await self.rpc.balance(self.address), gas * max_fee

    async def nonce_spent(self, address: str, nonce: int) -> bool:
        """Whether ``address`` has a transaction with ``nonce`` mined (any, not necessarily the one we
        know): a transaction of that nonce not mined by now never will be."""
        return await self.rpc.transaction_count(address, "latest") > nonce


@dataclass(frozen=True)
class TokenTransfer:
    """An ERC-20 ``Transfer`` log: the ``token`` that emitted it, ``sender``, ``to`` (EIP-55) and ``value``."""

    token: str
    sender: str
    to: str
    value: int


def transfers_in(receipt: dict[str, Any]) -> list[TokenTransfer]:
    """Every well-formed ERC-20 ``Transfer`` log of ``receipt`` (three topics, 32 bytes of data), in order."""
    out = []
    for entry in receipt.get("logs") or ():
        try:
            topics = entry["topics"]
            if len(topics) != 3 or str(topics[0]).lower() != TRANSFER_EVENT or len(entry["data"]) != 66:
                continue
            out.append(TokenTransfer(to_checksum_address(entry["address"]), to_checksum_address("0x" + topics[1][-40:]),
                                     to_checksum_address("0x" + topics[2][-40:]), int(entry["data"], 16)))
        except (KeyError, TypeError, ValueError):
            continue  # not a log we can read: not the transfer we look for
    return out


def succeeded(receipt: dict[str, Any]) -> bool:
    """Whether the receipt says the transaction succeeded (``status`` ``0x1``)."""
    try:
        return quantity(receipt.get("status")) == 1
    except EvmRpcUnavailable:
        return False


async def wait_for_receipt(rpc: EvmRpc, tx_hash: str, timeout: float, *, poll: float = 0.02) -> dict[str, Any] | None:
    """The receipt of ``tx_hash`` once mined, polling for at most ``timeout`` seconds (the interval
    grows from ``poll`` to half a second); None if it is not mined by then. A node that does not
    answer a poll is asked again until the time is up, and a poll is cut short at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = poll
    while True:
        try:  # a node that hangs does not stretch the wait past the deadline
            receipt = await asyncio.wait_for(rpc.transaction_receipt(tx_hash), max(deadline - loop.time(), poll))
        except (EvmRpcUnavailable, EvmRpcError, asyncio.TimeoutError):
            receipt = None
        if receipt is not None:
            return receipt
        left = deadline - loop.time()
        if left <= 0:
            return None
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 1.5, 0.5)


async def token_balance(rpc: EvmRpc, token: str, holder: str) -> int:
    """``balanceOf(holder)`` on ``token``, in base units."""
    return int(await rpc.read(token, "balanceOf(address)", [holder], ["uint256"]))


async def token_allowance(rpc: EvmRpc, token: str, owner: str, spender: str) -> int:
    """``allowance(owner, spender)`` on ``token``, in base units."""
    return int(await rpc.read(token, "allowance(address,address)", [owner, spender], ["uint256"]))


async def permit2_nonce_used(rpc: EvmRpc, permit2: str, owner: str, nonce: int) -> bool:
    """Whether ``owner``'s unordered Permit2 ``nonce`` is used (its bit in ``nonceBitmap(owner, word)``)."""
    word, bit = nonce_position(nonce)
    return bool(int(await rpc.read(permit2, "nonceBitmap(address,uint256)", [owner, word], ["uint256"])) >> bit & 1)


async def authorization_used(rpc: EvmRpc, token: str, authorizer: str, nonce: bytes) -> bool:
    """EIP-3009 ``authorizationState(authorizer, nonce)``: the authorization was used (or canceled)."""
    return bool(await rpc.read(token, "authorizationState(address,bytes32)", [authorizer, nonce], ["bool"]))
