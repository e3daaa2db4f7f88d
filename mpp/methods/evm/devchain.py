"""A throwaway local EVM chain for tests and the demo: Foundry's anvil on loopback, with the test
token deployed, stopped when done.

    with throwaway_chain() as chain:               # anvil on 127.0.0.1, chain id 31337
        payer = chain.new_payer(tokens=5_000_000)  # a fresh key holding 5 tokens (6 decimals)
        chain.balance_of(payer.address)            # 5000000
        chain.token, chain.eip712_domain           # where, and what a payer's EIP-3009 signature binds
        chain.new_payer(tokens=5_000_000, permit2=True)  # ... that has approved Permit2 on the token

``python -m mpp.methods.evm.devchain`` starts one and prints its RPC URL and token until interrupted.

The token is ``contracts/TestToken.sol`` (an ERC-20 with 6 decimals, an owner-only ``mint`` and
EIP-3009's transfer, receive and cancel with authorization), deployed from the checked-in
``contracts/TestToken.json`` (``tools/build_token.py`` builds it), so no compiler is needed here.
anvil's dev accounts are unlocked: the first deploys the token and is its minter.

Uniswap's Permit2 is placed at its canonical address at start (``anvil_setCode``, no transaction):
its runtime code is the checked-in ``contracts/Permit2.json``, extracted from npm's
``@uniswap/v4-periphery`` and patched to recompute its EIP-712 domain separator on this chain
(``tools/build_permit2.py`` builds it and says why; Permit2 is MIT-licensed).

anvil comes from npm: ``make anvil`` installs the version ``tools/anvil/`` pins into ``.anvil/``
(``make test`` and ``make demo`` do it first). It is looked for there, then at ``$MPP_ANVIL``'s
path, then on PATH. Nothing here skips: if anvil is missing or does not start, ChainUnavailable
says why, with the tail of anvil's log. anvil picks its own free port (``--port 0``) and says
which in its log, so two chains (two test workers, two worktrees) never take each other's port.

JSON-RPC goes over ``urllib.request``: this module belongs to ``mpp.methods``, the sans-I/O core,
which imports neither asyncio nor aiohttp. Keys, signatures, transactions, ABI encoding and
Keccak come from eth-account, eth-abi and eth-utils.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import eth_abi
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

__all__ = ["CHAIN_ID", "DECIMALS", "PERMIT2_ADDRESS", "ChainUnavailable", "RpcError", "TransactionFailed", "DevChain",
           "throwaway_chain", "find_anvil", "token_artifact", "permit2_artifact", "call_data", "main"]

CHAIN_ID = 31337
"""The chain id of a throwaway chain unless told otherwise (anvil's own default)."""
DECIMALS = 6
"""The test token's decimals: one token is 1,000,000 base units, as for USDC."""
PERMIT2_ADDRESS = "0x000000000022D473030F116dDEE9F6B43aC78BA3"
"""Where :meth:`DevChain.install_permit2` puts Permit2: its canonical address on every chain."""

_HERE = Path(__file__).resolve().parent
_ARTIFACT = _HERE / "contracts" / "TestToken.json"
_PERMIT2_ARTIFACT = _HERE / "contracts" / "Permit2.json"
_MAX_UINT256 = 2**256 - 1
# make anvil: npm ci --prefix .anvil (tools/anvil/package.json pins the version)
_LOCAL_ANVIL = _HERE.parents[2] / ".anvil" / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
_LISTENING = re.compile(rb"Listening on 127\.0\.0\.1:(\d+)")
_INSTALL = ("install it: `make anvil` in the repository (npm ci of the version tools/anvil/ pins, into .anvil/), "
            "or put Foundry's `anvil` on PATH, or set MPP_ANVIL to its path")


class ChainUnavailable(RuntimeError):
    """anvil could not be found or started, or the token not deployed; the message says why and what to do."""


class RpcError(RuntimeError):
    """The node answered a JSON-RPC call with an error. A refused transaction (a revert found
    while estimating its gas) lands here, its reason in the message: ``execution reverted: ...``."""

    def __init__(self, method: str, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{method}: {message} (JSON-RPC error {code})")
        self.method, self.code, self.message, self.data = method, code, message, data


class TransactionFailed(RuntimeError):
    """A transaction was mined but reverted (receipt status 0); ``receipt`` is the receipt."""

    def __init__(self, receipt: dict[str, Any]) -> None:
        super().__init__(f"transaction {receipt.get('transactionHash')} reverted in block {receipt.get('blockNumber')}")
        self.receipt = receipt


def find_anvil() -> Path:
    """The anvil binary: ``$MPP_ANVIL``, else the project's ``.anvil/`` (``make anvil``), else PATH."""
    explicit = os.environ.get("MPP_ANVIL")
    if explicit:
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return Path(explicit)
        raise ChainUnavailable(f"MPP_ANVIL={explicit} is not an executable file; " + _INSTALL)
    if _LOCAL_ANVIL.is_file() and os.access(_LOCAL_ANVIL, os.X_OK):
        return _LOCAL_ANVIL
    found = shutil.which("anvil")
    if found:
        return Path(found)
    raise ChainUnavailable(f"anvil (Foundry's local EVM node) is not installed: not at {_LOCAL_ANVIL}, "
                           "nor on PATH; " + _INSTALL)


@functools.lru_cache(maxsize=1)
def token_artifact() -> dict[str, Any]:
    """The compiled test token (contracts/TestToken.json): ``abi``, ``bytecode``, ``compiler``,
    ``sourceSha256`` (of TestToken.sol, which it was built from)."""
    return json.loads(_ARTIFACT.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=1)
def permit2_artifact() -> dict[str, Any]:
    """Permit2's runtime code and provenance (contracts/Permit2.json, ``tools/build_permit2.py``):
    ``runtimeCode``, ``address``, ``source`` (npm package, version, file, SHA-256 of the extracted
    code), ``patch`` (the word changed, and why) and ``license`` (MIT, with its text)."""
    return json.loads(_PERMIT2_ARTIFACT.read_text(encoding="utf-8"))


def call_data(signature: str, *args: Any) -> str:
    """ABI-encoded call data, ``0x``-hex: the 4-byte selector of ``signature`` (e.g.
    ``"mint(address,uint256)"``; flat types only) and the arguments encoded as its types."""
    inner = signature[signature.index("(") + 1:signature.rindex(")")]
    types = [t.strip() for t in inner.split(",")] if inner.strip() else []
    return "0x" + (keccak(text=signature)[:4] + eth_abi.encode(types, list(args))).hex()


def _quantity(value: str) -> int:
    return int(value, 16)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no anvil log)"
    return "\n".join(text.splitlines()[-lines:]) or "(anvil's log is empty)"


class DevChain:
    """A running throwaway chain, as :func:`throwaway_chain` yields it: where it answers, its
    token, and helpers to fund payers, read balances and send transactions."""

    def __init__(self, rpc_url: str, chain_id: int, *, log: Path | None = None) -> None:
        self.rpc_url = rpc_url
        """The JSON-RPC endpoint, ``http://127.0.0.1:PORT``."""
        self.chain_id = chain_id
        """The chain id (EIP-155), also the EIP-712 domain's ``chainId``."""
        self.token = ""
        """The test token's address (checksummed), once deployed."""
        self.token_name = ""
        """The token's name, also its EIP-712 domain's ``name``."""
        self.token_version = ""
        """The token's EIP-712 domain's ``version``."""
        self.token_symbol = ""
        """The token's symbol."""
        self.deployer = ""
        """anvil's first dev account (unlocked): it deployed the token and is its only minter."""
        self.log = log
        """anvil's log file (deleted with the chain), if this chain was started here."""
        self._ids = iter(range(1, 1 << 62))
        self._send_lock = threading.Lock()

    def rpc(self, method: str, *params: Any) -> Any:
        """One JSON-RPC call; its ``result``, or RpcError with the node's error."""
        body = json.dumps({"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}).encode()
        request = urllib.request.Request(self.rpc_url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = json.loads(response.read())
        except urllib.error.URLError as exc:
            raise ChainUnavailable(f"{method}: the chain at {self.rpc_url} does not answer: {exc}") from exc
        if answer.get("error"):
            error = answer["error"]
            raise RpcError(method, error.get("code", 0), error.get("message", ""), error.get("data"))
        return answer["result"]

    @property
    def eip712_domain(self) -> dict[str, Any]:
        """The token's EIP-712 domain, as eth-account's ``sign_typed_data`` takes it."""
        return {"name": self.token_name, "version": self.token_version, "chainId": self.chain_id,
                "verifyingContract": self.token}

    def read(self, signature: str, *args: Any, returns: list[str], to: str | None = None) -> Any:
        """``eth_call`` of ``signature`` on the token (or ``to``) at the latest block, decoded as
        ``returns`` (one type: that value, several: a tuple; addresses checksummed)."""
        raw = self.rpc("eth_call", {"to": to or self.token, "data": call_data(signature, *args)}, "latest")
        values = [to_checksum_address(v) if t == "address" else v
                  for t, v in zip(returns, eth_abi.decode(returns, bytes.fromhex(raw[2:])))]
        return values[0] if len(values) == 1 else values

    def balance_of(self, address: str) -> int:
        """The token balance of ``address``, in base units."""
        return self.read("balanceOf(address)", to_checksum_address(address), returns=["uint256"])

    def authorization_state(self, authorizer: str, nonce: bytes) -> bool:
        """Whether ``authorizer`` has used or canceled the EIP-3009 authorization ``nonce`` (32 bytes)."""
        return self.read("authorizationState(address,bytes32)", to_checksum_address(authorizer), nonce,
                         returns=["bool"])

    def latest_timestamp(self) -> int:
        """The latest block's timestamp (seconds): the chain's clock, which validAfter and validBefore are checked against."""
        return _quantity(self.rpc("eth_getBlockByNumber", "latest", False)["timestamp"])

    def send(self, data: str, *, sender: LocalAccount | str, to: str | None = None, value: int = 0) -> dict[str, Any]:
        """Send a transaction and return its receipt once mined. ``sender`` is an eth-account key
        (the transaction is signed here, EIP-1559) or the address of an unlocked dev account (the
        node signs). ``to`` None deploys ``data``. A revert found while estimating gas raises
        RpcError (nothing is sent); one found on chain raises TransactionFailed."""
        with self._send_lock:
            if isinstance(sender, str):
                tx: dict[str, Any] = {"from": to_checksum_address(sender), "data": data, "value": hex(value)}
                if to is not None:
                    tx["to"] = to_checksum_address(to)
                tx_hash = self.rpc("eth_sendTransaction", tx)
            else:
                tx_hash = self._send_signed(sender, data, to, value)
        return self._receipt(tx_hash)

    def _send_signed(self, account: LocalAccount, data: str, to: str | None, value: int) -> str:
        call: dict[str, Any] = {"from": account.address, "data": data, "value": hex(value)}
        if to is not None:
            call["to"] = to_checksum_address(to)
        gas = _quantity(self.rpc("eth_estimateGas", call))
        base_fee = _quantity(self.rpc("eth_getBlockByNumber", "latest", False)["baseFeePerGas"])
        tip = _quantity(self.rpc("eth_maxPriorityFeePerGas"))
        tx = {"type": 2, "chainId": self.chain_id, "nonce": _quantity(self.rpc("eth_getTransactionCount", account.address, "pending")),
              "gas": gas + gas // 5, "maxPriorityFeePerGas": tip, "maxFeePerGas": 2 * base_fee + tip,
              "data": data, "value": value}
        if to is not None:
            tx["to"] = call["to"]
        signed = account.sign_transaction(tx)
        return self.rpc("eth_sendRawTransaction", "0x" + bytes(signed.raw_transaction).hex())

    def _receipt(self, tx_hash: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (receipt := self.rpc("eth_getTransactionReceipt", tx_hash)) is None:
            if time.monotonic() > deadline:
                raise ChainUnavailable(f"transaction {tx_hash} was not mined within {timeout:.0f} s")
            time.sleep(0.01)
        if _quantity(receipt["status"]) != 1:
            raise TransactionFailed(receipt)
        return receipt

    def transact(self, signature: str, *args: Any, sender: LocalAccount | str) -> dict[str, Any]:
        """Call ``signature`` on the token in a transaction from ``sender`` (see :meth:`send`); the receipt."""
        return self.send(call_data(signature, *args), sender=sender, to=self.token)

    def mint(self, to: str, amount: int) -> dict[str, Any]:
        """Mint ``amount`` base units of the token to ``to`` (from the deployer, the minter); the receipt."""
        return self.transact("mint(address,uint256)", to_checksum_address(to), amount, sender=self.deployer)

    def set_balance(self, address: str, wei: int) -> None:
        """Set the ether balance of ``address`` (``anvil_setBalance``), for gas."""
        self.rpc("anvil_setBalance", to_checksum_address(address), hex(wei))

    def new_payer(self, tokens: int = 0, *, wei: int = 0, permit2: bool = False) -> LocalAccount:
        """A fresh key (eth-account) holding ``tokens`` base units of the token and ``wei`` of ether;
        with ``permit2``, it has also approved Permit2 for any amount of the token (see :meth:`approve_permit2`)."""
        account = Account.create()
        if tokens:
            self.mint(account.address, tokens)
        if wei:
            self.set_balance(account.address, wei)
        if permit2:
            self.approve_permit2(account)
        return account

    def install_permit2(self) -> str:
        """Put Permit2's runtime code at its canonical address (``anvil_setCode``: no transaction,
        no deployer); the address. :func:`throwaway_chain` does it at start unless told not to."""
        self.rpc("anvil_setCode", PERMIT2_ADDRESS, permit2_artifact()["runtimeCode"])
        return PERMIT2_ADDRESS

    def approve_permit2(self, payer: LocalAccount, amount: int = _MAX_UINT256) -> dict[str, Any]:
        """``payer`` approves Permit2 for ``amount`` (any, by default) of the token, the one-time step a
        ``permit2`` credential needs; the payer is given the ether for that transaction's gas if it
        has none. The receipt."""
        if _quantity(self.rpc("eth_getBalance", payer.address, "latest")) == 0:
            self.set_balance(payer.address, 10**16)
        return self.transact("approve(address,uint256)", PERMIT2_ADDRESS, amount, sender=payer)

    def permit2_allowance(self, owner: str) -> int:
        """The token's ``allowance(owner, Permit2)``: how much Permit2 may move from ``owner``."""
        return self.read("allowance(address,address)", to_checksum_address(owner), PERMIT2_ADDRESS, returns=["uint256"])

    def deploy_token(self, name: str, version: str, symbol: str) -> str:
        """Deploy TestToken(name, version, symbol) from anvil's first dev account, which becomes its
        minter; remember and return its address."""
        artifact = token_artifact()
        args = eth_abi.encode(["string", "string", "string"], [name, version, symbol]).hex()
        self.deployer = to_checksum_address(self.rpc("eth_accounts")[0])
        receipt = self.send(artifact["bytecode"] + args, sender=self.deployer)
        address = receipt.get("contractAddress")
        if not address or self.rpc("eth_getCode", address, "latest") in ("0x", "0x0"):
            raise ChainUnavailable(f"the test token was not deployed: receipt {receipt}")
        self.token = to_checksum_address(address)
        self.token_name, self.token_version, self.token_symbol = name, version, symbol
        return self.token


def _wait_ready(process: subprocess.Popen, log: Path, chain_id: int, timeout: float) -> DevChain:
    """Wait for anvil's "Listening on" line (its own port: no other node's), then for eth_chainId."""
    deadline = time.monotonic() + timeout
    chain = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ChainUnavailable(f"anvil exited (code {process.returncode}) before it was ready; "
                                   f"its log's last lines:\n{_tail(log)}")
        if chain is None:
            found = _LISTENING.search(log.read_bytes()) if log.exists() else None
            if found:
                chain = DevChain(f"http://127.0.0.1:{int(found.group(1))}", chain_id, log=log)
        if chain is not None:
            try:
                answered = _quantity(chain.rpc("eth_chainId"))
            except (ChainUnavailable, RpcError):
                answered = None
            if answered is not None:
                if answered != chain_id:
                    raise ChainUnavailable(f"anvil answers chain id {answered}, not {chain_id}")
                return chain
        time.sleep(0.01)
    raise ChainUnavailable(f"anvil did not answer within {timeout:.0f} s; its log's last lines:\n{_tail(log)}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@contextmanager
def throwaway_chain(*, chain_id: int = CHAIN_ID, port: int = 0, token_name: str = "MPP Test USD",
                    token_version: str = "1", token_symbol: str = "tUSD", start_timeout: float = 30.0,
                    anvil: str | Path | None = None, permit2: bool = True) -> Iterator[DevChain]:
    """Start anvil on 127.0.0.1 (``port`` 0: a free one it picks), deploy the test token, put Permit2
    at its canonical address (unless ``permit2`` is False), and yield the DevChain; stop anvil
    (terminate, then kill) and delete its folder after, also on errors."""
    binary = Path(anvil) if anvil is not None else find_anvil()
    folder = Path(tempfile.mkdtemp(prefix="mpp-anvil-"))
    log = folder / "anvil.log"
    process = None
    try:
        with open(log, "wb") as out:
            try:
                process = subprocess.Popen(
                    [str(binary), "--host", "127.0.0.1", "--port", str(port), "--chain-id", str(chain_id),
                     "--accounts", "2"], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=folder)
            except OSError as exc:
                raise ChainUnavailable(f"anvil at {binary} could not be run: {exc}; " + _INSTALL) from exc
        chain = _wait_ready(process, log, chain_id, start_timeout)
        try:
            chain.deploy_token(token_name, token_version, token_symbol)
            if permit2:
                chain.install_permit2()
        except (RpcError, TransactionFailed) as exc:
            raise ChainUnavailable(f"the test token could not be deployed: {exc}; anvil's log's last lines:\n"
                                   f"{_tail(log)}") from exc
        yield chain
    finally:
        if process is not None:
            _stop(process)
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m mpp.methods.evm.devchain``: start a throwaway chain, print its RPC URL (first
    line) and token, and keep it until Ctrl-C or SIGTERM; exit 1 if it cannot start."""
    parser = argparse.ArgumentParser(
        prog="python -m mpp.methods.evm.devchain",
        description="Start a throwaway local EVM chain (Foundry's anvil on 127.0.0.1) with the test token "
                    "(an ERC-20 with EIP-3009) deployed, print its RPC URL and the token, and keep it until "
                    "interrupted (Ctrl-C or SIGTERM); then stop it.")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
    parser.add_argument("--chain-id", type=int, default=CHAIN_ID, help=f"chain id (default {CHAIN_ID})")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with throwaway_chain(port=args.port, chain_id=args.chain_id) as chain:
            print(chain.rpc_url, flush=True)
            print(f"chain id {chain.chain_id}; token {chain.token} ({chain.token_symbol}, {DECIMALS} decimals; EIP-712 "
                  f"name {chain.token_name!r}, version {chain.token_version!r}); minter {chain.deployer} (unlocked)",
                  flush=True)
            print(f"Permit2 at {PERMIT2_ADDRESS} (Uniswap's, from contracts/Permit2.json)", flush=True)
            while not stop.wait(0.5):
                pass
    except ChainUnavailable as exc:
        print(f"mpp.methods.evm.devchain: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
