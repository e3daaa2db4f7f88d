"""The ``evm`` method's rail: a seller takes ERC-20 payments on an EVM chain through its own node
(draft-evm-charge-00, spec/methods/evm-seller.md).

    from eth_account import Account
    from mpp.aio.evm_rail import EvmRail
    from mpp.connect import evm_store_for
    from mpp.methods.evm.charge import EvmToken

    usdc = EvmToken("0x036CbD53842c5426634e7929541eC2318f3dCF7e", name="USDC", version="2")
    rail = EvmRail("https://sepolia.base.org", key=Account.from_key(seller_key), chain_id=84532,
                   tokens={"usd": usdc}, store=evm_store_for("payments.db"))
    seller = Seller(..., rails=[rail, ledger_rail])   # routes priced in "usd" are offered on both
    app.cleanup_ctx.append(rail.lifecycle)             # checks the chain id, reconciles

The seller's address (``key``'s) is the ``recipient`` of every charge and pays the gas of what it
submits. Settlement, by credential type:

``authorization``
    The payer's EIP-3009 authorization is simulated (``eth_call``), then submitted by the seller
    (``transferWithAuthorization``), one nonce at a time (:class:`~mpp.aio.evm_chain.SellerWallet`).
``permit2``
    The payer's Permit2 permit is simulated, then submitted by the seller, its spender
    (``permitWitnessTransferFrom`` on the Permit2 contract), like an authorization.
``transaction``
    The payer's signed transaction is simulated from the payer's address, then broadcast; the payer
    pays gas.
``hash`` (only if configured)
    The receipt of a transaction the payer sent itself is read, and must be recent (``hash_max_age``).

Every settlement waits for the receipt (``receipt_timeout``) and checks ``status`` 1 and an ERC-20
``Transfer`` log of the token, payer to recipient, of the amount. The payment's replay key (payer
and nonce, or transaction hash) is claimed in the store before anything is sent, so one payment
pays one challenge across every seller process on the store.

What the buyer sees: 200 with the receipt (``reference`` the transaction hash, ``chainId``); a 402
with the problem the draft's table names for a payment that cannot settle (nothing moved, and
``precheck`` finds the usual ones before the challenge is consumed, so the buyer may retry it);
503 ``chain-unavailable`` when the node does not answer before anything was sent (nothing moved);
503 ``settlement-pending`` with ``Retry-After`` and the ``transaction`` hash when a transaction was
sent and its receipt did not come in time: the challenge is used, and if the transaction is mined
after all the amount is refunded to the payer (``reconcile``), so the buyer pays again with a fresh
challenge if it still wants the resource, and never with this one.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterator, Mapping

from mpp.aio.evm_aftercare import AUTHORIZATION as _AUTH_KIND, EvmAftercare
from mpp.aio.evm_chain import (SellerWallet, SendRefused, SendUnanswered, Sent, authorization_used, permit2_nonce_used, succeeded,
                                token_allowance, token_balance, transfers_in, wait_for_receipt)
from mpp.aio.evm_rpc import EvmRpc, EvmRpcError, EvmRpcUnavailable, call_data
from mpp.engine.core import Verified
from mpp.engine.rails import Settlement
from mpp.ledger import MandateCharge
from mpp.methods.evm.charge import (AUTHORIZATION, BINDING_DRAFT, HASH, PERMIT2, PERMIT2_ADDRESS, TRANSACTION, EvmPayment,
                                    EvmSellerMethod, EvmToken, did_pkh, transaction_fields)
from mpp.methods.evm.permit2 import settlement_call
from mpp.protocol.errors import (ExtensionProblem, InvalidChallenge, PaymentInsufficient, PaymentProblem,
                                 SellerMisconfigured, VerificationFailed, clip)
from mpp.stores.evm import EvmStore, MemoryEvmStore, PendingTx

__all__ = ["EvmRail", "EvmSettlement", "SettlementPending", "ChainUnavailable", "ChainMismatch"]

log = logging.getLogger("mpp.rails")

_TRANSFER_WITH_AUTHORIZATION = ("transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,"
                                "uint8,bytes32,bytes32)")
_GAS_CHECK_TTL = 30.0  # seconds an "enough ether for gas" answer is trusted
_NO_APPROVAL = ("the payer has not approved Permit2 for the amount on the token: approve Permit2 first (a one-time "
                "ERC-20 approve(Permit2, amount) from the payer), then present this credential again")


class SettlementPending(ExtensionProblem):
    """A transaction was sent and its receipt did not come in time (or the node stopped answering
    after the send): the outcome is unknown. The challenge is used; if the transaction is mined the
    amount is refunded (:meth:`EvmRail.reconcile`). The problem names the ``transaction``."""

    status = 503
    slug = "settlement-pending"
    title = "Settlement Pending"


class ChainUnavailable(ExtensionProblem):
    """The seller's node gave no usable answer before anything was sent: nothing moved."""

    status = 503
    slug = "chain-unavailable"
    title = "Chain Unavailable"


class ChainMismatch(RuntimeError):
    """The node the rail was pointed at is on another chain than the one it was configured for."""


@dataclass(frozen=True)
class EvmSettlement(Settlement):
    """An ``evm`` settlement: ``reference`` the transaction hash, ``payer`` the paying address, and
    the ``token`` and ``amount`` a refund gives back."""

    token: str = ""
    amount: int = 0


class EvmRail(EvmSellerMethod):
    """The ``evm`` method settled on chain through the node at ``rpc_url``, with the seller's ``key``
    (an eth-account ``LocalAccount``; its address is the recipient). ``tokens``, ``credential_types``,
    ``bindings``, ``max_validity`` and ``clock`` are :class:`~mpp.methods.evm.charge.EvmSellerMethod`'s.
    ``store`` keeps the claimed replay keys, pending transactions and refunds (mpp.stores.evm:
    :func:`mpp.connect.evm_store_for` beside the payment store; in memory by default, lost on restart);
    the rail closes it when it stops. ``receipt_timeout`` bounds the wait for a receipt (seconds),
    ``reconcile_interval`` how often pending transactions are settled in the background (0: only when
    :meth:`reconcile` is called), ``hash_max_age`` how old a ``hash`` credential's transaction may be,
    ``gas_reserve`` the gas the seller's ether must cover before it accepts an authorization or a permit,
    ``permit2_address`` the Permit2 contract it settles permits on (``permit2`` in ``credential_types``)."""

    def __init__(self, rpc_url: str, *, key: Any, chain_id: int, tokens: Mapping[str, EvmToken],
                 credential_types: tuple[str, ...] = (AUTHORIZATION, TRANSACTION), bindings: tuple[str, ...] = (BINDING_DRAFT,),
                 receipt_timeout: float = 30.0, store: EvmStore | None = None, reconcile_interval: float = 5.0,
                 session: Any = None, rpc_timeout: float = 10.0, hash_max_age: float = 900.0, pending_ttl: float = 86400.0,
                 gas_reserve: int = 200_000, max_validity: int = 3600, clock: Any = None,
                 permit2_address: str = PERMIT2_ADDRESS) -> None:
        super().__init__(recipient=key.address, chain_id=chain_id, tokens=tokens, credential_types=credential_types,
                         bindings=bindings, max_validity=max_validity, clock=clock, permit2_address=permit2_address)
        self.rpc = EvmRpc(rpc_url, session=session, timeout=rpc_timeout)
        self.wallet = SellerWallet(self.rpc, key, chain_id)
        self.store: EvmStore = store if store is not None else MemoryEvmStore()
        self.receipt_timeout = receipt_timeout
        self.hash_max_age = hash_max_age
        self.gas_reserve = gas_reserve
        self.aftercare = EvmAftercare(self.rpc, self.wallet, self.store, self.recipient, receipt_timeout,
                                      reconcile_interval, pending_ttl)
        self._gas_ok_until = 0.0

    def __repr__(self) -> str:
        return f"EvmRail({self.rpc.url!r}, chain_id={self.chain_id}, recipient={self.recipient!r})"

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Check that the node is on ``chain_id`` (ChainMismatch if not, ChainUnavailable if it does not
        answer: the seller does not start), then settle what an earlier run left and keep reconciling."""
        try:
            answered = await self.rpc.chain_id()
        except (EvmRpcUnavailable, EvmRpcError) as exc:
            await self.rpc.close()
            raise ChainUnavailable(f"the evm node at {self.rpc.url} does not answer eth_chainId: {exc}") from exc
        if answered != self.chain_id:
            await self.rpc.close()
            raise ChainMismatch(f"the evm node at {self.rpc.url} is on chain {answered}, not {self.chain_id}: "
                                f"point the rail at a node of chain {self.chain_id}, or configure chain_id={answered}")
        await self.aftercare.start()

    async def stop(self) -> None:
        """Stop reconciling, close the store and the node's client."""
        await self.aftercare.stop()
        await self.rpc.close()

    async def lifecycle(self, app: Any) -> AsyncIterator[None]:
        """For ``app.cleanup_ctx``: started before the seller serves, stopped after."""
        await self.start()
        yield
        await self.stop()

    async def reconcile(self) -> int:
        """Refund the pending charges that were mined, drop the ones that can no longer be, follow the
        refunds sent; how many are still unsettled (see :mod:`mpp.aio.evm_aftercare`)."""
        return await self.aftercare.reconcile()

    # -- PaymentRail -------------------------------------------------------------------------

    async def precheck(self, verified: Verified, chain: tuple[str, ...] | None) -> None:
        """Before the challenge is consumed: the payment was not presented for another challenge
        (verification-failed); a ``hash`` names a mined transaction; the payer holds the amount
        (payment-insufficient) and, for a ``transaction``, the ether its gas may cost; an authorization
        is unused on chain (invalid-challenge: its nonce is this challenge's hash, so used means this
        challenge was paid) and the seller holds ether for its gas (503 seller-misconfigured); a permit's
        owner has approved Permit2 for the amount (payment-insufficient: "approve Permit2 first") and its
        nonce is unused (invalid-challenge). ChainUnavailable when the node does not answer."""
        payment: EvmPayment = verified.proof
        with _node("precheck"):
            holder = await self.store.holder(payment.replay_key)
            if holder is not None and holder != payment.challenge_id:
                raise VerificationFailed("this payment was already presented for another challenge")
            if payment.kind == HASH:
                if await self.rpc.transaction_receipt(payment.tx_hash or "") is None:
                    raise VerificationFailed("no mined transaction has this hash: present it once it is mined")
                return
            if await token_balance(self.rpc, payment.token, payment.payer) < payment.amount:
                raise PaymentInsufficient("the payer's token balance is below the amount")
            if payment.kind == TRANSACTION:
                body = _transaction_body(payment)
                if await self.rpc.balance(payment.payer) < body["gas"] * body["maxFeePerGas"]:
                    raise PaymentInsufficient("the payer's ether cannot pay the transaction's gas")
                return
            if payment.kind == PERMIT2:
                if await token_allowance(self.rpc, payment.token, payment.payer, payment.permit2) < payment.amount:
                    raise PaymentInsufficient(_NO_APPROVAL)
                if await permit2_nonce_used(self.rpc, payment.permit2, payment.payer, int.from_bytes(payment.nonce, "big")):
                    raise InvalidChallenge("this permit's Permit2 nonce was already used on chain")
            elif await authorization_used(self.rpc, payment.token, payment.payer, payment.nonce):
                raise InvalidChallenge("this authorization was already used (or canceled) on chain")
            await self._check_gas()

    async def settle(self, verified: Verified, mandate: MandateCharge | None = None) -> Settlement:
        """Move the payment on chain, at most once per replay key (claimed before anything is sent),
        and wait for its receipt: an :class:`EvmSettlement` whose reference is the transaction hash.
        Refusals are the draft's 402 problems (nothing moved); ChainUnavailable (503) when the node
        does not answer before the send; SettlementPending (503) after it. ``mandate`` is not counted
        anywhere (no ledger sees this rail; the seller's own budget share still is)."""
        payment: EvmPayment = verified.proof
        if payment.kind == HASH:
            with _node("settlement"):
                return await self._settle_hash(verified, payment)
        if await self.store.claim(payment.replay_key, payment.challenge_id) != payment.challenge_id:
            raise VerificationFailed("this payment was already presented for another challenge")
        with _node("settlement"):
            tx_hash = await (self._broadcast(payment) if payment.kind == TRANSACTION else self._submit(payment))
        try:
            return await self._confirm(tx_hash, payment)
        except PaymentProblem:
            raise
        except Exception as exc:  # noqa: BLE001 - after the send, whatever goes wrong leaves the outcome unknown
            log.exception("evm settlement of %s: no outcome after the send", tx_hash)
            raise _pending(tx_hash) from exc

    async def refund(self, settlement: Settlement) -> None:
        """Give the settlement's amount back to its payer: ``transfer(payer, amount)`` on the token from
        the seller's key, at most once per reference (mpp.stores.evm). A node that does not answer
        raises nothing: the refund is owed in the store and ``reconcile`` makes it. A settlement rebuilt
        elsewhere (a failed task's) is looked up on chain first, and then a node without an answer is
        ChainUnavailable: the caller tries again later."""
        record = await self.store.refund_of(settlement.reference)
        if record is not None:
            payer, token, amount = record.payer, record.token, record.amount
        elif isinstance(settlement, EvmSettlement) and settlement.token:
            payer, token, amount = settlement.payer or "", settlement.token, settlement.amount
        else:  # the chain says what moved
            with _node("refund"):
                receipt = await self.rpc.transaction_receipt(settlement.reference)
            moved = [t for t in transfers_in(receipt or {}) if t.to == self.recipient and t.token in self._by_address]
            if receipt is None or not succeeded(receipt) or not moved:
                raise ValueError(f"transaction {settlement.reference} moved no token to {self.recipient}: nothing to refund")
            payer, token, amount = moved[0].sender, moved[0].token, moved[0].value
        await self.aftercare.refund(settlement.reference, payer, token, amount)

    async def revoked(self, jtis: tuple[str, ...]) -> set[str]:
        """None known: mandate revocations are recorded at a ledger, and no ledger is behind this rail
        (a seller that also runs a ledger rail sees them there, for that rail's purchases)."""
        return set()

    # -- steps ---------------------------------------------------------------------------------

    async def _check_gas(self) -> None:
        """The seller's ether covers ``gas_reserve`` at today's fee (checked every 30 s at most)."""
        if time.monotonic() < self._gas_ok_until:
            return
        held, needed = await self.wallet.gas_cover(self.gas_reserve)
        if held < needed:
            log.error("the evm seller %s holds %d wei, less than the %d wei of %d gas now: fund it with ether to take "
                      "authorizations (CORE-ERR-14)", self.wallet.address, held, needed, self.gas_reserve)
            raise SellerMisconfigured("the seller cannot pay the gas of a settlement now; nothing was consumed")
        self._gas_ok_until = time.monotonic() + _GAS_CHECK_TTL

    async def _submit(self, payment: EvmPayment) -> str:
        """``transferWithAuthorization`` on the token, or ``permitWitnessTransferFrom`` on Permit2, simulated,
        then sent from the seller's key (journalled as pending first)."""
        sig = payment.signature
        if payment.kind == PERMIT2:
            to = payment.permit2
            data = settlement_call(payment.token, payment.amount, int.from_bytes(payment.nonce, "big"), payment.valid_before,
                                   payment.recipient, payment.payer, payment.witness, sig)
        else:
            to = payment.token
            data = call_data(_TRANSFER_WITH_AUTHORIZATION, payment.payer, payment.recipient, payment.amount, payment.valid_after,
                             payment.valid_before, payment.nonce, sig[64], sig[:32], sig[32:64])
        detail = {"kind": payment.kind if payment.kind == PERMIT2 else _AUTH_KIND, "payer": payment.payer, "token": payment.token,
                  "amount": str(payment.amount), "sender": self.wallet.address, "authNonce": "0x" + payment.nonce.hex(),
                  "validBefore": str(payment.valid_before), "permit2": payment.permit2}

        async def journal(sent: Sent) -> None:
            await self.store.add_pending(PendingTx(sent.tx_hash, payment.challenge_id, {**detail, "nonce": sent.nonce}))

        async def unjournal(sent: Sent) -> None:
            await self.store.remove_pending(sent.tx_hash)

        try:
            await self.rpc.eth_call(to, data, sender=self.wallet.address)
            sent = await self.wallet.send(to, data, before=journal, refused=unjournal)
        except EvmRpcError as exc:  # the simulation or the gas estimate reverted
            raise await _refusal(self.rpc, payment, exc) from None
        except SendRefused as exc:  # the seller's transaction, not the payer's authorization
            log.error("the node refused the evm seller's transaction %s: %s", exc.sent.tx_hash, exc.error.message)
            if "insufficient funds" in exc.error.message.lower():
                raise SellerMisconfigured("the seller cannot pay the gas of a settlement now") from None
            raise ChainUnavailable("the seller's chain node refused its transaction; nothing moved, try again later") from None
        except SendUnanswered as exc:
            raise _pending(exc.sent.tx_hash) from exc
        return sent.tx_hash

    async def _broadcast(self, payment: EvmPayment) -> str:
        """The payer's transaction simulated from the payer, journalled as pending, then broadcast."""
        body = _transaction_body(payment)
        tx_hash = payment.tx_hash or ""
        try:
            await self.rpc.eth_call(payment.token, "0x" + bytes(body["data"]).hex(), sender=payment.payer)
        except EvmRpcError as exc:
            raise await _refusal(self.rpc, payment, exc) from None
        await self.store.add_pending(PendingTx(tx_hash, payment.challenge_id, {
            "kind": TRANSACTION, "payer": payment.payer, "token": payment.token, "amount": str(payment.amount),
            "sender": payment.payer, "nonce": body["nonce"]}))
        try:
            await self.rpc.send_raw_transaction(payment.raw)
        except EvmRpcUnavailable as exc:
            raise _pending(tx_hash) from exc
        except EvmRpcError as exc:
            try:
                known = await self.rpc.transaction(tx_hash)  # the payer may have sent it already: then it is on its way
            except EvmRpcUnavailable as unanswered:
                raise _pending(tx_hash) from unanswered
            if known is None:  # refused, and not on its way either: it goes nowhere
                await self.store.remove_pending(tx_hash)
                raise VerificationFailed(f"the node refused the transaction: {clip(exc.message, 200)}") from None
        return tx_hash

    async def _confirm(self, tx_hash: str, payment: EvmPayment) -> EvmSettlement:
        """The receipt, checked: status 1 and the Transfer of the amount, payer to recipient (draft MUST)."""
        receipt = await wait_for_receipt(self.rpc, tx_hash, self.receipt_timeout)
        if receipt is None:
            log.warning("evm settlement %s (challenge %s) not mined within %g s: pending", tx_hash, payment.challenge_id,
                        self.receipt_timeout)
            raise _pending(tx_hash)
        moved = succeeded(receipt) and any(t.token == payment.token and t.sender == payment.payer and t.to == self.recipient
                                           and t.value == payment.amount for t in transfers_in(receipt))
        if not moved:
            if payment.kind == AUTHORIZATION and await authorization_used(self.rpc, payment.token, payment.payer, payment.nonce):
                # another transaction used it first: the money moved; reconcile refunds it (the pending entry stays)
                raise InvalidChallenge("this authorization was used on chain by another transaction; its amount is refunded")
            await self.store.remove_pending(tx_hash)
            raise VerificationFailed("the transaction " + ("did not transfer the amount from the payer to the recipient"
                                                           if succeeded(receipt) else "reverted on chain: nothing moved"))
        await self.store.remove_pending(tx_hash)
        settled = self.clock().replace(microsecond=0)
        log.info("evm settlement %s: %d of %s from %s", tx_hash, payment.amount, payment.token, payment.payer)
        return EvmSettlement(reference=tx_hash, settled_at=settled, payer=payment.payer,
                             receipt_members={"chainId": self.chain_id}, token=payment.token, amount=payment.amount)

    async def _settle_hash(self, verified: Verified, payment: EvmPayment) -> EvmSettlement:
        """A transaction the payer sent: mined, recent, a Transfer of the amount to us; its hash claimed."""
        tx_hash = payment.tx_hash or ""
        receipt = await self.rpc.transaction_receipt(tx_hash)
        if receipt is None or not succeeded(receipt):
            raise VerificationFailed("no successful mined transaction has this hash")
        transfer = next((t for t in transfers_in(receipt) if t.token == payment.token and t.to == self.recipient
                         and t.value == payment.amount), None)
        if transfer is None:
            raise VerificationFailed("the transaction does not transfer the amount of the token to the recipient")
        mined_at = await self.rpc.block_timestamp(receipt.get("blockNumber") or "latest")
        if self.clock().timestamp() - mined_at > self.hash_max_age:
            raise VerificationFailed(f"the transaction was mined more than {self.hash_max_age:.0f} s ago")
        source = verified.credential.source
        if source is not None and (not isinstance(source, str) or source.lower() != did_pkh(self.chain_id, transfer.sender).lower()):
            raise VerificationFailed("credential source is not the payer's did:pkh")
        if await self.store.claim(payment.replay_key, payment.challenge_id) != payment.challenge_id:
            raise VerificationFailed("this payment was already presented for another challenge")
        return EvmSettlement(reference=tx_hash, settled_at=self.clock().replace(microsecond=0), payer=transfer.sender,
                             receipt_members={"chainId": self.chain_id}, token=payment.token, amount=payment.amount)

async def _refusal(rpc: EvmRpc, payment: EvmPayment, exc: EvmRpcError) -> PaymentProblem:
    """The problem a reverted simulation (or a transaction the node refused) means, found from the
    chain's state rather than the token's words, which differ from token to token."""
    if payment.kind == AUTHORIZATION:
        if await authorization_used(rpc, payment.token, payment.payer, payment.nonce):
            return InvalidChallenge("this authorization was already used (or canceled) on chain")
    if payment.kind == PERMIT2:
        if await permit2_nonce_used(rpc, payment.permit2, payment.payer, int.from_bytes(payment.nonce, "big")):
            return InvalidChallenge("this permit's Permit2 nonce was already used on chain")
        if await token_allowance(rpc, payment.token, payment.payer, payment.permit2) < payment.amount:
            return PaymentInsufficient(_NO_APPROVAL)
    if await token_balance(rpc, payment.token, payment.payer) < payment.amount:
        return PaymentInsufficient("the payer's token balance is below the amount")
    if payment.kind == PERMIT2 and await rpc.block_timestamp() > payment.valid_before:
        return VerificationFailed("the permit's deadline has passed on chain")
    if payment.kind == AUTHORIZATION:
        now = await rpc.block_timestamp()
        if now >= payment.valid_before:
            return VerificationFailed("the authorization's validBefore has passed on chain")
        if now <= payment.valid_after:
            return VerificationFailed("the authorization is not valid yet on chain (validAfter)")
    refuser = "Permit2" if payment.kind == PERMIT2 else "the token"
    return VerificationFailed(f"{refuser} refused the transfer: {clip(exc.reason, 200)}")


@contextmanager
def _node(what: str) -> Iterator[None]:
    """A node that gives no usable answer (or refuses a read) as ChainUnavailable (503): nothing moved."""
    try:
        yield
    except (EvmRpcUnavailable, EvmRpcError) as exc:
        log.warning("evm node unavailable during %s: %s", what, exc)
        raise ChainUnavailable(f"the seller's chain node did not answer ({what}); nothing moved, try again later") from exc


def _pending(tx_hash: str) -> SettlementPending:
    return SettlementPending("the payment's transaction was sent and is not confirmed yet: this challenge is used; if the "
                             "transaction is mined, the amount is refunded to the payer; to buy, pay a fresh challenge",
                             transaction=tx_hash)


def _transaction_body(payment: EvmPayment) -> dict[str, Any]:
    """A ``transaction`` credential's fields (nonce, gas, maxFeePerGas, data...), decoded (verify did it once)."""
    return transaction_fields(payment.raw)
