//! Signed approval votes (SPEC §4): the approver registry, the signed message, and the
//! checks that need no ledger state (who may vote, and whether the signature holds).
//!
//! Checks that need ledger state — the intent is still waiting, the approver has not
//! voted already, the vote is not after expiry, the kill switch at quorum — are the
//! ledger's (`Ledger::apply_vote`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

use crate::intent::MAX_ID_LEN;

/// Domain separation: a signature made for anything else can never verify as a vote.
/// v2 binds the approver and the signing time too (SPEC §13.1).
pub const SIGNING_DOMAIN: &str = "spendguard.approval.v2";
/// The first format (intentId, decision hash, vote only): recognised so its votes are
/// refused as `signature_format_outdated` rather than as forgeries.
pub const LEGACY_SIGNING_DOMAIN: &str = "spendguard.approval.v1";
/// Furthest a vote's `signedAt` may be from the ledger's clock, either way (SPEC §13.1):
/// a captured vote cannot be replayed later, and a signer's clock cannot pre-date votes.
pub const MAX_SIGNATURE_SKEW_SECS: i64 = 600;
/// Largest vote message accepted, in bytes.
pub const MAX_VOTE_BYTES: usize = 4 * 1024;
/// Largest approver registry accepted.
pub const MAX_REGISTRY_BYTES: u64 = 1024 * 1024;

/// The vote and the verified vote are the ledger's types: what this module checks is
/// exactly what the ledger records.
pub use crate::ledger::{VerifiedVote, Vote};

/// The message on `spend.approvals`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VoteMessage {
    pub intent_id: String,
    pub approver_id: String,
    pub vote: Vote,
    /// Base64 Ed25519 signature over [`signing_message`]. Absent or empty = unsigned.
    #[serde(default)]
    pub signature: Option<String>,
    pub signed_at: SignedAt,
}

/// A vote's `signedAt`: the instant, and the RFC 3339 text exactly as sent, which is
/// what the signature covers (re-rendering the instant could differ from the signer's
/// text in precision or offset and break a good signature).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedAt {
    at: DateTime<Utc>,
    text: String,
}

impl SignedAt {
    /// `at` rendered with millisecond precision, the form `spendguard approve` signs.
    /// The instant is cut to what the text holds, so a message reads back equal.
    pub fn new(at: DateTime<Utc>) -> SignedAt {
        let text = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let at = DateTime::parse_from_rfc3339(&text).map_or(at, |t| t.with_timezone(&Utc));
        SignedAt { at, text }
    }

    pub fn parse(text: &str) -> Result<SignedAt, String> {
        let at = DateTime::parse_from_rfc3339(text)
            .map_err(|e| format!("signedAt {text:?} is not an RFC 3339 time: {e}"))?;
        Ok(SignedAt {
            at: at.with_timezone(&Utc),
            text: text.to_string(),
        })
    }

    pub fn at(&self) -> DateTime<Utc> {
        self.at
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl Serialize for SignedAt {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for SignedAt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SignedAt, D::Error> {
        let text = String::deserialize(d)?;
        SignedAt::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Why a vote was refused. `code()` values are stable API (audited, asserted by tests).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VoteRefusal {
    #[error("vote message is malformed: {0}")]
    Malformed(String),
    #[error("vote is not signed")]
    MissingSignature,
    #[error(
        "signature does not verify for approver {approver} over intent {intent} and its decision hash"
    )]
    BadSignature { approver: String, intent: String },
    #[error("approver {0:?} is not in the approver registry")]
    UnknownApprover(String),
    #[error("approver {approver} is not registered for entity {entity}")]
    NotRegisteredForEntity { approver: String, entity: String },
    #[error("agent {0} cannot approve its own intent")]
    SelfApproval(String),
    #[error("no decision is recorded for intent {0}")]
    UnknownIntent(String),
    #[error(
        "the signature of approver {approver} on intent {intent} is in the retired v1 format (intentId, decision hash and vote only); sign again with a current `spendguard approve`, which also covers approverId and signedAt"
    )]
    SignatureFormatOutdated { approver: String, intent: String },
    #[error(
        "signedAt {signed_at} is {skew_secs} s away from the ledger's clock ({ledger_now}); at most {MAX_SIGNATURE_SKEW_SECS} s is accepted: sign again now"
    )]
    StaleSignature {
        signed_at: String,
        ledger_now: String,
        skew_secs: i64,
    },
    #[error("the API token is bound to approver {token}; it cannot submit a vote of {vote}")]
    ApproverMismatch { token: String, vote: String },
}

impl VoteRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            VoteRefusal::Malformed(_) => "malformed_vote",
            VoteRefusal::MissingSignature => "missing_signature",
            VoteRefusal::BadSignature { .. } => "bad_signature",
            VoteRefusal::UnknownApprover(_) => "unknown_approver",
            VoteRefusal::NotRegisteredForEntity { .. } => "approver_not_registered_for_entity",
            VoteRefusal::SelfApproval(_) => "self_approval",
            VoteRefusal::UnknownIntent(_) => "unknown_intent",
            VoteRefusal::SignatureFormatOutdated { .. } => "signature_format_outdated",
            VoteRefusal::StaleSignature { .. } => "stale_signature",
            VoteRefusal::ApproverMismatch { .. } => "approver_token_mismatch",
        }
    }
}

/// What the vote is about, as recorded by the ledger.
#[derive(Debug, Clone, Copy)]
pub struct VoteSubject<'a> {
    pub agent_id: &'a str,
    pub entity_id: &'a str,
    /// Hex hash of the recorded decision the approver saw.
    pub decision_hash: &'a str,
}

/// What a vote is signed over, besides the domain.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    pub intent_id: &'a str,
    pub decision_hash: &'a str,
    pub vote: Vote,
    pub approver_id: &'a str,
    pub signed_at: &'a SignedAt,
}

/// The exact bytes an approver signs (documented in docs/api.md for other signers).
/// Identifiers cannot contain control characters (vote and intent validation) nor can
/// an RFC 3339 time, so newline separation is unambiguous.
pub fn signing_message(s: Signed<'_>) -> Vec<u8> {
    format!(
        "{SIGNING_DOMAIN}\n{}\n{}\n{}\n{}\n{}",
        s.intent_id,
        s.decision_hash,
        s.vote.as_str(),
        s.approver_id,
        s.signed_at.as_str()
    )
    .into_bytes()
}

/// The v1 bytes: only to tell an outdated signature from a forged one.
fn legacy_signing_message(intent_id: &str, decision_hash: &str, vote: Vote) -> Vec<u8> {
    format!(
        "{LEGACY_SIGNING_DOMAIN}\n{intent_id}\n{decision_hash}\n{}",
        vote.as_str()
    )
    .into_bytes()
}

/// Refuses a vote signed more than [`MAX_SIGNATURE_SKEW_SECS`] away from `ledger_now`
/// (the database's clock, never this process's).
pub fn check_fresh(signed_at: &SignedAt, ledger_now: DateTime<Utc>) -> Result<(), VoteRefusal> {
    let skew_secs = (ledger_now - signed_at.at()).num_seconds().abs();
    if skew_secs <= MAX_SIGNATURE_SKEW_SECS {
        return Ok(());
    }
    Err(VoteRefusal::StaleSignature {
        signed_at: signed_at.as_str().to_string(),
        ledger_now: ledger_now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        skew_secs,
    })
}

/// A glob of [`glob_match`] as a SQL `LIKE` pattern with `\` as the escape character.
pub fn glob_to_like(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// Parses a vote message; the intent id is needed before anything else can be checked.
pub fn parse_vote(bytes: &[u8]) -> Result<VoteMessage, VoteRefusal> {
    if bytes.len() > MAX_VOTE_BYTES {
        return Err(VoteRefusal::Malformed(format!(
            "message is {} bytes; the limit is {MAX_VOTE_BYTES}",
            bytes.len()
        )));
    }
    // Card numbers masked before any field exists (SPEC §14); a vote whose signed
    // fields held one no longer verifies, and is refused as such.
    let bytes = crate::privacy::mask_json_bytes(bytes);
    let msg: VoteMessage =
        serde_json::from_slice(&bytes).map_err(|e| VoteRefusal::Malformed(e.to_string()))?;
    for (name, value) in [
        ("intentId", &msg.intent_id),
        ("approverId", &msg.approver_id),
    ] {
        if value.is_empty() || value.len() > MAX_ID_LEN || value.chars().any(char::is_control) {
            return Err(VoteRefusal::Malformed(format!(
                "{name} must be 1..={MAX_ID_LEN} characters without control characters"
            )));
        }
    }
    Ok(msg)
}

#[derive(Debug, Clone)]
pub struct Approver {
    pub id: String,
    pub key: VerifyingKey,
    /// Glob patterns of the entities this approver may approve for.
    pub entities: Vec<String>,
}

/// The approver registry (`policies/approvers.yaml`).
#[derive(Debug, Clone)]
pub struct Registry {
    approvers: HashMap<String, Approver>,
    /// Canonical JSON of the content (approvers sorted by id): what `registry_activated`
    /// records and hashes, so that formatting or order changes are not new versions.
    canonical: String,
    /// The ledger's version of this content, once activated: votes verified under it
    /// record it, so an auditor re-checks them against exactly this content.
    version: Option<crate::ledger::events::ConfigVersion>,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry {
            approvers: HashMap::new(),
            canonical: crate::ledger::events::canonical(&RegistryFile {
                approvers: Vec::new(),
            }),
            version: None,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    approvers: Vec<ApproverEntry>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ApproverEntry {
    id: String,
    /// Base64 of the 32-byte Ed25519 public key.
    public_key: String,
    entities: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read approver registry {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("approver registry {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Registry {
    pub fn load(path: &Path) -> Result<Registry, RegistryError> {
        let shown = path.display().to_string();
        let read_err = |source| RegistryError::Read {
            path: shown.clone(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read_err)?.len();
        if len > MAX_REGISTRY_BYTES {
            return Err(RegistryError::Invalid {
                path: shown,
                message: format!("larger than {MAX_REGISTRY_BYTES} bytes"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| RegistryError::Read {
            path: shown.clone(),
            source,
        })?;
        Registry::parse(&text).map_err(|message| RegistryError::Invalid {
            path: shown,
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Registry, String> {
        let file: RegistryFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        Registry::from_file(file)
    }

    /// A registry as `registry_activated` recorded it ([`Registry::canonical`]), with
    /// every check of [`Registry::parse`] (a stored key altered to a weak one is refused).
    pub fn from_canonical(text: &str) -> Result<Registry, String> {
        let file: RegistryFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Registry::from_file(file)
    }

    fn from_file(file: RegistryFile) -> Result<Registry, String> {
        let mut approvers = HashMap::new();
        for entry in file.approvers {
            if entry.id.is_empty() || entry.id.len() > MAX_ID_LEN {
                return Err(format!(
                    "approver id {:?} must be 1..={MAX_ID_LEN} characters",
                    entry.id
                ));
            }
            let key = decode_public_key(&entry.public_key).map_err(|e| {
                format!(
                    "approver {}: publicKey {e} (generate one with `spendguard approvers keygen`)",
                    entry.id
                )
            })?;
            if entry.entities.is_empty() {
                return Err(format!(
                    "approver {}: entities must list at least one entity pattern",
                    entry.id
                ));
            }
            let id = entry.id.clone();
            if approvers.contains_key(&id) {
                return Err(format!("approver {id} is listed twice"));
            }
            // One key under two ids would let one person count as two approvers.
            if let Some(other) = approvers
                .values()
                .find(|a: &&Approver| a.key.as_bytes() == key.as_bytes())
            {
                return Err(format!(
                    "approver {id}: its publicKey is already the key of approver {}; one key cannot be two approvers",
                    other.id
                ));
            }
            let approver = Approver {
                id: entry.id,
                key,
                entities: entry.entities,
            };
            if approvers.insert(id.clone(), approver).is_some() {
                return Err(format!("approver {id} is listed twice"));
            }
        }
        let mut sorted: Vec<&Approver> = approvers.values().collect();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        let canonical = crate::ledger::events::canonical(&RegistryFile {
            approvers: sorted
                .into_iter()
                .map(|a| ApproverEntry {
                    id: a.id.clone(),
                    public_key: B64.encode(a.key.as_bytes()),
                    entities: a.entities.clone(),
                })
                .collect(),
        });
        Ok(Registry {
            approvers,
            canonical,
            version: None,
        })
    }

    /// The canonical content (what the ledger records and hashes).
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// Hex SHA-256 of [`Registry::canonical`].
    pub fn sha256(&self) -> String {
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            self.canonical.as_bytes(),
        ))
    }

    /// The ledger version this registry was activated as (`None`: not activated).
    pub fn version(&self) -> Option<&crate::ledger::events::ConfigVersion> {
        self.version.as_ref()
    }

    /// This registry as activated in the ledger under `version`.
    pub fn activated(mut self, version: crate::ledger::events::ConfigVersion) -> Registry {
        self.version = Some(version);
        self
    }

    pub fn get(&self, id: &str) -> Option<&Approver> {
        self.approvers.get(id)
    }

    pub fn approvers(&self) -> impl Iterator<Item = &Approver> {
        self.approvers.values()
    }

    pub fn len(&self) -> usize {
        self.approvers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.approvers.is_empty()
    }

    /// Every check that needs no ledger state, in an order that reveals the least to a
    /// forger: who the approver is and whether they may vote here, then the signature.
    pub fn verify(
        &self,
        vote: &VoteMessage,
        subject: VoteSubject<'_>,
    ) -> Result<VerifiedVote, VoteRefusal> {
        if vote.approver_id == subject.agent_id {
            return Err(VoteRefusal::SelfApproval(vote.approver_id.clone()));
        }
        let approver = self
            .get(&vote.approver_id)
            .ok_or_else(|| VoteRefusal::UnknownApprover(vote.approver_id.clone()))?;
        if !approver
            .entities
            .iter()
            .any(|p| glob_match(p, subject.entity_id))
        {
            return Err(VoteRefusal::NotRegisteredForEntity {
                approver: approver.id.clone(),
                entity: subject.entity_id.to_string(),
            });
        }
        let sig_text = vote.signature.as_deref().unwrap_or("");
        if sig_text.is_empty() {
            return Err(VoteRefusal::MissingSignature);
        }
        let bad = || VoteRefusal::BadSignature {
            approver: approver.id.clone(),
            intent: vote.intent_id.clone(),
        };
        let sig_bytes = B64.decode(sig_text).map_err(|_| bad())?;
        let sig = Signature::from_slice(&sig_bytes).map_err(|_| bad())?;
        let message = signing_message(Signed {
            intent_id: &vote.intent_id,
            decision_hash: subject.decision_hash,
            vote: vote.vote,
            approver_id: &vote.approver_id,
            signed_at: &vote.signed_at,
        });
        if approver.key.verify_strict(&message, &sig).is_err() {
            let legacy = legacy_signing_message(&vote.intent_id, subject.decision_hash, vote.vote);
            if approver.key.verify_strict(&legacy, &sig).is_ok() {
                return Err(VoteRefusal::SignatureFormatOutdated {
                    approver: approver.id.clone(),
                    intent: vote.intent_id.clone(),
                });
            }
            return Err(bad());
        }
        Ok(VerifiedVote {
            intent_id: vote.intent_id.clone(),
            approver_id: vote.approver_id.clone(),
            vote: vote.vote,
            signed_at: vote.signed_at.at(),
            proof: Some(crate::ledger::events::VoteProof {
                signature: sig_text.to_string(),
                signed_at: vote.signed_at.as_str().to_string(),
                decision_hash: subject.decision_hash.to_string(),
                registry: self.version.clone().map(Box::new),
            }),
            registered: Some(self.approvers.keys().cloned().collect()),
        })
    }
}

/// Signs a vote now with an approver's secret key (used by `spendguard approve`).
pub fn sign_vote(
    key: &SigningKey,
    intent_id: &str,
    approver_id: &str,
    decision_hash: &str,
    vote: Vote,
) -> VoteMessage {
    sign_vote_at(
        key,
        intent_id,
        approver_id,
        decision_hash,
        vote,
        SignedAt::new(Utc::now()),
    )
}

/// [`sign_vote`] with a given signing time.
pub fn sign_vote_at(
    key: &SigningKey,
    intent_id: &str,
    approver_id: &str,
    decision_hash: &str,
    vote: Vote,
    signed_at: SignedAt,
) -> VoteMessage {
    let sig = key.sign(&signing_message(Signed {
        intent_id,
        decision_hash,
        vote,
        approver_id,
        signed_at: &signed_at,
    }));
    VoteMessage {
        intent_id: intent_id.to_string(),
        approver_id: approver_id.to_string(),
        vote,
        signature: Some(B64.encode(sig.to_bytes())),
        signed_at,
    }
}

/// A vote signed in the retired v1 format (tests and the transition's documentation).
#[doc(hidden)]
pub fn sign_vote_legacy(
    key: &SigningKey,
    intent_id: &str,
    approver_id: &str,
    decision_hash: &str,
    vote: Vote,
) -> VoteMessage {
    let sig = key.sign(&legacy_signing_message(intent_id, decision_hash, vote));
    VoteMessage {
        signature: Some(B64.encode(sig.to_bytes())),
        ..sign_vote(key, intent_id, approver_id, decision_hash, vote)
    }
}

/// A new key pair: (secret key file contents, public key for the registry), both base64.
pub fn keygen() -> (String, String) {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    (
        B64.encode(key.to_bytes()),
        B64.encode(key.verifying_key().to_bytes()),
    )
}

/// Reads a secret key file written by `approvers keygen` (base64 of the 32-byte seed;
/// lines starting with `#` are comments).
pub fn read_signing_key(path: &Path) -> Result<SigningKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| format!("key file {} holds no key", path.display()))?;
    let bytes = B64
        .decode(line)
        .map_err(|_| format!("key file {} is not base64", path.display()))?;
    let seed: [u8; 32] = bytes.try_into().map_err(|_| {
        format!(
            "key file {} must hold a 32-byte Ed25519 secret key",
            path.display()
        )
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

fn decode_public_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes = B64
        .decode(text.trim())
        .map_err(|_| "is not base64".to_string())?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "must be 32 bytes".to_string())?;
    let key = VerifyingKey::from_bytes(&arr)
        .map_err(|_| "is not a valid Ed25519 public key".to_string())?;
    // A small-order key verifies signatures anyone can make (SPEC §14).
    if key.is_weak() {
        return Err("is a small-order (weak) Ed25519 key that anyone could sign for".into());
    }
    Ok(key)
}

/// `*` matches any run of characters, `?` one character; everything else is literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                backtrack = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match backtrack {
                Some((bp, bt)) => {
                    pi = bp + 1;
                    ti = bt + 1;
                    backtrack = Some((bp, bt + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    struct Fixture {
        registry: Registry,
        alice: SigningKey,
        mallory: SigningKey,
    }

    fn fixture() -> Fixture {
        let alice = SigningKey::from_bytes(&[1; 32]);
        let bob = SigningKey::from_bytes(&[2; 32]);
        let mallory = SigningKey::from_bytes(&[3; 32]);
        let yaml = format!(
            "approvers:\n  - id: alice\n    publicKey: {}\n    entities: [\"acme-*\"]\n  - id: agent-42\n    publicKey: {}\n    entities: [\"*\"]\n",
            B64.encode(alice.verifying_key().to_bytes()),
            B64.encode(bob.verifying_key().to_bytes()),
        );
        Fixture {
            registry: Registry::parse(&yaml).unwrap(),
            alice,
            mallory,
        }
    }

    /// SPEC §14: the recorded registry is the content, not the file: order and
    /// formatting are not a new version, and what is recorded loads back with every
    /// check (a vote verified under it names its version).
    #[test]
    fn registry_canonical_content_ignores_order_and_loads_back() {
        let f = fixture();
        let key = |k: &SigningKey| B64.encode(k.verifying_key().to_bytes());
        let bob = SigningKey::from_bytes(&[2; 32]);
        let reordered = Registry::parse(&format!(
            "approvers:\n- entities: ['*']\n  publicKey: \"{}\"\n  id: agent-42\n- {{id: alice, publicKey: \"{}\", entities: [acme-*]}}\n",
            key(&bob),
            key(&f.alice)
        ))
        .unwrap();
        assert_eq!(reordered.canonical(), f.registry.canonical());
        assert_eq!(reordered.sha256(), f.registry.sha256());
        let back = Registry::from_canonical(f.registry.canonical()).unwrap();
        assert_eq!(back.canonical(), f.registry.canonical());
        assert_eq!(
            back.get("alice").map(|a| a.key),
            Some(f.alice.verifying_key())
        );
        let fewer = Registry::parse(&format!(
            "approvers:\n  - id: alice\n    publicKey: {}\n    entities: [\"acme-*\"]\n",
            key(&f.alice)
        ))
        .unwrap();
        assert_ne!(fewer.sha256(), f.registry.sha256());
        // A recorded key edited into a duplicate is refused on load, as in the file.
        let duplicated = f.registry.canonical().replace(&key(&bob), &key(&f.alice));
        assert!(Registry::from_canonical(&duplicated).is_err());

        let version = crate::ledger::events::ConfigVersion {
            version: 7,
            sha256: f.registry.sha256(),
        };
        let registry = f.registry.clone().activated(version.clone());
        let msg = sign_vote(&f.alice, "i-1", "alice", HASH, Vote::Approve);
        let verified = registry.verify(&msg, subject()).unwrap();
        assert_eq!(
            verified.proof.and_then(|p| p.registry),
            Some(Box::new(version))
        );
        let unrecorded = f.registry.verify(&msg, subject()).unwrap();
        assert_eq!(unrecorded.proof.and_then(|p| p.registry), None);
    }

    fn subject() -> VoteSubject<'static> {
        VoteSubject {
            agent_id: "agent-42",
            entity_id: "acme-br",
            decision_hash: HASH,
        }
    }

    fn refusal(f: &Fixture, vote: &VoteMessage, s: VoteSubject<'_>) -> &'static str {
        f.registry.verify(vote, s).unwrap_err().code()
    }

    #[test]
    fn a_correctly_signed_vote_verifies() {
        let f = fixture();
        for v in [Vote::Approve, Vote::Reject] {
            let vote = sign_vote(&f.alice, "i-1", "alice", HASH, v);
            let ok = f.registry.verify(&vote, subject()).unwrap();
            assert_eq!(ok.vote, v);
            assert_eq!(ok.approver_id, "alice");
            // The accepted vote keeps what lets an auditor check the signature again.
            let proof = ok.proof.expect("a verified vote carries its proof");
            assert_eq!(Some(proof.signature.as_str()), vote.signature.as_deref());
            assert_eq!(proof.signed_at, vote.signed_at.as_str());
            assert_eq!(proof.decision_hash, HASH);
            // ... and the registry it was verified under (removed approvers stop counting).
            let registered = ok.registered.expect("verified under a registry");
            assert!(registered.contains(&"alice".to_string()), "{registered:?}");
        }
    }

    #[test]
    fn every_stateless_refusal_has_its_code() {
        let f = fixture();
        let good = sign_vote(&f.alice, "i-1", "alice", HASH, Vote::Approve);

        let unsigned = VoteMessage {
            signature: None,
            ..good.clone()
        };
        assert_eq!(refusal(&f, &unsigned, subject()), "missing_signature");
        let empty = VoteMessage {
            signature: Some(String::new()),
            ..good.clone()
        };
        assert_eq!(refusal(&f, &empty, subject()), "missing_signature");

        let forged = sign_vote(&f.mallory, "i-1", "alice", HASH, Vote::Approve);
        assert_eq!(refusal(&f, &forged, subject()), "bad_signature");
        let garbage = VoteMessage {
            signature: Some("!!notbase64".into()),
            ..good.clone()
        };
        assert_eq!(refusal(&f, &garbage, subject()), "bad_signature");

        // The signature binds the vote: flipping APPROVE to REJECT (or back) breaks it.
        let flipped = VoteMessage {
            vote: Vote::Reject,
            ..good.clone()
        };
        assert_eq!(refusal(&f, &flipped, subject()), "bad_signature");
        // ... and the intent: replaying it onto another intent breaks it.
        let replayed = VoteMessage {
            intent_id: "i-2".into(),
            ..good.clone()
        };
        assert_eq!(refusal(&f, &replayed, subject()), "bad_signature");
        // ... and the decision hash: a vote for another decision of the same id fails.
        let other_decision = VoteSubject {
            decision_hash: "00",
            ..subject()
        };
        assert_eq!(refusal(&f, &good, other_decision), "bad_signature");

        let stranger = VoteMessage {
            approver_id: "eve".into(),
            ..good.clone()
        };
        assert_eq!(refusal(&f, &stranger, subject()), "unknown_approver");

        let other_entity = VoteSubject {
            entity_id: "globex",
            ..subject()
        };
        assert_eq!(
            refusal(&f, &good, other_entity),
            "approver_not_registered_for_entity"
        );

        // agent-42 is a registered approver, but not for its own intents.
        let own = VoteMessage {
            approver_id: "agent-42".into(),
            ..good.clone()
        };
        assert_eq!(refusal(&f, &own, subject()), "self_approval");
    }

    #[test]
    fn the_signature_covers_the_approver_and_the_signing_time() {
        let f = fixture();
        let good = sign_vote(&f.alice, "i-1", "alice", HASH, Vote::Approve);
        // Moving the vote to another signing time breaks it (a stale vote cannot be
        // freshened), even by one millisecond or an equivalent rendering of the instant.
        let later = SignedAt::new(good.signed_at.at() + chrono::Duration::milliseconds(1));
        let moved = VoteMessage {
            signed_at: later,
            ..good.clone()
        };
        assert_eq!(refusal(&f, &moved, subject()), "bad_signature");
        let same_instant = SignedAt::parse(
            &good
                .signed_at
                .at()
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, false),
        )
        .unwrap();
        assert_eq!(same_instant.at(), good.signed_at.at());
        let rerendered = VoteMessage {
            signed_at: same_instant,
            ..good.clone()
        };
        assert_eq!(refusal(&f, &rerendered, subject()), "bad_signature");
        // The bytes name every part, in order, after the v2 domain.
        let text = String::from_utf8(signing_message(Signed {
            intent_id: "i-1",
            decision_hash: HASH,
            vote: Vote::Approve,
            approver_id: "alice",
            signed_at: &SignedAt::parse("2026-11-30T12:00:00.000Z").unwrap(),
        }))
        .unwrap();
        assert_eq!(
            text,
            format!(
                "spendguard.approval.v2\ni-1\n{HASH}\nAPPROVE\nalice\n2026-11-30T12:00:00.000Z"
            )
        );
    }

    #[test]
    fn signedat_text_is_kept_exactly_as_sent() {
        let text = "2026-11-30T09:00:00.123456-03:00";
        let parsed = SignedAt::parse(text).unwrap();
        assert_eq!(parsed.as_str(), text);
        assert_eq!(
            parsed.at(),
            "2026-11-30T12:00:00.123456Z"
                .parse::<DateTime<Utc>>()
                .unwrap()
        );
        assert_eq!(serde_json::to_value(&parsed).unwrap(), text);
        assert!(SignedAt::parse("yesterday").is_err());
        let f = fixture();
        let vote = sign_vote_at(&f.alice, "i-1", "alice", HASH, Vote::Approve, parsed);
        let bytes = serde_json::to_vec(&vote).unwrap();
        assert_eq!(parse_vote(&bytes).unwrap(), vote);
        assert!(f.registry.verify(&vote, subject()).is_ok());
    }

    #[test]
    fn v1_signatures_are_refused_as_outdated_not_as_forged() {
        let f = fixture();
        let old = sign_vote_legacy(&f.alice, "i-1", "alice", HASH, Vote::Approve);
        assert_eq!(refusal(&f, &old, subject()), "signature_format_outdated");
        // A v1 signature by someone else's key is still a forgery.
        let forged = sign_vote_legacy(&f.mallory, "i-1", "alice", HASH, Vote::Approve);
        assert_eq!(refusal(&f, &forged, subject()), "bad_signature");
    }

    #[test]
    fn staleness_is_measured_both_ways_against_the_given_clock() {
        let now: DateTime<Utc> = "2026-11-30T12:00:00Z".parse().unwrap();
        let at = |secs: i64| SignedAt::new(now + chrono::Duration::seconds(secs));
        for ok in [0, -MAX_SIGNATURE_SKEW_SECS, MAX_SIGNATURE_SKEW_SECS, -1, 1] {
            assert_eq!(check_fresh(&at(ok), now), Ok(()), "{ok} s");
        }
        for stale in [
            -MAX_SIGNATURE_SKEW_SECS - 1,
            MAX_SIGNATURE_SKEW_SECS + 1,
            -86_400,
        ] {
            let err = check_fresh(&at(stale), now).unwrap_err();
            assert_eq!(err.code(), "stale_signature", "{stale} s");
            assert!(err.to_string().contains("ledger's clock"), "{err}");
        }
    }

    #[test]
    fn globs_become_escaped_like_patterns() {
        assert_eq!(glob_to_like("acme-*"), "acme-%");
        assert_eq!(glob_to_like("a?c"), "a_c");
        assert_eq!(glob_to_like("100%_x\\"), "100\\%\\_x\\\\");
        assert_eq!(glob_to_like("*"), "%");
    }

    #[test]
    fn malformed_votes_are_refused_with_a_reason() {
        assert_eq!(parse_vote(b"nope").unwrap_err().code(), "malformed_vote");
        let no_intent = br#"{"intentId":"","approverId":"a","vote":"APPROVE","signature":"x","signedAt":"2026-01-01T00:00:00Z"}"#;
        assert_eq!(parse_vote(no_intent).unwrap_err().code(), "malformed_vote");
        let bad_vote = br#"{"intentId":"i","approverId":"a","vote":"MAYBE","signature":"x","signedAt":"2026-01-01T00:00:00Z"}"#;
        assert_eq!(parse_vote(bad_vote).unwrap_err().code(), "malformed_vote");
        assert_eq!(
            parse_vote(&vec![b' '; MAX_VOTE_BYTES + 1])
                .unwrap_err()
                .code(),
            "malformed_vote"
        );
        let f = fixture();
        let good = sign_vote(&f.alice, "i-1", "alice", HASH, Vote::Approve);
        let bytes = serde_json::to_vec(&good).unwrap();
        assert_eq!(parse_vote(&bytes).unwrap(), good);
    }

    #[test]
    fn registry_errors_are_specific() {
        assert!(
            Registry::parse("approvers:\n  - id: a\n    publicKey: xx\n    entities: [e]\n")
                .unwrap_err()
                .contains("publicKey")
        );
        let (_, public) = keygen();
        let twice = format!(
            "approvers:\n  - {{id: a, publicKey: {public}, entities: [e]}}\n  - {{id: a, publicKey: {public}, entities: [e]}}\n"
        );
        assert!(Registry::parse(&twice).unwrap_err().contains("twice"));
        let one_key_two_ids = format!(
            "approvers:\n  - {{id: a, publicKey: {public}, entities: [e]}}\n  - {{id: b, publicKey: {public}, entities: [e]}}\n"
        );
        let err = Registry::parse(&one_key_two_ids).unwrap_err();
        assert!(err.contains("already the key of approver a"), "{err}");
        // The identity point: every signature with R = identity, s = 0 verifies under it
        // with the lax check.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = format!(
            "approvers:\n  - {{id: w, publicKey: {}, entities: [e]}}\n",
            B64.encode(identity)
        );
        let err = Registry::parse(&weak).unwrap_err();
        assert!(err.contains("small-order"), "{err}");
        let no_entities = format!("approvers:\n  - {{id: a, publicKey: {public}, entities: []}}\n");
        assert!(
            Registry::parse(&no_entities)
                .unwrap_err()
                .contains("entities")
        );
    }

    #[test]
    fn keygen_key_files_sign_verifiably() {
        let (secret, public) = keygen();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        std::fs::write(&path, format!("# demo\n{secret}\n")).unwrap();
        let key = read_signing_key(&path).unwrap();
        let registry = Registry::parse(&format!(
            "approvers:\n  - {{id: z, publicKey: {public}, entities: [acme-br]}}\n"
        ))
        .unwrap();
        let vote = sign_vote(&key, "i-9", "z", HASH, Vote::Reject);
        assert!(registry.verify(&vote, subject()).is_ok());
        std::fs::write(&path, "c2hvcnQ=\n").unwrap();
        assert!(read_signing_key(&path).unwrap_err().contains("32-byte"));
    }

    #[test]
    fn the_shipped_registry_matches_the_demo_keys() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let registry = Registry::load(&root.join("policies/approvers.yaml")).unwrap();
        for id in ["alice", "bob", "carol"] {
            let key = read_signing_key(&root.join(format!("examples/keys/{id}.key"))).unwrap();
            assert_eq!(registry.get(id).unwrap().key, key.verifying_key(), "{id}");
        }
    }

    #[test]
    fn the_registry_next_to_the_policies_is_not_loaded_as_a_policy() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        assert!(root.join("approvers.yaml").exists());
        let set = crate::policy::PolicySet::load_dir(&root).unwrap();
        assert!(set.policies().all(|p| p.identity.name != "approvers"));
        assert!(
            !crate::policy::dir_files(&root)
                .unwrap()
                .iter()
                .any(|p| crate::policy::is_approvers_file(p))
        );
    }

    #[test]
    fn globs_match_like_shell_patterns() {
        assert!(glob_match("acme-*", "acme-br"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("acme-*", "globex"));
        assert!(!glob_match("a*b", "acb-"));
        assert!(glob_match("exact", "exact"));
    }

    proptest::proptest! {
        #[test]
        fn star_matches_any_suffix(prefix in "[a-z]{0,8}", suffix in "[a-z:-]{0,12}") {
            let text = format!("{prefix}{suffix}");
            let pattern = format!("{prefix}*");
            proptest::prop_assert!(glob_match(&pattern, &text));
            proptest::prop_assert!(glob_match(&text, &text));
        }
    }
}
