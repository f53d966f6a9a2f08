-- ledger_assert_appended, probing ledger_event by primary key only (issue 15).
--
-- The first version checked all seqs in one query (`unnest(seqs)` with a correlated
-- NOT EXISTS). PL/pgSQL caches that query's generic plan for the life of a session, and
-- a plan made while ledger_event was small is a hashed subplan over a scan of the whole
-- table. Without an ANALYZE to invalidate it (autovacuum off, or the first minutes of a
-- new ledger) every projection write then read every event: measured with
-- `ledger bench --batch 5` on a 7,502-event ledger, 16,673 sequential scans of
-- ledger_event reading 81 million rows, 2.55 ms per call, five calls per deciding
-- transaction, growing with the ledger (docs/benchmarks.md).
--
-- Now each seq is one primary-key probe, and seq scans are disabled inside the function
-- so that no plan cached on an empty table can probe by scanning: a missing key costs
-- one index lookup whatever the statistics say. A NULL list is refused (the first
-- version let it through as an empty one; no ledger write passes NULL).
CREATE OR REPLACE FUNCTION ledger_assert_appended(seqs BIGINT[], types TEXT[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp
SET enable_seqscan = off
AS $$
DECLARE
    s BIGINT;
    current_xid TEXT := (pg_current_xact_id()::text::bigint % 4294967296)::text;
BEGIN
    FOREACH s IN ARRAY coalesce(seqs, ARRAY[NULL::BIGINT]) LOOP
        IF s IS NULL OR NOT EXISTS (
            SELECT 1 FROM ledger_event e
            WHERE e.seq = s AND e.xmin::text = current_xid
              AND (types IS NULL OR e.event_type = ANY(types))) THEN
            RAISE EXCEPTION 'projection change refused: ledger event seq % was not appended by this transaction (or cannot cause this change)', s
                USING ERRCODE = '42501',
                      HINT = 'projections change only through the ledger, together with the event they fold from';
        END IF;
    END LOOP;
END
$$;
