"""What an ``evm`` seller does after the request: refunds, and the transactions it was left unsure of.

A refund is an ERC-20 ``transfer(payer, amount)`` from the seller's key (the recipient of the
charge), at most one per settlement reference: the signed refund transaction is recorded
(mpp.stores.evm) before it is sent, so a second refund of the same settlement, in this process or
another, re-sends that same transaction (a node takes it once) and signs a new one only when the
recorded one can no longer be mined (its nonce was spent by another transaction, and no receipt
of it exists).

``reconcile`` settles what the seller was unsure of:

- a pending charge (the buyer was answered 503 ``settlement-pending``) that was mined and moved the
  amount is refunded: the buyer never got the resource. One that reverted, or can no longer be
  mined, is dropped: nothing moved. For an EIP-3009 authorization "can no longer" means the
  authorization is unused and its ``validBefore`` has passed on chain, since anyone holding it may
  submit it until then; used by any transaction, it is refunded. A Permit2 permit can be submitted
  by its spender only, the seller: one whose transaction is not mined is dropped once its
  ``deadline`` has passed on chain, or once its nonce is used (by another permit of the payer's,
  which moved nothing to the seller). A payer's own transaction that the node forgot is dropped
  once its nonce is spent, or after ``pending_ttl``.
- a refund sent whose receipt was not seen is looked at again: mined, it is done; mined and
  reverted, it is marked failed and logged for the operator; unknown to the node, it is sent
  again, or replaced once its nonce is spent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from mpp.aio.evm_chain import (SellerWallet, SendRefused, SendUnanswered, Sent, authorization_used, permit2_nonce_used, succeeded,
                                transfers_in, wait_for_receipt)
from mpp.aio.evm_rpc import EvmRpc, EvmRpcError, EvmRpcUnavailable, call_data
from mpp.protocol.models import parse_rfc3339
from mpp.stores.evm import REFUND_DONE, REFUND_FAILED, REFUND_SENT, EvmStore, PendingTx, RefundRecord
from mpp.engine.background import stop_task

__all__ = ["AUTHORIZATION", "PERMIT2", "TRANSACTION", "REFUND", "EvmAftercare"]

log = logging.getLogger("mpp.rails")

AUTHORIZATION, TRANSACTION = "authorization", "transaction"
"""Kinds of pending charge: the seller's ``transferWithAuthorization``, a payer's own transaction."""
PERMIT2 = "permit2"
"""A kind of pending charge: the seller's ``permitWitnessTransferFrom`` of a payer's permit."""
REFUND = "refund"
"""A kind of pending entry: a charge that confirmed and is owed back, whose refund could not be begun."""


class _Superseded(Exception):
    """Another refund of the same reference was recorded first: follow that one."""

    def __init__(self, record: RefundRecord) -> None:
        super().__init__(record.tx_hash)
        self.record = record


@dataclass
class EvmAftercare:
    """Refunds and reconciliation for one ``evm`` rail: its node, wallet, store and recipient."""

    rpc: EvmRpc
    wallet: SellerWallet
    store: EvmStore
    recipient: str
    receipt_timeout: float
    interval: float = 5.0
    pending_ttl: float = 86400.0

    def __post_init__(self) -> None:
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Settle what an earlier run left (logged), and keep reconciling every ``interval`` seconds."""
        left = await self.reconcile()
        if left:
            log.warning("evm rail %s: %d transaction(s) left by an earlier run are still unsettled", self.wallet.address, left)
        if self._task is None and self.interval > 0:
            self._task = asyncio.create_task(self._run_forever())

    async def stop(self) -> None:
        """Stop the background round and close the store (what is pending stays in it for the next start)."""
        await stop_task(self._task)
        self._task = None
        await self.store.close()

    async def _run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.reconcile()
            except Exception:  # noqa: BLE001 - the loop must outlive one bad round
                log.exception("evm reconciliation failed; retrying")

    # -- refunds ---------------------------------------------------------------------------

    async def refund(self, reference: str, payer: str, token: str, amount: int, *, challenge_id: str = "") -> RefundRecord | None:
        """Give ``amount`` of ``token`` back to ``payer`` for the settlement ``reference``, at most once;
        waits up to the receipt timeout for the refund to be mined. The refund on record (None if it
        could not be begun: then it is put in the pending journal, and ``reconcile`` makes it). Never
        raises for a node that does not answer."""
        record = await self.store.refund_of(reference)
        if record is None:
            try:
                record = await self._send_refund(RefundRecord(reference, payer, token, amount, "", 0, ""), None)
            except (EvmRpcUnavailable, EvmRpcError) as exc:
                log.warning("refund of %s could not be sent now (%s): owed, reconcile sends it", reference, exc)
                await self.store.add_pending(PendingTx(reference, challenge_id, {"kind": REFUND, "payer": payer,
                                                                                "token": token, "amount": str(amount)}))
                return None
        if record.state == REFUND_SENT:
            try:
                record = await self._follow(record, wait=True)
            except (EvmRpcUnavailable, EvmRpcError, SendUnanswered) as exc:
                log.warning("refund of %s sent, not confirmed yet (%s): reconcile follows it", reference, exc)
        return record

    async def _send_refund(self, record: RefundRecord, replacing: str | None) -> RefundRecord:
        """Sign the refund and record it before sending (begun, or ``replacing`` the recorded transaction
        of that hash); the refund on record, which is another process's when it recorded one first."""
        async def before(sent: Sent) -> None:
            mine = RefundRecord(record.reference, record.payer, record.token, record.amount, sent.tx_hash, sent.nonce, sent.raw)
            if replacing is None:
                on_record = await self.store.begin_refund(mine)
                if on_record.tx_hash != sent.tx_hash:
                    raise _Superseded(on_record)
            elif not await self.store.update_refund(record.reference, replacing, tx_hash=sent.tx_hash, nonce=sent.nonce,
                                                    raw=sent.raw):
                raise _Superseded(await self.store.refund_of(record.reference) or record)
            holder.append(mine)

        holder: list[RefundRecord] = []
        data = call_data("transfer(address,uint256)", record.payer, record.amount)
        try:
            await self.wallet.send(record.token, data, before=before, retry=False)
        except _Superseded as exc:
            return exc.record
        except SendUnanswered:
            pass  # recorded: the follow-up finds out whether the node took it
        except SendRefused as exc:  # recorded too: reconcile sends it again, or a new one once its nonce is spent
            log.error("the node refused the refund of %s (%s): retried by reconcile", record.reference, exc.error.message)
        log.warning("refund of %s: %s base units of %s to %s in transaction %s", record.reference, record.amount,
                    record.token, record.payer, holder[0].tx_hash)
        return holder[0]

    async def _follow(self, record: RefundRecord, *, wait: bool) -> RefundRecord:
        """The refund's state now: mined (done, or failed), or still sent: re-sent if the node forgot it,
        replaced once its nonce is spent."""
        receipt = await (wait_for_receipt(self.rpc, record.tx_hash, self.receipt_timeout) if wait
                         else self.rpc.transaction_receipt(record.tx_hash))
        if receipt is not None:
            state = REFUND_DONE if succeeded(receipt) else REFUND_FAILED
            await self.store.update_refund(record.reference, record.tx_hash, state=state)
            if state == REFUND_FAILED:
                log.error("refund of %s reverted on chain (transaction %s): the seller's %s balance may be short; "
                          "refund %s base units to %s by hand", record.reference, record.tx_hash, record.token,
                          record.amount, record.payer)
            return replace(record, state=state)
        if await self.rpc.transaction(record.tx_hash) is not None:
            return record  # in the node's pool: wait
        if await self.wallet.nonce_spent(self.wallet.address, record.nonce):
            return await self._send_refund(record, record.tx_hash)  # can never be mined: a new one
        try:
            await self.rpc.send_raw_transaction(bytes.fromhex(record.raw[2:]))  # forgotten by the node: the same again
        except EvmRpcError as exc:
            log.warning("re-sending refund %s: %s", record.tx_hash, exc.message)
        return record

    # -- reconciliation ----------------------------------------------------------------------

    async def reconcile(self) -> int:
        """One round: settle every pending transaction and follow every open refund the node now
        answers for; how many are still unsettled. A node that does not answer ends the round."""
        try:
            for pending in await self.store.pending():
                try:
                    await self._settle_pending(pending)
                except EvmRpcError as exc:  # this one refused (a reverting estimate...): the others still go
                    log.error("evm reconciliation of %s: the node refused %s", pending.tx_hash, exc)
            for record in await self.store.open_refunds():
                try:
                    await self._follow(record, wait=False)
                except EvmRpcError as exc:
                    log.error("evm reconciliation of refund %s: the node refused %s", record.tx_hash, exc)
        except (EvmRpcUnavailable, SendUnanswered) as exc:
            log.warning("evm reconciliation stopped: the node did not answer (%s)", exc)
        return len(await self.store.pending()) + len(await self.store.open_refunds())

    async def _settle_pending(self, pending: PendingTx) -> None:
        detail = pending.detail
        kind, payer, token, amount = detail.get("kind"), detail["payer"], detail["token"], int(detail["amount"])
        receipt = await self.rpc.transaction_receipt(pending.tx_hash)
        if receipt is not None:
            moved = succeeded(receipt) and any(t.token == token and t.sender == payer and t.to == self.recipient
                                               and t.value == amount for t in transfers_in(receipt))
            if kind == REFUND and not moved:
                log.error("owed refund %s: its charge did not move the amount after all; dropped", pending.tx_hash)
            elif moved or (kind == AUTHORIZATION and await self._authorization_used(detail)):
                await self._refund_pending(pending, payer, token, amount)
                return
            else:
                log.warning("pending charge %s (challenge %s) reverted: nothing moved; dropped", pending.tx_hash,
                            pending.challenge_id)
            await self.store.remove_pending(pending.tx_hash)
            return
        if kind == REFUND or await self.rpc.transaction(pending.tx_hash) is not None:
            return  # waiting in the node's pool (or a refund owed for a charge not yet seen mined)
        if kind == PERMIT2:  # Permit2 takes a permit while block.timestamp <= deadline
            if await self._authorization_used(detail) or await self.rpc.block_timestamp() > int(detail["validBefore"]):
                log.warning("pending charge %s (challenge %s): its permit can no longer be used by it; dropped",
                            pending.tx_hash, pending.challenge_id)
                await self.store.remove_pending(pending.tx_hash)
            return
        if kind == AUTHORIZATION:
            if await self._authorization_used(detail):  # by another transaction than ours
                await self._refund_pending(pending, payer, token, amount)
            elif await self.rpc.block_timestamp() >= int(detail["validBefore"]):
                log.warning("pending charge %s (challenge %s): its authorization expired unused; dropped", pending.tx_hash,
                            pending.challenge_id)
                await self.store.remove_pending(pending.tx_hash)
            return
        spent = await self.wallet.nonce_spent(detail["sender"], int(detail["nonce"]))
        if spent or time.time() - parse_rfc3339(pending.since).timestamp() > self.pending_ttl:
            log.warning("pending charge %s (challenge %s) can no longer be mined (%s); dropped", pending.tx_hash,
                        pending.challenge_id, "its nonce is spent" if spent else "forgotten by the node for too long")
            await self.store.remove_pending(pending.tx_hash)

    async def _authorization_used(self, detail: dict[str, Any]) -> bool:
        """Whether the EIP-3009 authorization, or the permit (``permit2`` in ``detail``), is used on chain."""
        if detail.get("kind") == PERMIT2:
            return await permit2_nonce_used(self.rpc, detail["permit2"], detail["payer"], int(detail["authNonce"], 16))
        return await authorization_used(self.rpc, detail["token"], detail["payer"], bytes.fromhex(detail["authNonce"][2:]))

    async def _refund_pending(self, pending: PendingTx, payer: str, token: str, amount: int) -> None:
        """A charge that moved the amount although the buyer was not served: refund it, then forget it."""
        log.warning("pending charge %s (challenge %s) moved %s base units: refunding %s", pending.tx_hash,
                    pending.challenge_id, amount, payer)
        if await self.refund(pending.tx_hash, payer, token, amount, challenge_id=pending.challenge_id) is not None:
            await self.store.remove_pending(pending.tx_hash)
