//! `spendguard serve`: the consumer group that turns intents and votes into ledger events
//! and publishes the ledger's decisions and outcomes.
//!
//! Guarantees (SPEC §7) and where they come from:
//! - effectively once: the ledger decides in one transaction (idempotent per intentId);
//!   the offset is stored only after that commit, so a crash redelivers and the ledger
//!   answers with the recorded decision;
//! - decisions are published from rows committed to the ledger's outbox (claimed by the
//!   publisher, or with `direct_publish` handed to it after the commit), never from memory
//!   alone, so a crash between commit and publish loses nothing (another instance or
//!   the restart publishes once the lease runs out);
//! - one agent's intents are decided in order: they share a partition (key = agentId) and
//!   each partition is handled by exactly one worker task, sequentially.

mod checkpoints;
mod control;
pub mod demo;
mod error;
mod gauges;
mod group_lag;
mod notifier;
mod outbox;
mod refusals;
mod reload;
mod systemic;
mod worker;

use arc_swap::ArcSwap;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::OwnedMessage;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};

use crate::approvals::Registry;
use crate::bus::{self, Topics};
use crate::config::Settings;
use crate::kill_switch::PropagationProbe;
use crate::ledger::Ledger;
use crate::ledger::fault::Fault;
use crate::policy::PolicySet;
pub use error::ServeError;
pub use systemic::SystemicFaults;

/// How long a member that left the group on purpose (`bus::group`) stays out before it
/// subscribes again: librdkafka first revokes its partitions (handled by the consume
/// loop) and then sends the LeaveGroup, which must reach the coordinator first.
const REJOIN_PAUSE_MS: u64 = 1_000;
/// First and largest pause between retries of a ledger call that failed transiently.
const RETRY_FIRST_MS: u64 = 50;
const RETRY_MAX_MS: u64 = 5_000;
/// Attempts for a failure that is not transient (a bug, a constraint the ledger refuses)
/// before the message is dead-lettered instead of blocking its partition for ever.
pub(crate) const MAX_PERMANENT_ATTEMPTS: u32 = 5;
/// Largest pause between retries while the deployment is broken (a systemic fault:
/// privileges revoked, schema missing). Longer than for a transient fault: it lasts
/// until an operator acts, and each retry logs; short enough that work resumes within
/// seconds of the fix.
const SYSTEMIC_RETRY_MAX_MS: u64 = 10_000;
const _: () = assert!(SYSTEMIC_RETRY_MAX_MS >= RETRY_MAX_MS);

/// Everything the tasks of one instance share.
pub struct Shared {
    pub settings: Settings,
    pub topics: Topics,
    pub ledger: Arc<Ledger>,
    pub policies: ArcSwap<PolicySet>,
    pub approvers: ArcSwap<Registry>,
    /// The kill switch as this instance last heard of it, for metrics and logs only:
    /// decisions read the ledger's `kill_switch` table in their own transaction.
    pub kill_probe: PropagationProbe,
    /// `None` without Kafka (`--no-kafka`): nothing is consumed or published.
    pub producer: Option<rdkafka::producer::FutureProducer>,
    /// Wakes the outbox publisher right after a local ledger commit.
    pub outbox_ready: Notify,
    pub shutdown: watch::Receiver<bool>,
    /// Calls held on a systemic fault (readiness, gauge).
    pub systemic: Arc<SystemicFaults>,
    /// How many refused messages per source are still audited one by one (workers and
    /// the synchronous API share it).
    pub audit_budget: crate::audit_budget::SharedBudget,
}

impl Shared {
    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// What [`retry_bounded`] needs of this instance.
    pub(crate) fn hold(&self) -> Hold<'_> {
        Hold {
            stop: &self.shutdown,
            systemic: &self.systemic,
        }
    }
}

/// Where a retried call learns that the instance stops, and reports a systemic fault.
#[derive(Clone, Copy)]
pub(crate) struct Hold<'a> {
    pub stop: &'a watch::Receiver<bool>,
    pub systemic: &'a SystemicFaults,
}

/// An error [`retry_bounded`] can classify (SPEC §15).
pub(crate) trait Retryable: std::fmt::Display {
    fn fault(&self) -> Fault;
    /// For a systemic fault: the classified reason readiness and the log summary give.
    fn systemic_reason(&self) -> String {
        "deployment fault".into()
    }
}

impl Retryable for crate::ledger::LedgerError {
    fn fault(&self) -> Fault {
        crate::ledger::LedgerError::fault(self)
    }
    fn systemic_reason(&self) -> String {
        crate::ledger::LedgerError::systemic_reason(self).unwrap_or_default()
    }
}

/// The broker either answers later (transient) or refuses this message (permanent):
/// a deployment fault of the broker (ACLs, TLS) shows up at start, not per message.
impl Retryable for bus::BusError {
    fn fault(&self) -> Fault {
        if self.is_transient() {
            Fault::Transient
        } else {
            Fault::Permanent
        }
    }
}

/// Runs until `shutdown` resolves, then drains in-flight work, publishes what the
/// outbox holds, commits offsets and returns.
pub async fn run(
    settings: Settings,
    api: Option<ApiMount>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    // The recorder first: what is recorded before it exists (start-up gauges) is lost.
    let _ = crate::telemetry::metrics_handle();
    // Before anything is connected or recorded: a refused start leaves no trace.
    if !settings.demo {
        let registry = reload::load_approvers(&settings.approvers_file)?;
        let found = demo::demo_credentials(&registry, api.as_ref().map(|a| &a.tokens));
        if !found.is_empty() {
            return Err(ServeError::DemoCredentials {
                found,
                approvers: settings.approvers_file.clone(),
            });
        }
    }
    let webhooks = notifier::load(&settings)?;
    // Every Kafka client of this process speaks the deployment's TLS / SASL.
    bus::properties::install(&settings.kafka_client);
    let topics = Topics::with_prefix(&settings.topic_prefix);
    let mut ledger = connect_ledger(&settings).await?;
    let kafka = settings.kafka;
    // With a broker and `direct_publish`, committed decisions are handed straight to the
    // direct publisher (outbox::run_direct); the claim round publishes what it could not
    // take. Off by default: on 2 cores it measured no end-to-end gain (benchmarks.md).
    let direct = (kafka && settings.direct_publish).then(|| {
        let (tx, rx) = mpsc::channel(outbox::DIRECT_QUEUE_BATCHES);
        ledger.hand_outbox_to(outbox::direct_claimer(&settings.instance), tx);
        rx
    });
    if kafka {
        wait_for_topics(&settings, &topics).await?;
    }

    let policies = match PolicySet::load_dir_checked(&settings.policies_dir) {
        Ok((set, warnings)) => {
            reload::log_warnings(&warnings);
            set
        }
        Err(refusal) => {
            let event = reload::refusal_event(&settings.policies_dir, &refusal, "startup");
            if let Err(e) = ledger
                .record_policy_set_refused(event, &crate::ledger::Origin::cli(&settings.instance))
                .await
            {
                tracing::error!(error = %e, "the refused policy set could not be recorded in the ledger");
            }
            return Err(ServeError::Policies {
                dir: settings.policies_dir.display().to_string(),
                source: Box::new(refusal),
            });
        }
    };
    ledger
        .activate_policies(&policies, &settings.instance)
        .await
        .map_err(ServeError::ledger(
            "cannot record the policy activation in the ledger",
        ))?;
    let approvers = ledger
        .activate_registry(
            reload::load_approvers(&settings.approvers_file)?,
            &settings.instance,
        )
        .await
        .map_err(ServeError::ledger(
            "cannot record the approver registry activation in the ledger",
        ))?;
    crate::telemetry::switch_active_policies([], policies.policies().map(|p| &p.identity));

    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        producer: if kafka {
            Some(
                bus::producer(&settings.brokers)
                    .map_err(ServeError::broker("cannot create the producer"))?,
            )
        } else {
            None
        },
        kill_probe: PropagationProbe::default(),
        policies: ArcSwap::from_pointee(policies),
        approvers: ArcSwap::from_pointee(approvers),
        outbox_ready: Notify::new(),
        shutdown: stop_rx,
        systemic: Arc::default(),
        audit_budget: Arc::default(),
        ledger: Arc::new(ledger),
        topics,
        settings,
    });

    // The series exists from the start (0), so an alert sees it rise.
    metrics::gauge!("spendguard_ledger_systemic_fault").set(0.0);
    // The control consumer is positioned before the ledger state is read, so no kill
    // switch change can fall between the two.
    let control = control::start(shared.clone()).await?;
    // Without a broker the outbox keeps every decision until a serve with Kafka runs.
    let outbox = kafka.then(|| tokio::spawn(outbox::run(shared.clone())));
    let direct = direct.map(|rx| tokio::spawn(outbox::run_direct(shared.clone(), rx)));
    let sweeper = tokio::spawn(sweep_expired(shared.clone()));
    // Ends by itself on shutdown; `refusals::drain` then records what is left.
    let refusal_flusher = tokio::spawn(refusals::run(shared.clone()));
    let chain_status = Arc::new(crate::api::console::ChainStatus::default());
    let verifier = tokio::spawn(verify_chains(shared.clone(), chain_status.clone()));
    // Ends by itself on shutdown (it checks every probe); nothing waits for it.
    if let Some(plan) = checkpoints::plan(&shared.settings)? {
        tokio::spawn(checkpoints::run(shared.clone(), plan));
    }
    let watcher = tokio::spawn(reload::watch(shared.clone()));
    notifier::start(shared.clone(), webhooks).await?;

    let mut partition_queues = Vec::new();
    let consumer = if kafka {
        let consumer = Arc::new(
            bus::group_consumer(
                &shared.settings.brokers,
                &shared.settings.group_id,
                &shared.settings.instance,
                shared.settings.max_poll_interval_ms,
            )
            .map_err(ServeError::broker("cannot create the group consumer"))?,
        );
        // Before subscribing: no message of these partitions reaches the shared queue.
        partition_queues = split_partitions(&consumer, &shared);
        consumer
            .subscribe(&subscribed_topics(&shared.topics))
            .map_err(ServeError::Subscribe)?;
        Some(consumer)
    } else {
        None
    };

    let sampler = tokio::spawn(gauges::run(shared.clone(), consumer.clone()));
    let group_lag = consumer
        .clone()
        .map(|consumer| tokio::spawn(group_lag::run(shared.clone(), consumer)));

    let mut senders = Vec::with_capacity(shared.settings.workers);
    let mut workers = Vec::with_capacity(shared.settings.workers);
    if let Some(consumer) = &consumer {
        for _ in 0..shared.settings.workers {
            let (tx, rx) = mpsc::channel(shared.settings.worker_queue_len);
            senders.push(tx);
            workers.push(tokio::spawn(worker::run(
                shared.clone(),
                consumer.clone(),
                rx,
            )));
        }
    }
    let http = match api {
        Some(mount) => {
            Some(start_api(mount, shared.clone(), consumer.clone(), chain_status).await?)
        }
        None => None,
    };
    tracing::info!(instance = %shared.settings.instance, group = %shared.settings.group_id, "serving");
    eprintln!(
        "spendguard serve: instance {} ready",
        shared.settings.instance
    );

    tokio::pin!(shutdown);
    let Some(consumer) = consumer else {
        shutdown.await;
        return stop_without_kafka(
            shared,
            stop_tx,
            [sweeper, verifier, watcher, sampler, refusal_flusher],
            http,
            control,
        )
        .await;
    };
    let feeders: Vec<_> = partition_queues
        .into_iter()
        .map(|(topic, p, queue)| {
            let idx = worker_for(&topic, &shared.topics.intents, p, senders.len());
            tokio::spawn(feed(
                queue,
                consumer.context().clone(),
                senders[idx].clone(),
            ))
        })
        .collect();
    // Polls for what the split queues do not carry: rebalances, errors, and messages of
    // partitions that have no queue of their own. Polling is what keeps the instance in
    // its group; it never waits on a worker for a split partition.
    // While this member is out of the group on purpose (bus::group), it keeps receiving:
    // that is what lets librdkafka revoke its partitions and send the LeaveGroup.
    let resubscribe = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(resubscribe);
    let mut out_of_group = false;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = consumer.context().rejoin_requested(), if !out_of_group => {
                consumer.unsubscribe();
                out_of_group = true;
                let back_at = tokio::time::Instant::now() + Duration::from_millis(REJOIN_PAUSE_MS);
                resubscribe.as_mut().reset(back_at);
            }
            _ = &mut resubscribe, if out_of_group => {
                out_of_group = false;
                consumer
                    .subscribe(&subscribed_topics(&shared.topics))
                    .map_err(ServeError::Subscribe)?;
                tracing::info!("joining the consumer group again");
            }
            msg = consumer.recv() => match msg {
                Ok(m) if !consumer.context().admit(m.topic(), m.partition(), m.offset()) => {}
                Ok(m) => {
                    let owned = m.detach();
                    let idx = worker_for(owned.topic(), &shared.topics.intents, owned.partition(), senders.len());
                    if senders[idx].send(owned).await.is_err() {
                        return Err(ServeError::Stopped(format!("worker {idx} stopped unexpectedly")));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "consume error (the client retries)");
                    metrics::counter!("spendguard_consume_errors_total").increment(1);
                }
            }
        }
    }
    // A feeder waiting on a full worker holds a message whose offset is not stored: the
    // next owner redelivers it. Their senders must go for the workers to finish.
    for f in &feeders {
        f.abort();
    }
    for f in feeders {
        let _ = f.await;
    }

    tracing::info!("shutting down: draining workers");
    let _ = stop_tx.send(true);
    drop(senders);
    for w in workers {
        w.await
            .map_err(|e| ServeError::Stopped(format!("worker task failed: {e}")))?;
    }
    // Every stored offset belongs to committed ledger work: commit them now.
    // NoOffset = nothing stored since the last auto-commit: nothing to do.
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync)
        && e.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::NoOffset)
    {
        tracing::warn!(error = %e, "final offset commit failed; the next owner redelivers (the ledger deduplicates)");
    }
    if let Some(direct) = direct {
        direct
            .await
            .map_err(|e| ServeError::Stopped(format!("direct publisher failed: {e}")))?;
    }
    shared.outbox_ready.notify_one();
    if let Some(outbox) = outbox {
        outbox
            .await
            .map_err(|e| ServeError::Stopped(format!("outbox publisher failed: {e}")))?;
    }
    sweeper.abort();
    verifier.abort();
    watcher.abort();
    sampler.abort();
    if let Some(group_lag) = group_lag {
        group_lag.abort();
    }
    if let Some(http) = http {
        // The API's graceful shutdown follows the same stop signal; give it a bound.
        let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
    }
    let _ = refusal_flusher.await;
    refusals::drain(&shared).await;
    control.abort();
    eprintln!(
        "spendguard serve: instance {} stopped cleanly",
        shared.settings.instance
    );
    Ok(())
}

/// One task per partition split off the consumer ([`split_partitions`]): hands that
/// partition's messages, in order, to its worker. Waiting for a full worker here holds
/// back this partition only; librdkafka stops fetching it once its own queue is full
/// (`queued.min.messages`), and the consume loop goes on polling meanwhile. Messages
/// the group already handled (fetched again because an assigned partition starts before
/// its committed offset, `bus::group`) never reach the worker.
async fn feed(
    queue: rdkafka::consumer::stream_consumer::StreamPartitionQueue<bus::group::GroupContext>,
    group: Arc<bus::group::GroupContext>,
    worker: mpsc::Sender<OwnedMessage>,
) {
    loop {
        match queue.recv().await {
            Ok(m) if !group.admit(m.topic(), m.partition(), m.offset()) => {}
            Ok(m) => {
                if worker.send(m.detach()).await.is_err() {
                    // Only at shutdown, or when the worker task died: that is reported
                    // when serve stops and joins it (until then this partition waits).
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "consume error (the client retries)");
                metrics::counter!("spendguard_consume_errors_total").increment(1);
            }
        }
    }
}

/// Gives every partition of the consumed topics a queue of its own, before the first
/// poll. Why not pause a full worker's partitions instead: pausing drops what librdkafka
/// fetched ahead and resumes at the consumer's position, which is usually inside a
/// record batch, and tansu answers a fetch from inside a batch with the batches that
/// *start* at or after that offset: the rest of the batch is skipped, and a partition
/// whose last batch it was gets nothing more (docs/reliability.md). Split queues are
/// never paused or re-fetched. Partitions beyond the configured counts (a topic created
/// with more elsewhere) stay on the shared queue.
fn split_partitions(
    consumer: &Arc<bus::group::GroupConsumer>,
    shared: &Shared,
) -> Vec<(
    String,
    i32,
    rdkafka::consumer::stream_consumer::StreamPartitionQueue<bus::group::GroupContext>,
)> {
    let s = &shared.settings;
    let counts = [
        s.intent_partitions,
        s.approval_partitions,
        s.settlement_partitions,
    ];
    let mut queues = Vec::new();
    for (topic, count) in subscribed_topics(&shared.topics).into_iter().zip(counts) {
        for p in 0..count {
            match consumer.split_partition_queue(topic, p) {
                Some(q) => queues.push((topic.to_string(), p, q)),
                None => {
                    tracing::warn!(%topic, partition = p, "no queue of its own for this partition; it shares the consume loop's")
                }
            }
        }
    }
    queues
}

/// The topics of the consumer group.
fn subscribed_topics(topics: &Topics) -> [&str; 3] {
    [&topics.intents, &topics.approvals, &topics.settlements]
}

/// The end of a serve without Kafka: no consumer to drain, no outbox to flush (its rows
/// wait for a serve with a broker); the API finishes its requests first.
async fn stop_without_kafka(
    shared: Arc<Shared>,
    stop_tx: watch::Sender<bool>,
    tasks: [tokio::task::JoinHandle<()>; 5],
    http: Option<tokio::task::JoinHandle<()>>,
    control: tokio::task::JoinHandle<()>,
) -> Result<(), ServeError> {
    let _ = stop_tx.send(true);
    if let Some(http) = http {
        let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
    }
    for task in tasks {
        task.abort();
    }
    refusals::drain(&shared).await;
    control.abort();
    eprintln!(
        "spendguard serve: instance {} stopped cleanly",
        shared.settings.instance
    );
    Ok(())
}

/// Opens the ledger; while PostgreSQL is unreachable (transient), waits and retries
/// instead of exiting, so an instance started during a database outage comes up with it.
async fn connect_ledger(settings: &Settings) -> Result<Ledger, ServeError> {
    // No demo exception: a KEK made up for the run would leave every subject key
    // unreadable after a restart; scripts/demo.sh makes a KEK file instead.
    let key_wrap = crate::keywrap::KeyRing::required(
        settings.kek_file.as_deref(),
        settings.kek_previous_file.as_deref(),
    )
    .map_err(ServeError::Kek)?;
    let opts = crate::ledger::ConnectOptions {
        timeouts: settings.db_timeouts,
        key_wrap: Some(key_wrap),
        ..Default::default()
    };
    let mut pause_ms = RETRY_FIRST_MS;
    loop {
        match Ledger::connect_with(&settings.database_url, &settings.instance, opts.clone()).await {
            Ok(l) => return Ok(l),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "PostgreSQL unavailable at start; retrying in {pause_ms} ms");
            }
            Err(e) => {
                return Err(ServeError::ledger(
                    "cannot open the ledger (check --database-url / DATABASE_URL)",
                )(e));
            }
        }
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        pause_ms = (pause_ms * 2).min(RETRY_MAX_MS);
    }
}

/// Creates the topics; while the broker is down, waits and retries (SPEC §15: serve
/// starts and waits) instead of exiting.
async fn wait_for_topics(settings: &Settings, topics: &Topics) -> Result<(), ServeError> {
    let layout = topics.layout(settings);
    let mut pause_ms = RETRY_FIRST_MS;
    loop {
        let created = bus::ensure_topics(&settings.brokers, &layout).await;
        match created {
            Ok(()) => return Ok(()),
            Err(e @ bus::BusError::Client { .. }) if e.is_transient() => {
                tracing::warn!(error = %e, "broker unavailable at start; retrying in {pause_ms} ms");
                eprintln!(
                    "spendguard serve: waiting for the broker at {}",
                    settings.brokers
                );
            }
            Err(e) => return Err(ServeError::broker("cannot create the topics")(e)),
        }
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        pause_ms = (pause_ms * 2).min(RETRY_MAX_MS);
    }
}

/// Where and with which tokens the operators' HTTP API listens inside `serve`.
pub struct ApiMount {
    pub addr: std::net::SocketAddr,
    pub tokens: crate::api::TokenStore,
    /// HTTPS: the certificate chain and key (`None`: plain HTTP).
    pub tls: Option<crate::api::tls::TlsFiles>,
}

/// Starts the HTTP API (SPEC operators' surface) over this instance's ledger, policy set,
/// broker and consumer; it stops with the instance.
async fn start_api(
    mount: ApiMount,
    shared: Arc<Shared>,
    consumer: Option<Arc<bus::group::GroupConsumer>>,
    chain_status: Arc<crate::api::console::ChainStatus>,
) -> Result<tokio::task::JoinHandle<()>, ServeError> {
    use crate::api::{self, backends};
    let policies = Arc::new(backends::PolicySource({
        let shared = shared.clone();
        move || shared.policies.load_full()
    }));
    // A change made through the API is recorded and announced by the same operation the
    // CLI uses (kill_switch::record_then_announce), on this instance's producer.
    // Without a broker a change is only recorded; instances see it at their next ledger
    // re-read (`kill_switch_resync_ms`).
    let announcer = shared.producer.as_ref().map(|producer| {
        crate::kill_switch::Announcer::connected(producer.clone(), &shared.topics.control)
    });
    let mut checks = match consumer {
        Some(consumer) => {
            let assigned: backends::ExtraCheck = Arc::new(move || {
                let consumer = consumer.clone();
                Box::pin(async move {
                    let count = consumer.assignment().map(|a| a.count()).unwrap_or(0);
                    api::views::ReadinessCheck {
                        name: "partitions".into(),
                        ok: count > 0,
                        detail: format!("{count} partition(s) assigned to this instance"),
                    }
                })
            });
            vec![
                backends::broker_check(shared.settings.brokers.clone()),
                assigned,
            ]
        }
        None => vec![api::intake::no_kafka_check()],
    };
    checks.push(systemic_check(shared.systemic.clone()));
    let mut state = backends::state_for(
        shared.ledger.clone(),
        policies,
        mount.tokens,
        &shared.settings.instance,
        announcer,
        checks,
    );
    state.policy_lifecycle = Arc::new(api::policy_lifecycle::LedgerPolicyLifecycle {
        ledger: shared.ledger.clone(),
        instance: shared.settings.instance.clone(),
        policies_dir: Some(shared.settings.policies_dir.clone()),
    });
    // As many deciding lanes as Kafka workers: the same parallelism for both paths.
    state.intake = Arc::new(api::intake::LedgerIntake::start(
        api::intake::IntakeParts {
            ledger: shared.ledger.clone(),
            policies: Arc::new({
                let shared = shared.clone();
                move || shared.policies.load_full()
            }),
            instance: shared.settings.instance.clone(),
            audit_budget: shared.audit_budget.clone(),
            committed: Arc::new({
                let shared = shared.clone();
                move || shared.outbox_ready.notify_one()
            }),
        },
        shared.settings.workers,
    ));
    state.chain = chain_status;
    state.approvals = Arc::new(api::approvals::LedgerApprovals {
        ledger: shared.ledger.clone(),
        registry: Arc::new({
            let shared = shared.clone();
            move || shared.approvers.load_full()
        }),
        instance: shared.settings.instance.clone(),
    });
    // Read before listening: a bad certificate or key stops the start.
    let tls = match &mount.tls {
        Some(files) => Some((
            files.clone(),
            axum_server::tls_rustls::RustlsConfig::from_config(files.server_config()?),
        )),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(mount.addr)
        .await
        .map_err(|source| ServeError::Listen {
            addr: mount.addr,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: mount.addr,
        source,
    })?;
    let mut stop = shared.shutdown.clone();
    let handle = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|stopping| *stopping).await;
        };
        let served = match tls {
            Some((files, tls)) => {
                // A renewed certificate is served without a restart.
                let watcher = tokio::spawn(api::tls::watch(files, tls.clone()));
                let served = api::serve_listener_tls(listener, state, tls, shutdown).await;
                watcher.abort();
                served
            }
            None => api::serve_listener(listener, state, shutdown).await,
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP API stopped");
        }
    });
    let scheme = if mount.tls.is_some() { "https" } else { "http" };
    eprintln!("spendguard serve: HTTP API on {scheme}://{bound}");
    Ok(handle)
}

/// Readiness fails while a call is held on a systemic fault (SPEC §15): PostgreSQL
/// answers, but refuses this service's work until an operator fixes the deployment.
/// The detail is the classified reason only (the probe is unauthenticated).
fn systemic_check(faults: Arc<SystemicFaults>) -> crate::api::backends::ExtraCheck {
    Arc::new(move || {
        let current = faults.current();
        Box::pin(async move {
            let (ok, detail) = match current {
                None => (true, "no systemic fault".to_string()),
                Some(reason) => (
                    false,
                    format!(
                        "systemic fault ({reason}): the database refuses this service's work for a reason of the deployment, not of a message; work is held, nothing is dead-lettered; see the service log"
                    ),
                ),
            };
            crate::api::views::ReadinessCheck {
                name: "ledger_writes".into(),
                ok,
                detail,
            }
        })
    })
}

/// One worker per partition (stable), so a partition's messages stay in order.
/// Intent partitions are dealt round-robin (`partition % workers`), not hashed: a hash
/// can give one worker several busy partitions while others idle, and that worker's
/// queue then stalls the whole consume loop. Other topics (votes, rare) are hashed.
fn worker_for(topic: &str, intents_topic: &str, partition: i32, workers: usize) -> usize {
    let workers = workers.max(1);
    if topic == intents_topic {
        return usize::try_from(partition).unwrap_or(0) % workers;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (topic, partition).hash(&mut h);
    (h.finish() % workers as u64) as usize
}

/// Closes waiting intents past their approval TTL, and releases authorizations past
/// their `authorizationTtl` (SPEC §11, AUTH_EXPIRED). Safe with several instances: the
/// ledger closes each intent and expires each authorization once.
async fn sweep_expired(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(
        shared.settings.expiry_sweep_interval_ms,
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let swept = shared.ledger.expire_due_now();
        sweep_once(
            &shared,
            swept,
            "spendguard_intents_expired_total",
            "expiry sweep",
        )
        .await;
        let released = shared.ledger.expire_authorizations_now();
        sweep_once(
            &shared,
            released,
            "spendguard_authorizations_expired_total",
            "authorization expiry sweep",
        )
        .await;
    }
}

/// One call of the sweeper, within the call deadline: what it closed is counted in
/// `counter` and published; a failure is logged and retried on the next tick.
async fn sweep_once(
    shared: &Shared,
    call: impl std::future::Future<
        Output = Result<Vec<crate::ledger::OutcomeMessage>, crate::ledger::LedgerError>,
    >,
    counter: &'static str,
    what: &str,
) {
    let outcome = match tokio::time::timeout(Duration::from_millis(CALL_DEADLINE_MS), call).await {
        Ok(outcome) => {
            shared.systemic.observe("expiry sweeper", &outcome);
            outcome.map_err(|e| e.to_string())
        }
        Err(_) => Err(format!("no answer within {CALL_DEADLINE_MS} ms")),
    };
    match outcome {
        Ok(expired) if !expired.is_empty() => {
            metrics::counter!(counter).increment(expired.len() as u64);
            shared.outbox_ready.notify_one();
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "{what} failed; retrying next tick"),
    }
}

/// Longest one attempt of a ledger call or a dead-letter publish may take before it is
/// abandoned and retried. Above the producer's delivery timeout (10 s) and the ledger's
/// lock timeout (3 s); a decide batch normally takes milliseconds.
pub(crate) const CALL_DEADLINE_MS: u64 = 15_000;

/// How a bounded retry ended.
#[derive(Debug)]
pub(crate) enum Attempt<T> {
    Done(T),
    /// A non-transient failure repeated `MAX_PERMANENT_ATTEMPTS` times (the last error).
    GaveUp(String),
    /// Shutting down mid-retry: leave the offset unstored, the next owner redelivers.
    Stopped,
}

/// Verifies every hash chain now and then (`chain_verify_interval_s`, 0 = never) and
/// reports the result as `spendguard_chain_verification_failed` (1 = a chain is broken),
/// which the alert rules watch. The first run is one interval after start-up.
/// Each result is also kept in `status` for the console.
async fn verify_chains(shared: Arc<Shared>, status: Arc<crate::api::console::ChainStatus>) {
    let interval_s = shared.settings.chain_verify_interval_s;
    if interval_s == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(interval_s));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let verified = shared.ledger.audit_verify().await;
        shared.systemic.observe("chain verification", &verified);
        match verified {
            Ok(v) => {
                let failed = !v.problems.is_empty();
                status.record(crate::api::console::ChainVerification {
                    at: chrono::Utc::now(),
                    events: v.events,
                    problems: v
                        .problems
                        .iter()
                        .map(|p| {
                            format!(
                                "chain {} position {} (seq {}): {}",
                                p.chain_id, p.chain_pos, p.seq, p.problem
                            )
                        })
                        .collect(),
                    error: None,
                });
                if failed {
                    tracing::error!(
                        problems = v.problems.len(),
                        "hash chain verification FAILED: run `spendguard audit verify` and see docs/operations.md"
                    );
                }
                metrics::gauge!("spendguard_chain_verification_failed")
                    .set(f64::from(u8::from(failed)));
            }
            Err(e) => {
                tracing::warn!(error = %e, "chain verification could not run; retrying next interval");
                // The console says only that it could not run; the cause is in the log.
                status.record(crate::api::console::ChainVerification {
                    at: chrono::Utc::now(),
                    events: 0,
                    problems: Vec::new(),
                    error: Some("the ledger could not be read; see the service log".into()),
                });
            }
        }
    }
}

/// Retries `op` with exponential back-off. Transient failures (the database
/// unreachable, a serialization conflict) and systemic ones (the deployment is broken:
/// privileges revoked, schema missing) are retried without end: while they last no
/// message can be handled anyway, and giving up would dead-letter work that is not at
/// fault. A systemic fault is reported while it lasts (`hold.systemic`: readiness 503,
/// `spendguard_ledger_systemic_fault`) and retried at a slower pace. Any other failure
/// is retried `MAX_PERMANENT_ATTEMPTS` times, then reported so the caller dead-letters.
pub(crate) async fn retry_bounded<T, E: Retryable, F, Fut>(
    hold: Hold<'_>,
    what: &str,
    mut op: F,
) -> Attempt<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut pause_ms = RETRY_FIRST_MS;
    let mut permanent_failures = 0u32;
    // Set while the last failure was systemic; dropped on the next outcome of another
    // kind (success included), which clears readiness and the gauge.
    let mut held: Option<systemic::Held<'_>> = None;
    loop {
        let mut cap_ms = RETRY_MAX_MS;
        match tokio::time::timeout(Duration::from_millis(CALL_DEADLINE_MS), op()).await {
            Ok(Ok(v)) => {
                if held.take().is_some() {
                    tracing::warn!("{what} succeeded again: the systemic fault has cleared");
                }
                return Attempt::Done(v);
            }
            // No answer at all (a peer paused, a connection black-holed): the call is
            // abandoned and retried; if it did commit meanwhile, the ledger's
            // idempotency answers the retry with what was recorded.
            Err(_) => {
                metrics::counter!("spendguard_retries_total").increment(1);
                tracing::warn!(
                    "{what} gave no answer within {CALL_DEADLINE_MS} ms (transient); retrying in {pause_ms} ms"
                );
            }
            Ok(Err(e)) => {
                metrics::counter!("spendguard_retries_total").increment(1);
                match e.fault() {
                    Fault::Transient => {
                        held = None;
                        tracing::warn!(error = %e, "{what} failed (transient); retrying in {pause_ms} ms");
                    }
                    Fault::Systemic => {
                        let reason = e.systemic_reason();
                        cap_ms = SYSTEMIC_RETRY_MAX_MS;
                        match &held {
                            Some(_) => hold.systemic.update(reason),
                            None => held = Some(hold.systemic.hold(reason)),
                        }
                        tracing::error!(
                            error = %e,
                            "{what} failed: the deployment is at fault (systemic), not the message; holding it and retrying in {pause_ms} ms until an operator fixes the database (nothing is dead-lettered)"
                        );
                    }
                    Fault::Permanent => {
                        held = None;
                        permanent_failures += 1;
                        tracing::error!(error = %e, attempt = permanent_failures, "{what} failed");
                        if permanent_failures >= MAX_PERMANENT_ATTEMPTS {
                            return Attempt::GaveUp(e.to_string());
                        }
                    }
                }
            }
        }
        if *hold.stop.borrow() {
            return Attempt::Stopped;
        }
        tokio::time::sleep(Duration::from_millis(pause_ms.min(cap_ms))).await;
        pause_ms = (pause_ms * 2).min(cap_ms);
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error of a given kind, for the retry tests.
    #[derive(Debug, Clone, PartialEq)]
    struct Failure(Fault, &'static str);

    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.1)
        }
    }

    impl Retryable for Failure {
        fn fault(&self) -> Fault {
            self.0
        }
        fn systemic_reason(&self) -> String {
            format!("test: {}", self.1)
        }
    }

    #[tokio::test]
    async fn permanent_failures_give_up_and_transient_ones_do_not() {
        let (_tx, stop) = watch::channel(false);
        let systemic = SystemicFaults::default();
        let hold = Hold {
            stop: &stop,
            systemic: &systemic,
        };
        let mut calls = 0u32;
        let r: Attempt<()> = retry_bounded(hold, "op", || {
            calls += 1;
            async { Err(Failure(Fault::Permanent, "constraint violated")) }
        })
        .await;
        assert!(matches!(r, Attempt::GaveUp(ref e) if e == "constraint violated"));
        assert_eq!(calls, MAX_PERMANENT_ATTEMPTS);

        // More transient failures than the permanent limit, then success: still done.
        let mut calls = 0u32;
        let r = retry_bounded(hold, "op", || {
            calls += 1;
            let n = calls;
            async move {
                if n <= MAX_PERMANENT_ATTEMPTS + 1 {
                    Err(Failure(Fault::Transient, "connection refused"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert!(matches!(r, Attempt::Done(n) if n == MAX_PERMANENT_ATTEMPTS + 2));
        assert_eq!(
            systemic.current(),
            None,
            "a transient fault is not systemic"
        );

        // Shutting down: stop retrying, leave the message for the next owner.
        let (tx, stop) = watch::channel(false);
        tx.send(true).unwrap();
        let r: Attempt<()> = retry_bounded(
            Hold {
                stop: &stop,
                systemic: &systemic,
            },
            "op",
            || async { Err(Failure(Fault::Transient, "down")) },
        )
        .await;
        assert!(matches!(r, Attempt::Stopped));
    }

    /// A systemic fault never gives up (no dead letter), is visible while it lasts and
    /// clears with the first success.
    #[tokio::test]
    async fn systemic_failures_are_held_and_reported_until_they_clear() {
        let (_tx, stop) = watch::channel(false);
        let systemic = Arc::new(SystemicFaults::default());
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut calls = 0u32;
        // More than a permanent failure gets (about 3 s of real back-off).
        let attempts = MAX_PERMANENT_ATTEMPTS + 1;
        let r = retry_bounded(
            Hold {
                stop: &stop,
                systemic: &systemic,
            },
            "op",
            || {
                calls += 1;
                let n = calls;
                // What readiness would say right before this attempt.
                seen.lock().unwrap().push(systemic.current());
                async move {
                    if n <= attempts {
                        Err(Failure(Fault::Systemic, "permission denied"))
                    } else {
                        Ok(n)
                    }
                }
            },
        )
        .await;
        assert!(matches!(r, Attempt::Done(n) if n == attempts + 1), "{r:?}");
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        assert_eq!(seen[0], None, "nothing held before the first failure");
        assert!(
            seen[1..]
                .iter()
                .all(|s| s.as_deref() == Some("test: permission denied")),
            "{seen:?}"
        );
        assert_eq!(systemic.current(), None, "cleared by the success");

        // Held, then the instance stops: released too.
        let (tx, stop) = watch::channel(false);
        let mut calls = 0u32;
        let r: Attempt<()> = retry_bounded(
            Hold {
                stop: &stop,
                systemic: &systemic,
            },
            "op",
            || {
                calls += 1;
                if calls == 2 {
                    tx.send(true).unwrap();
                }
                async { Err(Failure(Fault::Systemic, "no such table")) }
            },
        )
        .await;
        assert!(matches!(r, Attempt::Stopped));
        assert_eq!(systemic.current(), None);
    }

    #[test]
    fn a_partition_always_maps_to_the_same_worker() {
        let intents = "spend.intents";
        for p in 0..64 {
            for topic in [intents, "spend.approvals", "spend.settlements"] {
                let w = worker_for(topic, intents, p, 8);
                assert!(w < 8);
                assert_eq!(w, worker_for(topic, intents, p, 8));
            }
        }
        assert_eq!(worker_for("t", intents, 3, 1), 0);
        // 12 intent partitions over 8 workers: no worker has more than 2.
        let mut load = [0u32; 8];
        for p in 0..12 {
            load[worker_for(intents, intents, p, 8)] += 1;
        }
        assert_eq!(load.iter().max(), Some(&2), "{load:?}");
        assert_eq!(load.iter().min(), Some(&1), "{load:?}");
    }
}
