//! Scenarios with known totals for the report, impact and API tests, recorded in a real
//! ledger (a fresh database per test) under policy `ops-p`.

use super::intent::IntentExt;
use super::policies;
use chrono::{DateTime, Duration, DurationRound, Utc};
use spendguard::intent::{IntentError, SpendIntent};
use spendguard::ledger::{Ledger, Origin, VerifiedVote, Vote};
use spendguard::policy::PolicySet;
use std::path::PathBuf;

/// Policy `ops-p`: perTxn 1000, daily `daily`, monthly 5000, MSIG above 800 (2 approvals),
/// category `gambling` blocked unless `block_gambling` is false. BRL, São Paulo.
pub fn policy_text(version: &str, daily: &str, block_gambling: bool) -> String {
    let blocked = if block_gambling {
        "[gambling]"
    } else {
        "[weapons]"
    };
    format!(
        "apiVersion: policy.spendguard.v1\nkind: SpendPolicy\nmetadata: {{ name: ops-p, version: \"{version}\" }}\nspec:\n  description: ops test policy\n  currency: BRL\n  timezone: America/Sao_Paulo\n  caps: {{ perTxn: \"1000.00\", daily: \"{daily}\", monthly: \"5000.00\" }}\n  msig: {{ threshold: {{ higherThan: \"800.00\", approvals: 2 }} }}\n  blockLists: {{ categories: {blocked} }}\n  approvalTtl: 604800s\n"
    )
}

/// A policy directory with `ops-p` (of `text`) bound to every agent.
pub fn policy_dir(text: &str) -> (tempfile::TempDir, PathBuf) {
    policies::policy_dir(&[("ops-p.yaml", text)], "default: ops-p\n")
}

/// A scenario intent ([`super::intent::intent`]) in `category`, paid to a card (the
/// report counts the masked accounts).
pub fn intent(id: &str, agent: &str, amount: &str, category: &str) -> SpendIntent {
    super::intent::intent(id, agent, amount)
        .category(category)
        .account("4111111111111111")
}

pub fn origin() -> Origin {
    Origin::cli("ops-test")
}

/// A fresh database and a ledger connected to it (migrated, instance `ops-test`), or
/// None to skip. The database is dropped with the [`super::db::TestDb`].
pub async fn fresh_ledger() -> Option<(super::db::TestDb, Ledger)> {
    let db = super::db::fresh_db("sg_ops_").await?;
    let ledger = db.ledger_named("ops-test").await;
    Some((db, ledger))
}

/// Two days ago at 15:00 UTC (12:00 in São Paulo): all scenario decisions fall in one
/// local day, whatever day the tests run.
pub fn base_time() -> DateTime<Utc> {
    let today = Utc::now()
        .duration_trunc(Duration::days(1))
        .expect("truncate");
    today - Duration::days(2) + Duration::hours(15)
}

pub async fn decide(
    ledger: &Ledger,
    set: &PolicySet,
    i: SpendIntent,
    at: DateTime<Utc>,
) -> spendguard::decision::Effect {
    ledger
        .decide_at(set, &i, &origin(), at)
        .await
        .expect("decide")
        .message
        .effect
}

pub async fn vote(ledger: &Ledger, intent_id: &str, approver: &str, v: Vote, at: DateTime<Utc>) {
    let vote = VerifiedVote {
        intent_id: intent_id.into(),
        approver_id: approver.into(),
        vote: v,
        signed_at: at,
        proof: None,
        registered: None,
    };
    ledger
        .apply_vote_at(&vote, &origin(), Some(at))
        .await
        .expect("vote");
}

/// The report scenario. Known totals:
/// decisions 6 (ALLOW 1, REQUIRE_HITL 1, REQUIRE_MSIG 1, DENY 3); deny reasons
/// exceeds_per_transaction_limit 1, category_blocked 1, kill_switch_activated 1;
/// approvals requested 2, approved 1 (after 600 s), rejected 1, pending 0; refused votes 1
/// (bad_signature); kill-switch changes 2; invalid inputs 1 (invalid_json); agent a1
/// committed 550.00 BRL (100 allowed + 450 approved); 6 masked accounts.
pub async fn report_scenario(ledger: &Ledger, set: &PolicySet) {
    use spendguard::decision::Effect::*;
    let t = base_time();
    let m = |n: i64| t + Duration::minutes(n);
    assert_eq!(
        decide(ledger, set, intent("i1", "a1", "100.00", "utility"), m(0)).await,
        Allow
    );
    assert_eq!(
        decide(ledger, set, intent("i2", "a1", "1500.00", "utility"), m(1)).await,
        Deny
    );
    assert_eq!(
        decide(ledger, set, intent("i3", "a1", "450.00", "utility"), m(2)).await,
        RequireHitl
    );
    assert_eq!(
        decide(ledger, set, intent("i4", "a2", "50.00", "gambling"), m(3)).await,
        Deny
    );
    assert_eq!(
        decide(ledger, set, intent("i5", "a2", "900.00", "utility"), m(4)).await,
        RequireMsig
    );
    vote(ledger, "i3", "alice", Vote::Approve, m(12)).await;
    vote(ledger, "i5", "bob", Vote::Reject, m(20)).await;
    ledger
        .set_kill_switch(
            &spendguard::kill_switch::Scope::Global,
            true,
            "ops-carol",
            "incident drill",
            &origin(),
        )
        .await
        .expect("kill on");
    assert_eq!(
        decide(ledger, set, intent("i6", "a2", "10.00", "utility"), m(30)).await,
        Deny
    );
    ledger
        .set_kill_switch(
            &spendguard::kill_switch::Scope::Global,
            false,
            "ops-carol",
            "drill over",
            &origin(),
        )
        .await
        .expect("kill off");
    let err = spendguard::intent::parse_intent(b"not json").expect_err("invalid");
    let _: &IntentError = &err;
    ledger
        .record_invalid_intent(b"not json", &err, &origin())
        .await
        .expect("invalid");
    ledger
        .refuse_vote(
            br#"{"intentId":"i3","approverId":"mallory","vote":"APPROVE"}"#,
            "bad_signature",
            "signature does not verify",
            &origin(),
        )
        .await
        .expect("refused vote");
}

/// The impact history (agent h, one local day, `ops-p` v1 with daily 500):
/// h1 100 ALLOW, h2 150 ALLOW, h3 200 gambling DENY, h4 200 ALLOW, h5 100 HITL (then
/// REJECTED), h6 50 ALLOW (450 + 50 = 500: equality passes).
pub async fn impact_history(ledger: &Ledger, set: &PolicySet) {
    use spendguard::decision::Effect::*;
    let t = base_time();
    let m = |n: i64| t + Duration::minutes(n);
    assert_eq!(
        decide(ledger, set, intent("h1", "h", "100.00", "utility"), m(0)).await,
        Allow
    );
    assert_eq!(
        decide(ledger, set, intent("h2", "h", "150.00", "utility"), m(1)).await,
        Allow
    );
    assert_eq!(
        decide(ledger, set, intent("h3", "h", "200.00", "gambling"), m(2)).await,
        Deny
    );
    assert_eq!(
        decide(ledger, set, intent("h4", "h", "200.00", "utility"), m(3)).await,
        Allow
    );
    assert_eq!(
        decide(ledger, set, intent("h5", "h", "100.00", "utility"), m(4)).await,
        RequireHitl
    );
    vote(ledger, "h5", "alice", Vote::Reject, m(5)).await;
    assert_eq!(
        decide(ledger, set, intent("h6", "h", "50.00", "utility"), m(6)).await,
        Allow
    );
}

/// `--from` / `--to` covering the scenario and today (kill-switch and invalid-input events
/// are recorded at the database's clock).
pub fn period_args() -> (String, String) {
    let from = (base_time() - Duration::days(1)).date_naive();
    let to = (Utc::now() + Duration::days(1)).date_naive();
    (from.to_string(), to.to_string())
}
