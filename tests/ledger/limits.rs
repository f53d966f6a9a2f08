//! Limits (SPEC §12) on the real PostgreSQL, with the acceptance time injected: ISO week
//! and year boundaries in America/Sao_Paulo, a trailing window whose oldest intent falls
//! out exactly at its length, entity scope over two agents, filters, the lifecycle's
//! effect on count limits, and many deciders over several processes on one entity.

use crate::harness::db::{TestDb, at, fresh_db, origin};
use crate::harness::intent::{IntentExt, intent};
use crate::harness::policies::{DEFAULT_BINDINGS, policy_dir, policy_set};
use crate::harness::serve::binary;
use rust_decimal::Decimal;
use spendguard::decision::Effect;
use spendguard::ledger::Ledger;
use spendguard::policy::PolicySet;
use std::io::Write;
use std::process::{Command, Stdio};

/// Policy `p` (BRL, Sao Paulo, caps out of the way) with `limits` (YAML list items).
fn policy(limits: &str) -> String {
    format!(
        "name: p\ncurrency: BRL\ntimezone: America/Sao_Paulo\ncaps: {{ perTxn: \"100000.00\", daily: \"1000000.00\", monthly: \"10000000.00\" }}\nlimits:\n{limits}"
    )
}

fn set_with(limits: &str) -> (tempfile::TempDir, PolicySet) {
    policy_set(&[("p.yaml", &policy(limits))], DEFAULT_BINDINGS)
}

async fn decide(
    ledger: &Ledger,
    set: &PolicySet,
    i: spendguard::intent::SpendIntent,
    when: &str,
) -> spendguard::ledger::Decided {
    ledger
        .decide_at(set, &i, &origin(), at(when))
        .await
        .expect("decide")
}

fn codes(d: &spendguard::ledger::Decided) -> Vec<String> {
    d.message
        .reasons
        .iter()
        .map(|r| r.code.to_string())
        .collect()
}

async fn replay_ok(ledger: &Ledger) {
    let report = ledger.replay(true).await.unwrap();
    assert!(report.ok(), "{report:#?}");
}

#[tokio::test]
async fn iso_week_resets_at_monday_midnight_in_sao_paulo() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_d, set) =
        set_with("  - { name: weekly, window: { calendar: week }, amount: \"300.00\" }\n");
    // Sunday 2026-11-29 23:59:59 local (UTC-3).
    let a = decide(
        &ledger,
        &set,
        intent("w1", "ag", "200.00"),
        "2026-11-30T02:59:59Z",
    )
    .await;
    assert_eq!(a.message.effect, Effect::Allow);
    // Exactly at the limit passes.
    let b = decide(
        &ledger,
        &set,
        intent("w2", "ag", "100.00"),
        "2026-11-30T02:59:59Z",
    )
    .await;
    assert_eq!(b.message.effect, Effect::Allow);
    let c = decide(
        &ledger,
        &set,
        intent("w3", "ag", "0.01"),
        "2026-11-30T02:59:59Z",
    )
    .await;
    assert_eq!(c.message.effect, Effect::RequireHitl);
    assert_eq!(c.message.reasons[0].code, "would_exceed_amount_limit");
    assert_eq!(
        c.message.reasons[0].detail,
        "weekly: 300.00 + 0.01 > 300.00 BRL (week of 2026-11-23, America/Sao_Paulo)"
    );
    let u = &c.message.usage.as_ref().unwrap().limits[0];
    assert_eq!(
        (u.window.to_string().as_str(), u.amount_so_far),
        ("week of 2026-11-23", Some(Decimal::new(30000, 2)))
    );
    // Monday 00:00 local: a new ISO week.
    let d = decide(
        &ledger,
        &set,
        intent("w4", "ag", "300.00"),
        "2026-11-30T03:00:00Z",
    )
    .await;
    assert_eq!(d.message.effect, Effect::Allow, "{:?}", codes(&d));
    replay_ok(&ledger).await;
}

#[tokio::test]
async fn yearly_count_limit_resets_at_new_year_local_time() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_d, set) = set_with(
        "  - { name: yearly-count, window: { calendar: year }, count: 2, effect: DENY }\n",
    );
    let eve = "2027-01-01T02:59:59Z"; // 23:59:59 on Dec 31 in Sao Paulo
    for id in ["y1", "y2"] {
        let r = decide(&ledger, &set, intent(id, "ag", "1.00"), eve).await;
        assert_eq!(r.message.effect, Effect::Allow);
    }
    let third = decide(&ledger, &set, intent("y3", "ag", "1.00"), eve).await;
    assert_eq!(third.message.effect, Effect::Deny);
    assert_eq!(third.message.reasons[0].code, "would_exceed_count_limit");
    assert_eq!(
        third.message.reasons[0].detail,
        "yearly-count: 2 + 1 > 2 intents (year 2026, America/Sao_Paulo)"
    );
    let new_year = decide(
        &ledger,
        &set,
        intent("y4", "ag", "1.00"),
        "2027-01-01T03:00:00Z",
    )
    .await;
    assert_eq!(new_year.message.effect, Effect::Allow);
    replay_ok(&ledger).await;
}

#[tokio::test]
async fn trailing_window_lets_the_oldest_intent_fall_out_exactly_at_its_length() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_d, set) = set_with(
        "  - { name: one-a-day, window: { trailing: 24h }, count: 1, amount: \"100.00\" }\n",
    );
    let t0 = "2026-11-20T10:00:00Z";
    assert_eq!(
        decide(&ledger, &set, intent("t1", "ag", "60.00"), t0)
            .await
            .message
            .effect,
        Effect::Allow
    );
    // One microsecond before t0 + 24h the first intent still counts (count and amount).
    let early = decide(
        &ledger,
        &set,
        intent("t2", "ag", "50.00"),
        "2026-11-21T09:59:59.999999Z",
    )
    .await;
    assert_eq!(early.message.effect, Effect::RequireHitl);
    assert_eq!(
        codes(&early),
        ["would_exceed_amount_limit", "would_exceed_count_limit"]
    );
    // At t0 + 24h it has fallen out; t2 waits (a reservation counts), so t3 is checked
    // against it.
    let on_time = decide(
        &ledger,
        &set,
        intent("t3", "ag", "40.00"),
        "2026-11-21T10:00:00Z",
    )
    .await;
    assert_eq!(
        on_time.message.effect,
        Effect::RequireHitl,
        "t2's reservation counts"
    );
    assert_eq!(codes(&on_time), ["would_exceed_count_limit"]);
    replay_ok(&ledger).await;
}

#[tokio::test]
async fn entity_scope_sums_the_agents_of_one_entity() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_d, set) = set_with(
        "  - { name: entity-monthly, window: { calendar: month }, amount: \"500.00\", scope: entity, effect: REQUIRE_MSIG, approvals: 3 }\n",
    );
    let when = "2026-11-20T15:00:00Z";
    let a = decide(&ledger, &set, intent("e1", "agent-a", "300.00"), when).await;
    assert_eq!(a.message.effect, Effect::Allow);
    let b = decide(&ledger, &set, intent("e2", "agent-b", "250.00"), when).await;
    assert_eq!(b.message.effect, Effect::RequireMsig);
    assert_eq!(b.message.approvals_required, 3);
    assert_eq!(
        b.message.reasons[0].detail,
        "entity-monthly: 300.00 + 250.00 > 500.00 BRL (month 2026-11, America/Sao_Paulo)"
    );
    // Another entity is another budget.
    let mut other = intent("e3", "agent-c", "250.00");
    other.entity_id = "acme-cl".into();
    assert_eq!(
        decide(&ledger, &set, other, when).await.message.effect,
        Effect::Allow
    );
    // Releasing money frees the entity budget: e1 voided, e4 fits.
    let void = spendguard::settlement::parse_settlement(
        br#"{"settlementId":"v1","intentId":"e1","type":"VOID"}"#,
    )
    .unwrap();
    ledger
        .settle_at(&set, &void, &origin(), Some(at(when)))
        .await
        .unwrap();
    let c = decide(&ledger, &set, intent("e4", "agent-a", "250.00"), when).await;
    assert_eq!(
        c.message.effect,
        Effect::Allow,
        "250 (e2 reserved) + 250 = 500: {:?}",
        codes(&c)
    );
    replay_ok(&ledger).await;
}

/// Replay builds the limits' records (timelines) only when it first re-runs a recorded
/// policy with limits: records decided and settled before any policy had limits must
/// count then, in both scopes, as they did live.
#[tokio::test]
async fn limits_added_later_count_the_records_decided_before_them() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_p, plain) = policy_set(
        &[(
            "p.yaml",
            "name: p\ncurrency: BRL\ntimezone: America/Sao_Paulo\ncaps: { perTxn: \"100000.00\", daily: \"1000000.00\", monthly: \"10000000.00\" }\n",
        )],
        DEFAULT_BINDINGS,
    );
    let when = "2026-11-20T15:00:00Z";
    for (id, agent, amount) in [
        ("l1", "agent-a", "300.00"),
        ("l2", "agent-b", "100.00"),
        ("l3", "agent-a", "50.00"),
    ] {
        let d = decide(&ledger, &plain, intent(id, agent, amount), when).await;
        assert_eq!(d.message.effect, Effect::Allow);
    }
    // l3 voided: it holds nothing any more (its record changes before limits exist).
    let void = spendguard::settlement::parse_settlement(
        br#"{"settlementId":"lv","intentId":"l3","type":"VOID"}"#,
    )
    .unwrap();
    ledger
        .settle_at(&plain, &void, &origin(), Some(at(when)))
        .await
        .unwrap();
    let (_l, limited) = set_with(
        "  - { name: entity-monthly, window: { calendar: month }, amount: \"500.00\", scope: entity, effect: DENY }\n  - { name: agent-count, window: { calendar: month }, count: 2, effect: DENY }\n",
    );
    // agent-a: l1 counts, l3 (voided) does not: a second intent fits the count limit.
    let a = decide(&ledger, &limited, intent("l4", "agent-a", "50.00"), when).await;
    assert_eq!(a.message.effect, Effect::Allow, "{:?}", codes(&a));
    // The entity holds l1 + l2 + l4 = 450 (l3 released): 60 more is over 500.
    let b = decide(&ledger, &limited, intent("l5", "agent-b", "60.00"), when).await;
    assert_eq!(b.message.effect, Effect::Deny);
    assert_eq!(
        b.message.reasons[0].detail,
        "entity-monthly: 450.00 + 60.00 > 500.00 BRL (month 2026-11, America/Sao_Paulo)"
    );
    replay_ok(&ledger).await;
}

#[tokio::test]
async fn a_filtered_limit_counts_and_checks_only_matching_intents() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_d, set) = set_with(
        "  - { name: one-trip, window: { calendar: all_time }, count: 1, filter: { categoryIn: [travel], countryIn: [BR] }, effect: DENY }\n",
    );
    let when = "2026-11-20T15:00:00Z";
    let trip = intent("f1", "ag", "10.00").category("travel");
    assert_eq!(
        decide(&ledger, &set, trip, when).await.message.effect,
        Effect::Allow
    );
    // Not travel: neither counted nor checked.
    for id in ["f2", "f3"] {
        let r = decide(&ledger, &set, intent(id, "ag", "10.00"), when).await;
        assert_eq!(r.message.effect, Effect::Allow);
    }
    let again = decide(
        &ledger,
        &set,
        intent("f4", "ag", "10.00").category("travel"),
        when,
    )
    .await;
    assert_eq!(again.message.effect, Effect::Deny);
    assert_eq!(codes(&again), ["would_exceed_count_limit"]);
    // A denied intent holds nothing: the count is still 1.
    assert_eq!(
        again.message.usage.as_ref().unwrap().limits[0].count_so_far,
        Some(1)
    );
    replay_ok(&ledger).await;
}

#[tokio::test]
async fn a_fully_voided_intent_no_longer_counts_but_a_partly_captured_one_does() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_d, set) =
        set_with("  - { name: weekly-count, window: { trailing: 7d }, count: 1, effect: DENY }\n");
    let when = "2026-11-20T15:00:00Z";
    assert_eq!(
        decide(&ledger, &set, intent("c1", "ag", "100.00"), when)
            .await
            .message
            .effect,
        Effect::Allow
    );
    assert_eq!(
        decide(&ledger, &set, intent("c2", "ag", "100.00"), when)
            .await
            .message
            .effect,
        Effect::Deny
    );
    let settle = |text: &'static str| {
        let ledger = &ledger;
        let set = &set;
        async move {
            let s = spendguard::settlement::parse_settlement(text.as_bytes()).unwrap();
            ledger
                .settle_at(set, &s, &origin(), Some(at(when)))
                .await
                .unwrap()
        }
    };
    settle(r#"{"settlementId":"v-c1","intentId":"c1","type":"VOID"}"#).await;
    let c3 = decide(&ledger, &set, intent("c3", "ag", "100.00"), when).await;
    assert_eq!(
        c3.message.effect,
        Effect::Allow,
        "c1 voided: {:?}",
        codes(&c3)
    );
    settle(r#"{"settlementId":"p-c3","intentId":"c3","type":"CAPTURE","amount":"1.00","currency":"BRL","final":true}"#).await;
    assert_eq!(
        decide(&ledger, &set, intent("c4", "ag", "100.00"), when)
            .await
            .message
            .effect,
        Effect::Deny,
        "a captured intent still counts"
    );
    replay_ok(&ledger).await;
}

/// SPEC §12: entity scope exact under concurrency. Four agents of one entity, decided
/// by 6 tasks in this process and 2 child processes (`ledger submit`) at once, against
/// an all-time entity amount limit and a trailing per-agent count limit (both DENY).
/// Afterwards neither is exceeded, and replay reproduces every decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_deciders_over_three_processes_never_pass_an_entity_limit() {
    const IN_PROCESS: usize = 6;
    const CHILDREN: usize = 2;
    const PER_DECIDER: usize = 20;
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let limits = "  - { name: entity-budget, window: { calendar: all_time }, amount: \"2000.00\", scope: entity, effect: DENY }\n  - { name: per-agent-burst, window: { trailing: 24h }, count: 6, effect: DENY }\n";
    let (_pd, path) = policy_dir(&[("p.yaml", &policy(limits))], DEFAULT_BINDINGS);
    let set = std::sync::Arc::new(spendguard::policy::PolicySet::load_dir(&path).unwrap());
    let amount = |i: usize| format!("{}.00", 40 + (i * 17) % 80);
    let agent = |i: usize| format!("agent-{}", i % 4);
    let mut children = Vec::new();
    for c in 0..CHILDREN {
        let lines: String = (0..PER_DECIDER)
            .map(|i| intent(&format!("p{c}-{i}"), &agent(i + c), &amount(i + c)).json() + "\n")
            .collect();
        let mut child = Command::new(binary())
            .env("SPENDGUARD_KEK", crate::harness::db::kek_for(&db.url))
            .args(["ledger", "submit", "--database-url", &db.url, "--policies"])
            .arg(&path)
            .args(["--batch", if c == 0 { "1" } else { "4" }])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn spendguard");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(lines.as_bytes())
            .unwrap();
        children.push(child);
    }
    let mut tasks = Vec::new();
    for t in 0..IN_PROCESS {
        let ledger = std::sync::Arc::new(db.ledger_named(&format!("decider-{t}")).await);
        let set = set.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_DECIDER {
                let it = intent(&format!("t{t}-{i}"), &agent(i + t), &amount(i * 3 + t));
                ledger.decide(&set, &it, &origin()).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_limits_held(&db, Decimal::new(200_000, 2), 6).await;
    replay_ok(&db.ledger().await).await;
}

async fn assert_limits_held(db: &TestDb, entity_budget: Decimal, per_agent: usize) {
    let mut su = db.superuser().await;
    let allowed: Vec<(String, String)> = sqlx::query_as(
        "SELECT actor, payload::jsonb -> 'intent' ->> 'amount' FROM ledger_event
         WHERE event_type = 'intent_decided' AND payload::jsonb -> 'evaluation' ->> 'effect' = 'ALLOW'",
    )
    .fetch_all(&mut su)
    .await
    .unwrap();
    let total: Decimal = allowed
        .iter()
        .map(|(_, a)| a.parse::<Decimal>().unwrap())
        .sum();
    assert!(
        total <= entity_budget,
        "entity allowed {total} > {entity_budget}"
    );
    assert!(total > Decimal::ZERO);
    let mut per: std::collections::HashMap<&str, usize> = Default::default();
    for (a, _) in &allowed {
        *per.entry(a.as_str()).or_default() += 1;
    }
    for (a, n) in per {
        assert!(n <= per_agent, "agent {a}: {n} allowed > {per_agent}");
    }
    let decided: i64 = sqlx::query_scalar("SELECT count(*) FROM decision")
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert_eq!(decided, 160);
}
