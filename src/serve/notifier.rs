//! Webhooks (SPEC §13.2): two tasks beside the deciders, never in their way.
//!
//! - the enqueuer follows the committed ledger from a cursor in PostgreSQL and turns
//!   decisions, outcomes, kill-switch changes and refused settlements into one queued
//!   delivery per subscribed webhook (cursor and deliveries move in one transaction);
//! - the sender claims due deliveries, POSTs them signed, and records the answer; a
//!   failure is retried with exponential backoff until `notify::MAX_ATTEMPTS`.
//!
//! Deciding writes nothing for webhooks and waits on nothing here, so a slow or dead
//! receiver can only grow the queue (`spendguard_webhook_backlog`).

use arc_swap::ArcSwap;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;

use super::{CALL_DEADLINE_MS, Shared};
use crate::ledger::notifications::{ClaimedDelivery, Subscription};
use crate::notify::{self, Webhook, Webhooks};

/// Events read per enqueue round.
const ENQUEUE_BATCH: i64 = 500;
/// Deliveries claimed per send round, and sent concurrently at most.
const SEND_BATCH: i64 = 32;
/// Pause between rounds that found nothing to do.
const IDLE_POLL_MS: u64 = 250;
/// A claimed delivery is leased this long: longer than a POST may take, so no other
/// instance sends it meanwhile; after a crash it is sent again once the lease ends.
const LEASE_S: f64 = (notify::REQUEST_TIMEOUT_MS as f64 / 1000.0) * 6.0;
/// Most response body bytes read (only an excerpt goes into `last_error`).
const MAX_RESPONSE_EXCERPT: usize = 200;
/// Delivered and failed rows are kept this long for `GET /v1/notifications`.
const KEEP_DAYS: i32 = 7;
/// Send rounds between two samples of `spendguard_webhook_backlog` (about 2 s idle).
const BACKLOG_SAMPLE_ROUNDS: u64 = 8;
const PRUNE_BATCH: i64 = 1_000;

/// Loads `notifications.yaml`; `None` when it configures no webhook.
pub fn load(
    shared_settings: &crate::config::Settings,
) -> Result<Option<Webhooks>, super::ServeError> {
    let hooks = Webhooks::load(&shared_settings.notifications_file)
        .map_err(|e| super::ServeError::Notifications(e.to_string()))?;
    Ok((!hooks.is_empty()).then_some(hooks))
}

/// Starts the webhooks: with `hooks`, positions the cursor (first start) and spawns the
/// enqueuer and the sender; in any case spawns the watcher of `notifications.yaml`,
/// which swaps in a valid change (and starts both tasks if the file had no webhook
/// before). Everything ends on shutdown.
pub async fn start(shared: Arc<Shared>, hooks: Option<Webhooks>) -> Result<(), super::ServeError> {
    let current = Arc::new(ArcSwap::from_pointee(hooks.unwrap_or_default()));
    let running = !current.load().is_empty();
    if running {
        begin(shared.clone(), current.clone()).await?;
    }
    tokio::spawn(watch_file(shared, current, running));
    Ok(())
}

/// Positions the cursor (first start) and spawns both tasks.
async fn begin(
    shared: Arc<Shared>,
    hooks: Arc<ArcSwap<Webhooks>>,
) -> Result<(), super::ServeError> {
    // Before the API takes requests, so nothing decided from now on is missed.
    tokio::time::timeout(
        Duration::from_millis(CALL_DEADLINE_MS),
        shared.ledger.notifications_init_cursor(),
    )
    .await
    .map_err(|_| {
        super::ServeError::Notifications(format!(
            "the notification cursor could not be read within {CALL_DEADLINE_MS} ms"
        ))
    })?
    .map_err(super::ServeError::ledger(
        "cannot position the notification cursor",
    ))?;
    tracing::info!(webhooks = hooks.load().hooks.len(), "webhooks configured");
    tokio::spawn(enqueue_loop(shared.clone(), hooks.clone()));
    tokio::spawn(send_loop(shared, hooks));
    Ok(())
}

/// What a poll of `notifications.yaml` compares: its length and modification time
/// (`None`: absent or unreadable).
fn stamp(path: &std::path::Path) -> Option<(u64, Option<std::time::SystemTime>)> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.len(), m.modified().ok()))
}

/// Polls `notifications.yaml` as the policies directory is polled
/// (`policy_poll_interval_ms`). A valid change replaces the webhooks at once (the next
/// enqueue and send rounds use it; a delivery being sent finishes with the hook it
/// started with); an invalid one is refused and the last good webhooks stay, as at
/// start a bad file would have stopped serve.
async fn watch_file(shared: Arc<Shared>, hooks: Arc<ArcSwap<Webhooks>>, mut running: bool) {
    let path = shared.settings.notifications_file.clone();
    let mut seen = stamp(&path);
    let mut tick = tokio::time::interval(Duration::from_millis(
        shared.settings.policy_poll_interval_ms.max(1),
    ));
    let mut stop = shared.shutdown.clone();
    while !shared.shutting_down() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => continue,
        }
        let now = stamp(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match Webhooks::load(&path) {
            Ok(new) => {
                let ids: Vec<String> = new.hooks.iter().map(|h| h.id.clone()).collect();
                let empty = new.is_empty();
                hooks.store(Arc::new(new));
                metrics::counter!("spendguard_webhook_reloads_total", "result" => "applied")
                    .increment(1);
                tracing::warn!(webhooks = ?ids, "notifications.yaml reloaded");
                if !running && !empty {
                    match begin(shared.clone(), hooks.clone()).await {
                        Ok(()) => running = true,
                        Err(e) => {
                            // Tried again at the next change of the file.
                            tracing::error!(error = %e, "webhooks configured by a reload could not start");
                        }
                    }
                }
            }
            Err(e) => {
                metrics::counter!("spendguard_webhook_reloads_total", "result" => "refused")
                    .increment(1);
                tracing::error!(error = %e, "notifications.yaml change refused; keeping the last good webhooks");
            }
        }
    }
}

/// How readiness names the notifier when the database refuses it systemically.
const TASK: &str = "webhook notifier";

async fn enqueue_loop(shared: Arc<Shared>, hooks: Arc<ArcSwap<Webhooks>>) {
    while !shared.shutting_down() {
        let current = hooks.load_full();
        // A reload that leaves no webhook pauses the cursor, as a serve without
        // webhooks does: webhooks configured again get what was decided meanwhile.
        if current.is_empty() {
            idle(&shared).await;
            continue;
        }
        let subscriptions: Vec<Subscription> = current
            .hooks
            .iter()
            .map(|h| Subscription {
                webhook_id: h.id.clone(),
                kinds: h.events.clone(),
            })
            .collect();
        let round = tokio::time::timeout(
            Duration::from_millis(CALL_DEADLINE_MS),
            shared
                .ledger
                .notifications_enqueue(&subscriptions, ENQUEUE_BATCH),
        )
        .await;
        if let Ok(outcome) = &round {
            shared.systemic.observe(TASK, outcome);
        }
        let full = match round {
            Ok(Ok(done)) => done.events as i64 == ENQUEUE_BATCH,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "webhook enqueue failed; retrying");
                false
            }
            Err(_) => {
                tracing::warn!(
                    "webhook enqueue gave no answer within {CALL_DEADLINE_MS} ms; retrying"
                );
                false
            }
        };
        if !full {
            idle(&shared).await;
        }
    }
}

async fn send_loop(shared: Arc<Shared>, hooks: Arc<ArcSwap<Webhooks>>) {
    let mut rounds = 0u64;
    while !shared.shutting_down() {
        let hooks = hooks.load_full();
        let ids: Vec<String> = hooks.hooks.iter().map(|h| h.id.clone()).collect();
        rounds += 1;
        if rounds % 10_000 == 1 {
            prune(&shared).await;
        }
        let claimed = tokio::time::timeout(
            Duration::from_millis(CALL_DEADLINE_MS),
            shared.ledger.notifications_claim(&ids, SEND_BATCH, LEASE_S),
        )
        .await;
        if let Ok(outcome) = &claimed {
            shared.systemic.observe(TASK, outcome);
        }
        let batch = match claimed {
            Ok(Ok(batch)) => batch,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "webhook claim failed; retrying");
                Vec::new()
            }
            Err(_) => Vec::new(),
        };
        let n = batch.len();
        let sends = batch.into_iter().filter_map(|d| {
            let hook = hooks.get(&d.webhook_id)?.clone();
            Some(send_one(shared.clone(), hook, d))
        });
        let delivered: Vec<(uuid::Uuid, i32)> = futures::future::join_all(sends)
            .await
            .into_iter()
            .flatten()
            .collect();
        record_delivered(&shared, &delivered).await;
        // A count over the pending rows: every few rounds is enough for a gauge.
        if rounds % BACKLOG_SAMPLE_ROUNDS == 1 {
            sample_backlog(&shared).await;
        }
        if n < SEND_BATCH as usize {
            idle(&shared).await;
        }
    }
}

async fn idle(shared: &Shared) {
    let mut stop = shared.shutdown.clone();
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(IDLE_POLL_MS)) => {}
        _ = stop.changed() => {}
    }
}

async fn sample_backlog(shared: &Shared) {
    if let Ok(Ok(n)) = tokio::time::timeout(
        Duration::from_millis(CALL_DEADLINE_MS),
        shared.ledger.notification_backlog(),
    )
    .await
    {
        metrics::gauge!("spendguard_webhook_backlog").set(n as f64);
    }
}

async fn prune(shared: &Shared) {
    if let Ok(Err(e)) = tokio::time::timeout(
        Duration::from_millis(CALL_DEADLINE_MS),
        shared.ledger.notifications_prune(KEEP_DAYS, PRUNE_BATCH),
    )
    .await
    {
        tracing::warn!(error = %e, "pruning old webhook deliveries failed");
    }
}

/// Records a round's 2xx answers together. Not recorded (an error, the deadline): the
/// leases run out and those deliveries are sent again, as the at-least-once contract
/// allows (receivers deduplicate by `deliveryId`).
async fn record_delivered(shared: &Shared, delivered: &[(uuid::Uuid, i32)]) {
    if delivered.is_empty() {
        return;
    }
    match tokio::time::timeout(
        Duration::from_millis(CALL_DEADLINE_MS),
        shared.ledger.notifications_delivered(delivered),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(
            error = %e, deliveries = delivered.len(),
            "cannot record delivered webhooks; they will be sent again"
        ),
        Err(_) => tracing::warn!(
            deliveries = delivered.len(),
            "recording delivered webhooks timed out; they will be sent again"
        ),
    }
}

/// Sends one delivery. A 2xx answer is returned, to be recorded with the round's others;
/// a failed attempt is recorded here (rare, and each has its own retry time).
async fn send_one(
    shared: Arc<Shared>,
    hook: Webhook,
    d: ClaimedDelivery,
) -> Option<(uuid::Uuid, i32)> {
    let (error, status) = match post(&hook, &d).await {
        Ok(status) => {
            metrics::counter!("spendguard_webhook_delivered_total", "webhook" => hook.id.clone())
                .increment(1);
            return Some((d.id, i32::from(status)));
        }
        Err(failure) => failure,
    };
    metrics::counter!("spendguard_webhook_failures_total", "webhook" => hook.id.clone())
        .increment(1);
    let wait = notify::backoff(d.attempts + 1, rand::random::<f64>());
    let recorded = tokio::time::timeout(
        Duration::from_millis(CALL_DEADLINE_MS),
        shared.ledger.notification_attempt_failed(
            d.id,
            &error,
            status.map(i32::from),
            i64::try_from(wait.as_millis()).unwrap_or(i64::MAX),
            notify::MAX_ATTEMPTS,
        ),
    )
    .await;
    match recorded {
        Ok(Ok(true)) => tracing::warn!(
            delivery = %d.id, webhook = %hook.id,
            "webhook delivery failed {} times; given up (GET /v1/notifications?state=failed)",
            notify::MAX_ATTEMPTS
        ),
        Ok(Ok(false)) => {}
        // The lease runs out and the delivery is sent again: at-least-once.
        Ok(Err(e)) => {
            tracing::warn!(error = %e, delivery = %d.id, "cannot record a webhook attempt")
        }
        Err(_) => tracing::warn!(delivery = %d.id, "recording a webhook attempt timed out"),
    }
    None
}

/// One signed POST; `Ok(status)` for 2xx, else the error and the status if any.
async fn post(hook: &Webhook, d: &ClaimedDelivery) -> Result<u16, (String, Option<u16>)> {
    let timeout = Duration::from_millis(notify::REQUEST_TIMEOUT_MS);
    match tokio::time::timeout(timeout, post_inner(hook, d)).await {
        Ok(r) => r,
        Err(_) => Err((
            format!(
                "no answer within {} ms from {}",
                notify::REQUEST_TIMEOUT_MS,
                hook.url.text
            ),
            None,
        )),
    }
}

async fn post_inner(hook: &Webhook, d: &ClaimedDelivery) -> Result<u16, (String, Option<u16>)> {
    let stream = tokio::net::TcpStream::connect(&hook.url.authority)
        .await
        .map_err(|e| (format!("connect {}: {e}", hook.url.authority), None))?;
    match &hook.tls {
        None => exchange(hook, d, stream).await,
        Some(config) => {
            let name = crate::tls_client::server_name(&hook.url.tls_name)
                .map_err(|e| (e.to_string(), None))?;
            let tls = crate::tls_client::connect(config.clone(), name, stream)
                .await
                .map_err(|e| (format!("TLS with {}: {e}", hook.url.authority), None))?;
            exchange(hook, d, tls).await
        }
    }
}

/// One signed POST over an open connection (plain or TLS).
async fn exchange<IO>(
    hook: &Webhook,
    d: &ClaimedDelivery,
    io: IO,
) -> Result<u16, (String, Option<u16>)>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| (format!("HTTP handshake: {e}"), None))?;
    // The connection is driven until the exchange ends; one connection per delivery
    // keeps a stuck receiver's sockets bounded by the batch size.
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let now = chrono::Utc::now().timestamp();
    let request = hyper::Request::post(&hook.url.path)
        .header(hyper::header::HOST, &hook.url.host)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "spendguard-webhooks/1")
        .header(
            "Spendguard-Signature",
            hook.signature(now, d.payload.as_bytes()),
        )
        .header("Spendguard-Delivery-Id", d.id.to_string())
        .header("Spendguard-Event", &d.event_kind)
        .body(Full::new(hyper::body::Bytes::from(d.payload.clone())))
        .map_err(|e| (format!("cannot build the request: {e}"), None))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| (format!("HTTP: {e}"), None))?;
        let status = response.status();
        if status.is_success() {
            return Ok(status.as_u16());
        }
        // A bounded excerpt of the answer helps whoever reads last_error.
        let mut excerpt = Vec::new();
        let mut body = response.into_body();
        while excerpt.len() < MAX_RESPONSE_EXCERPT {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        excerpt.extend_from_slice(data);
                    }
                }
                _ => break,
            }
        }
        excerpt.truncate(MAX_RESPONSE_EXCERPT);
        Err((
            format!(
                "HTTP {}: {}",
                status.as_u16(),
                String::from_utf8_lossy(&excerpt).trim()
            ),
            Some(status.as_u16()),
        ))
    }
    .await;
    driver.abort();
    result
}
