-- Limits (SPEC §12): what each intent holds against its policy's limits, kept per
-- intent so that trailing windows are exact (no buckets), filters can look at the
-- intent's attributes, and entity scopes can sum over agents. A projection of
-- `intent_decided`, `intent_closed`, `settlement_applied` and `authorization_expired`,
-- rebuilt and compared by `replay --verify`.
CREATE TABLE spend_record (
    intent_id      TEXT PRIMARY KEY,
    agent_id       TEXT        NOT NULL,
    entity_id      TEXT        NOT NULL,
    -- The ledger's acceptance time: the instant windows are keyed by.
    accepted_at    TIMESTAMPTZ NOT NULL,
    category       TEXT        NOT NULL,
    beneficiary_id TEXT        NOT NULL,
    country        TEXT,
    purpose        TEXT        NOT NULL,
    currency       TEXT        NOT NULL,
    -- What it holds now: the reservation while waiting, outstanding + captured −
    -- restored refunds once authorized, 0 once closed without approval.
    amount         NUMERIC     NOT NULL CHECK (amount >= 0),
    -- Whether count limits count it (anything reserved, outstanding or captured).
    counts         BOOLEAN     NOT NULL,
    seq            BIGINT      NOT NULL
);
CREATE INDEX spend_record_agent ON spend_record (agent_id, accepted_at);
CREATE INDEX spend_record_entity ON spend_record (entity_id, accepted_at);
GRANT SELECT, INSERT, UPDATE, DELETE ON spend_record TO spendguard_service;

-- Ledgers written before this migration: every decision that moved usage, holding what
-- its events leave it (no settlements existed before the lifecycle migration's
-- release; their holdings come from authorization_state when present).
INSERT INTO spend_record (intent_id, agent_id, entity_id, accepted_at, category,
                          beneficiary_id, country, purpose, currency, amount, counts, seq)
SELECT p->'intent'->>'intentId', p->'intent'->>'agentId', p->'intent'->>'entityId',
       date_trunc('microseconds', (p->>'acceptedAt')::timestamptz),
       p->'intent'->>'category', p->'intent'->'beneficiary'->>'id',
       p->'intent'->'beneficiary'->>'country', p->'intent'->>'purpose',
       p->'intent'->>'currency', (p->'intent'->>'amount')::numeric, true, e.seq
FROM ledger_event e, LATERAL (SELECT e.payload::jsonb AS p) j
WHERE e.event_type = 'intent_decided'
  AND p->'evaluation'->>'effect' <> 'DENY'
  AND p ? 'usage'
ON CONFLICT (intent_id) DO NOTHING;
-- Closed without approval: holds nothing.
UPDATE spend_record r SET amount = 0, counts = false, seq = o.seq
FROM intent_outcome o
WHERE o.intent_id = r.intent_id AND o.outcome <> 'APPROVED';
