//! The HTTP API's request bodies under hostile input, in-process (tower `oneshot`, as in
//! `src/api/tests.rs`): every POST body (kill switch, exchange rates) is refused with a
//! 4xx JSON error carrying a known code, or accepted as a valid request; never a 5xx,
//! never a panic.

use super::mutate::{self, hostile_input};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use futures::future::BoxFuture;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use spendguard::api::views::*;
use spendguard::api::{
    self, ApiState, FxRateChange, FxRateControl, KillSwitchChange, KillSwitchControl,
    LedgerQueries, PolicyCatalog, PolicyLimits, ReadinessProbe, Role, StoreError, TokenStore,
    WindowAmounts,
};
use spendguard::window::Windows;
use std::sync::{Arc, Mutex};
use tower::ServiceExt;

struct NoLedger;
impl LedgerQueries for NoLedger {
    fn decision<'a>(
        &'a self,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Option<DecisionView>, StoreError>> {
        Box::pin(async { Ok(None) })
    }
    fn agent_entity<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async { Ok(None) })
    }
    fn window_amounts<'a>(
        &'a self,
        _: &'a str,
        _: Windows,
        _: chrono_tz::Tz,
        _: &'a str,
    ) -> BoxFuture<'a, Result<WindowAmounts, StoreError>> {
        Box::pin(async { Ok(WindowAmounts::default()) })
    }
    fn pending_approvals(
        &self,
        _: usize,
    ) -> BoxFuture<'_, Result<Vec<PendingApprovalView>, StoreError>> {
        Box::pin(async { Ok(vec![]) })
    }
}

struct NoPolicies;
impl PolicyCatalog for NoPolicies {
    fn active(&self) -> Vec<PolicyView> {
        vec![]
    }
    fn limits_for(&self, _: &str, _: &str) -> Option<PolicyLimits> {
        None
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
                since: chrono::DateTime::UNIX_EPOCH,
            })
        })
    }
}

#[derive(Default)]
struct MemFx(Mutex<Vec<FxRateChange>>);
impl FxRateControl for MemFx {
    fn rates(&self) -> BoxFuture<'_, Result<Vec<FxRateView>, StoreError>> {
        Box::pin(async { Ok(vec![]) })
    }
    fn set(&self, change: FxRateChange) -> BoxFuture<'_, Result<i64, StoreError>> {
        self.0.lock().unwrap().push(change);
        Box::pin(async { Ok(1) })
    }
}

/// What the intake routes handed on: valid intents / settlements, audited invalid bodies.
#[derive(Default)]
struct MemIntake(Mutex<Vec<&'static str>>);
impl api::intake::Intake for MemIntake {
    fn decide(
        &self,
        intent: spendguard::intent::SpendIntent,
    ) -> BoxFuture<'_, Result<api::intake::Recorded, api::intake::IntakeError>> {
        self.0.lock().unwrap().push("decide");
        let message = serde_json::json!({"intentId": intent.intent_id, "effect": "ALLOW"});
        Box::pin(async move {
            Ok(api::intake::Recorded {
                message: message.to_string(),
                replayed: false,
            })
        })
    }
    fn invalid_intent(
        &self,
        _: axum::body::Bytes,
        _: spendguard::intent::IntentError,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.0.lock().unwrap().push("invalid_intent");
        Box::pin(async { Ok(()) })
    }
    fn settle(
        &self,
        s: spendguard::settlement::Settlement,
    ) -> BoxFuture<'_, Result<api::intake::Recorded, api::intake::IntakeError>> {
        self.0.lock().unwrap().push("settle");
        let message = serde_json::json!({"intentId": s.intent_id, "outcome": "CAPTURED"});
        Box::pin(async move {
            Ok(api::intake::Recorded {
                message: message.to_string(),
                replayed: false,
            })
        })
    }
    fn invalid_settlement(
        &self,
        _: axum::body::Bytes,
        _: spendguard::settlement::SettlementError,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.0.lock().unwrap().push("invalid_settlement");
        Box::pin(async { Ok(()) })
    }
}

struct Ready;
impl ReadinessProbe for Ready {
    fn check(&self) -> BoxFuture<'_, Vec<ReadinessCheck>> {
        Box::pin(async { vec![] })
    }
}

const OPERATOR: &str = "operator-token";
const READER: &str = "reader-token";
const PAYMENTS: &str = "payments-token";

/// Every code `ApiError` has (src/api/error.rs).
const API_CODES: &[&str] = &[
    "unauthorized",
    "forbidden",
    "not_found",
    "invalid_request",
    "payload_too_large",
    "unsupported_media_type",
    "method_not_allowed",
    "unavailable",
];

const CONTENT_TYPES: &[Option<&str>] = &[
    Some("application/json"),
    Some("application/json"),
    Some("application/json"),
    Some("application/json; charset=utf-8"),
    Some("application/vnd.spendguard+json"),
    Some("APPLICATION/JSON"),
    Some("text/plain"),
    Some("application/x-www-form-urlencoded"),
    Some("multipart/form-data; boundary=x"),
    Some("application/json; charset=latin1"),
    None,
];

fn post_seeds() -> Vec<String> {
    vec![
        r#"{"scope":"agent:a-1","on":true,"reason":"runaway"}"#.to_string(),
        r#"{"scope":"global","on":false,"reason":"incident closed"}"#.to_string(),
        r#"{"scope":"entity:acme-br","on":true,"reason":"fraud suspected on ç"}"#.to_string(),
        r#"{"pair":"USD/BRL","rate":"5.4321","reason":"daily fixing"}"#.to_string(),
        r#"{"pair":"EUR/JPY","rate":"161.25","reason":"BCE reference ç"}"#.to_string(),
        r#"{"intentId":"i-1","agentId":"agent-42","entityId":"acme-br","amount":"250.00","currency":"BRL","category":"utility","beneficiary":{"id":"utility:light","account":"4111 1111 1111 1111","country":"BR"},"purpose":"PIX","metadata":{"k":[1,2]}}"#.to_string(),
        r#"{"settlementId":"s-1","intentId":"i-1","type":"CAPTURE","amount":"80.00","currency":"BRL","final":true}"#.to_string(),
        r#"{"settlementId":"s-2","intentId":"i-1","type":"VOID"}"#.to_string(),
    ]
}

#[derive(Debug, Clone)]
struct Call {
    path: String,
    token: Option<&'static str>,
    content_type: Option<&'static str>,
    body: Vec<u8>,
}

fn call() -> impl Strategy<Value = Call> {
    let mut paths: Vec<String> = api::openapi::OPERATIONS
        .iter()
        .map(|op| {
            op.path
                .replace("{intentId}", "i-1")
                .replace("{agentId}", "a-1")
        })
        .collect();
    paths.push("/v1/nowhere".into());
    let path = prop_oneof![
        4 => Just("/v1/kill-switch".to_string()),
        2 => Just("/v1/fx-rates".to_string()),
        2 => Just("/v1/intents".to_string()),
        1 => Just("/v1/settlements".to_string()),
        1 => proptest::sample::select(paths),
    ];
    let token = prop_oneof![
        8 => Just(Some(OPERATOR)),
        1 => Just(Some(READER)),
        3 => Just(Some(PAYMENTS)),
        1 => Just(None),
    ];
    (
        path,
        token,
        proptest::sample::select(CONTENT_TYPES),
        hostile_input(post_seeds(), false),
    )
        .prop_map(|(path, token, content_type, body)| Call {
            path,
            token,
            content_type,
            body,
        })
}

fn app(kill: Arc<MemKill>, fx: Arc<MemFx>, intake: Arc<MemIntake>) -> axum::Router {
    let tokens = TokenStore::default()
        .with_hash(
            "ops-alice",
            Role::Operator,
            &api::auth::hash_token(OPERATOR),
        )
        .and_then(|t| t.with_hash("dash", Role::Reader, &api::auth::hash_token(READER)))
        .and_then(|t| {
            t.with_hash(
                "pay",
                Role::PaymentService,
                &api::auth::hash_token(PAYMENTS),
            )
        })
        .unwrap();
    api::router(ApiState {
        tokens: Arc::new(tokens),
        ledger: Arc::new(NoLedger),
        policies: Arc::new(NoPolicies),
        kill_switch: kill,
        fx_rates: fx,
        readiness: Arc::new(Ready),
        approvals: Arc::new(spendguard::api::approvals::Disabled),
        intake,
        metrics: spendguard::telemetry::metrics_handle(),
        chain: Arc::default(),
        policy_lifecycle: Arc::new(spendguard::api::policy_lifecycle::Disabled),
        clock: Arc::new(chrono::Utc::now),
    })
}

async fn send(app: &axum::Router, c: &Call) -> (StatusCode, Vec<u8>) {
    let mut req = Request::builder().method(Method::POST).uri(&c.path);
    if let Some(t) = c.token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(ct) = c.content_type {
        req = req.header("content-type", ct);
    }
    let req = req.body(Body::from(c.body.clone())).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, bytes.to_vec())
}

fn check(
    c: &Call,
    status: StatusCode,
    body: &[u8],
    kill: &MemKill,
    fx: &MemFx,
    intake: &MemIntake,
) -> Result<(), TestCaseError> {
    let recorded = kill.0.lock().unwrap().drain(..).collect::<Vec<_>>();
    let rates = fx.0.lock().unwrap().drain(..).collect::<Vec<_>>();
    let handed = intake.0.lock().unwrap().drain(..).collect::<Vec<_>>();
    if let Some(kind) = match c.path.as_str() {
        "/v1/intents" => Some("intent"),
        "/v1/settlements" => Some("settlement"),
        _ => None,
    } {
        // The intake: whatever the body, a valid one is handed on once, an invalid one is
        // audited once and answered 400 with the parser's own code; nothing else moves.
        prop_assert!(recorded.is_empty() && rates.is_empty());
        let parsed = if kind == "intent" {
            spendguard::intent::parse_intent(&c.body).map(|_| ())
        } else {
            spendguard::settlement::parse_settlement(&c.body).map(|_| ())
        };
        let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let accepted =
            c.token == Some(PAYMENTS) && c.body.len() <= api::intake::MAX_INTAKE_BODY_BYTES;
        match (accepted, parsed) {
            (true, Ok(())) => {
                prop_assert_eq!(status, StatusCode::OK, "{}", json);
                let expected = if kind == "intent" { "decide" } else { "settle" };
                prop_assert_eq!(handed, vec![expected]);
            }
            (true, Err(e)) => {
                prop_assert_eq!(status, StatusCode::BAD_REQUEST, "{}", json);
                prop_assert_eq!(json["error"]["code"].as_str(), Some(e.code), "{}", json);
                let audit = if kind == "intent" {
                    "invalid_intent"
                } else {
                    "invalid_settlement"
                };
                prop_assert_eq!(handed, vec![audit]);
            }
            (false, _) => {
                prop_assert!(status.is_client_error(), "{status}");
                prop_assert!(handed.is_empty(), "a refused request reached the ledger");
                let code = json["error"]["code"].as_str().unwrap_or_default();
                prop_assert!(API_CODES.contains(&code), "{status} {json}");
            }
        }
        return Ok(());
    }
    prop_assert!(handed.is_empty(), "{} reached the intake", c.path);
    prop_assert!(
        !status.is_server_error(),
        "{} {:?} -> {status}: {}",
        c.path,
        String::from_utf8_lossy(&c.body),
        String::from_utf8_lossy(body)
    );
    let json: serde_json::Value = match serde_json::from_slice(body) {
        Ok(j) => j,
        Err(_) => {
            return Err(TestCaseError::fail(format!(
                "{} -> {status} with a non-JSON body {:?}",
                c.path,
                String::from_utf8_lossy(body)
            )));
        }
    };
    if status.is_success() && c.path == "/v1/fx-rates" {
        // Accepted: a valid rate from an operator, and exactly that was recorded.
        prop_assert_eq!(c.token, Some(OPERATOR));
        prop_assert!(recorded.is_empty());
        prop_assert_eq!(rates.len(), 1);
        let change = &rates[0];
        prop_assert!(spendguard::money::check_fx_reason(&change.reason).is_ok());
        prop_assert_eq!(change.actor.as_str(), "api:ops-alice");
        let again =
            spendguard::money::parse_fx_rate(&change.rate.pair(), &change.rate.rate.to_string());
        prop_assert_eq!(again, Ok(change.rate));
        prop_assert_eq!(&json["pair"], &serde_json::Value::from(change.rate.pair()));
        prop_assert_eq!(
            &json["rate"],
            &serde_json::Value::from(change.rate.rate.to_string())
        );
    } else if status.is_success() {
        // Accepted: it was a valid kill-switch request from an operator, and exactly
        // that reached the kill switch.
        prop_assert_eq!(c.path.as_str(), "/v1/kill-switch");
        prop_assert!(rates.is_empty());
        prop_assert_eq!(c.token, Some(OPERATOR));
        prop_assert_eq!(recorded.len(), 1);
        let change = &recorded[0];
        let reparsed = spendguard::kill_switch::Scope::parse(&change.scope.to_string());
        prop_assert_eq!(reparsed.as_ref(), Ok(&change.scope), "{:?}", change);
        prop_assert!(!change.reason.trim().is_empty());
        prop_assert!(change.reason.len() <= api::MAX_KILL_SWITCH_REASON_LEN);
        prop_assert_eq!(change.actor.as_str(), "api:ops-alice");
        prop_assert_eq!(
            &json["scope"],
            &serde_json::Value::from(change.scope.to_string())
        );
    } else {
        prop_assert!(status.is_client_error(), "{status}");
        prop_assert!(
            recorded.is_empty(),
            "a refused request reached the kill switch"
        );
        prop_assert!(rates.is_empty(), "a refused request recorded a rate");
        let code = json["error"]["code"].as_str().unwrap_or_default();
        prop_assert!(
            API_CODES.contains(&code),
            "{status} with error code {code:?}: {json}"
        );
        prop_assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    Ok(())
}

#[test]
fn fuzz_http_post_bodies() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let kill = Arc::new(MemKill::default());
    let fx = Arc::new(MemFx::default());
    let intake = Arc::new(MemIntake::default());
    let app = app(kill.clone(), fx.clone(), intake.clone());
    let mut runner = TestRunner::new(mutate::config(super::CI_CASES));
    let result = runner.run(&call(), |c| {
        let (status, body) = rt.block_on(send(&app, &c));
        check(&c, status, &body, &kill, &fx, &intake)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Ids and query values as a client could send them: arbitrary text, percent-encoded.
fn hostile_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        1 => proptest::collection::vec(any::<u8>(), 0..200)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        1 => (1usize..400).prop_map(|n| "a".repeat(n)),
        1 => proptest::sample::select(&[
            "", "i-1", "a-1", "e-1", "..", "%", "%00", "%ff", "\u{0}", "-1", "0", "501",
            "18446744073709551616", "pending", "closed", "\u{202e}", "a/b", "?", "#",
        ][..])
        .prop_map(str::to_string),
    ]
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn fuzz_http_paths_and_queries() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let kill = Arc::new(MemKill::default());
    let fx = Arc::new(MemFx::default());
    let app = app(kill.clone(), fx.clone(), Arc::default());
    let mut runner = TestRunner::new(mutate::config(super::CI_CASES));
    let strategy = (
        0..6usize,
        hostile_segment(),
        hostile_segment(),
        any::<bool>(),
    );
    let result = runner.run(&strategy, |(route, a, b, raw)| {
        // Mostly percent-encoded; sometimes the text as is (when it makes a valid URI).
        let enc = |s: &str| if raw { s.to_string() } else { encode(s) };
        let uri = match route {
            0 => format!("/v1/decisions/{}", enc(&a)),
            1 => format!("/v1/agents/{}/usage", enc(&a)),
            2 => format!("/v1/agents/{}/usage?entity={}", enc(&a), enc(&b)),
            3 => format!("/v1/approvals?limit={}&status={}", enc(&a), enc(&b)),
            4 => format!("/v1/approvals?{}={}", enc(&a), enc(&b)),
            _ => format!("/v1/kill-switch?{}", enc(&a)),
        };
        let Ok(req) = Request::builder()
            .method(Method::GET)
            .uri(&uri)
            .header("authorization", format!("Bearer {OPERATOR}"))
            .body(Body::empty())
        else {
            return Ok(()); // not a URI a client could send
        };
        let (status, body) = rt.block_on(async {
            let resp = app.clone().oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            (status, bytes)
        });
        prop_assert!(!status.is_server_error(), "GET {uri} -> {status}");
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| TestCaseError::fail(format!("GET {uri} -> {status}, not JSON")))?;
        if !status.is_success() {
            let code = json["error"]["code"].as_str().unwrap_or_default();
            prop_assert!(API_CODES.contains(&code), "GET {uri} -> {status} {json}");
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
