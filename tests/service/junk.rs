//! Junk input is bounded in the audit trail (issue 16, open point 2; rule in
//! `spendguard::audit_budget`): per partition at most
//! `FULL_AUDITS_PER_SOURCE_PER_WINDOW` refused messages a minute get their own event;
//! the rest are counted in one `refusals_summarized` event per window. Every message
//! still reaches the dead-letter topic.

use crate::crash::{WAIT_MS, scalar};
use crate::harness::serve::{Rig, ServeProcess, read_until, spendguard};
use crate::harness::{self, scenario::period_args, serial};
use rdkafka::Message;
use serde_json::Value;
use spendguard::audit_budget::FULL_AUDITS_PER_SOURCE_PER_WINDOW;
use spendguard::bus;
use std::collections::BTreeMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_junk_intents_is_dead_lettered_in_full_and_audited_within_the_bound() {
    /// Far above the bound, all on one partition (one key) within a minute.
    const JUNK: usize = 400;
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
    } = Rig::new("sg_junk_", "junk").await;
    let serve = ServeProcess::start(&env, "junk-0", dir.path(), &[]);

    // Two codes, interleaved: not JSON, and JSON without the required fields.
    let producer = bus::client_producer(&brokers).unwrap();
    let bodies: Vec<String> = (0..JUNK)
        .map(|i| {
            if i % 3 == 0 {
                format!(r#"{{"intentId": "junk-{i}"}}"#)
            } else {
                format!("junk {i}")
            }
        })
        .collect();
    let mut pending = Vec::with_capacity(JUNK);
    for body in &bodies {
        let record = rdkafka::producer::FutureRecord::to(&topics.intents)
            .key("agent-junk")
            .payload(body.as_bytes());
        pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for delivery in pending {
        delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    let mut sent: BTreeMap<String, i64> = BTreeMap::new();

    // Every message is dead-lettered, with its code.
    let letters = read_until(&brokers, &topics.dlq, WAIT_MS, |m| m.len() >= JUNK).await;
    assert_eq!(letters.len(), JUNK, "every junk message is in the DLQ");
    for letter in &letters {
        let code = letter
            .headers()
            .and_then(|h| {
                use rdkafka::message::Headers;
                h.iter()
                    .find(|h| h.key == "spendguard-error-code")
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
            .expect("a code header");
        *sent.entry(code).or_default() += 1;
    }
    assert_eq!(sent.len(), 2, "two codes: {sent:?}");

    // SIGTERM: the open window's summary is recorded at shutdown.
    assert_eq!(serve.terminate(), Some(0));
    let full = scalar(
        &db,
        "SELECT count(*) FROM ledger_event WHERE event_type = 'intent_invalid'",
    )
    .await;
    assert_eq!(full, i64::from(FULL_AUDITS_PER_SOURCE_PER_WINDOW));

    // Per code: full records + summarized counts = what was sent.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db)
        .await
        .unwrap();
    let mut ledger: BTreeMap<String, i64> = BTreeMap::new();
    let full_by_code: Vec<(String, i64)> = sqlx::query_as(
        "SELECT payload::jsonb->>'code', count(*) FROM ledger_event WHERE event_type = 'intent_invalid' GROUP BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for (code, n) in full_by_code {
        *ledger.entry(code).or_default() += n;
    }
    let summaries: Vec<(String,)> =
        sqlx::query_as("SELECT payload FROM ledger_event WHERE event_type = 'refusals_summarized'")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(summaries.len(), 1, "one summary for the one window");
    let summary: Value = serde_json::from_str(&summaries[0].0).unwrap();
    assert_eq!(summary["sourceTopic"], "spend.intents", "{summary}");
    assert_eq!(summary["source"], "kafka", "{summary}");
    assert_eq!(summary["audited"], FULL_AUDITS_PER_SOURCE_PER_WINDOW);
    assert_eq!(
        summary["total"].as_i64(),
        Some(JUNK as i64 - i64::from(FULL_AUDITS_PER_SOURCE_PER_WINDOW)),
        "{summary}"
    );
    for (code, n) in summary["counts"].as_object().unwrap() {
        *ledger.entry(code.clone()).or_default() += n.as_i64().unwrap();
    }
    assert_eq!(
        ledger, sent,
        "audited + summarized = dead-lettered, per code"
    );

    // The ledger still verifies and replays, and the report counts every refusal.
    let cli_env = vec![
        ("DATABASE_URL".to_string(), db.url.clone()),
        ("SPENDGUARD_KEK".to_string(), harness::db::kek_for(&db)),
    ];
    for args in [&["audit", "verify"][..], &["replay", "--verify"][..]] {
        let out = spendguard(&cli_env).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "spendguard {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (from, to) = period_args();
    let report = dir.path().join("report.json");
    let out = spendguard(&cli_env)
        .args([
            "report", "--from", &from, "--to", &to, "--format", "json", "--out",
        ])
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "report: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(
        report["invalidInputs"].as_i64(),
        Some(JUNK as i64),
        "{}",
        report["invalidInputs"]
    );
    for (code, n) in &sent {
        assert_eq!(
            report["invalidInputsByCode"][code].as_i64(),
            Some(*n),
            "{code}"
        );
    }
}
