"""Ledger records and refusals, shared by every ledger backend."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable, Mapping, Sequence

from mpp.protocol.errors import MPPError
from mpp.protocol.keys import public_key_from_did

__all__ = ["ROLES", "check_parties", "check_spender", "check_member", "check_account_id", "RESERVED_PREFIXES", "keeps_an_owner", "verified_links", "OverMandate", "MandateRequired", "MandateCharge", "MandateRevokedError", "BudgetExhausted", "Account", "Transfer", "LedgerError", "InsufficientFunds", "UnknownAccount", "UnknownPayee", "WrongCurrency", "UnauthorizedSigner", "TransferConflict", "issuance_account",
           "holding_account", "SessionHold", "SessionClose", "UnknownSession", "SessionNotOpen", "CapSignatureInvalid", "CaptureRefused",
           "AuthorizationInvalid"]


def issuance_account(currency: str) -> str:
    """Where value enters the ledger: funding debits it, so it runs negative by what was issued."""
    return f"issuance:{currency}"


def holding_account(currency: str) -> str:
    """Where session caps wait between open and close: its balance is the sum of open sessions' caps."""
    return f"holds:{currency}"


@dataclass(frozen=True)
class Account:
    """A ledger account and its balance in base units; ``kind`` is ``asset`` (may not go below zero)
    or ``issuance`` (the ledger's own source of funds)."""

    id: str
    currency: str
    balance: int
    kind: str  # "asset" (may not go below zero) or "issuance"


@dataclass(frozen=True)
class Transfer:
    """One balanced transfer between two accounts, in base units: a charge, fund or refund, or a
    session's hold, capture or release; ``signer`` is the DID whose signature moved the money."""

    id: str
    payer: str
    payee: str
    amount: int
    currency: str
    kind: str  # "charge", "fund", "refund"; sessions: "hold", "capture", "release"
    created_at: str
    signer: str | None = None


class LedgerError(MPPError):
    """The ledger refused an operation; nothing was changed."""


class UnknownAccount(LedgerError):
    """The operation names an account the ledger does not have."""

    pass


class UnknownPayee(UnknownAccount):
    """The payee (a seller's recipient) is not on the ledger, or holds another currency: the
    seller's configuration is at fault, not the payer (CORE-ERR-14)."""


class WrongCurrency(UnknownAccount):
    """The payer account holds another currency than the one the transfer is in."""


class InsufficientFunds(LedgerError):
    """The payer's balance does not cover the amount."""

    pass


class UnauthorizedSigner(LedgerError):
    """The key that signed the authorization may not spend from the payer account."""


class MandateRequired(UnauthorizedSigner):
    """The key is enrolled as one of the payer account's agents: it spends only under a mandate
    chain rooted in one of the account's owners, never on its own signature (LEDGER-ACCT-03)."""


class OverMandate(LedgerError):
    """The transfer is outside what the mandate chain itself allows: an amount above a link's
    ceiling, or a currency other than the mandate's (LEDGER-ACCT-07); or, in a seller's book
    (mpp.ledger.book), the seller's own share of a link's budget (IDENT-BUD-04). ``rule`` says which."""

    def __init__(self, detail: str = "", rule: str = "ceiling") -> None:
        super().__init__(detail)
        self.rule = rule if rule in ("ceiling", "currency", "budget") else "ceiling"


class MandateRevokedError(LedgerError):
    """A link of the mandate chain has been revoked."""


class BudgetExhausted(LedgerError):
    """The transfer would take a mandate past its budget for the period."""


ROLES = ("owner", "agent", "denied")
"""What a DID may do with an account (LEDGER-ACCT-01): an owner spends on its own signature and roots
mandate chains that spend from it; an agent spends only under such a chain; a denied DID spends nothing,
whatever chain it appears in."""


def check_parties(currencies: Mapping[str, str], payer: str, payee: str, currency: str) -> None:
    """Both accounts of a transfer exist and hold ``currency`` (``currencies``: account id -> its
    currency, for those found). The payee is judged first: on a ledger that lacks the seller's own
    account (a mistyped or empty ledger) the fault is the seller's, whoever pays (CORE-ERR-14)."""
    if payee not in currencies:
        raise UnknownPayee(f"no payee account {payee!r} on this ledger")
    if currencies[payee] != currency:
        raise UnknownPayee(f"payee account {payee!r} holds {currencies[payee]!r}, not {currency!r}")
    if payer not in currencies:
        raise UnknownAccount(f"no payer account {payer!r} on this ledger")
    if currencies[payer] != currency:
        raise WrongCurrency(f"payer account {payer!r} holds {currencies[payer]!r}, not {currency!r}")


def check_spender(roles: Mapping[str, str], *, signer: str | None, chain: Sequence[str] | None) -> None:
    """May ``signer`` spend from an account whose members have ``roles`` (role by DID; DIDs not
    in it are strangers)? ``chain`` is None for a bare authorization, else the DIDs of a verified
    mandate chain: its principal first, every link's subject after it, the leaf (the signer) last.
    Raises MandateRequired or UnauthorizedSigner; returns nothing when the spend is allowed."""
    if chain is None:
        if signer is None:
            return  # an operator's transfer, made through the ledger's own API, not by a peer
        role = roles.get(signer)
        if role == "owner":
            return
        if role == "agent":
            raise MandateRequired("this key is one of the account's agents: it spends only under a mandate "
                                  "chain rooted in one of the account's owners")
        raise UnauthorizedSigner("signer may not spend from the payer account")
    if any(roles.get(did) == "denied" for did in chain):
        raise UnauthorizedSigner("a key in the mandate chain is denied on the payer account")
    if not chain or roles.get(chain[0]) != "owner":
        raise UnauthorizedSigner("the mandate chain's principal does not own the payer account")
    if signer is not None and chain[-1] != signer:
        raise UnauthorizedSigner("the payment signer is not the mandate chain's last subject")


def check_member(did: str, role: str) -> None:
    """ValueError unless ``role`` is one of ROLES and ``did`` an Ed25519 did:key."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    public_key_from_did(did)  # ParseError, a ValueError, names what is wrong with it


_CURRENCY = re.compile(r"[a-z][a-z0-9]{0,31}")
RESERVED_PREFIXES = ("issuance:", "holds:")
"""The ledger's own accounts (issuance_account, holding_account)"""


def check_account_id(account_id: str, currency: str) -> None:
    """ValueError unless ``account_id`` is 1 to 128 printable characters, without surrounding
    spaces, outside the ledger's reserved names, and ``currency`` a lowercase currency code."""
    if (not isinstance(account_id, str) or not 0 < len(account_id) <= 128 or not account_id.isprintable()
            or account_id != account_id.strip()):
        raise ValueError("an account id is 1 to 128 printable characters, without surrounding spaces")
    if account_id.startswith(RESERVED_PREFIXES):
        raise ValueError(f"{account_id!r}: ids beginning {' or '.join(RESERVED_PREFIXES)} are the ledger's own accounts")
    if not isinstance(currency, str) or _CURRENCY.fullmatch(currency) is None:
        raise ValueError(f"currency must be a lowercase code (a letter, then up to 31 letters or digits), not {currency!r}")


def keeps_an_owner(account_id: str, owners: set[str], did: str, role: str) -> None:
    """ValueError if giving ``did`` ``role`` would leave an owned account with no owner: nobody
    could then enrol anyone over the service, nor root a mandate that spends from it."""
    if role != "owner" and owners == {did}:
        raise ValueError(f"{did} is the only owner of {account_id!r}: make another DID an owner first")


def verified_links(owners: Iterable[str], signer: str | None, mandate: "MandateCharge", *, currency: str,
                   amount: int | None, now: datetime | None = None) -> tuple[tuple[str, ...], list[tuple[str, str, int]]]:
    """Verify a mandate chain as a ledger does (IDENT-BUD-06): the payer account's owners are the
    only trusted roots, and the leaf's subject must be the payment's signer; the transfer is in the
    mandate's currency and, for a charge of ``amount``, within every link's ceiling (LEDGER-ACCT-07;
    a session's hold is not one purchase, so its cap is bounded by the budgets only). Returns the
    chain's DIDs (principal first) and (link key, period, budget) per link; UnauthorizedSigner or
    OverMandate otherwise."""
    from mpp.protocol.errors import PaymentProblem
    from mpp.identity import period_key, verify_chain

    trusted = set(owners)
    if not trusted:
        raise UnauthorizedSigner("the payer account has no owner; mandates cannot spend from it")
    now = now or datetime.now(timezone.utc)
    try:
        chain = verify_chain(list(mandate.tokens), trusted_principals=trusted, realm=mandate.realm, now=now, max_depth=15)
    except PaymentProblem as exc:
        if exc.slug == "mandate-untrusted":  # the seller's words; here the trusted set is the owners
            raise UnauthorizedSigner("the mandate chain's principal does not own the payer account") from None
        raise UnauthorizedSigner(f"mandate chain refused by the ledger: {exc.slug}: {exc.detail}") from None
    if signer is not None and chain.agent != signer:
        raise UnauthorizedSigner("the payment signer is not the mandate's subject")
    for link in chain.links:
        if link.currency != currency:
            raise OverMandate(f"the mandate is for {link.currency!r}, not {currency!r}", rule="currency")
        if amount is not None and amount > link.ceiling:
            raise OverMandate(f"amount {amount} is above the mandate's ceiling {link.ceiling}")
    return chain.dids, [(link.key, period_key(link.budget_period, now), link.budget_amount) for link in chain.links]


@dataclass(frozen=True)
class MandateCharge:
    """The mandate chain a transfer is made under, and the realm it was quoted in. The ledger
    verifies the chain itself (trusting the payer account's owner) and takes the budgets from
    the verified links, never from figures a seller supplies."""

    tokens: tuple[str, ...]
    realm: str


class TransferConflict(LedgerError):
    """A transfer with this id exists with different terms: never move money twice under one id."""


@dataclass(frozen=True)
class SessionHold:
    """A session's hold on the payer's account: ``cap`` is held from open until close, when
    ``captured`` went to the payee and ``released`` back to the payer (their sum is the cap)."""

    session_id: str
    payer: str
    payee: str
    currency: str
    signer: str
    cap: int
    captured: int
    released: int
    status: str  # "open" or "closed"
    opened_at: str


@dataclass(frozen=True)
class SessionClose:
    """How a session ended: the transfers made at close (None where the amount was zero)."""

    session_id: str
    captured: int
    released: int
    capture_ref: str | None
    release_ref: str | None
    closed_at: str


class UnknownSession(LedgerError):
    """No session with that id was ever opened on this ledger."""


class SessionNotOpen(LedgerError):
    """The session is closed: nothing more may be held under it."""


class CapSignatureInvalid(LedgerError):
    """The cap signature does not verify for the session's signer, terms, account and cap."""


class CaptureRefused(LedgerError):
    """The seller asked to capture more than the cap or than a valid voucher allows (a seller bug)."""


class AuthorizationInvalid(LedgerError):
    """The agent's signed authorization does not verify for this transfer (a ledger service checks
    it itself, LEDGER-16), or does not match the terms it is presented with."""


def second_ceiling(when: datetime) -> datetime:
    """``when`` rounded up to a whole second: transfers are stamped to the second, so a stamp S is at
    or after ``when`` exactly when S is at or after this."""
    whole = when.replace(microsecond=0)
    return whole if whole == when else whole + timedelta(seconds=1)
