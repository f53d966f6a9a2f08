//! Synchronous intake (SPEC §13.4): `POST /v1/intents` and `POST /v1/settlements` for
//! payment services that cannot wait on a topic.
//!
//! The body is judged by the parser Kafka messages go through ([`parse_intent`],
//! [`parse_settlement`]) and decided by the ledger call serve's worker makes
//! ([`Ledger::decide_batch`], [`Ledger::settle_batch`]): one transaction under the agent's
//! lock, the decision and its outbox row together. So an agent's intents arriving over
//! Kafka and HTTP at once are serialized by that lock and the caps hold exactly; the
//! answer is the recorded message (the one the outbox publishes on `spend.decisions`);
//! a retry with the same intentId gets it again (`Idempotent-Replayed: true`), never a
//! second decision. Invalid input is audited (`intent_invalid`, `settlement_refused`)
//! before the 400 goes back: the caller holds the bytes, the ledger the record, which is
//! what the dead-letter topic and the audit event give a Kafka message.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState, StoreError};
use crate::intent::{IntentError, SpendIntent, parse_intent};
use crate::ledger::settle::SettleResult;
use crate::ledger::{DecideStatus, Ledger, LedgerError, Origin};
use crate::policy::PolicySet;
use crate::settlement::{Settlement, SettlementError, parse_settlement};

/// Largest body read from the wire. Bodies up to this size reach the intake parser, so an
/// oversized intent gets the Kafka code `message_too_large` (16 KiB) and is audited like
/// one; anything larger is not an intent and is refused unread (413).
pub const MAX_INTAKE_BODY_BYTES: usize = 4 * crate::intent::MAX_INTENT_BYTES;
/// Attempts of one ledger call for a request; only transient failures are retried (the
/// database failing over, a lock wait given up), then the caller gets 503 and retries:
/// the intentId makes that safe.
pub const INTAKE_ATTEMPTS: u32 = 3;
/// Longest one attempt may take. Three attempts and their pauses stay inside the
/// request deadline ([`super::REQUEST_DEADLINE_MS`]).
pub const INTAKE_ATTEMPT_TIMEOUT_MS: u64 = 3_000;
const INTAKE_RETRY_PAUSE_MS: u64 = 50;
const _: () = assert!(
    INTAKE_ATTEMPTS as u64 * (INTAKE_ATTEMPT_TIMEOUT_MS + 2 * INTAKE_RETRY_PAUSE_MS)
        < super::REQUEST_DEADLINE_MS
);

/// A decision or outcome as recorded: the JSON the outbox publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub message: String,
    /// Recorded by an earlier delivery of the same id (HTTP retry or Kafka).
    pub replayed: bool,
}

/// Why the ledger did not record an intent or settlement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntakeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Refused and audited by the ledger, with the stable code a Kafka message would
    /// carry to `spend.dlq` (`idempotency_conflict`, `unknown_intent`, `over_remainder`, ...).
    #[error("{code}: {detail}")]
    Refused { code: String, detail: String },
}

/// Records what payment services send over HTTP.
pub trait Intake: Send + Sync + 'static {
    /// Decides a valid intent, or answers the decision recorded for its intentId.
    fn decide(&self, intent: SpendIntent) -> BoxFuture<'_, Result<Recorded, IntakeError>>;
    /// Audits a body that is not a valid intent (`intent_invalid`).
    fn invalid_intent(&self, raw: Bytes, err: IntentError)
    -> BoxFuture<'_, Result<(), StoreError>>;
    /// Applies a valid settlement, or answers the outcome recorded for its settlementId.
    fn settle(&self, settlement: Settlement) -> BoxFuture<'_, Result<Recorded, IntakeError>>;
    /// Audits a body that is not a valid settlement (`settlement_refused`).
    fn invalid_settlement(
        &self,
        raw: Bytes,
        err: SettlementError,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// An instance without a ledger behind its API (tests of other routes): every intake
/// call is 503.
pub struct Disabled;

fn disabled() -> StoreError {
    StoreError::Unavailable("synchronous intake is not enabled on this instance".into())
}

impl Intake for Disabled {
    fn decide(&self, _: SpendIntent) -> BoxFuture<'_, Result<Recorded, IntakeError>> {
        Box::pin(async { Err(disabled().into()) })
    }
    fn invalid_intent(&self, _: Bytes, _: IntentError) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Err(disabled()) })
    }
    fn settle(&self, _: Settlement) -> BoxFuture<'_, Result<Recorded, IntakeError>> {
        Box::pin(async { Err(disabled().into()) })
    }
    fn invalid_settlement(
        &self,
        _: Bytes,
        _: SettlementError,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Err(disabled()) })
    }
}

/// What the intake needs of the service.
#[derive(Clone)]
pub struct IntakeParts {
    pub ledger: Arc<Ledger>,
    /// The active policy set (serve: its hot-reloaded `ArcSwap`).
    pub policies: Arc<dyn Fn() -> Arc<PolicySet> + Send + Sync>,
    /// Recorded as the events' origin instance.
    pub instance: String,
    /// Runs after a commit that queued a message in the outbox (serve wakes its
    /// publisher, so the decision leaves at once rather than at the next poll).
    pub committed: Arc<dyn Fn() + Send + Sync>,
    /// The audit bound for refused bodies (SPEC §15, [`crate::audit_budget`]), shared
    /// with serve's workers; serve records the summaries of windows that end quietly.
    pub audit_budget: crate::audit_budget::SharedBudget,
}

impl IntakeParts {
    /// Whether a refused body of `topic` with `code` gets its own audit event (within
    /// the bound of this instance's API); otherwise it is counted, and answered 400 all
    /// the same. A window that just closed has its summary recorded first.
    async fn audit_refusal(&self, topic: &'static str, code: &str) -> Result<bool, StoreError> {
        use crate::audit_budget::{self, RefusalSource, Verdict};
        let source = RefusalSource {
            topic,
            partition: None,
        };
        let now_ms = chrono::Utc::now().timestamp_millis();
        let (verdict, closed) =
            audit_budget::admit(&self.audit_budget, &source, code, now_ms, None);
        if let Some(summary) = closed {
            let origin = self.origin();
            with_retries("ledger record_refusals_summary", || {
                self.ledger
                    .record_refusals_summary(topic, &summary, &origin)
            })
            .await?;
        }
        Ok(verdict == Verdict::Audit)
    }

    fn origin(&self) -> Origin {
        Origin {
            instance: self.instance.clone(),
            source: "api".into(),
            partition: None,
            offset: None,
        }
    }
}

/// Intents waiting for their lane, per lane; a full lane answers 503 at once rather than
/// letting requests pile up past their deadline.
pub const LANE_QUEUE_LEN: usize = 1_024;
/// Most intents one lane decides in one transaction (the Kafka worker's batch size).
pub const MAX_LANE_BATCH: usize = 64;

type Reply = tokio::sync::oneshot::Sender<Result<crate::ledger::Decided, IntakeError>>;

/// An intent waiting for its lane, with when it was queued (the `queued` stage of the
/// latency breakdown: request received → its deciding transaction starts).
type Job = (SpendIntent, Reply, std::time::Instant);

/// The intake over the service's ledger and live policy set.
///
/// Intents are decided in lanes, like the Kafka worker decides a partition's messages:
/// each lane takes what is queued (never waiting for more) and decides it in one
/// `decide_batch` transaction, so under load one commit serves many requests instead of
/// each request paying a transaction (measured in docs/benchmarks.md). An agent always
/// maps to the same lane, so its concurrent requests never contend for its lock across
/// lanes.
pub struct LedgerIntake {
    parts: IntakeParts,
    lanes: Vec<tokio::sync::mpsc::Sender<Job>>,
}

impl LedgerIntake {
    /// Starts `lanes` deciding tasks (at least one) on the current runtime; they stop
    /// when the intake is dropped.
    pub fn start(parts: IntakeParts, lanes: usize) -> LedgerIntake {
        let senders = (0..lanes.max(1))
            .map(|_| {
                let (tx, rx) = tokio::sync::mpsc::channel(LANE_QUEUE_LEN);
                tokio::spawn(run_lane(parts.clone(), rx));
                tx
            })
            .collect();
        LedgerIntake {
            parts,
            lanes: senders,
        }
    }

    fn lane(&self, agent_id: &str) -> &tokio::sync::mpsc::Sender<Job> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        agent_id.hash(&mut h);
        &self.lanes[(h.finish() % self.lanes.len() as u64) as usize]
    }
}

/// One lane: batches of what is queued, decided in one transaction each. A batch the
/// ledger refuses for a reason other than unavailability is decided again one intent at
/// a time, so one bad intent fails alone.
async fn run_lane(parts: IntakeParts, mut rx: tokio::sync::mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_LANE_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_LANE_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Requests whose caller gave up (deadline) are not decided for nobody.
        batch.retain(|(_, reply, _)| !reply.is_closed());
        let started = std::time::Instant::now();
        let mut intents = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for (intent, reply, queued_at) in batch.drain(..) {
            crate::telemetry::record_stage(
                crate::telemetry::Stage::Queued,
                started.duration_since(queued_at),
            );
            intents.push(intent);
            replies.push(reply);
        }
        let items: Vec<(SpendIntent, Origin)> =
            intents.into_iter().map(|i| (i, parts.origin())).collect();
        if items.is_empty() {
            continue;
        }
        let policies = (parts.policies)();
        let decided = with_retries("ledger decide", || {
            parts.ledger.decide_batch(&policies, &items)
        })
        .await;
        match decided {
            Ok(results) => {
                crate::telemetry::record_ledger_commit(started.elapsed());
                answer(&parts, results, replies);
            }
            Err(e @ StoreError::Other(_)) if items.len() > 1 => {
                tracing::warn!(intents = items.len(), error = %e, "ledger refused a batch of HTTP intents; deciding them one by one");
                for (item, reply) in items.chunks(1).zip(replies) {
                    match with_retries("ledger decide", || {
                        parts.ledger.decide_batch(&policies, item)
                    })
                    .await
                    {
                        Ok(results) => answer(&parts, results, vec![reply]),
                        Err(e) => {
                            let _ = reply.send(Err(e.into()));
                        }
                    }
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone().into()));
                }
            }
        }
    }
}

/// Sends each request its result; wakes the outbox when something new was recorded.
fn answer(
    parts: &IntakeParts,
    results: Vec<Result<crate::ledger::Decided, LedgerError>>,
    replies: Vec<Reply>,
) {
    let mut recorded = false;
    for (result, reply) in results.into_iter().zip(replies) {
        let result = match result {
            Ok(d) => {
                if d.status == DecideStatus::New {
                    recorded = true;
                    metrics::counter!("spendguard_decisions_total", "effect" => d.message.effect.as_str())
                        .increment(1);
                }
                Ok(d)
            }
            // Audited by the ledger in the same transaction.
            Err(e @ LedgerError::IdempotencyConflict { .. }) => Err(IntakeError::Refused {
                code: e.code().to_string(),
                detail: e.to_string(),
            }),
            Err(e) => Err(StoreError::Other(format!("ledger decide: {e}")).into()),
        };
        let _ = reply.send(result);
    }
    if recorded {
        (parts.committed)();
    }
}

/// `op` with [`INTAKE_ATTEMPTS`] attempts of at most [`INTAKE_ATTEMPT_TIMEOUT_MS`] each;
/// a call abandoned on its timeout may still commit, and then the retry is answered by
/// the ledger's idempotency with what it recorded.
async fn with_retries<T, F, Fut>(what: &str, mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LedgerError>>,
{
    let mut last = String::new();
    for attempt in 1..=INTAKE_ATTEMPTS {
        match tokio::time::timeout(Duration::from_millis(INTAKE_ATTEMPT_TIMEOUT_MS), op()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if e.is_transient() => last = e.to_string(),
            // The deployment is broken (privileges revoked, schema missing): retrying
            // within this request cannot help, but the request is not at fault either.
            // 503: the caller retries later with the same id, once an operator has fixed
            // it. The server's words stay in the log.
            Ok(Err(e)) if e.is_systemic() => {
                let reason = e.systemic_reason().unwrap_or_default();
                tracing::error!(error = %e, "{what} failed: the deployment is at fault (systemic), answering 503");
                return Err(StoreError::Unavailable(format!(
                    "{what} cannot be recorded now: the ledger database refuses this service's work ({reason}), a fault of the deployment that an operator must fix; retry later with the same id"
                )));
            }
            Ok(Err(e)) => return Err(StoreError::Other(format!("{what}: {e}"))),
            Err(_) => last = format!("no answer within {INTAKE_ATTEMPT_TIMEOUT_MS} ms"),
        }
        tracing::warn!(attempt, error = %last, "{what} failed (transient)");
        if attempt < INTAKE_ATTEMPTS {
            tokio::time::sleep(Duration::from_millis(
                INTAKE_RETRY_PAUSE_MS * u64::from(attempt),
            ))
            .await;
        }
    }
    Err(StoreError::Unavailable(format!(
        "{what} did not complete ({last}); retry with the same id"
    )))
}

fn message_text<T: Serialize>(value: &T) -> Result<String, IntakeError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Other(format!("recorded message does not serialize: {e}")).into())
}

impl Intake for LedgerIntake {
    fn decide(&self, intent: SpendIntent) -> BoxFuture<'_, Result<Recorded, IntakeError>> {
        Box::pin(async move {
            let (reply, answer) = tokio::sync::oneshot::channel();
            self.lane(&intent.agent_id)
                .try_send((intent, reply, std::time::Instant::now()))
                .map_err(|_| {
                    StoreError::Unavailable(format!(
                        "more than {LANE_QUEUE_LEN} intents are waiting for the ledger; retry with the same intentId"
                    ))
                })?;
            let d = answer
                .await
                .map_err(|_| StoreError::Other("the deciding lane stopped".into()))??;
            Ok(Recorded {
                message: message_text(&d.message)?,
                replayed: d.status == DecideStatus::Redelivered,
            })
        })
    }

    fn invalid_intent(
        &self,
        raw: Bytes,
        err: IntentError,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            metrics::counter!("spendguard_invalid_intents_total", "code" => err.code).increment(1);
            if !self.parts.audit_refusal("spend.intents", err.code).await? {
                return Ok(());
            }
            let origin = self.parts.origin();
            with_retries("ledger record_invalid_intent", || {
                self.parts.ledger.record_invalid_intent(&raw, &err, &origin)
            })
            .await
            .map(|_| ())
        })
    }

    fn settle(&self, settlement: Settlement) -> BoxFuture<'_, Result<Recorded, IntakeError>> {
        Box::pin(async move {
            let policies = (self.parts.policies)();
            let items = [(settlement, self.parts.origin())];
            let mut results = with_retries("ledger settle", || {
                self.parts.ledger.settle_batch(&policies, &items)
            })
            .await?;
            let result = results
                .pop()
                .ok_or_else(|| StoreError::Other("the ledger returned no outcome".into()))?;
            match result {
                SettleResult::Applied { outcome, .. } => {
                    metrics::counter!("spendguard_settlements_total", "result" => "applied")
                        .increment(1);
                    (self.parts.committed)();
                    Ok(Recorded {
                        message: message_text(&outcome)?,
                        replayed: false,
                    })
                }
                SettleResult::Redelivered { outcome } => Ok(Recorded {
                    message: message_text(&outcome)?,
                    replayed: true,
                }),
                SettleResult::Refused { code, detail, .. } => {
                    metrics::counter!("spendguard_settlements_total", "result" => "refused")
                        .increment(1);
                    Err(IntakeError::Refused { code, detail })
                }
            }
        })
    }

    fn invalid_settlement(
        &self,
        raw: Bytes,
        err: SettlementError,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            metrics::counter!("spendguard_settlements_total", "result" => "invalid").increment(1);
            if !self
                .parts
                .audit_refusal("spend.settlements", err.code)
                .await?
            {
                return Ok(());
            }
            let origin = self.parts.origin();
            with_retries("ledger record_invalid_settlement", || {
                self.parts
                    .ledger
                    .record_invalid_settlement(&raw, &err, &origin)
            })
            .await
            .map(|_| ())
        })
    }
}

/// The readiness check of a serve without Kafka: ready, and saying where decisions go.
pub fn no_kafka_check() -> super::backends::ExtraCheck {
    Arc::new(|| {
        Box::pin(async {
            super::views::ReadinessCheck {
                name: "kafka".into(),
                ok: true,
                detail: "not configured (--no-kafka): decisions and outcomes wait in the outbox"
                    .into(),
            }
        })
    })
}

/// The body as read, its rejection kept so it is answered in JSON.
type BodyBytes = Result<Bytes, BytesRejection>;

fn body_bytes(body: BodyBytes) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit_bytes: MAX_INTAKE_BODY_BYTES,
            }
        } else {
            ApiError::InvalidRequest(format!("cannot read the body: {}", e.body_text()))
        }
    })
}

/// 400 with the parser's code (the Kafka intake's dead-letter code).
fn invalid(err: &IntentError) -> ApiError {
    ApiError::Rejected {
        status: StatusCode::BAD_REQUEST,
        code: err.code.to_string(),
        message: crate::privacy::mask_pans(&err.message),
        field: err.field,
    }
}

fn refused(err: IntakeError) -> ApiError {
    match err {
        IntakeError::Store(e) => e.into(),
        IntakeError::Refused { code, detail } => ApiError::Rejected {
            // The same id with another payload is a conflict with what is recorded; every
            // other refusal is about the state of the intent the settlement names.
            status: if code == "idempotency_conflict" {
                StatusCode::CONFLICT
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            },
            message: crate::privacy::mask_pans(&detail),
            field: (code == "idempotency_conflict").then_some("id"),
            code,
        },
    }
}

/// The recorded message verbatim, with whether it was recorded before.
fn recorded(r: Recorded) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::HeaderName::from_static(REPLAYED_HEADER),
                HeaderValue::from_static(if r.replayed { "true" } else { "false" }),
            ),
        ],
        r.message,
    )
        .into_response()
}

/// Response header: `true` when the answer was recorded by an earlier delivery of the
/// same id (Stripe's name for the same thing).
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

async fn post_intent(State(state): State<ApiState>, body: BodyBytes) -> Result<Response, ApiError> {
    let raw = body_bytes(body)?;
    let intent = match parse_intent(&raw) {
        Ok(i) => i,
        Err(err) => {
            let answer = invalid(&err);
            state.intake.invalid_intent(raw, err).await?;
            return Err(answer);
        }
    };
    let r = state.intake.decide(intent).await.map_err(refused)?;
    Ok(recorded(r))
}

async fn post_settlement(
    State(state): State<ApiState>,
    body: BodyBytes,
) -> Result<Response, ApiError> {
    let raw = body_bytes(body)?;
    let settlement = match parse_settlement(&raw) {
        Ok(s) => s,
        Err(err) => {
            let answer = invalid(&err);
            state.intake.invalid_settlement(raw, err).await?;
            return Err(answer);
        }
    };
    let r = state.intake.settle(settlement).await.map_err(refused)?;
    Ok(recorded(r))
}

pub(crate) fn route_intents_post() -> axum::routing::MethodRouter<ApiState> {
    axum::routing::post(post_intent)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_INTAKE_BODY_BYTES))
}

pub(crate) fn route_settlements_post() -> axum::routing::MethodRouter<ApiState> {
    axum::routing::post(post_settlement)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_INTAKE_BODY_BYTES))
}

// ---- the documented shapes (OpenAPI) ----

/// A spend intent (SPEC §1), as on `spend.intents`. `amount` is a decimal string (a JSON
/// number is accepted too, read without going through a float).
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntentBody {
    /// Idempotency key: a retry with the same id and payload gets the recorded decision.
    pub intent_id: String,
    pub agent_id: String,
    pub entity_id: String,
    pub amount: String,
    /// ISO 4217.
    pub currency: String,
    pub category: String,
    pub beneficiary: BeneficiaryBody,
    /// PIX, CARD, WIRE, FEE or OTHER.
    pub purpose: String,
    /// Free-form, at most 4 KiB serialized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct BeneficiaryBody {
    pub id: String,
    /// Card number or bank account: personal data, sealed per data subject, masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// ISO 3166-1 alpha-2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

/// A settlement (SPEC §11), as on `spend.settlements`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SettlementBody {
    /// Idempotency key.
    pub settlement_id: String,
    pub intent_id: String,
    /// CAPTURE, VOID, REFUND or CANCEL.
    #[serde(rename = "type")]
    pub kind: String,
    /// Decimal string in the intent's currency (CAPTURE, REFUND; optional for VOID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    /// Required with `amount`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// CAPTURE only: releases the uncaptured remainder.
    #[serde(default, rename = "final")]
    pub is_final: bool,
    /// RFC 3339; informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &serde_json::Value) -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    }

    /// The documented shapes name exactly the fields the parsers take.
    #[test]
    fn documented_bodies_match_the_parsers() {
        let intent = br#"{"intentId":"i-1","agentId":"a","entityId":"e","amount":"1.00","currency":"BRL","category":"c",
            "beneficiary":{"id":"b","account":"x","country":"BR"},"purpose":"PIX","metadata":{"k":1}}"#;
        let parsed = serde_json::to_value(parse_intent(intent).unwrap()).unwrap();
        let doc: IntentBody = serde_json::from_slice(intent).unwrap();
        let doc = serde_json::to_value(doc).unwrap();
        assert_eq!(keys(&parsed), keys(&doc));
        assert_eq!(keys(&parsed["beneficiary"]), keys(&doc["beneficiary"]));

        let settlement = br#"{"settlementId":"s-1","intentId":"i-1","type":"CAPTURE","amount":"1.00","currency":"BRL",
            "final":true,"occurredAt":"2026-11-30T14:00:00Z","metadata":{"k":1}}"#;
        let parsed = serde_json::to_value(parse_settlement(settlement).unwrap()).unwrap();
        let doc: SettlementBody = serde_json::from_slice(settlement).unwrap();
        assert_eq!(keys(&parsed), keys(&serde_json::to_value(doc).unwrap()));
    }

    /// A systemic fault (the deployment, not the request) is answered at once as 503
    /// (retry later), never as a permanent 500; a permanent one stays a 500.
    #[tokio::test]
    async fn systemic_faults_answer_retry_later() {
        let mut calls = 0;
        let r: Result<(), StoreError> = with_retries("ledger decide", || {
            calls += 1;
            async { Err(LedgerError::Setup("role may not migrate".into())) }
        })
        .await;
        let Err(StoreError::Unavailable(m)) = r else {
            panic!("{r:?}")
        };
        assert_eq!(calls, 1, "nothing to gain from retrying within the request");
        assert!(
            m.contains("database setup") && m.contains("retry later"),
            "{m}"
        );
        assert!(
            !m.contains("role may not migrate"),
            "the server's words stay in the log: {m}"
        );
        assert_eq!(
            refused(IntakeError::Store(StoreError::Unavailable(m))).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let r: Result<(), StoreError> = with_retries("ledger decide", || async {
            Err(LedgerError::Bug("no sequence reserved".into()))
        })
        .await;
        assert!(matches!(r, Err(StoreError::Other(_))), "{r:?}");
    }

    #[test]
    fn refusals_keep_the_intake_codes() {
        let err = parse_intent(b"{").unwrap_err();
        let api = invalid(&err);
        assert_eq!(api.status(), StatusCode::BAD_REQUEST);
        assert_eq!(api.code(), "invalid_json");
        let conflict = refused(IntakeError::Refused {
            code: "idempotency_conflict".into(),
            detail: "x".into(),
        });
        assert_eq!(conflict.status(), StatusCode::CONFLICT);
        let unknown = refused(IntakeError::Refused {
            code: "unknown_intent".into(),
            detail: "x".into(),
        });
        assert_eq!(unknown.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(unknown.code(), "unknown_intent");
        assert_eq!(
            refused(IntakeError::Store(disabled())).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
