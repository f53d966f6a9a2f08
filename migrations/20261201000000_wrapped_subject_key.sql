-- Per-subject keys stored wrapped by a key-encryption key (KEK) kept outside PostgreSQL
-- (SPEC §14 "Keys apart from data"): a dump of this database must not open the
-- personal data sealed in the events.
--
-- The migration cannot wrap the existing clear keys itself: it never sees the KEK. It
-- renames their column to `legacy_key`, so that an older spendguard (which inserts into
-- `key`) fails instead of writing new clear keys, and leaves them there until a ledger
-- holding the KEK starts (`serve`, `ledger submit`, `privacy rotate-kek`): it wraps
-- every legacy row, in batches, each batch recorded as a `subject_keys_rewrapped` event,
-- and clears `legacy_key`. Until then the old keys remain readable in the database (and
-- in backups taken before): see docs/compliance.md.
--
-- Version 20261201000000, not ...01: that number is Luhn-valid, and sqlx stores it in
-- `_sqlx_migrations`, where the card-number check of every stored column (SPEC §14,
-- service test hostile::) rightly finds it.
ALTER TABLE subject_key RENAME COLUMN key TO legacy_key;
ALTER TABLE subject_key
    ALTER COLUMN legacy_key DROP NOT NULL,
    -- nonce ‖ AES-256-GCM(KEK, key) ‖ tag, associated data = version, key id, subject.
    ADD COLUMN wrapped_key BYTEA,
    -- Which KEK wrapped the row: what a rotation re-wraps and an error names.
    ADD COLUMN kek_id TEXT,
    ADD CONSTRAINT subject_key_wrapped_or_legacy
        CHECK ((legacy_key IS NULL) <> (wrapped_key IS NULL)),
    ADD CONSTRAINT subject_key_wrapped_names_its_kek
        CHECK ((wrapped_key IS NULL) = (kek_id IS NULL)),
    ADD CONSTRAINT subject_key_wrapped_length
        CHECK (wrapped_key IS NULL OR octet_length(wrapped_key) = 60);

-- The legacy rows left to wrap (none once every instance ran with a KEK).
CREATE INDEX subject_key_legacy ON subject_key (subject_id) WHERE legacy_key IS NOT NULL;

GRANT SELECT, INSERT, UPDATE, DELETE ON subject_key TO spendguard_service;
