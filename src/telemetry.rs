//! Tracing set-up (structured logs to stderr, filter from `--log` / `SPENDGUARD_LOG`) and
//! the Prometheus metrics registry (SPEC issue 5 point 2).
//!
//! Metric names are constants here, with their unit in the name (Prometheus base units:
//! seconds, messages, bytes), so every module records under the same names and the
//! dashboards / alerts in `docs/operations.md` have one place to look. Other modules call
//! the `record_*` / `set_*` helpers rather than the `metrics` macros directly, so a label
//! is never spelled two ways.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub fn init(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // A second init (tests start several apps in one process) is harmless: keep the first.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(MaskedStderr)
        .try_init();
}

/// Log output with card numbers masked (SPEC §14): every log line passes here, whatever
/// field or error text carried the number, so no call site has to remember it.
#[derive(Clone, Copy, Default)]
pub struct MaskedStderr;

/// One log record, buffered whole so a card number split over several `write` calls is
/// still seen in one piece; masked and written when the record is done.
#[derive(Default)]
pub struct MaskedRecord {
    buf: Vec<u8>,
}

impl std::io::Write for MaskedRecord {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for MaskedRecord {
    fn drop(&mut self) {
        use std::io::Write as _;
        let masked = crate::privacy::mask_bytes(&self.buf);
        let _ = std::io::stderr().lock().write_all(&masked);
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MaskedStderr {
    type Writer = MaskedRecord;

    fn make_writer(&'a self) -> MaskedRecord {
        MaskedRecord::default()
    }
}

// ---- metric names (stable API: dashboards and alerts depend on them) ----

/// Counter, labels `effect`, `policy`: every evaluation the service made.
pub const EVALUATIONS_TOTAL: &str = "spendguard_evaluations_total";
/// Histogram, seconds: pure policy evaluation time (in-process, no I/O).
pub const EVALUATION_DURATION_SECONDS: &str = "spendguard_evaluation_duration_seconds";
/// Histogram, seconds: from the intent's Kafka timestamp to its decision being committed.
pub const INTENT_TO_DECISION_SECONDS: &str = "spendguard_intent_to_decision_seconds";
/// Histogram, seconds: one ledger write transaction (decide / vote / outcome).
pub const LEDGER_COMMIT_DURATION_SECONDS: &str = "spendguard_ledger_commit_duration_seconds";
/// Gauge, messages, labels `topic`, `partition`: high watermark minus committed offset.
pub const CONSUMER_LAG_MESSAGES: &str = "spendguard_consumer_lag_messages";
/// Gauge, messages, labels `topic`, `partition`: high watermark minus the consumer
/// group's committed offset, for every partition of the input topics, assigned or not
/// (`serve::group_lag`).
pub const CONSUMER_GROUP_LAG_MESSAGES: &str = "spendguard_consumer_group_lag_messages";
/// Gauge, labels `topic`, `partition`: the consumer group's committed offset (the low
/// watermark while it committed nothing), for every partition of the input topics.
pub const CONSUMER_GROUP_COMMITTED_OFFSET: &str = "spendguard_consumer_group_committed_offset";
/// Counter, labels `code`: malformed messages sent to the dead-letter topic.
pub const DLQ_MESSAGES_TOTAL: &str = "spendguard_dlq_messages_total";
/// Gauge: intents waiting for approval (HITL / MSIG) right now.
pub const PENDING_APPROVALS: &str = "spendguard_pending_approvals";
/// Counter, labels `reason`: approval votes refused (bad signature, not registered, ...).
pub const REFUSED_VOTES_TOTAL: &str = "spendguard_refused_votes_total";
/// Gauge 0/1, labels `scope`: kill switch tripped for that scope.
pub const KILL_SWITCH_ACTIVE: &str = "spendguard_kill_switch_active";
/// Counter, labels `result` = `ok` | `failed`: policy set (re)loads.
pub const POLICY_RELOADS_TOTAL: &str = "spendguard_policy_reloads_total";
/// Gauge = 1, labels `name`, `version`, `sha256`: the policies currently in force.
pub const ACTIVE_POLICY_INFO: &str = "spendguard_active_policy_info";
/// Gauge, messages: outbox rows committed but not yet published.
pub const OUTBOX_BACKLOG_MESSAGES: &str = "spendguard_outbox_backlog_messages";
/// Counter, labels `route`, `method`, `status`: HTTP API requests.
pub const HTTP_REQUESTS_TOTAL: &str = "spendguard_http_requests_total";
/// Histogram, seconds, labels `route`, `method`: HTTP API request handling time.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "spendguard_http_request_duration_seconds";
/// Histogram: where a decision's time goes, by `stage` (issue 15, docs/benchmarks.md
/// "Latency breakdown"): `queued` (producer timestamp to the start of its deciding
/// transaction), `decide` (the transaction), `outbox_wait` (row written to claimed for
/// publishing), `produce_ack` (claimed to acknowledged by the broker), `mark` (marking
/// the batch published).
pub const PIPELINE_STAGE_SECONDS: &str = "spendguard_pipeline_stage_seconds";
/// Histogram: where one deciding transaction's time goes, by `phase` (issue 15):
/// `begin`, `lock` (chain and entity locks), `read` (snapshot, limit records, sequence
/// numbers, subject keys), `step` (the pure rule and fold), `write` (the projection
/// writes), `commit`.
pub const LEDGER_DECIDE_PHASE_SECONDS: &str = "spendguard_ledger_decide_phase_seconds";

/// Every metric name above, for documentation and tests.
pub const ALL_METRICS: [&str; 16] = [
    EVALUATIONS_TOTAL,
    EVALUATION_DURATION_SECONDS,
    INTENT_TO_DECISION_SECONDS,
    LEDGER_COMMIT_DURATION_SECONDS,
    CONSUMER_LAG_MESSAGES,
    DLQ_MESSAGES_TOTAL,
    PENDING_APPROVALS,
    REFUSED_VOTES_TOTAL,
    KILL_SWITCH_ACTIVE,
    POLICY_RELOADS_TOTAL,
    ACTIVE_POLICY_INFO,
    OUTBOX_BACKLOG_MESSAGES,
    HTTP_REQUESTS_TOTAL,
    HTTP_REQUEST_DURATION_SECONDS,
    PIPELINE_STAGE_SECONDS,
    LEDGER_DECIDE_PHASE_SECONDS,
];

/// Evaluation takes about a microsecond (SPEC §10); buckets from 100 ns to 10 ms.
const EVALUATION_BUCKETS_SECONDS: [f64; 11] = [
    1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 1e-4, 1e-3, 5e-3, 1e-2,
];
/// End-to-end and database latencies: 250 µs to 10 s (target p99 15 ms, SPEC §10).
const LATENCY_BUCKETS_SECONDS: [f64; 14] = [
    2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 1.5e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0, 2.5, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder as the process-wide `metrics` recorder (first call)
/// and returns the handle that renders `/metrics`. Safe to call from many places.
///
/// If another recorder was installed first (a test harness, an embedding program), the
/// returned handle renders an empty registry instead of failing the service: metrics are
/// an aid to operations, never a reason to stop deciding.
pub fn metrics_handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = || {
                PrometheusBuilder::new()
                    .set_buckets_for_metric(
                        Matcher::Full(EVALUATION_DURATION_SECONDS.into()),
                        &EVALUATION_BUCKETS_SECONDS,
                    )
                    .and_then(|b| b.set_buckets(&LATENCY_BUCKETS_SECONDS))
                    .unwrap_or_else(|_| PrometheusBuilder::new())
            };
            match builder().install_recorder() {
                Ok(handle) => {
                    describe_metrics();
                    handle
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a metrics recorder is already installed; /metrics will be empty");
                    builder().build_recorder().handle()
                }
            }
        })
        .clone()
}

fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(EVALUATIONS_TOTAL, "Policy evaluations by effect and policy");
    describe_histogram!(
        EVALUATION_DURATION_SECONDS,
        Unit::Seconds,
        "Pure policy evaluation time"
    );
    describe_histogram!(
        INTENT_TO_DECISION_SECONDS,
        Unit::Seconds,
        "Intent produced to decision committed"
    );
    describe_histogram!(
        LEDGER_COMMIT_DURATION_SECONDS,
        Unit::Seconds,
        "Ledger write transaction time"
    );
    describe_gauge!(CONSUMER_LAG_MESSAGES, "Consumer lag per topic partition");
    describe_counter!(
        DLQ_MESSAGES_TOTAL,
        "Malformed messages sent to the dead-letter topic"
    );
    describe_gauge!(PENDING_APPROVALS, "Intents waiting for approval");
    describe_counter!(REFUSED_VOTES_TOTAL, "Approval votes refused, by reason");
    describe_gauge!(KILL_SWITCH_ACTIVE, "Kill switch tripped (1) per scope");
    describe_counter!(
        POLICY_RELOADS_TOTAL,
        "Policy set changes by result (activated, refused, ledger_error)"
    );
    describe_gauge!(
        ACTIVE_POLICY_INFO,
        "Policies in force (value 1) with their identity"
    );
    describe_gauge!(OUTBOX_BACKLOG_MESSAGES, "Outbox rows not yet published");
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "HTTP API requests by route, method and status"
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "HTTP API request time"
    );
    describe_histogram!(
        PIPELINE_STAGE_SECONDS,
        Unit::Seconds,
        "Time of each stage of a decision: queued, decide, outbox_wait, produce_ack, mark"
    );
    describe_histogram!(
        LEDGER_DECIDE_PHASE_SECONDS,
        Unit::Seconds,
        "Time of each phase of a deciding transaction: begin, lock, read, step, write, commit"
    );
}

// ---- helpers other modules call ----

/// One evaluation: counts it by effect and policy name and records its duration.
pub fn record_evaluation(effect: crate::decision::Effect, policy: &str, duration: Duration) {
    metrics::counter!(EVALUATIONS_TOTAL, "effect" => effect.as_str(), "policy" => policy.to_string())
        .increment(1);
    metrics::histogram!(EVALUATION_DURATION_SECONDS).record(duration.as_secs_f64());
}

pub fn record_intent_to_decision(latency: Duration) {
    metrics::histogram!(INTENT_TO_DECISION_SECONDS).record(latency.as_secs_f64());
}

pub fn record_ledger_commit(duration: Duration) {
    metrics::histogram!(LEDGER_COMMIT_DURATION_SECONDS).record(duration.as_secs_f64());
    record_stage(Stage::Decide, duration);
}

/// Times the phases of one deciding transaction into [`LEDGER_DECIDE_PHASE_SECONDS`]:
/// each [`PhaseClock::lap`] records the time since the previous one under its phase.
pub struct PhaseClock {
    last: std::time::Instant,
}

impl PhaseClock {
    pub fn start() -> PhaseClock {
        PhaseClock {
            last: std::time::Instant::now(),
        }
    }

    pub fn lap(&mut self, phase: &'static str) {
        let now = std::time::Instant::now();
        metrics::histogram!(LEDGER_DECIDE_PHASE_SECONDS, "phase" => phase)
            .record(now.duration_since(self.last).as_secs_f64());
        self.last = now;
    }
}

/// The stages of [`PIPELINE_STAGE_SECONDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Queued,
    Decide,
    OutboxWait,
    ProduceAck,
    Mark,
}

impl Stage {
    pub const fn as_str(self) -> &'static str {
        match self {
            Stage::Queued => "queued",
            Stage::Decide => "decide",
            Stage::OutboxWait => "outbox_wait",
            Stage::ProduceAck => "produce_ack",
            Stage::Mark => "mark",
        }
    }
}

pub fn record_stage(stage: Stage, duration: Duration) {
    metrics::histogram!(PIPELINE_STAGE_SECONDS, "stage" => stage.as_str())
        .record(duration.as_secs_f64());
}

pub fn set_consumer_lag(topic: &str, partition: i32, lag_messages: i64) {
    metrics::gauge!(CONSUMER_LAG_MESSAGES, "topic" => topic.to_string(), "partition" => partition.to_string())
        .set(lag_messages.max(0) as f64);
}

pub fn set_consumer_group_lag(topic: &str, partition: i32, committed: i64, lag_messages: i64) {
    let partition = partition.to_string();
    metrics::gauge!(CONSUMER_GROUP_COMMITTED_OFFSET, "topic" => topic.to_string(), "partition" => partition.clone())
        .set(committed as f64);
    metrics::gauge!(CONSUMER_GROUP_LAG_MESSAGES, "topic" => topic.to_string(), "partition" => partition)
        .set(lag_messages.max(0) as f64);
}

/// A message sent to the DLQ; `code` is the stable error code (`invalid_json`, ...).
pub fn record_dlq(code: &str) {
    metrics::counter!(DLQ_MESSAGES_TOTAL, "code" => code.to_string()).increment(1);
}

pub fn set_pending_approvals(count: u64) {
    metrics::gauge!(PENDING_APPROVALS).set(count as f64);
}

/// A refused vote; `reason` is the stable refusal code recorded in the audit trail.
pub fn record_refused_vote(reason: &str) {
    metrics::counter!(REFUSED_VOTES_TOTAL, "reason" => reason.to_string()).increment(1);
}

/// `scope` as printed by the kill switch (`global`, `entity:ID`, `agent:ID`).
pub fn set_kill_switch(scope: &str, active: bool) {
    metrics::gauge!(KILL_SWITCH_ACTIVE, "scope" => scope.to_string()).set(if active {
        1.0
    } else {
        0.0
    });
}

/// How a policy change ended: `activated`, `refused` (invalid, the last good set stays)
/// or `ledger_error` (valid but not recorded, so not activated).
pub fn record_policy_reload(result: &'static str) {
    metrics::counter!(POLICY_RELOADS_TOTAL, "result" => result).increment(1);
}

/// Replaces the active-policy info series: `before` drop to 0, `after` are set to 1.
pub fn switch_active_policies<'a>(
    before: impl IntoIterator<Item = &'a crate::decision::PolicyIdentity>,
    after: impl IntoIterator<Item = &'a crate::decision::PolicyIdentity>,
) {
    for identity in before {
        clear_active_policy(identity);
    }
    for identity in after {
        set_active_policy(identity);
    }
}

/// Marks the policies in force. Policies no longer in force should be passed to
/// [`clear_active_policy`] so the info series drops to 0.
pub fn set_active_policy(identity: &crate::decision::PolicyIdentity) {
    metrics::gauge!(ACTIVE_POLICY_INFO, "name" => identity.name.clone(), "version" => identity.version.clone(), "sha256" => identity.sha256.clone())
        .set(1.0);
}

pub fn clear_active_policy(identity: &crate::decision::PolicyIdentity) {
    metrics::gauge!(ACTIVE_POLICY_INFO, "name" => identity.name.clone(), "version" => identity.version.clone(), "sha256" => identity.sha256.clone())
        .set(0.0);
}

pub fn set_outbox_backlog(messages: u64) {
    metrics::gauge!(OUTBOX_BACKLOG_MESSAGES).set(messages as f64);
}

/// `route` is the route template (`/v1/decisions/{intent_id}`), never the raw path, so
/// ids do not explode the label cardinality.
pub fn record_http_request(route: &str, method: &str, status: u16, duration: Duration) {
    metrics::counter!(HTTP_REQUESTS_TOTAL, "route" => route.to_string(), "method" => method.to_string(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "route" => route.to_string(), "method" => method.to_string())
        .record(duration.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{Effect, PolicyIdentity};

    #[test]
    fn names_are_prometheus_names_with_units() {
        for name in ALL_METRICS {
            assert!(name.starts_with("spendguard_"), "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}"
            );
        }
        for histogram in [
            EVALUATION_DURATION_SECONDS,
            INTENT_TO_DECISION_SECONDS,
            LEDGER_COMMIT_DURATION_SECONDS,
            HTTP_REQUEST_DURATION_SECONDS,
            PIPELINE_STAGE_SECONDS,
            LEDGER_DECIDE_PHASE_SECONDS,
        ] {
            assert!(
                histogram.ends_with("_seconds"),
                "{histogram} must carry its unit"
            );
        }
        let unique: std::collections::BTreeSet<_> = ALL_METRICS.iter().collect();
        assert_eq!(unique.len(), ALL_METRICS.len());
    }

    #[test]
    fn helpers_show_up_in_the_rendered_registry() {
        let handle = metrics_handle();
        record_evaluation(
            Effect::Deny,
            "telemetry-test-policy",
            Duration::from_nanos(800),
        );
        record_refused_vote("telemetry_test_reason");
        set_kill_switch("agent:telemetry-test", true);
        record_policy_reload("refused");
        set_active_policy(&PolicyIdentity {
            name: "telemetry-test-policy".into(),
            version: "9.9.9".into(),
            sha256: "ab".repeat(32),
        });
        let text = handle.render();
        assert!(
            text.contains(
                r#"spendguard_evaluations_total{effect="DENY",policy="telemetry-test-policy"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"spendguard_refused_votes_total{reason="telemetry_test_reason"} 1"#)
        );
        assert!(text.contains(r#"spendguard_kill_switch_active{scope="agent:telemetry-test"} 1"#));
        assert!(text.contains(r#"spendguard_policy_reloads_total{result="refused"}"#));
        assert!(text.contains(r#"version="9.9.9""#));
        // The sub-microsecond bucket exists, so evaluation latency is not all in one bucket.
        assert!(
            text.contains(r#"spendguard_evaluation_duration_seconds_bucket{le="0.000001"} 1"#),
            "{text}"
        );
    }
}
