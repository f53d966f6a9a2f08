//! Foreign currency (SPEC §12.3) on the real PostgreSQL: no rate → denied; rates as
//! ledger events; conversion at the latest rate before acceptance, rounded half-up,
//! shown in the reasons and used by every cap and window; a rate change between two
//! intents; settlements in the intent's currency; replay reproduces both conversions.

use crate::harness::db::{TestDb, origin};
use crate::harness::intent::intent;
use crate::harness::policies::{DEFAULT_BINDINGS, policy_set};
use rust_decimal::Decimal;
use spendguard::decision::Effect;

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn usd(id: &str, amount: &str) -> spendguard::intent::SpendIntent {
    let mut i = intent(id, "ag", amount);
    i.currency = "USD".into();
    i
}

async fn day_committed(db: &TestDb) -> (Decimal, Decimal) {
    let mut c = db.superuser().await;
    sqlx::query_as(
        "SELECT coalesce(sum(committed), 0), coalesce(sum(reserved), 0) FROM usage_window
         WHERE agent_id = 'ag' AND kind = 'D' AND currency = 'BRL'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap()
}

#[tokio::test]
async fn usd_intents_against_a_brl_policy_use_the_recorded_rate() {
    let Some(db) = crate::harness::db::fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let text = "name: p\ncurrency: BRL\ntimezone: America/Sao_Paulo\ncaps: { perTxn: \"5000.00\", daily: \"1000.00\", monthly: \"100000.00\" }\nfx: { accept: [USD] }\n";
    let (_d, set) = policy_set(&[("p.yaml", text)], DEFAULT_BINDINGS);
    let o = origin();

    // Accepted currency, but no rate yet: denied as before.
    let none = ledger.decide(&set, &usd("u0", "10.00"), &o).await.unwrap();
    assert_eq!(none.message.effect, Effect::Deny);
    assert_eq!(none.message.reasons[0].code, "currency_not_supported");

    let seq = ledger
        .set_fx_rate("USD", "BRL", d("5.00005"), "treasury", "daily fixing", &o)
        .await
        .unwrap();
    let a = ledger.decide(&set, &usd("u1", "100.00"), &o).await.unwrap();
    assert_eq!(a.message.effect, Effect::Allow);
    let last = a.message.reasons.last().unwrap();
    assert_eq!(last.code, "currency_converted");
    assert_eq!(
        last.detail,
        format!("100.00 USD × 5.00005 (USD/BRL, ledgerSeq {seq}) = 500.01 BRL"),
        "rounded half-up: 500.005 -> 500.01"
    );
    assert_eq!(day_committed(&db).await, (d("500.01"), Decimal::ZERO));

    // The rate changes: the next intent converts at the new one (600 BRL), which passes
    // the daily cap together with the first and waits for a human.
    ledger
        .set_fx_rate("USD", "BRL", d("6"), "treasury", "repricing", &o)
        .await
        .unwrap();
    let b = ledger.decide(&set, &usd("u2", "100.00"), &o).await.unwrap();
    assert_eq!(b.message.effect, Effect::RequireHitl);
    assert_eq!(b.message.reasons[0].code, "would_exceed_daily_limit");
    assert_eq!(
        b.message.reasons[0].detail,
        "daily so far 500.01 + 600.00 = 1100.01 > 1000.00 BRL"
    );
    assert_eq!(day_committed(&db).await, (d("500.01"), d("600.00")));

    // Not accepted: EUR is denied.
    let mut eur = intent("e1", "ag", "1.00");
    eur.currency = "EUR".into();
    assert_eq!(
        ledger.decide(&set, &eur, &o).await.unwrap().message.effect,
        Effect::Deny
    );

    // Settlements come in the intent's currency; usage follows at the decision's rate
    // (5.00005), not today's (6).
    let capture = spendguard::settlement::parse_settlement(
        br#"{"settlementId":"c1","intentId":"u1","type":"CAPTURE","amount":"40.00","currency":"USD","final":true}"#,
    )
    .unwrap();
    let r = ledger.settle(&set, &capture, &o).await.unwrap();
    let totals = r.outcome().unwrap().authorization.clone().unwrap();
    assert_eq!(
        (totals.authorized, totals.captured, totals.voided),
        (d("100.00"), d("40.00"), d("60.00"))
    );
    assert_eq!(
        day_committed(&db).await,
        (d("200.00"), d("600.00")),
        "40 USD × 5.00005 = 200.002 -> 200.00"
    );
    let brl = spendguard::settlement::parse_settlement(
        br#"{"settlementId":"c2","intentId":"u1","type":"REFUND","amount":"1.00","currency":"BRL"}"#,
    )
    .unwrap();
    let refused = ledger.settle(&set, &brl, &o).await.unwrap();
    assert!(
        matches!(&refused, spendguard::ledger::settle::SettleResult::Refused { code, .. } if code == "currency_mismatch"),
        "{refused:?}"
    );

    let report = ledger.replay(true).await.unwrap();
    assert!(report.ok(), "{report:#?}");
}
