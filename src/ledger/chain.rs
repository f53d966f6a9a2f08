//! Hash chains: how an event's hash is computed from its canonical bytes, the chain
//! state of one transaction, and `audit verify`.
//!
//! Each event belongs to one chain (`agent:<id>`, `global`, `intake`) and stores its
//! position in it, the previous event's hash and its own hash:
//!
//! `hash = SHA-256(prev_hash || "spendguard.event.v1" || field...)` where every field
//! (seq, chain id, position, type, recorded_at, actor, resource, origin, payload) is
//! length-prefixed (u64 big-endian), so no two different events share canonical bytes.
//!
//! One chain per agent means writers of different agents never wait for each other
//! (the agent's lock, already needed for usage windows, serializes one chain's writers);
//! `chain_head` records every chain's last event so a deleted tail is noticed.

use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

pub const HASH_BYTES: usize = 32;
pub type Hash = [u8; HASH_BYTES];
/// `prev_hash` of the first event of every chain.
pub const GENESIS: Hash = [0u8; HASH_BYTES];
const DOMAIN: &[u8] = b"spendguard.event.v1";

/// The chain of operator events (kill switch, policy activation, erasure).
pub const GLOBAL_CHAIN: &str = "global";
/// The chain of input refused before it could be attributed to an agent.
pub const INTAKE_CHAIN: &str = "intake";

pub fn agent_chain(agent_id: &str) -> String {
    format!("agent:{agent_id}")
}

/// Advisory-lock key of a chain (first 8 bytes of SHA-256 of its id). A collision only
/// makes two chains share a lock.
pub fn lock_key(name: &str) -> i64 {
    let d = Sha256::digest(name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    i64::from_be_bytes(b)
}

/// The lock deciders share and kill-switch changes take exclusively.
pub fn kill_switch_lock_key() -> i64 {
    lock_key("spendguard:kill-switch")
}

/// RFC 3339 with microseconds (PostgreSQL's precision), the form that is hashed.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Truncates to microseconds so a time survives a round trip through PostgreSQL.
pub fn to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// The hashed content of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub seq: i64,
    pub chain_id: String,
    pub chain_pos: i64,
    pub event_type: String,
    pub recorded_at: DateTime<Utc>,
    pub actor: String,
    pub resource: String,
    pub origin: String,
    pub payload: String,
    pub prev_hash: Hash,
    pub hash: Hash,
}

impl EventRow {
    pub fn compute_hash(&self) -> Hash {
        let mut h = Sha256::new();
        h.update(self.prev_hash);
        h.update(DOMAIN);
        let seq = self.seq.to_string();
        let pos = self.chain_pos.to_string();
        let at = format_time(&self.recorded_at);
        for field in [
            seq.as_str(),
            &self.chain_id,
            pos.as_str(),
            &self.event_type,
            at.as_str(),
            &self.actor,
            &self.resource,
            &self.origin,
            &self.payload,
        ] {
            h.update((field.len() as u64).to_be_bytes());
            h.update(field.as_bytes());
        }
        h.finalize().into()
    }
}

/// The heads of the chains one transaction holds locks on.
#[derive(Debug, Default)]
pub struct Heads {
    heads: HashMap<String, (i64, Hash)>,
}

impl Heads {
    pub fn insert(&mut self, chain_id: String, pos: i64, hash: Hash) {
        self.heads.insert(chain_id, (pos, hash));
    }

    /// Next (position, prev_hash) of a chain; a chain never seen starts at 1.
    pub fn next(&self, chain_id: &str) -> (i64, Hash) {
        match self.heads.get(chain_id) {
            Some((pos, hash)) => (pos + 1, *hash),
            None => (1, GENESIS),
        }
    }

    pub fn advance(&mut self, row: &EventRow) {
        self.heads
            .insert(row.chain_id.clone(), (row.chain_pos, row.hash));
    }
}

/// One problem found by `audit verify`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChainProblem {
    /// The first affected event (for a deleted tail: the chain head's recorded seq).
    pub seq: i64,
    pub chain_id: String,
    pub chain_pos: i64,
    pub problem: String,
}

/// A chain in [`Verifier`]: the first 128 bits of the SHA-256 of its id (no accidental
/// collision among any number of chains; a chosen one needs a SHA-256 collision).
type ChainKey = [u8; 16];

fn chain_key(chain_id: &str) -> ChainKey {
    let full = Sha256::digest(chain_id.as_bytes());
    let mut k = [0u8; 16];
    k.copy_from_slice(&full[..16]);
    k
}

/// Streaming verifier: feed events in seq order, then `finish` with the recorded heads.
#[derive(Debug, Default)]
pub struct Verifier {
    /// chain → (position, hash, seq) of its last event. Keyed by [`chain_key`], not the
    /// id: a ledger has a chain per agent, and 100,000 `String` keys were ~5 MB of
    /// replay's peak. A chain left without a head is reported with an empty `chain_id`
    /// and its last event's seq; [`Verifier::name_chains`] fills the id in.
    last: HashMap<ChainKey, (i64, Hash, i64)>,
    pub events: u64,
    pub problems: Vec<ChainProblem>,
}

impl Verifier {
    /// Room for `chains` chains up front (replay: see [`super::machine::Capacities`]).
    pub fn with_chains(chains: usize) -> Verifier {
        Verifier {
            last: HashMap::with_capacity(chains),
            ..Verifier::default()
        }
    }

    pub fn check(&mut self, row: &EventRow) {
        self.events += 1;
        let key = chain_key(&row.chain_id);
        let (expected_pos, expected_prev) = match self.last.get(&key) {
            Some((pos, hash, _)) => (pos + 1, *hash),
            None => (1, GENESIS),
        };
        let mut report = |problem: String| {
            self.problems.push(ChainProblem {
                seq: row.seq,
                chain_id: row.chain_id.clone(),
                chain_pos: row.chain_pos,
                problem,
            })
        };
        if row.chain_pos != expected_pos {
            report(if row.chain_pos > expected_pos {
                format!(
                    "chain position {} follows {}: event(s) at position {}..{} are missing (deleted)",
                    row.chain_pos,
                    expected_pos - 1,
                    expected_pos,
                    row.chain_pos - 1
                )
            } else {
                format!(
                    "chain position {} repeats or goes back (expected {expected_pos})",
                    row.chain_pos
                )
            });
        } else if row.prev_hash != expected_prev {
            report(format!(
                "prev_hash {} does not match the hash of the previous event {}",
                hex::encode(row.prev_hash),
                hex::encode(expected_prev)
            ));
        }
        let actual = row.compute_hash();
        if actual != row.hash {
            report(format!(
                "content does not match its hash (stored {}, recomputed {}): the event was altered",
                hex::encode(row.hash),
                hex::encode(actual)
            ));
        }
        // Continue from the stored hash: the next event is judged on its own link.
        self.last.insert(key, (row.chain_pos, row.hash, row.seq));
    }

    /// Compares the recorded chain heads with the last event seen of each chain.
    pub fn finish(&mut self, heads: &[(String, i64, Hash, i64)]) {
        for (chain_id, pos, hash, seq) in heads {
            self.check_head(chain_id, *pos, hash, *seq);
        }
        self.finish_heads();
    }

    /// Compares one recorded chain head with the last event seen of its chain. Heads
    /// can be fed one at a time as they are read (a ledger has one chain per agent, and
    /// holding 100,000 head rows was ~30 MB of replay's peak); then [`Self::finish_heads`].
    pub fn check_head(&mut self, chain_id: &str, pos: i64, hash: &Hash, seq: i64) {
        // A chain whose head was seen leaves `last` (`chain_head` has one row per
        // chain): what remains at the end are the chains without a head.
        match self.last.remove(&chain_key(chain_id)) {
            None => self.problems.push(ChainProblem {
                seq,
                chain_id: chain_id.to_string(),
                chain_pos: pos,
                problem: format!("chain head records position {pos} but the chain has no events (deleted)"),
            }),
            Some((last_pos, last_hash, _)) if last_pos != pos || last_hash != *hash => {
                self.problems.push(ChainProblem {
                    seq,
                    chain_id: chain_id.to_string(),
                    chain_pos: pos,
                    problem: format!(
                        "chain head records position {pos} (hash {}) but the last event is at position {last_pos} (hash {}): the tail was deleted or altered",
                        hex::encode(hash),
                        hex::encode(last_hash)
                    ),
                })
            }
            Some(_) => {}
        }
    }

    /// After every head went through [`Self::check_head`]: chains with events but no
    /// recorded head are problems too; problems end in seq order.
    pub fn finish_heads(&mut self) {
        for (_, (pos, _, seq)) in std::mem::take(&mut self.last) {
            self.problems.push(ChainProblem {
                seq,
                chain_id: String::new(),
                chain_pos: pos,
                problem: "chain has events but no recorded head".into(),
            });
        }
        self.problems.sort_by_key(|p| p.seq);
    }

    /// The seqs of the problems whose chain is not named yet (chains without a head).
    pub fn unnamed_seqs(&self) -> Vec<i64> {
        self.problems
            .iter()
            .filter(|p| p.chain_id.is_empty())
            .map(|p| p.seq)
            .collect()
    }

    /// Names the chains of [`Verifier::unnamed_seqs`] (seq → chain id, from the events).
    pub fn name_chains(&mut self, chain_of: &HashMap<i64, String>) {
        for p in &mut self.problems {
            if p.chain_id.is_empty()
                && let Some(id) = chain_of.get(&p.seq)
            {
                p.chain_id = id.clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<EventRow> {
        let mut heads = Heads::default();
        (1..=n)
            .map(|i| {
                let (pos, prev) = heads.next("agent:a");
                let mut r = EventRow {
                    seq: i * 10,
                    chain_id: "agent:a".into(),
                    chain_pos: pos,
                    event_type: "intent_decided".into(),
                    recorded_at: DateTime::from_timestamp(1_700_000_000 + i, 0).unwrap(),
                    actor: "a".into(),
                    resource: format!("i{i}"),
                    origin: "{}".into(),
                    payload: format!("{{\"n\":{i}}}"),
                    prev_hash: prev,
                    hash: GENESIS,
                };
                r.hash = r.compute_hash();
                heads.advance(&r);
                r
            })
            .collect()
    }

    fn verify(rows: &[EventRow], head: Option<&EventRow>) -> Vec<ChainProblem> {
        let mut v = Verifier::default();
        rows.iter().for_each(|r| v.check(r));
        let heads: Vec<_> = head
            .map(|h| (h.chain_id.clone(), h.chain_pos, h.hash, h.seq))
            .into_iter()
            .collect();
        v.finish(&heads);
        v.problems
    }

    #[test]
    fn intact_chain_verifies() {
        let rows = chain(5);
        assert!(verify(&rows, rows.last()).is_empty());
    }

    #[test]
    fn altered_deleted_and_truncated_events_are_named() {
        let rows = chain(5);
        let mut altered = rows.clone();
        altered[1].payload = "{\"n\":99}".into();
        assert_eq!(verify(&altered, rows.last())[0].seq, 20);

        let mut deleted = rows.clone();
        deleted.remove(2);
        let p = verify(&deleted, rows.last());
        assert_eq!(p[0].seq, 40);
        assert!(p[0].problem.contains("missing"));

        let truncated = &rows[..4];
        let p = verify(truncated, rows.last());
        assert_eq!(p[0].seq, 50);
    }

    #[test]
    fn heads_streamed_one_at_a_time_find_headless_chains_and_chainless_heads() {
        let rows = chain(3);
        let mut v = Verifier::default();
        rows.iter().for_each(|r| v.check(r));
        // A head for a chain with no events, and none for the chain that has them.
        v.check_head("agent:ghost", 4, &GENESIS, 99);
        v.finish_heads();
        let problems: Vec<_> = v.problems.iter().map(|p| p.problem.as_str()).collect();
        assert_eq!(v.problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("no recorded head"), "{problems:?}");
        assert!(problems[1].contains("has no events"), "{problems:?}");
        // The headless chain is named from its last event's seq.
        assert_eq!(v.unnamed_seqs(), vec![rows.last().unwrap().seq]);
        v.name_chains(&HashMap::from([(
            rows.last().unwrap().seq,
            "agent:a".to_string(),
        )]));
        assert_eq!(v.problems[0].chain_id, "agent:a");
        assert_eq!(v.problems[1].chain_id, "agent:ghost");

        // The matching head, streamed: nothing to report.
        let mut v = Verifier::default();
        rows.iter().for_each(|r| v.check(r));
        let last = rows.last().unwrap();
        v.check_head(&last.chain_id, last.chain_pos, &last.hash, last.seq);
        v.finish_heads();
        assert!(v.problems.is_empty(), "{:?}", v.problems);
    }

    #[test]
    fn field_boundaries_matter() {
        let rows = chain(1);
        let mut moved = rows[0].clone();
        moved.actor = "ai".into();
        moved.resource = "1".into();
        assert_ne!(moved.compute_hash(), rows[0].hash);
    }
}
