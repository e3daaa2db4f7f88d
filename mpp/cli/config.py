"""Files on disk: the seller's configuration (TOML), the agent's wallet, and `mpp init`."""

from __future__ import annotations

import json
import os
import secrets
import tomllib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mpp.buyer.core import BuyerPolicy
from mpp.identity import issue_mandate
from mpp.protocol.keys import SecretFileRefused, SigningKey, public_key_from_did, write_secret
from mpp.protocol.receipts import jwks_document
from mpp.ledger import SqliteLedger
from mpp.protocol.models import CURRENCY
from mpp.pricing.prices import Metered, Price

__all__ = [
    "ConfigError",
    "RouteConfig",
    "EvmTokenConfig",
    "EvmConfig",
    "SellerConfig",
    "Wallet",
    "load_seller_config",
    "load_wallet",
    "load_chain",
    "save_chain",
    "init_home",
    "read_secret",
]

SELLER_ACCOUNT = "acct:seller"
BUYER_ACCOUNT = "acct:buyer"


class ConfigError(Exception):
    """A configuration or wallet file is missing or wrong; the message says which and why."""


class RouteConfig(BaseModel):
    """One ``[[routes]]`` entry of seller.toml: a method and path, its price (per request, or per ``per``
    units of ``unit`` through a session) and the stand-in JSON ``response`` the seller serves."""

    model_config = ConfigDict(extra="forbid")

    method: str = "GET"
    path: str
    amount: int = Field(gt=0, le=2**63 - 1)
    currency: str = "usd"
    description: str | None = None
    response: dict[str, Any] | None = None
    require_identity: bool = False
    # Per-unit pricing (intent session): `amount` is then the price of `per` units of `unit`.
    unit: str | None = None
    per: int = Field(default=1, gt=0, le=2**63 - 1)
    max_units: int = Field(default=1, gt=0, le=2**63 - 1)
    stream: bool = False
    idle_timeout: int = Field(default=300, gt=0, le=86400 * 30)

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        v = v.upper()
        if v not in {"GET", "POST", "PUT", "PATCH", "DELETE"}:
            raise ValueError("method must be GET, POST, PUT, PATCH or DELETE")
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("path must start with '/'")
        return v

    @field_validator("currency")
    @classmethod
    def _currency(cls, v: str) -> str:
        if CURRENCY.fullmatch(v) is None:
            raise ValueError("currency must be a lowercase code such as 'usd' (a-z then a-z/0-9, at most 32)")
        return v

    @property
    def price(self) -> Price | Metered:
        """The route's price as the engine takes it: a Metered (``amount`` base units per ``per`` units of
        ``unit``, paid through a session) when ``unit`` is set, else a Price per request."""
        if self.unit is not None:
            return Metered(self.unit, self.amount, self.currency, self.per, self.max_units, self.description,
                           self.require_identity, self.stream, idle_timeout=self.idle_timeout)
        return Price(self.amount, self.currency, self.description, self.require_identity)


class EvmTokenConfig(BaseModel):
    """One ``[[evm.tokens]]`` entry: an ERC-20 token the seller takes, its EIP-712 domain (``name``,
    ``version``), its ``decimals``, and the ``currency`` code prices name it by (omitted: prices name
    it by its address only)."""

    model_config = ConfigDict(extra="forbid")

    currency: str | None = None
    address: str
    name: str
    version: str
    decimals: int = Field(default=6, ge=0, le=77)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if not (len(v) == 42 and v.startswith("0x") and all(c in "0123456789abcdefABCDEF" for c in v[2:])):
            raise ValueError("address must be a 0x-prefixed 20-byte hex address")
        return v

    @field_validator("currency")
    @classmethod
    def _code(cls, v: str | None) -> str | None:
        if v is not None and CURRENCY.fullmatch(v) is None:
            raise ValueError("currency must be a lowercase code such as 'usd' (a-z then a-z/0-9, at most 32)")
        return v


class EvmConfig(BaseModel):
    """seller.toml's ``[evm]`` table: take ``evm`` payments (spec/methods/evm-seller.md) through the
    node at ``rpc_url`` on ``chain_id``, to the address of the key in ``key_file`` (relative to
    seller.toml), keeping replay keys, pending transactions and refunds in ``store`` (default evm.db
    beside the payment store), in the ``tokens`` listed."""

    model_config = ConfigDict(extra="forbid")

    rpc_url: str
    chain_id: int = Field(gt=0)
    key_file: Path
    store: str | None = None
    credential_types: list[str] = ["authorization", "transaction"]
    bindings: list[str] = ["draft"]
    tokens: list[EvmTokenConfig] = Field(min_length=1)

    @field_validator("rpc_url")
    @classmethod
    def _rpc_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("rpc_url must be an http:// or https:// URL")
        return v

    @field_validator("credential_types")
    @classmethod
    def _kinds(cls, v: list[str]) -> list[str]:
        known = ("authorization", "permit2", "transaction", "hash")
        if not v or any(k not in known for k in v):
            raise ValueError(f"credential_types must be a non-empty list of {', '.join(known)}")
        return v

    @field_validator("bindings")
    @classmethod
    def _bindings(cls, v: list[str]) -> list[str]:
        if not v or any(b not in ("draft", "json") for b in v):
            raise ValueError("bindings must be a non-empty list of draft, json")
        return v

    @field_validator("store")
    @classmethod
    def _store(cls, v: str | None) -> str | None:
        if v is not None:
            from mpp.connect import check_location

            check_location(v)
        return v


class SellerConfig(BaseModel):
    """seller.toml: the seller's realm, keys, ledger, stores and routes. Unknown keys are refused;
    relative paths are read against the file's directory."""

    model_config = ConfigDict(extra="forbid")

    realm: str
    secret_file: Path
    receipt_key: Path
    ledger: str | None = None  # the embedded ledger: a SQLite file or postgresql:// URL; or, instead, a ledger service:
    create_ledger: bool = False  # a SQLite `ledger` file that does not exist is made (with the recipient account), not refused
    ledger_url: str | None = None  # `mpp ledger serve` at http(s)://host:port
    ledger_key: Path | None = None  # the seller's key that signs its requests to the ledger service
    store: str
    recipient: str = SELLER_ACCOUNT
    challenge_ttl: int = Field(default=300, gt=0, le=86400)
    trusted_principals: list[str] = []
    max_chain_depth: int = Field(default=3, ge=0, le=16)
    audit_log: str | None = None  # the seller's audit log: a SQLite file or postgresql:// URL
    sessions: str | None = None  # the session store; default: sessions.db beside the payment store
    pricing: str | None = None  # task states and seat periods; default: pricing.db beside the payment store
    price_list: Path | None = None  # spec/pricing.md: a price list file (relative to this file), instead of [[routes]]
    routes: list[RouteConfig] = []
    evm: EvmConfig | None = None  # take `evm` payments on an EVM chain too (or only: then no ledger is needed)

    @model_validator(mode="after")
    def _some_prices(self) -> "SellerConfig":
        if not self.routes and self.price_list is None:
            raise ValueError("name a price list (price_list = \"prices.toml\") or give at least one [[routes]] table")
        return self

    @model_validator(mode="after")
    def _one_ledger(self) -> "SellerConfig":
        if self.ledger is None and self.ledger_url is None and self.evm is not None:
            return self  # an evm-only seller
        if (self.ledger is None) == (self.ledger_url is None):
            raise ValueError("set exactly one of ledger (an embedded ledger: a file or postgresql:// URL) and ledger_url (a ledger service), "
                             "or neither with an [evm] table")
        if self.ledger_url is not None:
            if self.ledger_key is None:
                raise ValueError("ledger_url needs ledger_key: the seller's key registered with the ledger service")
            if not self.ledger_url.startswith(("http://", "https://")):
                raise ValueError("ledger_url must be an http:// or https:// URL")
        return self

    @field_validator("trusted_principals")
    @classmethod
    def _dids(cls, v: list[str]) -> list[str]:
        for did in v:
            try:
                public_key_from_did(did)
            except ValueError as exc:  # ParseError included: name the entry, and what it should be
                raise ValueError(f"entry {did!r} is not an Ed25519 did:key (did:key:z6Mk...): {exc}; "
                                 f"use the DID `mpp init` or `mpp principal init` printed") from None
        return v
    base_dir: Path = Path(".")

    def resolve(self, p: Path | str) -> str:
        """``p`` as a path string; a relative one is read against the directory seller.toml is in
        (``base_dir``)."""
        p = Path(p)
        return str(p if p.is_absolute() else self.base_dir / p)

    @field_validator("store", "sessions", "ledger", "audit_log", "pricing")
    @classmethod
    def _store_location(cls, v: str | None) -> str | None:
        if v is not None:
            from mpp.connect import check_location

            check_location(v)  # a path, sqlite:///path or postgresql://...; anything else is named
        return v

    def locate(self, location: str) -> str:
        """A store location as the stores take it: URLs unchanged, paths relative to this file."""
        return locate_store(self.base_dir, location)

    @property
    def pricing_location(self) -> str:
        """The pricing store (task states, seat periods): ``pricing``, else the payment store's
        PostgreSQL database, else pricing.db beside the payment store's file."""
        if self.pricing:
            return self.locate(self.pricing)
        store = self.locate(self.store)
        if "://" in store and not store.startswith("sqlite:"):
            return store
        from mpp.stores.sqlite import sqlite_path

        return str(Path(sqlite_path(store)).with_name("pricing.db"))

    @property
    def evm_store_location(self) -> str:
        """The evm rail's store (replay keys, pending transactions, refunds): ``[evm] store``, else the
        payment store's PostgreSQL database, else evm.db beside the payment store's file."""
        if self.evm is not None and self.evm.store:
            return self.locate(self.evm.store)
        store = self.locate(self.store)
        if "://" in store and not store.startswith("sqlite:"):
            return store
        from mpp.stores.sqlite import sqlite_path

        return str(Path(sqlite_path(store)).with_name("evm.db"))

    @property
    def sessions_location(self) -> str:
        """The session store: ``sessions``, else the payment store's PostgreSQL database, else
        sessions.db beside the payment store's file."""
        if self.sessions:
            return self.locate(self.sessions)
        store = self.locate(self.store)
        if "://" in store and not store.startswith("sqlite:"):
            return store
        from mpp.stores.sqlite import sqlite_path

        return str(Path(sqlite_path(store)).with_name("sessions.db"))


def locate_store(base_dir: Path, location: str) -> str:
    """A store location as the stores take it: URLs unchanged, paths (and ``sqlite:relative``)
    relative to ``base_dir``."""
    if "://" in location:
        return location
    if location.startswith("sqlite:"):
        location = location[len("sqlite:"):]
    path = Path(location)
    return str(path if path.is_absolute() else base_dir / path)


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"]) or "(top level)"
        lines.append(f"{where}: {err['msg']}")
    return "; ".join(lines)  # one line: the CLI reports errors as a single `mpp: ...` line


def load_seller_config(path: str | os.PathLike[str]) -> SellerConfig:
    """The seller configuration at ``path``. Raises ConfigError naming the file and what is wrong."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (create one with `mpp init DIR`)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return SellerConfig.model_validate({**raw, "base_dir": path.parent.resolve()})
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid seller configuration: {_describe(exc)}") from None


def read_secret(path: str | os.PathLike[str]) -> bytes:
    """The HMAC secret is stored hex-encoded; under 32 bytes is refused."""
    try:
        text = Path(path).read_text(encoding="ascii").strip()
        secret = bytes.fromhex(text)
    except FileNotFoundError:
        raise ConfigError(f"{path}: secret file not found") from None
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"{path}: secret file must hold hex-encoded bytes") from None
    if len(secret) < 32:
        raise ConfigError(f"{path}: secret must be at least 32 bytes, found {len(secret)}")
    return secret


@dataclass(frozen=True)
class Wallet:
    """An agent's wallet directory as `mpp agent init` writes it (wallet.json and agent.key): the
    key, the ledger account it pays from, its buyer policy and, under a mandate, the chain and where
    its budget counters and audit log live. Read with :func:`load_wallet`."""

    key: SigningKey
    account: str
    policy: BuyerPolicy
    mandates: list[str] | None = None  # the chain, root first, if this agent buys under a mandate
    budget_path: str | None = None  # the budget counters: a SQLite file or postgresql:// URL (mpp.connect.budget_store_for)
    audit_path: str | None = None  # the audit log: likewise (mpp.connect.audit_log_for)


def load_chain(path: str | os.PathLike[str]) -> list[str]:
    """A mandate chain file: {"mandates": [root JWT, ..., leaf JWT]}."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such mandate file") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    chain = doc.get("mandates") if isinstance(doc, dict) else None
    if not isinstance(chain, list) or not chain or not all(isinstance(t, str) for t in chain):
        raise ConfigError(f"{path}: expected {{\"mandates\": [JWT, ...]}} with at least one mandate")
    return chain


def save_chain(path: str | os.PathLike[str], chain: list[str]) -> None:
    """Write a mandate chain to ``path`` in the form :func:`load_chain` reads: ``{"mandates": [JWT, ...]}``."""
    Path(path).write_text(json.dumps({"mandates": chain}, indent=2) + "\n", encoding="utf-8")


def load_wallet(directory: str | os.PathLike[str], *, max_amount: int | None = None) -> Wallet:
    """The agent's wallet in ``directory`` (wallet.json, its key, its mandates and stores);
    ``max_amount`` overrides the wallet's own limit. Raises ConfigError naming the file and what is wrong."""
    directory = Path(directory)
    if directory.name == "wallet.json" and directory.is_file():  # the file itself: its folder is the wallet
        directory = directory.parent
    meta_path = directory / "wallet.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(_no_wallet(directory, meta_path)) from None
    except NotADirectoryError:
        raise ConfigError(f"{directory}: a wallet is a directory (the one holding wallet.json), not a file") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{meta_path}: not valid JSON: {exc}") from None
    try:
        key = SigningKey.load(directory / meta.get("key", "agent.key"))
        account = str(meta["account"])
        limit = int(meta.get("max_amount", 0)) if max_amount is None else max_amount
        currencies = meta.get("currencies")
        recipients = meta.get("recipients")
    except FileNotFoundError as exc:
        raise ConfigError(f"{directory}: agent key missing: {exc.filename}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{meta_path}: invalid wallet: {exc}") from None
    if limit < 0:
        raise ConfigError("--max-amount must not be negative")
    policy = BuyerPolicy(
        max_amount=limit,
        currencies=frozenset(currencies) if currencies else None,
        recipients=frozenset(recipients) if recipients else None,
    )
    mandates = load_chain(directory / meta["mandates"]) if meta.get("mandates") else None
    budget, audit = (_wallet_store(directory, meta_path, meta, name) for name in ("budget", "audit"))
    return Wallet(key, account, policy, mandates, budget, audit)


def _no_wallet(directory: Path, meta_path: Path) -> str:
    """Why there is no wallet at ``directory``, and which path to pass instead."""
    if (directory / "agent" / "wallet.json").is_file():  # an `mpp init` home, not its agent's folder
        return f"{directory} is an MPP home, not a wallet: use --wallet {directory / 'agent'}"
    return f"{meta_path}: no wallet here (create one with `mpp init DIR`, then pass --wallet DIR/agent)"


def _wallet_store(directory: Path, meta_path: Path, meta: dict[str, Any], name: str) -> str | None:
    """The wallet's budget counters or audit log: a file beside wallet.json, or a postgresql:// URL."""
    if not meta.get(name):
        return None
    from mpp.connect import check_location

    try:
        return check_location(locate_store(directory, str(meta[name])))
    except ValueError as exc:
        raise ConfigError(f"{meta_path}: invalid wallet: {name}: {exc}") from None


DEFAULT_ROUTES = [
    {"method": "GET", "path": "/weather", "amount": 25, "currency": "usd", "description": "Current weather for one city",
     "response": {"city": "Lisbon", "temperature_c": 19, "sky": "clear"}},
    {"method": "GET", "path": "/quote", "amount": 100, "currency": "usd", "description": "A stock quote",
     "response": {"symbol": "ACME", "price": "123.45"}},
    {"method": "POST", "path": "/summarize", "amount": 250, "currency": "usd", "description": "Summarize a document"},
    {"method": "GET", "path": "/premium-report", "amount": 5000, "currency": "usd", "description": "An expensive report",
     "response": {"report": "..."}},
    {"method": "GET", "path": "/agent-report", "amount": 150, "currency": "usd", "require_identity": True,
     "description": "Sold only to agents with a mandate", "response": {"report": "attributed"}},
    {"method": "GET", "path": "/big-report", "amount": 750, "currency": "usd", "require_identity": True,
     "description": "Above the approval threshold of the mandate `mpp init` issues (500): needs the principal's approval",
     "response": {"report": "approved"}},
    {"method": "GET", "path": "/complete", "amount": 2, "currency": "usd", "unit": "token", "per": 1000,
     "max_units": 4000, "description": "A completion, 2 per 1000 tokens (?units=N tokens)"},
    {"method": "GET", "path": "/stream", "amount": 2, "currency": "usd", "unit": "token", "per": 1000,
     "max_units": 4000, "stream": True, "description": "A streamed completion, 2 per 1000 tokens (?chunks=N&units=N)"},
]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


HOME_SECRETS = ("principal/principal.key", "agent/agent.key", "seller/receipt.key", "seller/hmac.secret")


def init_home(directory: str | os.PathLike[str], *, funding: int = 100_000, realm: str = "mpp.local", max_amount: int = 1_000,
              force: bool = False) -> dict[str, Any]:
    """Create an agent key, a funded payer account and a seller configuration under ``directory``.

    A home that is initialised already, or holds any of its keys or secret, is left untouched
    unless ``force``: then new keys and a new secret replace the old ones (IDENT-KEY-07)."""
    home = Path(directory)
    links = [name for name in HOME_SECRETS if (home / name).is_symlink()]
    if links:  # refused before anything is written, so a planted link never leaves half a home
        raise SecretFileRefused(f"{home}: refusing to write a key or secret through a symbolic link: {', '.join(links)}")
    if not force:
        found = [name for name in ("seller.toml", "agent/wallet.json", *HOME_SECRETS) if os.path.lexists(home / name)]
        if found:
            raise ConfigError(f"{home}: already initialised ({', '.join(found)} exist); nothing was changed "
                              f"(pass --force to replace its keys and secret, or pick another directory)")
    for sub in ("agent", "seller", "principal"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    principal = SigningKey.generate()
    principal.save(home / "principal" / "principal.key", force=force)
    (home / "principal" / "jwks.json").write_text(json.dumps(jwks_document([principal]), indent=2) + "\n")
    agent = SigningKey.generate()
    agent.save(home / "agent" / "agent.key", force=force)
    now = datetime.now(timezone.utc)
    root = issue_mandate(
        principal, subject=agent.did, audience=[realm], scope=["*"], currency="usd", ceiling=max_amount,
        budget_amount=50_000, budget_period="day", approval_threshold=max_amount // 2, max_depth=2,
        not_before=now - timedelta(minutes=5), expires=now + timedelta(days=30),
    )
    save_chain(home / "agent" / "mandate.json", [root])
    (home / "agent" / "wallet.json").write_text(
        json.dumps({"key": "agent.key", "account": BUYER_ACCOUNT, "did": agent.did, "max_amount": max_amount, "currencies": ["usd"],
                    "mandates": "mandate.json", "budget": "budget.db", "audit": "audit.db"}, indent=2) + "\n"
    )
    receipt_key = SigningKey.generate()
    receipt_key.save(home / "seller" / "receipt.key", force=force)
    write_secret(home / "seller" / "hmac.secret", (secrets.token_hex(32) + "\n").encode("ascii"), force=force)
    ledger = SqliteLedger(str(home / "ledger.db"))
    try:
        funded = any(a.id == BUYER_ACCOUNT for a in ledger.accounts())  # re-initialised (--force): keep its balances
        ledger.create_account(SELLER_ACCOUNT, "usd")
        # LEDGER-ACCT-01: the principal owns the account; its agent spends from it only under the mandate
        ledger.create_account(BUYER_ACCOUNT, "usd", owner=principal.did)
        ledger.keys.allow(BUYER_ACCOUNT, agent.did, "agent")
        if not funded:
            ledger.fund(BUYER_ACCOUNT, funding, reference="initial-funding")
    finally:
        ledger.close()
    lines = [
        "# MPP seller configuration (written by `mpp init`). Paths are relative to this file.",
        f"realm = {json.dumps(realm)}",
        'secret_file = "seller/hmac.secret"',
        'receipt_key = "seller/receipt.key"',
        'ledger = "ledger.db"',
        # the payment records and the audit log in the ledger's own file: one transaction per purchase
        'store = "ledger.db"',
        f"recipient = {json.dumps(SELLER_ACCOUNT)}",
        "challenge_ttl = 300",
        f"trusted_principals = [{json.dumps(principal.did)}]",
        'audit_log = "ledger.db"',
        "",
    ]
    for route in DEFAULT_ROUTES:
        lines.append("[[routes]]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in route.items())
        lines.append("")
    (home / "seller.toml").write_text("\n".join(lines))
    return {"seller_config": str(home / "seller.toml"), "wallet": str(home / "agent"), "ledger": str(home / "ledger.db"),
            "agent_did": agent.did, "principal_did": principal.did, "principal_key": str(home / "principal" / "principal.key"),
            "funded": not funded, "receipt_did": receipt_key.did, "approval_threshold": max_amount // 2}
