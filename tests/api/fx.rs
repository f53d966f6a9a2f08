//! Exchange rates (SPEC §12.3) through the API over a real ledger: an operator sets
//! `USD/BRL` with `POST /v1/fx-rates`, `GET /v1/fx-rates` reads it back, and the next USD
//! intent against a BRL policy accepting USD is converted at exactly that rate, its
//! `currency_converted` reason naming the rate's ledgerSeq.

use crate::endpoints::{READER, json, start};
use crate::harness::db::{fresh_db, origin};
use crate::harness::http::request as http;
use crate::harness::intent::intent;
use crate::harness::policies::{load, policy_dir};
use spendguard::decision::Effect;

const OPERATOR: &str = "operator-secret-token";
const POLICY: &str = "name: fx-p\ncurrency: BRL\ntimezone: America/Sao_Paulo\ncaps: { perTxn: \"5000.00\", daily: \"10000.00\", monthly: \"100000.00\" }\nfx: { accept: [USD] }\n";

#[tokio::test]
async fn fx_rate_set_through_the_api_converts_the_next_intent() {
    let Some(db) = fresh_db("sg_api_fx_").await else {
        return;
    };
    let (_dir, path) = policy_dir(&[("fx-p.yaml", POLICY)], "default: fx-p\n");
    let set = load(&path);
    let (addr, stop) = start(db.ledger().await, path.clone()).await;

    let (s, b) = http(addr, "GET", "/v1/fx-rates", Some(READER), None).await;
    assert_eq!((s, json(&b)), (200, serde_json::json!({"rates": []})));

    // Refused: a number, and a reader's token; nothing is recorded.
    let (s, b) = http(
        addr,
        "POST",
        "/v1/fx-rates",
        Some(OPERATOR),
        Some(r#"{"pair":"USD/BRL","rate":5.4321,"reason":"fixing"}"#),
    )
    .await;
    assert_eq!(
        (s, json(&b)["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "{b}"
    );
    let (s, _) = http(
        addr,
        "POST",
        "/v1/fx-rates",
        Some(READER),
        Some(r#"{"pair":"USD/BRL","rate":"5.4321","reason":"fixing"}"#),
    )
    .await;
    assert_eq!(s, 403);

    let (s, b) = http(
        addr,
        "POST",
        "/v1/fx-rates",
        Some(OPERATOR),
        Some(r#"{"pair":"USD/BRL","rate":"5.00005","reason":"BCB PTAX fixing"}"#),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let set_rate = json(&b);
    assert_eq!(
        (&set_rate["pair"], &set_rate["rate"]),
        (&"USD/BRL".into(), &"5.00005".into())
    );
    let seq = set_rate["seq"].as_i64().expect("seq");

    let (s, b) = http(addr, "GET", "/v1/fx-rates", Some(READER), None).await;
    assert_eq!(s, 200, "{b}");
    let rates = json(&b)["rates"].as_array().unwrap().clone();
    assert_eq!(rates.len(), 1, "{b}");
    assert_eq!(
        (
            &rates[0]["pair"],
            &rates[0]["rate"],
            rates[0]["ledgerSeq"].as_i64()
        ),
        (&"USD/BRL".into(), &"5.00005".into(), Some(seq))
    );
    assert!(rates[0]["setAt"].is_string());

    // The ledger recorded it as an audited event with the token's name as actor.
    let ledger = db.ledger().await;
    let event = ledger
        .reader()
        .event_payload(seq)
        .await
        .unwrap()
        .expect("the fx_rate_set event");
    let event = json(&event);
    assert_eq!(
        (event["actor"].as_str(), event["reason"].as_str()),
        (Some("api:ops-alice"), Some("BCB PTAX fixing")),
        "{event}"
    );

    // A USD intent against the BRL policy is converted at that rate.
    let mut usd = intent("u1", "ag", "100.00");
    usd.currency = "USD".into();
    let d = ledger.decide(&set, &usd, &origin()).await.unwrap();
    assert_eq!(d.message.effect, Effect::Allow);
    let converted = d
        .message
        .reasons
        .iter()
        .find(|r| r.code == "currency_converted")
        .expect("a currency_converted reason");
    assert_eq!(
        converted.detail,
        format!("100.00 USD × 5.00005 (USD/BRL, ledgerSeq {seq}) = 500.01 BRL")
    );
    let _ = stop.send(());
}
