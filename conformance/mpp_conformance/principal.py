"""The suite's test identities for the identity profile.

`mpp-conformance principal DIR` writes four Ed25519 keys (PKCS#8 PEM, owner-readable only):

- ``principal.key``: the principal the target is asked to trust; it signs the suite's root
  mandates and approvals;
- ``agent.key``: the agent those mandates are issued to (it signs payloads and proofs);
- ``other-agent.key``: a second agent (a sub-agent in delegation checks, a thief in others);
- ``untrusted.key``: a principal the target must not trust.

Only the principal has to be registered at the target (IDENT-KEY-03); the agents are named by
the mandates. Existing keys are kept, so re-running the command never invalidates a
registration. Without ``--identity-keys DIR`` the checks use throwaway keys, and every check
whose refusal comes after the trust check of the chain (IDENT-DLG-05) is skipped.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from mpp import SigningKey

__all__ = ["KEY_FILES", "SuiteKeys", "create_keys", "load_keys", "ephemeral_keys", "keys_for", "register_hint", "cmd_principal"]

KEY_FILES = {"principal": "principal.key", "agent": "agent.key", "other_agent": "other-agent.key", "untrusted": "untrusted.key"}


def register_hint(did: str) -> str:
    return (f"register this principal as trusted on the target (for `mpp seller serve`: --trust-principal {did}, "
            f"or trusted_principals in seller.toml)")


@dataclass(frozen=True)
class SuiteKeys:
    principal: SigningKey
    agent: SigningKey
    other_agent: SigningKey
    untrusted: SigningKey
    generated: bool  # True: throwaway keys no target can trust
    source: str = ""  # the directory they came from


def create_keys(directory: str | Path) -> tuple[SuiteKeys, list[str]]:
    """Create the missing key files in ``directory`` (kept if present); return the keys and the
    names of the files written."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for filename in KEY_FILES.values():
        path = root / filename
        if not path.exists():
            SigningKey.generate().save(path)
            written.append(filename)
    return load_keys(root), written


def load_keys(directory: str | Path) -> SuiteKeys:
    root = Path(directory)
    missing = [name for name in KEY_FILES.values() if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{root}: missing {', '.join(missing)}; create them with `mpp-conformance principal {root}`")
    keys = {attr: SigningKey.load(root / filename) for attr, filename in KEY_FILES.items()}
    return SuiteKeys(**keys, generated=False, source=str(root))


def ephemeral_keys() -> SuiteKeys:
    return SuiteKeys(*(SigningKey.generate() for _ in KEY_FILES), generated=True)


def keys_for(options: dict) -> SuiteKeys:
    """The keys of ``options["identity_keys"]`` (a directory), or throwaway ones."""
    directory = options.get("identity_keys")
    return load_keys(directory) if directory else ephemeral_keys()


def cmd_principal(args: argparse.Namespace) -> int:
    keys, written = create_keys(args.dir)
    for name in KEY_FILES.values():
        print(f"  {Path(args.dir) / name}{'  (created)' if name in written else '  (kept)'}")
    print(f"principal: {keys.principal.did}")
    print(register_hint(keys.principal.did))
    print(f"then run: mpp-conformance seller URL --profile identity --identity-keys {args.dir}")
    return 0
