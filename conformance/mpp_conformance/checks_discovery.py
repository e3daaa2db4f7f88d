"""Profile `core`: the discovery draft's own requirements when a seller offers discovery, and wire rules
of the core draft that the other core checks do not judge (custom parameter names, `opaque`, unknown
credential members, plain HTTP).

Discovery (draft-payment-discovery-01) is OPTIONAL: a target whose ``GET /openapi.json`` is 404 skips
every discovery check here. When it is offered, these checks ask only what that draft requires:

* core.discovery-document: where and how it is served, its required top-level fields, and the shape of
  ``x-service-info`` when present (§4.1, §4.2, §4.3);
* core.discovery-payment-info: the shape of every ``x-payment-info`` (§4.4, §4.4.1);
* core.discovery-402-declared: every payable operation declares a 402 response (§4.5);
* core.discovery-payable-operation: the operation the target answers with a 402 is in the document,
  with ``x-payment-info`` on its Operation Object (§4, §4.4).

Whether the published offers *agree* with the live 402 is not the draft's to require (its §5: the 402
is authoritative and wins): MPP's own core.discovery-openapi (CORE-DISC-02, CORE-DISC-03) judges that.

Messages name credentials by what they are (probe, twin, genuine), never by value (CORE-CRED-06).
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Iterable
from urllib.parse import urlsplit

from mpp import Challenge, ParseError, b64url_decode, b64url_encode, canonical_json, parse_challenges

from .base import CheckContext, Response, Skip, register
from .checks_core import credential_header, send, unpaid
from .expect import describe, fail, no_5xx, problem_slug, status

__all__ = ["payment_params", "is_loopback", "find_operation", "offer_problems"]

OPENAPI_PATH = "/openapi.json"
_DRAFT_PARAMS = frozenset({"id", "realm", "method", "intent", "request", "description", "digest", "expires", "header", "opaque"})
_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_AMOUNT = re.compile(r"0|[1-9][0-9]*")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
EXTENSION_MEMBER = "conformanceExtension"  # the unknown member core.unknown-fields-ignored adds


# -- reading challenges as sent ---------------------------------------------------------------

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _quoted(s: str, pos: int) -> tuple[str | None, int]:
    out, pos = [], pos + 1
    while pos < len(s):
        c = s[pos]
        if c == '"':
            return "".join(out), pos + 1
        if c == "\\":
            pos += 1
            if pos >= len(s):
                break
            c = s[pos]
        out.append(c)
        pos += 1
    return None, len(s)


def _to_comma(s: str, pos: int) -> int:
    while pos < len(s) and s[pos] != ",":
        pos = _quoted(s, pos)[1] if s[pos] == '"' else pos + 1
    return pos


def _token(s: str, pos: int) -> tuple[str, int]:
    start = pos
    while pos < len(s) and s[pos] in _TCHAR:
        pos += 1
    return s[start:pos], pos


def _scan(value: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """The challenges of one WWW-Authenticate value: scheme and parameters, names spelled as sent
    (mpp's parser folds them to lowercase, which is right for reading and hides what this judges)."""
    found: list[tuple[str, list[tuple[str, str | None]]]] = []
    pos, n = 0, len(value)
    while True:
        while pos < n and value[pos] in " \t,":
            pos += 1
        if pos >= n:
            return found
        name, after = _token(value, pos)
        if not name:
            pos = _to_comma(value, pos + 1)
            continue
        p = after
        while p < n and value[p] in " \t":
            p += 1
        if p < n and value[p] == "=":
            q = p
            while q < n and value[q] == "=":
                q += 1
            while q < n and value[q] in " \t":
                q += 1
            if q >= n or value[q] == ",":  # token68 padding of another scheme's credentials
                pos = _to_comma(value, p)
                continue
            p += 1
            while p < n and value[p] in " \t":
                p += 1
            param: str | None
            param, p = _quoted(value, p) if p < n and value[p] == '"' else _token(value, p)
            if found:
                found[-1][1].append((name, param))
            pos = _to_comma(value, p)
        else:
            found.append((name, []))
            pos = after


def payment_params(values: Iterable[str]) -> list[list[tuple[str, str | None]]]:
    """The parameters of every Payment challenge in ``values`` (WWW-Authenticate field values), in
    order, each name exactly as the target spelled it."""
    return [params for value in values for scheme, params in _scan(value) if scheme.lower() == "payment" and params]


def is_loopback(host: str | None) -> bool:
    """``localhost``, 127.0.0.0/8 or ``::1`` (CORE-BUY-07's, and CORE-CHAL-14's, loopback hosts)."""
    if not host:
        return False
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def _unpaid_402(ctx: CheckContext) -> Response:
    resp = await unpaid(ctx)
    status(resp, 402, "unpaid request")
    return resp


def _lenient_challenges(resp: Response, what: str) -> list[Challenge]:
    """The Payment challenges of ``resp`` (whether the 402 is marked no-store is not asked here:
    core.challenge-well-formed asks it)."""
    try:
        return parse_challenges(resp.headers.getall("WWW-Authenticate", []))
    except ParseError as exc:
        fail(f"{what}: no parseable Payment challenge in WWW-Authenticate ({exc})")
    raise AssertionError("unreachable")


# -- wire rules of the core draft -----------------------------------------------------------------

@register("core.parameter-names-lowercase", "custom challenge parameters have lowercase names", "core",
          ["CORE-CHAL-12"], draft="draft §9.3 MUST")
async def parameter_names_lowercase(ctx: CheckContext) -> str:
    resp = await _unpaid_402(ctx)
    challenges = payment_params(resp.headers.getall("WWW-Authenticate", []))
    if not challenges:
        fail("unpaid request: HTTP 402 without a Payment challenge in WWW-Authenticate")
    custom = [(n, name) for n, params in enumerate(challenges, 1) for name, _ in params if name.lower() not in _DRAFT_PARAMS]
    upper = [(n, name) for n, name in custom if name != name.lower()]
    if upper:
        shown = ", ".join(f"{name!r} (challenge {n})" for n, name in upper[:5])
        fail(f"custom challenge parameter(s) {shown} not lowercase: parameters an implementation adds MUST use "
             "lowercase names (draft §9.3)")
    if not custom:
        return f"{len(challenges)} challenge(s), no custom parameters"
    return f"{len(challenges)} challenge(s); custom parameters {', '.join(sorted({name for _, name in custom}))}, all lowercase"


def opaque_problem(value: str | None) -> str | None:
    """Why an ``opaque`` value breaks draft §5.1.2 (base64url of the JCS form of a flat
    string-to-string JSON object), or None when it does not."""
    if value is None:
        return "the parameter has no value"
    if value.endswith("="):
        return "it carries base64 padding ('='); the draft's base64url values are unpadded"
    if _B64URL.fullmatch(value) is None or len(value) % 4 == 1:
        return "it is not base64url"
    try:
        raw = b64url_decode(value)
        doc = json.loads(raw.decode("utf-8"))
    except (ParseError, UnicodeDecodeError, ValueError, RecursionError):
        return "it does not decode to JSON text"
    if not isinstance(doc, dict):
        return f"it decodes to a JSON {type(doc).__name__}, not an object"
    bad = [k for k, v in doc.items() if not isinstance(v, str)]
    if bad:
        kinds = ", ".join(f"{k!r} is {'null' if doc[k] is None else type(doc[k]).__name__}" for k in bad[:3])
        return f"it is not a flat string-to-string map: member {kinds}"
    try:
        canonical = canonical_json(doc)
    except ParseError:
        return "its JSON cannot be canonicalised"
    if raw != canonical:
        return "its JSON is not in RFC 8785 (JCS) canonical form"
    return None


@register("core.opaque-string-map", "opaque, when present, is base64url of JCS JSON: a flat string-to-string map", "core",
          ["CORE-CHAL-13"], draft="draft §5.1.2 MUST")
async def opaque_string_map(ctx: CheckContext) -> str:
    resp = await _unpaid_402(ctx)
    challenges = payment_params(resp.headers.getall("WWW-Authenticate", []))
    opaques = [(n, value) for n, params in enumerate(challenges, 1) for name, value in params if name.lower() == "opaque"]
    if not opaques:
        raise Skip("no challenge of the unpaid 402 carries opaque (OPTIONAL in the draft)")
    for n, value in opaques:
        why = opaque_problem(value)
        if why is not None:
            fail(f"challenge {n}: opaque is not base64url of a JCS-serialised JSON object whose values are all strings: "
                 f"{why} (draft §5.1.2)")
    return f"{len(opaques)} opaque value(s), each a JCS flat string map"


@register("core.unknown-fields-ignored", "unknown credential members are ignored: a probe with them is answered as its twin; "
          "a genuine credential with one still pays", "core", ["CORE-CRED-02"], draft="draft §9.2.1 MUST")
async def unknown_fields_ignored(ctx: CheckContext) -> str:
    # Two challenges from two unpaid requests, one per twin: a seller may use up a challenge on refusal.
    first = _lenient_challenges(await _unpaid_402(ctx), "unpaid request")[0]
    second = _lenient_challenges(await _unpaid_402(ctx), "unpaid request")[0]
    plain = await send(ctx, credential_header(first))
    doc = {"challenge": {**second.echo(), EXTENSION_MEMBER: "unknown member of the echoed challenge"},
           "payload": {"type": "conformance-probe"}, EXTENSION_MEMBER: {"note": "unknown top-level member"}}
    extra = await send(ctx, "Payment " + b64url_encode(canonical_json(doc)))
    what = "a probe credential with an unknown top-level member and an unknown member in its echoed challenge"
    no_5xx(plain, "its twin without them")
    no_5xx(extra, what)
    if (extra.status, problem_slug(extra)) != (plain.status, problem_slug(plain)):
        fail(f"{what} got {describe(extra)}, its twin without them {describe(plain)}: the unknown members were not "
             "ignored (draft §9.2.1)")
    note = f"a probe with unknown members answered as its twin ({describe(plain)})"
    if not ctx.options.get("pay_with"):
        return note + "; no --pay-with, so no genuine credential was sent with one"
    try:
        return note + "; " + await _genuine_with_extension(ctx)
    except Skip as exc:  # the payer's limitation: the probe twins above still judged the seller
        return note + f"; the genuine credential was not sent with one ({exc})"


async def _genuine_with_extension(ctx: CheckContext) -> str:
    """The payer's credential with one unknown top-level member spliced in (the payer's bytes, payload
    included, are kept as they are: a method may sign them) still pays."""
    from .checks_full import Paid, payer_for, skip_if_payer_limited
    from .paying import CannotPay

    payer = payer_for(ctx)
    challenges = _lenient_challenges(await _unpaid_402(ctx), "unpaid request")
    try:
        challenge = payer.choose(challenges)
        paid = Paid(challenge, payer.authorize(challenge))
    except CannotPay as exc:
        raise Skip(f"not paid: {exc}") from None
    raw = b64url_decode(paid.authorization.partition(" ")[2].strip(" \t")).rstrip()
    if not raw.endswith(b"}"):
        raise Skip("the payer's credential is not a JSON object: no member can be added to it")
    spliced = raw[:-1] + b',"' + EXTENSION_MEMBER.encode() + b'":"unknown top-level member"}'
    resp = await ctx.request((ctx.options.get("method") or "GET").upper(), ctx.target,
                             headers=[("Authorization", "Payment " + b64url_encode(spliced))], data=ctx.options.get("data"))
    what = "the genuine credential with an unknown top-level member added"
    no_5xx(resp, what)
    skip_if_payer_limited(resp, paid, what)
    if not 200 <= resp.status < 300:
        fail(f"{what}: {describe(resp)}; the unknown member was not ignored (draft §9.2.1)")
    return f"the genuine credential with an unknown top-level member paid (HTTP {resp.status})"


@register("core.no-plaintext-challenges", "no Payment challenge is issued over plain HTTP (loopback targets skip)", "core",
          ["CORE-CHAL-14"], draft="draft §11.2 MUST NOT")
async def no_plaintext_challenges(ctx: CheckContext) -> str:
    parts = urlsplit(ctx.target)
    if parts.scheme == "https":
        return "the target is https: its challenges travel over TLS"
    if is_loopback(parts.hostname):
        raise Skip(f"the target is plain http on the loopback host {parts.hostname}: a local test target cannot show "
                   "whether the seller issues challenges over unencrypted HTTP on a network (run the suite against "
                   "its deployed URL)")
    resp = await unpaid(ctx)
    challenges = payment_params(resp.headers.getall("WWW-Authenticate", []))
    if resp.status == 402 and challenges:
        fail(f"over plain http to {parts.hostname}, the unpaid request got HTTP 402 with {len(challenges)} Payment "
             "challenge(s): servers MUST NOT issue Payment challenges over unencrypted HTTP (draft §11.2)")
    return f"over plain http the target answered HTTP {resp.status} without issuing a Payment challenge"


# -- discovery -------------------------------------------------------------------------------------

def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


async def _discovery(ctx: CheckContext) -> tuple[Response, Any]:
    """GET /openapi.json at the target's origin: the response and its JSON (None when it is not JSON
    but says it is). Skip when the target offers no discovery."""
    resp = await ctx.request("GET", _origin(ctx.target) + OPENAPI_PATH)
    if resp.status == 404:
        raise Skip("GET /openapi.json: HTTP 404: the target offers no discovery (OPTIONAL)")
    if resp.status != 200:
        raise Skip(f"GET /openapi.json: HTTP {resp.status}: taken as no discovery offered (OPTIONAL)")
    ctype = resp.headers.get("Content-Type", "")
    try:
        return resp, json.loads(resp.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        if "json" not in ctype.lower():
            raise Skip(f"GET /openapi.json: HTTP 200 with Content-Type {ctype!r} and no JSON body: taken as no "
                       "discovery offered (OPTIONAL)") from None
        return resp, None


async def _document(ctx: CheckContext) -> dict[str, Any]:
    """The discovery document's ``paths``-bearing object; Skip when there is none to judge
    (core.discovery-document reports a malformed one)."""
    _, doc = await _discovery(ctx)
    if not isinstance(doc, dict) or not isinstance(doc.get("paths"), dict):
        raise Skip("the discovery document has no paths object to judge (core.discovery-document reports it)")
    return doc


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, item[method]) for path, item in doc["paths"].items() if isinstance(item, dict)
            for method in _HTTP_METHODS if isinstance(item.get(method), dict)]


def _path_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^{}/]*\})", template)
    return re.compile("".join("[^/]+" if p.startswith("{") and p.endswith("}") else re.escape(p) for p in parts))


def find_operation(doc: dict[str, Any], url: str, method: str) -> tuple[str | None, dict[str, Any] | None]:
    """The path template of ``doc`` that describes ``url`` (after any ``servers`` base path; templated
    segments match any segment) and its Operation Object for ``method``, or (template, None), or
    (None, None) when no path matches."""
    path = urlsplit(url).path or "/"
    bases = {""}
    for server in doc.get("servers") or []:
        base = urlsplit(server.get("url", "") if isinstance(server, dict) else "").path.rstrip("/")
        if base and "{" not in base:
            bases.add(base)
    candidates = [path[len(b):] or "/" for b in sorted(bases, key=len, reverse=True) if path.startswith(b)]
    for rel in candidates:
        if rel in doc["paths"]:
            return rel, _op(doc, rel, method)
    for rel in candidates:
        for template in doc["paths"]:
            if isinstance(template, str) and "{" in template and _path_regex(template).fullmatch(rel):
                return template, _op(doc, template, method)
    return None, None


def _op(doc: dict[str, Any], template: str, method: str) -> dict[str, Any] | None:
    item = doc["paths"].get(template)
    op = item.get(method.lower()) if isinstance(item, dict) else None
    return op if isinstance(op, dict) else None


@register("core.discovery-document", "openapi.json, when offered, is served as application/json (over HTTPS) with "
          "openapi, info.title, info.version and paths, and any x-service-info in the draft's shape", "core", ["CORE-DISC-04"],
          draft="discovery §4 MUST; discovery §4.1 MUST; discovery §4.2 MUST; discovery §4.3.1 MUST; discovery §4.3.2 MUST")
async def discovery_document(ctx: CheckContext) -> str:
    resp, doc = await _discovery(ctx)
    parts = urlsplit(ctx.target)
    if parts.scheme != "https" and not is_loopback(parts.hostname):
        fail(f"GET /openapi.json was served over plain {parts.scheme} to {parts.hostname}; the document MUST be served "
             "over HTTPS (discovery §4.1)")
    ctype = resp.headers.get("Content-Type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        fail(f"GET /openapi.json: Content-Type {ctype!r}, not application/json (discovery §4.1)")
    if not isinstance(doc, dict):
        fail("GET /openapi.json: the body is not a JSON object (discovery §4)")
    missing = []
    if not isinstance(doc.get("openapi"), str) or not doc["openapi"].startswith("3."):
        missing.append(f"openapi (an OpenAPI 3.x version; got {doc.get('openapi')!r})")
    info = doc.get("info")
    for name in ("title", "version"):
        if not isinstance(info, dict) or not isinstance(info.get(name), str):
            missing.append(f"info.{name}")
    if not isinstance(doc.get("paths"), dict) or not _operations(doc):
        missing.append("paths (at least one path with an operation)")
    if missing:
        fail(f"the discovery document lacks {', '.join(missing)} (discovery §4.2)")
    problems = service_info_problems(doc["x-service-info"]) if "x-service-info" in doc else []
    if problems:
        fail(f"x-service-info: {'; '.join(problems[:5])} (discovery §4.3.1, §4.3.2)")
    transport = "https" if parts.scheme == "https" else f"loopback {parts.scheme} (HTTPS not judged)"
    return f"OpenAPI {doc['openapi']}, {info['title']!r} version {info['version']!r}, {len(doc['paths'])} path(s), over {transport}"


_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(?:[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*")


def service_info_problems(info: Any) -> list[str]:
    """What of draft-payment-discovery §4.3 an ``x-service-info`` value breaks: ``categories``, when
    present, an array of strings (§4.3.1); ``docs``, when present, an object whose links are URIs
    (RFC 3986; §4.3.2). Members the draft does not name are not judged."""
    if not isinstance(info, dict):
        return [f"it is a JSON {type(info).__name__}, not an object"]
    problems = []
    categories = info.get("categories")
    if "categories" in info and (not isinstance(categories, list) or not all(isinstance(c, str) for c in categories)):
        problems.append("categories is not an array of strings")
    docs = info.get("docs")
    if "docs" in info and not isinstance(docs, dict):
        problems.append("docs is not an object")
    elif isinstance(docs, dict):
        for name in ("apiReference", "homepage", "llms"):
            if name in docs and (not isinstance(docs[name], str) or _URI.fullmatch(docs[name]) is None):
                problems.append(f"docs.{name} {str(docs[name])[:80]!r} is not a URI")
    return problems


def offer_problems(info: Any) -> list[str]:
    """What of draft-payment-discovery §4.4 and §4.4.1 an ``x-payment-info`` value breaks (empty if nothing)."""
    if not isinstance(info, dict):
        return [f"x-payment-info is a JSON {type(info).__name__}, not an object"]
    if "offers" in info:
        offers = info["offers"]
        if not isinstance(offers, list) or not offers:
            return ["offers is not an array of one or more payment offers"]
        labelled = [(f"offer {n}", o) for n, o in enumerate(offers, 1)]
    else:
        labelled = [("the single offer", info)]
    problems = []
    for label, offer in labelled:
        if not isinstance(offer, dict):
            problems.append(f"{label} is not an object")
            continue
        for name in ("intent", "method"):
            if not isinstance(offer.get(name), str) or not offer[name]:
                problems.append(f"{label} has no {name} (REQUIRED, a string)")
        if "amount" not in offer:
            problems.append(f"{label} has no amount (REQUIRED: a string of digits, or null)")
        elif offer["amount"] is not None:
            amount = offer["amount"]
            if not isinstance(amount, str) or _AMOUNT.fullmatch(amount) is None:
                why = "has leading zeros" if isinstance(amount, str) and amount.isdigit() and amount.isascii() else \
                    "is not a string of ASCII digits"
                problems.append(f"{label}: amount {amount!r} {why}")
    return problems


@register("core.discovery-payment-info", "every x-payment-info is one offer or offers[], each with intent, method and "
          "amount (digits without leading zeros, or null)", "core", ["CORE-DISC-06"],
          draft="discovery §4.4 MUST; discovery §4.4.1 MUST; discovery §4.4.1 MUST NOT")
async def discovery_payment_info(ctx: CheckContext) -> str:
    doc = await _document(ctx)
    payable = [(path, method, op["x-payment-info"]) for path, method, op in _operations(doc) if "x-payment-info" in op]
    if not payable:
        raise Skip("no operation of the discovery document carries x-payment-info "
                   "(core.discovery-payable-operation judges whether the target's should)")
    problems = [f"{method.upper()} {path}: {p}" for path, method, info in payable for p in offer_problems(info)]
    if problems:
        fail(f"{len(problems)} departure(s) from the x-payment-info shape: {'; '.join(problems[:5])}"
             + (" ..." if len(problems) > 5 else "") + " (discovery §4.4, §4.4.1)")
    count = sum(len(info["offers"]) if "offers" in info else 1 for _, _, info in payable)
    return f"{len(payable)} payable operation(s), {count} offer(s), each well formed"


async def _target_operation(ctx: CheckContext, doc: dict[str, Any]) -> tuple[str, str | None, dict[str, Any] | None] | None:
    """The target's operation as the document gives it, when the target answers it with a 402 and a
    Payment challenge (it is payable); None when it does not."""
    resp = await unpaid(ctx)
    if resp.status != 402 or not payment_params(resp.headers.getall("WWW-Authenticate", [])):
        return None
    method = (ctx.options.get("method") or "GET").lower()
    template, op = find_operation(doc, ctx.target, method)
    return method, template, op


@register("core.discovery-402-declared", "every payable operation of openapi.json declares a 402 response", "core",
          ["CORE-DISC-05"], draft="discovery §4.5 MUST")
async def discovery_402_declared(ctx: CheckContext) -> str:
    doc = await _document(ctx)
    payable = {(path, method): op for path, method, op in _operations(doc) if "x-payment-info" in op}
    target = await _target_operation(ctx, doc)
    if target is not None and target[2] is not None:
        payable[(target[1], target[0])] = target[2]
    if not payable:
        raise Skip("the discovery document names no payable operation (core.discovery-payable-operation judges the target's)")
    undeclared = [f"{method.upper()} {path}" for (path, method), op in payable.items()
                  if not isinstance(op.get("responses"), dict) or "402" not in op["responses"]]
    if undeclared:
        fail(f"payable operation(s) {', '.join(undeclared[:5])} declare no 402 response in responses (discovery §4.5)")
    return f"{len(payable)} payable operation(s), each declaring 402"


@register("core.discovery-payable-operation", "the operation the target answers with 402 is in openapi.json with "
          "x-payment-info on its Operation Object", "core", ["CORE-DISC-05"],
          draft="discovery §4 MUST; discovery §4.4 MUST")
async def discovery_payable_operation(ctx: CheckContext) -> str:
    doc = await _document(ctx)
    target = await _target_operation(ctx, doc)
    if target is None:
        raise Skip("the target did not answer the unpaid request with 402 and a Payment challenge: not payable, "
                   "nothing for discovery to list")
    method, template, op = target
    path = urlsplit(ctx.target).path or "/"
    if template is None:
        fail(f"the discovery document does not describe {method.upper()} {path}, which answers 402: it MUST describe "
             "the payment-enabled operations (discovery §4)")
    if op is None:
        fail(f"the discovery document has path {template} but no {method} operation there, and "
             f"{method.upper()} {path} answers 402 (discovery §4)")
    if "x-payment-info" not in op:
        hint = " (it sits on the Path Item, not the operation)" if "x-payment-info" in doc["paths"][template] else ""
        fail(f"{method.upper()} {template} answers 402 but its operation carries no x-payment-info{hint} (discovery §4.4)")
    return f"{method.upper()} {template} is listed with x-payment-info"
