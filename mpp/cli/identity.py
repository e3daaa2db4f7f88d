"""`mpp principal|agent|mandate|approve|receipt` commands: identities, mandates, approvals, receipts."""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

__all__ = ["add_identity_commands"]

_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _duration(text: str) -> timedelta:
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError("duration must look like 30s, 15m, 12h, 30d or 2w")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


def _nonneg(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be a non-negative integer (base units)")
    return value


def _new_key_dir(directory: str, filename: str, force: bool) -> tuple[Path, "object"]:
    from mpp.protocol.keys import SigningKey

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    key.save(path / filename, force=force)  # refuses a link, and an existing key without --force
    return path, key


def cmd_principal_init(args: argparse.Namespace) -> int:
    from mpp.protocol.receipts import jwks_document

    path, key = _new_key_dir(args.dir, "principal.key", args.force)
    (path / "jwks.json").write_text(json.dumps(jwks_document([key]), indent=2) + "\n")
    print(f"principal {key.did}")
    print(f"  key  : {path / 'principal.key'} (keep it private)")
    print(f"  JWKS : {path / 'jwks.json'} (publish it; sellers trust this DID)")
    return 0


def cmd_agent_init(args: argparse.Namespace) -> int:
    from mpp.cli.config import ConfigError, load_chain, save_chain
    from mpp.protocol.keys import SigningKey

    path = Path(args.dir)
    if args.ledger:
        from mpp.cli.ledger import is_service

        if is_service(args.ledger) and not args.owner_key:  # refused before any key is made
            raise ConfigError("enrolling at a ledger service takes an owner's signature: pass --owner-key with the "
                              f"key of one of {args.account}'s owners")
    chain = load_chain(args.mandate) if args.mandate else None
    if chain is not None and (path / "agent.key").exists():
        # A mandate names its agent's DID, so it is issued after the key exists: attach it.
        key = SigningKey.load(path / "agent.key")
        leaf = _unverified(chain[-1])
        if leaf.get("sub") != key.did:
            raise ConfigError(f"{args.mandate}: the mandate is for {leaf.get('sub')}, not this agent ({key.did})")
        try:
            old = json.loads((path / "wallet.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        wallet = {"key": "agent.key", "max_amount": args.max_amount, "currencies": [args.currency], "budget": "budget.db",
                  "audit": "audit.db", **(old if isinstance(old, dict) else {}), "account": args.account, "did": key.did}
    elif chain is not None:
        raise ConfigError(f"{path}: no agent key yet, so no mandate can name it: run `mpp agent init {path}` first, "
                          f"issue a mandate for the DID it prints, then `mpp agent init {path} --mandate FILE` to attach it")
    else:
        path, key = _new_key_dir(args.dir, "agent.key", args.force)
        wallet = {"key": "agent.key", "account": args.account, "did": key.did, "max_amount": args.max_amount,
                  "currencies": [args.currency], "budget": "budget.db", "audit": "audit.db"}
    if chain is not None:
        save_chain(path / "mandate.json", chain)
        wallet["mandates"] = "mandate.json"
    (path / "wallet.json").write_text(json.dumps(wallet, indent=2) + "\n")
    print(f"agent {key.did}")
    print(f"  wallet: {path} (pays from {args.account}{', under the mandate in mandate.json' if chain else ''})")
    if args.ledger:
        from mpp.cli.ledger import enrol

        try:
            enrol(args.ledger, args.owner_key, args.account, key.did, "agent")  # LEDGER-ACCT-01
        except Exception as exc:
            raise ConfigError(f"the agent's key and wallet are made, but it was not enrolled at {args.ledger}: {exc} "
                              f"(enrol it with `mpp ledger allow {args.account} {key.did} --as agent --ledger ...`)") from exc
        print(f"  enrolled at {args.ledger} as a mandate-bound agent of {args.account}")
    else:
        print(f"  not enrolled at a ledger yet: `mpp ledger allow {args.account} {key.did} --as agent --ledger LEDGER`")
    return 0


def _unverified(token: str) -> dict:
    import jwt

    claims = jwt.decode(token, options={"verify_signature": False})
    return claims if isinstance(claims, dict) else {}


def _check_realm(tokens: list[str]) -> str:
    """A realm the leaf is meant for (its first audience), so that verify_chain's audience check
    tests the chain's own consistency; "*" when the leaf names no realm."""
    import jwt

    aud = jwt.decode(tokens[-1], options={"verify_signature": False}).get("aud")
    named = [a for a in aud if isinstance(a, str) and a != "*"] if isinstance(aud, list) else []
    return named[0] if named else "*"


def cmd_mandate_issue(args: argparse.Namespace) -> int:
    import jwt

    from mpp.cli.config import load_chain, save_chain
    from mpp.protocol.errors import PaymentProblem
    from mpp.identity import decode_mandate, issue_mandate, verify_chain
    from mpp.protocol.keys import SigningKey

    issuer = SigningKey.load(args.issuer)
    now = datetime.now(timezone.utc)
    parent_chain = load_chain(args.parent) if args.parent else []
    principal = None
    expires = now + (args.valid_for or timedelta(days=30))
    audience, scope, review = args.audience or ["*"], args.scope or ["*"], args.review or []
    currency, period, threshold = args.currency or "usd", args.period or "day", args.approval_threshold
    if parent_chain:
        parent = decode_mandate(parent_chain[-1], now=now)
        if parent.sub != issuer.did:
            raise ValueError("the issuer key is not the subject of the parent mandate: only its agent may delegate it")
        principal = parent.prn
        # Unless told otherwise, a delegation inherits what it may not widen (IDENT-DLG-02).
        audience, scope = args.audience or list(parent.aud), args.scope or list(parent.scope)
        review = [*parent.review, *(r for r in review if r not in parent.review)]
        currency, period = args.currency or parent.currency, args.period or parent.budget_period
        threshold = parent.approval_threshold if threshold is None else threshold
        if args.valid_for is None:
            expires = min(expires, datetime.fromtimestamp(parent.exp, timezone.utc))
    token = issue_mandate(
        issuer, subject=args.subject, audience=audience, scope=scope, review=review,
        currency=currency, ceiling=args.ceiling, budget_amount=args.budget, budget_period=period,
        approval_threshold=threshold, max_depth=args.max_depth, not_before=now,
        expires=expires, principal=principal, approvers=args.approver or (),
    )
    chain = [*parent_chain, token]
    if parent_chain:  # IDENT-DLG-06: never sign a sub-mandate the chain's own checks would refuse
        root_iss = jwt.decode(chain[0], options={"verify_signature": False}).get("iss")
        try:
            verify_chain(chain, trusted_principals={root_iss}, realm=_check_realm(chain), now=now, max_depth=16)
        except PaymentProblem as exc:
            raise ValueError(f"refusing to sign this delegation ({exc.slug}): {exc.detail}") from None
    save_chain(args.out, chain)
    link = decode_mandate(token, now=now)
    print(f"wrote {args.out}: {len(parent_chain) + 1} link(s); mandate {link.jti} for {link.sub}")
    return 0


def cmd_mandate_show(args: argparse.Namespace) -> int:
    import jwt

    from mpp.cli.config import load_chain
    from mpp.protocol.errors import PaymentProblem
    from mpp.identity import verify_chain

    chain = load_chain(args.file)
    now = datetime.now(timezone.utc)
    for i, token in enumerate(chain):
        claims = jwt.decode(token, options={"verify_signature": False})
        header = jwt.get_unverified_header(token)
        print(f"link {i}: alg={header.get('alg')} " + json.dumps(claims, indent=2, sort_keys=True))
    trusted = set(args.trust or [])
    if not trusted:
        trusted = {jwt.decode(chain[0], options={"verify_signature": False}).get("iss")}
        print("(no --trust given: trusting the root's own issuer, so only signatures and narrowing are checked)")
    try:
        verified = verify_chain(chain, trusted_principals=trusted, realm=args.realm or _check_realm(chain), now=now, max_depth=16)
    except PaymentProblem as exc:
        print(f"mpp: mandate chain INVALID ({exc.slug}): {exc.detail}", file=sys.stderr)
        return 1
    print(f"valid: principal {verified.principal} -> agent {verified.agent}, {len(chain)} link(s)")
    return 0


def cmd_mandate_revoke(args: argparse.Namespace) -> int:
    from mpp.cli.config import load_chain
    from mpp.identity import issue_revocation
    from mpp.protocol.keys import SigningKey
    from mpp.ledger import SqliteLedger

    chain = load_chain(args.file)
    if not -len(chain) <= args.link < len(chain):
        raise ValueError(f"--link must index the chain of {len(chain)} link(s)")
    key = SigningKey.load(args.key)
    token = issue_revocation(key, chain[args.link], now=datetime.now(timezone.utc))
    if not Path(args.ledger).exists():
        raise FileNotFoundError(f"no ledger at {args.ledger}")
    ledger = SqliteLedger(args.ledger)
    try:
        jti = ledger.keys.revoke(token, chain[args.link])
    finally:
        ledger.close()
    print(f"revoked mandate {jti}: sellers settling through this ledger refuse it from the next request on")
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    """`mpp approve`: show the approver what it is asked to approve (on stderr), then sign a
    one-time approval bound to that quote (IDENT-APR-07) for the agent that asked."""
    from mpp.cli.approvals import describe_for_approver
    from mpp.identity import issue_approval
    from mpp.protocol.keys import SigningKey

    text = sys.stdin.read() if args.problem == "-" else Path(args.problem).read_text(encoding="utf-8")
    try:
        problem = json.loads(text)
    except ValueError:
        raise ValueError(f"{args.problem}: not a JSON problem document; `mpp fetch --problem-out FILE` writes one when "
                         "the seller asks for an approval (exit 7)") from None
    if not isinstance(problem, dict) or not str(problem.get("type", "")).endswith(":approval-required"):
        raise ValueError("not an approval-required problem document")
    missing = [k for k in ("challengeId", "quoteHash", "amount", "currency", "rule", "mandate") if not problem.get(k)]
    if missing:
        raise ValueError(f"problem document lacks {', '.join(missing)}")
    lines, asking = describe_for_approver(problem)
    if "quote" not in problem and not args.without_quote:
        raise ValueError("this problem document carries no quote, so what you would approve cannot be checked (the "
                         "resource is unknown; amount and currency are the seller's word): have the agent run "
                         "`mpp fetch --problem-out FILE` and approve that file, or pass --without-quote to sign anyway")
    agent = args.agent or asking
    if agent is None:
        raise ValueError("this problem document does not say which agent asked: pass --agent DID "
                         "(the wallet.json \"did\" of the agent that ran `mpp fetch`)")
    if args.agent and asking and args.agent != asking:
        raise ValueError(f"the quote was made for agent {asking}, not {args.agent}: an approval for another agent is refused")
    key = SigningKey.load(args.key)
    print("approving:", file=sys.stderr)
    for line in (*lines, f"agent    : {agent}", f"mandate  : {problem['mandate']}", f"signer   : {key.did}"):
        print("  " + line, file=sys.stderr)
    token = issue_approval(key, agent=agent, challenge_id=problem["challengeId"], quote=problem["quoteHash"],
                           amount=problem["amount"], currency=problem["currency"], rule=problem["rule"],
                           mandate=problem["mandate"], now=datetime.now(timezone.utc), ttl=args.valid_for)
    if args.out:
        Path(args.out).write_text(token + "\n")
        print(f"approval written to {args.out} (one quote: {problem['amount']} {problem['currency']}, challenge {problem['challengeId'][:12]}...)")
    else:
        print(token)
    return 0


def _load_jwks(source: str) -> dict:
    """The seller's JWKS from a file, or fetched from an http(s) URL (its /.well-known/jwks.json)."""
    if source.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(source, timeout=10) as resp:  # noqa: S310 (http(s) only, checked above)
                text = resp.read(1 << 20).decode("utf-8")
        except (urllib.error.URLError, OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--jwks {source}: could not fetch the seller's JWKS ({exc}); check the URL, or pass a file") from None
    else:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(f"--jwks {source}: no such file; pass the seller's URL, e.g. "
                             "http://127.0.0.1:8402/.well-known/jwks.json") from None
    try:
        jwks = json.loads(text)
    except ValueError:
        raise ValueError(f"--jwks {source}: not a JSON Web Key Set") from None
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError(f"--jwks {source}: not a JSON Web Key Set (no \"keys\" list)")
    return jwks


def cmd_receipt_verify(args: argparse.Namespace) -> int:
    from mpp.protocol.errors import ParseError, ReceiptInvalid
    from mpp.protocol.headers import parse_receipt
    from mpp.protocol.receipts import verify_receipt_jws

    value = args.receipt
    try:
        is_file = Path(value).is_file()
    except (OSError, ValueError):  # a receipt value is far longer than a file name may be
        is_file = False
    if is_file:
        value = Path(value).read_text(encoding="utf-8").strip()
    jwks = _load_jwks(args.jwks)
    token, header_fields = value, None
    if value.count(".") != 2:  # a Payment-Receipt header value rather than the bare JWS
        try:
            header_fields = parse_receipt(value)
        except ParseError as exc:
            if len(value) < 200:  # a mistyped file name rather than a receipt
                raise ValueError(f"{value}: no such file, and not a receipt value either; `mpp fetch --receipt-out FILE` "
                                 "writes the receipt to a file") from None
            raise ValueError(f"neither a JWS nor a Payment-Receipt value: {exc}") from None
        if not header_fields.receipt:
            raise ValueError("the Payment-Receipt carries no signed receipt")
        token = header_fields.receipt
    issuer = args.issuer
    if issuer is None:
        import jwt

        issuer = jwt.decode(token, options={"verify_signature": False}).get("iss", "")
    try:
        claims = verify_receipt_jws(token, jwks, issuer=issuer, challenge_id=header_fields.challengeId if header_fields else None)
    except ReceiptInvalid as exc:
        print(f"mpp: receipt INVALID: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"verified": True, "claims": claims}, indent=2, sort_keys=True))
    return 0


def add_identity_commands(sub: argparse._SubParsersAction) -> None:
    """Add the identity subcommands (``principal``, ``agent``, ``mandate``, ``approve``, ``receipt``) to the
    ``mpp`` parser."""
    s = sub.add_parser("principal", help="principal identities (issue mandates, approve, revoke)")
    ps = s.add_subparsers(dest="principal_command", required=True, metavar="SUBCOMMAND")
    t = ps.add_parser("init", help="create a principal key (did:key) and its JWKS")
    t.add_argument("dir", metavar="DIR")
    t.add_argument("--force", action="store_true", help="replace an existing principal key (and its JWKS)")
    t.set_defaults(func=cmd_principal_init)

    s = sub.add_parser("agent", help="agent identities")
    asub = s.add_subparsers(dest="agent_command", required=True, metavar="SUBCOMMAND")
    t = asub.add_parser("init", help="create an agent key and wallet (with --mandate: attach a mandate to an existing one)")
    t.add_argument("dir", metavar="DIR")
    t.add_argument("--account", required=True, help="ledger account the agent pays from (its principal's)")
    t.add_argument("--mandate", help="mandate chain for this agent's DID to put in its (existing) wallet")
    t.add_argument("--max-amount", type=_nonneg, default=1000, help="per-purchase limit (default 1000)")
    t.add_argument("--currency", default="usd")
    t.add_argument("--ledger", help="also enrol the agent's DID as a mandate-bound agent of --account at this ledger "
                                    "(SQLite file, postgresql:// URL, or http(s):// URL of a ledger service)")
    t.add_argument("--owner-key", metavar="KEY.pem", help="with an http(s) --ledger: the key of one of the account's owners")
    t.add_argument("--force", action="store_true", help="replace an existing agent key (and its wallet)")
    t.set_defaults(func=cmd_agent_init)

    s = sub.add_parser("mandate", help="issue, show and revoke mandates")
    msub = s.add_subparsers(dest="mandate_command", required=True, metavar="SUBCOMMAND")
    t = msub.add_parser("issue", help="sign a mandate for an agent (or delegate a narrower one with --parent)")
    t.add_argument("--issuer", required=True, metavar="KEY.pem", help="principal key, or the parent mandate's agent key")
    t.add_argument("--subject", required=True, metavar="DID", help="the agent's did:key")
    t.add_argument("--out", required=True, metavar="FILE", help="chain file to write ({\"mandates\": [...]})")
    t.add_argument("--parent", metavar="FILE", help="parent chain: the new mandate is appended as a narrower link")
    t.add_argument("--audience", action="append", metavar="REALM", help="seller realm (repeatable; default any, or the parent's)")
    t.add_argument("--scope", action="append", metavar="PATTERN", help="'METHOD /path*' (repeatable; default '*', or the parent's)")
    t.add_argument("--review", action="append", metavar="PATTERN", help="pattern that always needs approval (repeatable)")
    t.add_argument("--currency", help="default usd, or the parent's")
    t.add_argument("--ceiling", type=_nonneg, required=True, help="max per purchase, base units")
    t.add_argument("--budget", type=_nonneg, required=True, help="budget per period, base units")
    t.add_argument("--period", choices=["day", "week", "month", "total"], help="default day, or the parent's")
    t.add_argument("--approval-threshold", type=_nonneg, help="amounts above this need an approval (default none, or the parent's)")
    t.add_argument("--max-depth", type=_nonneg, default=0, help="how many further delegations are allowed (default 0)")
    t.add_argument("--valid-for", type=_duration, help="validity, e.g. 12h or 30d (default 30d, at most the parent's)")
    t.add_argument("--approver", action="append", metavar="DID", help="another key allowed to sign approvals (root only)")
    t.set_defaults(func=cmd_mandate_issue)
    t = msub.add_parser("show", help="decode a chain file and verify every link")
    t.add_argument("file", metavar="FILE")
    t.add_argument("--trust", action="append", metavar="DID", help="principal to trust as the root issuer")
    t.add_argument("--realm", help="check the audience against this seller realm")
    t.set_defaults(func=cmd_mandate_show)
    t = msub.add_parser("revoke", help="revoke a mandate at the ledger (issuer or principal key)")
    t.add_argument("file", metavar="FILE", help="chain file")
    t.add_argument("--key", required=True, metavar="KEY.pem")
    t.add_argument("--ledger", required=True, metavar="LEDGER.db")
    t.add_argument("--link", type=int, default=-1, help="which link to revoke (default the last)")
    t.set_defaults(func=cmd_mandate_revoke)

    t = sub.add_parser("approve", help="sign a one-time approval for an approval-required problem")
    t.add_argument("--key", required=True, metavar="KEY.pem", help="principal or listed approver key")
    t.add_argument("--problem", required=True, metavar="FILE", help="the seller's problem document (JSON), or - for stdin")
    t.add_argument("--agent", metavar="DID", help="the agent the approval is for (default: the one the problem file from "
                                                  "`mpp fetch --problem-out` names; refused if it names another)")
    t.add_argument("--out", metavar="FILE", help="write the approval JWT here (default: standard output)")
    t.add_argument("--valid-for", type=_duration, default=timedelta(minutes=10),
                   help="how long the approval may be used, e.g. 10m (default 10m)")
    t.add_argument("--without-quote", action="store_true",
                   help="sign a problem document that carries no quote (one not written by `mpp fetch --problem-out`): "
                        "amount and currency are then the seller's word and the resource is unknown")
    t.set_defaults(func=cmd_approve)

    s = sub.add_parser("receipt", help="signed receipts")
    rsub = s.add_subparsers(dest="receipt_command", required=True, metavar="SUBCOMMAND")
    t = rsub.add_parser("verify", help="verify a receipt offline with the seller's JWKS")
    t.add_argument("receipt", metavar="RECEIPT", help="Payment-Receipt value, bare JWS, or a file holding either "
                                                      "(`mpp fetch --receipt-out FILE` writes one)")
    t.add_argument("--jwks", required=True, metavar="URL|FILE",
                   help="the seller's JWKS: its http(s)://HOST/.well-known/jwks.json, or a file holding it")
    t.add_argument("--issuer", help="expected issuer (seller realm); default: the receipt's own")
    t.set_defaults(func=cmd_receipt_verify)
