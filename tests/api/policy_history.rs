//! Policy history, diff and rollback through the API (SPEC §16, issue 14 item 4) over a
//! real ledger: the same ledger calls as the CLI, rollback for operators only, recorded
//! with actor `api:<token name>` and written into the service's policies directory.

use crate::endpoints::{READER, json};
use crate::harness::db::fresh_db;
use crate::harness::http::request as http;
use crate::harness::policies::{load, policy_dir};
use spendguard::api::{self, Role, TokenStore, auth::hash_token, backends};
use std::sync::Arc;

const OPERATOR: &str = "operator-secret-token";
const V1: &str = "name: p\nversion: \"1.0.0\"\ncurrency: BRL\ncaps: { perTxn: \"500.00\", daily: \"1000.00\", monthly: \"5000.00\" }\n";

#[tokio::test]
async fn history_diff_and_rollback_through_the_api() {
    let Some(db) = fresh_db("sg_api_phist_").await else {
        return;
    };
    let ledger = Arc::new(db.ledger().await);
    let (_dir, path) = policy_dir(&[("p.yaml", V1)], "default: p\n");
    let file = path.join("p.yaml");
    let set1 = load(&path);
    ledger.activate_policies(&set1, "serve-a").await.unwrap();
    std::fs::write(
        &file,
        V1.replace("1.0.0", "1.1.0")
            .replace("\"500.00\"", "\"400.00\""),
    )
    .unwrap();
    ledger
        .activate_policies(&load(&path), "serve-a")
        .await
        .unwrap();

    let tokens = TokenStore::default()
        .with_hash("dash", Role::Reader, &hash_token(READER))
        .and_then(|t| t.with_hash("ops-alice", Role::Operator, &hash_token(OPERATOR)))
        .unwrap();
    let catalog: Arc<dyn api::PolicyCatalog> =
        Arc::new(backends::PolicySource(move || Arc::new(set1.clone())));
    let mut state = backends::state_for(ledger.clone(), catalog, tokens, "api-test", None, vec![]);
    state.policy_lifecycle = Arc::new(api::policy_lifecycle::LedgerPolicyLifecycle {
        ledger: ledger.clone(),
        instance: "api-test".into(),
        policies_dir: Some(path.clone()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(api::serve_listener(listener, state, async move {
        let _ = rx.await;
    }));

    let (s, b) = http(addr, "GET", "/v1/policies/p/history", Some(OPERATOR), None).await;
    assert_eq!(s, 200, "{b}");
    let v = json(&b);
    assert_eq!(v["revisions"].as_array().unwrap().len(), 2, "{b}");
    assert_eq!(v["revisions"][1]["version"], "1.1.0");
    let (s, _) = http(
        addr,
        "GET",
        "/v1/policies/nope/history",
        Some(OPERATOR),
        None,
    )
    .await;
    assert_eq!(s, 404);
    // Readers do not see policy history (staff only).
    let (s, _) = http(addr, "GET", "/v1/policies/p/history", Some(READER), None).await;
    assert_eq!(s, 403);

    let (s, b) = http(
        addr,
        "GET",
        "/v1/policies/p/diff?from=1&to=1.1.0",
        Some(OPERATOR),
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let diff = json(&b)["diff"].as_str().unwrap().to_string();
    assert!(
        diff.contains("-     \"perTxn\": \"500\"") && diff.contains("+     \"perTxn\": \"400\""),
        "{diff}"
    );
    let (s, _) = http(
        addr,
        "GET",
        "/v1/policies/p/diff?from=1",
        Some(OPERATOR),
        None,
    )
    .await;
    assert_eq!(s, 400);

    let body = r#"{"revision":"1","reason":"1.1.0 too strict"}"#;
    let (s, _) = http(
        addr,
        "POST",
        "/v1/policies/p/rollback",
        Some(READER),
        Some(body),
    )
    .await;
    assert_eq!(s, 403);
    let (s, b) = http(
        addr,
        "POST",
        "/v1/policies/p/rollback",
        Some(OPERATOR),
        Some(body),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let v = json(&b);
    assert_eq!(v["rolledBackTo"], 1);
    assert_eq!(v["activated"]["revision"], 3);
    assert_eq!(v["activated"]["actor"], "api:ops-alice");
    assert_eq!(v["activated"]["source"], "api");
    assert_eq!(
        load(&path).get("p").unwrap().identity.sha256,
        v["activated"]["sha256"].as_str().unwrap()
    );
    let (s, b) = http(
        addr,
        "POST",
        "/v1/policies/p/rollback",
        Some(OPERATOR),
        Some(body),
    )
    .await;
    assert_eq!(
        (s, json(&b)["error"]["code"].as_str()),
        (409, Some("already_active")),
        "{b}"
    );

    let h = ledger.policy_history("p").await.unwrap();
    assert_eq!(h.len(), 3);
    assert_eq!(h[2].0.reason.as_deref(), Some("1.1.0 too strict"));
    let report = ledger.replay(true).await.unwrap();
    assert!(report.ok(), "{report:#?}");
    let _ = stop.send(());
}
