//! Versions of the approver registry and of the bindings (SPEC §14, §16): activated as
//! audited events on the `global` chain, like policies, so that a decision names the
//! bindings that chose its policy, a vote the registry that verified it, and replay and
//! `audit verify-votes` need nothing but the ledger.
//!
//! A version is a number per kind (1, 2, ...). Activating the content of the last
//! version records nothing; any other content is a new version, even content seen
//! before (the ledger then shows that it came back, as a policy rollback does).

use super::chain::GLOBAL_CHAIN;
use super::events::{ConfigActivated, ConfigKind, ConfigVersion, LedgerEvent};
use super::machine::{Projections, Staged};
use super::store::{self, WriteSet};
use super::{Ledger, LedgerError, Origin};
use crate::approvals::Registry;
use crate::policy::Bindings;

impl Ledger {
    /// Records `bindings_activated` when `bindings` differ from the last bindings
    /// activated; returns the version in force for them.
    pub async fn activate_bindings(
        &self,
        bindings: &Bindings,
        actor: &str,
    ) -> Result<ConfigVersion, LedgerError> {
        self.activate_config(
            ConfigKind::Bindings,
            bindings.canonical(),
            &bindings.sha256(),
            actor,
            &Origin::cli(&self.instance),
        )
        .await
    }

    /// Records `registry_activated` when `registry` differs from the last registry
    /// activated; returns the registry marked with its version (votes it verifies
    /// record that version).
    pub async fn activate_registry(
        &self,
        registry: Registry,
        actor: &str,
    ) -> Result<Registry, LedgerError> {
        let version = self
            .activate_config(
                ConfigKind::Registry,
                registry.canonical(),
                &registry.sha256(),
                actor,
                &Origin::cli(&self.instance),
            )
            .await?;
        Ok(registry.activated(version))
    }

    /// The version a decision records for `bindings`: the one this instance activated
    /// or last used for that content, else activated now (a caller that decides
    /// without activating first, as tests and benches do).
    pub(crate) async fn bindings_version(
        &self,
        bindings: &Bindings,
        origin: &Origin,
    ) -> Result<ConfigVersion, LedgerError> {
        let sha = bindings.sha256();
        if let Some(v) = self.known_config(ConfigKind::Bindings, &sha) {
            return Ok(v);
        }
        self.activate_config(
            ConfigKind::Bindings,
            bindings.canonical(),
            &sha,
            "spendguard",
            origin,
        )
        .await
    }

    fn known_config(&self, kind: ConfigKind, sha: &str) -> Option<ConfigVersion> {
        self.configs
            .lock()
            .ok()
            .and_then(|c| c.get(&(kind, sha.to_string())).cloned())
    }

    fn remember_config(&self, kind: ConfigKind, v: &ConfigVersion) {
        if let Ok(mut c) = self.configs.lock() {
            c.insert((kind, v.sha256.clone()), v.clone());
        }
    }

    async fn activate_config(
        &self,
        kind: ConfigKind,
        canonical: &str,
        sha: &str,
        actor: &str,
        origin: &Origin,
    ) -> Result<ConfigVersion, LedgerError> {
        let mut tx = self.pool.begin().await?;
        // The global chain's lock serializes activations: version numbers are dense and
        // "the last one" is well defined.
        let chains = vec![GLOBAL_CHAIN.to_string()];
        let now = store::lock_chains(&mut tx, &chains, None, false).await?;
        let last: Option<(i64, String)> = sqlx::query_as(
            "SELECT version, sha256 FROM config_version WHERE kind = $1 ORDER BY version DESC LIMIT 1",
        )
        .bind(kind.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((version, last_sha)) = &last
            && last_sha == sha
        {
            tx.rollback().await?;
            let v = ConfigVersion {
                version: *version,
                sha256: last_sha.clone(),
            };
            self.remember_config(kind, &v);
            return Ok(v);
        }
        let payload = ConfigActivated {
            version: last.map_or(1, |(v, _)| v + 1),
            sha256: sha.to_string(),
            canonical: canonical.to_string(),
            actor: actor.to_string(),
        };
        let v = payload.version();
        let staged = Staged {
            chain_id: GLOBAL_CHAIN.to_string(),
            actor: actor.to_string(),
            resource: format!("{}:v{}", kind.as_str(), v.version),
            event: match kind {
                ConfigKind::Registry => LedgerEvent::RegistryActivated(payload),
                ConfigKind::Bindings => LedgerEvent::BindingsActivated(payload),
            },
        };
        let mut ws = WriteSet::default();
        ws.load_heads(&mut tx, &chains).await?;
        ws.reserve_seqs(&mut tx, 1).await?;
        let mut snapshot = Projections::default();
        ws.record(&mut snapshot, &staged, now, origin)?;
        ws.flush(&mut tx).await?;
        tx.commit().await?;
        self.remember_config(kind, &v);
        Ok(v)
    }
}
