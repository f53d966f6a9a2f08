//! Effectively once across a crash: 2 `serve` processes in one consumer group, one is
//! SIGKILLed while intents are still flowing, the other takes over its partitions.
//! Afterwards every intent has exactly one decision event in the ledger, every decision
//! message on the topic is identical to the recorded one, and no agent was allowed past
//! its daily cap.

mod common;

use common::ServeProcess;
use rdkafka::Message;
use spendguard::bus::{self, Topics};
use sqlx::Connection;
use std::collections::BTreeMap;
use std::time::Duration;

const AGENTS: usize = 8;
const INTENTS: usize = 240;
/// Daily cap of the test policy and the amount of every intent: 5 may be allowed a day.
const DAILY_CAP: &str = "50";
const AMOUNT: &str = "10.00";
const MAX_ALLOWED_PER_AGENT: i64 = 5;
/// Pause between produced intents, so the stream is still flowing at the kill.
const PRODUCE_GAP_MS: u64 = 10;
const WAIT_MS: u64 = 120_000;

async fn scalar(db: &str, sql: &'static str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(db).await.unwrap();
    sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_one_instance_loses_and_duplicates_nothing() {
    if !common::require_broker() || !common::require_postgres() {
        return;
    }
    let brokers = common::brokers();
    let db = common::fresh_database("sg_crash_").await;
    let prefix = format!("{}.", common::unique("crash"));
    let group = common::unique("g-");
    let dir = tempfile::tempdir().unwrap();
    let policies = common::test_policies(dir.path(), "1", DAILY_CAP, "1h");
    let env = common::service_env(&db, &prefix, &group, &policies);
    let topics = Topics::with_prefix(&prefix);

    let victim = ServeProcess::start(&env, "crash-0", dir.path(), &[]);
    let survivor = ServeProcess::start(&env, "crash-1", dir.path(), &[]);

    let producer = bus::producer(&brokers).unwrap();
    let publisher = tokio::spawn({
        let producer = producer.clone();
        let topic = topics.intents.clone();
        async move {
            for i in 0..INTENTS {
                let agent = format!("agent-c{}", i % AGENTS);
                let body = common::intent_json(&format!("c-{i}"), &agent, AMOUNT, "vendor:known");
                bus::publish(&producer, &topic, agent.as_bytes(), body.as_bytes(), None)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(PRODUCE_GAP_MS)).await;
            }
        }
    });

    // Kill the victim once it has decided something, while the stream still flows.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    while scalar(
        &db,
        "SELECT count(*) FROM ledger_event WHERE event_type = 'intent_decided' AND origin::jsonb->>'instance' = 'crash-0'",
    )
    .await
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "crash-0 decided nothing:\n{}",
            victim.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut victim = victim;
    victim.child.kill().unwrap(); // SIGKILL
    victim.child.wait().unwrap();
    assert!(
        !publisher.is_finished(),
        "the kill must happen mid-stream; raise INTENTS"
    );
    publisher.await.unwrap();

    // The survivor takes over the victim's partitions and decides the rest.
    while scalar(&db, "SELECT count(*) FROM decision").await < INTENTS as i64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every intent was decided after the crash:\n{}",
            survivor.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Exactly one decision event per intent (redeliveries were answered from the ledger).
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM ledger_event WHERE event_type = 'intent_decided'"
        )
        .await,
        INTENTS as i64
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT count(DISTINCT resource) FROM ledger_event WHERE event_type = 'intent_decided'"
        )
        .await,
        INTENTS as i64
    );
    assert!(
        scalar(
            &db,
            "SELECT count(DISTINCT origin::jsonb->>'instance') FROM ledger_event WHERE event_type = 'intent_decided'"
        )
        .await
            == 2,
        "both instances must have decided intents"
    );

    // The cap invariant: no agent allowed past its daily cap, in decisions and in usage.
    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
    let allowed: Vec<(String, i64)> = sqlx::query_as(
        "SELECT agent_id, count(*) FROM decision WHERE effect = 'ALLOW' GROUP BY agent_id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(allowed.len(), AGENTS, "{allowed:?}");
    for (agent, n) in &allowed {
        // Exactly the cap, unless the local day turned during the run.
        assert!(
            (1..=MAX_ALLOWED_PER_AGENT).contains(n),
            "{agent} allowed {n} times"
        );
    }
    let over: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM usage_window WHERE kind = 'D' AND committed > $1::numeric",
    )
    .bind(DAILY_CAP)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(over, 0, "a daily window committed more than the cap");

    // Every decision is published at least once, and every copy is the recorded one.
    let recorded: BTreeMap<String, String> =
        sqlx::query_as("SELECT intent_id, message FROM decision")
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let published = common::read_until(&brokers, &topics.decisions, WAIT_MS, |ms| {
        let ids: std::collections::BTreeSet<String> = ms
            .iter()
            .map(|m| {
                common::json(m)["intentId"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        ids.len() >= INTENTS
    })
    .await;
    let mut seen = std::collections::BTreeSet::new();
    for m in &published {
        let text = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
        let id = common::json(m)["intentId"].as_str().unwrap().to_string();
        assert_eq!(
            Some(&text),
            recorded.get(&id),
            "published decision differs from the ledger's"
        );
        seen.insert(id);
    }
    assert_eq!(seen.len(), INTENTS, "some decisions were never published");

    assert_eq!(survivor.terminate(), Some(0));
}
