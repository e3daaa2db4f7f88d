"""The server-side functions of a purchase on PostgreSQL (:class:`mpp.ledger.pg.PgPurchaseBook`),
installed by the ledger's schema migration (:mod:`mpp.ledger._pg_book`: under its advisory lock, so several
processes starting at once take turns; ``CREATE OR REPLACE``, so it is idempotent). The names carry
a version: a later change of arguments or results installs a new function beside the old one,
which processes not yet upgraded keep calling.

Their bodies name the seller's tables (``payments``, ``mandate_spend``, ``mandate_totals``,
``approvals_used``: :class:`mpp.stores.pg.PgPaymentStore`) and the audit log's (``audit``,
``audit_head``: :class:`mpp.stores.pg.PgAuditLog`); PL/pgSQL resolves those when a statement first
runs, so a ledger without them installs the functions all the same, and only a seller whose
stores share the ledger's database calls them.

Locks are taken in the ledger's order (:mod:`mpp.ledger.pg`): the purchase's id (an advisory lock,
its key computed by the caller with :func:`mpp.ledger._pg_book.lock_key`), then both accounts'
rows in id order, then one advisory lock per mandate link in key order, then (last, and only
with audit entries) the audit log's head table. Each statement of a function sees what was
committed before it ran (READ COMMITTED), so what is read after a lock is what the lock protects.

A refusal for who pays raises SQLSTATE ``MPP00`` (message: the detail; hint: the LedgerError's
class name, ``OverMandate:currency`` for a currency refusal, ``OverMandate:budget`` for the
seller's own share of a budget), which rolls back the whole call, the
claim included. A refusal for money is returned (``o_status``: the class name) with the payment
recorded ``failed`` and committed. A broken audit chain raises ``MPP01`` (detail: the tail and
head as a JSON array).

The audit entries' hashes are computed here, over the same bytes :func:`mpp.stores.audit.entry_hash`
hashes: the caller passes each entry's data as its RFC 8785 text (as :func:`mpp.stores.audit.prepare_entry`
makes it), and the five members are written around it in key order (as
:func:`mpp.stores.audit._stored_entry_hash` does); kind, prev and ts are ASCII without quotes or
backslashes, so ``to_json`` writes them as ``json.dumps`` does.
"""

from __future__ import annotations

__all__ = ["PURCHASE_FUNCTIONS", "PURCHASE", "REFUND", "REFUSED", "CHAIN_BROKEN"]

REFUSED = "MPP00"
CHAIN_BROKEN = "MPP01"

PURCHASE = "ledger_purchase_v1"
REFUND = "ledger_refund_purchase_v1"

PURCHASE_FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION ledger_refuse_v1(p_kind text, p_detail text) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'MPP00', MESSAGE = p_detail, HINT = p_kind;
END
$fn$;

CREATE OR REPLACE FUNCTION ledger_audit_append_v1(p_kinds text[], p_ts text[], p_data text[]) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    v_last_seq bigint; v_last_hash text; v_head_seq bigint; v_head_hash text;
    v_seq bigint; v_prev text; v_hash text; i int;
BEGIN
    IF coalesce(cardinality(p_kinds), 0) = 0 THEN
        RETURN;
    END IF;
    LOCK TABLE audit_head IN EXCLUSIVE MODE;  -- appends take turns (mpp.stores.pg.audit)
    SELECT seq, hash INTO v_last_seq, v_last_hash FROM audit ORDER BY seq DESC LIMIT 1;
    SELECT seq, hash INTO v_head_seq, v_head_hash FROM audit_head WHERE id = 1;
    IF v_last_seq IS NULL AND v_head_seq IS NULL THEN
        v_seq := 1; v_prev := '';
    ELSIF v_last_seq = v_head_seq AND v_last_hash = v_head_hash THEN
        v_seq := v_last_seq + 1; v_prev := v_last_hash;
    ELSE  -- as mpp.stores.audit.next_link: extending a broken chain would bury the evidence
        RAISE EXCEPTION USING ERRCODE = 'MPP01', MESSAGE = 'the audit chain is broken',
            DETAIL = json_build_array(v_last_seq, v_last_hash, v_head_seq, v_head_hash)::text;
    END IF;
    FOR i IN 1 .. cardinality(p_kinds) LOOP
        v_hash := encode(sha256(convert_to('{"data":' || p_data[i] || ',"kind":' || to_json(p_kinds[i])::text
            || ',"prev":' || to_json(v_prev)::text || ',"seq":' || v_seq::text || ',"ts":' || to_json(p_ts[i])::text
            || '}', 'UTF8')), 'hex');
        INSERT INTO audit (seq, ts, kind, data, prev, hash) VALUES (v_seq, p_ts[i], p_kinds[i], p_data[i], v_prev, v_hash);
        v_prev := v_hash;
        v_seq := v_seq + 1;
    END LOOP;
    INSERT INTO audit_head (id, seq, hash) VALUES (1, v_seq - 1, v_prev)
        ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash;
END
$fn$;

CREATE OR REPLACE FUNCTION ledger_purchase_v1(
    p_id text, p_resource text, p_idem text, p_payer text, p_payee text, p_amount bigint, p_currency text,
    p_signer text, p_at timestamptz, p_receipt text, p_lock bigint,
    p_chain text[], p_keys text[], p_periods text[], p_budgets bigint[], p_link_currencies text[], p_ceilings bigint[],
    p_link_locks bigint[], p_approval text, p_audit_kinds text[], p_audit_ts text[], p_audit_data text[],
    OUT o_status text, OUT o_detail text)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_acct record; v_lock bigint; i int;
    v_payer_currency text; v_payer_balance bigint; v_payer_kind text; v_payee_currency text;
    v_role text; v_denied boolean; v_owner boolean; v_spent bigint;
    v_links int := coalesce(cardinality(p_keys), 0);
BEGIN
    -- 1. the purchase's own id: repeats of it, and a void of it, take turns; then the claim
    PERFORM pg_advisory_xact_lock(p_lock);
    INSERT INTO payments (challenge_id, resource, state, idempotency_key, payer, amount, currency, reference, receipt,
                          created_at, updated_at)
        VALUES (p_id, p_resource, 'settled', p_idem, p_payer, p_amount::text, p_currency, p_id, p_receipt, p_at, p_at)
        ON CONFLICT (challenge_id) DO NOTHING;
    IF NOT FOUND THEN
        o_status := 'claimed';  -- consumed before: nothing written
        RETURN;
    END IF;

    -- 2. both accounts' rows, in id order; who pays (a refusal rolls the claim back)
    FOR v_acct IN SELECT id, currency, balance, kind FROM ledger_accounts WHERE id IN (p_payer, p_payee)
                  ORDER BY id FOR NO KEY UPDATE LOOP
        IF v_acct.id = p_payer THEN
            v_payer_currency := v_acct.currency; v_payer_balance := v_acct.balance; v_payer_kind := v_acct.kind;
        END IF;
        IF v_acct.id = p_payee THEN
            v_payee_currency := v_acct.currency;
        END IF;
    END LOOP;
    -- the payee first: a ledger without the seller's own account is the seller's fault (CORE-ERR-14)
    IF v_payee_currency IS NULL THEN
        PERFORM ledger_refuse_v1('UnknownPayee', format('no payee account %L on this ledger', p_payee));
    ELSIF v_payee_currency <> p_currency THEN
        PERFORM ledger_refuse_v1('UnknownPayee', format('payee account %L holds %L, not %L', p_payee, v_payee_currency, p_currency));
    END IF;
    IF v_payer_currency IS NULL THEN
        PERFORM ledger_refuse_v1('UnknownAccount', format('no payer account %L on this ledger', p_payer));
    ELSIF v_payer_currency <> p_currency THEN
        PERFORM ledger_refuse_v1('WrongCurrency', format('payer account %L holds %L, not %L', p_payer, v_payer_currency, p_currency));
    ELSIF starts_with(p_payer, 'holds:') THEN
        PERFORM ledger_refuse_v1('UnauthorizedSigner', 'only session operations move value into or out of a holding account');
    END IF;
    IF starts_with(p_payee, 'holds:') THEN
        PERFORM ledger_refuse_v1('UnauthorizedSigner', 'only session operations move value into or out of a holding account');
    END IF;
    IF EXISTS (SELECT 1 FROM ledger_transfers WHERE id = p_id)
       OR EXISTS (SELECT 1 FROM ledger_voided WHERE transfer_id = p_id) THEN
        PERFORM ledger_refuse_v1('TransferConflict', format('transfer %L was made or voided before this purchase', p_id));
    END IF;
    IF p_chain IS NULL THEN  -- mpp.ledger.core.check_spender, bare
        IF p_signer IS NOT NULL THEN
            SELECT role INTO v_role FROM ledger_account_members WHERE account_id = p_payer AND did = p_signer;
            IF v_role = 'agent' THEN
                PERFORM ledger_refuse_v1('MandateRequired', 'this key is one of the account''s agents: it spends only under '
                                         'a mandate chain rooted in one of the account''s owners');
            ELSIF v_role IS DISTINCT FROM 'owner' THEN
                PERFORM ledger_refuse_v1('UnauthorizedSigner', 'signer may not spend from the payer account');
            END IF;
        END IF;
    ELSE  -- under a chain verified by the caller (principal first, the signer last)
        SELECT coalesce(bool_or(role = 'denied'), false), coalesce(bool_or(did = p_chain[1] AND role = 'owner'), false)
            INTO v_denied, v_owner FROM ledger_account_members WHERE account_id = p_payer AND did = ANY (p_chain);
        IF v_denied THEN
            PERFORM ledger_refuse_v1('UnauthorizedSigner', 'a key in the mandate chain is denied on the payer account');
        ELSIF coalesce(cardinality(p_chain), 0) = 0 OR NOT v_owner THEN
            PERFORM ledger_refuse_v1('UnauthorizedSigner', 'the mandate chain''s principal does not own the payer account');
        ELSIF p_signer IS NOT NULL AND p_chain[cardinality(p_chain)] <> p_signer THEN
            PERFORM ledger_refuse_v1('UnauthorizedSigner', 'the payment signer is not the mandate chain''s last subject');
        END IF;
        FOR i IN 1 .. v_links LOOP
            IF p_link_currencies[i] <> p_currency THEN
                PERFORM ledger_refuse_v1('OverMandate:currency',
                                         format('the mandate is for %L, not %L', p_link_currencies[i], p_currency));
            ELSIF p_amount > p_ceilings[i] THEN
                PERFORM ledger_refuse_v1('OverMandate',
                                         format('amount %s is above the mandate''s ceiling %s', p_amount, p_ceilings[i]));
            END IF;
        END LOOP;
        IF EXISTS (SELECT 1 FROM ledger_revocations WHERE jti = ANY (p_keys)) THEN
            PERFORM ledger_refuse_v1('MandateRevokedError', 'a mandate in the chain has been revoked');
        END IF;
        FOR i IN 1 .. v_links LOOP  -- the seller's own share (IDENT-BUD-04), after revocation (IDENT-POL-01)
            SELECT spent INTO v_spent FROM mandate_totals WHERE jti = p_keys[i] AND period = p_periods[i];
            IF coalesce(v_spent, 0) + p_amount > p_budgets[i] THEN
                PERFORM ledger_refuse_v1('OverMandate:budget',
                                         format('budget of mandate %s (%s for %s) would be exceeded at this seller',
                                                p_keys[i], p_budgets[i], p_periods[i]));
            END IF;
        END LOOP;
    END IF;

    -- 3. money: the balance (its row locked), then each link's running total under the link's lock.
    -- A refusal here keeps the challenge consumed, its record failed (IDENT-ERR-03).
    IF v_payer_kind = 'asset' AND v_payer_balance < p_amount THEN
        o_status := 'InsufficientFunds';
        o_detail := format('balance %s is below %s', v_payer_balance, p_amount);
    ELSIF v_links > 0 THEN
        FOR v_lock IN SELECT DISTINCT k FROM unnest(p_link_locks) AS u(k) ORDER BY k LOOP
            PERFORM pg_advisory_xact_lock(v_lock);
        END LOOP;
        FOR i IN 1 .. v_links LOOP
            SELECT spent INTO v_spent FROM ledger_mandate_totals WHERE jti = p_keys[i] AND period = p_periods[i];
            v_spent := coalesce(v_spent, 0);
            IF v_spent + p_amount > p_budgets[i] THEN
                o_status := 'BudgetExhausted';
                o_detail := format('mandate %s has %s left of %s for %s', p_keys[i], p_budgets[i] - v_spent, p_budgets[i],
                                   p_periods[i]);
                EXIT;
            END IF;
        END LOOP;
    END IF;
    IF o_status IS NOT NULL THEN
        UPDATE payments SET state = 'failed', failure = o_status, reference = NULL, receipt = NULL WHERE challenge_id = p_id;
        RETURN;
    END IF;

    -- 4. the budgets counted, at the ledger and in the seller's own share; the approval used
    IF v_links > 0 THEN
        WITH s AS (
            INSERT INTO ledger_mandate_spend (transfer_id, jti, period, amount)
            SELECT p_id, l.jti, l.period, p_amount FROM unnest(p_keys, p_periods) WITH ORDINALITY AS l(jti, period, n)
            ORDER BY l.n
            RETURNING jti, period, amount
        )
        INSERT INTO ledger_mandate_totals (jti, period, spent)
        SELECT jti, period, SUM(amount) FROM s GROUP BY jti, period ORDER BY jti, period
        ON CONFLICT (jti, period) DO UPDATE SET spent = ledger_mandate_totals.spent + EXCLUDED.spent;
        WITH s AS (
            INSERT INTO mandate_spend (challenge_id, jti, period, amount)
            SELECT p_id, l.jti, l.period, p_amount FROM unnest(p_keys, p_periods) WITH ORDINALITY AS l(jti, period, n)
            ORDER BY l.n
            RETURNING jti, period, amount
        )
        INSERT INTO mandate_totals (jti, period, spent)
        SELECT jti, period, SUM(amount) FROM s GROUP BY jti, period ORDER BY jti, period
        ON CONFLICT (jti, period) DO UPDATE SET spent = mandate_totals.spent + EXCLUDED.spent;
    END IF;
    IF p_approval IS NOT NULL THEN
        INSERT INTO approvals_used (jti, challenge_id) VALUES (p_approval, p_id) ON CONFLICT DO NOTHING;
    END IF;

    -- 5. the transfer, its two postings, both balances (payer = payee nets to zero)
    INSERT INTO ledger_transfers (id, payer, payee, amount, currency, kind, created_at, signer)
        VALUES (p_id, p_payer, p_payee, p_amount, p_currency, 'charge', p_at, p_signer);
    INSERT INTO ledger_postings (transfer_id, account_id, amount) VALUES (p_id, p_payer, -p_amount), (p_id, p_payee, p_amount);
    UPDATE ledger_accounts
        SET balance = balance - CASE WHEN id = p_payer THEN p_amount ELSE 0 END + CASE WHEN id = p_payee THEN p_amount ELSE 0 END
        WHERE id IN (p_payer, p_payee);

    -- 6. the audit entries, last: the head table's lock is held only until the commit
    PERFORM ledger_audit_append_v1(p_audit_kinds, p_audit_ts, p_audit_data);
    o_status := 'settled';
END
$fn$;

CREATE OR REPLACE FUNCTION ledger_refund_purchase_v1(
    p_id text, p_why text, p_at timestamptz, p_audit_kinds text[], p_audit_ts text[], p_audit_data text[],
    OUT o_status text)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_refund text := 'refund:' || p_id;
    v_payer text; v_payee text; v_amount bigint; v_currency text; v_kind text;
    v_balance bigint; v_payee_kind text; v_row record;
BEGIN
    SELECT payer, payee, amount, currency, kind INTO v_payer, v_payee, v_amount, v_currency, v_kind
        FROM ledger_transfers WHERE id = p_id;
    IF v_payer IS NULL THEN
        PERFORM ledger_refuse_v1('UnknownAccount', format('no transfer %L', p_id));
    END IF;
    IF v_kind IN ('hold', 'capture', 'release') THEN
        PERFORM ledger_refuse_v1('TransferConflict',
                                 format('transfer %L belongs to a session; sessions end with close_session', p_id));
    END IF;
    -- both accounts' rows, in id order: concurrent refunds of one purchase take turns here
    PERFORM 1 FROM ledger_accounts WHERE id IN (v_payer, v_payee) ORDER BY id FOR NO KEY UPDATE;
    IF EXISTS (SELECT 1 FROM ledger_transfers WHERE id = v_refund) THEN
        o_status := 'refunded before';
        RETURN;
    END IF;
    SELECT balance, kind INTO v_balance, v_payee_kind FROM ledger_accounts WHERE id = v_payee;
    IF v_payee_kind = 'asset' AND v_balance < v_amount THEN
        PERFORM ledger_refuse_v1('InsufficientFunds',
                                 format('balance %s of %L is below the refund %s', v_balance, v_payee, v_amount));
    END IF;
    -- the ledger's mandate budgets given back: the refunded purchase never happened
    WITH s AS (
        INSERT INTO ledger_mandate_spend (transfer_id, jti, period, amount)
        SELECT v_refund, jti, period, -amount FROM ledger_mandate_spend WHERE transfer_id = p_id ORDER BY seq
        RETURNING jti, period, amount
    )
    INSERT INTO ledger_mandate_totals (jti, period, spent)
    SELECT jti, period, SUM(amount) FROM s GROUP BY jti, period ORDER BY jti, period
    ON CONFLICT (jti, period) DO UPDATE SET spent = ledger_mandate_totals.spent + EXCLUDED.spent;
    INSERT INTO ledger_transfers (id, payer, payee, amount, currency, kind, created_at, signer)
        VALUES (v_refund, v_payee, v_payer, v_amount, v_currency, 'refund', p_at, NULL);
    INSERT INTO ledger_postings (transfer_id, account_id, amount)
        VALUES (v_refund, v_payee, -v_amount), (v_refund, v_payer, v_amount);
    UPDATE ledger_accounts
        SET balance = balance - CASE WHEN id = v_payee THEN v_amount ELSE 0 END + CASE WHEN id = v_payer THEN v_amount ELSE 0 END
        WHERE id IN (v_payer, v_payee);
    -- the seller's own share forgotten, its totals moved in (link, period) order
    FOR v_row IN SELECT jti, period, SUM(amount) AS amount FROM mandate_spend WHERE challenge_id = p_id
                 GROUP BY jti, period ORDER BY jti, period LOOP
        UPDATE mandate_totals SET spent = spent - v_row.amount WHERE jti = v_row.jti AND period = v_row.period;
    END LOOP;
    DELETE FROM mandate_spend WHERE challenge_id = p_id;
    UPDATE payments SET state = 'refunded', failure = p_why, updated_at = p_at
        WHERE challenge_id = p_id AND state IN ('settled', 'delivered');
    PERFORM ledger_audit_append_v1(p_audit_kinds, p_audit_ts, p_audit_data);
    o_status := 'refunded';
END
$fn$;
"""
