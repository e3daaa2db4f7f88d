"""The ``evm`` seller's store (mpp.stores.evm), one contract on SQLite and PostgreSQL: a replay key
is claimed once across processes (another "process" is a second store on the same file or
database), pending transactions are journalled and forgotten, a refund is begun once per
reference and replaced only by whoever still holds its current transaction."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mpp.connect import evm_store_for
from mpp.stores.evm import REFUND_DONE, REFUND_SENT, MemoryEvmStore, PendingTx, RefundRecord


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def location(request, tmp_path: Path) -> str | None:
    if request.param == "memory":
        return None
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/evm.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture
async def stores(location):
    """Two stores on one location (two seller processes); the memory store is one object shared."""
    if location is None:
        one = MemoryEvmStore()
        yield one, one
        return
    opened = [evm_store_for(location), evm_store_for(location)]
    yield tuple(opened)
    for store in opened:
        await store.close()


async def test_a_replay_key_is_claimed_once_across_processes(stores):
    """EVM-SET-02: of concurrent claims of one replay key from two stores on one database, one wins."""
    one, two = stores
    claims = await asyncio.gather(*(store.claim("evm:31337:tx:0xabc", f"challenge-{i}")
                                    for i, store in enumerate([one, two] * 5)))
    assert len(set(claims)) == 1 and claims[0].startswith("challenge-")
    assert await one.holder("evm:31337:tx:0xabc") == await two.holder("evm:31337:tx:0xabc") == claims[0]
    assert await two.claim("evm:31337:tx:0xabc", claims[0]) == claims[0]  # its own holder: still its
    assert await one.holder("evm:31337:tx:0xdef") is None


async def test_pending_transactions_are_journalled_until_settled(stores):
    one, two = stores
    await one.add_pending(PendingTx("0x01", "c1", {"kind": "authorization", "amount": "5"}))
    await two.add_pending(PendingTx("0x01", "c9", {"kind": "other"}))  # the first record is kept
    await two.add_pending(PendingTx("0x02", "c2", {"kind": "transaction"}))
    listed = await one.pending()
    assert [(p.tx_hash, p.challenge_id, p.detail) for p in listed] == [
        ("0x01", "c1", {"kind": "authorization", "amount": "5"}), ("0x02", "c2", {"kind": "transaction"})]
    assert all(p.since.endswith("Z") for p in listed)
    await two.remove_pending("0x01")
    await two.remove_pending("0xunknown")
    assert [p.tx_hash for p in await one.pending()] == ["0x02"]


async def test_a_refund_is_begun_once_and_replaced_only_by_its_holder(stores):
    one, two = stores
    first = RefundRecord("0xref", "0xPayer", "0xToken", 2 ** 70, "0xtx1", 7, "0xraw1")
    second = RefundRecord("0xref", "0xPayer", "0xToken", 2 ** 70, "0xtx2", 8, "0xraw2")
    assert await one.begin_refund(first) == first
    assert await two.begin_refund(second) == first  # another process's refund is on record: follow it
    assert await two.refund_of("0xref") == first and await one.refund_of("0xnone") is None
    assert [r.reference for r in await one.open_refunds()] == ["0xref"]
    assert not await two.update_refund("0xref", "0xtx2", state=REFUND_DONE)  # not its transaction
    assert await two.update_refund("0xref", "0xtx1", tx_hash="0xtx3", nonce=9, raw="0xraw3")
    assert not await one.update_refund("0xref", "0xtx1", tx_hash="0xtx4", nonce=9, raw="0xraw4")  # replaced already
    assert (await one.refund_of("0xref")).tx_hash == "0xtx3"
    assert await one.update_refund("0xref", "0xtx3", state=REFUND_DONE)
    assert await one.open_refunds() == [] and (await two.refund_of("0xref")).state == REFUND_DONE
    assert REFUND_SENT != REFUND_DONE


async def test_only_a_refunds_changeable_columns_may_change(location, tmp_path):
    store = evm_store_for(location or f"sqlite:///{tmp_path}/evm.db")
    try:
        with pytest.raises(ValueError, match="may change"):
            await store.update_refund("0xref", "0xtx", payer="0xsomeone")
    finally:
        await store.close()
