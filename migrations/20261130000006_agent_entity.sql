-- Bound identities (SPEC §14): the entity each agent was first decided under. An intent
-- claiming another entity for the agent is denied (`entity_mismatch`), so an entity-wide
-- kill switch or budget cannot be escaped by claiming a look-alike entity. Written once
-- per agent (the service role may insert, never change or delete a binding).
CREATE TABLE agent_entity (
    agent_id  TEXT PRIMARY KEY,
    entity_id TEXT   NOT NULL,
    seq       BIGINT NOT NULL    -- the decision event that bound it
);
GRANT SELECT, INSERT ON agent_entity TO spendguard_service;

-- Agents decided before this table existed: their first decision binds them, as the
-- fold does on replay.
INSERT INTO agent_entity (agent_id, entity_id, seq)
SELECT DISTINCT ON (agent_id) agent_id, entity_id, seq FROM decision ORDER BY agent_id, seq;
