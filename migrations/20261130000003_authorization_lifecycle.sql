-- Authorization lifecycle (SPEC §11): what became of the money each decision
-- authorized. Both tables are projections of the events (`settlement_applied`,
-- `authorization_expired`, `intent_decided` ALLOW, `intent_closed` APPROVED /
-- CANCELLED) and are rebuilt and compared by `spendguard replay --verify`.

-- One row per authorization: ALLOWed intents, and HITL / MSIG intents once APPROVED.
CREATE TABLE authorization_state (
    intent_id      TEXT PRIMARY KEY,
    agent_id       TEXT        NOT NULL,
    entity_id      TEXT        NOT NULL,
    authorized     NUMERIC     NOT NULL CHECK (authorized > 0),
    captured       NUMERIC     NOT NULL DEFAULT 0 CHECK (captured >= 0),
    -- Released by VOIDs and by the remainder of a final capture.
    voided         NUMERIC     NOT NULL DEFAULT 0 CHECK (voided >= 0),
    refunded       NUMERIC     NOT NULL DEFAULT 0 CHECK (refunded >= 0),
    -- Part of `refunded` that gave budget back (`refunds: restore`).
    restored       NUMERIC     NOT NULL DEFAULT 0 CHECK (restored >= 0),
    -- What `authorizationTtl` released.
    expired_amount NUMERIC     NOT NULL DEFAULT 0 CHECK (expired_amount >= 0),
    is_final       BOOLEAN     NOT NULL DEFAULT false,
    expired        BOOLEAN     NOT NULL DEFAULT false,
    expires_at     TIMESTAMPTZ NOT NULL,
    -- The usage windows of the original acceptance (every adjustment lands there).
    currency       TEXT        NOT NULL,
    tz             TEXT        NOT NULL,
    day            DATE        NOT NULL,
    month          DATE        NOT NULL,
    -- Last event that changed the row.
    seq            BIGINT      NOT NULL,
    -- Two captures of one intent never exceed its authorization, whatever wrote them.
    CHECK (captured + voided <= authorized),
    CHECK (refunded <= captured),
    CHECK (restored <= refunded)
);
-- The sweeper's query: open authorizations past their TTL.
CREATE INDEX authorization_state_open_expiry ON authorization_state (expires_at)
    WHERE NOT is_final AND NOT expired;
CREATE INDEX authorization_state_agent ON authorization_state (agent_id);

-- One row per applied settlementId: a redelivery answers with the recorded outcome, the
-- same id with another payload is refused (`idempotency_conflict`).
CREATE TABLE settlement (
    settlement_id TEXT PRIMARY KEY,
    intent_id     TEXT   NOT NULL,
    agent_id      TEXT   NOT NULL,
    -- Keyed fingerprint (HMAC) of the settlement's canonical form.
    fingerprint   BYTEA  NOT NULL,
    seq           BIGINT NOT NULL,
    message       TEXT   NOT NULL
);
CREATE INDEX settlement_intent ON settlement (intent_id);

-- An approval opens an authorization for the policy's `authorizationTtl`.
ALTER TABLE pending_approval
    ADD COLUMN authorization_ttl_secs BIGINT NOT NULL DEFAULT 604800;

GRANT SELECT, INSERT, UPDATE, DELETE ON authorization_state, settlement TO spendguard_service;

-- Ledgers written before this migration: their ALLOWed and APPROVED intents are open
-- authorizations with the default TTL of 7 days from acceptance / approval, exactly
-- what the fold derives from those events (replay --verify compares the two).
INSERT INTO authorization_state (intent_id, agent_id, entity_id, authorized, expires_at,
                                 currency, tz, day, month, seq)
SELECT p->'intent'->>'intentId', p->'intent'->>'agentId', p->'intent'->>'entityId',
       (p->'intent'->>'amount')::numeric,
       date_trunc('microseconds', (p->>'acceptedAt')::timestamptz) + interval '7 days',
       p->'intent'->>'currency', p->'usage'->'window'->>'tz',
       (p->'usage'->'window'->>'day')::date,
       ((p->'usage'->'window'->>'month') || '-01')::date,
       e.seq
FROM ledger_event e, LATERAL (SELECT e.payload::jsonb AS p) j
WHERE e.event_type = 'intent_decided'
  AND p->'evaluation'->>'effect' = 'ALLOW'
  AND p ? 'usage'
ON CONFLICT (intent_id) DO NOTHING;

INSERT INTO authorization_state (intent_id, agent_id, entity_id, authorized, expires_at,
                                 currency, tz, day, month, seq)
SELECT p->>'intentId', p->>'agentId', p->>'entityId', (p->>'amount')::numeric,
       date_trunc('microseconds', (p->>'closedAt')::timestamptz) + interval '7 days',
       p->>'currency', p->>'tz', (p->>'day')::date, (p->>'month')::date, e.seq
FROM ledger_event e, LATERAL (SELECT e.payload::jsonb AS p) j
WHERE e.event_type = 'intent_closed' AND p->>'outcome' = 'APPROVED'
ON CONFLICT (intent_id) DO NOTHING;
