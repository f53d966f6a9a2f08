//! Signed checkpoints of the chain heads (SPEC §14). A database superuser can rewrite
//! events and recompute every hash and `chain_head`, and `audit verify` alone would
//! still pass: the chains are only as trustworthy as the database. A checkpoint records
//! where chains stood — position and hash of their last event — signed with an Ed25519
//! key PostgreSQL never sees, and is kept outside it (a directory, a topic). A rewrite of
//! any event at or before a recorded position changes the hash at that position (each
//! hash covers the previous one), so `audit verify --checkpoints DIR` finds it.
//!
//! Each entry is checked on its own (event at `(chain, pos)` has `hash`): no global order
//! of commits is assumed, so a checkpoint taken while transactions are in flight is
//! still exact. A producer records every chain in its first checkpoint and afterwards
//! only the chains whose head moved, which keeps a checkpoint small on a ledger of
//! 100,000 agent chains.
//!
//! ```text
//! signed = "spendguard.checkpoint.v1" ‖ version ‖ instance ‖ createdAt ‖ maxSeq ‖ n ‖
//!          (chainId ‖ pos ‖ hash-hex) × n            each field u64-BE length-prefixed
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use super::chain::{self, ChainProblem, Hash};

const DOMAIN: &[u8] = b"spendguard.checkpoint.v1";
pub const VERSION: u32 = 1;
/// The largest checkpoint file `audit verify` reads (a first checkpoint of 1,000,000
/// chains is about 120 MB of JSON; beyond that, something else is in the directory).
pub const MAX_CHECKPOINT_BYTES: u64 = 256 * 1024 * 1024;

/// Where one chain stood.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeadEntry {
    pub chain_id: String,
    pub pos: i64,
    /// Hex SHA-256 of the event at `pos`.
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Checkpoint {
    pub version: u32,
    /// The instance that took it.
    pub instance: String,
    pub created_at: DateTime<Utc>,
    /// The highest event seq visible when it was taken (informational: seq order is not
    /// commit order, so entries, not this number, are what is checked).
    pub max_seq: i64,
    pub heads: Vec<HeadEntry>,
    /// Base64 Ed25519 public key of the signer (must be the one the auditor trusts).
    pub public_key: String,
    /// Base64 signature over the signed bytes (module docs).
    pub signature: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {0}: {1}")]
    Invalid(String, String),
    #[error("checkpoint directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

impl Checkpoint {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.heads.len() * 96);
        out.extend_from_slice(DOMAIN);
        field(&mut out, self.version.to_string().as_bytes());
        field(&mut out, self.instance.as_bytes());
        field(&mut out, chain::format_time(&self.created_at).as_bytes());
        field(&mut out, self.max_seq.to_string().as_bytes());
        field(&mut out, self.heads.len().to_string().as_bytes());
        for h in &self.heads {
            field(&mut out, h.chain_id.as_bytes());
            field(&mut out, h.pos.to_string().as_bytes());
            field(&mut out, h.hash.as_bytes());
        }
        out
    }

    /// A signed checkpoint of `heads`.
    pub fn sign(
        instance: &str,
        created_at: DateTime<Utc>,
        max_seq: i64,
        heads: &[(String, i64, Hash)],
        key: &SigningKey,
    ) -> Checkpoint {
        let mut c = Checkpoint {
            version: VERSION,
            instance: instance.to_string(),
            created_at: chain::to_micros(created_at),
            max_seq,
            heads: heads
                .iter()
                .map(|(chain_id, pos, hash)| HeadEntry {
                    chain_id: chain_id.clone(),
                    pos: *pos,
                    hash: hex::encode(hash),
                })
                .collect(),
            public_key: B64.encode(key.verifying_key().to_bytes()),
            signature: String::new(),
        };
        c.signature = B64.encode(key.sign(&c.signed_bytes()).to_bytes());
        c
    }

    /// Checks the signature against the key the auditor trusts (not the one the file
    /// names: whoever rewrote the ledger could sign with a key of their own).
    pub fn verify(&self, trusted: &VerifyingKey, name: &str) -> Result<(), CheckpointError> {
        let bad = |why: &str| CheckpointError::Invalid(name.to_string(), why.to_string());
        if self.version != VERSION {
            return Err(bad(&format!("unknown version {}", self.version)));
        }
        if self.public_key != B64.encode(trusted.to_bytes()) {
            return Err(bad("signed by another key than the trusted checkpoint key"));
        }
        let sig: [u8; 64] = B64
            .decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("signature is not 64 base64 bytes"))?;
        trusted
            .verify_strict(&self.signed_bytes(), &Signature::from_bytes(&sig))
            .map_err(|_| bad("signature does not verify: the checkpoint was altered"))
    }

    /// File name: sortable by time, unique per instance.
    pub fn file_name(&self) -> String {
        format!(
            "checkpoint-{}-{}.json",
            self.created_at.format("%Y%m%dT%H%M%S%6fZ"),
            self.instance
        )
    }

    /// Writes into `dir` (write then rename: a reader never sees half a file).
    pub fn write_to(&self, dir: &Path) -> Result<PathBuf, CheckpointError> {
        let io = |source| CheckpointError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(self.file_name());
        let tmp = dir.join(format!(".{}.tmp", self.file_name()));
        let text = serde_json::to_vec(self).map_err(|e| io(std::io::Error::other(e)))?;
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(path)
    }
}

/// The trusted public key as printed by `audit keygen` (base64 of 32 bytes).
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = B64
        .decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("the checkpoint public key must be base64 of 32 bytes (as `spendguard audit keygen` prints it)")?;
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|_| "the checkpoint public key is not an Ed25519 point")?;
    if key.is_weak() {
        return Err("the checkpoint public key is a small-order (weak) key".into());
    }
    Ok(key)
}

/// Reads every `checkpoint-*.json` of `dir`, verified against `trusted`; a file that does
/// not parse or verify is an error (an auditor must not silently skip one).
pub fn read_dir(
    dir: &Path,
    trusted: &VerifyingKey,
) -> Result<Vec<(String, Checkpoint)>, CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("checkpoint-") && n.ends_with(".json"))
        .collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(&name);
        let len = std::fs::metadata(&path).map_err(io)?.len();
        if len > MAX_CHECKPOINT_BYTES {
            return Err(CheckpointError::Invalid(
                name,
                format!("{len} bytes is over the limit"),
            ));
        }
        let bytes = std::fs::read(&path).map_err(io)?;
        let c: Checkpoint = serde_json::from_slice(&bytes)
            .map_err(|e| CheckpointError::Invalid(name.clone(), e.to_string()))?;
        c.verify(trusted, &name)?;
        out.push((name, c));
    }
    Ok(out)
}

/// What the checkpoints say each `(chain, pos)` must hash to, checked while `audit
/// verify` streams the events.
#[derive(Debug, Default)]
pub struct Expectations {
    /// (chain, pos) → (hash, checkpoint name, seen)
    entries: HashMap<(String, i64), (Hash, usize, bool)>,
    names: Vec<String>,
    pub checkpoints: usize,
}

impl Expectations {
    pub fn new(checkpoints: &[(String, Checkpoint)]) -> Result<Expectations, CheckpointError> {
        let mut e = Expectations {
            checkpoints: checkpoints.len(),
            ..Expectations::default()
        };
        for (k, (name, c)) in checkpoints.iter().enumerate() {
            e.names.push(name.clone());
            for h in &c.heads {
                let hash: Hash = hex::decode(&h.hash)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        CheckpointError::Invalid(
                            name.clone(),
                            format!("hash of {} is not 32 hex bytes", h.chain_id),
                        )
                    })?;
                e.entries
                    .insert((h.chain_id.clone(), h.pos), (hash, k, false));
            }
        }
        Ok(e)
    }

    /// An event as read: a problem if a checkpoint recorded another hash at its place.
    pub fn check(&mut self, row: &chain::EventRow) -> Option<ChainProblem> {
        let key = (row.chain_id.clone(), row.chain_pos);
        let (hash, k, seen) = self.entries.get_mut(&key)?;
        *seen = true;
        (*hash != row.hash).then(|| ChainProblem {
            seq: row.seq,
            chain_id: row.chain_id.clone(),
            chain_pos: row.chain_pos,
            problem: format!(
                "signed checkpoint {} recorded hash {} at this position, the ledger holds {}: the chain was rewritten at or before it",
                self.names[*k],
                hex::encode(*hash),
                hex::encode(row.hash)
            ),
        })
    }

    /// Recorded positions no event was found at (deleted events).
    pub fn unseen(&self) -> Vec<ChainProblem> {
        let mut out: Vec<ChainProblem> = self
            .entries
            .iter()
            .filter(|(_, (_, _, seen))| !seen)
            .map(|((chain_id, pos), (_, k, _))| ChainProblem {
                seq: 0,
                chain_id: chain_id.clone(),
                chain_pos: *pos,
                problem: format!(
                    "signed checkpoint {} recorded position {pos} of this chain, the ledger has no such event: it was deleted",
                    self.names[*k]
                ),
            })
            .collect();
        out.sort_by(|a, b| (&a.chain_id, a.chain_pos).cmp(&(&b.chain_id, b.chain_pos)));
        out
    }
}

/// The chains whose head differs from `previous` (all of them when `previous` is empty).
pub fn moved(
    heads: &[(String, i64, Hash)],
    previous: &HashMap<String, (i64, Hash)>,
) -> Vec<(String, i64, Hash)> {
    heads
        .iter()
        .filter(|(c, pos, hash)| previous.get(c) != Some(&(*pos, *hash)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn sample(k: &SigningKey) -> Checkpoint {
        Checkpoint::sign(
            "i1",
            DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            42,
            &[
                ("agent:a".into(), 3, [7; 32]),
                ("global".into(), 1, [9; 32]),
            ],
            k,
        )
    }

    #[test]
    fn a_checkpoint_verifies_only_unaltered_and_under_the_trusted_key() {
        let k = key(1);
        let c = sample(&k);
        c.verify(&k.verifying_key(), "c").unwrap();
        let mut moved_head = c.clone();
        moved_head.heads[0].pos = 4;
        assert!(moved_head.verify(&k.verifying_key(), "c").is_err());
        // Re-signed by someone else: refused although the signature is valid for its key.
        let forged = sample(&key(2));
        let err = forged.verify(&k.verifying_key(), "c").unwrap_err();
        assert!(err.to_string().contains("another key"), "{err}");
    }

    #[test]
    fn files_round_trip_and_only_changed_heads_are_recorded_again() {
        let k = key(1);
        let dir = tempfile::tempdir().unwrap();
        let c = sample(&k);
        c.write_to(dir.path()).unwrap();
        let read = read_dir(dir.path(), &k.verifying_key()).unwrap();
        assert_eq!(read, vec![(c.file_name(), c)]);

        let heads = vec![
            ("agent:a".to_string(), 3, [7; 32]),
            ("global".to_string(), 2, [1; 32]),
        ];
        let previous: HashMap<String, (i64, Hash)> = [
            ("agent:a".to_string(), (3, [7; 32])),
            ("global".to_string(), (1, [9; 32])),
        ]
        .into();
        assert_eq!(moved(&heads, &previous), vec![heads[1].clone()]);
        assert_eq!(moved(&heads, &HashMap::new()), heads);
    }
}
