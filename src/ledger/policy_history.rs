//! Policy lifecycle in the ledger (SPEC §16): refused policy sets, the activation
//! history of a policy, and rollback to an earlier content. Every statement on the
//! ledger's tables stays in this module tree.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::chain::GLOBAL_CHAIN;
use super::events::{EventKind, LedgerEvent, PolicyActivated, PolicyRollback, PolicySetRefused};
use super::machine::{Projections, Staged};
use super::store::{self, WriteSet};
use super::{Ledger, LedgerError, Origin};
use crate::decision::PolicyIdentity;
use crate::policy::PolicySet;

impl Ledger {
    /// Records that a policies directory was refused (`policy_set_refused`, chain
    /// `global`), with every reason.
    pub async fn record_policy_set_refused(
        &self,
        refusal: PolicySetRefused,
        origin: &Origin,
    ) -> Result<i64, LedgerError> {
        let resource = format!("policies:{}", refusal.dir);
        let actor = origin.instance.clone();
        self.append_single(
            GLOBAL_CHAIN,
            &actor,
            &resource,
            (origin, ""),
            LedgerEvent::PolicySetRefused(refusal),
        )
        .await
    }
}

/// One activation of a policy name, as `policy history` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRevision {
    /// 1, 2, ... per policy name, in activation order (ledger order).
    pub revision: i64,
    /// The `policy_activated` event's ledgerSeq.
    pub seq: i64,
    #[schemars(with = "String")]
    pub activated_at: DateTime<Utc>,
    /// Who activated it: the serve instance (start-up, hot reload), `ledger-submit`, or
    /// the operator of a rollback.
    pub actor: String,
    /// `cli`, `api`, ...: where the activation came from.
    pub source: String,
    pub version: String,
    pub sha256: String,
    /// A rollback: the revision whose content this restores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_to: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Why a history read or a rollback was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyHistoryError {
    #[error("no policy named {0:?} was ever activated in this ledger")]
    UnknownPolicy(String),
    #[error(
        "policy {name:?} has no revision {revision}: its revisions are 1 to {latest} (see `spendguard policy history {name}`)"
    )]
    UnknownRevision {
        name: String,
        revision: i64,
        latest: i64,
    },
    #[error(
        "revision {revision} of policy {name:?} has the content already in force (revision {latest}, sha256 {sha256}); nothing to roll back"
    )]
    AlreadyActive {
        name: String,
        revision: i64,
        latest: i64,
        sha256: String,
    },
    #[error("a rollback needs a reason (it is recorded with the activation)")]
    MissingReason,
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl From<sqlx::Error> for PolicyHistoryError {
    fn from(e: sqlx::Error) -> Self {
        PolicyHistoryError::Ledger(LedgerError::Database(e))
    }
}

/// A revision with its full canonical content.
pub type RevisionContent = (PolicyRevision, String);

/// Every `policy_activated` event of `name`, in ledger order, numbered.
async fn history_in(
    conn: &mut sqlx::PgConnection,
    name: &str,
) -> Result<Vec<RevisionContent>, LedgerError> {
    let rows: Vec<(i64, DateTime<Utc>, String, String, String)> = sqlx::query_as(
        "SELECT seq, recorded_at, actor, origin, payload FROM ledger_event \
         WHERE chain_id = $1 AND event_type = $2 ORDER BY chain_pos",
    )
    .bind(GLOBAL_CHAIN)
    .bind(EventKind::PolicyActivated.as_str())
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::new();
    for (seq, at, actor, origin, payload) in rows {
        let LedgerEvent::PolicyActivated(a) =
            LedgerEvent::parse(EventKind::PolicyActivated.as_str(), &payload)
                .map_err(|e| LedgerError::Corrupt(format!("seq {seq}: {e}")))?
        else {
            return Err(LedgerError::Bug(format!(
                "seq {seq} parsed as another event type"
            )));
        };
        if a.policy.name != name {
            continue;
        }
        let source = serde_json::from_str::<Origin>(&origin)
            .map(|o| o.source)
            .unwrap_or_default();
        out.push((
            PolicyRevision {
                revision: out.len() as i64 + 1,
                seq,
                activated_at: at,
                actor,
                source,
                version: a.policy.version.clone(),
                sha256: a.policy.sha256.clone(),
                rollback_to: a.rollback.as_ref().map(|r| r.to_revision),
                reason: a.rollback.map(|r| r.reason),
            },
            a.canonical,
        ));
    }
    Ok(out)
}

impl Ledger {
    /// Every activation of policy `name`, oldest first, with its canonical content.
    pub async fn policy_history(
        &self,
        name: &str,
    ) -> Result<Vec<RevisionContent>, PolicyHistoryError> {
        let mut conn = self.pool.acquire().await?;
        let h = history_in(&mut conn, name).await?;
        if h.is_empty() {
            return Err(PolicyHistoryError::UnknownPolicy(name.to_string()));
        }
        Ok(h)
    }

    /// One revision of `name` with its content.
    pub async fn policy_revision(
        &self,
        name: &str,
        revision: i64,
    ) -> Result<RevisionContent, PolicyHistoryError> {
        let h = self.policy_history(name).await?;
        pick(&h, name, revision).cloned()
    }

    /// Activates the content of an earlier revision of `name` again, as a new revision
    /// (`policy_activated` with `reactivates` and `rollback`, actor and reason), under
    /// the global chain's lock so two rollbacks or a reload cannot interleave. Refused
    /// when that content is already the latest revision.
    pub async fn rollback_policy(
        &self,
        name: &str,
        to_revision: i64,
        actor: &str,
        reason: &str,
        origin: &Origin,
    ) -> Result<RevisionContent, PolicyHistoryError> {
        if reason.trim().is_empty() {
            return Err(PolicyHistoryError::MissingReason);
        }
        let mut tx = self.pool.begin().await?;
        let chains = vec![GLOBAL_CHAIN.to_string()];
        let now = store::lock_chains(&mut tx, &chains, None, false).await?;
        let h = history_in(&mut tx, name).await?;
        if h.is_empty() {
            return Err(PolicyHistoryError::UnknownPolicy(name.to_string()));
        }
        let (target, canonical) = pick(&h, name, to_revision)?.clone();
        let (latest, _) = &h[h.len() - 1];
        if latest.sha256 == target.sha256 {
            return Err(PolicyHistoryError::AlreadyActive {
                name: name.to_string(),
                revision: to_revision,
                latest: latest.revision,
                sha256: latest.sha256.clone(),
            });
        }
        let first = h
            .iter()
            .find(|(r, _)| r.sha256 == target.sha256)
            .map_or(target.seq, |(r, _)| r.seq);
        let identity = PolicyIdentity {
            name: name.to_string(),
            version: target.version.clone(),
            sha256: target.sha256.clone(),
        };
        let event = LedgerEvent::PolicyActivated(PolicyActivated {
            policy: identity.clone(),
            canonical: canonical.clone(),
            reactivates: Some(first),
            rollback: Some(PolicyRollback {
                to_revision,
                reason: reason.to_string(),
            }),
        });
        let seq = record_global(&mut tx, &chains, actor, &identity, event, now, origin).await?;
        tx.commit().await?;
        self.mark_activated(&identity.sha256);
        Ok((
            PolicyRevision {
                revision: latest.revision + 1,
                seq,
                activated_at: now,
                actor: actor.to_string(),
                source: origin.source.clone(),
                version: identity.version,
                sha256: identity.sha256,
                rollback_to: Some(to_revision),
                reason: Some(reason.to_string()),
            },
            canonical,
        ))
    }

    /// Records a new revision for every policy of `set` whose content was activated
    /// before but is not its name's latest revision (the files came back to an earlier
    /// content): the history then says what is in force. Contents never seen are
    /// recorded by [`Ledger::activate`].
    pub(crate) async fn reactivate_returning(
        &self,
        set: &PolicySet,
        actor: &str,
    ) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await?;
        let chains = vec![GLOBAL_CHAIN.to_string()];
        let now = store::lock_chains(&mut tx, &chains, None, false).await?;
        for p in set.policies() {
            let h = history_in(&mut tx, &p.identity.name).await?;
            let Some((latest, _)) = h.last() else {
                continue;
            };
            if latest.sha256 == p.identity.sha256 {
                continue;
            }
            let first: Option<i64> =
                sqlx::query_scalar("SELECT seq FROM policy_version WHERE sha256 = $1")
                    .bind(&p.identity.sha256)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(first) = first else { continue };
            let event = LedgerEvent::PolicyActivated(PolicyActivated {
                policy: p.identity.clone(),
                canonical: p.canonical_json().to_string(),
                reactivates: Some(first),
                rollback: None,
            });
            record_global(
                &mut tx,
                &chains,
                actor,
                &p.identity,
                event,
                now,
                &Origin::cli(&self.instance),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn pick<'a>(
    h: &'a [RevisionContent],
    name: &str,
    revision: i64,
) -> Result<&'a RevisionContent, PolicyHistoryError> {
    usize::try_from(revision - 1)
        .ok()
        .and_then(|i| h.get(i))
        .ok_or_else(|| PolicyHistoryError::UnknownRevision {
            name: name.to_string(),
            revision,
            latest: h.len() as i64,
        })
}

async fn record_global(
    tx: &mut sqlx::PgConnection,
    chains: &[String],
    actor: &str,
    identity: &PolicyIdentity,
    event: LedgerEvent,
    now: DateTime<Utc>,
    origin: &Origin,
) -> Result<i64, LedgerError> {
    let mut ws = WriteSet::default();
    ws.load_heads(&mut *tx, chains).await?;
    ws.reserve_seqs(&mut *tx, 1).await?;
    let staged = Staged {
        chain_id: GLOBAL_CHAIN.to_string(),
        actor: actor.to_string(),
        resource: format!("policy:{}@{}", identity.name, identity.version),
        event,
    };
    let seq = ws
        .record(&mut Projections::default(), &staged, now, origin)?
        .recorded
        .seq;
    ws.flush(&mut *tx).await?;
    Ok(seq)
}
