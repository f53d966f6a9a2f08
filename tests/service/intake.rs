//! Synchronous decisions (SPEC §13.4, issue 12 item 6) inside the real `spendguard serve`:
//! `POST /v1/intents` and `POST /v1/settlements` with the broker (the answer is what
//! `spend.decisions` carries, published once; retries replayed; invalid bodies 400 and
//! audited; roles), an agent fed over Kafka and HTTP at once (its cap holds exactly), and
//! serve with only PostgreSQL running the README's own commands.

use crate::harness::http::{exchange, request};
use crate::harness::intent::svc_intent_json;
use crate::harness::serve::DEMO_API_TOKENS;
use crate::harness::serve::{Rig, ServeProcess, json, read_until};
use crate::harness::{self, policies::test_policies, serial};
use rdkafka::Message;
use serde_json::Value;
use spendguard::bus;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Tokens hashed in `examples/api-tokens.yaml` (demo only).
const PAYMENTS: &str = "demo-payment-token";
const READER: &str = "demo-reader-token";
const OPERATOR: &str = "demo-operator-token";
const AUDITOR: &str = "demo-auditor-token";
const APPROVER: &str = "demo-alice-approver-token";
const WAIT_MS: u64 = 60_000;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn replayed(head: &str) -> bool {
    head.contains("idempotent-replayed: true")
}

async fn post(addr: SocketAddr, path: &str, token: &str, body: &str) -> (u16, String, String) {
    exchange(addr, "POST", path, Some(token), Some(body)).await
}

/// The `ledger_event` payloads of one type written by the API (origin source `api`).
async fn api_events(db: &str, event_type: &str) -> Vec<Value> {
    let pool = sqlx::PgPool::connect(db).await.expect("connect");
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT origin, payload FROM ledger_event WHERE event_type = $1 ORDER BY seq",
    )
    .bind(event_type)
    .fetch_all(&pool)
    .await
    .expect("events");
    pool.close().await;
    rows.into_iter()
        .filter(|(origin, _)| origin.contains("\"source\":\"api\""))
        .map(|(_, payload)| serde_json::from_str(&payload).expect("payload JSON"))
        .collect()
}

async fn decision_rows(db: &str, intent_id: &str) -> i64 {
    let pool = sqlx::PgPool::connect(db).await.expect("connect");
    let n = sqlx::query_scalar("SELECT count(*) FROM decision WHERE intent_id = $1")
        .bind(intent_id)
        .fetch_one(&pool)
        .await
        .expect("count");
    pool.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_services_decide_and_settle_over_http_through_the_ledger_and_the_outbox() {
    let Some(_serial) = serial::service_test().await else {
        return;
    };
    let brokers = harness::brokers();
    // Daily cap 100 BRL: the race below is judged against it.
    let rig = Rig::with("sg_intake_", "intake", |dir| {
        test_policies(dir, "1", "100", "1h")
    })
    .await;
    let serve = ServeProcess::start(
        &rig.env,
        "intake-1",
        rig.dir.path(),
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--api-tokens",
            DEMO_API_TOKENS,
        ],
    );
    let addr = serve.api_addr();

    // A decision, then the same intent again: the recorded decision, byte for byte.
    let allow = svc_intent_json("hp-allow", "agent-hp1", "10.00", "vendor:known");
    let (status, head, first) = post(addr, "/v1/intents", PAYMENTS, &allow).await;
    assert_eq!(status, 200, "{first}\n{}", serve.log_text());
    assert!(!replayed(&head), "{head}");
    let d: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(d["intentId"], "hp-allow");
    assert_eq!(d["effect"], "ALLOW", "{d}");
    assert!(d["ledgerSeq"].as_i64().is_some(), "{d}");
    let (status, head, again) = post(addr, "/v1/intents", PAYMENTS, &allow).await;
    assert_eq!(status, 200, "{again}");
    assert!(replayed(&head), "a retry is marked replayed: {head}");
    assert_eq!(again, first, "a retry gets the recorded decision");
    assert_eq!(decision_rows(&rig.db, "hp-allow").await, 1);

    // The same intentId with another payload: refused, audited by the ledger.
    let other = svc_intent_json("hp-allow", "agent-hp1", "11.00", "vendor:known");
    let (status, _, body) = post(addr, "/v1/intents", PAYMENTS, &other).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        "idempotency_conflict"
    );

    // Roles: only payment_service posts intents and settlements.
    for token in [READER, OPERATOR, AUDITOR, APPROVER] {
        let (status, _, body) = post(addr, "/v1/intents", token, &allow).await;
        assert_eq!(status, 403, "{token}: {body}");
        let (status, _, body) = post(addr, "/v1/settlements", token, "{}").await;
        assert_eq!(status, 403, "{token}: {body}");
    }
    let (status, _) = request(addr, "POST", "/v1/intents", None, Some(&allow)).await;
    assert_eq!(status, 401);
    let (status, body) = request(
        addr,
        "POST",
        "/v1/intents",
        Some("not-a-token"),
        Some(&allow),
    )
    .await;
    assert_eq!(status, 401, "{body}");

    // Invalid bodies: the Kafka intake's codes, each audited as intent_invalid.
    let valid: Value = serde_json::from_str(&allow).unwrap();
    let with = |key: &str, v: Value| {
        let mut x = valid.clone();
        x[key] = v;
        x["intentId"] = Value::from(format!("hp-bad-{key}"));
        x.to_string()
    };
    let mut no_agent = valid.clone();
    no_agent.as_object_mut().unwrap().remove("agentId");
    let oversized = with(
        "metadata",
        serde_json::json!({ "pad": "x".repeat(spendguard::intent::MAX_INTENT_BYTES) }),
    );
    let invalid = [
        ("{not json".to_string(), "invalid_json", None),
        (no_agent.to_string(), "missing_field", None),
        (
            with("amount", Value::from("-1.00")),
            "non_positive_amount",
            Some("amount"),
        ),
        (
            with("currency", Value::from("XXX")),
            "unknown_currency",
            Some("currency"),
        ),
        (
            with("purpose", Value::from("BARTER")),
            "unknown_purpose",
            Some("purpose"),
        ),
        (oversized, "message_too_large", None),
    ];
    for (body, code, field) in &invalid {
        let (status, _, answer) = post(addr, "/v1/intents", PAYMENTS, body).await;
        assert_eq!(status, 400, "{code}: {answer}");
        let e: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(e["error"]["code"], *code, "{answer}");
        if let Some(field) = field {
            assert_eq!(e["error"]["field"], *field, "{answer}");
        }
    }
    let audited = api_events(&rig.db, "intent_invalid").await;
    let codes: Vec<&str> = audited
        .iter()
        .map(|e| e["code"].as_str().unwrap())
        .collect();
    let expected: Vec<&str> = invalid.iter().map(|(_, code, _)| *code).collect();
    assert_eq!(codes, expected, "every invalid body audited, in order");
    assert!(
        audited[1]["raw"].as_str().unwrap().contains("vendor:known"),
        "the audit keeps the bytes: {}",
        audited[1]
    );
    let conflicts = api_events(&rig.db, "idempotency_conflict").await;
    assert_eq!(conflicts.len(), 1, "the conflict is audited: {conflicts:?}");

    // Settlements: an outcome, replayed on retry; refusals with the ledger's codes.
    let capture = r#"{"settlementId":"hp-s1","intentId":"hp-allow","type":"CAPTURE","amount":"10.00","currency":"BRL","final":true}"#;
    let (status, head, outcome) = post(addr, "/v1/settlements", PAYMENTS, capture).await;
    assert_eq!(status, 200, "{outcome}");
    assert!(!replayed(&head));
    let o: Value = serde_json::from_str(&outcome).unwrap();
    assert_eq!(o["outcome"], "CAPTURED", "{o}");
    assert_eq!(o["authorization"]["captured"], "10.00", "{o}");
    let (status, head, again) = post(addr, "/v1/settlements", PAYMENTS, capture).await;
    assert_eq!((status, replayed(&head)), (200, true), "{again}");
    assert_eq!(serde_json::from_str::<Value>(&again).unwrap(), o);
    let unknown = r#"{"settlementId":"hp-s2","intentId":"hp-nobody","type":"VOID"}"#;
    let (status, _, body) = post(addr, "/v1/settlements", PAYMENTS, unknown).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        "unknown_intent"
    );
    let (status, _, body) =
        post(addr, "/v1/settlements", PAYMENTS, r#"{"settlementId":"x"}"#).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        "missing_field"
    );
    let refused = api_events(&rig.db, "settlement_refused").await;
    let codes: Vec<&str> = refused
        .iter()
        .map(|e| e["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["unknown_intent", "missing_field"], "{refused:?}");

    // One agent fed over Kafka and HTTP at once: 10 intents of 10 BRL each way against
    // its 100 BRL daily cap. The agent's ledger lock serializes both paths, so exactly
    // ten fit (ALLOW) and the other ten wait for a human, whatever the interleaving.
    let producer = bus::producer(&brokers).unwrap();
    let race =
        |i: usize| svc_intent_json(&format!("race-{i}"), "agent-race", "10.00", "vendor:known");
    let kafka = async {
        for i in 0..10 {
            bus::publish(
                &producer,
                &rig.topics.intents,
                b"agent-race",
                race(i).as_bytes(),
                None,
            )
            .await
            .unwrap();
        }
    };
    let http = futures::future::join_all((10..20).map(|i| {
        let body = race(i);
        async move { post(addr, "/v1/intents", PAYMENTS, &body).await }
    }));
    let ((), answers) = tokio::join!(kafka, http);
    for (status, _, body) in &answers {
        assert_eq!(*status, 200, "{body}");
    }

    // Every decision on spend.decisions once: the HTTP ones, the outcome, the Kafka ones.
    let wanted: Vec<String> = std::iter::once("hp-allow".to_string())
        .chain((0..20).map(|i| format!("race-{i}")))
        .collect();
    let published = read_until(&brokers, &rig.topics.decisions, WAIT_MS, |msgs| {
        let seen: Vec<Value> = msgs.iter().map(json).collect();
        wanted.iter().all(|id| {
            seen.iter()
                .any(|m| m["intentId"] == *id && m.get("effect").is_some())
        }) && seen.iter().any(|m| m["outcome"] == "CAPTURED")
    })
    .await;
    let of = |id: &str| -> Vec<&rdkafka::message::OwnedMessage> {
        published
            .iter()
            .filter(|m| json(m)["intentId"] == id && json(m).get("effect").is_some())
            .collect()
    };
    let hp = of("hp-allow");
    assert_eq!(
        hp.len(),
        1,
        "published once: {:?}",
        hp.iter().map(|m| json(m)).collect::<Vec<_>>()
    );
    assert_eq!(
        hp[0].payload().unwrap(),
        first.as_bytes(),
        "the HTTP answer is the published message"
    );
    assert_eq!(hp[0].key(), Some(&b"agent-hp1"[..]));
    let outcomes: Vec<Value> = published
        .iter()
        .map(json)
        .filter(|m| m["outcome"] == "CAPTURED")
        .collect();
    assert_eq!(outcomes, [o], "the outcome, once, as answered");
    let mut allowed = 0;
    for id in wanted.iter().skip(1) {
        let copies = of(id);
        assert_eq!(copies.len(), 1, "{id} published once");
        let d = json(copies[0]);
        match d["effect"].as_str() {
            Some("ALLOW") => allowed += 1,
            Some("REQUIRE_HITL") => {
                assert!(d.to_string().contains("would_exceed_daily_limit"), "{d}")
            }
            other => panic!("{id}: {other:?} {d}"),
        }
    }
    assert_eq!(allowed, 10, "exactly the cap's worth is allowed");
    // Every HTTP answer, the held ones too (decisionHash, expiresAt, ...), is the
    // message published for it, byte for byte.
    for (_, _, body) in &answers {
        let id = serde_json::from_str::<Value>(body).unwrap()["intentId"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(of(&id)[0].payload().unwrap(), body.as_bytes(), "{id}");
    }

    assert_eq!(serve.terminate(), Some(0), "SIGTERM exits 0");
}

/// The README's shortest path, run as written there: `serve --no-kafka` with only
/// PostgreSQL, then its `curl` lines. Decisions are recorded and wait in the outbox; a
/// serve with Kafka started afterwards on the same database publishes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_kafka_runs_the_readme_commands() {
    if !harness::require_postgres() {
        return;
    }
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        harness::skip_or_fail("curl is not installed");
        return;
    }
    let _serial = serial::exclusive().await;
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let serve_line = readme
        .lines()
        .find(|l| l.contains("spendguard serve --no-kafka"))
        .expect("README shows serve --no-kafka");
    let serve_args: Vec<&str> = serve_line
        .split_once(" serve ")
        .unwrap()
        .1
        .trim_end_matches('&')
        .split_whitespace()
        .map(|a| {
            if a == "127.0.0.1:8080" {
                "127.0.0.1:0"
            } else {
                a
            }
        })
        .collect();
    let curls: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("curl ") && l.contains("127.0.0.1:8080"))
        .collect();
    assert_eq!(curls.len(), 3, "the README's three requests");

    let mut rig = Rig::with("sg_nokafka_", "nokafka", |_| repo().join("policies")).await;
    // Nowhere to connect: the test proves serve never tries.
    rig.set_env("SPENDGUARD_BROKERS", "127.0.0.1:1");
    let serve = ServeProcess::start(&rig.env, "nokafka-1", rig.dir.path(), &serve_args);
    let addr = serve.api_addr();
    let (status, body) = request(addr, "GET", "/readyz", None, None).await;
    assert_eq!(status, 200, "ready with only PostgreSQL: {body}");
    assert!(body.contains("\"kafka\""), "{body}");

    let run = |line: &str| {
        let line = line.replace("127.0.0.1:8080", &addr.to_string());
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("{line} -w '\\n%{{http_code}}'")])
            .current_dir(repo())
            .output()
            .expect("sh");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').expect("status line");
        (
            code.trim().parse::<u16>().expect("status"),
            body.to_string(),
        )
    };
    let (status, decision) = run(curls[0]);
    assert_eq!(status, 200, "{decision}\n{}", serve.log_text());
    let d: Value = serde_json::from_str(&decision).unwrap();
    assert_eq!(d["effect"], "ALLOW", "{d}");
    assert_eq!(
        run(curls[0]),
        (200, decision.clone()),
        "the retry is replayed"
    );
    let (status, outcome) = run(curls[1]);
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(
        serde_json::from_str::<Value>(&outcome).unwrap()["outcome"],
        "CAPTURED"
    );
    let (status, refused) = run(curls[2]);
    assert_eq!(status, 400, "{refused}");
    assert_eq!(
        serde_json::from_str::<Value>(&refused).unwrap()["error"]["code"],
        "non_positive_amount"
    );
    let intent_id = d["intentId"].as_str().unwrap().to_string();
    assert_eq!(decision_rows(&rig.db, &intent_id).await, 1);
    assert_eq!(api_events(&rig.db, "intent_invalid").await.len(), 1);
    let (status, body) = request(
        addr,
        "GET",
        &format!("/v1/decisions/{intent_id}"),
        Some(READER),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // The decision and the outcome wait in the outbox.
    let ledger = spendguard::ledger::Ledger::connect(&rig.db, "test")
        .await
        .unwrap();
    assert_eq!(ledger.backlog().await.unwrap().outbox_messages, 2);
    assert_eq!(serve.terminate(), Some(0), "SIGTERM exits 0");

    // A serve with Kafka on the same ledger publishes what waited.
    if !harness::require_broker() {
        return;
    }
    let brokers = harness::brokers();
    rig.set_env("SPENDGUARD_BROKERS", &brokers);
    let serve = ServeProcess::start(&rig.env, "nokafka-2", rig.dir.path(), &[]);
    let published = read_until(&brokers, &rig.topics.decisions, WAIT_MS, |m| m.len() >= 2).await;
    let bodies: Vec<&[u8]> = published.iter().map(|m| m.payload().unwrap()).collect();
    assert_eq!(bodies.len(), 2, "{}", serve.log_text());
    assert_eq!(bodies[0], decision.as_bytes(), "published as answered");
    assert_eq!(json(&published[1])["outcome"], "CAPTURED");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ledger.backlog().await.unwrap().outbox_messages > 0
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ledger.backlog().await.unwrap().outbox_messages, 0);
    assert_eq!(serve.terminate(), Some(0));
}
