"""Compile the test token (mpp/methods/evm/contracts/TestToken.sol) into TestToken.json.

    python tools/build_token.py            # rebuild TestToken.json after editing TestToken.sol
    python tools/build_token.py --check    # rebuild in memory; exit 1 if TestToken.json differs

The JSON is checked in, so neither the tests nor the demo need a compiler: they deploy its
``bytecode`` on the throwaway chain (mpp/methods/evm/devchain.py). It records the compiler's
version and the SHA-256 of the source it was built from; tests/test_devchain.py fails when the
source no longer matches, so an edit without a rebuild is noticed.

The compiler is solc-js (the ``solc`` npm package, pinned below), installed with npm into a
temporary folder and run with node; both must be on PATH. The build is reproducible: the same
source and settings give the same bytecode (its metadata hash included), which ``--check`` uses.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from artifact_file import write_or_check

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = ROOT / "mpp" / "methods" / "evm" / "contracts"
SOURCE = CONTRACTS / "TestToken.sol"
OUTPUT = CONTRACTS / "TestToken.json"
CONTRACT = "TestToken"
SOLC_VERSION = "0.8.30"  # the `solc` npm package (solc-js), exact
SETTINGS = {
    "optimizer": {"enabled": True, "runs": 200},
    # The oldest fork the contract needs; anvil's default (latest) runs it, and so would any chain since 2024.
    "evmVersion": "cancun",
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}},
}

# Reads the standard JSON input on stdin, writes solc's standard JSON output and the version.
COMPILE_JS = """
const solc = require('solc');
let input = '';
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  process.stdout.write(JSON.stringify({version: solc.version(), output: JSON.parse(solc.compile(input))}));
});
"""


def _run(cmd: list[str], cwd: Path, stdin: str | None = None) -> str:
    result = subprocess.run(cmd, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        sys.exit(f"build_token: {' '.join(cmd)} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def compile_token() -> dict:
    """Compile TestToken.sol with solc-js SOLC_VERSION and return what TestToken.json holds."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            sys.exit(f"build_token: `{tool}` is not on PATH (install Node.js 20 or newer)")
    source = SOURCE.read_text(encoding="utf-8")
    standard_input = {"language": "Solidity", "sources": {SOURCE.name: {"content": source}}, "settings": SETTINGS}
    with tempfile.TemporaryDirectory(prefix="mpp-solc-") as tmp:
        work = Path(tmp)
        (work / "package.json").write_text('{"private": true}\n')
        _run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", f"solc@{SOLC_VERSION}"], work)
        (work / "compile.js").write_text(COMPILE_JS)
        result = json.loads(_run(["node", "compile.js"], work, stdin=json.dumps(standard_input)))
    output = result["output"]
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    warnings = [e for e in output.get("errors", []) if e.get("severity") != "error"]
    for warning in warnings:
        print(warning.get("formattedMessage", warning.get("message")), file=sys.stderr)
    if errors:
        sys.exit("build_token: solc refused the source:\n" + "\n".join(e.get("formattedMessage", e["message"]) for e in errors))
    if not result["version"].startswith(SOLC_VERSION + "+"):
        sys.exit(f"build_token: npm gave solc {result['version']}, not {SOLC_VERSION}")
    contract = output["contracts"][SOURCE.name][CONTRACT]
    return {
        "contractName": CONTRACT,
        "source": f"{SOURCE.relative_to(ROOT).as_posix()}",
        "sourceSha256": hashlib.sha256(SOURCE.read_bytes()).hexdigest(),
        "compiler": f"solc-js {result['version']}",
        "settings": {k: v for k, v in SETTINGS.items() if k != "outputSelection"},
        "abi": contract["abi"],
        "bytecode": "0x" + contract["evm"]["bytecode"]["object"],
    }


def render(artifact: dict) -> str:
    """The JSON text written to TestToken.json: stable key order, one ABI entry per line."""
    head = {k: v for k, v in artifact.items() if k != "abi"}
    lines = ["{"]
    for key, value in head.items():
        lines.append(f"  {json.dumps(key)}: {json.dumps(value, sort_keys=True)},")
    lines.append('  "abi": [')
    entries = [json.dumps(entry, sort_keys=True) for entry in artifact["abi"]]
    lines += [f"    {entry}," for entry in entries[:-1]] + [f"    {entries[-1]}"]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compile, and exit 1 if TestToken.json differs from the result")
    args = parser.parse_args(argv)
    return write_or_check(OUTPUT, render(compile_token()), check=args.check, root=ROOT, rebuild="python tools/build_token.py")


if __name__ == "__main__":
    sys.exit(main())
