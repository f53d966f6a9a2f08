//! The kill-switch side of an instance: every instance reads every message on
//! `spend.control` (manual assignment, no consumer group), and re-reads the ledger's
//! state now and then in case a message was lost between the ledger write and the publish.
//!
//! What it maintains is a [`PropagationProbe`](crate::kill_switch::PropagationProbe):
//! the `spendguard_kill_switch_active` gauge, the propagation histogram and the
//! `kill-switch applied` log line. It gates nothing; the ledger does, inside every
//! deciding transaction, from the moment the change is committed.

use rdkafka::Message;
use std::sync::Arc;
use std::time::Duration;

use super::{ServeError, Shared};
use crate::bus;
use crate::kill_switch::{ControlMessage, Scope};

/// Positions the control consumer at the current end of the topic, then restores the
/// state from the ledger, then follows the topic. Control messages sent after this
/// returns are all seen; earlier changes are in the ledger read.
/// Without Kafka only the ledger re-reads run.
pub async fn start(shared: Arc<Shared>) -> Result<tokio::task::JoinHandle<()>, ServeError> {
    let consumer = if shared.settings.kafka {
        let consumer = bus::standalone_consumer(&shared.settings.brokers)
            .map_err(ServeError::broker("cannot create the control consumer"))?;
        bus::assign_at_high_watermarks(&consumer, &shared.settings.brokers, &shared.topics.control)
            .map_err(ServeError::broker("cannot position the control consumer"))?;
        Some(consumer)
    } else {
        None
    };
    resync(&shared).await.map_err(ServeError::ledger(
        "cannot read the kill switch from the ledger",
    ))?;
    let active = shared.kill_probe.active();
    if !active.is_empty() {
        tracing::warn!(scopes = ?active.iter().map(Scope::to_string).collect::<Vec<_>>(), "kill switch active at start-up");
    }
    let follow = tokio::spawn({
        let shared = shared.clone();
        async move {
            if let Some(consumer) = consumer {
                follow(shared, consumer).await;
            }
        }
    });
    let resyncer = tokio::spawn(async move {
        let mut tick =
            tokio::time::interval(Duration::from_millis(shared.settings.kill_switch_resync_ms));
        loop {
            tick.tick().await;
            if let Err(e) = resync(&shared).await {
                tracing::warn!(error = %e, "kill-switch re-read from the ledger failed");
            }
        }
    });
    Ok(tokio::spawn(async move {
        let _ = tokio::join!(follow, resyncer);
    }))
}

async fn resync(shared: &Shared) -> Result<(), crate::ledger::LedgerError> {
    let generation = shared.kill_probe.generation();
    let scopes = shared.ledger.kill_switch_state().await?;
    let parsed: Vec<Scope> = scopes
        .iter()
        .filter(|e| e.active)
        .filter_map(|e| Scope::parse(&e.scope).ok())
        .collect();
    if shared.kill_probe.replace_if_unchanged(generation, parsed) {
        // Every scope ever switched is in the ledger, so a scope switched off shows 0.
        for entry in &scopes {
            crate::telemetry::set_kill_switch(&entry.scope, entry.active);
        }
    }
    Ok(())
}

async fn follow(shared: Arc<Shared>, consumer: rdkafka::consumer::StreamConsumer) {
    loop {
        let msg = match consumer.recv().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "control topic read error (the client retries)");
                continue;
            }
        };
        let received_at = chrono::Utc::now();
        match ControlMessage::parse(msg.payload().unwrap_or_default()) {
            Ok(control) => {
                shared.kill_probe.set(control.scope.clone(), control.on);
                crate::telemetry::set_kill_switch(&control.scope.to_string(), control.on);
                let propagation_ms = (received_at - control.sent_at)
                    .num_microseconds()
                    .unwrap_or(0) as f64
                    / 1000.0;
                metrics::histogram!("spendguard_kill_switch_propagation_seconds")
                    .record(propagation_ms / 1000.0);
                tracing::warn!(
                    scope = %control.scope, on = control.on, actor = %control.actor,
                    propagation_ms, "kill switch changed"
                );
                // A stable line tests and operators can grep for.
                eprintln!(
                    "kill-switch applied instance={} scope={} on={} propagation_ms={propagation_ms:.3}",
                    shared.settings.instance, control.scope, control.on
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, offset = msg.offset(), "ignored malformed control message")
            }
        }
    }
}
