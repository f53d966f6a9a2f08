-- When each outbox row was written (the database's clock at the insert, inside the
-- deciding transaction): the publisher reports how long rows wait to be claimed
-- (`spendguard_pipeline_stage_seconds{stage="outbox_wait"}`, issue 15).
ALTER TABLE outbox ADD COLUMN created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp();
