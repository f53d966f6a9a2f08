-- Outbox claims look for an older row of the same key leased to another instance
-- (per-agent publishing order).
CREATE INDEX outbox_key_id ON outbox (msg_key, id);
