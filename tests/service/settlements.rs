//! The authorization lifecycle through `serve` (SPEC §11): settlement messages on
//! `spend.settlements` are applied once each, in partition order; each accepted one
//! yields exactly one outcome on `spend.decisions`, each refused or malformed one
//! exactly one dead letter with its stable code; the usage windows follow. And across a
//! SIGKILL of `serve` mid-stream, every settlement is applied exactly once.

use crate::harness::intent::svc_intent_json;
use crate::harness::serve::{InProcess, Rig, ServeProcess, json, read_until};
use crate::harness::{self, serial};
use rdkafka::Message;
use rdkafka::message::{Headers, OwnedMessage};
use rust_decimal::Decimal;
use spendguard::bus::{self, dlq};
use sqlx::Connection;
use std::collections::BTreeMap;
use std::time::Duration;

const WAIT_MS: u64 = 90_000;

fn header(m: &OwnedMessage, name: &str) -> String {
    m.headers()
        .and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// Outcome messages of settlements (they carry a `settlementId`), by settlementId.
fn settlement_outcomes(ms: &[OwnedMessage]) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut out: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for v in ms.iter().map(json) {
        if let Some(id) = v.get("settlementId").and_then(|s| s.as_str()) {
            out.entry(id.to_string()).or_default().push(v);
        }
    }
    out
}

fn decided(ms: &[OwnedMessage]) -> usize {
    ms.iter()
        .map(json)
        .filter(|v| v.get("effect").is_some())
        .count()
}

fn settlement(id: &str, intent: &str, kind: &str, amount: Option<&str>) -> String {
    let mut v = serde_json::json!({"settlementId": id, "intentId": intent, "type": kind});
    if let Some(a) = amount {
        v["amount"] = a.into();
        v["currency"] = "BRL".into();
    }
    v.to_string()
}

async fn scalar(db: &str, sql: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(db).await.unwrap();
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

async fn publish(producer: &rdkafka::producer::FutureProducer, topic: &str, key: &str, body: &str) {
    bus::publish(producer, topic, key.as_bytes(), body.as_bytes(), None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settlements_are_applied_once_and_refusals_are_dead_lettered_with_their_code() {
    let Some(_serial) = serial::service_test().await else {
        return;
    };
    let brokers = harness::brokers();
    let rig = Rig::new("sg_settle_", "settle").await;
    let service = InProcess::start(rig.service_args("settle-test"));
    let (db, topics) = (rig.db.url.clone(), &rig.topics);
    let producer = bus::producer(&brokers).unwrap();

    // Intents of agent-a: two ALLOWed, one waiting for approval (beneficiary not
    // allow-listed: REQUIRE_HITL).
    let agent = "agent-a";
    for (id, amount, beneficiary) in [
        ("i-1", "100.00", "vendor:known"),
        ("i-2", "50.00", "vendor:known"),
        ("i-3", "40.00", "vendor:new"),
    ] {
        let body = svc_intent_json(id, agent, amount, beneficiary);
        publish(&producer, &topics.intents, agent, &body).await;
    }
    let decisions = read_until(&brokers, &topics.decisions, WAIT_MS, |ms| decided(ms) >= 3).await;
    assert_eq!(decided(&decisions), 3, "the intents were not decided");
    let effects: BTreeMap<String, String> = decisions
        .iter()
        .map(json)
        .map(|v| {
            (
                v["intentId"].as_str().unwrap().to_string(),
                v["effect"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(effects["i-1"], "ALLOW");
    assert_eq!(effects["i-2"], "ALLOW");
    assert_eq!(effects["i-3"], "REQUIRE_HITL");

    // The settlement stream, all of agent-a's on one partition (key = agentId), in order.
    let capture = settlement("s-1", "i-1", "CAPTURE", Some("80.00"));
    let stream: Vec<(&str, String)> = vec![
        (agent, capture.clone()),
        // Redelivered: the same message twice changes nothing.
        (agent, capture),
        // Same settlementId, another amount.
        (agent, settlement("s-1", "i-1", "CAPTURE", Some("70.00"))),
        // Over the remainder (20.00 left).
        (agent, settlement("s-2", "i-1", "CAPTURE", Some("30.00"))),
        // Malformed.
        (
            agent,
            r#"{"settlementId":"s-bad","intentId":"i-1","type":"REVERSE"}"#.to_string(),
        ),
        // Unknown intent.
        (
            "agent-x",
            settlement("s-6", "nope", "CAPTURE", Some("1.00")),
        ),
        (agent, settlement("s-3", "i-1", "VOID", None)),
        (agent, settlement("s-4", "i-1", "REFUND", Some("10.00"))),
        (agent, {
            let mut v: serde_json::Value =
                serde_json::from_str(&settlement("s-5", "i-2", "CAPTURE", Some("50"))).unwrap();
            v["final"] = true.into();
            v.to_string()
        }),
        (agent, settlement("s-7", "i-3", "CANCEL", None)),
    ];
    for (key, body) in &stream {
        publish(&producer, &topics.settlements, key, body).await;
    }
    let expected_outcomes: BTreeMap<&str, (&str, &str)> = [
        ("s-1", ("CAPTURED", "i-1")),
        ("s-3", ("VOIDED", "i-1")),
        ("s-4", ("REFUNDED", "i-1")),
        ("s-5", ("CAPTURED", "i-2")),
        ("s-7", ("CANCELLED", "i-3")),
    ]
    .into_iter()
    .collect();
    let expected_letters = [
        "exceeds_remainder",
        "idempotency_conflict",
        "unknown_intent",
        "unknown_type",
    ];

    let letters = read_until(&brokers, &topics.dlq, WAIT_MS, |ms| {
        ms.len() >= expected_letters.len()
    })
    .await;
    read_until(&brokers, &topics.decisions, WAIT_MS, |ms| {
        settlement_outcomes(ms).len() >= expected_outcomes.len()
    })
    .await;
    // Everything is in; a little longer to see that nothing more comes (a second
    // outcome for the redelivered capture, a second dead letter).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = read_until(&brokers, &topics.decisions, 5_000, |_| false).await;
    let outcomes = settlement_outcomes(&all);
    assert_eq!(
        outcomes.keys().map(String::as_str).collect::<Vec<_>>(),
        expected_outcomes.keys().copied().collect::<Vec<_>>(),
        "one outcome per accepted settlement"
    );
    for (id, (outcome, intent)) in &expected_outcomes {
        let got = &outcomes[*id];
        assert_eq!(got.len(), 1, "{id}: exactly one outcome message: {got:?}");
        assert_eq!(got[0]["outcome"], *outcome, "{id}: {}", got[0]);
        assert_eq!(got[0]["intentId"], *intent, "{id}");
    }
    let totals = |id: &str| outcomes[id][0]["authorization"].clone();
    let dec = |v: &serde_json::Value| -> Decimal { v.as_str().unwrap().parse().unwrap() };
    let t = totals("s-1");
    assert_eq!(dec(&t["authorized"]), Decimal::new(100, 0));
    assert_eq!(dec(&t["captured"]), Decimal::new(80, 0));
    assert_eq!(dec(&t["outstanding"]), Decimal::new(20, 0));
    let t = totals("s-3");
    assert_eq!(dec(&t["voided"]), Decimal::new(20, 0));
    assert_eq!(dec(&t["outstanding"]), Decimal::ZERO);
    let t = totals("s-4");
    assert_eq!(dec(&t["refunded"]), Decimal::new(10, 0));
    let t = totals("s-5");
    assert_eq!(dec(&t["captured"]), Decimal::new(50, 0));
    assert_eq!(dec(&t["outstanding"]), Decimal::ZERO);

    let letters = if letters.len() > expected_letters.len() {
        letters
    } else {
        read_until(&brokers, &topics.dlq, 3_000, |_| false).await
    };
    let mut codes: Vec<String> = letters
        .iter()
        .map(|m| header(m, dlq::HEADER_ERROR_CODE))
        .collect();
    codes.sort();
    assert_eq!(
        codes, expected_letters,
        "one dead letter per refused settlement"
    );
    for m in &letters {
        assert_eq!(
            header(m, dlq::HEADER_SOURCE_TOPIC),
            topics.settlements,
            "dead letters name their source topic"
        );
    }
    let bad = letters
        .iter()
        .find(|m| header(m, dlq::HEADER_ERROR_CODE) == "unknown_type")
        .unwrap();
    assert_eq!(header(bad, dlq::HEADER_ERROR_FIELD), "type");
    assert_eq!(
        bad.payload().unwrap_or_default(),
        stream[4].1.as_bytes(),
        "the malformed message's bytes are kept"
    );
    let conflict = letters
        .iter()
        .find(|m| header(m, dlq::HEADER_ERROR_CODE) == "idempotency_conflict")
        .unwrap();
    assert_eq!(header(conflict, dlq::HEADER_ERROR_FIELD), "settlementId");

    // The ledger: one row per accepted settlement, every refusal audited.
    assert_eq!(scalar(&db, "SELECT count(*) FROM settlement").await, 5);
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM ledger_event WHERE event_type = 'settlement_refused'"
        )
        .await,
        expected_letters.len() as i64
    );

    // Usage: i-1 counts what was captured (80; the refund does not restore by default),
    // i-2 its 50, the cancelled i-3 nothing.
    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
    let windows: Vec<(String, Decimal, Decimal)> = sqlx::query_as(
        "SELECT kind, committed, reserved FROM usage_window WHERE agent_id = $1 ORDER BY kind",
    )
    .bind(agent)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        windows,
        vec![
            ("D".to_string(), Decimal::new(130, 0), Decimal::ZERO),
            ("M".to_string(), Decimal::new(130, 0), Decimal::ZERO),
        ],
        "usage windows of {agent}"
    );

    service.stop().await;
}

const CRASH_AGENTS: usize = 8;
const CRASH_INTENTS: usize = 120;
/// Pause between produced settlements, so the stream still flows at the kill.
const PRODUCE_GAP_MS: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_settlement_stream_applies_every_settlement_exactly_once() {
    let Some(_serial) = serial::service_test().await else {
        return;
    };
    let brokers = harness::brokers();
    let Rig {
        db,
        dir,
        env,
        topics,
        ..
    } = Rig::new("sg_settle_crash_", "settlecrash").await;
    // Two instances in one group, as in `crash.rs`: the victim is SIGKILLed mid-stream,
    // the other takes over its partitions once its session expires, and the victim is
    // restarted in its place.
    let victim = ServeProcess::start(&env, "settle-0", dir.path(), &[]);
    let other = ServeProcess::start(&env, "settle-1", dir.path(), &[]);

    // ALLOWed intents of 10.00 each.
    let producer = bus::producer(&brokers).unwrap();
    for i in 0..CRASH_INTENTS {
        let agent = format!("agent-s{}", i % CRASH_AGENTS);
        let body = svc_intent_json(&format!("c-{i}"), &agent, "10.00", "vendor:known");
        publish(&producer, &topics.intents, &agent, &body).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    while scalar(&db, "SELECT count(*) FROM authorization_state").await < CRASH_INTENTS as i64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the intents were not all authorized:\n{}",
            victim.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Per intent: a capture of 4.00, and for every other intent a final one of 3.00.
    let mut sent: Vec<(String, String, String)> = Vec::new();
    let mut expected: BTreeMap<String, Decimal> = BTreeMap::new();
    for i in 0..CRASH_INTENTS {
        let agent = format!("agent-s{}", i % CRASH_AGENTS);
        let intent = format!("c-{i}");
        sent.push((
            agent.clone(),
            format!("a-{i}"),
            settlement(&format!("a-{i}"), &intent, "CAPTURE", Some("4.00")),
        ));
        *expected.entry(intent.clone()).or_default() += Decimal::new(4, 0);
        if i % 2 == 0 {
            let mut v: serde_json::Value = serde_json::from_str(&settlement(
                &format!("b-{i}"),
                &intent,
                "CAPTURE",
                Some("3.00"),
            ))
            .unwrap();
            v["final"] = true.into();
            sent.push((agent, format!("b-{i}"), v.to_string()));
            *expected.entry(intent).or_default() += Decimal::new(3, 0);
        }
    }
    let total_sent = sent.len() as i64;
    let publisher = tokio::spawn({
        let producer = producer.clone();
        let topic = topics.settlements.clone();
        async move {
            for (agent, _, body) in sent {
                publish(&producer, &topic, &agent, &body).await;
                tokio::time::sleep(Duration::from_millis(PRODUCE_GAP_MS)).await;
            }
        }
    });

    // Kill the victim once it has applied something, while the stream still flows.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    while scalar(
        &db,
        "SELECT count(*) FROM ledger_event WHERE event_type = 'settlement_applied' AND origin::jsonb->>'instance' = 'settle-0'",
    )
    .await
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "settle-0 applied nothing:\n{}",
            victim.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut victim = victim;
    victim.child.kill().unwrap(); // SIGKILL
    victim.child.wait().unwrap();
    let at_kill = scalar(&db, "SELECT count(*) FROM settlement").await;
    assert!(
        !publisher.is_finished(),
        "the kill must happen mid-stream; raise CRASH_INTENTS"
    );
    publisher.await.unwrap();

    let restarted = ServeProcess::start(&env, "settle-0b", dir.path(), &[]);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    loop {
        let applied = scalar(&db, "SELECT count(*) FROM settlement").await;
        if applied >= total_sent {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{applied} of {total_sent} settlements applied after the kill ({at_kill} before):\n{}\n{}",
            other.log_text(),
            restarted.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        at_kill < total_sent,
        "everything was applied before the kill"
    );

    assert_eq!(
        scalar(&db, "SELECT count(*) FROM settlement").await,
        total_sent
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM ledger_event WHERE event_type = 'settlement_applied'"
        )
        .await,
        total_sent,
        "one settlement_applied event per settlement"
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM ledger_event WHERE event_type = 'settlement_refused'"
        )
        .await,
        0,
        "a redelivery is never refused"
    );
    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
    let captured: BTreeMap<String, Decimal> =
        sqlx::query_as("SELECT intent_id, captured FROM authorization_state")
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(captured, expected, "captured sums match what was sent");

    // Each settlement's outcome is published (at least once after a crash, each copy the
    // recorded one).
    let recorded: BTreeMap<String, String> =
        sqlx::query_as("SELECT settlement_id, message FROM settlement")
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let published = read_until(&brokers, &topics.decisions, WAIT_MS, |ms| {
        settlement_outcomes(ms).len() >= recorded.len()
    })
    .await;
    let mut seen = std::collections::BTreeSet::new();
    for m in &published {
        let v = json(m);
        let Some(id) = v.get("settlementId").and_then(|s| s.as_str()) else {
            continue;
        };
        let text = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
        assert_eq!(Some(&text), recorded.get(id), "published outcome differs");
        seen.insert(id.to_string());
    }
    assert_eq!(
        seen.len(),
        recorded.len(),
        "some outcomes were never published"
    );

    assert!(
        scalar(
            &db,
            "SELECT count(DISTINCT origin::jsonb->>'instance') FROM ledger_event WHERE event_type = 'settlement_applied'"
        )
        .await
            >= 2,
        "the victim and another instance both applied settlements"
    );
    assert_eq!(other.terminate(), Some(0));
    assert_eq!(restarted.terminate(), Some(0));
}
