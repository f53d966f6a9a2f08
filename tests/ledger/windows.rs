//! Usage windows at local midnight and month end in America/Sao_Paulo, and across the
//! DST change in America/New_York, with the acceptance time injected (`decide_at`).

use crate::harness::db::{at, fresh_db, origin};
use crate::harness::intent::intent;
use crate::harness::policies::{DEFAULT_BINDINGS, policy_set, policy_text, standard_set};
use rust_decimal::Decimal;
use spendguard::decision::Effect;

#[tokio::test]
async fn sao_paulo_local_midnight_starts_a_new_day() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_d, set) = standard_set(); // daily 500, Sao Paulo
    let o = origin();
    // 23:59:59 local on Nov 25 (UTC-3) and 00:00:00 local on Nov 26.
    let a = ledger
        .decide_at(
            &set,
            &intent("a", "ag", "400.00"),
            &o,
            at("2026-11-26T02:59:59Z"),
        )
        .await
        .unwrap();
    assert_eq!(a.message.effect, Effect::Allow);
    assert_eq!(
        a.message.usage.as_ref().unwrap().window.day.to_string(),
        "2026-11-25"
    );
    let b = ledger
        .decide_at(
            &set,
            &intent("b", "ag", "400.00"),
            &o,
            at("2026-11-26T02:59:59.999999Z"),
        )
        .await
        .unwrap();
    assert_eq!(
        b.message.effect,
        Effect::RequireHitl,
        "same local day: 800 > 500"
    );
    let c = ledger
        .decide_at(
            &set,
            &intent("c", "ag", "400.00"),
            &o,
            at("2026-11-26T03:00:00Z"),
        )
        .await
        .unwrap();
    assert_eq!(c.message.effect, Effect::Allow, "new local day");
    let u = c.message.usage.as_ref().unwrap();
    assert_eq!(u.window.day.to_string(), "2026-11-26");
    assert_eq!(u.daily_so_far, Decimal::ZERO);
    // The month still holds a (committed) and b (reserved).
    assert_eq!(u.monthly_so_far, Decimal::new(800, 0));
}

#[tokio::test]
async fn sao_paulo_month_end_resets_the_month_window() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let text = policy_text(
        "p",
        "America/Sao_Paulo",
        "1000.00",
        "1000.00",
        "1200.00",
        "5000.00",
        "3600s",
    );
    let (_d, set) = policy_set(&[("p.yaml", &text)], DEFAULT_BINDINGS);
    let o = origin();
    let a = ledger
        .decide_at(
            &set,
            &intent("a", "ag", "800.00"),
            &o,
            at("2026-12-01T02:00:00Z"),
        )
        .await
        .unwrap();
    assert_eq!(a.message.effect, Effect::Allow);
    assert_eq!(a.message.usage.as_ref().unwrap().window.month, "2026-11");
    // Nov 30 local, new UTC day already: same local month -> 1600 > 1200.
    let b = ledger
        .decide_at(
            &set,
            &intent("b", "ag2", "800.00"),
            &o,
            at("2026-12-01T02:00:00Z"),
        )
        .await
        .unwrap();
    assert_eq!(b.message.effect, Effect::Allow, "other agent, own windows");
    let c = ledger
        .decide_at(
            &set,
            &intent("c", "ag", "800.00"),
            &o,
            at("2026-12-01T02:59:59Z"),
        )
        .await
        .unwrap();
    assert_eq!(c.message.effect, Effect::RequireHitl);
    assert!(
        c.message
            .reasons
            .iter()
            .any(|r| r.code == "would_exceed_monthly_limit")
    );
    // Dec 1 local: new month (and new day).
    let d = ledger
        .decide_at(
            &set,
            &intent("d", "ag", "800.00"),
            &o,
            at("2026-12-01T03:00:00Z"),
        )
        .await
        .unwrap();
    assert_eq!(d.message.effect, Effect::Allow);
    let u = d.message.usage.as_ref().unwrap();
    assert_eq!(
        (u.window.month.as_str(), u.monthly_so_far),
        ("2026-12", Decimal::ZERO)
    );
    // Year end too.
    let e = ledger
        .decide_at(
            &set,
            &intent("e", "ag", "800.00"),
            &o,
            at("2027-01-01T02:59:59Z"),
        )
        .await
        .unwrap();
    assert_eq!(e.message.usage.as_ref().unwrap().window.month, "2026-12");
    let f = ledger
        .decide_at(
            &set,
            &intent("f", "ag", "800.00"),
            &o,
            at("2027-01-01T03:00:00Z"),
        )
        .await
        .unwrap();
    assert_eq!(f.message.usage.as_ref().unwrap().window.month, "2027-01");
    assert_eq!(f.message.effect, Effect::Allow);

    let report = ledger.replay(true).await.unwrap();
    assert!(report.ok(), "{report:#?}");
}

#[tokio::test]
async fn new_york_dst_day_is_23_hours_and_windows_follow_local_midnight() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let text = policy_text(
        "p",
        "America/New_York",
        "1000.00",
        "500.00",
        "100000.00",
        "5000.00",
        "3600s",
    );
    let (_d, set) = policy_set(&[("p.yaml", &text)], DEFAULT_BINDINGS);
    let o = origin();
    // 2026-03-08: clocks jump 02:00 EST -> 03:00 EDT. Local midnight Mar 8 = 05:00Z,
    // local midnight Mar 9 = 04:00Z (EDT).
    let a = ledger
        .decide_at(
            &set,
            &intent("a", "ag", "400.00"),
            &o,
            at("2026-03-08T05:00:00Z"),
        )
        .await
        .unwrap();
    assert_eq!(
        a.message.usage.as_ref().unwrap().window.day.to_string(),
        "2026-03-08"
    );
    // 22h59m59s later is still Mar 8 locally (23:59:59 EDT): 400 + 200 > 500.
    let b = ledger
        .decide_at(
            &set,
            &intent("b", "ag", "200.00"),
            &o,
            at("2026-03-09T03:59:59Z"),
        )
        .await
        .unwrap();
    assert_eq!(
        b.message.usage.as_ref().unwrap().window.day.to_string(),
        "2026-03-08"
    );
    assert_eq!(b.message.effect, Effect::RequireHitl);
    // One second later (23 hours after the day began) it is Mar 9.
    let c = ledger
        .decide_at(
            &set,
            &intent("c", "ag", "200.00"),
            &o,
            at("2026-03-09T04:00:00Z"),
        )
        .await
        .unwrap();
    assert_eq!(
        c.message.usage.as_ref().unwrap().window.day.to_string(),
        "2026-03-09"
    );
    assert_eq!(c.message.effect, Effect::Allow);
    // Just before local midnight of Mar 8 (04:59:59Z, still Mar 7 EST).
    let z = ledger
        .decide_at(
            &set,
            &intent("z", "ag2", "1.00"),
            &o,
            at("2026-03-08T04:59:59Z"),
        )
        .await
        .unwrap();
    assert_eq!(
        z.message.usage.as_ref().unwrap().window.day.to_string(),
        "2026-03-07"
    );

    // Fall back (2026-11-01 is 25 hours long): 24h after local midnight is still Nov 1.
    let f1 = ledger
        .decide_at(
            &set,
            &intent("f1", "ag3", "400.00"),
            &o,
            at("2026-11-01T04:00:00Z"),
        )
        .await
        .unwrap();
    assert_eq!(
        f1.message.usage.as_ref().unwrap().window.day.to_string(),
        "2026-11-01"
    );
    let f2 = ledger
        .decide_at(
            &set,
            &intent("f2", "ag3", "200.00"),
            &o,
            at("2026-11-02T04:59:59Z"),
        )
        .await
        .unwrap();
    assert_eq!(
        f2.message.usage.as_ref().unwrap().window.day.to_string(),
        "2026-11-01"
    );
    assert_eq!(f2.message.effect, Effect::RequireHitl);
    let f3 = ledger
        .decide_at(
            &set,
            &intent("f3", "ag3", "200.00"),
            &o,
            at("2026-11-02T05:00:00Z"),
        )
        .await
        .unwrap();
    assert_eq!(
        f3.message.usage.as_ref().unwrap().window.day.to_string(),
        "2026-11-02"
    );
    assert_eq!(f3.message.effect, Effect::Allow);
}
