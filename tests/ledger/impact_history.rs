//! Policy impact analysis over a recorded history in a real ledger: a candidate that
//! tightens the daily cap and one that loosens the block list, exact transitions asserted.

use crate::harness::policies::load;
use crate::harness::scenario::{
    fresh_ledger, impact_history, period_args, policy_dir, policy_text,
};
use spendguard::cli::ops::{ImpactArgs, ImpactFormat, PeriodArgs, impact_report};

fn args(url: &str, candidate: &std::path::Path) -> ImpactArgs {
    let (from, to) = period_args();
    ImpactArgs {
        database_url: url.to_string(),
        candidate: candidate.to_path_buf(),
        period: PeriodArgs {
            from: from.parse().unwrap(),
            to: to.parse().unwrap(),
            entity: None,
        },
        all_intents: false,
        format: ImpactFormat::Json,
    }
}

#[tokio::test]
async fn tightening_and_loosening_candidates() {
    let Some((db, ledger)) = fresh_ledger().await else {
        return;
    };
    let url = db.url.clone();
    let (_dir, path) = policy_dir(&policy_text("1.0.0", "500.00", true));
    let set = load(&path);
    impact_history(&ledger, &set).await;
    let reader = ledger.reader();
    let tmp = tempfile::tempdir().unwrap();

    // The current policy itself changes nothing (the replay reproduces the history).
    let same = tmp.path().join("same.yaml");
    std::fs::write(&same, policy_text("1.0.0", "500.00", true)).unwrap();
    let r = impact_report(&reader, &args(&url, &same)).await.unwrap();
    assert_eq!((r.intents_replayed, r.unchanged), (6, 6), "{r:#?}");
    assert!(r.transitions.is_empty());

    // Daily cap 500 -> 300: h4 (250 + 200 > 300) and h6 now wait; h4's reservation has no
    // recorded outcome so it stays, and h5's rejection releases 100.
    let tight = tmp.path().join("tight.yaml");
    std::fs::write(&tight, policy_text("1.1.0", "300.00", true)).unwrap();
    let r = impact_report(&reader, &args(&url, &tight)).await.unwrap();
    assert_eq!(r.intents_replayed, 6);
    assert_eq!(r.transitions.len(), 1, "{:?}", r.transitions);
    assert_eq!(r.transitions.get("ALLOW->REQUIRE_HITL"), Some(&2));
    assert_eq!(r.unchanged, 4);
    let ids: Vec<&str> = r.examples["ALLOW->REQUIRE_HITL"]
        .iter()
        .map(|e| e.intent_id.as_str())
        .collect();
    assert_eq!(ids, ["h4", "h6"]);
    assert!(
        r.examples["ALLOW->REQUIRE_HITL"][0].candidate_reasons[0]
            .starts_with("would_exceed_daily_limit")
    );
    assert_eq!(
        r.newly_blocked_spend.get("BRL").map(|d| d.to_string()),
        Some("250.00".into())
    );
    assert_eq!(r.exit_code(), 0);

    // Gambling unblocked: h3 is allowed (250 + 200 = 450), which pushes h4 (650) and h6
    // over the daily cap in the rebuilt window.
    let loose = tmp.path().join("loose.yaml");
    std::fs::write(&loose, policy_text("1.2.0", "500.00", false)).unwrap();
    let r = impact_report(&reader, &args(&url, &loose)).await.unwrap();
    assert_eq!(
        r.transitions.get("DENY->ALLOW"),
        Some(&1),
        "{:?}",
        r.transitions
    );
    assert_eq!(r.transitions.get("ALLOW->REQUIRE_HITL"), Some(&2));
    assert_eq!(r.transitions.len(), 2);
    assert_eq!(r.unchanged, 3);
    assert_eq!(r.denied_now_allowed, 1);
    assert_eq!(r.examples["DENY->ALLOW"][0].intent_id, "h3");
    assert_eq!(
        r.examples["DENY->ALLOW"][0].recorded_reasons,
        ["category_blocked"]
    );
    assert_eq!(
        r.newly_allowed_spend.get("BRL").map(|d| d.to_string()),
        Some("200.00".into())
    );
    assert_eq!(r.exit_code(), 3);
}

#[tokio::test]
async fn run_impact_exits_3_when_loosening() {
    let Some((db, ledger)) = fresh_ledger().await else {
        return;
    };
    let url = db.url.clone();
    let (_dir, path) = policy_dir(&policy_text("1.0.0", "500.00", true));
    let set = load(&path);
    impact_history(&ledger, &set).await;
    let tmp = tempfile::tempdir().unwrap();
    let loose = tmp.path().join("loose.yaml");
    std::fs::write(&loose, policy_text("1.2.0", "500.00", false)).unwrap();
    let tight = tmp.path().join("tight.yaml");
    std::fs::write(&tight, policy_text("1.1.0", "300.00", true)).unwrap();
    // run_impact builds its own runtime: call it off the test's runtime.
    let (a, b) = (args(&url, &loose), args(&url, &tight));
    let codes = tokio::task::spawn_blocking(move || {
        (
            spendguard::cli::ops::run_impact(a).unwrap(),
            spendguard::cli::ops::run_impact(b).unwrap(),
        )
    })
    .await
    .unwrap();
    assert_eq!(codes, (3, 0));
}

/// Lifecycle events replay through the same step: a void that released budget before a
/// later intent is applied to the candidate's windows too, so the recorded policy as
/// candidate reproduces the history (without it, l2 would wait: 400 + 300 > 500).
#[tokio::test]
async fn impact_replays_settlements_on_the_candidates_windows() {
    use crate::harness::scenario::{base_time, decide};
    use spendguard::decision::Effect::Allow;
    let Some((db, ledger)) = fresh_ledger().await else {
        return;
    };
    let url = db.url.clone();
    let (_dir, path) = policy_dir(&policy_text("1.0.0", "500.00", true));
    let set = load(&path);
    let t = base_time();
    let l1 = crate::harness::scenario::intent("l1", "l", "400.00", "utility");
    assert_eq!(decide(&ledger, &set, l1, t).await, Allow);
    let void = spendguard::settlement::parse_settlement(
        br#"{"settlementId":"v-l1","intentId":"l1","type":"VOID"}"#,
    )
    .unwrap();
    ledger
        .settle_at(
            &set,
            &void,
            &crate::harness::db::origin(),
            Some(t + chrono::Duration::minutes(1)),
        )
        .await
        .unwrap();
    let l2 = crate::harness::scenario::intent("l2", "l", "300.00", "utility");
    assert_eq!(
        decide(&ledger, &set, l2, t + chrono::Duration::minutes(2)).await,
        Allow
    );
    let tmp = tempfile::tempdir().unwrap();
    let same = tmp.path().join("same.yaml");
    std::fs::write(&same, policy_text("1.0.0", "500.00", true)).unwrap();
    let r = impact_report(&ledger.reader(), &args(&url, &same))
        .await
        .unwrap();
    assert_eq!((r.intents_replayed, r.unchanged), (2, 2), "{r:#?}");
    assert!(r.transitions.is_empty());
}

/// A candidate that adds a count limit: four ALLOWed intents of one agent in one local
/// day, candidate `burst` (count 2 per calendar day, DENY) turns exactly the third and the
/// fourth into DENY with the count finding. The candidate's DENY holds nothing, so the
/// fourth sees the same two intents before it as the third.
#[tokio::test]
async fn a_candidate_count_limit_reports_exact_transitions() {
    use crate::harness::scenario::{base_time, decide, intent};
    use spendguard::decision::Effect::Allow;
    let Some((db, ledger)) = fresh_ledger().await else {
        return;
    };
    let url = db.url.clone();
    let (_dir, path) = policy_dir(&policy_text("1.0.0", "500.00", true));
    let set = load(&path);
    let t = base_time();
    for (n, id) in ["b1", "b2", "b3", "b4"].into_iter().enumerate() {
        let at = t + chrono::Duration::minutes(n as i64);
        assert_eq!(
            decide(&ledger, &set, intent(id, "b", "100.00", "utility"), at).await,
            Allow
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let burst = tmp.path().join("burst.yaml");
    std::fs::write(
        &burst,
        format!(
            "{}  limits:\n    - {{name: burst, window: {{calendar: day}}, count: 2, effect: DENY}}\n",
            policy_text("1.1.0", "500.00", true)
        ),
    )
    .unwrap();
    let r = impact_report(&ledger.reader(), &args(&url, &burst))
        .await
        .unwrap();
    assert_eq!(r.intents_replayed, 4, "{r:#?}");
    assert_eq!(r.transitions.len(), 1, "{:?}", r.transitions);
    assert_eq!(r.transitions.get("ALLOW->DENY"), Some(&2));
    assert_eq!(r.unchanged, 2);
    let ex = &r.examples["ALLOW->DENY"];
    let ids: Vec<&str> = ex.iter().map(|e| e.intent_id.as_str()).collect();
    assert_eq!(ids, ["b3", "b4"]);
    // São Paulo's calendar day of the scenario (15:00Z is noon there).
    let day = t.date_naive();
    for e in ex {
        assert_eq!(e.recorded_reasons, ["policy_compliant_all_checks_passed"]);
        assert_eq!(
            e.candidate_reasons,
            [format!(
                "would_exceed_count_limit: burst: 2 + 1 > 2 intents (day {day}, America/Sao_Paulo)"
            )]
        );
    }
    assert_eq!(
        r.newly_blocked_spend.get("BRL").map(|d| d.to_string()),
        Some("200.00".into())
    );
    assert_eq!(r.denied_now_allowed, 0);
    assert_eq!(r.exit_code(), 0);

    // The same limit at count 4 changes nothing; at count 3 only b4.
    for (count, changed) in [(4, 0u64), (3, 1)] {
        std::fs::write(
            &burst,
            format!(
                "{}  limits:\n    - {{name: burst, window: {{calendar: day}}, count: {count}, effect: DENY}}\n",
                policy_text("1.1.0", "500.00", true)
            ),
        )
        .unwrap();
        let r = impact_report(&ledger.reader(), &args(&url, &burst))
            .await
            .unwrap();
        assert_eq!(
            r.transitions.get("ALLOW->DENY").copied().unwrap_or(0),
            changed,
            "count {count}: {:?}",
            r.transitions
        );
        assert_eq!(r.unchanged, 4 - changed);
    }
}

/// Recorded exchange rates are part of the state a candidate decides under: a USD intent
/// converted by the ledger is converted again (without the rate it would be denied).
#[tokio::test]
async fn impact_converts_foreign_currency_with_the_recorded_rates() {
    use crate::harness::scenario::{base_time, decide};
    let Some((db, ledger)) = fresh_ledger().await else {
        return;
    };
    let url = db.url.clone();
    let text = "name: ops-p\nversion: \"1\"\ncurrency: BRL\ntimezone: America/Sao_Paulo\ncaps: { perTxn: \"5000.00\", daily: \"5000.00\", monthly: \"50000.00\" }\nfx: { accept: [USD] }\n";
    let (_dir, path) = policy_dir(text);
    let set = load(&path);
    ledger
        .set_fx_rate(
            "USD",
            "BRL",
            "5".parse().unwrap(),
            "treasury",
            "fixing",
            &crate::harness::db::origin(),
        )
        .await
        .unwrap();
    let mut i = crate::harness::scenario::intent("x1", "fx-agent", "100.00", "utility");
    i.currency = "USD".into();
    assert_eq!(
        decide(&ledger, &set, i, base_time()).await,
        spendguard::decision::Effect::Allow
    );
    let tmp = tempfile::tempdir().unwrap();
    let same = tmp.path().join("same.yaml");
    std::fs::write(&same, text).unwrap();
    let r = impact_report(&ledger.reader(), &args(&url, &same))
        .await
        .unwrap();
    assert_eq!((r.intents_replayed, r.unchanged), (1, 1), "{r:#?}");
}
