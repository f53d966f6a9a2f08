//! The operators' HTTP API as it runs inside `spendguard serve` (the real binary, the
//! real broker and PostgreSQL): readiness follows partition assignment, a kill switch
//! tripped through the API reaches the deciding instance over `spend.control`, and
//! `/metrics` shows the service's own counters and gauges moving after a scenario.

use crate::harness::http::request;
use crate::harness::intent::svc_intent_json;
use crate::harness::serve::{Rig, ServeProcess};
use crate::harness::{self, serial};
use serde_json::Value;
use spendguard::bus;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Tokens hashed in `examples/api-tokens.yaml` (demo only).
const READER: &str = "demo-reader-token";
const OPERATOR: &str = "demo-operator-token";
const WAIT: Duration = Duration::from_secs(60);

/// Value of the series `name{...}` whose labels contain every `label="value"` given;
/// summed when several series match (None when none does).
pub(crate) fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
        if series_name != name || !labels.iter().all(|l| series_labels.contains(l)) {
            continue;
        }
        let v: f64 = value.parse().expect("metric value");
        found = Some(found.unwrap_or(0.0) + v);
    }
    found
}

/// Polls `/metrics` until `ready(text)` holds or the wait ends; returns the last text.
pub(crate) async fn metrics_until(addr: SocketAddr, ready: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, text) = request(addr, "GET", "/metrics", Some(OPERATOR), None).await;
        assert_eq!(status, 200, "{text}");
        if ready(&text) || tokio::time::Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn decision(addr: SocketAddr, id: &str) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = request(
            addr,
            "GET",
            &format!("/v1/decisions/{id}"),
            Some(READER),
            None,
        )
        .await;
        if status == 200 {
            return Some(serde_json::from_str(&body).expect("decision JSON"));
        }
        assert_eq!(status, 404, "{body}");
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_inside_serve_controls_and_observes_the_running_service() {
    let Some(_serial) = serial::service_test().await else {
        return;
    };
    let brokers = harness::brokers();
    let Rig {
        // Bound, not ignored: the database lives as long as the test.
        db: _db,
        dir,
        env,
        topics,
        ..
    } = Rig::new("sg_http_", "http").await;
    let serve = ServeProcess::start_with_api(&env, "http-1", dir.path());
    let addr = serve.api_addr();

    let (status, _) = request(addr, "GET", "/healthz", None, None).await;
    assert_eq!(status, 200);
    // Ready only once PostgreSQL and the broker answer and partitions are assigned.
    let deadline = tokio::time::Instant::now() + WAIT;
    let ready = loop {
        let (status, body) = request(addr, "GET", "/readyz", None, None).await;
        if status == 200 {
            break serde_json::from_str::<Value>(&body).unwrap();
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready: {body}\n{}",
            serve.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let checks: Vec<&str> = ready["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(checks.contains(&"partitions"), "{ready}");
    let (status, _) = request(addr, "GET", "/metrics", None, None).await;
    assert_eq!(status, 401, "/metrics needs a token");

    // The policy set of this instance, with its identity.
    let (status, body) = request(addr, "GET", "/v1/policies", Some(OPERATOR), None).await;
    assert_eq!(status, 200, "{body}");
    let set: Value = serde_json::from_str(&body).unwrap();
    assert!(body.contains("svc-test"), "{set}");

    // A scenario: ALLOW, REQUIRE_HITL, REQUIRE_MSIG, DENY (block list), one malformed
    // message and one vote from an approver nobody registered.
    let producer = bus::producer(&brokers).unwrap();
    let intents = [
        ("h-allow", "agent-h1", "10.00", "vendor:known", "ALLOW"),
        ("h-hitl", "agent-h1", "20.00", "vendor:new", "REQUIRE_HITL"),
        (
            "h-msig",
            "agent-h2",
            "2000.00",
            "vendor:known",
            "REQUIRE_MSIG",
        ),
        ("h-deny", "agent-h2", "20000.00", "vendor:known", "DENY"),
    ];
    for (id, agent, amount, beneficiary, _) in intents {
        let json = svc_intent_json(id, agent, amount, beneficiary);
        bus::publish(
            &producer,
            &topics.intents,
            agent.as_bytes(),
            json.as_bytes(),
            None,
        )
        .await
        .unwrap();
    }
    bus::publish(&producer, &topics.intents, b"agent-h3", b"{not json", None)
        .await
        .unwrap();
    for (id, _, _, _, effect) in intents {
        let d = decision(addr, id)
            .await
            .unwrap_or_else(|| panic!("{id} not decided:\n{}", serve.log_text()));
        assert_eq!(d["effect"], effect, "{id}: {d}");
    }
    let vote = serde_json::json!({
        "intentId": "h-hitl", "approverId": "someone", "vote": "APPROVE",
        "signedAt": chrono::Utc::now().to_rfc3339(),
    })
    .to_string();
    bus::publish(
        &producer,
        &topics.approvals,
        b"agent-h1",
        vote.as_bytes(),
        None,
    )
    .await
    .unwrap();

    // What /metrics must show for that scenario.
    let text = metrics_until(addr, |t| {
        metric(t, "spendguard_refused_votes_total", &[]).is_some()
            && metric(t, "spendguard_pending_approvals", &[]) == Some(2.0)
            && metric(t, "spendguard_dlq_messages_total", &[]).is_some()
            && metric(t, "spendguard_consumer_lag_messages", &[]).is_some()
    })
    .await;
    let mut effects = BTreeMap::new();
    for (_, _, _, _, effect) in intents {
        *effects.entry(effect).or_insert(0.0) += 1.0;
    }
    for (effect, n) in &effects {
        let label = format!("effect=\"{effect}\"");
        assert_eq!(
            metric(
                &text,
                "spendguard_evaluations_total",
                &[&label, "policy=\"svc-test\""]
            ),
            Some(*n),
            "evaluations of {effect}:\n{text}"
        );
    }
    assert_eq!(
        metric(&text, "spendguard_evaluation_duration_seconds_count", &[]),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "spendguard_intent_to_decision_seconds_count", &[]),
        Some(4.0),
        "{text}"
    );
    assert!(
        metric(
            &text,
            "spendguard_ledger_commit_duration_seconds_count",
            &[]
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "spendguard_dlq_messages_total",
            &["code=\"invalid_json\""]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "spendguard_refused_votes_total",
            &["reason=\"unknown_approver\""]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "spendguard_pending_approvals", &[]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "spendguard_active_policy_info",
            &["name=\"svc-test\"", "version=\"1\""]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        metric(&text, "spendguard_outbox_backlog_messages", &[]).is_some(),
        "{text}"
    );

    // Kill switch through the API: recorded, spread on spend.control, applied by the
    // deciding instance; the next intent of that agent is denied.
    let body = r#"{"scope":"agent:agent-h1","on":true,"reason":"http test"}"#;
    let (status, resp) = request(addr, "POST", "/v1/kill-switch", Some(READER), Some(body)).await;
    assert_eq!(status, 403, "a reader cannot trip the switch: {resp}");
    let (status, resp) = request(addr, "POST", "/v1/kill-switch", Some(OPERATOR), Some(body)).await;
    assert_eq!(status, 200, "{resp}");
    let text = metrics_until(addr, |t| {
        metric(
            t,
            "spendguard_kill_switch_active",
            &["scope=\"agent:agent-h1\""],
        ) == Some(1.0)
    })
    .await;
    assert_eq!(
        metric(
            &text,
            "spendguard_kill_switch_active",
            &["scope=\"agent:agent-h1\""]
        ),
        Some(1.0),
        "the switch never reached the instance:\n{}",
        serve.log_text()
    );
    let json = svc_intent_json("h-after-kill", "agent-h1", "1.00", "vendor:known");
    bus::publish(
        &producer,
        &topics.intents,
        b"agent-h1",
        json.as_bytes(),
        None,
    )
    .await
    .unwrap();
    let d = decision(addr, "h-after-kill").await.expect("decided");
    assert_eq!(d["effect"], "DENY", "{d}");
    assert!(d.to_string().contains("kill_switch"), "{d}");

    assert_eq!(serve.terminate(), Some(0), "SIGTERM exits 0");
}
