"""What a check is made of: its verdicts, the evidence it records (credentials redacted), the
context it asks the target through, and the registry `register` adds it to. The runner is in
mpp_conformance.framework, above the check modules."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Awaitable, Callable, Iterable

import aiohttp

__all__ = ["Verdict", "Exchange", "Result", "Response", "Check", "CheckFn", "CheckContext", "register", "registered",
           "CheckFailed", "CheckError", "Skip", "redact", "SentCredentials", "REDACTED", "MIN_FRAGMENT", "LEAK_MIN",
           "DRAFTS", "level_of", "cited"]


class Verdict(str, Enum):
    """What became of a check on a target."""

    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"  # a SHOULD-level check found a departure: reported, never a failure of the run
    SKIP = "skip"  # the check could not apply to this target (say why)
    ERROR = "error"  # the check itself could not run (network, target down)


# The published documents a check may cite, by the short name spec/README.md's provenance markers
# use ("draft §5.1.1 MUST"), and the revision the suite was written against.
DRAFTS = {"draft": "draft-httpauth-payment-02", "charge": "draft-payment-intent-charge-00",
          "discovery": "draft-payment-discovery-01", "RFC9110": "RFC 9110"}
_KEYWORD = r"(?:MUST NOT|MUST|SHOULD NOT|SHOULD|ABNF|prose)"
_SOURCE = re.compile(rf"(draft|charge|discovery|RFC9110) §((?:[A-Z]|\d+)(?:\.\d+)*) ({_KEYWORD})")


def level_of(draft: str | None) -> str:
    """A check's level from what it cites: ``extension`` (cites no draft: MPP's own profile),
    ``SHOULD`` (every source it cites is a SHOULD or SHOULD NOT) or ``MUST`` (grammar, prose
    stated as fact, MUST and MUST NOT)."""
    if draft is None:
        return "extension"
    keywords = [m.group(3) for m in map(_SOURCE.fullmatch, draft.split("; ")) if m]
    return "SHOULD" if keywords and all(k.startswith("SHOULD") for k in keywords) else "MUST"


def cited(draft: str | None) -> str:
    """``draft`` with each document's short name spelled out: what reports show."""
    if draft is None:
        return "extension"
    return "; ".join(_SOURCE.sub(lambda m: f"{DRAFTS[m.group(1)]} §{m.group(2)} {m.group(3)}", src) for src in draft.split("; "))


class CheckFailed(AssertionError):
    """Raised by a check when the target departs from the spec."""


class CheckError(Exception):
    """The check could not run for a reason outside the target (a payer program that failed, say):
    reported as the check's ERROR with this message alone, no traceback."""


@dataclass
class Exchange:
    """One HTTP request and its response, as evidence. Credentials are redacted."""

    method: str
    url: str
    request_headers: list[tuple[str, str]]
    request_body: str
    status: int | None = None
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    response_body: str = ""
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "request": {"method": self.method, "url": self.url, "headers": self.request_headers, "body": self.request_body},
            "response": None if self.status is None else {"status": self.status, "headers": self.response_headers, "body": self.response_body},
            "error": self.error,
        }


_SECRET_HEADERS = {"authorization", "payment-authorization", "cookie", "set-cookie"}
_MAX_BODY = 4000


def redact(name: str, value: str) -> str:
    """Credentials never reach a report: keep the scheme and a short fingerprint only."""
    if name.lower() in _SECRET_HEADERS:
        scheme, _, rest = value.partition(" ")
        return f"{scheme} [redacted {len(rest)} chars]" if rest else "[redacted]"
    return value


REDACTED = "[credential redacted]"
MIN_FRAGMENT = 24  # characters of a credential token that count as the credential (CORE-CRED-06)
LEAK_MIN = 2 * MIN_FRAGMENT  # characters of one run of fragments that fail core.no-credential-leak
_CREDENTIAL_HEADERS = {"authorization", "payment-authorization"}


class SentCredentials:
    """Every credential the suite sent in one run, as the set of its MIN_FRAGMENT-character
    fragments (of the token, and of the decoded payload's signature): what a seller must never
    send back (CORE-CRED-06) and what no report may show. Tokens shorter than MIN_FRAGMENT are
    ignored: too short to be secret, and short enough to occur by chance.

    A credential echoes its challenge, and base64url of equal text lines up one time in three, so
    fragments that encode only the echoed challenge (which the seller wrote: its id comes back in
    the receipt, its description inside ``request``) are public, as is any fragment already seen
    in a response: neither is counted nor redacted."""

    def __init__(self) -> None:
        self._fragments: set[str] = set()
        self._public: set[str] = set()
        self.leaks: list[str] = []  # where a target sent one back, described without the value

    def add(self, value: str) -> None:
        token = value.strip(" \t").partition(" ")[2].strip(" \t") or value.strip(" \t")
        echoed, signature = _echo_fragments(token)
        self._fragments.update((_grams(token) - echoed | _grams(signature)) - self._public)

    def seen(self, text: str) -> None:
        """``text`` came from the target: what of it is no sent credential is public."""
        spans = self.spans(text)
        bounds = [0] + [b for span in spans for b in span] + [len(text)]
        for start, end in zip(bounds[::2], bounds[1::2]):
            self._public.update(_grams(text[start:end]) - self._fragments)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """The merged spans of ``text`` covered by fragments of a sent credential."""
        spans: list[tuple[int, int]] = []
        if not self._fragments:
            return spans
        for i in range(len(text) - MIN_FRAGMENT + 1):
            if text[i:i + MIN_FRAGMENT] in self._fragments:
                if spans and i <= spans[-1][1]:
                    spans[-1] = (spans[-1][0], i + MIN_FRAGMENT)
                else:
                    spans.append((i, i + MIN_FRAGMENT))
        return spans

    def scrub(self, text: str) -> str:
        """``text`` with every fragment of a sent credential replaced by REDACTED."""
        for start, end in reversed(self.spans(text)):
            text = text[:start] + REDACTED + text[end:]
        return text


def _grams(text: str) -> set[str]:
    return {text[i:i + MIN_FRAGMENT] for i in range(len(text) - MIN_FRAGMENT + 1)}


_ECHO_START = re.compile(r'\{\s*"(?:id|realm|method|intent|request)"\s*:')
_NOT_B64URL = re.compile(r"[^A-Za-z0-9_-]")


def _echo_fragments(token: str) -> tuple[set[str], str]:
    """The fragments of ``token`` that encode only echoed challenges (every JSON object opening with
    a challenge member, wherever a probe put it), and the payload's ``signature`` (or ""). Probes
    that cut, pad, split or re-alphabet a token still echo: their token is mended before decoding."""
    from mpp import b64url_decode

    clean = re.sub(r"[\s=]", "", token).replace("+", "-").replace("/", "_")
    bad = _NOT_B64URL.search(clean)
    clean = clean[:bad.start()] if bad else clean
    clean = clean[:len(clean) - len(clean) % 4]
    try:
        raw = b64url_decode(clean)
    except Exception:  # noqa: BLE001 - nothing decodable, nothing echoed
        return set(), ""
    text = raw.decode("latin-1")  # one character per byte: offsets are byte offsets
    spans, decoder, end = [], json.JSONDecoder(), 0
    for m in _ECHO_START.finditer(text):
        if m.start() < end:
            continue  # inside an echo already found
        try:
            end = decoder.raw_decode(text, m.start())[1]
        except (ValueError, RecursionError):
            continue
        spans.append((m.start(), end))
    # Fragment j encodes bytes 6j//8 to (6j+143)//8; it is public when all of them lie in one echo.
    public = {clean[j:j + MIN_FRAGMENT] for j in range(len(clean) - MIN_FRAGMENT + 1)
              if any(a <= 6 * j // 8 and (6 * j + 143) // 8 < b for a, b in spans)}
    try:
        payload = json.loads(raw).get("payload")
    except (ValueError, AttributeError, RecursionError):
        payload = None
    signature = payload.get("signature") if isinstance(payload, dict) else None
    return public, signature if isinstance(signature, str) else ""


def _text(body: bytes | str | None, sent: SentCredentials | None = None) -> str:
    if body is None:
        return ""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    if sent is not None:  # before truncation, so no cut-off fragment of a credential survives
        text = sent.scrub(text)
    return text if len(text) <= _MAX_BODY else text[:_MAX_BODY] + f"... [{len(text) - _MAX_BODY} more chars]"


@dataclass
class Result:
    """One check's verdict on a target, with the message and the evidence that led to it."""

    check_id: str
    title: str
    profile: str
    requirements: list[str]
    verdict: Verdict
    message: str
    duration_ms: float
    exchanges: list[Exchange] = field(default_factory=list)
    target: str = ""
    level: str = "extension"  # MUST, SHOULD (a departure is a warning) or extension (MPP's profile)
    draft: str | None = None  # the draft section(s) and keyword(s) the check tests, short form

    @property
    def cites(self) -> str:
        return cited(self.draft)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.check_id,
            "title": self.title,
            "profile": self.profile,
            "level": self.level,
            "cites": self.cites,
            "requirements": self.requirements,
            "verdict": self.verdict.value,
            "message": self.message,
            "durationMs": round(self.duration_ms, 1),
            "target": self.target,
            "evidence": [e.to_json() for e in self.exchanges],
        }


class Response:
    """What a check sees of a response: status, headers (case-insensitive), body."""

    def __init__(self, status: int, headers: "aiohttp.typedefs.LooseHeaders", body: bytes) -> None:
        from multidict import CIMultiDict

        self.status = status
        self.headers = CIMultiDict(headers)
        self.body = body

    def json(self) -> Any:
        """The body as strict JSON (CORE-CRED-07); ParseError, a ValueError, otherwise."""
        from mpp.protocol.wire import loads_strict

        return loads_strict(self.body, "the response body")

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@dataclass
class CheckContext:
    """What a check gets: the target, an HTTP session that records evidence, the options."""

    target: str
    session: aiohttp.ClientSession
    options: dict[str, Any]
    exchanges: list[Exchange] = field(default_factory=list)
    sent: SentCredentials = field(default_factory=SentCredentials)  # shared by every check of a run
    check_id: str = ""

    async def request(self, method: str, url: str, *, headers: Iterable[tuple[str, str]] | dict[str, str] | None = None,
                      data: bytes | None = None, timeout: float = 15.0) -> Response:
        """Send one request (no redirects followed) and record it, redacted, as evidence."""
        hdrs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        for k, v in hdrs:
            if k.lower() in _CREDENTIAL_HEADERS:
                self.sent.add(v)
        ex = Exchange(method, url, [(k, self.sent.scrub(redact(k, v))) for k, v in hdrs], _text(data, self.sent))
        self.exchanges.append(ex)
        from multidict import CIMultiDict

        try:
            async with self.session.request(method, url, headers=CIMultiDict(hdrs), data=data, allow_redirects=False,
                                            timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                body = await resp.read()
                ex.status = resp.status
                self._look_for_leaks(method, url, resp.status, resp.headers.items(), body)
                ex.response_headers = [(k, self.sent.scrub(redact(k, v))) for k, v in resp.headers.items()]
                ex.response_body = _text(body, self.sent)
                return Response(resp.status, resp.headers, body)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            ex.error = self.sent.scrub(f"{type(exc).__name__}: {exc}")
            raise

    def _look_for_leaks(self, method: str, url: str, status: int, headers: Iterable[tuple[str, str]], body: bytes) -> None:
        """Note (by place and size, never by value) every sent credential this response carries."""
        where = [(f"header {k}", v) for k, v in headers] + [("body", body.decode("utf-8", errors="replace"))]
        for place, text in where:
            # A lone fragment can still be chance: a payload's text lined up with the same text in a
            # receipt (a timestamp's first 18 bytes). A copied credential covers far more.
            # Only refusals are judged (the draft forbids revealing credentials in errors): a 2xx's
            # receipt encodes what the credential also echoes (ids, amounts), and base64url of shared
            # text lines up by chance at one offset in three.
            covered = status >= 400 and sum(end - start for start, end in self.sent.spans(text) if end - start >= LEAK_MIN)
            if covered:
                self.sent.leaks.append(f"{self.check_id or 'a check'}: {method} {url} -> HTTP {status}, {place}: "
                                       f"{covered} characters of a credential the suite sent")
            self.sent.seen(text)


CheckFn = Callable[[CheckContext], Awaitable[str | None]]


@dataclass(frozen=True)
class Check:
    """A registered check: its id, profile, the spec ids and draft text it covers, and its function."""

    id: str
    title: str
    profile: str  # the group it belongs to: "core", "full", "identity", "pricing", "session", ...
    requirements: tuple[str, ...]
    fn: CheckFn
    last: bool = False  # runs after every other check of the run (it judges what they saw)
    draft: str | None = None  # "draft §5.1.1 MUST; draft §11.10 MUST": what of the drafts it tests

    @property
    def level(self) -> str:
        return level_of(self.draft)


_REGISTRY: dict[str, Check] = {}
_ID = re.compile(r"[a-z]+(\.[a-z0-9-]+)+")


def register(check_id: str, title: str, profile: str, requirements: Iterable[str], *,
             draft: str | None = None, last: bool = False) -> Callable[[CheckFn], CheckFn]:
    """Decorator: a check returns a short note on success, raises CheckFailed on a departure, or
    raises Skip(reason) when it does not apply to the target.

    ``draft`` names what of the published drafts the check tests, as spec/README.md's provenance
    markers do: ``"draft §5.1.1 MUST"``, several joined by ``"; "``. A check with ``draft`` judges
    only that (it is in the ``draft`` profile; a SHOULD-level one warns instead of failing); a
    check without it tests MPP's own profile (level ``extension``) and cites its spec ids."""
    if _ID.fullmatch(check_id) is None:
        raise ValueError(f"bad check id {check_id!r}")
    if draft is not None and not all(_SOURCE.fullmatch(src) for src in draft.split("; ")):
        raise ValueError(f"check {check_id}: bad draft citation {draft!r} (e.g. 'draft §5.1.1 MUST')")

    def add(fn: CheckFn) -> CheckFn:
        if check_id in _REGISTRY:
            raise ValueError(f"duplicate check id {check_id!r}")
        _REGISTRY[check_id] = Check(check_id, title, profile, tuple(requirements), fn, last, draft)
        return fn

    return add


class Skip(Exception):
    """The check does not apply to this target; the message says why."""


def registered() -> list[Check]:
    """Every check registered so far, in the order of registration."""
    return list(_REGISTRY.values())
