-- Idempotency of what the service records about a Kafka message that is not a
-- decision (an invalid intent, a refused or set-aside message): one row per
-- (source topic, partition, offset, event type). A redelivery, or a retry after a
-- COMMIT whose outcome was unknown, finds the row and answers with the recorded
-- event instead of appending a second one (SPEC §15). Derivable from the events'
-- origins, like every projection.
CREATE TABLE intake_record (
    source_topic TEXT   NOT NULL,
    source_partition INT NOT NULL,
    source_offset BIGINT NOT NULL,
    event_type   TEXT   NOT NULL,
    seq          BIGINT NOT NULL,
    PRIMARY KEY (source_topic, source_partition, source_offset, event_type)
);
GRANT SELECT, INSERT ON intake_record TO spendguard_service;
