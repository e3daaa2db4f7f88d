"""Profile `identity`: the attacks of spec/identity.md ("Attacks and the refusal each gets"),
each sent black-box over HTTP against a route of a seller implementing the extension.

Every check echoes a real challenge of the target and builds a `ledger`-method payload signed
by the suite's agent key (payer account ``options["account"]``, default ``acct:buyer``), with an
``identity`` member made of the suite's own mandates. The target refuses before settling, so
no funds are needed. The refusal must carry the problem type ``urn:mpp:problem:<slug>`` and
status of spec/identity.md §11, no receipt, never a 5xx; a 402 a fresh challenge and its
``challengeId``, a 403 no challenge, both ``Cache-Control: no-store`` (IDENT-ERR-01).

Trust. A seller checks the JWS of the root before trusting its issuer (IDENT-DLG-05), so the
malformed-mandate attacks and the untrusted principal are checked with any keys; every other
refusal comes after the trust check and needs the target to trust the suite's principal:
`mpp-conformance principal DIR`, register the DID it prints, pass ``--identity-keys DIR``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, Sequence
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization

from mpp import Challenge, ChargeRequest, Credential, ParseError, SigningKey, b64url_decode, b64url_encode, format_credential
from mpp.protocol.errors import EXTENSION_PROBLEM_BASE, PROBLEM_BASE
from mpp.identity import MANDATE_TYP, is_canonical_resource, issue_approval, issue_mandate, proof_message, quote_hash
from mpp.methods.ledger import LedgerBuyerMethod

from .base import CheckContext, CheckFailed, Response, Skip, register
from .checks_core import send, unpaid
from .expect import fail, fresh_challenges, no_5xx, no_receipt, problem, status
from .principal import SuiteKeys, keys_for, register_hint

__all__ = ["NOT_TRUSTED", "IdentityKit"]

NOT_TRUSTED = "the target does not trust the suite's principal; run `mpp-conformance principal DIR` and register it"
REVOKED_SKIP = ("a revoked mandate cannot be checked black-box: the spec defines no endpoint through which the suite "
                "could record a revocation at the target's ledger (IDENT-REV-02); test it in-process")
MAX_INT = 2**53 - 1
_PATTERN = re.compile(r"[A-Z]+ /[\x21-\x7e]*")
_UNSET: Any = object()


def _claims(token: str) -> dict[str, Any]:
    return json.loads(b64url_decode(token.split(".")[1]))


def _forged(header: dict[str, Any], claims: dict[str, Any], signature: bytes) -> str:
    def part(obj: dict[str, Any]) -> str:
        return b64url_encode(json.dumps(obj, separators=(",", ":")).encode())

    return f"{part(header)}.{part(claims)}.{b64url_encode(signature)}"


@dataclass
class Quote:
    """A ledger charge challenge of the target and its decoded request."""

    challenge: Challenge
    request: ChargeRequest

    @property
    def amount(self) -> int:
        return self.request.amount_int


class IdentityKit:
    """What every identity check needs: the keys, a fresh quote, mandates and credentials."""

    def __init__(self, ctx: CheckContext) -> None:
        self.ctx = ctx
        self.keys: SuiteKeys = keys_for(ctx.options)
        self.account: str = ctx.options.get("account") or "acct:buyer"
        self.now = datetime.now(timezone.utc)
        self.not_before = self.now - timedelta(minutes=10)
        self.expires = self.now + timedelta(hours=1)

    # -- trust ---------------------------------------------------------------------

    def not_trusted(self) -> Skip:
        if self.keys.generated:
            return Skip(f"{NOT_TRUSTED} (no --identity-keys given: the suite made throwaway keys)")
        did = self.keys.principal.did
        return Skip(f"the target does not trust the suite's principal {did}; {register_hint(did)}")

    def need_trust(self) -> None:
        """Throwaway keys cannot be trusted: a check whose refusal comes after the trust check skips."""
        if self.keys.generated:
            raise self.not_trusted()

    async def trusted(self) -> bool:
        """Whether the target accepts the suite's principal: a correct chain is not refused as untrusted."""
        q = await self.quote()
        resp = await send(self.ctx, self.credential(q, [self.mandate(q)], self.keys.agent))
        return _problem_type(resp) != EXTENSION_PROBLEM_BASE + "mandate-untrusted"

    # -- quotes --------------------------------------------------------------------

    async def quote(self) -> Quote:
        resp = await unpaid(self.ctx)
        status(resp, 402, "unpaid request")
        for c in fresh_challenges(resp, "unpaid request"):
            if c.method == "ledger" and c.intent == "charge":
                try:
                    request = ChargeRequest.from_challenge(c)
                except ParseError as exc:
                    fail(f"unpaid request: the ledger challenge's request does not parse ({exc})")
                if isinstance((request.methodDetails or {}).get("ledger"), str):
                    return Quote(c, request)
        raise Skip("the target offers no `ledger` charge challenge; the identity checks sign ledger-method payloads")

    def resource(self, q: Quote) -> str:
        bound = (q.challenge.opaque_json or {}).get("resource")
        if isinstance(bound, str) and bound:
            return bound
        parts = urlsplit(self.ctx.target)
        method = str(self.ctx.options.get("method") or "GET").upper()
        return f"{method} {parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")

    def scope_pattern(self, q: Quote) -> str | None:
        """The target resource as a scope pattern (matching exactly itself), when it can be one."""
        resource = self.resource(q)
        if len(resource) > 256 or not _PATTERN.fullmatch(resource) or not is_canonical_resource(resource):
            return None  # a non-canonical path matches no pattern but `*` (IDENT-MDT-10)
        return resource

    def method_name(self, q: Quote) -> str:
        return self.resource(q).split(" ", 1)[0]

    # -- mandates and credentials ------------------------------------------------------

    def mandate(self, q: Quote, issuer: SigningKey | None = None, subject: SigningKey | None = None, **overrides: Any) -> str:
        """A mandate that allows exactly this purchase at the target (unless ``overrides`` say otherwise)."""
        issuer = issuer or self.keys.principal
        subject = subject or self.keys.agent
        pattern = self.scope_pattern(q)
        claims: dict[str, Any] = dict(
            audience=[q.challenge.realm], scope=[pattern] if pattern else ["*"], currency=q.request.currency,
            ceiling=min(q.amount, MAX_INT), budget_amount=min(max(q.amount, 1) * 10, MAX_INT), budget_period="total",
            max_depth=0, not_before=self.not_before, expires=self.expires,
        )
        claims.update(overrides)
        return issue_mandate(issuer, subject=subject.did, **claims)

    def sub_mandate(self, q: Quote, issuer: SigningKey, subject: SigningKey, **overrides: Any) -> str:
        """A link below the suite's principal, as narrow as the root of :meth:`mandate`."""
        return self.mandate(q, issuer, subject, principal=self.keys.principal.did, **overrides)

    def member(self, q: Quote, chain: Sequence[str], key: SigningKey, approval: str | None = None) -> dict[str, Any]:
        """The ``identity`` member, the proof made by ``key`` over quote ``q`` (the leaf jti read
        without trusting the token, so forged chains get a well-formed proof too)."""
        leaf = str(_claims(chain[-1]).get("jti", ""))
        member: dict[str, Any] = {"mandates": list(chain), "proof": key.sign(proof_message(q.challenge, q.request, leaf))}
        if approval is not None:
            member["approval"] = approval
        return member

    def credential(self, q: Quote, chain: Sequence[str] | None, payer: SigningKey, *, proof_key: SigningKey | None = None,
                   proof_quote: Quote | None = None, approval: str | None = None, source: Any = _UNSET) -> str:
        """A ledger credential for ``q`` signed by ``payer``; with ``chain``, an identity member whose
        proof is ``proof_key``'s (default: the payer's) over ``proof_quote`` (default: ``q``)."""
        payload, signer = LedgerBuyerMethod(key=payer, account=self.account).payload(q.challenge, q.request)
        extensions = {}
        if chain is not None:
            extensions["identity"] = self.member(proof_quote or q, chain, proof_key or payer, approval)
        return format_credential(Credential(challenge=q.challenge, payload=payload,
                                            source=signer if source is _UNSET else source, extensions=extensions))

    def approval(self, q: Quote, leaf: str, *, amount: str | None = None, rule: str = "review") -> str:
        return issue_approval(self.keys.principal, agent=self.keys.agent.did, challenge_id=q.challenge.id,
                              quote=quote_hash(q.challenge), amount=amount or q.request.amount, currency=q.request.currency,
                              rule=rule, mandate=str(_claims(leaf)["jti"]), now=self.now)

    # -- the refusal -------------------------------------------------------------------

    async def refused(self, q: Quote, authorization: str, slug: str, code: int, what: str, *,
                      after_trust: bool = True) -> dict[str, Any]:
        """Send; the answer must be problem ``slug`` with status ``code`` and the shape of IDENT-ERR-01.

        ``after_trust``: the refusal comes after the trust check (IDENT-DLG-05); a
        ``mandate-untrusted`` answer then means the target does not trust the suite's principal
        (skip), unless a correct chain of the same principal is not refused as untrusted (fail)."""
        resp = await send(self.ctx, authorization)
        _copies_nothing(resp, authorization, what)
        got = _problem_type(resp)
        untrusted = EXTENSION_PROBLEM_BASE + "mandate-untrusted"
        if after_trust and slug != "mandate-untrusted" and got == untrusted:
            if not await self.trusted():
                raise self.not_trusted()
            fail(f"{what}: answered mandate-untrusted, expected {slug}, although the target does not refuse a correct "
                 f"chain of the same principal as untrusted")
        status(resp, code, what)
        doc = problem(resp, slug, what, base=EXTENSION_PROBLEM_BASE)
        no_receipt(resp, what)
        if "no-store" not in resp.headers.get("Cache-Control", ""):
            fail(f"{what}: an identity problem must carry Cache-Control: no-store (got {resp.headers.get('Cache-Control')!r})")
        if code == 402:
            fresh = fresh_challenges(resp, what, not_ids={q.challenge.id})
            if doc.get("challengeId") not in {c.id for c in fresh}:
                fail(f"{what}: the problem's challengeId {doc.get('challengeId')!r} is not the id of a fresh challenge it carries")
        elif resp.headers.getall("WWW-Authenticate", []):
            fail(f"{what}: a 403 {slug} must not carry a challenge (IDENT-ERR-01)")
        return doc


def _problem_type(resp: Response) -> str | None:
    if "application/problem+json" not in resp.headers.get("Content-Type", ""):
        return None
    try:
        doc = resp.json()
    except ValueError:
        return None
    return doc.get("type") if isinstance(doc, dict) and isinstance(doc.get("type"), str) else None


def _copies_nothing(resp: Response, authorization: str, what: str) -> None:
    """IDENT-ERR-02, CORE-CRED-06: a problem never copies a mandate, an approval, a proof or a signature."""
    try:
        doc = json.loads(b64url_decode(authorization.split(" ", 1)[1]))
    except (ValueError, IndexError):
        return
    identity = doc.get("identity") if isinstance(doc.get("identity"), dict) else {}
    parts: list[str] = []
    for token in identity.get("mandates") or []:
        if isinstance(token, str):
            parts += [p for p in token.split(".") if len(p) >= 40]
    for name in ("proof", "approval"):
        if isinstance(identity.get(name), str):
            parts += [p for p in identity[name].split(".") if len(p) >= 40]
    signature = (doc.get("payload") or {}).get("signature") if isinstance(doc.get("payload"), dict) else None
    if isinstance(signature, str) and len(signature) >= 40:
        parts.append(signature)
    body = resp.text
    for part in parts:
        if part in body:
            fail(f"{what}: the response copies part of the credential ({part[:12]}...); IDENT-ERR-02 forbids it")


def _signed(key: SigningKey, header: dict[str, Any] | bytes, claims: dict[str, Any] | bytes) -> str:
    """A JWS signed with ``key`` over exactly these header and payload bytes (whatever they say)."""
    def part(obj: dict[str, Any] | bytes) -> str:
        return b64url_encode(obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":")).encode())

    signing_input = f"{part(header)}.{part(claims)}"
    return f"{signing_input}.{key.sign(signing_input.encode())}"


def _names_field(doc: dict[str, Any], name: str) -> bool:
    """IDENT-DLG-02: the detail names the first field that fails to narrow (or the `field` member is it)."""
    if "field" in doc:
        return doc["field"] == name
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", str(doc.get("detail", ""))) is not None


# -- the mandate itself ----------------------------------------------------------------


@register("identity.alg-none", "an unsigned mandate (alg none) is refused as mandate-invalid", "identity",
          ["IDENT-MDT-02", "IDENT-DLG-05", "IDENT-ERR-01"])
async def alg_none(ctx: CheckContext) -> str:
    kit = IdentityKit(ctx)
    q = await kit.quote()
    claims = _claims(kit.mandate(q, ceiling=MAX_INT))
    token = _forged({"alg": "none", "typ": MANDATE_TYP, "kid": kit.keys.principal.did}, claims, b"")
    await kit.refused(q, kit.credential(q, [token], kit.keys.agent), "mandate-invalid", 402, "alg none mandate", after_trust=False)
    return "refused as mandate-invalid"


@register("identity.hmac-public-key", "a mandate HS256-keyed with the issuer's public key is refused", "identity",
          ["IDENT-MDT-02", "IDENT-KEY-02", "IDENT-DLG-05", "IDENT-ERR-01"])
async def hmac_public_key(ctx: CheckContext) -> str:
    kit = IdentityKit(ctx)
    pub = kit.keys.principal.public_key
    secrets_by_form = {
        "raw": pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        "PEM": pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    }
    for form, secret in secrets_by_form.items():
        q = await kit.quote()
        claims = _claims(kit.mandate(q))
        header = {"alg": "HS256", "typ": MANDATE_TYP, "kid": kit.keys.principal.did}
        unsigned = _forged(header, claims, b"").rsplit(".", 1)[0]
        token = unsigned + "." + b64url_encode(hmac.new(secret, unsigned.encode(), hashlib.sha256).digest())
        await kit.refused(q, kit.credential(q, [token], kit.keys.agent), "mandate-invalid", 402,
                          f"HS256 mandate keyed with the {form} public key", after_trust=False)
    return "HS256 with the raw and the PEM public key as secret: both refused as mandate-invalid"


@register("identity.unknown-key", "a root mandate of an untrusted principal is refused as mandate-untrusted", "identity",
          ["IDENT-KEY-03", "IDENT-DLG-01", "IDENT-ERR-01"])
async def unknown_key(ctx: CheckContext) -> str:
    kit = IdentityKit(ctx)
    q = await kit.quote()
    token = kit.mandate(q, issuer=kit.keys.untrusted)
    await kit.refused(q, kit.credential(q, [token], kit.keys.agent), "mandate-untrusted", 402, "self-made principal",
                      after_trust=False)
    return "refused as mandate-untrusted"


@register("identity.expired", "an expired mandate is refused as mandate-expired", "identity", ["IDENT-MDT-06", "IDENT-ERR-01"])
async def expired(ctx: CheckContext) -> str:
    kit = IdentityKit(ctx)
    kit.need_trust()
    q = await kit.quote()
    token = kit.mandate(q, not_before=kit.now - timedelta(days=2), expires=kit.now - timedelta(hours=1))
    await kit.refused(q, kit.credential(q, [token], kit.keys.agent), "mandate-expired", 402, "mandate expired an hour ago")
    return "refused as mandate-expired"


@register("identity.not-yet-valid", "a mandate valid only from the future is refused as mandate-not-yet-valid", "identity",
          ["IDENT-MDT-06", "IDENT-ERR-01"])
async def not_yet_valid(ctx: CheckContext) -> str:
    kit = IdentityKit(ctx)
    kit.need_trust()
    q = await kit.quote()
    token = kit.mandate(q, not_before=kit.now + timedelta(hours=1), expires=kit.now + timedelta(days=1))
    await kit.refused(q, kit.credential(q, [token], kit.keys.agent), "mandate-not-yet-valid", 402, "mandate valid from in an hour")
    return "refused as mandate-not-yet-valid"


@register("identity.wrong-audience", "a mandate for another seller is refused as mandate-audience", "identity",
          ["IDENT-MDT-07", "IDENT-ERR-01"])
async def wrong_audience(ctx: CheckContext) -> str:
    kit = IdentityKit(ctx)
    kit.need_trust()
    q = await kit.quote()
    other = "mpp-conformance.invalid" if q.challenge.realm != "mpp-conformance.invalid" else "other.invalid"
    token = kit.mandate(q, audience=[other])
    await kit.refused(q, kit.credential(q, [token], kit.keys.agent), "mandate-audience", 402, f"mandate for realm {other!r}")
    return f"a mandate for {other!r} refused at realm {q.challenge.realm!r}"


@register("identity.tampered-claim", "a mandate whose ceiling was raised after signing is refused as mandate-invalid", "identity",
          ["IDENT-MDT-03", "IDENT-DLG-05", "IDENT-ERR-01"])
async def tampered_claim(ctx: CheckContext) -> str:
    kit = IdentityKit(ctx)
    q = await kit.quote()
    head, body, sig = kit.mandate(q).split(".")
    claims = json.loads(b64url_decode(body))
    claims["ceiling"] = MAX_INT
    token = f"{head}.{b64url_encode(json.dumps(claims, separators=(',', ':')).encode())}.{sig}"
    await kit.refused(q, kit.credential(q, [token], kit.keys.agent), "mandate-invalid", 402, "mandate with a raised ceiling",
                      after_trust=False)
    return "refused as mandate-invalid"


@register("identity.revoked", "a revoked mandate is refused as mandate-revoked", "identity", ["IDENT-REV-03"])
async def revoked(ctx: CheckContext) -> str:
    raise Skip(REVOKED_SKIP)


# -- who is paying -----------------------------------------------------------------------


@register("identity.subject-not-signer", "a stolen mandate used with the thief's key is refused as identity-mismatch", "identity",
          ["IDENT-POP-07", "IDENT-ERR-01"])
async def subject_not_signer(ctx: CheckContext) -> str:
    kit = IdentityKit(ctx)
    kit.need_trust()
    thief = kit.keys.other_agent
    q = await kit.quote()
    token = kit.mandate(q)  # issued to the suite's agent
    await kit.refused(q, kit.credential(q, [token], thief), "identity-mismatch", 402,
                      "agent's mandate, thief's payload, proof and source")
    q = await kit.quote()
    await kit.refused(q, kit.credential(q, [token], thief, source=None), "identity-mismatch", 402,
                      "agent's mandate, thief's payload and proof, no source")
    return "refused as identity-mismatch, with the thief as source and with no source"


@register("identity.source-not-subject", "a source other than the leaf's subject is refused as identity-mismatch", "identity",
          ["IDENT-POP-07", "IDENT-ERR-01"])
async def source_not_subject(ctx: CheckContext) -> str:
    kit = IdentityKit(ctx)
    kit.need_trust()
    q = await kit.quote()
    root = kit.mandate(q, max_depth=1)
    leaf = kit.sub_mandate(q, kit.keys.agent, kit.keys.other_agent)
    # the delegating agent (payment signer = source = itself) pays with the chain that ends in its sub-agent
    await kit.refused(q, kit.credential(q, [root, leaf], kit.keys.agent), "identity-mismatch", 402,
                      "the chain's middle agent paying with its sub-agent's chain")
    return "refused as identity-mismatch"


@register("identity.proof-other-challenge", "a proof made for another challenge is refused as proof-invalid", "identity",
          ["IDENT-POP-05", "IDENT-POP-06", "IDENT-ERR-01"])
async def proof_other_challenge(ctx: CheckContext) -> str:
    kit = IdentityKit(ctx)
    kit.need_trust()
    first = await kit.quote()
    second = await kit.quote()
    token = kit.mandate(second)
    await kit.refused(second, kit.credential(second, [token], kit.keys.agent, proof_quote=first), "proof-invalid", 402,
                      "proof over the previous challenge")
    return "refused as proof-invalid"


# -- delegation ----------------------------------------------------------------------------


def _widened(field: str, wider: Callable[[IdentityKit, Quote], dict[str, Any]]) -> Callable[[CheckContext], Awaitable[str]]:
    """A check: a root allowing one delegation, and a sub-mandate to the other agent that is as
    narrow as the root except for ``wider``; refused as delegation-invalid naming ``field``."""

    async def check(ctx: CheckContext) -> str:
        kit = IdentityKit(ctx)
        kit.need_trust()
        q = await kit.quote()
        root = kit.mandate(q, max_depth=1)
        leaf = kit.sub_mandate(q, kit.keys.agent, kit.keys.other_agent, **wider(kit, q))
        doc = await kit.refused(q, kit.credential(q, [root, leaf], kit.keys.other_agent), "delegation-invalid", 402,
                                f"sub-mandate wider than its parent in {field}")
        if not _names_field(doc, field):
            fail(f"sub-mandate wider in {field}: the problem does not name {field!r} (field={doc.get('field')!r}, "
                 f"detail={str(doc.get('detail'))[:120]!r}); IDENT-DLG-02 wants the first field that fails to narrow")
        return f"refused as delegation-invalid naming {field}"

    return check


def _wider_scope(kit: IdentityKit, q: Quote) -> dict[str, Any]:
    if kit.scope_pattern(q) is None:
        raise Skip(f"the resource {kit.resource(q)!r} cannot be written as a narrow scope pattern")
    return {"scope": [f"{kit.method_name(q)} /*"]}


register("identity.widened-scope", "a sub-mandate wider in scope is refused as delegation-invalid", "identity",
         ["IDENT-DLG-02", "IDENT-ERR-01"])(_widened("scope", _wider_scope))
register("identity.widened-ceiling", "a sub-mandate with a higher ceiling is refused as delegation-invalid", "identity",
         ["IDENT-DLG-02", "IDENT-ERR-01"])(_widened("ceiling", lambda kit, q: {"ceiling": min(q.amount + 1, MAX_INT)}))
register("identity.widened-budget", "a sub-mandate with a larger budget is refused as delegation-invalid", "identity",
         ["IDENT-DLG-02", "IDENT-ERR-01"])(_widened("budget", lambda kit, q: {"budget_amount": min(max(q.amount, 1) * 10 + 1, MAX_INT)}))
register("identity.widened-validity", "a sub-mandate expiring after its parent is refused as delegation-invalid", "identity",
         ["IDENT-DLG-02", "IDENT-ERR-01"])(_widened("exp", lambda kit, q: {"expires": kit.expires + timedelta(hours=1)}))


@register("identity.too-deep", "a delegation below a link whose max_depth is 0 is refused as delegation-too-deep", "identity",
          ["IDENT-DLG-04", "IDENT-ERR-01"])
async def too_deep(ctx: CheckContext) -> str:
    kit = IdentityKit(ctx)
    kit.need_trust()
    q = await kit.quote()
    root = kit.mandate(q, max_depth=0)
    leaf = kit.sub_mandate(q, kit.keys.agent, kit.keys.other_agent)
    await kit.refused(q, kit.credential(q, [root, leaf], kit.keys.other_agent), "delegation-too-deep", 402,
                      "a delegation below a root whose max_depth is 0")
    return "refused as delegation-too-deep"


# -- approvals -------------------------------------------------------------------------------


@register("identity.approval-reused", "an approval for one quote attached to another is refused as approval-invalid", "identity",
          ["IDENT-APR-05", "IDENT-APR-06", "IDENT-ERR-01"])
async def approval_reused(ctx: CheckContext) -> str:
    kit = IdentityKit(ctx)
    kit.need_trust()
    first = await kit.quote()
    second = await kit.quote()
    token = kit.mandate(second, review=[kit.scope_pattern(second) or "*"])
    approval = kit.approval(first, token)
    await kit.refused(second, kit.credential(second, [token], kit.keys.agent, approval=approval), "approval-invalid", 403,
                      "approval of the previous quote")
    return "refused as approval-invalid"


@register("identity.approval-other-amount", "an approval for another amount is refused as approval-invalid", "identity",
          ["IDENT-APR-05", "IDENT-ERR-01"])
async def approval_other_amount(ctx: CheckContext) -> str:
    kit = IdentityKit(ctx)
    kit.need_trust()
    q = await kit.quote()
    token = kit.mandate(q, review=[kit.scope_pattern(q) or "*"])
    other = str(q.amount - 1 if q.amount > 0 else q.amount + 1)
    await kit.refused(q, kit.credential(q, [token], kit.keys.agent, approval=kit.approval(q, token, amount=other)),
                      "approval-invalid", 403, f"approval for {other} on a quote of {q.request.amount}")
    return f"an approval for {other} refused on a quote of {q.request.amount}"


# -- entitlements ------------------------------------------------------------------------------


@register("identity.out-of-scope", "a purchase outside the mandate's scope is refused as out-of-scope", "identity",
          ["IDENT-MDT-11", "IDENT-POL-04", "IDENT-ERR-01", "CORE-ERR-09"])
async def out_of_scope(ctx: CheckContext) -> str:
    kit = IdentityKit(ctx)
    kit.need_trust()
    q = await kit.quote()
    elsewhere = f"{kit.method_name(q)} /mpp-conformance/not-this-resource-{secrets.token_hex(4)}"
    token = kit.mandate(q, scope=[elsewhere])
    await kit.refused(q, kit.credential(q, [token], kit.keys.agent), "out-of-scope", 403, f"mandate scoped to {elsewhere!r}")
    return f"{kit.resource(q)!r} refused under a mandate for {elsewhere!r}"


@register("identity.over-ceiling", "a purchase above the mandate's ceiling is refused as over-ceiling", "identity",
          ["IDENT-MDT-11", "IDENT-ERR-01", "CORE-ERR-09"])
async def over_ceiling(ctx: CheckContext) -> str:
    kit = IdentityKit(ctx)
    kit.need_trust()
    q = await kit.quote()
    if q.amount == 0:
        raise Skip("the target's price is 0: no ceiling is below it")
    token = kit.mandate(q, ceiling=q.amount - 1)
    await kit.refused(q, kit.credential(q, [token], kit.keys.agent), "over-ceiling", 403,
                      f"a quote of {q.request.amount} under a ceiling of {q.amount - 1}")
    return f"{q.request.amount} refused under a ceiling of {q.amount - 1}"


@register("identity.identity-required", "a plain credential on a route requiring identity gets identity-required", "identity",
          ["IDENT-POP-03", "IDENT-ERR-01"])
async def identity_required(ctx: CheckContext) -> str:
    kit = IdentityKit(ctx)
    q = await kit.quote()
    auth = kit.credential(q, None, kit.keys.agent)
    resp = await send(ctx, auth)
    got = _problem_type(resp)
    if got != EXTENSION_PROBLEM_BASE + "identity-required":
        no_5xx(resp, "plain credential")
        if got is not None and got.startswith(EXTENSION_PROBLEM_BASE):
            fail(f"plain credential: answered {got}; a credential without `identity` can only be identity-required")
        raise Skip(f"the route does not require identity: a plain credential was answered HTTP {resp.status}"
                   + (f" {got}" if got else "") + " (pick a route that requires the extension to check IDENT-POP-03)")
    status(resp, 402, "plain credential")
    doc = problem(resp, "identity-required", "plain credential", base=EXTENSION_PROBLEM_BASE)
    no_receipt(resp, "plain credential")
    fresh = fresh_challenges(resp, "plain credential", not_ids={q.challenge.id})
    if doc.get("challengeId") not in {c.id for c in fresh}:
        fail("plain credential: the problem's challengeId is not the id of a fresh challenge it carries")
    return "refused as identity-required"


# -- malformed members and mandates ----------------------------------------------------------------


def _mandate_variants(kit: IdentityKit, q: Quote) -> dict[str, str]:
    """Mandates signed by the suite's principal that break one header or claim rule each."""
    P = kit.keys.principal
    good = _claims(kit.mandate(q))
    header = {"alg": "EdDSA", "typ": MANDATE_TYP, "kid": P.did}

    def claims(**changes: Any) -> dict[str, Any]:
        out = dict(good, **changes)
        return {k: v for k, v in out.items() if v is not _UNSET}

    body = json.dumps(good, separators=(",", ":"))
    duplicated = body[:-1].encode() + b',"ceiling":' + str(MAX_INT).encode() + b"}"
    return {
        "typ JWT": _signed(P, dict(header, typ="JWT"), good),
        "kid not iss": _signed(P, dict(header, kid=kit.keys.agent.did), good),
        "crit header": _signed(P, dict(header, crit=["exp"]), good),
        "repeated claim name": _signed(P, header, duplicated),
        "jti not mdt_ + 22": _signed(P, header, claims(jti="mdt_short")),
        "nbf equal to exp": _signed(P, header, claims(nbf=good["exp"])),
        "root prn not its iss": _signed(P, header, claims(prn=kit.keys.untrusted.did)),
        "ceiling a fraction": _signed(P, header, claims(ceiling=good["ceiling"] + 0.5)),
        "ceiling a string": _signed(P, header, claims(ceiling=str(good["ceiling"]))),
        "budget missing": _signed(P, header, claims(budget=_UNSET)),
        "scope pattern without /": _signed(P, header, claims(scope=[f"{kit.method_name(q)} agent-report"])),
        "aud mixing * and a realm": _signed(P, header, claims(aud=["*", q.challenge.realm])),
        "sub not a did:key": _signed(P, header, claims(sub="did:web:agent.example")),
        "approvers not did:key": _signed(P, header, claims(approvers=["did:web:approver.example"])),
    }


@register("identity.malformed-mandate", "a mandate breaking a header or claim rule is refused as mandate-invalid", "identity",
          ["IDENT-MDT-01", "IDENT-MDT-03", "IDENT-MDT-04", "IDENT-MDT-05", "IDENT-MDT-07", "IDENT-MDT-08", "IDENT-KEY-01",
           "IDENT-DLG-05", "IDENT-ERR-01", "IDENT-ERR-02"])
async def malformed_mandate(ctx: CheckContext) -> str:
    kit = IdentityKit(ctx)
    variants = _mandate_variants(kit, await kit.quote())
    failures = []
    for name, token in variants.items():
        q = await kit.quote()
        try:
            await kit.refused(q, kit.credential(q, [token], kit.keys.agent), "mandate-invalid", 402, f"mandate with {name}",
                              after_trust=False)
        except CheckFailed as exc:
            failures.append(str(exc))
    if failures:
        fail(f"{len(failures)} of {len(variants)} malformed mandates not refused as the spec says: " + "; ".join(failures))
    return f"{len(variants)} malformed mandates refused as mandate-invalid: " + ", ".join(variants)


@register("identity.malformed-member", "an identity member of the wrong shape is refused as mandate-invalid", "identity",
          ["IDENT-POP-04", "IDENT-DLG-05", "IDENT-ERR-01"])
async def malformed_member(ctx: CheckContext) -> str:
    kit = IdentityKit(ctx)
    shapes: dict[str, Any] = {
        "identity a string": "identity",
        "identity an array": [],
        "mandates missing": {"proof": "x" * 86},
        "mandates a string": None,
        "mandates empty": None,
        "a mandate not a string": None,
        "a mandate not a JWS": None,
    }
    for name in shapes:
        q = await kit.quote()
        token = kit.mandate(q)
        good = kit.member(q, [token], kit.keys.agent)
        member = {"mandates a string": {**good, "mandates": token}, "mandates empty": {**good, "mandates": []},
                  "a mandate not a string": {**good, "mandates": [{"jws": token}]},
                  "a mandate not a JWS": {**good, "mandates": ["not.a.jws"]}}.get(name, shapes[name])
        payload, signer = LedgerBuyerMethod(key=kit.keys.agent, account=kit.account).payload(q.challenge, q.request)
        auth = format_credential(Credential(challenge=q.challenge, payload=payload, source=signer, extensions={"identity": member}))
        await kit.refused(q, auth, "mandate-invalid", 402, name, after_trust=False)
    return f"{len(shapes)} malformed identity members refused as mandate-invalid"


@register("identity.malformed-proof", "a missing or malformed proof, or a non-string approval, is refused", "identity",
          ["IDENT-POP-04", "IDENT-POP-06", "IDENT-ERR-01"])
async def malformed_proof(ctx: CheckContext) -> str:
    kit = IdentityKit(ctx)
    kit.need_trust()
    cases: list[tuple[str, Any, str, int]] = [
        ("proof missing", _UNSET, "proof-invalid", 402),
        ("proof a number", 5, "proof-invalid", 402),
        ("proof not base64url", "!" * 86, "proof-invalid", 402),
        ("proof too short", "A" * 85, "proof-invalid", 402),
        ("proof 86 characters of zeros", "A" * 86, "proof-invalid", 402),
    ]
    for name, proof, slug, code in cases:
        q = await kit.quote()
        token = kit.mandate(q)
        member = kit.member(q, [token], kit.keys.agent)
        if proof is _UNSET:
            del member["proof"]
        else:
            member["proof"] = proof
        payload, signer = LedgerBuyerMethod(key=kit.keys.agent, account=kit.account).payload(q.challenge, q.request)
        auth = format_credential(Credential(challenge=q.challenge, payload=payload, source=signer, extensions={"identity": member}))
        await kit.refused(q, auth, slug, code, name)
    q = await kit.quote()
    token = kit.mandate(q)
    member = {**kit.member(q, [token], kit.keys.agent), "approval": 7}
    payload, signer = LedgerBuyerMethod(key=kit.keys.agent, account=kit.account).payload(q.challenge, q.request)
    auth = format_credential(Credential(challenge=q.challenge, payload=payload, source=signer, extensions={"identity": member}))
    await kit.refused(q, auth, "approval-invalid", 403, "approval a number")
    return f"{len(cases)} malformed proofs refused as proof-invalid, a non-string approval as approval-invalid"


@register("identity.bad-delegation", "broken linkage, approvers below the root and a repeated jti are delegation-invalid",
          "identity", ["IDENT-DLG-01", "IDENT-DLG-03", "IDENT-ERR-01"])
async def bad_delegation(ctx: CheckContext) -> str:
    kit = IdentityKit(ctx)
    kit.need_trust()
    A, B = kit.keys.agent, kit.keys.other_agent
    cases = {
        # link 1 signed by B, though link 0 was issued to A
        "link not issued by its parent's subject": lambda q, root: kit.sub_mandate(q, B, B),
        "approvers below the root": lambda q, root: kit.sub_mandate(q, A, B, approvers=[kit.keys.principal.did]),
        "jti repeated from the root": lambda q, root: kit.sub_mandate(q, A, B, jti=_claims(root)["jti"]),
    }
    for name, make in cases.items():
        q = await kit.quote()
        root = kit.mandate(q, max_depth=1)
        await kit.refused(q, kit.credential(q, [root, make(q, root)], B), "delegation-invalid", 402, name)
    return "refused as delegation-invalid: " + ", ".join(cases)


@register("identity.approval-other-signer", "an approval signed by neither the principal nor a listed approver is refused",
          "identity", ["IDENT-APR-03", "IDENT-APR-04", "IDENT-ERR-01"])
async def approval_other_signer(ctx: CheckContext) -> str:
    kit = IdentityKit(ctx)
    kit.need_trust()
    q = await kit.quote()
    token = kit.mandate(q, review=[kit.scope_pattern(q) or "*"])
    approval = issue_approval(kit.keys.untrusted, agent=kit.keys.agent.did, challenge_id=q.challenge.id,
                              quote=quote_hash(q.challenge), amount=q.request.amount, currency=q.request.currency,
                              rule="review", mandate=str(_claims(token)["jti"]), now=kit.now)
    await kit.refused(q, kit.credential(q, [token], kit.keys.agent, approval=approval), "approval-invalid", 403,
                      "approval signed by a key the root does not name")
    return "refused as approval-invalid"


@register("identity.approval-required", "a purchase under review gets approval-required; the same challenge then takes the approval",
          "identity", ["IDENT-APR-01", "IDENT-APR-02", "IDENT-MDT-11", "IDENT-POL-02", "IDENT-ERR-01", "IDENT-ERR-02"])
async def approval_required(ctx: CheckContext) -> str:
    kit = IdentityKit(ctx)
    kit.need_trust()
    q = await kit.quote()
    token = kit.mandate(q, review=[kit.scope_pattern(q) or "*"])
    doc = await kit.refused(q, kit.credential(q, [token], kit.keys.agent), "approval-required", 403, "purchase under review")
    expected = {"rule": "review", "quoteHash": quote_hash(q.challenge), "challengeId": q.challenge.id,
                "amount": q.request.amount, "currency": q.request.currency, "mandate": _claims(token)["jti"]}
    wrong = {k: doc.get(k) for k, v in expected.items() if doc.get(k) != v}
    if wrong:
        fail(f"approval-required: members differ from the quote's (IDENT-APR-01, IDENT-APR-02): {wrong}")
    # the quoted challenge was not consumed: the same one, now with the principal's approval
    resp = await send(ctx, kit.credential(q, [token], kit.keys.agent, approval=kit.approval(q, token)))
    return "approval-required with the quote's members; " + _passed_identity(resp, kit, "the approved retry of the same challenge")


def _passed_identity(resp: Response, kit: IdentityKit, what: str) -> str:
    """A correct credential: not refused by any identity check (a refusal at settlement is fine:
    the suite's principal need own no account at the target). Returns a note."""
    no_5xx(resp, what)
    got = _problem_type(resp)
    if got == EXTENSION_PROBLEM_BASE + "mandate-untrusted":
        raise kit.not_trusted()
    if got is not None and got.startswith(EXTENSION_PROBLEM_BASE):
        fail(f"{what}: refused as {got[len(EXTENSION_PROBLEM_BASE):]}")
    if got == PROBLEM_BASE + "invalid-challenge":
        fail(f"{what}: answered invalid-challenge; an identity refusal must not consume the challenge (IDENT-POL-02)")
    if 200 <= resp.status < 300:
        if "Payment-Receipt" not in resp.headers:
            fail(f"{what}: HTTP {resp.status} without a Payment-Receipt")
        return f"{what}: paid (the suite's principal may spend from {kit.account} at the target)"
    if got in (PROBLEM_BASE + "verification-failed", PROBLEM_BASE + "payment-insufficient"):
        return (f"{what}: identity checks passed, settlement refused ({got[len(PROBLEM_BASE):]}: "
                f"the suite's principal owns no funded account {kit.account} there)")
    fail(f"{what}: a correct credential was answered HTTP {resp.status} {got or '(no problem document)'}")
    raise AssertionError  # unreachable


# -- the positive control ------------------------------------------------------------------------


@register("identity.valid-mandate-passes-checks", "a correct chain passes every identity check", "identity",
          ["IDENT-POP-01", "IDENT-POP-05", "IDENT-DLG-05", "IDENT-POL-01", "IDENT-POL-02"])
async def valid_mandate_passes_checks(ctx: CheckContext) -> str:
    kit = IdentityKit(ctx)
    kit.need_trust()
    q = await kit.quote()
    root = kit.mandate(q, max_depth=1)
    leaf = kit.sub_mandate(q, kit.keys.agent, kit.keys.other_agent)
    # first refused (a proof over another challenge), then the same challenge correctly: still usable (IDENT-POL-02)
    other = await kit.quote()
    await kit.refused(q, kit.credential(q, [root], kit.keys.agent, proof_quote=other), "proof-invalid", 402,
                      "proof over another challenge")
    notes = [_passed_identity(await send(ctx, kit.credential(q, [root], kit.keys.agent)), kit, "root mandate, after a refusal")]
    q = await kit.quote()
    notes.append(_passed_identity(await send(ctx, kit.credential(q, [root, leaf], kit.keys.other_agent)), kit, "delegated chain"))
    return "; ".join(notes)
