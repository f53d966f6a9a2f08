//! [`record_then_announce`]: the one way a kill switch is changed, used by
//! `spendguard kill-switch on|off` and by `POST /v1/kill-switch`.
//!
//! 1. Record: [`Ledger::set_kill_switch`] appends the audited `kill_switch_set` event
//!    under the exclusive kill-switch lock. From its commit on, every decision of every
//!    instance sees the change (they read the table in their own transaction).
//! 2. Announce: a [`ControlMessage`] on `spend.control`, so every instance's
//!    [`PropagationProbe`](super::PropagationProbe) and metrics follow at once instead of
//!    at their next ledger re-read.
//!
//! The record comes first and does not wait for the broker: a broker outage never stops
//! a kill switch, it only delays the instances' metrics until their next re-read.

use rdkafka::producer::FutureProducer;
use std::time::Duration;

use super::{ControlMessage, Scope};
use crate::bus;
use crate::config::Settings;
use crate::ledger::{Ledger, LedgerError, Origin};

/// A kill-switch change: trip (`on`) or clear `scope`, by `actor`, because `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub scope: Scope,
    pub on: bool,
    /// The CLI's `--actor` (default `$USER`), or `api:<token name>`.
    pub actor: String,
    pub reason: String,
}

/// Where a recorded change is announced: the control topic, through a producer.
pub enum Announcer {
    /// A producer already connected to the broker: the API inside `serve` uses its
    /// instance's own.
    Connected {
        producer: FutureProducer,
        topic: String,
    },
    /// Connects only once the change is recorded (the CLI): creates the topics if they
    /// are missing and opens the broker connection before stamping `sentAt`, so the
    /// propagation the instances measure is publish → applied, not client start-up.
    OnDemand {
        brokers: String,
        /// Every topic of the deployment with its partitions (as `serve` creates them).
        layout: Vec<(String, i32)>,
        topic: String,
    },
}

impl Announcer {
    pub fn connected(producer: FutureProducer, topic: impl Into<String>) -> Announcer {
        Announcer::Connected {
            producer,
            topic: topic.into(),
        }
    }

    /// The deployment's control topic, connected to on demand.
    pub fn on_demand(settings: &Settings) -> Announcer {
        let topics = bus::Topics::with_prefix(&settings.topic_prefix);
        Announcer::OnDemand {
            brokers: settings.brokers.clone(),
            layout: topics.layout(settings),
            topic: topics.control,
        }
    }

    async fn announce(&self, change: &Change) -> Result<(), String> {
        let connected;
        let (producer, topic) = match self {
            Announcer::Connected { producer, topic } => (producer, topic),
            Announcer::OnDemand {
                brokers,
                layout,
                topic,
            } => {
                bus::ensure_topics(brokers, layout)
                    .await
                    .map_err(|e| e.to_string())?;
                connected = bus::producer(brokers).map_err(|e| e.to_string())?;
                // Metadata through the producer's own client opens its broker connection.
                rdkafka::producer::Producer::client(&connected)
                    .fetch_metadata(Some(topic), Duration::from_millis(bus::ADMIN_TIMEOUT_MS))
                    .map_err(|e| format!("cannot reach the broker: {e}"))?;
                (&connected, topic)
            }
        };
        let message = ControlMessage {
            scope: change.scope.clone(),
            on: change.on,
            // Operators quote cards in reasons ("fraud on 4111 …"): masked as in the
            // ledger (SPEC §14). The scope's id is masked when parsed.
            actor: crate::privacy::mask_pans(&change.actor),
            reason: crate::privacy::mask_pans(&change.reason),
            sent_at: chrono::Utc::now(),
        };
        bus::publish(
            producer,
            topic,
            change.scope.to_string().as_bytes(),
            &serde_json::to_vec(&message).map_err(|e| e.to_string())?,
            None,
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Why [`record_then_announce`] failed, and so whether the change is in force.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// Nothing changed: the ledger refused the change or could not be reached.
    #[error("recording the kill-switch change failed: {0}")]
    Record(#[source] LedgerError),
    /// The change is recorded, hence in force for every decision; only the announcement
    /// failed, so instances show it at their next ledger re-read.
    #[error(
        "the kill-switch change is recorded in the ledger but could not be announced on the control topic ({0}); instances pick it up at their next ledger re-read"
    )]
    Announce(String),
}

/// Records `change` in the ledger, then announces it (unless `announcer` is `None`:
/// tests, an API without a broker). Returns the seq of the event that set the current
/// state (an unchanged state records nothing and returns the earlier event's seq).
pub async fn record_then_announce(
    ledger: &Ledger,
    change: &Change,
    origin: &Origin,
    announcer: Option<&Announcer>,
) -> Result<i64, ChangeError> {
    let seq = ledger
        .set_kill_switch(
            &change.scope,
            change.on,
            &change.actor,
            &change.reason,
            origin,
        )
        .await
        .map_err(ChangeError::Record)?;
    // This process's gauge; every instance sets its own when the announcement arrives.
    crate::telemetry::set_kill_switch(&change.scope.to_string(), change.on);
    if let Some(announcer) = announcer {
        announcer
            .announce(change)
            .await
            .map_err(ChangeError::Announce)?;
    }
    Ok(seq)
}
