//! The authorization lifecycle (SPEC §11) through the API over a real ledger:
//! `GET /v1/decisions/{intentId}` carries the authorization's totals, and
//! `GET /v1/agents/{id}/usage` follows captures, voids, refunds and expiry.

use crate::endpoints::{READER, json, start};
use crate::harness::http::request as http;
use crate::harness::policies::load;
use crate::harness::scenario::{decide, fresh_ledger, intent, origin, policy_dir, policy_text};
use serde_json::{Value, json as j};
use spendguard::decision::Effect;
use spendguard::ledger::settle::SettleResult;
use spendguard::ledger::{Ledger, Outcome};
use spendguard::policy::PolicySet;
use std::net::SocketAddr;

async fn settle(ledger: &Ledger, set: &PolicySet, text: &str) -> SettleResult {
    let s = spendguard::settlement::parse_settlement(text.as_bytes()).expect("valid settlement");
    ledger.settle(set, &s, &origin()).await.expect("settle")
}

fn applied(r: &SettleResult, outcome: Outcome) {
    assert!(
        matches!(r, SettleResult::Applied { outcome: o, .. } if o.outcome == outcome),
        "expected {outcome:?}, got {r:?}"
    );
}

/// (day spent, month spent) of agent v1.
async fn spent(addr: SocketAddr) -> (String, String) {
    let (s, b) = http(addr, "GET", "/v1/agents/v1/usage", Some(READER), None).await;
    assert_eq!(s, 200, "{b}");
    let u = json(&b);
    let w = |i: usize| u["windows"][i]["spent"].as_str().unwrap().to_string();
    (w(0), w(1))
}

async fn authorization(addr: SocketAddr, intent_id: &str) -> Value {
    let (s, b) = http(
        addr,
        "GET",
        &format!("/v1/decisions/{intent_id}"),
        Some(READER),
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    json(&b)["authorization"].clone()
}

fn totals(v: &Value) -> Value {
    j!([
        v["authorized"],
        v["captured"],
        v["voided"],
        v["refunded"],
        v["outstanding"],
        v["final"],
        v["expired"]
    ])
}

#[tokio::test]
async fn decisions_show_the_authorization_and_usage_follows_the_money() {
    let Some((db, ledger)) = fresh_ledger().await else {
        return;
    };
    let url = db.url.clone();
    // `ops-p` (refunds: ignore by default), and a later version that restores refunds.
    let (_dir, path) = policy_dir(&policy_text("1.0.0", "500.00", true));
    let set = load(&path);
    let (_dir2, restore_path) = policy_dir(&format!(
        "{}  refunds: restore\n",
        policy_text("1.0.1", "500.00", true)
    ));
    let restore = load(&restore_path);
    let now = chrono::Utc::now();
    for (id, amount) in [("v1-1", "100.00"), ("v1-2", "50.00")] {
        assert_eq!(
            decide(&ledger, &set, intent(id, "v1", amount, "utility"), now).await,
            Effect::Allow
        );
    }
    // A denied intent has no authorization.
    assert_eq!(
        decide(
            &ledger,
            &set,
            intent("v1-3", "v1", "1500.00", "utility"),
            now
        )
        .await,
        Effect::Deny
    );
    let api_ledger = Ledger::connect(&url, "api-test").await.expect("connect");
    let (addr, stop) = start(api_ledger, path.clone()).await;

    let a = authorization(addr, "v1-1").await;
    assert_eq!(
        totals(&a),
        j!(["100.00", "0.00", "0.00", "0.00", "100.00", false, false])
    );
    let expires_at: chrono::DateTime<chrono::Utc> =
        a["expiresAt"].as_str().unwrap().parse().unwrap();
    let ttl = expires_at - now;
    assert!(
        (ttl - chrono::Duration::days(7)).num_seconds().abs() <= 1,
        "authorizationTtl defaults to 7 days: {ttl}"
    );
    assert_eq!(authorization(addr, "v1-3").await, Value::Null, "DENY");
    assert_eq!(spent(addr).await, ("150.00".into(), "150.00".into()));

    // A capture moves money from outstanding to captured: usage unchanged.
    let r = settle(
        &ledger,
        &set,
        r#"{"settlementId":"c1","intentId":"v1-1","type":"CAPTURE","amount":"60.00","currency":"BRL"}"#,
    )
    .await;
    applied(&r, Outcome::Captured);
    assert_eq!(
        totals(&authorization(addr, "v1-1").await),
        j!(["100.00", "60.00", "0.00", "0.00", "40.00", false, false])
    );
    assert_eq!(spent(addr).await, ("150.00".into(), "150.00".into()));

    // A void of the remainder releases it: usage drops by 40.
    let r = settle(
        &ledger,
        &set,
        r#"{"settlementId":"v1","intentId":"v1-1","type":"VOID"}"#,
    )
    .await;
    applied(&r, Outcome::Voided);
    assert_eq!(
        totals(&authorization(addr, "v1-1").await),
        j!(["100.00", "60.00", "40.00", "0.00", "0.00", true, false])
    );
    assert_eq!(spent(addr).await, ("110.00".into(), "110.00".into()));

    // A partial void of the other authorization.
    let r = settle(
        &ledger,
        &set,
        r#"{"settlementId":"v2","intentId":"v1-2","type":"VOID","amount":"20.00","currency":"BRL"}"#,
    )
    .await;
    applied(&r, Outcome::Voided);
    assert_eq!(spent(addr).await, ("90.00".into(), "90.00".into()));

    // refunds: ignore (default) gives nothing back; restore does.
    let r = settle(
        &ledger,
        &set,
        r#"{"settlementId":"r1","intentId":"v1-1","type":"REFUND","amount":"10.00","currency":"BRL"}"#,
    )
    .await;
    applied(&r, Outcome::Refunded);
    assert_eq!(spent(addr).await, ("90.00".into(), "90.00".into()));
    let r = settle(
        &ledger,
        &restore,
        r#"{"settlementId":"r2","intentId":"v1-1","type":"REFUND","amount":"15.00","currency":"BRL"}"#,
    )
    .await;
    applied(&r, Outcome::Refunded);
    assert_eq!(
        totals(&authorization(addr, "v1-1").await),
        j!(["100.00", "60.00", "40.00", "25.00", "0.00", true, false])
    );
    assert_eq!(spent(addr).await, ("75.00".into(), "75.00".into()));

    // Expiry releases what v1-2 still held (30); a forced capture counts again.
    let expired = ledger
        .expire_authorizations(now + chrono::Duration::days(8))
        .await
        .expect("expire");
    assert_eq!(expired.len(), 1, "only v1-2 is still open: {expired:?}");
    assert_eq!(
        totals(&authorization(addr, "v1-2").await),
        j!(["50.00", "0.00", "20.00", "0.00", "0.00", false, true])
    );
    assert_eq!(spent(addr).await, ("45.00".into(), "45.00".into()));
    let r = settle(
        &ledger,
        &set,
        r#"{"settlementId":"c2","intentId":"v1-2","type":"CAPTURE","amount":"30.00","currency":"BRL","final":true}"#,
    )
    .await;
    applied(&r, Outcome::Captured);
    assert_eq!(
        r.outcome().unwrap().flags,
        vec!["capture_after_expiry".to_string()]
    );
    assert_eq!(
        totals(&authorization(addr, "v1-2").await),
        j!(["50.00", "30.00", "20.00", "0.00", "0.00", true, true])
    );
    assert_eq!(spent(addr).await, ("75.00".into(), "75.00".into()));
    let _ = stop.send(());
}
