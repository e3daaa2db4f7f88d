"""The identity step: the mandate chain, its proof, revocation, approval and entitlements, all
checked before anything is consumed or moved (spec/identity.md)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from mpp.engine.attribution import mark_attributed
from mpp.engine.core import SessionCall, Verified
from mpp.engine.purchase import IdentityContext
from mpp.identity import ApprovalInvalid, ApprovalRequired, MandateRevoked, evaluate_policy, period_key, verify_approval, verify_identity
from mpp.ledger import MandateCharge
from mpp.pricing import check_offer_allowed, quoted_offer
from mpp.protocol.models import ChargeRequest

if TYPE_CHECKING:
    from mpp.engine.shop import Shop

__all__ = ["check_charge_identity", "check_session_identity"]


async def check_charge_identity(engine: "Shop", verified: Verified, now: datetime, *, in_book: bool = False) -> IdentityContext:
    """Chain, proof, revocation, approval and entitlements of a charge, all before the challenge
    is consumed, so a buyer told to get an approval can come back with the same challenge.

    ``in_book``: the purchase will commit in one transaction on the ledger's database
    (mpp.ledger.book), which checks revocation and (with no session store, whose holds count too)
    this seller's share of each budget itself, and appends the policy decision to the audit log:
    none of that is done here, so nothing is read or written twice."""
    config = engine.config
    rail = engine.rails[verified.credential.challenge.method]
    vid = verify_identity(verified.credential, verified.request, payment_signer=getattr(verified.proof, "signer", None),
                          trusted_principals=config.trusted_principals, realm=config.realm, now=now,
                          max_depth=config.max_chain_depth)
    chain = vid.chain
    # a chain rooted in a principal we trust: what is refused from here on is audited, under its principal
    mark_attributed(principal=chain.principal, mandate=chain.leaf.jti)
    if not in_book and await rail.revoked(chain.keys):
        raise MandateRevoked("a mandate in the chain has been revoked")
    periods = {link.key: period_key(link.budget_period, now) for link in chain.links}
    approval = None
    if vid.approval_token is not None:
        approval = verify_approval(vid.approval_token, chain=chain, challenge=verified.credential.challenge,
                                   request=verified.request, now=now)
        if await config.store.approval_used(f"{approval.iss}#{approval.jti}"):
            raise ApprovalInvalid("approval has already been used")
    challenge = verified.credential.challenge
    if in_book and config.session_store is None:
        # IDENT-BUD-04 inside the book's transaction, after revocation (mpp.ledger.book): nothing read
        # here first, unless the policy would ask for an approval, which a budget refusal comes before
        try:
            decision = evaluate_policy(chain, challenge, verified.request, verified.resource, spent={}, approval=approval)
        except ApprovalRequired:
            decision = evaluate_policy(chain, challenge, verified.request, verified.resource,
                                       spent=await config.store.mandate_spent(periods), approval=approval)
    else:
        spent = await config.store.mandate_spent(periods)
        if config.session_store is not None:  # what this seller's sessions under each link hold or took counts too
            held = await config.session_store.mandates.held(periods)
            spent = {key: spent.get(key, 0) + held.get(key, 0) for key in periods}
        decision = evaluate_policy(chain, challenge, verified.request, verified.resource, spent=spent, approval=approval)
    # PRICE-MDT-02: the offer quoted, judged as the buyer judges it, before the challenge is consumed
    check_offer_allowed(quoted_offer(challenge.request_json, challenge.intent), chain.restrictions)
    entry = dict(decision=decision.decision, reason=decision.reason, challengeId=verified.challenge_id, agent=chain.agent,
                 principal=chain.principal, mandate=chain.leaf.jti, resource=verified.resource,
                 amount=verified.request.amount, currency=verified.request.currency, realm=config.realm)
    if not in_book:
        await engine.audit("policy-decision", **entry)
    return IdentityContext(chain, decision, MandateCharge(tuple(chain.tokens), config.realm), approval, periods,
                           audit=(("policy-decision", engine.audit_data(entry)),) if in_book else ())


async def check_session_identity(engine: "Shop", call: SessionCall,
                                 now: datetime) -> tuple[dict[str, Any], MandateCharge, tuple[str, ...]]:
    """The mandate chain and proof over a session's opening challenge (SESSION-ID-01).

    Scope, currency, ceiling and approval threshold are judged per request, on the most one
    request may cost; the budget is judged on the cap, atomically by the ledger's hold."""
    config = engine.config
    assert engine.config.session_store is not None
    vid = verify_identity(call.credential, call.request, payment_signer=call.payload.signer,  # type: ignore[arg-type]
                          trusted_principals=config.trusted_principals, realm=config.realm, now=now,
                          max_depth=config.max_chain_depth)
    chain = vid.chain
    mark_attributed(principal=chain.principal, mandate=chain.leaf.jti)  # a refusal from here on is the principal's
    rail = engine.rails[call.credential.challenge.method]
    if await rail.revoked(chain.keys):
        raise MandateRevoked("a mandate in the chain has been revoked")
    at_stake = ChargeRequest(amount=str(call.request.max_request_cost), currency=call.terms.currency,
                             recipient=call.terms.recipient)
    periods = {link.key: period_key(link.budget_period, now) for link in chain.links}
    charged = await config.store.mandate_spent(periods)  # this seller's charges under each link
    held = await engine.config.session_store.mandates.held(periods)  # and its sessions'
    spent = {key: charged.get(key, 0) + held.get(key, 0) for key in periods}
    decision = evaluate_policy(chain, call.credential.challenge, at_stake, call.resource, spent=spent, approval=None)
    # PRICE-MDT-02: a unit offer the chain excludes, or above its unit price, is refused before anything is held
    check_offer_allowed(quoted_offer(call.credential.challenge.request_json, call.credential.challenge.intent),
                        chain.restrictions)
    await engine.audit("policy-decision", decision=decision.decision, reason=decision.reason, challengeId=call.session_id,
                       agent=chain.agent, principal=chain.principal, mandate=chain.leaf.jti, resource=call.resource,
                       amount=str(call.payload.cap), currency=call.terms.currency, realm=config.realm, intent="session")
    identity = {"agent": chain.agent, "principal": chain.principal, "mandate": chain.leaf.jti, "chain": list(chain.jtis),
                "decision": decision.decision, "charged": charged,
                "links": [[link.key, periods[link.key], link.budget_amount] for link in chain.links]}
    return identity, MandateCharge(tuple(chain.tokens), config.realm), chain.dids
