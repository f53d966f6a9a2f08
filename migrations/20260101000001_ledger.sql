-- spendguard ledger schema.
--
-- One append-only, hash-chained event table is the source of truth; every other table is
-- a projection that `spendguard replay` can rebuild from the events (docs/ledger.md).

-- The role the service runs as: it may read and append events, never change them.
-- Roles are cluster-wide and tests create databases in parallel, so creation tolerates
-- a concurrent creator.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'spendguard_service') THEN
        CREATE ROLE spendguard_service LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

-- ---------------------------------------------------------------------------------
-- Events (append-only)
-- ---------------------------------------------------------------------------------
CREATE TABLE ledger_event (
    -- Global ledger sequence (`ledgerSeq`). Allocated after the chain's lock is held, so
    -- within one chain seq order is chain order; across chains it is only a total order
    -- of allocation, not of commit.
    seq          BIGINT PRIMARY KEY,
    -- `agent:<agentId>` for everything about one agent's intents, `global` for operator
    -- events, `intake` for input refused before it could be attributed.
    chain_id     TEXT        NOT NULL,
    chain_pos    BIGINT      NOT NULL,
    event_type   TEXT        NOT NULL,
    recorded_at  TIMESTAMPTZ NOT NULL,
    -- Who caused it (agent, approver, operator) and what it is about (intent, scope,
    -- subject): PCI DSS 10.2.2 audit fields, also inside the hashed payload.
    actor        TEXT        NOT NULL,
    resource     TEXT        NOT NULL,
    -- Canonical JSON, exactly the bytes that were hashed (kept as TEXT: jsonb would
    -- re-order keys and normalise numbers, breaking verification).
    origin       TEXT        NOT NULL,
    payload      TEXT        NOT NULL,
    prev_hash    BYTEA       NOT NULL,
    hash         BYTEA       NOT NULL,
    -- Writing transaction: readers that follow the ledger never read past a transaction
    -- that has not committed yet (gap-safe tailing).
    xid          XID8        NOT NULL DEFAULT pg_current_xact_id(),
    UNIQUE (chain_id, chain_pos)
);
CREATE SEQUENCE ledger_event_seq_seq AS BIGINT OWNED BY ledger_event.seq;
CREATE INDEX ledger_event_resource ON ledger_event (resource);
CREATE INDEX ledger_event_xid ON ledger_event (xid);

CREATE FUNCTION ledger_event_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_event is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'events are never changed; append a correcting event instead';
END
$$;
CREATE TRIGGER ledger_event_no_update BEFORE UPDATE OR DELETE ON ledger_event
    FOR EACH ROW EXECUTE FUNCTION ledger_event_refuse_change();
CREATE TRIGGER ledger_event_no_truncate BEFORE TRUNCATE ON ledger_event
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_event_refuse_change();

-- Last event of every chain: lets `audit verify` notice a deleted tail.
CREATE TABLE chain_head (
    chain_id  TEXT PRIMARY KEY,
    chain_pos BIGINT NOT NULL,
    hash      BYTEA  NOT NULL,
    seq       BIGINT NOT NULL
);

-- ---------------------------------------------------------------------------------
-- Projections (derived; rebuilt by replay)
-- ---------------------------------------------------------------------------------

-- One decision per intentId: idempotency index and the decision as recorded.
CREATE TABLE decision (
    intent_id     TEXT PRIMARY KEY,
    agent_id      TEXT    NOT NULL,
    entity_id     TEXT    NOT NULL,
    seq           BIGINT  NOT NULL,
    -- Keyed fingerprint (HMAC) of the intent's canonical form: equality test for
    -- redeliveries without storing anything a PAN could be brute-forced from.
    fingerprint   BYTEA   NOT NULL,
    decision_hash BYTEA   NOT NULL,
    effect        TEXT    NOT NULL,
    message       TEXT    NOT NULL
);

-- Usage per agent, window kind (D = local day, M = local month), policy timezone and
-- currency. committed = ALLOW and approved; reserved = waiting for approval.
CREATE TABLE usage_window (
    agent_id     TEXT    NOT NULL,
    kind         TEXT    NOT NULL CHECK (kind IN ('D', 'M')),
    tz           TEXT    NOT NULL,
    currency     TEXT    NOT NULL,
    window_start DATE    NOT NULL,
    committed    NUMERIC NOT NULL DEFAULT 0 CHECK (committed >= 0),
    reserved     NUMERIC NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    PRIMARY KEY (agent_id, kind, tz, currency, window_start)
);

-- Intents waiting for approval (HITL / MSIG).
CREATE TABLE pending_approval (
    intent_id          TEXT PRIMARY KEY,
    agent_id           TEXT        NOT NULL,
    entity_id          TEXT        NOT NULL,
    effect             TEXT        NOT NULL,
    approvals_required INT         NOT NULL,
    amount             NUMERIC     NOT NULL,
    currency           TEXT        NOT NULL,
    tz                 TEXT        NOT NULL,
    day                DATE        NOT NULL,
    month              DATE        NOT NULL,
    decided_seq        BIGINT      NOT NULL,
    expires_at         TIMESTAMPTZ NOT NULL
);
CREATE INDEX pending_approval_expires ON pending_approval (expires_at);

-- Accepted votes (one per approver and intent).
CREATE TABLE approval_vote (
    intent_id   TEXT        NOT NULL,
    approver_id TEXT        NOT NULL,
    vote        TEXT        NOT NULL,
    signed_at   TIMESTAMPTZ NOT NULL,
    seq         BIGINT      NOT NULL,
    PRIMARY KEY (intent_id, approver_id)
);

-- Closed approvals.
CREATE TABLE intent_outcome (
    intent_id TEXT PRIMARY KEY,
    agent_id  TEXT        NOT NULL,
    outcome   TEXT        NOT NULL,
    closed_at TIMESTAMPTZ NOT NULL,
    seq       BIGINT      NOT NULL,
    message   TEXT        NOT NULL
);

CREATE TABLE kill_switch (
    scope      TEXT PRIMARY KEY,
    active     BOOLEAN     NOT NULL,
    actor      TEXT        NOT NULL,
    reason     TEXT        NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL,
    seq        BIGINT      NOT NULL
);

-- Every policy version that was ever activated, with its canonical content.
CREATE TABLE policy_version (
    sha256    TEXT PRIMARY KEY,
    name      TEXT   NOT NULL,
    version   TEXT   NOT NULL,
    canonical TEXT   NOT NULL,
    seq       BIGINT NOT NULL
);

-- Messages to publish (decisions, outcomes), written in the deciding transaction.
CREATE TABLE outbox (
    id            BIGSERIAL PRIMARY KEY,
    seq           BIGINT      NOT NULL,
    topic         TEXT        NOT NULL,
    msg_key       TEXT        NOT NULL,
    payload       TEXT        NOT NULL,
    claimed_by    TEXT,
    claimed_until TIMESTAMPTZ
);

-- ---------------------------------------------------------------------------------
-- Secrets kept apart from the events
-- ---------------------------------------------------------------------------------

-- Per data subject (beneficiary id) AES-256-GCM keys. Deleting a subject's rows is the
-- LGPD erasure: the events keep only ciphertext.
CREATE TABLE subject_key (
    subject_id TEXT PRIMARY KEY,
    key_id     UUID        NOT NULL UNIQUE,
    key        BYTEA       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Service-wide secrets (the idempotency fingerprint key).
CREATE TABLE ledger_secret (
    name TEXT PRIMARY KEY,
    key  BYTEA NOT NULL
);

-- ---------------------------------------------------------------------------------
-- Privileges of the service role
-- ---------------------------------------------------------------------------------
REVOKE ALL ON ledger_event FROM PUBLIC;
GRANT SELECT, INSERT ON ledger_event TO spendguard_service;
GRANT USAGE, SELECT ON SEQUENCE ledger_event_seq_seq TO spendguard_service;
GRANT SELECT, INSERT, UPDATE, DELETE ON chain_head, decision, usage_window, pending_approval,
    approval_vote, intent_outcome, kill_switch, policy_version, outbox, subject_key
    TO spendguard_service;
GRANT SELECT, INSERT ON ledger_secret TO spendguard_service;
GRANT USAGE, SELECT ON SEQUENCE outbox_id_seq TO spendguard_service;

-- Advisory locks of one transaction, taken in the given order (callers sort the keys, so
-- two writers never wait on each other in opposite orders). `shared_key` is taken first,
-- in shared mode: deciders share the kill-switch key that a kill-switch change takes
-- exclusively, so no decision can straddle a kill-switch commit.
CREATE FUNCTION ledger_lock(keys BIGINT[], shared_key BIGINT) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    k BIGINT;
BEGIN
    IF shared_key IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock_shared(shared_key);
    END IF;
    FOREACH k IN ARRAY keys LOOP
        PERFORM pg_advisory_xact_lock(k);
    END LOOP;
END
$$;

GRANT SELECT ON _sqlx_migrations TO spendguard_service;
