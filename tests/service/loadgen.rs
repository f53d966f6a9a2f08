//! `spendguard loadgen` end to end at a small rate: both phases (bare broker, then the
//! pipeline through a real `serve`) receive everything they sent, the mix produces
//! every kind of outcome under the example policies, and the ledger holds exactly one
//! decision per intent sent. With the lifecycle mix (issue 10) every ALLOW is settled and
//! every settlement yields exactly one outcome, recorded once in the ledger. With
//! `--webhook-sink`, loadgen also receives serve's webhooks: every decision arrives,
//! signed, and the report counts it. Timings are printed by loadgen, never asserted here.

use crate::harness::policies::repository_policies;
use crate::harness::serial;
use crate::harness::serve::{Rig, ServeProcess, free_addr, spendguard};
use serde_json::Value;
use sqlx::Connection;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_measures_both_phases_and_every_intent_is_decided_once() {
    let Some(_serial) = serial::service_test().await else {
        return;
    };
    let Rig { db, dir, env, .. } = Rig::with("sg_loadgen_", "lg", |_| repository_policies()).await;
    let serve = ServeProcess::start(&env, "lg-1", dir.path(), &[]);

    let out = short_loadgen(&env, "40")
        // Heavier on the two-step plans than the default 70,15,10,5, so a short run has
        // every plan.
        .args(["--lifecycle-mix", "40,20,20,20"])
        .output()
        .expect("run loadgen");
    let report = json_report(&out, &serve);
    let phases = report["phases"].as_array().expect("phases");
    assert_eq!(
        phases
            .iter()
            .map(|p| p["phase"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["baseline", "pipeline"],
        "{report}"
    );
    for p in phases {
        let sent = p["sent"].as_u64().unwrap();
        assert!(sent >= 100, "40/s for 3 s sends about 120: {p}");
        // Answers the live consumer missed but that are on the topic (loadgen's re-read
        // after the drain) are delivered by the pipeline: they point at the broker or the
        // consumer, not at serve. Printed so a run shows how often that happens.
        let (received, recovered) = (
            p["received"].as_u64().unwrap(),
            p["recovered"].as_u64().unwrap(),
        );
        let lost = p["lost"].as_u64().unwrap();
        eprintln!(
            "loadgen {} phase: sent {sent}, received live {received}, recovered from the topic {recovered}, not read {lost}",
            p["phase"]
        );
        assert_eq!(
            received + recovered + lost,
            sent,
            "every message accounted for: {p}"
        );
        if p["phase"] == "baseline" {
            assert_eq!(lost, 0, "the bare broker phase reads what it wrote: {p}");
        } else if lost > 0 {
            // Measured on tansu 0.6 (docs/benchmarks.md, "Lifecycle mix"): 0.3-1 % of the
            // decisions serve published (acknowledged by the broker, outbox empty) are
            // never read back by loadgen's consumer, not even by a re-read from the run's
            // start offsets. Whether serve did its job is checked below against the
            // ledger and the outbox; this count is the broker/consumer symptom, shown.
            eprintln!(
                "WARNING: loadgen did not read {lost} of {sent} decisions the pipeline published (see docs/benchmarks.md)"
            );
        }
        assert_eq!(p["duplicated"], 0, "{p}");
        assert_eq!(p["sendErrors"], 0, "{p}");
        let (p50, p99, max) = (
            p["p50Ms"].as_f64().unwrap(),
            p["p99Ms"].as_f64().unwrap(),
            p["maxMs"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{p}");
    }
    let pipeline = &phases[1];
    let effects = pipeline["effects"].as_object().expect("effects");
    for effect in ["ALLOW", "DENY"] {
        assert!(
            effects.get(effect).and_then(Value::as_u64).unwrap_or(0) > 0,
            "{effect} missing from the mix: {pipeline}"
        );
    }
    assert!(
        effects.contains_key("REQUIRE_HITL") || effects.contains_key("REQUIRE_MSIG"),
        "no approvals in the mix: {pipeline}"
    );
    let counted: u64 = effects.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(
        counted,
        pipeline["received"].as_u64().unwrap(),
        "{pipeline}"
    );
    assert!(report["pipelineToBaselineThroughput"].as_f64().unwrap() > 0.0);
    assert!(phases[0].get("lifecycle").is_none(), "{report}");

    // The lifecycle mix: one plan per ALLOW, one outcome per settlement.
    let l = &pipeline["lifecycle"];
    let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let plans = &l["plans"];
    assert_eq!(
        [
            "fullCapture",
            "partialThenFinal",
            "void",
            "captureThenRefund"
        ]
        .iter()
        .map(|p| n(plans, p))
        .sum::<u64>(),
        n(&pipeline["effects"], "ALLOW"),
        "every ALLOW settled: {l}"
    );
    assert!(n(plans, "fullCapture") > 0, "{l}");
    let (lost, duplicated) = (n(l, "lost"), n(l, "duplicated"));
    assert_eq!((lost, duplicated), (0, 0), "{l}");
    let recovered = n(l, "recovered");
    eprintln!(
        "loadgen settlements: sent {}, outcomes received live {}, recovered from the topic {recovered}",
        n(l, "settlementsSent"),
        l["outcomes"]
            .as_object()
            .map_or(0, |o| o.values().filter_map(Value::as_u64).sum::<u64>())
    );
    assert_eq!(l["refused"], serde_json::json!({}), "{l}");
    assert_eq!(n(l, "sendErrors"), 0, "{l}");
    let outcomes = &l["outcomes"];
    let settlements = n(l, "settlementsSent");
    assert_eq!(
        settlements,
        n(outcomes, "CAPTURED") + n(outcomes, "VOIDED") + n(outcomes, "REFUNDED") + recovered,
        "every settlement answered: {l}"
    );
    // A recovered outcome was found after the drain, so its plan's next step was never
    // sent: the per-plan counts only add up when nothing was recovered.
    if recovered == 0 {
        assert_eq!(
            n(outcomes, "CAPTURED"),
            n(plans, "fullCapture")
                + 2 * n(plans, "partialThenFinal")
                + n(plans, "captureThenRefund"),
            "{l}"
        );
        assert_eq!(n(outcomes, "VOIDED"), n(plans, "void"), "{l}");
        assert_eq!(
            n(outcomes, "REFUNDED"),
            n(plans, "captureThenRefund"),
            "{l}"
        );
    }
    let (p50, p99) = (l["p50Ms"].as_f64().unwrap(), l["p99Ms"].as_f64().unwrap());
    assert!(0.0 < p50 && p50 <= p99, "{l}");
    assert!(l["settlementsPerS"].as_f64().unwrap() > 0.0, "{l}");

    // Exactly one decision per intent the pipeline phase sent.
    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
    let decided: i64 = sqlx::query_scalar("SELECT count(*) FROM decision")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(decided as u64, pipeline["sent"].as_u64().unwrap());
    // ... and every decision and outcome acknowledged by the broker (the outbox deletes a
    // row only once the broker acknowledged it).
    let unpublished: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(unpublished, 0, "decisions or outcomes never acknowledged");
    // ... and exactly one applied settlement per settlement sent.
    let settled: i64 = sqlx::query_scalar("SELECT count(*) FROM settlement")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(settled as u64, settlements);
    assert_eq!(serve.terminate(), Some(0));
}

/// `loadgen --webhook-sink`: serve's webhook (notifications.yaml, events decision and
/// outcome) points at loadgen, which verifies every signature; every decision of the run
/// is delivered (at least once), and the report's counts match what the ledger queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_receives_every_decision_as_a_signed_webhook() {
    let Some(_serial) = serial::service_test().await else {
        return;
    };
    const SECRET_VAR: &str = "SPENDGUARD_LOADGEN_TEST_HOOK_SECRET";
    let mut rig = Rig::with("sg_loadgen_wh_", "lgwh", |_| repository_policies()).await;
    let sink = free_addr();
    rig.webhook("lg", sink, "decision, outcome", SECRET_VAR);
    rig.set_env(SECRET_VAR, "whsec-loadgen-0123456789abcdef");
    let serve = ServeProcess::start(&rig.env, "lgwh-1", rig.dir.path(), &[]);

    let sink_addr = sink.to_string();
    let out = short_loadgen(&rig.env, "30")
        .args(["--no-baseline", "--no-lifecycle"])
        .args([
            "--webhook-sink",
            &sink_addr,
            "--webhook-secret-env",
            SECRET_VAR,
        ])
        .output()
        .expect("run loadgen");
    let report = json_report(&out, &serve);
    let pipeline = &report["phases"][0];
    assert_eq!(pipeline["phase"], "pipeline", "{report}");
    let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let sent = n(pipeline, "sent");
    assert!(sent >= 60, "30/s for 3 s sends about 90: {pipeline}");
    let w = &pipeline["webhooks"];
    eprintln!("loadgen webhooks: {w}");
    assert_eq!(w["addr"], sink_addr.as_str(), "{w}");
    assert_eq!(
        n(w, "intentsNotified"),
        sent,
        "every decision delivered: {w}"
    );
    assert_eq!(n(w, "notNotified"), 0, "{w}");
    assert_eq!(
        n(w, "decisionsReceived"),
        n(pipeline, "received") + n(pipeline, "recovered"),
        "{w}"
    );
    for zero in [
        "badSignatures",
        "malformed",
        "refused",
        "foreign",
        "repeatedIntents",
        "untracked",
    ] {
        assert_eq!(n(w, zero), 0, "{zero}: {w}");
    }
    let by_event = w["byEvent"].as_object().expect("byEvent");
    assert_eq!(n(&w["byEvent"], "decision"), sent, "{w}");
    assert_eq!(
        by_event.values().filter_map(Value::as_u64).sum::<u64>(),
        n(w, "deliveries"),
        "{w}"
    );
    let (p50, p99) = (w["p50Ms"].as_f64().unwrap(), w["p99Ms"].as_f64().unwrap());
    assert!(0.0 < p50 && p50 <= p99, "{w}");

    // The ledger queued exactly one decision delivery per intent, and serve recorded each
    // one delivered (it records after the receiver's answer: wait for the last ones).
    let mut conn = sqlx::PgConnection::connect(&rig.db).await.unwrap();
    let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql);
    let queued = count(
        "SELECT count(*) FROM notification_delivery WHERE webhook_id = 'lg' AND event_kind = 'decision'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(queued as u64, sent);
    let all: i64 = count("SELECT count(*) FROM notification_delivery")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        all as u64,
        n(w, "deliveries"),
        "every queued delivery arrived once: {w}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let delivered: i64 =
            count("SELECT count(*) FROM notification_delivery WHERE delivered_at IS NOT NULL")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        if delivered == all {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{delivered} of {all} deliveries recorded as delivered:\n{}",
            serve.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(serve.terminate(), Some(0));
}

/// loadgen's `--format json` report; fails the test with loadgen's output and serve's log
/// when loadgen failed.
/// `spendguard loadgen` for three seconds at `rate` intents/s over four agents, its
/// report as JSON, waiting up to 60 s for the last decisions.
fn short_loadgen(env: &[(String, String)], rate: &str) -> std::process::Command {
    let mut cmd = spendguard(env);
    cmd.args([
        "loadgen",
        "--rate",
        rate,
        "--duration",
        "3",
        "--agents",
        "4",
    ])
    .args(["--format", "json", "--drain-timeout", "60"]);
    cmd
}

fn json_report(out: &std::process::Output, serve: &ServeProcess) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadgen failed: {}\n{stdout}\n{}\nserve log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        serve.log_text()
    );
    serde_json::from_str(stdout.trim()).expect("one JSON report")
}
