-- A transaction's whole write in one statement (issue 15).
--
-- The ledger sent a deciding transaction's write as three statements: the events'
-- INSERT, the projection functions (`SELECT ledger_write_chain_heads(…), …`), then the
-- outbox INSERT, each a round trip to PostgreSQL. These two functions let the events
-- and the outbox rows join the projection calls: `SELECT ledger_append_events(…),
-- ledger_write_chain_heads(…), …, ledger_write_outbox(…)`. A target list is evaluated
-- left to right and every function here is VOLATILE, so each statement inside a later
-- call takes a fresh snapshot and sees the events appended by the first call
-- (`ledger_assert_appended` finds them as before).
--
-- Both run as the caller (SECURITY INVOKER): the service role may append events and
-- write the outbox itself; a role that may not is refused here exactly as it was by
-- the plain INSERTs. Parameters are named apart from the columns.

CREATE FUNCTION ledger_append_events(p_seqs BIGINT[], p_chain_ids TEXT[], p_chain_pos BIGINT[],
    p_event_types TEXT[], p_recorded_at TIMESTAMPTZ[], p_actors TEXT[], p_resources TEXT[],
    p_origins TEXT[], p_payloads TEXT[], p_prev_hashes BYTEA[], p_hashes BYTEA[])
RETURNS void LANGUAGE sql SET search_path = public, pg_temp AS $$
    INSERT INTO ledger_event (seq, chain_id, chain_pos, event_type, recorded_at, actor, resource,
        origin, payload, prev_hash, hash)
    SELECT * FROM unnest(p_seqs, p_chain_ids, p_chain_pos, p_event_types, p_recorded_at,
        p_actors, p_resources, p_origins, p_payloads, p_prev_hashes, p_hashes);
$$;

-- Rows for the claim round only: a row leased to the direct publisher is written by the
-- ledger's own INSERT … RETURNING, which hands the leased rows back.
CREATE FUNCTION ledger_write_outbox(p_seqs BIGINT[], p_topics TEXT[], p_keys TEXT[],
    p_payloads TEXT[])
RETURNS void LANGUAGE sql SET search_path = public, pg_temp AS $$
    INSERT INTO outbox (seq, topic, msg_key, payload)
    SELECT * FROM unnest(p_seqs, p_topics, p_keys, p_payloads);
$$;

REVOKE ALL ON FUNCTION ledger_append_events(BIGINT[], TEXT[], BIGINT[], TEXT[], TIMESTAMPTZ[],
    TEXT[], TEXT[], TEXT[], TEXT[], BYTEA[], BYTEA[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger_append_events(BIGINT[], TEXT[], BIGINT[], TEXT[], TIMESTAMPTZ[],
    TEXT[], TEXT[], TEXT[], TEXT[], BYTEA[], BYTEA[]) TO spendguard_service;
REVOKE ALL ON FUNCTION ledger_write_outbox(BIGINT[], TEXT[], TEXT[], TEXT[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger_write_outbox(BIGINT[], TEXT[], TEXT[], TEXT[]) TO spendguard_service;
