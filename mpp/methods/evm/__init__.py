"""The ``evm`` payment method's support: EVM chains, and a token that pays by EIP-3009.

- :mod:`mpp.methods.evm.charge`: the ``evm`` method's ``charge`` intent, wire side: the request,
  the ``authorization``, ``transaction`` and ``hash`` payloads, the challenge-binding rules, the
  seller's offline checks and the buyer's EIP-3009 signing (settlement: :mod:`mpp.aio.evm_rail`).
- :mod:`mpp.methods.evm.devchain`: a throwaway local chain (Foundry's anvil) with the test token
  (``contracts/TestToken.sol``, an ERC-20 with EIP-3009) deployed, for the tests and the demo.
"""

from __future__ import annotations

__all__: list[str] = []
