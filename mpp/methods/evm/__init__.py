"""The ``evm`` payment method's support: EVM chains, and a token that pays by EIP-3009.

- :mod:`mpp.methods.evm.charge`: the ``evm`` method's ``charge`` intent, wire side: the request,
  the ``authorization``, ``transaction`` and ``hash`` payloads, the challenge-binding rules, the
  seller's offline checks and the buyer's EIP-3009 signing (settlement: :mod:`mpp.aio.evm_rail`).
- :mod:`mpp.methods.evm.permit2`: the ``permit2`` credential (Uniswap Permit2's
  ``PermitWitnessTransferFrom``): payload, typed data, offline checks, signing.
- :mod:`mpp.methods.evm.fields`: the wire's building blocks both share (addresses, uint256 and hex
  members, the challenge-binding rules, EIP-712 signature recovery).
- :mod:`mpp.methods.evm.devchain`: a throwaway local chain (Foundry's anvil) with the test token
  (``contracts/TestToken.sol``, an ERC-20 with EIP-3009) deployed and Permit2 at its canonical address
  (``contracts/Permit2.json``), for the tests and the demo.
"""

from __future__ import annotations

import sys as _sys

# eth-account imports eth-keyfile, which imports py_ecc, which raises the interpreter's recursion limit
# to 100,000 when it is imported (for BLS code we never run). With that limit a deeply nested JSON
# text (a hostile credential, a ledger request body) overflows the C stack inside json.loads and kills
# the process instead of raising RecursionError, which mpp.protocol.wire.loads_strict turns into a
# refusal. So eth-account is imported here first, once, and the limit put back as it was.
_LIMIT = _sys.getrecursionlimit()
import eth_account  # noqa: E402,F401  (see above)

_sys.setrecursionlimit(_LIMIT)

__all__: list[str] = []
