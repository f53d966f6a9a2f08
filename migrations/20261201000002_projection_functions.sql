-- Projections writable only through the ledger (SPEC §14 "Projections protected").
--
-- Decisions act on the projection tables (a vote row completes a quorum, a usage row
-- holds a cap, the kill_switch row stops an agent), so the service role must not be able
-- to change them by themselves. It loses INSERT / UPDATE / DELETE on every one of them;
-- the ledger writes them through the SECURITY DEFINER functions below, each of which
-- refuses a row unless the ledger event it comes from (named by its sequence number) was
-- appended to `ledger_event` by the same transaction, with an event type that can cause
-- that row. A forged change therefore leaves its own event in the hash chain (and in the
-- signed checkpoints), where replay --verify sees that the events do not fold into it.
--
-- The functions run as their owner (the role that migrates), with a fixed search_path so
-- that a caller cannot substitute its own tables or operators.

-- Raises unless every seq names an event this transaction appended (its xmin is the
-- current transaction id; the ledger never appends inside a savepoint) whose type is one
-- of `types` (NULL: any type).
CREATE FUNCTION ledger_assert_appended(seqs BIGINT[], types TEXT[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    missing BIGINT;
    current_xid TEXT := (pg_current_xact_id()::text::bigint % 4294967296)::text;
BEGIN
    SELECT s INTO missing FROM unnest(seqs) AS s
    WHERE s IS NULL OR NOT EXISTS (
        SELECT 1 FROM ledger_event e
        WHERE e.seq = s AND e.xmin::text = current_xid
          AND (types IS NULL OR e.event_type = ANY(types)))
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'projection change refused: ledger event seq % was not appended by this transaction (or cannot cause this change)', missing
            USING ERRCODE = '42501',
                  HINT = 'projections change only through the ledger, together with the event they fold from';
    END IF;
END
$$;

CREATE FUNCTION ledger_write_chain_heads(ids TEXT[], pos BIGINT[], hashes BYTEA[], seqs BIGINT[])
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_assert_appended(seqs, NULL);
    INSERT INTO chain_head (chain_id, chain_pos, hash, seq)
    SELECT * FROM unnest(ids, pos, hashes, seqs)
    ON CONFLICT (chain_id) DO UPDATE SET chain_pos = EXCLUDED.chain_pos, hash = EXCLUDED.hash, seq = EXCLUDED.seq;
$$;

CREATE FUNCTION ledger_write_decisions(intent_ids TEXT[], agent_ids TEXT[], entity_ids TEXT[],
    seqs BIGINT[], fingerprints BYTEA[], decision_hashes BYTEA[], effects TEXT[], messages TEXT[])
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_assert_appended(seqs, ARRAY['intent_decided']);
    INSERT INTO decision (intent_id, agent_id, entity_id, seq, fingerprint, decision_hash, effect, message)
    SELECT * FROM unnest(intent_ids, agent_ids, entity_ids, seqs, fingerprints, decision_hashes, effects, messages);
$$;

-- Increases are upserts; decreases touch rows that exist, through UPDATE, because an
-- INSERT's CHECK constraints see the negative delta. `sources`: the event of each row.
CREATE FUNCTION ledger_grow_usage(agent_ids TEXT[], kinds TEXT[], tzs TEXT[], currencies TEXT[],
    starts DATE[], committed_deltas NUMERIC[], reserved_deltas NUMERIC[], sources BIGINT[])
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_assert_appended(sources, NULL);
    INSERT INTO usage_window (agent_id, kind, tz, currency, window_start, committed, reserved)
    SELECT * FROM unnest(agent_ids, kinds, tzs, currencies, starts, committed_deltas, reserved_deltas)
    ON CONFLICT (agent_id, kind, tz, currency, window_start) DO UPDATE
    SET committed = usage_window.committed + EXCLUDED.committed,
        reserved = usage_window.reserved + EXCLUDED.reserved;
$$;

CREATE FUNCTION ledger_shrink_usage(agent_ids TEXT[], kinds TEXT[], tzs TEXT[], currencies TEXT[],
    starts DATE[], committed_deltas NUMERIC[], reserved_deltas NUMERIC[], sources BIGINT[])
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_assert_appended(sources, NULL);
    UPDATE usage_window u SET committed = u.committed + d.committed, reserved = u.reserved + d.reserved
    FROM unnest(agent_ids, kinds, tzs, currencies, starts, committed_deltas, reserved_deltas)
      AS d(agent_id, kind, tz, currency, window_start, committed, reserved)
    WHERE u.agent_id = d.agent_id AND u.kind = d.kind AND u.tz = d.tz
      AND u.currency = d.currency AND u.window_start = d.window_start;
$$;

CREATE FUNCTION ledger_open_pending(intent_ids TEXT[], agent_ids TEXT[], entity_ids TEXT[],
    effects TEXT[], approvals INT[], amounts NUMERIC[], currencies TEXT[], tzs TEXT[],
    days DATE[], months DATE[], decided_seqs BIGINT[], expires_ats TIMESTAMPTZ[],
    ttls BIGINT[], fx_rates NUMERIC[], intent_amounts NUMERIC[], intent_currencies TEXT[])
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_assert_appended(decided_seqs, ARRAY['intent_decided']);
    INSERT INTO pending_approval (intent_id, agent_id, entity_id, effect, approvals_required, amount,
        currency, tz, day, month, decided_seq, expires_at, authorization_ttl_secs, fx_rate,
        intent_amount, intent_currency)
    SELECT * FROM unnest(intent_ids, agent_ids, entity_ids, effects, approvals, amounts,
        currencies, tzs, days, months, decided_seqs, expires_ats, ttls, fx_rates, intent_amounts,
        intent_currencies);
$$;

CREATE FUNCTION ledger_close_pending(intent_ids TEXT[], sources BIGINT[])
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_assert_appended(sources, NULL);
    DELETE FROM pending_approval WHERE intent_id = ANY(intent_ids);
$$;

CREATE FUNCTION ledger_write_votes(intent_ids TEXT[], approver_ids TEXT[], votes TEXT[],
    signed_ats TIMESTAMPTZ[], seqs BIGINT[])
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_assert_appended(seqs, ARRAY['vote_accepted']);
    INSERT INTO approval_vote (intent_id, approver_id, vote, signed_at, seq)
    SELECT * FROM unnest(intent_ids, approver_ids, votes, signed_ats, seqs);
$$;

CREATE FUNCTION ledger_write_outcomes(intent_ids TEXT[], agent_ids TEXT[], outcomes TEXT[],
    closed_ats TIMESTAMPTZ[], seqs BIGINT[], messages TEXT[])
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_assert_appended(seqs, NULL);
    INSERT INTO intent_outcome (intent_id, agent_id, outcome, closed_at, seq, message)
    SELECT * FROM unnest(intent_ids, agent_ids, outcomes, closed_ats, seqs, messages);
$$;

CREATE FUNCTION ledger_set_kill_switch(p_scope TEXT, p_active BOOLEAN, p_actor TEXT, p_reason TEXT,
    p_changed_at TIMESTAMPTZ, p_seq BIGINT)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_assert_appended(ARRAY[p_seq], ARRAY['kill_switch_set']);
    INSERT INTO kill_switch (scope, active, actor, reason, changed_at, seq)
    VALUES (p_scope, p_active, p_actor, p_reason, p_changed_at, p_seq)
    ON CONFLICT (scope) DO UPDATE SET active = EXCLUDED.active, actor = EXCLUDED.actor,
        reason = EXCLUDED.reason, changed_at = EXCLUDED.changed_at, seq = EXCLUDED.seq;
$$;

CREATE FUNCTION ledger_write_policy_version(p_sha256 TEXT, p_name TEXT, p_version TEXT,
    p_canonical TEXT, p_seq BIGINT)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_assert_appended(ARRAY[p_seq], ARRAY['policy_activated']);
    INSERT INTO policy_version (sha256, name, version, canonical, seq)
    VALUES (p_sha256, p_name, p_version, p_canonical, p_seq);
$$;

CREATE FUNCTION ledger_write_authorizations(intent_ids TEXT[], agent_ids TEXT[], entity_ids TEXT[],
    authorized NUMERIC[], captured NUMERIC[], voided NUMERIC[], refunded NUMERIC[],
    restored NUMERIC[], expired_amounts NUMERIC[], finals BOOLEAN[], expired BOOLEAN[],
    expires_ats TIMESTAMPTZ[], currencies TEXT[], tzs TEXT[], days DATE[], months DATE[],
    seqs BIGINT[], fx_rates NUMERIC[], usage_currencies TEXT[])
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_assert_appended(seqs, NULL);
    INSERT INTO authorization_state (intent_id, agent_id, entity_id, authorized, captured, voided,
        refunded, restored, expired_amount, is_final, expired, expires_at, currency, tz, day, month,
        seq, fx_rate, usage_currency)
    SELECT * FROM unnest(intent_ids, agent_ids, entity_ids, authorized, captured, voided, refunded,
        restored, expired_amounts, finals, expired, expires_ats, currencies, tzs, days, months, seqs,
        fx_rates, usage_currencies)
    ON CONFLICT (intent_id) DO UPDATE SET captured = EXCLUDED.captured, voided = EXCLUDED.voided,
        refunded = EXCLUDED.refunded, restored = EXCLUDED.restored,
        expired_amount = EXCLUDED.expired_amount, is_final = EXCLUDED.is_final,
        expired = EXCLUDED.expired, seq = EXCLUDED.seq;
$$;

CREATE FUNCTION ledger_write_settlements(settlement_ids TEXT[], intent_ids TEXT[], agent_ids TEXT[],
    fingerprints BYTEA[], seqs BIGINT[], messages TEXT[])
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_assert_appended(seqs, ARRAY['settlement_applied', 'intent_closed']);
    INSERT INTO settlement (settlement_id, intent_id, agent_id, fingerprint, seq, message)
    SELECT * FROM unnest(settlement_ids, intent_ids, agent_ids, fingerprints, seqs, messages);
$$;

-- The first binding wins, in the batch as in the table (the fold's rule).
CREATE FUNCTION ledger_bind_agents(agent_ids TEXT[], entity_ids TEXT[], seqs BIGINT[])
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_assert_appended(seqs, NULL);
    INSERT INTO agent_entity (agent_id, entity_id, seq)
    SELECT * FROM unnest(agent_ids, entity_ids, seqs)
    ON CONFLICT (agent_id) DO NOTHING;
$$;

CREATE FUNCTION ledger_set_fx_rate(p_pair TEXT, p_rate NUMERIC, p_set_at TIMESTAMPTZ, p_seq BIGINT)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_assert_appended(ARRAY[p_seq], ARRAY['fx_rate_set']);
    INSERT INTO fx_rate (pair, rate, set_at, seq) VALUES (p_pair, p_rate, p_set_at, p_seq)
    ON CONFLICT (pair) DO UPDATE SET rate = EXCLUDED.rate, set_at = EXCLUDED.set_at, seq = EXCLUDED.seq;
$$;

CREATE FUNCTION ledger_write_spend_records(intent_ids TEXT[], agent_ids TEXT[], entity_ids TEXT[],
    accepted_ats TIMESTAMPTZ[], categories TEXT[], beneficiary_ids TEXT[], countries TEXT[],
    purposes TEXT[], currencies TEXT[], amounts NUMERIC[], counts BOOLEAN[], seqs BIGINT[])
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_assert_appended(seqs, NULL);
    INSERT INTO spend_record (intent_id, agent_id, entity_id, accepted_at, category, beneficiary_id,
        country, purpose, currency, amount, counts, seq)
    SELECT * FROM unnest(intent_ids, agent_ids, entity_ids, accepted_ats, categories,
        beneficiary_ids, countries, purposes, currencies, amounts, counts, seqs);
$$;

-- Parameters are named apart from the columns: in an SQL function a column name wins.
CREATE FUNCTION ledger_hold_spend_records(p_intent_ids TEXT[], p_amounts NUMERIC[],
    p_counts BOOLEAN[], p_seqs BIGINT[])
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_assert_appended(p_seqs, NULL);
    UPDATE spend_record r SET amount = h.amount, counts = h.counts, seq = h.seq
    FROM unnest(p_intent_ids, p_amounts, p_counts, p_seqs) AS h(intent_id, amount, counts, seq)
    WHERE r.intent_id = h.intent_id;
$$;

DO $$
DECLARE
    f TEXT;
BEGIN
    FOR f IN SELECT p.oid::regprocedure::text FROM pg_proc p
             WHERE p.proname LIKE 'ledger\_%' AND p.pronamespace = 'public'::regnamespace
               AND p.prosecdef LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO spendguard_service', f);
    END LOOP;
END
$$;

REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON chain_head, decision, usage_window, pending_approval,
    approval_vote, intent_outcome, kill_switch, policy_version, authorization_state, settlement,
    agent_entity, fx_rate, spend_record
    FROM spendguard_service;
