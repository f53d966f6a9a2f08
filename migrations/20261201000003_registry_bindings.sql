-- Approver registry and bindings versions (SPEC §14, §16): `registry_activated` and
-- `bindings_activated` events on the global chain; this is every version ever
-- activated, a projection like `policy_version`. Versions are numbered per kind in
-- activation order; the highest is the one in force.
CREATE TABLE config_version (
    kind      TEXT   NOT NULL CHECK (kind IN ('registry', 'bindings')),
    version   BIGINT NOT NULL CHECK (version > 0),
    sha256    TEXT   NOT NULL,
    canonical TEXT   NOT NULL,
    actor     TEXT   NOT NULL,
    seq       BIGINT NOT NULL,   -- the activation event
    PRIMARY KEY (kind, version)
);

-- Which registry verifies votes and which bindings choose policies is decided by this
-- table, so like the other projections (20261201000002) the service role only reads
-- it and writes it through the ledger, together with the activation event.
GRANT SELECT ON config_version TO spendguard_service;

CREATE FUNCTION ledger_write_config_version(p_kind TEXT, p_version BIGINT, p_sha256 TEXT,
    p_canonical TEXT, p_actor TEXT, p_seq BIGINT)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_assert_appended(ARRAY[p_seq], ARRAY[p_kind || '_activated']);
    INSERT INTO config_version (kind, version, sha256, canonical, actor, seq)
    VALUES (p_kind, p_version, p_sha256, p_canonical, p_actor, p_seq);
$$;
REVOKE ALL ON FUNCTION ledger_write_config_version(TEXT, BIGINT, TEXT, TEXT, TEXT, BIGINT)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger_write_config_version(TEXT, BIGINT, TEXT, TEXT, TEXT, BIGINT)
    TO spendguard_service;
