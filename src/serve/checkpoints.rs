//! Periodic signed checkpoints of the chain heads (SPEC §14, `ledger::checkpoint`):
//! every `checkpoint_interval_s`, or as soon as `checkpoint_every_events` events were
//! appended, the heads that moved since this instance's previous checkpoint are signed
//! with the key of `checkpoint_key_file` and written to `checkpoint_dir`. The first
//! checkpoint after start-up records every chain.
//!
//! A failure is logged and counted (`spendguard_checkpoint_failures_total`) and the next
//! round tries again; deciding never waits for a checkpoint.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;

use super::Shared;
use crate::ledger::chain::Hash;
use crate::ledger::checkpoint::{self, Checkpoint};

/// How often the appended-events count is probed (one `max(seq)` read).
const PROBE_INTERVAL_MS: u64 = 1_000;

/// What the loop needs, resolved at start-up (a key that cannot be read stops `serve`
/// before anything runs).
pub struct CheckpointPlan {
    pub key: SigningKey,
    pub dir: PathBuf,
    pub interval: Duration,
    pub every_events: i64,
}

/// The plan of the settings, or `None` when checkpoints are not configured.
pub fn plan(
    settings: &crate::config::Settings,
) -> Result<Option<CheckpointPlan>, super::ServeError> {
    let (Some(key_file), Some(dir)) = (&settings.checkpoint_key_file, &settings.checkpoint_dir)
    else {
        return Ok(None);
    };
    let key =
        crate::approvals::read_signing_key(key_file).map_err(super::ServeError::CheckpointKey)?;
    Ok(Some(CheckpointPlan {
        key,
        dir: dir.clone(),
        interval: Duration::from_secs(settings.checkpoint_interval_s),
        every_events: settings.checkpoint_every_events,
    }))
}

pub async fn run(shared: Arc<Shared>, plan: CheckpointPlan) {
    let mut previous: HashMap<String, (i64, Hash)> = HashMap::new();
    let mut covered_seq = -1_i64;
    let mut last_at = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(PROBE_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if shared.shutting_down() {
            return;
        }
        let last = shared.ledger.last_seq().await;
        shared.systemic.observe("checkpoint writer", &last);
        let max_seq = match last {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint: cannot read the ledger's last seq; retrying");
                continue;
            }
        };
        let appended = max_seq - covered_seq;
        let due =
            appended >= plan.every_events || (appended > 0 && last_at.elapsed() >= plan.interval);
        if !due {
            continue;
        }
        match take(&shared, &plan, &previous).await {
            Ok((seq, heads, path)) => {
                tracing::info!(seq, chains = heads.len(), path = %path.display(), "signed checkpoint written");
                metrics::gauge!("spendguard_checkpoint_last_seq").set(seq as f64);
                for (chain, pos, hash) in heads {
                    previous.insert(chain, (pos, hash));
                }
                covered_seq = seq;
                last_at = Instant::now();
            }
            Err(e) => {
                metrics::counter!("spendguard_checkpoint_failures_total").increment(1);
                tracing::error!(error = %e, dir = %plan.dir.display(), "signed checkpoint not written; retrying next round");
            }
        }
    }
}

/// One checkpoint of the heads that moved: (seq covered, heads recorded, file).
async fn take(
    shared: &Shared,
    plan: &CheckpointPlan,
    previous: &HashMap<String, (i64, Hash)>,
) -> Result<(i64, Vec<(String, i64, Hash)>, PathBuf), String> {
    let (max_seq, heads) = shared
        .ledger
        .chain_heads()
        .await
        .map_err(|e| e.to_string())?;
    let moved = checkpoint::moved(&heads, previous);
    let c = Checkpoint::sign(
        &shared.settings.instance,
        chrono::Utc::now(),
        max_seq,
        &moved,
        &plan.key,
    );
    let dir = plan.dir.clone();
    let path = tokio::task::spawn_blocking(move || c.write_to(&dir))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok((max_seq, moved, path))
}
