//! The sweeper: closes what a deadline ended (approval windows, SPEC §4; authorizations,
//! SPEC §11), agent by agent, each under the agent's lock and re-read after taking it,
//! so several instances may sweep at once and each item closes once. The rules are the
//! steps (`machine::step_expire`, `machine::step_expire_authorizations`).

use super::chain::{self, agent_chain};
use super::events::Origin;
use super::machine;
use super::store::{self, WriteSet};
use super::{EXPIRE_BATCH_MAX, Ledger, LedgerError, OutcomeMessage, settle, votes};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

/// What a sweep closes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Sweep {
    /// Waiting intents past `approvalTtl` (EXPIRED).
    Approvals,
    /// Open authorizations past `authorizationTtl` (AUTH_EXPIRED).
    Authorizations,
}

impl Sweep {
    /// `(intent_id, agent_id)` of what is due at `$1`, oldest first, at most `$2`.
    fn due_sql(self) -> &'static str {
        match self {
            Sweep::Approvals => {
                "SELECT intent_id, agent_id FROM pending_approval
                 WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2"
            }
            Sweep::Authorizations => {
                "SELECT intent_id, agent_id FROM authorization_state
                 WHERE NOT is_final AND NOT expired AND expires_at <= $1 ORDER BY expires_at LIMIT $2"
            }
        }
    }
}

impl Ledger {
    /// The database's clock, the clock every ledger time comes from: an instance whose
    /// own clock is off can neither close a window early nor keep it open late.
    pub(crate) async fn db_now(&self) -> Result<DateTime<Utc>, LedgerError> {
        Ok(sqlx::query_scalar("SELECT now()")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Closes what `kind` finds due at `now`; returns the outcome messages published.
    pub(crate) async fn sweep(
        &self,
        kind: Sweep,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutcomeMessage>, LedgerError> {
        let due: Vec<(String, String)> = sqlx::query_as(kind.due_sql())
            .bind(now)
            .bind(EXPIRE_BATCH_MAX)
            .fetch_all(&self.pool)
            .await?;
        let mut by_agent: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (intent, agent) in due {
            by_agent.entry(agent).or_default().push(intent);
        }
        let origin = Origin {
            instance: self.instance.clone(),
            source: "sweeper".into(),
            partition: None,
            offset: None,
        };
        let at = chain::to_micros(now);
        let mut out = Vec::new();
        for (agent, intents) in by_agent {
            let chains = vec![agent_chain(&agent)];
            let mut tx = self.pool.begin().await?;
            store::lock_chains(&mut tx, &chains, None, false).await?;
            let (mut snapshot, staged) = match kind {
                Sweep::Approvals => {
                    let s = votes::load_approvals(&mut tx, &intents).await?;
                    let staged = machine::step_expire(&s, at);
                    (s, staged)
                }
                Sweep::Authorizations => {
                    let (s, _) = settle::load_lifecycle(&mut tx, &intents, &[]).await?;
                    let staged = machine::step_expire_authorizations(&s, at);
                    (s, staged)
                }
            };
            if staged.is_empty() {
                tx.rollback().await?;
                continue;
            }
            let mut ws = WriteSet::default();
            ws.load_heads(&mut tx, &chains).await?;
            ws.reserve_seqs(&mut tx, staged.len()).await?;
            for st in &staged {
                out.extend(ws.record(&mut snapshot, st, at, &origin)?.outcome);
            }
            ws.flush(&mut tx).await?;
            tx.commit().await?;
        }
        Ok(out)
    }
}
