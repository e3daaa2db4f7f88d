"""Extract Uniswap's Permit2 runtime code from npm into mpp/methods/evm/contracts/Permit2.json.

    python tools/build_permit2.py            # fetch, extract, patch, verify on anvil, write Permit2.json
    python tools/build_permit2.py --check    # the same in memory; exit 1 if Permit2.json differs

The throwaway chain (mpp/methods/evm/devchain.py) puts this code at Permit2's canonical address,
0x000000000022D473030F116dDEE9F6B43aC78BA3, with ``anvil_setCode``, so the ``permit2`` credential
type is tested on a real Permit2 without a 33 MB npm install in ``make test``: the JSON is checked in.

Source. No npm package ships Permit2's bytecode on its own. ``@uniswap/v4-periphery@1.0.3``
(pinned below) vendors Permit2, and its ``lib/permit2/test/utils/DeployPermit2.sol`` holds
Permit2's *runtime* code (9152 bytes) as a ``hex"..."`` literal, which Foundry tests ``vm.etch``
at the canonical address. This script ``npm pack``s that package into a temporary folder (the
tarball only, no dependencies, nothing installed), reads that one file out of it and takes the
literal. The SHA-256 of the extracted code (before the patch below) is recorded.

Licence. That file and Permit2 (``lib/permit2/LICENSE``, "Copyright (c) 2022 Uniswap Labs") are
MIT-licensed, as is the package (``"license": "MIT"``); MIT permits redistribution on condition
that the copyright and permission notice go with the copies, so the JSON carries that licence
text whole.

The patch. Permit2's ``EIP712`` contract caches its domain separator in two immutables set by its
constructor: ``_CACHED_CHAIN_ID`` (``block.chainid`` at deployment) and ``_CACHED_DOMAIN_SEPARATOR``
(the separator of that chain and of ``address(this)`` at deployment). ``DOMAIN_SEPARATOR()`` returns
the cached separator when ``block.chainid == _CACHED_CHAIN_ID`` and otherwise recomputes
``keccak256(abi.encode(typeHash, keccak256("Permit2"), block.chainid, address(this)))``. Solidity
inlines an immutable into the runtime code as the 32-byte immediate of a ``PUSH32``. The captured
code came from a forge deployment on chain 31337 at an address other than the canonical one
(``vm.etch`` copied it there afterwards), so it holds ``PUSH32 0x…7a69`` (31337) and a separator
for that other address. Placed at the canonical address on a 31337 chain (anvil's default, ours)
it would return the wrong separator, and every signature a wallet makes over the correct domain
would fail (``InvalidSigner``). The patch replaces that one word, the 32-byte immediate of the only
``PUSH32`` whose value is 31337, by zero: no chain has id 0, so ``DOMAIN_SEPARATOR()`` always
recomputes from the running chain id and its own address, on every chain. The script checks that
the word occurs exactly once, that it is a ``PUSH32`` immediate (walking the code's instructions),
and then, on a throwaway anvil chain (chain id 31337), that the unpatched code's
``DOMAIN_SEPARATOR()`` differs from the EIP-712 domain separator eth-account computes for
``{name: "Permit2", chainId: 31337, verifyingContract: 0x0000…8BA3}`` and that the patched code's
equals it. Needs npm and anvil (``make anvil``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from artifact_file import write_or_check

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUTPUT = ROOT / "mpp" / "methods" / "evm" / "contracts" / "Permit2.json"
PACKAGE, VERSION = "@uniswap/v4-periphery", "1.0.3"
CODE_FILE = "lib/permit2/test/utils/DeployPermit2.sol"
LICENSE_FILE = "lib/permit2/LICENSE"
PERMIT2_ADDRESS = "0x000000000022D473030F116dDEE9F6B43aC78BA3"
CACHED_CHAIN_ID = 31337
_LITERAL = re.compile(r'hex"([0-9a-fA-F]+)"')
_PUSH1, _PUSH32 = 0x60, 0x7F


def fetch() -> tuple[bytes, str, str]:
    """(the runtime code in DeployPermit2.sol, Permit2's licence text, the package's licence field), from npm."""
    if shutil.which("npm") is None:
        sys.exit("build_permit2: `npm` is not on PATH (install Node.js 20 or newer)")
    with tempfile.TemporaryDirectory(prefix="mpp-permit2-") as tmp:
        result = subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}", "--loglevel=error"], cwd=tmp,
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            sys.exit(f"build_permit2: npm pack {PACKAGE}@{VERSION} failed:\n{result.stderr[-3000:]}")
        tarball = Path(tmp) / result.stdout.strip().splitlines()[-1]
        with tarfile.open(tarball, "r:gz") as archive:
            def member(name: str) -> str:
                handle = archive.extractfile(f"package/{name}")
                if handle is None:
                    sys.exit(f"build_permit2: {name} is not in {tarball.name}")
                return handle.read().decode("utf-8")
            source, licence, manifest = member(CODE_FILE), member(LICENSE_FILE), json.loads(member("package.json"))
    literals = _LITERAL.findall(source)
    if len(literals) != 1:
        sys.exit(f"build_permit2: expected one hex literal in {CODE_FILE}, found {len(literals)}")
    if not licence.startswith("MIT License") or manifest.get("license") != "MIT":
        sys.exit("build_permit2: the package's or Permit2's licence is no longer MIT: check it before redistributing")
    return bytes.fromhex(literals[0]), licence, manifest["license"]


def push32_immediates(code: bytes) -> list[tuple[int, bytes]]:
    """(offset, value) of every PUSH32's 32-byte immediate, walking the instructions from the start."""
    found, pc = [], 0
    while pc < len(code):
        op = code[pc]
        if _PUSH1 <= op <= _PUSH32:
            size = op - _PUSH1 + 1
            if op == _PUSH32:
                found.append((pc + 1, code[pc + 1:pc + 33]))
            pc += 1 + size
        else:
            pc += 1
    return found


def patch(code: bytes) -> tuple[bytes, int]:
    """The code with the PUSH32 immediate of the cached chain id zeroed, and that immediate's offset."""
    word = CACHED_CHAIN_ID.to_bytes(32, "big")
    if code.count(word) != 1:
        sys.exit(f"build_permit2: the word {CACHED_CHAIN_ID} occurs {code.count(word)} times, not once: not patched")
    offset = code.index(word)
    if (offset, word) not in push32_immediates(code):
        sys.exit(f"build_permit2: the word {CACHED_CHAIN_ID} at byte {offset} is not a PUSH32 immediate: not patched")
    return code[:offset] + bytes(32) + code[offset + 32:], offset


def expected_separator(chain_id: int) -> bytes:
    """Permit2's EIP-712 domain separator as eth-account computes it (a SignableMessage's header)."""
    from eth_account.messages import encode_typed_data
    message = encode_typed_data(full_message={
        "types": {"EIP712Domain": [{"name": "name", "type": "string"}, {"name": "chainId", "type": "uint256"},
                                   {"name": "verifyingContract", "type": "address"}], "Empty": []},
        "primaryType": "Empty", "domain": {"name": "Permit2", "chainId": chain_id, "verifyingContract": PERMIT2_ADDRESS},
        "message": {}})
    return bytes(message.header)


def verify(original: bytes, patched: bytes) -> str:
    """On a throwaway chain: the original code's DOMAIN_SEPARATOR() is wrong there, the patched one's right."""
    from mpp.methods.evm.devchain import throwaway_chain
    with throwaway_chain(permit2=False) as chain:
        expected = expected_separator(chain.chain_id)
        found = {}
        for name, code in (("original", original), ("patched", patched)):
            chain.rpc("anvil_setCode", PERMIT2_ADDRESS, "0x" + code.hex())
            found[name] = bytes(chain.read("DOMAIN_SEPARATOR()", returns=["bytes32"], to=PERMIT2_ADDRESS))
    if found["original"] == expected:
        sys.exit("build_permit2: the unpatched code already gives the right separator: is the patch still needed?")
    if found["patched"] != expected:
        sys.exit(f"build_permit2: patched DOMAIN_SEPARATOR() is 0x{found['patched'].hex()}, eth-account computes "
                 f"0x{expected.hex()}")
    return "0x" + expected.hex()


def build() -> dict:
    """What Permit2.json holds."""
    original, licence, package_licence = fetch()
    patched, offset = patch(original)
    separator = verify(original, patched)
    return {
        "contractName": "Permit2",
        "address": PERMIT2_ADDRESS,
        "source": {"package": PACKAGE, "version": VERSION, "file": CODE_FILE,
                   "extractedSha256": hashlib.sha256(original).hexdigest(), "extractedBytes": len(original)},
        "patch": {"what": "zero the PUSH32 immediate of the cached chain id (the immutable _CACHED_CHAIN_ID, 31337), so "
                          "DOMAIN_SEPARATOR() always recomputes from block.chainid and address(this)",
                  "offset": offset, "from": "0x" + CACHED_CHAIN_ID.to_bytes(32, "big").hex(), "to": "0x" + bytes(32).hex(),
                  "verified": f"DOMAIN_SEPARATOR() on chain 31337 at {PERMIT2_ADDRESS} = {separator} (eth-account)"},
        "license": {"spdx": package_licence, "file": f"{PACKAGE}@{VERSION}/{LICENSE_FILE}",
                    "note": "MIT: redistribution permitted with this copyright and permission notice", "text": licence},
        "runtimeCode": "0x" + patched.hex(),
    }


def render(artifact: dict) -> str:
    """The JSON text of Permit2.json (stable key order)."""
    return json.dumps(artifact, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="rebuild, and exit 1 if Permit2.json differs from the result")
    args = parser.parse_args(argv)
    return write_or_check(OUTPUT, render(build()), check=args.check, root=ROOT, rebuild="python tools/build_permit2.py")


if __name__ == "__main__":
    sys.exit(main())
