-- Webhook notifications (SPEC §13.2). Not ledger projections: a delivery queue and the
-- notifier's position in the ledger. Replay neither reads nor rebuilds them.

-- Where the notifier stopped reading ledger_event, as (xid, seq) in the gap-safe order
-- of `events_after`: advanced in the same transaction that enqueues the deliveries, so a
-- crash either enqueues and advances or does neither. One row (id = 1).
CREATE TABLE notification_cursor (
    id       INT PRIMARY KEY CHECK (id = 1),
    xid      BIGINT NOT NULL,
    seq      BIGINT NOT NULL,
    moved_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One POST of one event to one webhook; at-least-once (receivers dedupe by id).
CREATE TABLE notification_delivery (
    id              UUID PRIMARY KEY,
    webhook_id      TEXT        NOT NULL,
    event_kind      TEXT        NOT NULL,
    -- The ledger event it announces: with webhook_id and kind, what makes enqueueing
    -- idempotent if a notifier's transaction is retried.
    event_seq       BIGINT      NOT NULL,
    -- The exact JSON body POSTed (signed at each attempt with a fresh timestamp).
    payload         TEXT        NOT NULL,
    attempts        INT         NOT NULL DEFAULT 0,
    -- Also the lease: a claimed delivery's next_attempt_at is pushed past the attempt's
    -- timeout, so two instances never send it at once.
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error      TEXT,
    last_status     INT,
    delivered_at    TIMESTAMPTZ,
    failed_at       TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (webhook_id, event_kind, event_seq)
);
-- What the sender claims: due, neither delivered nor given up.
CREATE INDEX notification_delivery_due ON notification_delivery (next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
CREATE INDEX notification_delivery_created ON notification_delivery (created_at DESC);

GRANT SELECT, INSERT, UPDATE ON notification_cursor TO spendguard_service;
GRANT SELECT, INSERT, UPDATE, DELETE ON notification_delivery TO spendguard_service;
