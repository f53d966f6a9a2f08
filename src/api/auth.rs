//! Bearer-token authentication with roles.
//!
//! Tokens are configured as SHA-256 hashes (hex), never in clear, so a leaked config file
//! or log does not leak a credential. A presented token is hashed and compared with every
//! configured hash in constant time. Neither the token nor its hash is ever logged or
//! echoed in an error.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::Path;

/// Longest token file accepted.
pub const MAX_TOKEN_FILE_BYTES: u64 = 256 * 1024;
/// Most tokens in one file (each request compares against all of them).
pub const MAX_TOKENS: usize = 1_024;
/// Longest token name (it becomes the actor recorded in the audit trail).
pub const MAX_TOKEN_NAME_LEN: usize = 64;
/// Longest bearer token accepted on a request; longer ones are refused unhashed.
pub const MAX_BEARER_TOKEN_LEN: usize = 512;

/// What a token may do. Roles are not hierarchical: each route lists the roles it admits.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Payment services and dashboards: decisions, usage, kill-switch status.
    Reader,
    /// Runs the service: kill switch, approvals queue, policies, metrics.
    Operator,
    /// Reads everything, changes nothing.
    Auditor,
    /// A payment service deciding synchronously (SPEC §13.4): `POST /v1/intents` and
    /// `POST /v1/settlements` only, so a leaked intake token reads nothing back.
    #[serde(rename = "payment_service")]
    PaymentService,
    /// An approver (SPEC §13.1), bound to one approverId of the registry: its inbox
    /// (`GET /v1/approvals`) and signed votes (`POST /v1/approvals/{intentId}/votes`).
    Approver,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Reader,
        Role::Operator,
        Role::Auditor,
        Role::PaymentService,
        Role::Approver,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::PaymentService => "payment_service",
            Role::Approver => "approver",
        }
    }
}

/// Who made a request: the configured token name and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

#[derive(Clone)]
struct TokenEntry {
    name: String,
    role: Role,
    sha256: [u8; 32],
    /// Role `approver` only: the registry id the token acts for.
    approver_id: Option<String>,
}

/// The configured tokens. `Debug` shows names and roles only.
#[derive(Clone, Default)]
pub struct TokenStore {
    entries: Vec<TokenEntry>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.entries
                    .iter()
                    .map(|e| format!("{}:{}", e.name, e.role.as_str())),
            )
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenConfigError {
    #[error("cannot read API token file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("API token file {path} is larger than {MAX_TOKEN_FILE_BYTES} bytes")]
    TooLarge { path: String },
    #[error(
        "{origin}: not a valid token file: {message} (expected `tokens: [{{name, role, sha256}}]`, role one of reader|operator|auditor|payment_service|approver; approver tokens add approverId)"
    )]
    Parse { origin: String, message: String },
    #[error("{origin}: token #{index} ({name:?}): {message}")]
    Invalid {
        origin: String,
        index: usize,
        name: String,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: Vec<TokenFileEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
struct TokenFileEntry {
    name: String,
    role: Role,
    sha256: String,
    #[serde(default)]
    approver_id: Option<String>,
}

/// Hex SHA-256 of a token, the form stored in the configuration
/// (same as `printf %s "$TOKEN" | sha256sum`).
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl TokenStore {
    /// Parses a token file (YAML or JSON): `tokens: [{name, role, sha256}]`.
    pub fn parse(text: &str, origin: &str) -> Result<TokenStore, TokenConfigError> {
        let file: TokenFile = serde_yaml::from_str(text).map_err(|e| TokenConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        if file.tokens.len() > MAX_TOKENS {
            return Err(TokenConfigError::Parse {
                origin: origin.to_string(),
                message: format!("{} tokens; at most {MAX_TOKENS}", file.tokens.len()),
            });
        }
        let mut store = TokenStore::default();
        for (index, entry) in file.tokens.into_iter().enumerate() {
            let invalid = |message: String| TokenConfigError::Invalid {
                origin: origin.to_string(),
                index,
                name: entry.name.chars().take(MAX_TOKEN_NAME_LEN).collect(),
                message,
            };
            if entry.name.is_empty()
                || entry.name.len() > MAX_TOKEN_NAME_LEN
                || entry.name.chars().any(char::is_control)
            {
                return Err(invalid(format!(
                    "name must be 1..={MAX_TOKEN_NAME_LEN} printable characters"
                )));
            }
            let sha256 = parse_sha256_hex(&entry.sha256).ok_or_else(|| {
                invalid(
                    "sha256 must be 64 hex characters: store the token's hash, not the token \
                     (printf %s \"$TOKEN\" | sha256sum)"
                        .to_string(),
                )
            })?;
            if store.entries.iter().any(|e| e.sha256 == sha256) {
                return Err(invalid("the same token hash is configured twice".into()));
            }
            if store.entries.iter().any(|e| e.name == entry.name) {
                return Err(invalid("the same token name is configured twice".into()));
            }
            check_approver_binding(entry.role, entry.approver_id.as_deref()).map_err(invalid)?;
            store.entries.push(TokenEntry {
                name: entry.name,
                role: entry.role,
                sha256,
                approver_id: entry.approver_id,
            });
        }
        Ok(store)
    }

    pub fn from_file(path: &Path) -> Result<TokenStore, TokenConfigError> {
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| TokenConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        if meta.len() > MAX_TOKEN_FILE_BYTES {
            return Err(TokenConfigError::TooLarge { path: shown });
        }
        let text = std::fs::read_to_string(path).map_err(|source| TokenConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        TokenStore::parse(&text, &shown)
    }

    /// Adds a token by its hash (programmatic set-up, tests).
    pub fn with_hash(mut self, name: &str, role: Role, sha256_hex: &str) -> Option<TokenStore> {
        let sha256 = parse_sha256_hex(sha256_hex)?;
        self.entries.push(TokenEntry {
            name: name.to_string(),
            role,
            sha256,
            approver_id: None,
        });
        Some(self)
    }

    /// Adds an `approver` token bound to `approver_id` by its hash (tests, set-up).
    pub fn with_approver(
        mut self,
        name: &str,
        approver_id: &str,
        sha256_hex: &str,
    ) -> Option<TokenStore> {
        check_approver_binding(Role::Approver, Some(approver_id)).ok()?;
        self = self.with_hash(name, Role::Approver, sha256_hex)?;
        self.entries.last_mut()?.approver_id = Some(approver_id.to_string());
        Some(self)
    }

    /// The approverId the token named `name` is bound to (role `approver` only).
    pub fn approver_of(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.name == name && e.role == Role::Approver)
            .and_then(|e| e.approver_id.as_deref())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal a presented bearer token belongs to, if any.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        if token.is_empty() || token.len() > MAX_BEARER_TOKEN_LEN {
            return None;
        }
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Compare with every entry, without early exit, so timing does not reveal which
        // (or whether a) configured hash shares a prefix with the presented one.
        let mut found: Option<&TokenEntry> = None;
        for entry in &self.entries {
            if constant_time_eq(&entry.sha256, &presented) {
                found = Some(entry);
            }
        }
        found.map(|e| Principal {
            name: e.name.clone(),
            role: e.role,
        })
    }
}

/// An approver token names exactly one approverId; no other role names one.
fn check_approver_binding(role: Role, approver_id: Option<&str>) -> Result<(), String> {
    match (role, approver_id) {
        (Role::Approver, Some(id))
            if !id.is_empty()
                && id.len() <= crate::intent::MAX_ID_LEN
                && !id.chars().any(char::is_control) =>
        {
            Ok(())
        }
        (Role::Approver, _) => Err(format!(
            "role approver needs approverId: 1..={} printable characters, an id of the approver registry",
            crate::intent::MAX_ID_LEN
        )),
        (_, Some(_)) => Err("approverId is only for role approver".into()),
        (_, None) => Ok(()),
    }
}

fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text.trim()).ok()?;
    bytes.try_into().ok()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bearer token of an `Authorization` header value, if it is one.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> TokenStore {
        let text = format!(
            "tokens:\n  - {{name: dash, role: reader, sha256: {}}}\n  - {{name: ops-alice, role: operator, sha256: {}}}\n",
            hash_token("reader-secret"),
            hash_token("operator-secret").to_uppercase()
        );
        TokenStore::parse(&text, "tokens.yaml").unwrap()
    }

    #[test]
    fn tokens_authenticate_by_hash() {
        let s = store();
        assert_eq!(
            s.authenticate("reader-secret"),
            Some(Principal {
                name: "dash".into(),
                role: Role::Reader
            })
        );
        assert_eq!(
            s.authenticate("operator-secret").map(|p| p.role),
            Some(Role::Operator)
        );
        assert_eq!(s.authenticate("operator-secre"), None);
        assert_eq!(s.authenticate(""), None);
        assert_eq!(s.authenticate(&"x".repeat(MAX_BEARER_TOKEN_LEN + 1)), None);
    }

    #[test]
    fn hash_matches_sha256sum() {
        // printf %s abc | sha256sum
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn clear_tokens_and_bad_files_are_refused_with_a_hint() {
        let err = TokenStore::parse(
            "tokens: [{name: a, role: reader, sha256: hunter2}]",
            "t.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("sha256sum"), "{err}");
        assert!(
            !err.contains("hunter2"),
            "the rejected value must not be echoed: {err}"
        );
        let err = TokenStore::parse("tokens: [{name: a, role: admin, sha256: x}]", "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("reader|operator|auditor"), "{err}");
        let h = hash_token("t");
        let dup = format!(
            "tokens: [{{name: a, role: reader, sha256: {h}}}, {{name: b, role: auditor, sha256: {h}}}]"
        );
        assert!(
            TokenStore::parse(&dup, "t.yaml")
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }

    #[test]
    fn approver_tokens_are_bound_to_one_approver() {
        let h = |t: &str| hash_token(t);
        let s = TokenStore::parse(
            &format!(
                "tokens:\n  - {{name: alice-phone, role: approver, approverId: alice, sha256: {}}}\n  - {{name: dash, role: reader, sha256: {}}}\n",
                h("a"),
                h("r")
            ),
            "t.yaml",
        )
        .unwrap();
        assert_eq!(s.authenticate("a").map(|p| p.role), Some(Role::Approver));
        assert_eq!(s.approver_of("alice-phone"), Some("alice"));
        assert_eq!(s.approver_of("dash"), None);
        for bad in [
            format!("tokens: [{{name: x, role: approver, sha256: {}}}]", h("x")),
            format!(
                "tokens: [{{name: x, role: reader, approverId: alice, sha256: {}}}]",
                h("x")
            ),
        ] {
            let err = TokenStore::parse(&bad, "t.yaml").unwrap_err().to_string();
            assert!(err.contains("approverId"), "{err}");
        }
    }

    #[test]
    fn debug_shows_no_hashes() {
        let shown = format!("{:?}", store());
        assert!(shown.contains("dash:reader"));
        assert!(!shown.contains(&hash_token("reader-secret")));
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
