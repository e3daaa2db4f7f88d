"""The approval flow of the command line, across three runs (spec/identity.md §6): `mpp fetch
--problem-out FILE` keeps the challenge the seller asked an approval for, `mpp approve --problem FILE`
shows the approver what it signs for, and `mpp fetch --approval` retries that very challenge.

An approval is bound to one challenge (IDENT-APR-05), which the seller leaves unconsumed
(IDENT-APR-01) until it expires, so the retry must present the same challenge, not a fresh one. Its
``WWW-Authenticate`` value is saved in two places: in the problem file, as the member ``quote``
that `mpp fetch` adds beside the seller's own members (the approver computes the quote hash from
it and sees amount, recipient and resource, IDENT-APR-07), and in the wallet's
``pending-approvals/`` folder, where `mpp fetch --approval` finds it by the approval's
``challengeId``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

from mpp.purchase.agent import AgentIdentity

__all__ = ["APPROVAL_RETRY_HINT", "HoldWhileAsked", "describe_for_approver", "find_challenge", "load_pending",
           "pending_path", "read_approval", "save_pending"]

PENDING_DIR = "pending-approvals"
APPROVAL_RETRY_HINT = ("sign an approval with `mpp approve --key PRINCIPAL.key --problem {problem} --out approval.jwt`, "
                       "then retry with `mpp fetch --wallet {wallet} --approval approval.jwt {url}` before the quote expires")
"""What `mpp fetch` tells the user after an approval-required answer (``str.format`` with problem, wallet, url)."""


@dataclass
class HoldWhileAsked(AgentIdentity):
    """An agent identity that keeps the budget reservation of a quote the seller wants approved
    (`mpp fetch --problem-out`): the amount stays held for the retry with `mpp fetch --approval`, which
    reserves the same challenge id again (a live reservation is replaced, a released one never
    revived, IDENT-BUD-03); unanswered, it lapses with the reservation's time-to-live."""

    asked: dict = field(default_factory=dict)  # the approval-required problem, once the seller sent it

    async def release(self, challenge_id: str) -> None:
        """As :meth:`~mpp.purchase.agent.AgentIdentity.release`, except for the challenge the seller asked an
        approval for (``asked['challengeId']``): its reservation is kept for the retry with `mpp fetch
        --approval`, and lapses with its time-to-live if none comes."""
        if self.asked.get("challengeId") != challenge_id:
            await super().release(challenge_id)


def find_challenge(www_authenticate: Iterable[str], challenge_id: str):
    """The challenge with this id among a 402's ``WWW-Authenticate`` values, or None."""
    from mpp.protocol.headers import parse_challenges

    for challenge in parse_challenges(list(www_authenticate), skip_invalid=True):
        if challenge.id == challenge_id:
            return challenge
    return None


def pending_path(wallet_dir: str | Path, challenge_id: str) -> Path:
    """Where the wallet keeps the quote an approval for ``challenge_id`` will retry."""
    safe = "".join(c for c in challenge_id if c.isalnum() or c in "-_")[:128]
    if not safe:
        raise ValueError("the approval names no usable challengeId")
    return Path(wallet_dir) / PENDING_DIR / f"{safe}.json"


def save_pending(wallet_dir: str | Path, quote: dict[str, Any]) -> Path:
    """Keep ``quote`` (``url``, ``method``, ``agent`` and ``challenge``, one ``WWW-Authenticate: Payment``
    value) in the wallet, for `mpp fetch --approval`."""
    from mpp.protocol.headers import parse_challenges

    [challenge] = parse_challenges(quote["challenge"])
    path = pending_path(wallet_dir, challenge.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    _drop_expired(path.parent)
    path.write_text(json.dumps(quote, indent=2) + "\n", encoding="utf-8")
    return path


def _drop_expired(folder: Path) -> None:
    """Forget the quotes no approval can use any more (their challenge has expired, or the file is not ours)."""
    from datetime import datetime, timezone

    from mpp.protocol.headers import parse_challenges
    from mpp.protocol.models import parse_rfc3339

    now = datetime.now(timezone.utc)
    for old in folder.glob("*.json"):
        try:
            [challenge] = parse_challenges(json.loads(old.read_text(encoding="utf-8"))["challenge"])
            expired = challenge.expires is not None and parse_rfc3339(challenge.expires) <= now
        except (OSError, ValueError, KeyError, TypeError):
            expired = True
        if expired:
            old.unlink(missing_ok=True)


def read_approval(value: str) -> tuple[str, dict[str, Any]]:
    """An approval JWT given as itself or as a file holding it; its token and (unverified) claims."""
    import jwt

    token = value.strip()
    try:
        if Path(value).is_file():
            token = Path(value).read_text(encoding="utf-8").strip()
    except (OSError, ValueError):  # a JWT is far longer than a file name may be
        pass
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise ValueError(f"--approval: neither an approval JWT nor a file holding one ({exc}); "
                         "`mpp approve --out FILE` writes one") from None
    if not isinstance(claims, dict) or not isinstance(claims.get("challengeId"), str):
        raise ValueError("--approval: that JWT names no challengeId; is it an approval from `mpp approve`?")
    return token, claims


def load_pending(wallet_dir: str | Path, challenge_id: str, method: str, url: str):
    """The challenge saved for ``challenge_id`` by `mpp fetch --problem-out`, checked to be for this
    request. Raises ValueError naming the way out."""
    from mpp.protocol.headers import parse_challenges

    path = pending_path(wallet_dir, challenge_id)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"no quote waiting for approval in {wallet_dir} for challenge {challenge_id[:12]}...: run "
                         f"`mpp fetch --wallet {wallet_dir} --problem-out problem.json URL` first and approve that problem") from None
    if (saved.get("method"), saved.get("url")) != (method, url):
        raise ValueError(f"the approval is for {saved.get('method')} {saved.get('url')}, not {method} {url}: "
                         "retry that request")
    [challenge] = parse_challenges(saved["challenge"])
    return challenge, path


def describe_for_approver(problem: dict[str, Any]) -> tuple[list[str], str | None]:
    """What the approver is about to sign for, line by line, and the agent the fetch saved (if any).

    With the quote `mpp fetch` adds, the quote hash is computed here (IDENT-APR-07) and must equal the
    problem's; the amount and currency must be the quote's. Raises ValueError when they disagree."""
    from mpp.identity.proofs import quote_hash
    from mpp.protocol.headers import parse_challenges

    quote = problem.get("quote")
    lines = [f"amount   : {problem['amount']} {problem['currency']}", f"rule     : {problem['rule']}"]
    if not isinstance(quote, dict) or not isinstance(quote.get("challenge"), str):
        lines.append("resource : unknown (this problem document carries no quote; `mpp fetch --problem-out` adds it)")
        return lines, None
    [challenge] = parse_challenges(quote["challenge"])
    if challenge.id != problem["challengeId"] or quote_hash(challenge) != problem["quoteHash"]:
        raise ValueError("the problem's quoteHash is not the hash of the quote it carries: not signing")
    request = challenge.request_json
    if (str(request.get("amount")), request.get("currency")) != (str(problem["amount"]), problem["currency"]):
        raise ValueError("the problem's amount or currency is not the quote's: not signing")
    origin = urlsplit(str(quote.get("url", "")))
    lines[1:1] = [f"recipient: {request.get('recipient')}",
                  f"resource : {quote.get('method')} {origin.path or '/'}{'?' + origin.query if origin.query else ''}",
                  f"seller   : {challenge.realm} at {origin.scheme}://{origin.netloc}"]
    agent = quote.get("agent")
    return lines, agent if isinstance(agent, str) else None
