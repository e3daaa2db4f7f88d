"""How the `full` profile pays: a *payer* turns a challenge of the target into an
``Authorization`` value. ``--pay-with SPEC`` names one:

``ledger:WALLET_DIR``
    MPP's ``ledger`` method, signed with the agent key of a wallet made by ``mpp init`` (the
    directory holding ``wallet.json``). The wallet's buying policy and identity chain are *not*
    used: the suite pays whatever the target quotes (it is testing the target, not the wallet),
    except that it refuses any amount above ``max_amount`` base units (``--max-amount``,
    default 10 000) so that a mis-priced target cannot drain the wallet. Only ``ledger``/``charge``
    challenges naming a ledger (``methodDetails.ledger``) are paid. The key pays bare, so the
    target's ledger must list it as an owner of the wallet's account (ledger.md LEDGER-ACCT-03):
    ``mpp init`` enrols its agent as mandate-bound, whose bare signature pays nothing.
    For the ``session`` profile the same key and account open ``ledger``/``session`` sessions
    (``LedgerPayer.session``: a ``SuiteSession`` signs the cap, the vouchers and the close, per
    spec/intents/session.md §3); a cap above ``max_amount`` is refused the same way.

``evm:FILE``
    The ``evm`` method's ``charge`` (draft-evm-charge-00), paid with EIP-3009 authorizations
    (credential type ``authorization``) signed by the key in FILE, a JSON object:
    ``{"privateKey": "0x<64 hex>", "chainId": 31337, "tokens": [{"address": "0x…", "name": "…",
    "version": "…", "decimals": 6}], "binding": "draft"}``. ``tokens`` are the ones the suite will
    pay with, with their EIP-712 domain (the request does not carry it); ``binding`` is the
    challenge-hash rule the nonce is made with: ``draft`` (keccak of id then realm, the draft's
    text, the default) or ``json`` (keccak of the JSON array [id, realm], as pympp 0.16.0 does).
    Only ``evm``/``charge`` challenges on that chain, in those tokens and accepting
    ``authorization`` are paid, at most ``max_amount`` base units each. The key never reaches a
    report: the description names the payer's address.

``static:JSON`` or ``static:@FILE``
    For a target whose test method accepts a fixed payload. The suite echoes the challenge
    exactly as received and sends the given payload. JSON (inline, or read from FILE) is one
    object, in one of two shapes:

    - the payload itself, e.g. ``static:{"token": "test"}``;
    - a wrapper whose members are only ``payload`` (an object, required), ``source`` (a string,
      the credential's ``source``, optional) and ``method`` (a string, optional: answer only
      challenges of that payment method; without it the first challenge offered is answered),
      e.g. ``static:{"payload": {"token": "test"}, "source": "did:key:z6Mk...", "method": "test"}``.

    An object is read as the wrapper only when it has a ``payload`` member holding an object and
    no members outside ``payload``, ``source`` and ``method``; any other object is the payload.
    ``--max-amount`` does not apply: a static payload moves no money of the suite's.

``cmd:PROGRAM``
    Any other method: PROGRAM (a command line, split as a shell would split it, run without a
    shell) is run once per challenge to answer. It reads on stdin one JSON object, the challenge
    as the target sent it: ``id``, ``realm``, ``method``, ``intent``, ``request`` (the base64url
    string), ``requestJson`` (``request`` decoded), and where the challenge has them
    ``description``, ``digest``, ``expires``, ``opaque``; plus ``url`` and ``httpMethod``, the
    request being paid. It answers on stdout with the credential's ``payload``, one JSON object,
    or the wrapper ``{"payload": {...}, "source": "did:..."}`` (read as for ``static:``); the suite
    builds the credential around it, echoing the challenge. Exit status 0 is an answer; exit
    status 3 means "not this challenge": the program is asked about the target's next challenge,
    and when it declines them all the check is skipped (CannotPay). Any other exit status, no
    answer within the timeout (``--pay-timeout``, default 30 s; the program and its children are
    killed), or an answer that is not a JSON object is the check's ERROR, naming the program and
    its status with the first lines of its stderr (never its stdout, which may hold a payload).
    ``--max-amount`` does not apply: the program decides what it pays.

A bad SPEC raises ``ValueError`` with the reason. A payer that cannot pay what a target offers
raises ``CannotPay``; checks turn that into a skip naming the reason. A payer that fails (a
``cmd:`` program that crashed) raises ``PayerFailed``, which the runner reports as the check's
ERROR with its message alone.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

from mpp import ChargeRequest, Credential, ParseError, format_credential
from mpp.protocol.models import Challenge

from .base import CheckError

__all__ = ["DEFAULT_MAX_AMOUNT", "DEFAULT_PAY_TIMEOUT", "DECLINE_EXIT", "CannotPay", "PayerFailed", "Payer", "LedgerPayer",
           "EvmPayer", "StaticPayer", "CommandPayer", "payer_from_spec", "SuiteSession"]

DEFAULT_MAX_AMOUNT = 10_000
DEFAULT_PAY_TIMEOUT = 30.0  # seconds a cmd: program has to answer one challenge
DECLINE_EXIT = 3  # a cmd: program's "not this challenge"
_WRAPPER_KEYS = {"payload", "source", "method"}


class CannotPay(Exception):
    """The payer cannot (or will not) answer any challenge the target offered; the message says why."""


class PayerFailed(CheckError):
    """The payer itself failed (a ``cmd:`` program crashed, hung or answered garbage): the check
    errs with this message, which names the program and never a credential."""


class Payer(Protocol):
    description: str  # what --pay-with named, safe for a report (no secrets)

    def choose(self, challenges: Sequence[Challenge], *, url: str | None = None,
               http_method: str | None = None) -> Challenge:
        """The first challenge (in the target's order) this payer will answer; else CannotPay.
        ``url`` and ``http_method`` name the request being paid, where the caller knows it."""

    def authorize(self, challenge: Challenge, *, url: str | None = None, http_method: str | None = None) -> str:
        """The ``Authorization`` field value paying ``challenge``; CannotPay if it will not."""


class _MethodPayer:
    """What a payer that signs with one of our buyer methods (``self._method``) shares: which
    challenges it answers (``self.max_amount`` at most) and the credential it makes."""

    _method: Any
    max_amount: int
    kind: str  # what --pay-with named (ledger, evm), for the messages

    def _why_not(self, challenge: Challenge) -> tuple[str | None, ChargeRequest | None]:
        label = f"{challenge.method}/{challenge.intent}"
        if challenge.header is not None:
            return f"{label}: credential field {challenge.header!r} is not Authorization", None
        try:
            request = ChargeRequest.from_challenge(challenge)
        except ParseError as exc:
            return f"{label}: {exc}", None
        why = self._method.can_pay(challenge, request)
        if why is not None:
            return f"{label}: {why}", request
        if request.amount_int > self.max_amount:
            return (f"{label}: the quote of {request.amount} {request.currency} exceeds --max-amount {self.max_amount}; "
                    "raise --max-amount to let the suite pay it"), request
        return None, request

    def choose(self, challenges: Sequence[Challenge], **_request: str | None) -> Challenge:
        """The first challenge (in the target's order) this payer can pay; CannotPay listing why not for each."""
        reasons = []
        for challenge in challenges:
            why, _ = self._why_not(challenge)
            if why is None:
                return challenge
            reasons.append(why)
        raise CannotPay(f"the {self.kind} payer can pay none of the offered challenges: " + "; ".join(reasons))

    def authorize(self, challenge: Challenge, **_request: str | None) -> str:
        """The ``Authorization`` value paying ``challenge``; CannotPay if this payer will not."""
        why, request = self._why_not(challenge)
        if why is not None or request is None:
            raise CannotPay(why or f"{challenge.method}/{challenge.intent}: not payable")
        payload, source = self._method.payload(challenge, request)
        return format_credential(Credential(challenge=challenge, payload=payload, source=source))


@dataclass
class LedgerPayer(_MethodPayer):
    """The ``ledger`` method with a wallet's agent key and payer account; no policy applied."""

    kind = "ledger"

    directory: str
    max_amount: int = DEFAULT_MAX_AMOUNT
    description: str = field(init=False)

    def __post_init__(self) -> None:
        from mpp.cli.config import ConfigError, load_wallet
        from mpp.methods.ledger import LedgerBuyerMethod

        try:
            wallet = load_wallet(self.directory, max_amount=self.max_amount)
        except ConfigError as exc:
            raise ValueError(f"--pay-with ledger:{self.directory}: {exc}") from None
        self.account = wallet.account
        self.signer = wallet.key.did
        self.key = wallet.key  # the agent's key: grant proofs (profile pricing) are signed with it
        self._method = LedgerBuyerMethod(key=wallet.key, account=wallet.account)
        self.description = f"ledger ({self.account}, at most {self.max_amount} base units a payment)"

    def authorize_seat(self, challenge: Challenge) -> str:
        """One seat period (intent ``subscription``, spec/pricing.md PRICE-SEAT-01): the charge payload
        unchanged. Only the pricing profile's seat check asks, for a recurring offer it chose itself."""
        try:
            request = ChargeRequest.from_challenge(challenge)
        except ParseError as exc:
            raise CannotPay(f"{challenge.method}/{challenge.intent}: {exc}") from None
        why = self._method.can_pay_subscription(challenge, request)
        if why is None and request.amount_int > self.max_amount:
            why = f"the seat's {request.amount} {request.currency} exceeds --max-amount {self.max_amount}"
        if why is not None:
            raise CannotPay(f"{challenge.method}/{challenge.intent}: {why}")
        payload, source = self._method.payload(challenge, request)
        return format_credential(Credential(challenge=challenge, payload=payload, source=source))


    def session(self, challenge: Challenge, *, cap: int) -> "SuiteSession":
        """A session to open on ``challenge`` (a ``ledger``/``session`` challenge), holding ``cap``
        base units of the wallet's account, signed with its agent key (spec/intents/session.md §3).
        CannotPay when the challenge is no session this payer can open or ``cap`` is above
        ``max_amount``."""
        return SuiteSession.of(challenge, self.key, self.account, cap=cap, max_amount=self.max_amount)


@dataclass
class SuiteSession:
    """One session the suite opens (profile `session`): the opening challenge, its terms, and the
    vouchers signed so far. Every credential is built explicitly, so a check can send exactly the
    voucher (or the forgery) it means to. Nothing here is sent: checks send the credentials."""

    challenge: Challenge
    request: Any  # mpp.intents.session.SessionRequest
    terms: Any  # mpp.intents.session.SessionTerms
    key: Any  # mpp.SigningKey: the session's signer
    account: str
    cap: int
    sequence: int = 0  # the highest voucher sequence signed
    max_amount: int = DEFAULT_MAX_AMOUNT  # the most a cap (top-ups included) may hold

    @classmethod
    def of(cls, challenge: Challenge, key: Any, account: str, *, cap: int, max_amount: int = DEFAULT_MAX_AMOUNT) -> "SuiteSession":
        from mpp.intents.session import SessionRequest, SessionTerms

        label = f"{challenge.method}/{challenge.intent}"
        if (challenge.method, challenge.intent) != ("ledger", "session"):
            raise CannotPay(f"{label}: not a ledger/session challenge")
        if challenge.header is not None:
            raise CannotPay(f"{label}: credential field {challenge.header!r} is not Authorization")
        try:
            request = SessionRequest.from_challenge(challenge)
        except ParseError as exc:
            raise CannotPay(f"{label}: {exc}") from None
        if cap > max_amount:
            raise CannotPay(f"{label}: a session cap of {cap} {request.currency} (a few requests at cost(maxUnits) "
                            f"{request.max_request_cost}) exceeds --max-amount {max_amount}; raise --max-amount to let the suite open it")
        return cls(challenge, request, SessionTerms.of(challenge, request), key, account, cap, max_amount=max_amount)

    @property
    def id(self) -> str:
        return self.challenge.id

    @property
    def max_cost(self) -> int:
        """cost(maxUnits): what the seller reserves for one request (SESSION-USE-01)."""
        return self.request.max_request_cost

    def cost(self, units: int) -> int:
        from mpp.intents.session import cost_of

        return cost_of(units, self.request.unit_price, self.request.per)

    def voucher(self, cumulative: int, sequence: int | None = None, *, key: Any = None) -> Any:
        from mpp.intents.session import sign_voucher

        if sequence is None:
            self.sequence += 1
            sequence = self.sequence
        else:
            self.sequence = max(self.sequence, sequence)
        return sign_voucher(key or self.key, self.terms, cumulative, sequence)

    def _credential(self, payload: Any, source: str | None = None) -> str:
        return format_credential(Credential(challenge=self.challenge, payload=payload.as_json(), source=source or payload.signer))

    def open_credential(self, cumulative: int, *, cap: int | None = None, session_id: str | None = None) -> str:
        from mpp.intents.session import SessionPayload, sign_cap

        cap = self.cap if cap is None else cap
        payload = SessionPayload("open", session_id or self.id, self.key.did, account=self.account, cap=cap,
                                 cap_signature=sign_cap(self.key, self.terms, account=self.account, cap=cap),
                                 voucher=self.voucher(cumulative))
        return self._credential(payload)

    def voucher_credential(self, cumulative: int, sequence: int | None = None, *, key: Any = None, signer: str | None = None) -> str:
        from mpp.intents.session import SessionPayload

        voucher = self.voucher(cumulative, sequence, key=key)
        return self._credential(SessionPayload("voucher", self.id, signer or self.key.did, voucher=voucher))

    def topup_credential(self, cap: int, cumulative: int) -> str:
        """A ``topUp`` to the new total ``cap`` with a voucher; CannotPay above ``max_amount``."""
        from mpp.intents.session import SessionPayload, sign_cap

        if cap > self.max_amount:
            raise CannotPay(f"a top-up to a cap of {cap} exceeds --max-amount {self.max_amount}; raise --max-amount to let the suite send it")
        payload = SessionPayload("topUp", self.id, self.key.did, cap=cap,
                                 cap_signature=sign_cap(self.key, self.terms, account=self.account, cap=cap),
                                 voucher=self.voucher(cumulative))
        return self._credential(payload)

    def raw_credential(self, payload: dict[str, Any], source: str | None = None) -> str:
        """A credential echoing the opening challenge with ``payload`` exactly as given (malformed ones too)."""
        return format_credential(Credential(challenge=self.challenge, payload=payload, source=source or self.key.did))

    def close_credential(self) -> str:
        from mpp.intents.session import SessionPayload, sign_close

        return self._credential(SessionPayload("close", self.id, self.key.did, close_signature=sign_close(self.key, self.terms)))


@dataclass
class StaticPayer:
    """Echo the challenge as received, with a fixed payload (and optional source)."""

    payload: dict[str, Any]
    source: str | None = None
    method: str | None = None
    description: str = field(init=False)

    def __post_init__(self) -> None:
        self.description = "static payload" + (f" for method {self.method!r}" if self.method else "")

    def choose(self, challenges: Sequence[Challenge], **_request: str | None) -> Challenge:
        for challenge in challenges:
            if self.method is None or challenge.method == self.method:
                return challenge
        offered = ", ".join(sorted({c.method for c in challenges})) or "none"
        raise CannotPay(f"the static payer answers method {self.method!r} only; the target offers {offered}")

    def authorize(self, challenge: Challenge, **_request: str | None) -> str:
        if self.method is not None and challenge.method != self.method:
            raise CannotPay(f"the static payer answers method {self.method!r} only, not {challenge.method!r}")
        return format_credential(Credential(challenge=challenge, payload=dict(self.payload), source=self.source))


_STDERR_LINES, _STDERR_CHARS = 3, 300  # of a failed program's stderr, in its error


def _first_lines(raw: bytes) -> str:
    lines = [ln.strip() for ln in raw.decode("utf-8", errors="replace").splitlines() if ln.strip()]
    text = " | ".join(lines[:_STDERR_LINES])
    if len(text) > _STDERR_CHARS:
        text = text[:_STDERR_CHARS] + "..."
    return f"; stderr: {text}" if text else "; no stderr"


def challenge_document(challenge: Challenge, *, url: str | None, http_method: str | None) -> dict[str, Any]:
    """What a ``cmd:`` program reads: the challenge's parameters as sent, ``request`` decoded as
    ``requestJson`` (null when it does not decode), and the request being paid."""
    doc: dict[str, Any] = dict(challenge.echo())
    try:
        doc["requestJson"] = challenge.request_json
    except (ParseError, ValueError):
        doc["requestJson"] = None
    doc["url"] = url
    doc["httpMethod"] = http_method
    return doc


@dataclass
class CommandPayer:
    """A program of the user's answers each challenge with the credential's payload (``cmd:``)."""

    argv: list[str] = field(repr=False)  # its arguments may carry a token
    timeout: float = DEFAULT_PAY_TIMEOUT
    description: str = field(init=False)

    def __post_init__(self) -> None:
        # the program's name only (and its script's, for `python pay.py`): its arguments may carry a token
        self.name = os.path.basename(self.argv[0])
        if len(self.argv) > 1 and not self.argv[1].startswith("-") and os.path.isfile(self.argv[1]):
            self.name += " " + os.path.basename(self.argv[1])
        self.description = f"program {self.name!r}"
        self._answers: dict[str, tuple[dict[str, Any], str | None]] = {}

    def _fail(self, what: str) -> PayerFailed:
        return PayerFailed(f"--pay-with cmd: the program {self.name!r} {what}")

    def _run(self, challenge: Challenge, url: str | None, http_method: str | None) -> tuple[dict[str, Any], str | None] | None:
        """The program's payload and source for ``challenge``; None when it declines it."""
        stdin = json.dumps(challenge_document(challenge, url=url, http_method=http_method)).encode()
        try:
            proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True)  # its own process group: a timeout ends its children too
        except OSError as exc:
            raise self._fail(f"could not be started: {exc.strerror or exc}") from None
        try:
            out, err = proc.communicate(stdin, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()
            out, err = proc.communicate()
            raise self._fail(f"gave no answer within {self.timeout:g} s for a {challenge.method}/{challenge.intent} "
                             f"challenge and was stopped (--pay-timeout){_first_lines(err)}") from None
        if proc.returncode == DECLINE_EXIT:
            return None
        if proc.returncode != 0:
            status = (f"was killed by signal {-proc.returncode}" if proc.returncode < 0
                      else f"exited with status {proc.returncode}")
            raise self._fail(f"{status} on a {challenge.method}/{challenge.intent} challenge (0 answers, "
                             f"{DECLINE_EXIT} declines){_first_lines(err)}")
        try:
            doc = json.loads(out.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            doc = None
        if not isinstance(doc, dict):  # its output is never quoted: it may be a payload
            got = "nothing" if not out.strip() else f"{len(out)} bytes that are not a JSON object"
            raise self._fail(f"exited 0 but printed {got} on stdout; it must print the credential's payload, one JSON "
                             f'object (or {{"payload": {{...}}, "source": "..."}}){_first_lines(err)}')
        try:
            payload, source, _ = _payload_shape(doc, f"--pay-with cmd: the program {self.name!r}'s answer", methods=False)
        except ValueError as exc:
            raise PayerFailed(str(exc)) from None
        return payload, source

    def choose(self, challenges: Sequence[Challenge], *, url: str | None = None,
               http_method: str | None = None) -> Challenge:
        declined = []
        for challenge in challenges:
            answer = self._run(challenge, url, http_method)
            if answer is not None:
                self._answers[challenge.id] = answer
                return challenge
            declined.append(f"{challenge.method}/{challenge.intent}")
        raise CannotPay(f"the program {self.name!r} declined (exit {DECLINE_EXIT}) every challenge offered: "
                        + (", ".join(declined) or "none"))

    def authorize(self, challenge: Challenge, *, url: str | None = None, http_method: str | None = None) -> str:
        answer = self._answers.pop(challenge.id, None) or self._run(challenge, url, http_method)
        if answer is None:
            raise CannotPay(f"the program {self.name!r} declined (exit {DECLINE_EXIT}) the "
                            f"{challenge.method}/{challenge.intent} challenge")
        payload, source = answer
        return format_credential(Credential(challenge=challenge, payload=dict(payload), source=source))


@dataclass
class EvmPayer(_MethodPayer):
    """The ``evm`` method with an EIP-3009 authorization signed by the key of an ``evm:FILE`` payer."""

    kind = "evm"

    path: str
    max_amount: int = DEFAULT_MAX_AMOUNT
    description: str = field(init=False)

    def __post_init__(self) -> None:
        from eth_account import Account

        from mpp.methods.evm.charge import BINDINGS, EvmBuyerMethod, EvmToken

        where = f"--pay-with evm:{self.path}"
        try:
            doc = json.loads(Path(self.path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"{where}: cannot read the payer file ({type(exc).__name__})") from None
        if not isinstance(doc, dict):
            raise ValueError(f"{where}: the payer file must hold a JSON object")
        chain_id, tokens, binding = doc.get("chainId"), doc.get("tokens"), doc.get("binding", "draft")
        if not isinstance(chain_id, int) or isinstance(chain_id, bool) or chain_id <= 0:
            raise ValueError(f"{where}: chainId must be a positive integer")
        if binding not in BINDINGS:
            raise ValueError(f"{where}: binding must be one of {', '.join(BINDINGS)}")
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, dict) for t in tokens):
            raise ValueError(f"{where}: tokens must be a non-empty list of {{address, name, version, decimals}}")
        try:
            listed = [EvmToken(t.get("address"), t.get("name"), t.get("version"), t.get("decimals", 6)) for t in tokens]
            account = Account.from_key(doc.get("privateKey"))
        except Exception as exc:  # noqa: BLE001 - the message must not carry the key, whatever failed
            raise ValueError(f"{where}: a token or the private key is not valid ({type(exc).__name__})") from None
        self._method = EvmBuyerMethod(account=account, chain_id=chain_id, tokens=listed, binding=binding)
        self.address = self._method.address
        self.description = (f"evm ({self.address} on chain {chain_id}, {binding} binding, "
                            f"at most {self.max_amount} base units a payment)")


def _payload_shape(doc: dict[str, Any], where: str, *, methods: bool = True) -> tuple[dict[str, Any], str | None, str | None]:
    """The payload, source and method of a payer's JSON object: the wrapper when it is one (a
    ``payload`` member holding an object, and no members but ``payload``, ``source`` and, with
    ``methods``, ``method``), otherwise the object itself as the payload."""
    keys = _WRAPPER_KEYS if methods else _WRAPPER_KEYS - {"method"}
    if not (isinstance(doc.get("payload"), dict) and set(doc) <= keys):
        return doc, None, None
    source, method = doc.get("source"), doc.get("method")
    if source is not None and (not isinstance(source, str) or not source):
        raise ValueError(f"{where}: 'source' must be a non-empty string")
    if method is not None and (not isinstance(method, str) or not method):
        raise ValueError(f"{where}: 'method' must be a non-empty string")
    return doc["payload"], source, method


def _command(text: str, timeout: float) -> CommandPayer:
    try:
        argv = shlex.split(text)
    except ValueError as exc:  # unbalanced quotes: the reason only, the text may hold a token
        raise ValueError(f"--pay-with cmd: cannot split the command line: {exc}") from None
    if not argv:
        raise ValueError("--pay-with cmd: nothing to run")
    if shutil.which(argv[0]) is None:
        raise ValueError(f"--pay-with cmd: {argv[0][:200]!r} is not an executable program (give a path, or a name on PATH)")
    return CommandPayer(argv, timeout)


def _static(text: str) -> StaticPayer:
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--pay-with static:@{path}: cannot read it: {exc}") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"--pay-with static: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError("--pay-with static: the JSON must be an object (the payload, or {\"payload\": {...}, \"source\": ...})")
    payload, source, method = _payload_shape(doc, "--pay-with static")
    return StaticPayer(payload, source, method)


def payer_from_spec(spec: str, *, max_amount: int = DEFAULT_MAX_AMOUNT, timeout: float = DEFAULT_PAY_TIMEOUT) -> Payer:
    """The payer ``spec`` names (see the module docstring); ValueError when it names none."""
    if not isinstance(spec, str) or not spec:
        raise ValueError("--pay-with needs ledger:WALLET_DIR, evm:FILE, static:JSON or cmd:PROGRAM")
    if isinstance(max_amount, bool) or not isinstance(max_amount, int) or max_amount < 0:
        raise ValueError("--max-amount must be a non-negative integer of base units")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError("--pay-timeout must be a positive number of seconds")
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in ("ledger", "evm", "static", "cmd"):
        # the kind only: the rest may be a payload, which must not reach a message
        raise ValueError(f"--pay-with {kind[:16]!r}...: expected ledger:WALLET_DIR, evm:FILE, static:JSON (or static:@FILE) "
                         "or cmd:PROGRAM")
    if not rest:
        raise ValueError(f"--pay-with {kind}: nothing after the colon")
    if kind == "ledger":
        return LedgerPayer(rest, max_amount)
    if kind == "evm":
        return EvmPayer(rest, max_amount)
    if kind == "cmd":
        return _command(rest, float(timeout))
    return _static(rest)
