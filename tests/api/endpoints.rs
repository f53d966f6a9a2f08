//! The HTTP API on a random port over a real ledger (PostgreSQL) and broker: every
//! endpoint, every role, 401/403, oversized body, unknown ids, the OpenAPI document
//! against the served routes, and `/metrics` after a scenario.

use crate::harness;
use crate::harness::http::request as http;
use crate::harness::policies::load;
use crate::harness::scenario::{
    decide, fresh_ledger, intent, policy_dir, policy_text, report_scenario,
};
use serde_json::Value;
use spendguard::api::{self, Role, TokenStore, auth::hash_token, backends};
use std::net::SocketAddr;
use std::sync::Arc;

pub(crate) const READER: &str = "reader-secret-token";
const OPERATOR: &str = "operator-secret-token";
const AUDITOR: &str = "auditor-secret-token";

pub(crate) fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

pub(crate) async fn start(
    ledger: spendguard::ledger::Ledger,
    policies: std::path::PathBuf,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let tokens = TokenStore::default()
        .with_hash("dash", Role::Reader, &hash_token(READER))
        .and_then(|t| t.with_hash("ops-alice", Role::Operator, &hash_token(OPERATOR)))
        .and_then(|t| t.with_hash("audit-bob", Role::Auditor, &hash_token(AUDITOR)))
        .unwrap();
    let set = Arc::new(load(&policies));
    let catalog: Arc<dyn api::PolicyCatalog> =
        Arc::new(backends::PolicySource(move || set.clone()));
    let ledger = Arc::new(ledger);
    let mut state = backends::state_for(
        ledger.clone(),
        catalog,
        tokens,
        "api-test",
        None,
        vec![backends::broker_check(harness::brokers())],
    );
    // As serve does: rollbacks restore into the directory the policies came from.
    state.policy_lifecycle = Arc::new(api::policy_lifecycle::LedgerPolicyLifecycle {
        ledger,
        instance: "api-test".into(),
        policies_dir: Some(policies.clone()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(api::serve_listener(listener, state, async move {
        let _ = rx.await;
    }));
    (addr, tx)
}

#[tokio::test]
async fn every_endpoint_every_role_against_the_real_ledger() {
    if !harness::require_broker() {
        return;
    }
    let Some((_db, ledger)) = fresh_ledger().await else {
        return;
    };
    let (_dir, path) = policy_dir(&policy_text("1.0.0", "500.00", true));
    let set = load(&path);
    report_scenario(&ledger, &set).await;
    // One more intent left waiting, for the approvals queue.
    decide(
        &ledger,
        &set,
        intent("w1", "a3", "600.00", "utility"),
        chrono::Utc::now(),
    )
    .await;
    // A second revision of ops-p, so that revision 1 can be diffed and rolled back to.
    let (_dir2, path2) = policy_dir(&policy_text("1.1.0", "600.00", true));
    ledger
        .activate_policies(&load(&path2), "api-test")
        .await
        .unwrap();
    let (addr, stop) = start(ledger, path.clone()).await;

    // Public routes.
    let (s, b) = http(addr, "GET", "/healthz", None, None).await;
    assert_eq!((s, json(&b)["status"].as_str()), (200, Some("ok")));
    let (s, b) = http(addr, "GET", "/readyz", None, None).await;
    assert_eq!(s, 200, "{b}");
    let names: Vec<String> = json(&b)["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["postgres", "broker"]);

    // Every documented operation: no token 401, unknown token 401, each role 2xx or 403.
    let (_, doc) = http(addr, "GET", "/openapi.json", None, None).await;
    let doc = json(&doc);
    let kill_body = r#"{"scope":"agent:a9","on":true,"reason":"api test"}"#;
    let fx_body = r#"{"pair":"USD/BRL","rate":"5.4321","reason":"api test"}"#;
    let mut operations = 0;
    for (template, methods) in doc["paths"].as_object().unwrap() {
        let path = template
            .replace("{intentId}", "i3")
            .replace("{agentId}", "a1")
            .replace("{entityId}", "acme-br")
            .replace("{name}/diff", "{name}/diff?from=1&to=2")
            .replace("{name}", "ops-p");
        for (method, op) in methods.as_object().unwrap() {
            operations += 1;
            let method = method.to_uppercase();
            let body = (method == "POST").then(|| match template.as_str() {
                "/v1/kill-switch" => kill_body,
                "/v1/fx-rates" => fx_body,
                "/v1/policies/{name}/rollback" => r#"{"revision":"1","reason":"api test"}"#,
                // Routes of roles not tried here: refused before the body is read.
                "/v1/approvals/{intentId}/votes" | "/v1/intents" | "/v1/settlements" => kill_body,
                other => panic!("no test body for POST {other}: add one"),
            });
            let roles: Vec<&str> = op["x-roles"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap())
                .collect();
            if roles.is_empty() {
                let (s, _) = http(addr, &method, &path, None, body).await;
                assert_eq!(s, 200, "{method} {path} is public");
                continue;
            }
            let (s, b) = http(addr, &method, &path, None, body).await;
            assert_eq!(
                (s, json(&b)["error"]["code"].as_str()),
                (401, Some("unauthorized")),
                "{method} {path}"
            );
            let (s, _) = http(addr, &method, &path, Some("not-a-token"), body).await;
            assert_eq!(s, 401);
            for (token, role) in [
                (READER, "reader"),
                (OPERATOR, "operator"),
                (AUDITOR, "auditor"),
            ] {
                let (s, b) = http(addr, &method, &path, Some(token), body).await;
                if roles.contains(&role) {
                    assert_eq!(s, 200, "{method} {path} as {role}: {b}");
                } else {
                    assert_eq!(
                        (s, json(&b)["error"]["code"].as_str()),
                        (403, Some("forbidden")),
                        "{method} {path} as {role}"
                    );
                }
            }
        }
    }
    assert_eq!(operations, api::openapi::OPERATIONS.len());

    // Contents.
    let (_, b) = http(addr, "GET", "/v1/decisions/i3", Some(READER), None).await;
    let d = json(&b);
    assert_eq!(d["effect"], "REQUIRE_HITL");
    assert_eq!(d["amount"], "450.00");
    assert_eq!(d["reasons"][0]["code"], "would_exceed_daily_limit");
    assert_eq!(d["outcome"]["outcome"], "APPROVED");
    let votes = d["votes"].as_array().unwrap();
    assert!(
        votes
            .iter()
            .any(|v| v["approverId"] == "alice" && v["accepted"] == true)
    );
    assert!(
        votes
            .iter()
            .any(|v| v["approverId"] == "mallory" && v["refusedReason"] == "bad_signature")
    );
    assert!(!b.contains("4111111111111111"));

    let (_, b) = http(addr, "GET", "/v1/agents/a3/usage", Some(READER), None).await;
    let u = json(&b);
    assert_eq!(
        (u["currency"].as_str(), u["timezone"].as_str()),
        (Some("BRL"), Some("America/Sao_Paulo"))
    );
    assert_eq!(u["windows"][0]["reserved"], "600.00", "{u:#}");
    assert_eq!(u["windows"][0]["spent"], "0.00");
    assert_eq!(u["windows"][0]["remaining"], "0.00");
    assert_eq!(u["windows"][1]["remaining"], "4400.00");

    let (_, b) = http(
        addr,
        "GET",
        "/v1/approvals?status=pending",
        Some(AUDITOR),
        None,
    )
    .await;
    let pending = json(&b)["approvals"].as_array().unwrap().clone();
    assert_eq!(pending.len(), 1, "{b}");
    assert_eq!(pending[0]["intentId"], "w1");
    assert_eq!(pending[0]["approvalsReceived"], 0);

    let (_, b) = http(addr, "GET", "/v1/policies", Some(OPERATOR), None).await;
    assert_eq!(json(&b)["policies"][0]["name"], "ops-p");

    // The kill-switch POST above (agent:a9) is recorded with the token's name.
    let (_, b) = http(addr, "GET", "/v1/kill-switch", Some(READER), None).await;
    let active = json(&b)["active"].as_array().unwrap().clone();
    assert_eq!(active.len(), 1, "{b}");
    assert_eq!(
        (active[0]["scope"].as_str(), active[0]["actor"].as_str()),
        (Some("agent:a9"), Some("api:ops-alice"))
    );
    let (s, b) = http(
        addr,
        "POST",
        "/v1/kill-switch",
        Some(OPERATOR),
        Some(r#"{"scope":"agent:a9","on":false,"reason":"done"}"#),
    )
    .await;
    assert_eq!((s, json(&b)["on"].as_bool()), (200, Some(false)));
    let (_, b) = http(addr, "GET", "/v1/kill-switch", Some(READER), None).await;
    assert!(json(&b)["active"].as_array().unwrap().is_empty());

    // Unknown ids, bad input, oversized body, unknown routes.
    let (s, b) = http(
        addr,
        "GET",
        "/v1/decisions/no-such-intent",
        Some(READER),
        None,
    )
    .await;
    assert_eq!(
        (s, json(&b)["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (s, _) = http(
        addr,
        "GET",
        "/v1/agents/no-such-agent/usage",
        Some(READER),
        None,
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = http(
        addr,
        "GET",
        "/v1/approvals?status=approved",
        Some(OPERATOR),
        None,
    )
    .await;
    assert_eq!(s, 400);
    let (s, b) = http(
        addr,
        "POST",
        "/v1/kill-switch",
        Some(OPERATOR),
        Some(r#"{"scope":"galaxy","on":true,"reason":"x"}"#),
    )
    .await;
    assert_eq!(
        (s, json(&b)["error"]["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let huge = format!(
        r#"{{"scope":"global","on":true,"reason":"{}"}}"#,
        "x".repeat(api::MAX_REQUEST_BODY_BYTES + 1)
    );
    let (s, b) = http(addr, "POST", "/v1/kill-switch", Some(OPERATOR), Some(&huge)).await;
    assert_eq!(
        (s, json(&b)["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    let (_, b) = http(addr, "GET", "/v1/kill-switch", Some(READER), None).await;
    assert!(
        json(&b)["active"].as_array().unwrap().is_empty(),
        "an oversized request changed nothing"
    );
    let (s, _) = http(addr, "GET", "/v2/anything", Some(OPERATOR), None).await;
    assert_eq!(s, 404);

    // Metrics moved: requests by route template and status, and the kill-switch gauge.
    let (s, text) = http(addr, "GET", "/metrics", Some(OPERATOR), None).await;
    assert_eq!(s, 200);
    for needle in [
        r#"spendguard_http_requests_total{route="/v1/decisions/{intentId}",method="GET",status="200"}"#,
        r#"spendguard_http_requests_total{route="/v1/decisions/{intentId}",method="GET",status="404"}"#,
        r#"spendguard_http_requests_total{route="/v1/kill-switch",method="POST",status="413"}"#,
        r#"spendguard_http_requests_total{route="/v1/approvals",method="GET",status="403"}"#,
        r#"spendguard_kill_switch_active{scope="agent:a9"} 0"#,
        "spendguard_http_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle}:\n{text}");
    }
    for secret in [READER, OPERATOR, AUDITOR, "no-such-intent"] {
        assert!(!text.contains(secret), "{secret} leaked into /metrics");
    }
    let _ = stop.send(());
}
