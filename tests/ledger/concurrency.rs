//! No double spend under concurrency (8+ deciders over several processes), and
//! exactly one decision per intent after a SIGKILL mid-stream and a rerun.

use crate::harness::db::{TestDb, fresh_db, origin};
use crate::harness::intent::{IntentExt, intent};
use crate::harness::policies::{standard_dir, standard_set};
use crate::harness::serve::binary;
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

const AGENTS: usize = 3;
const IN_PROCESS_DECIDERS: usize = 6;
const CHILD_PROCESSES: usize = 2;
const INTENTS_PER_DECIDER: usize = 60;

fn amount(i: usize) -> String {
    format!("{}.{:02}", 10 + (i * 37) % 90, (i * 13) % 100)
}

/// Checks the cap invariant from the events: per agent and local day/month, the sum of
/// ALLOW amounts never exceeds the caps; the live reservations equal the amounts of the
/// intents still waiting; committed equals ALLOW + approved.
async fn assert_invariants(db: &TestDb, daily_cap: Decimal, monthly_cap: Decimal) {
    let mut su = db.superuser().await;
    let rows: Vec<(String, String, String, String, String)> = sqlx::query_as(
        "SELECT actor, payload::jsonb -> 'evaluation' ->> 'effect', payload::jsonb -> 'intent' ->> 'amount',
                payload::jsonb -> 'usage' -> 'window' ->> 'day', payload::jsonb -> 'usage' -> 'window' ->> 'month'
         FROM ledger_event WHERE event_type = 'intent_decided'",
    )
    .fetch_all(&mut su)
    .await
    .unwrap();
    let mut day: HashMap<(String, String), Decimal> = HashMap::new();
    let mut month: HashMap<(String, String), Decimal> = HashMap::new();
    let mut waiting: HashMap<String, Decimal> = HashMap::new();
    for (agent, effect, amount, d, m) in rows {
        let a: Decimal = amount.parse().unwrap();
        if effect == "ALLOW" {
            *day.entry((agent.clone(), d)).or_default() += a;
            *month.entry((agent.clone(), m)).or_default() += a;
        } else if effect.starts_with("REQUIRE") {
            *waiting.entry(agent).or_default() += a;
        }
    }
    assert!(!day.is_empty());
    for ((agent, d), total) in &day {
        assert!(
            *total <= daily_cap,
            "agent {agent} day {d}: auto-allowed {total} > cap {daily_cap}"
        );
    }
    for ((agent, m), total) in &month {
        assert!(
            *total <= monthly_cap,
            "agent {agent} month {m}: auto-allowed {total} > cap {monthly_cap}"
        );
    }
    // Live projection: committed per agent = auto-allowed (no approvals in this test);
    // reserved = everything still waiting.
    let live: Vec<(String, Decimal, Decimal)> = sqlx::query_as(
        "SELECT agent_id, sum(committed), sum(reserved) FROM usage_window WHERE kind = 'D' GROUP BY agent_id",
    )
    .fetch_all(&mut su)
    .await
    .unwrap();
    for (agent, committed, reserved) in live {
        let allowed: Decimal = day
            .iter()
            .filter(|((a, _), _)| *a == agent)
            .map(|(_, v)| *v)
            .sum();
        assert_eq!(committed, allowed, "agent {agent} committed");
        assert_eq!(
            reserved,
            waiting.get(&agent).copied().unwrap_or_default(),
            "agent {agent} reserved"
        );
    }
    let report = spendguard::ledger::query::LedgerReader::connect(&db.url, 2)
        .await
        .unwrap()
        .replay(true)
        .await
        .unwrap();
    assert!(report.ok(), "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_double_spend_with_eight_deciders_over_three_processes() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = std::sync::Arc::new(db.ledger_with(IN_PROCESS_DECIDERS as u32 + 2).await);
    let (_d, set) = standard_set(); // daily 500, monthly 2000
    let set = std::sync::Arc::new(set);
    let (_pd, policy_path) = standard_dir();

    // Child processes: `spendguard ledger submit` over their own intents (batch 1 and 5).
    let mut children = Vec::new();
    for c in 0..CHILD_PROCESSES {
        let lines: String = (0..INTENTS_PER_DECIDER)
            .map(|i| {
                intent(
                    &format!("p{c}-{i}"),
                    &format!("agent-{}", i % AGENTS),
                    &amount(i + c),
                )
                .json()
                    + "\n"
            })
            .collect();
        let mut child = Command::new(binary())
            .env("SPENDGUARD_KEK", crate::harness::db::kek_for(&db.url))
            .args(["ledger", "submit", "--database-url", &db.url, "--policies"])
            .arg(&policy_path)
            .args([
                "--batch",
                if c == 0 { "1" } else { "5" },
                "--instance",
                &format!("child-{c}"),
            ])
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
    // In this process: 6 concurrent deciders, some single, some batched.
    let mut tasks = Vec::new();
    for t in 0..IN_PROCESS_DECIDERS {
        let (ledger, set) = (ledger.clone(), set.clone());
        tasks.push(tokio::spawn(async move {
            let items: Vec<_> = (0..INTENTS_PER_DECIDER)
                .map(|i| {
                    (
                        intent(
                            &format!("t{t}-{i}"),
                            &format!("agent-{}", (i + t) % AGENTS),
                            &amount(i * 3 + t),
                        ),
                        origin(),
                    )
                })
                .collect();
            if t % 2 == 0 {
                for it in &items {
                    ledger.decide(&set, &it.0, &it.1).await.unwrap();
                }
            } else {
                for chunk in items.chunks(7) {
                    for r in ledger.decide_batch(&set, chunk).await.unwrap() {
                        r.unwrap();
                    }
                }
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
            "child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).lines().count(),
            INTENTS_PER_DECIDER
        );
    }
    let mut su = db.superuser().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM decision")
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert_eq!(
        n as usize,
        (IN_PROCESS_DECIDERS + CHILD_PROCESSES) * INTENTS_PER_DECIDER
    );
    assert_invariants(&db, Decimal::new(500, 0), Decimal::new(2000, 0)).await;
    assert!(ledger.audit_verify().await.unwrap().problems.is_empty());
}

#[tokio::test]
async fn sigkill_mid_stream_then_rerun_gives_exactly_one_decision_per_intent() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    // Make sure the schema exists before the child starts.
    let ledger = db.ledger().await;
    let (_pd, policy_path) = standard_dir();
    const N: usize = 400;
    let input = tempfile::NamedTempFile::new().unwrap();
    let lines: String = (0..N)
        .map(|i| intent(&format!("k-{i}"), &format!("agent-{}", i % 2), &amount(i)).json() + "\n")
        .collect();
    std::fs::write(input.path(), &lines).unwrap();

    let submit = || {
        let mut c = Command::new(binary());
        c.env("SPENDGUARD_KEK", crate::harness::db::kek_for(&db.url));
        c.args(["ledger", "submit", "--database-url", &db.url, "--policies"])
            .arg(&policy_path)
            .arg("--input")
            .arg(input.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let mut child = submit().spawn().unwrap();
    let mut first_run = Vec::new();
    {
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while first_run.len() < N / 4 && out.read_line(&mut line).unwrap() > 0 {
            first_run.push(std::mem::take(&mut line));
        }
    }
    // SIGKILL mid-stream (Child::kill sends SIGKILL on Unix).
    child.kill().unwrap();
    child.wait().unwrap();
    let mut su = db.superuser().await;
    let decided: i64 = sqlx::query_scalar("SELECT count(*) FROM decision")
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert!(
        decided as usize >= first_run.len(),
        "every printed decision is committed"
    );

    // Redelivery: the whole stream again.
    let out = submit().output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(second.len(), N);
    // Decisions printed before the kill are republished identically.
    for (a, b) in first_run.iter().zip(&second) {
        assert_eq!(a.trim_end(), b, "republished decision differs");
    }
    let per_intent: Vec<(String, i64)> = sqlx::query_as(
        "SELECT resource, count(*) FROM ledger_event WHERE event_type = 'intent_decided' GROUP BY resource",
    )
    .fetch_all(&mut su)
    .await
    .unwrap();
    assert_eq!(per_intent.len(), N);
    assert!(
        per_intent.iter().all(|(_, n)| *n == 1),
        "an intent was decided twice"
    );
    assert_invariants(&db, Decimal::new(500, 0), Decimal::new(2000, 0)).await;
    drop(ledger);
}

/// SPEC §15: an instance paused mid-transaction (SIGSTOP, VM pause) must not freeze the
/// ledger. The paused instance is modelled exactly: a session with the ledger's session
/// limits (`TestDb::ledger_session`) takes the locks a decision takes, then sends nothing
/// more.
/// Without `idle_in_transaction_session_timeout` the kill switch would wait for ever
/// (and fail on `lock_timeout`); with it the server ends the paused session and the
/// kill switch applies, and another agent is decided meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_lock_holder_cannot_hold_back_the_kill_switch() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let (_dir, set) = standard_set();
    let paused = db.ledger().await;
    let operator = db.ledger().await;
    let origin = spendguard::ledger::Origin::cli("test");
    paused
        .decide(&set, &intent("warm-0", "agent-p", "10.00"), &origin)
        .await
        .unwrap();

    let mut session = db.ledger_session().await;
    let mut held = sqlx::Connection::begin(&mut session).await.unwrap();
    let keys = vec![spendguard::ledger::chain::lock_key(
        &spendguard::ledger::chain::agent_chain("agent-p"),
    )];
    sqlx::query("SELECT ledger_lock($1, $2)")
        .bind(&keys)
        .bind(spendguard::ledger::chain::kill_switch_lock_key())
        .execute(&mut *held)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    // A liveness bound, not a timing assertion: without the session limits this call
    // never returns (or fails on lock_timeout).
    let seq = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        operator.set_kill_switch(
            &spendguard::kill_switch::Scope::Agent("agent-p".into()),
            true,
            "alice",
            "fraud alert",
            &origin,
        ),
    )
    .await
    .expect("the kill switch waited on a paused session's locks")
    .expect("the kill switch was recorded");
    eprintln!(
        "kill switch recorded (seq {seq}) {} ms after a paused session took the locks",
        started.elapsed().as_millis()
    );
    assert!(seq > 0);

    // The paused session was ended by the server: its transaction cannot commit.
    let after = sqlx::query("SELECT 1").execute(&mut *held).await;
    assert!(
        after.is_err(),
        "the paused session should have been terminated"
    );
    drop(held);

    // Decisions go on: another agent is allowed, the killed one is denied.
    let other = operator
        .decide(&set, &intent("other-1", "agent-q", "10.00"), &origin)
        .await
        .unwrap();
    assert_eq!(other.message.effect.as_str(), "ALLOW");
    let killed = operator
        .decide(&set, &intent("killed-1", "agent-p", "10.00"), &origin)
        .await
        .unwrap();
    assert_eq!(killed.message.effect.as_str(), "DENY");
}
