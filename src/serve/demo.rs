//! The repository's demo credentials (SPEC §14): the approver keys whose secrets are
//! published in `examples/keys/` and the API tokens hashed in `examples/api-tokens.yaml`.
//! Anyone can sign votes or call the API with them, so `serve` refuses to start with
//! any of them unless told `--demo`.

use crate::api::TokenStore;
use crate::approvals::Registry;

/// Base64 Ed25519 public keys of `examples/keys/{alice,bob,carol}.key`.
pub const DEMO_APPROVER_KEYS: [&str; 3] = [
    "HqYJvm6xTFSPIe7p+73l+H28zJLo5luRaeWCkjMG1LA=",
    "5sUN4/sTWD+aEAHU33TeZ++f1fWKPN8RYQ368XjJtZU=",
    "7nVIU4SSprS1t1amsVj8msukqQcodclElYrBXB87hCc=",
];

/// The tokens `examples/api-tokens.yaml` hashes (documented in docs/api.md).
pub const DEMO_TOKENS: [&str; 5] = [
    "demo-reader-token",
    "demo-operator-token",
    "demo-auditor-token",
    "demo-payment-token",
    "demo-alice-approver-token",
];

/// What of the configuration is a demo credential, described for the operator (empty
/// when nothing is). Looks at the keys and token hashes, not at names: a demo key
/// registered under another id is still a published secret.
pub fn demo_credentials(registry: &Registry, tokens: Option<&TokenStore>) -> Vec<String> {
    use base64::Engine as _;
    let mut found: Vec<String> = registry
        .approvers()
        .filter(|a| {
            let key = base64::engine::general_purpose::STANDARD.encode(a.key.to_bytes());
            DEMO_APPROVER_KEYS.contains(&key.as_str())
        })
        .map(|a| format!("approver {:?} has a demo key (examples/keys/)", a.id))
        .collect();
    found.sort();
    if let Some(tokens) = tokens {
        // Named by the configured name only: tokens never appear in error messages.
        for token in DEMO_TOKENS {
            if let Some(p) = tokens.authenticate(token) {
                found.push(format!(
                    "API token {:?} is one of the demo tokens of examples/api-tokens.yaml",
                    p.name
                ));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(path: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
    }

    #[test]
    fn the_repository_examples_are_recognised_and_fresh_ones_are_not() {
        let registry = Registry::load(&repo("policies/approvers.yaml")).unwrap();
        let tokens = TokenStore::from_file(&repo("examples/api-tokens.yaml")).unwrap();
        let found = demo_credentials(&registry, Some(&tokens));
        assert_eq!(found.len(), 3 + DEMO_TOKENS.len(), "{found:#?}");
        // The published secret keys are the ones whose public keys are listed.
        for name in ["alice", "bob", "carol"] {
            let key =
                crate::approvals::read_signing_key(&repo(&format!("examples/keys/{name}.key")))
                    .unwrap();
            use base64::Engine as _;
            let public =
                base64::engine::general_purpose::STANDARD.encode(key.verifying_key().to_bytes());
            assert!(DEMO_APPROVER_KEYS.contains(&public.as_str()), "{name}");
        }
        // A demo key under another name is still refused.
        let renamed = Registry::parse(&format!(
            "approvers:\n  - {{id: dave, publicKey: {}, entities: ['*']}}\n",
            DEMO_APPROVER_KEYS[1]
        ))
        .unwrap();
        assert_eq!(demo_credentials(&renamed, None).len(), 1);
        let (_, public) = crate::approvals::keygen();
        let fresh = Registry::parse(&format!(
            "approvers:\n  - {{id: alice, publicKey: {public}, entities: ['*']}}\n"
        ))
        .unwrap();
        assert!(demo_credentials(&fresh, None).is_empty());
        let own = TokenStore::default()
            .with_hash(
                "ops",
                crate::api::Role::Operator,
                &crate::api::auth::hash_token("s3cret"),
            )
            .unwrap();
        assert!(demo_credentials(&Registry::default(), Some(&own)).is_empty());
    }
}
