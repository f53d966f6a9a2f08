//! Router tests in-process: authentication, roles, JSON errors, body limit, and that the
//! routes served are exactly the documented ones. The backing traits are implemented
//! in memory here; the same routes against the real ledger are in `tests/api_*.rs`.

use super::*;
use axum::body::Body;
use axum::http::{Method, Request as HttpRequest, StatusCode};
use chrono::TimeZone;
use std::sync::Mutex;
use tower::ServiceExt;

struct MemLedger;
impl LedgerQueries for MemLedger {
    fn notifications(
        &self,
        _: Option<String>,
        _: usize,
    ) -> BoxFuture<'_, Result<Vec<notifications::DeliveryView>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn decision<'a>(
        &'a self,
        intent_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<DecisionView>, StoreError>> {
        Box::pin(async move {
            Ok((intent_id == "i-1").then(|| DecisionView {
                intent_id: "i-1".into(),
                agent_id: "a-1".into(),
                entity_id: "e-1".into(),
                amount: "10.00".into(),
                currency: "BRL".into(),
                category: "utility".into(),
                purpose: "PIX".into(),
                effect: crate::decision::Effect::Allow,
                approvals_required: 0,
                reasons: vec![],
                policy: None,
                usage: None,
                decided_at: Utc.timestamp_opt(0, 0).unwrap(),
                ledger_seq: 1,
                votes: vec![],
                outcome: None,
                authorization: Some(backends::authorization_view(&partly_captured())),
            }))
        })
    }
    fn agent_entity<'a>(
        &'a self,
        agent_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move { Ok((agent_id == "a-1").then(|| "e-1".to_string())) })
    }
    fn window_amounts<'a>(
        &'a self,
        _: &'a str,
        _: Windows,
        _: Tz,
        _: &'a str,
    ) -> BoxFuture<'a, Result<WindowAmounts, StoreError>> {
        Box::pin(async move {
            Ok(WindowAmounts {
                daily_spent: Decimal::new(30000, 2),
                daily_reserved: Decimal::new(25000, 2),
                monthly_spent: Decimal::new(90000, 2),
                monthly_reserved: Decimal::new(25000, 2),
            })
        })
    }
    fn pending_approvals(
        &self,
        _: usize,
    ) -> BoxFuture<'_, Result<Vec<PendingApprovalView>, StoreError>> {
        Box::pin(async { Ok(vec![]) })
    }
    fn limit_usage(
        &self,
        _: Arc<CompiledPolicy>,
        _: Option<String>,
        _: String,
    ) -> BoxFuture<'_, Result<LimitUsageReport, StoreError>> {
        Box::pin(async {
            Ok(LimitUsageReport {
                as_of: Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap(),
                limits: vec![],
            })
        })
    }
}

struct MemPolicies;
impl PolicyCatalog for MemPolicies {
    fn active(&self) -> Vec<PolicyView> {
        vec![PolicyView {
            name: "p".into(),
            version: "1".into(),
            sha256: "00".repeat(32),
            currency: "BRL".into(),
            timezone: "America/Sao_Paulo".into(),
        }]
    }
    fn limits_for(&self, _: &str, entity_id: &str) -> Option<PolicyLimits> {
        (entity_id == "e-1").then(|| PolicyLimits {
            identity: PolicyIdentity {
                name: "p".into(),
                version: "1".into(),
                sha256: "00".repeat(32),
            },
            currency: crate::money::currency("BRL").unwrap(),
            tz: chrono_tz::America::Sao_Paulo,
            daily_cap: Some(Decimal::new(50000, 2)),
            monthly_cap: None,
        })
    }
    fn entity_policies(&self, entity_id: &str, _: &[String]) -> Vec<Arc<CompiledPolicy>> {
        if entity_id != "e-1" {
            return Vec::new();
        }
        let text = "name: p\ncurrency: BRL\ntimezone: America/Sao_Paulo\ncaps: { perTxn: \"10.00\", daily: \"100.00\", monthly: \"1000.00\" }\nlimits:\n  - { name: ew, window: { calendar: week }, amount: \"50.00\", scope: entity }\n";
        vec![Arc::new(CompiledPolicy::parse(text, "test").unwrap())]
    }
}

#[derive(Default)]
struct MemKill(Mutex<Vec<KillSwitchChange>>);
impl KillSwitchControl for MemKill {
    fn status(&self) -> BoxFuture<'_, Result<KillSwitchStatus, StoreError>> {
        Box::pin(async { Ok(KillSwitchStatus { active: vec![] }) })
    }
    fn set(
        &self,
        change: KillSwitchChange,
    ) -> BoxFuture<'_, Result<KillSwitchScopeView, StoreError>> {
        Box::pin(async move {
            self.0.lock().unwrap().push(change.clone());
            Ok(KillSwitchScopeView {
                scope: change.scope.to_string(),
                on: change.on,
                actor: change.actor,
                reason: change.reason,
                since: Utc.timestamp_opt(0, 0).unwrap(),
            })
        })
    }
}

/// Rates in memory: what `set` received, and the rows it answers.
#[derive(Default)]
struct MemFx(Mutex<Vec<FxRateChange>>);
impl FxRateControl for MemFx {
    fn rates(&self) -> BoxFuture<'_, Result<Vec<FxRateView>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .0
                .lock()
                .unwrap()
                .iter()
                .enumerate()
                .map(|(i, c)| FxRateView {
                    pair: c.rate.pair(),
                    rate: c.rate.rate.to_string(),
                    set_at: Utc.timestamp_opt(0, 0).unwrap(),
                    ledger_seq: 100 + i as i64,
                })
                .collect())
        })
    }
    fn set(&self, change: FxRateChange) -> BoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(async move {
            let mut changes = self.0.lock().unwrap();
            changes.push(change);
            Ok(100 + changes.len() as i64 - 1)
        })
    }
}

struct NotReady;
impl ReadinessProbe for NotReady {
    fn check(&self) -> BoxFuture<'_, Vec<ReadinessCheck>> {
        Box::pin(async {
            vec![
                ReadinessCheck {
                    name: "postgres".into(),
                    ok: true,
                    detail: "ok".into(),
                },
                ReadinessCheck {
                    name: "partitions".into(),
                    ok: false,
                    detail: "none assigned".into(),
                },
            ]
        })
    }
}

const READER: &str = "reader-token";
const OPERATOR: &str = "operator-token";
const AUDITOR: &str = "auditor-token";

fn state(kill: Arc<MemKill>) -> ApiState {
    state_with_fx(kill, Arc::default())
}

fn state_with_fx(kill: Arc<MemKill>, fx: Arc<MemFx>) -> ApiState {
    let tokens = TokenStore::default()
        .with_hash("dash", Role::Reader, &auth::hash_token(READER))
        .and_then(|t| t.with_hash("ops-alice", Role::Operator, &auth::hash_token(OPERATOR)))
        .and_then(|t| t.with_hash("audit-bob", Role::Auditor, &auth::hash_token(AUDITOR)))
        .unwrap();
    ApiState {
        tokens: Arc::new(tokens),
        ledger: Arc::new(MemLedger),
        policies: Arc::new(MemPolicies),
        kill_switch: kill,
        fx_rates: fx,
        readiness: Arc::new(NotReady),
        approvals: Arc::new(crate::api::approvals::Disabled),
        intake: Arc::new(super::intake::Disabled),
        metrics: crate::telemetry::metrics_handle(),
        chain: Arc::default(),
        policy_lifecycle: Arc::new(MemLifecycle),
        clock: Arc::new(|| Utc.with_ymd_and_hms(2026, 11, 25, 15, 0, 0).unwrap()),
    }
}

async fn call(
    app: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let mut req = HttpRequest::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Body::from(body.unwrap_or("").to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(
        String::from_utf8_lossy(&bytes).into(),
    ));
    (status, json)
}

/// A valid body for each POST route.
fn valid_body(path: &str) -> &'static str {
    match path {
        "/v1/kill-switch" => r#"{"scope":"agent:a-1","on":true,"reason":"runaway"}"#,
        "/v1/fx-rates" => r#"{"pair":"USD/BRL","rate":"5.4321","reason":"daily fixing"}"#,
        "/v1/intents" => {
            r#"{"intentId":"i-1","agentId":"a-1","entityId":"e-1","amount":"1.00","currency":"BRL","category":"c","beneficiary":{"id":"b"},"purpose":"PIX"}"#
        }
        "/v1/settlements" => {
            r#"{"settlementId":"s-1","intentId":"i-1","type":"CAPTURE","amount":"1.00","currency":"BRL"}"#
        }
        "/v1/approvals/{intentId}/votes" => {
            r#"{"intentId":"i-1","approverId":"alice","vote":"APPROVE","signature":"eA==","signedAt":"2026-11-30T12:00:00Z"}"#
        }
        "/v1/policies/{name}/rollback" => r#"{"revision":"1","reason":"too strict"}"#,
        other => panic!("no test body for POST {other}: add one"),
    }
}

/// Two revisions of policy `p`; a rollback answers revision 3.
struct MemLifecycle;

fn mem_revision(revision: i64, version: &str) -> crate::ledger::policy_history::PolicyRevision {
    crate::ledger::policy_history::PolicyRevision {
        revision,
        seq: revision,
        activated_at: Utc.with_ymd_and_hms(2026, 11, 25, 15, 0, 0).unwrap(),
        actor: "serve-a".into(),
        source: "cli".into(),
        version: version.into(),
        sha256: format!("{revision:064}"),
        rollback_to: None,
        reason: None,
    }
}

impl super::policy_lifecycle::PolicyLifecycle for MemLifecycle {
    fn history(
        &self,
        _: String,
    ) -> BoxFuture<'_, Result<Vec<crate::ledger::policy_history::RevisionContent>, ApiError>> {
        Box::pin(async {
            Ok(vec![
                (mem_revision(1, "1"), r#"{"name":"p","version":"1"}"#.into()),
                (mem_revision(2, "2"), r#"{"name":"p","version":"2"}"#.into()),
            ])
        })
    }
    fn rollback(
        &self,
        _: super::policy_lifecycle::RollbackCall,
    ) -> BoxFuture<'_, Result<super::policy_lifecycle::RollbackView, ApiError>> {
        Box::pin(async {
            Ok(super::policy_lifecycle::RollbackView {
                rolled_back_to: 1,
                activated: mem_revision(3, "1"),
                file: "p.yaml".into(),
            })
        })
    }
}

fn concrete(path: &str) -> String {
    path.replace("{name}/diff", "{name}/diff?from=1&to=2")
        .replace("{name}", "p")
        .replace("{intentId}", "i-1")
        .replace("{agentId}", "a-1")
        .replace("{entityId}", "e-1")
}

#[tokio::test]
async fn every_route_enforces_its_roles() {
    let app = router(state(Arc::default()));
    for op in openapi::OPERATIONS {
        let method = Method::from_bytes(op.method.to_uppercase().as_bytes()).unwrap();
        let path = concrete(op.path);
        let b = (op.method == "post").then(|| valid_body(op.path));
        let (status, json) = call(&app, method.clone(), &path, None, b).await;
        if op.roles.is_empty() {
            assert!(
                status.is_success() || status == StatusCode::SERVICE_UNAVAILABLE,
                "{path}: {status}"
            );
            continue;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} without a token");
        assert_eq!(json["error"]["code"], "unauthorized");
        let (status, _) = call(&app, method.clone(), &path, Some("wrong-token"), b).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{path} with an unknown token"
        );
        for (token, role) in [
            (READER, Role::Reader),
            (OPERATOR, Role::Operator),
            (AUDITOR, Role::Auditor),
        ] {
            let (status, json) = call(&app, method.clone(), &path, Some(token), b).await;
            if op.roles.contains(&role) {
                assert_eq!(
                    status,
                    StatusCode::OK,
                    "{} {path} as {role:?}: {json}",
                    op.method
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{} {path} as {role:?}",
                    op.method
                );
                assert_eq!(json["error"]["code"], "forbidden");
            }
        }
    }
}

#[tokio::test]
async fn errors_are_json_with_stable_codes() {
    let kill = Arc::new(MemKill::default());
    let app = router(state(kill.clone()));
    let (s, j) = call(&app, Method::GET, "/v1/decisions/nope", Some(READER), None).await;
    assert_eq!(
        (s, j["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (s, j) = call(&app, Method::GET, "/v1/nowhere", Some(READER), None).await;
    assert_eq!(
        (s, j["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (s, j) = call(
        &app,
        Method::DELETE,
        "/v1/kill-switch",
        Some(OPERATOR),
        None,
    )
    .await;
    assert_eq!(
        (s, j["error"]["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
    let (s, j) = call(
        &app,
        Method::GET,
        "/v1/agents/ghost/usage",
        Some(READER),
        None,
    )
    .await;
    assert_eq!(
        (s, j["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (s, j) = call(
        &app,
        Method::GET,
        "/v1/approvals?status=closed",
        Some(OPERATOR),
        None,
    )
    .await;
    assert_eq!(
        (s, j["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    let (s, _) = call(
        &app,
        Method::GET,
        "/v1/approvals?limit=0",
        Some(OPERATOR),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    for bad in [
        r#"{"scope":"team:x","on":true,"reason":"r"}"#,
        r#"{"scope":"global","on":true,"reason":""}"#,
        r#"{"scope":"global","on":"yes","reason":"r"}"#,
        r#"{"scope":"global","on":true,"reason":"r","extra":1}"#,
        "not json",
    ] {
        let (s, j) = call(
            &app,
            Method::POST,
            "/v1/kill-switch",
            Some(OPERATOR),
            Some(bad),
        )
        .await;
        assert_eq!(
            (s, j["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_request")),
            "{bad}"
        );
    }
    // Nothing invalid reached the kill switch.
    assert!(kill.0.lock().unwrap().is_empty());
}

/// Found by `fuzz_http_paths_and_queries`: an id that percent-decodes to invalid UTF-8
/// was refused by axum's plain-text rejection, not a JSON error with a code.
#[tokio::test]
async fn undecodable_path_ids_get_json_errors() {
    let app = router(state(Arc::default()));
    for path in [
        "/v1/decisions/%ff",
        "/v1/decisions/a%c3",
        "/v1/agents/%ff/usage",
        "/v1/agents/%ed%a0%80/usage?entity=e-1",
    ] {
        let (s, j) = call(&app, Method::GET, path, Some(READER), None).await;
        assert_eq!(
            (s, j["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_request")),
            "{path}: {j}"
        );
    }
}

#[tokio::test]
async fn oversized_and_non_json_bodies_are_refused() {
    let kill = Arc::new(MemKill::default());
    let app = router(state(kill.clone()));
    let huge = format!(
        r#"{{"scope":"global","on":true,"reason":"{}"}}"#,
        "x".repeat(MAX_REQUEST_BODY_BYTES)
    );
    let (s, j) = call(
        &app,
        Method::POST,
        "/v1/kill-switch",
        Some(OPERATOR),
        Some(&huge),
    )
    .await;
    assert_eq!(
        (s, j["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
    let req = HttpRequest::builder()
        .method(Method::POST)
        .uri("/v1/kill-switch")
        .header("authorization", format!("Bearer {OPERATOR}"))
        .header("content-type", "text/plain")
        .body(Body::from("scope=global"))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(kill.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn kill_switch_actor_is_the_token_name() {
    let kill = Arc::new(MemKill::default());
    let app = router(state(kill.clone()));
    let (s, j) = call(
        &app,
        Method::POST,
        "/v1/kill-switch",
        Some(OPERATOR),
        Some(r#"{"scope":"entity:e-1","on":true,"reason":"fraud"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{j}");
    assert_eq!(j["actor"], "api:ops-alice");
    let recorded = kill.0.lock().unwrap().clone();
    assert_eq!(
        recorded,
        vec![KillSwitchChange {
            scope: crate::kill_switch::Scope::Entity("e-1".into()),
            on: true,
            actor: "api:ops-alice".into(),
            reason: "fraud".into()
        }]
    );
}

#[tokio::test]
async fn fx_rates_are_set_by_operators_with_their_token_name_and_listed() {
    let fx = Arc::new(MemFx::default());
    let app = router(state_with_fx(Arc::default(), fx.clone()));
    let (s, j) = call(
        &app,
        Method::POST,
        "/v1/fx-rates",
        Some(OPERATOR),
        Some(r#"{"pair":"USD/BRL","rate":"5.43210","reason":"BCB PTAX fixing"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{j}");
    // Read exactly (never through a float), answered normalized, with the event's seq.
    assert_eq!(
        j,
        serde_json::json!({"pair": "USD/BRL", "rate": "5.4321", "seq": 100})
    );
    let recorded = fx.0.lock().unwrap().clone();
    assert_eq!(
        recorded,
        vec![FxRateChange {
            rate: crate::money::parse_fx_rate("USD/BRL", "5.4321").unwrap(),
            actor: "api:ops-alice".into(),
            reason: "BCB PTAX fixing".into(),
        }]
    );
    for token in [READER, AUDITOR, OPERATOR] {
        let (s, j) = call(&app, Method::GET, "/v1/fx-rates", Some(token), None).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(
            j,
            serde_json::json!({"rates": [{"pair": "USD/BRL", "rate": "5.4321",
                "setAt": "1970-01-01T00:00:00Z", "ledgerSeq": 100}]})
        );
    }
    // Only operators set rates.
    for token in [READER, AUDITOR] {
        let (s, j) = call(
            &app,
            Method::POST,
            "/v1/fx-rates",
            Some(token),
            Some(r#"{"pair":"USD/BRL","rate":"6","reason":"r"}"#),
        )
        .await;
        assert_eq!(
            (s, j["error"]["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden"))
        );
    }
    assert_eq!(fx.0.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn invalid_fx_rates_are_400_with_a_clear_message() {
    let fx = Arc::new(MemFx::default());
    let app = router(state_with_fx(Arc::default(), fx.clone()));
    let long_reason = format!(
        r#"{{"pair":"USD/BRL","rate":"5","reason":"{}"}}"#,
        "r".repeat(crate::money::MAX_FX_REASON_LEN + 1)
    );
    for (body, says) in [
        (
            r#"{"pair":"USD/BRL","rate":5.4321,"reason":"r"}"#,
            "JSON numbers are refused",
        ),
        (
            r#"{"pair":"USD/BRL","rate":5,"reason":"r"}"#,
            "decimal string",
        ),
        (
            r#"{"pair":"USD/BRL","rate":null,"reason":"r"}"#,
            "decimal string",
        ),
        (r#"{"pair":"USDBRL","rate":"5","reason":"r"}"#, "BASE/QUOTE"),
        (r#"{"pair":"usd/brl","rate":"5","reason":"r"}"#, "ISO 4217"),
        (r#"{"pair":"USD/XYZ","rate":"5","reason":"r"}"#, "ISO 4217"),
        (
            r#"{"pair":"BRL/BRL","rate":"5","reason":"r"}"#,
            "two different currencies",
        ),
        (r#"{"pair":"USD/BRL","rate":"0","reason":"r"}"#, "positive"),
        (
            r#"{"pair":"USD/BRL","rate":"-5","reason":"r"}"#,
            "plain decimal",
        ),
        (
            r#"{"pair":"USD/BRL","rate":"5e2","reason":"r"}"#,
            "plain decimal",
        ),
        (
            r#"{"pair":"USD/BRL","rate":"1_000","reason":"r"}"#,
            "plain decimal",
        ),
        (
            r#"{"pair":"USD/BRL","rate":"NaN","reason":"r"}"#,
            "plain decimal",
        ),
        (
            r#"{"pair":"USD/BRL","rate":"1.000000000001","reason":"r"}"#,
            "12 significant digits",
        ),
        (r#"{"pair":"USD/BRL","rate":"5","reason":""}"#, "reason"),
        (r#"{"pair":"USD/BRL","rate":"5","reason":"   "}"#, "reason"),
        (r#"{"pair":"USD/BRL","rate":"5","reason":"a\nb"}"#, "reason"),
        (long_reason.as_str(), "reason"),
        (r#"{"pair":"USD/BRL","rate":"5"}"#, "reason"),
        (
            r#"{"pair":"USD/BRL","rate":"5","reason":"r","actor":"x"}"#,
            "unknown field",
        ),
        ("[]", "invalid JSON body"),
    ] {
        let (s, j) = call(
            &app,
            Method::POST,
            "/v1/fx-rates",
            Some(OPERATOR),
            Some(body),
        )
        .await;
        assert_eq!(
            (s, j["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_request")),
            "{body}: {j}"
        );
        let message = j["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    // Nothing invalid reached the ledger.
    assert!(fx.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn usage_reports_windows_in_policy_zone_and_currency() {
    let app = router(state(Arc::default()));
    let (s, j) = call(
        &app,
        Method::GET,
        "/v1/agents/a-1/usage",
        Some(READER),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{j}");
    assert_eq!(j["currency"], "BRL");
    assert_eq!(j["timezone"], "America/Sao_Paulo");
    let day = &j["windows"][0];
    assert_eq!(day["period"], "2026-11-25");
    assert_eq!(day["spent"], "300.00");
    assert_eq!(day["reserved"], "250.00");
    // 500 - 300 - 250 would be negative: remaining is floored at zero.
    assert_eq!(day["remaining"], "0.00");
    // Next local midnight in São Paulo (UTC-3, no DST since 2019).
    assert_eq!(day["resetsAt"], "2026-11-26T03:00:00Z");
    let month = &j["windows"][1];
    assert_eq!(month["period"], "2026-11");
    assert_eq!(month["spent"], "900.00");
    assert!(
        month.get("remaining").is_none(),
        "no monthly cap, no remaining"
    );
    assert_eq!(month["resetsAt"], "2026-12-01T03:00:00Z");
}

/// 10.00 BRL authorized, 4 captured, 1.5 voided, 1 refunded: 4.50 outstanding.
fn partly_captured() -> crate::ledger::authorization::AuthorizationState {
    use crate::ledger::authorization::AuthorizationState;
    use crate::settlement::SettlementType::*;
    let day = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
    let open = AuthorizationState::open(
        Decimal::new(1000, 2),
        "BRL",
        "America/Sao_Paulo",
        day,
        NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
        Utc.with_ymd_and_hms(2026, 12, 2, 15, 0, 0).unwrap(),
    );
    let a = open
        .settle(Capture, Some(Decimal::new(4, 0)), false, false)
        .unwrap()
        .after;
    let a = a
        .settle(Void, Some(Decimal::new(15, 1)), false, false)
        .unwrap()
        .after;
    a.settle(Refund, Some(Decimal::ONE), false, false)
        .unwrap()
        .after
}

#[tokio::test]
async fn a_decision_carries_its_authorization_totals() {
    let app = router(state(Arc::default()));
    let (s, j) = call(&app, Method::GET, "/v1/decisions/i-1", Some(READER), None).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    // Amounts in the currency's scale, like every amount of the API.
    assert_eq!(
        j["authorization"],
        serde_json::json!({
            "authorized": "10.00", "captured": "4.00", "voided": "1.50", "refunded": "1.00",
            "outstanding": "4.50", "final": false, "expired": false,
            "expiresAt": "2026-12-02T15:00:00Z"
        })
    );
    let mut expired = partly_captured();
    expired = expired.expire(expired.expires_at).unwrap().0;
    let v = backends::authorization_view(&expired);
    assert_eq!((v.outstanding.as_str(), v.expired), ("0.00", true));
}

#[tokio::test]
async fn readiness_is_503_until_every_check_passes() {
    let app = router(state(Arc::default()));
    let (s, j) = call(&app, Method::GET, "/readyz", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(j["ready"], false);
    assert_eq!(j["checks"][1]["name"], "partitions");
}

#[tokio::test]
async fn served_routes_are_exactly_the_documented_ones() {
    let app = router(state(Arc::default()));
    let (s, doc) = call(&app, Method::GET, "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let paths = doc["paths"].as_object().unwrap();
    let mut documented = 0;
    for (path, methods) in paths {
        for method in ["get", "post", "put", "delete", "patch"] {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, _) = call(&app, m, &concrete(path), Some(OPERATOR), Some("{}")).await;
            if methods.get(method).is_some() {
                documented += 1;
                assert_ne!(
                    status,
                    StatusCode::NOT_FOUND,
                    "{method} {path} documented but not routed"
                );
                assert_ne!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} documented but not routed"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} routed but not documented"
                );
            }
        }
    }
    assert_eq!(documented, openapi::OPERATIONS.len());
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let app = router(state(Arc::default()));
    let (s, _) = call(&app, Method::GET, "/v1/decisions/i-1", Some(READER), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, text) = call(&app, Method::GET, "/metrics", Some(AUDITOR), None).await;
    assert_eq!(s, StatusCode::OK);
    let text = text.as_str().unwrap().to_string();
    assert!(
        text.contains(r#"spendguard_http_requests_total{route="/v1/decisions/{intentId}",method="GET",status="200"}"#),
        "{text}"
    );
    assert!(!text.contains("i-1"), "raw ids must not become labels");
    assert!(!text.contains(READER), "tokens never appear");
}

/// `payment_service` reaches the intake routes and nothing else; without an intake
/// behind the API they answer 503, an invalid body still gets its parser code.
#[tokio::test]
async fn payment_service_tokens_only_post_intents_and_settlements() {
    const PAYMENTS: &str = "payments-secret";
    let mut state = state(Arc::default());
    state.tokens = Arc::new(
        TokenStore::default()
            .with_hash("pay", Role::PaymentService, &auth::hash_token(PAYMENTS))
            .unwrap(),
    );
    let app = router(state);
    for op in openapi::OPERATIONS {
        if op.roles.is_empty() {
            continue;
        }
        let method = Method::from_bytes(op.method.to_uppercase().as_bytes()).unwrap();
        let mine = op.roles.contains(&Role::PaymentService);
        // The role gate answers before any body is read.
        let body = (op.method == "post").then(|| if mine { valid_body(op.path) } else { "{}" });
        let (status, json) = call(&app, method, &concrete(op.path), Some(PAYMENTS), body).await;
        if mine {
            assert_eq!(op.roles, [Role::PaymentService], "{}", op.path);
            assert_eq!(
                status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{}: {json}",
                op.path
            );
        } else {
            assert_eq!(status, StatusCode::FORBIDDEN, "{} {}", op.method, op.path);
        }
    }
    let (status, json) = call(&app, Method::POST, "/v1/intents", Some(PAYMENTS), Some("{")).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "not audited, not answered: {json}"
    );
}

/// Records what the approver routes asked for; refuses every vote as `bad_signature`.
#[derive(Default)]
struct MemDesk {
    asked: Mutex<Vec<String>>,
}

impl approvals::ApprovalDesk for MemDesk {
    fn pending_for<'a>(
        &'a self,
        approver_id: &'a str,
        _: usize,
    ) -> BoxFuture<'a, Result<Vec<PendingApprovalView>, ApiError>> {
        self.asked
            .lock()
            .unwrap()
            .push(format!("inbox {approver_id}"));
        Box::pin(async { Ok(Vec::new()) })
    }
    fn submit<'a>(
        &'a self,
        approver_id: &'a str,
        intent_id: &'a str,
        _: axum::body::Bytes,
    ) -> BoxFuture<'a, Result<crate::ledger::VoteResult, StoreError>> {
        self.asked
            .lock()
            .unwrap()
            .push(format!("vote {approver_id} {intent_id}"));
        Box::pin(async {
            Ok(crate::ledger::VoteResult::Refused {
                seq: 9,
                reason: "bad_signature".into(),
                detail: "signature does not verify".into(),
            })
        })
    }
}

/// An approver token reaches its inbox and the vote route as its bound approverId, and
/// nothing else; a refused vote is a 422 with the refusal's code.
#[tokio::test]
async fn approver_tokens_act_as_their_bound_approver_only() {
    const ALICE: &str = "alice-secret";
    const UNBOUND: &str = "unbound-secret";
    let desk = Arc::new(MemDesk::default());
    let mut state = state(Arc::default());
    state.approvals = desk.clone();
    state.tokens = Arc::new(
        TokenStore::default()
            .with_approver("alice-phone", "alice", &auth::hash_token(ALICE))
            .unwrap()
            .with_hash("odd", Role::Approver, &auth::hash_token(UNBOUND))
            .unwrap(),
    );
    let app = router(state);
    let (s, _) = call(
        &app,
        Method::GET,
        "/v1/approvals?status=pending",
        Some(ALICE),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let body = valid_body("/v1/approvals/{intentId}/votes");
    let (s, j) = call(
        &app,
        Method::POST,
        "/v1/approvals/i-1/votes",
        Some(ALICE),
        Some(body),
    )
    .await;
    assert_eq!(
        (s, j["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("bad_signature"))
    );
    assert!(
        j["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ledgerSeq 9"),
        "{j}"
    );
    let (s, _) = call(&app, Method::GET, "/v1/decisions/i-1", Some(ALICE), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = call(&app, Method::GET, "/v1/approvals", Some(UNBOUND), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        *desk.asked.lock().unwrap(),
        ["inbox alice", "vote alice i-1"]
    );
}
