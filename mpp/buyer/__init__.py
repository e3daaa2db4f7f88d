"""The buyer's decisions, sans-I/O: which offer to take, what to check before signing (``core``,
``offers``), which grant covers a request (``grants``), and a session's caps, vouchers and receipts
(``sessions``, ``session_receipts``). The transports (:mod:`mpp.aio`) do the I/O around them."""

__all__: list[str] = []
