//! Kill switch across 3 `serve` processes in one consumer group: once tripped, no intent
//! in scope is allowed by any instance, intents out of scope still are, and every
//! instance reports when it applied the change (propagation is printed, not asserted).

use crate::harness::intent::{IntentExt, intent};
use crate::harness::policies::policies_dir;
use crate::harness::serve::{Rig, ServeProcess, json, read_until, spendguard};
use crate::harness::{self, serial};
use spendguard::bus;
use std::collections::BTreeMap;

const INSTANCES: usize = 3;
const INTENTS_PER_PHASE: usize = 36;
const WAIT_MS: u64 = 90_000;

/// A small utility payment (the example policies allow it).
fn utility_intent(id: &str, agent: &str) -> String {
    intent(id, agent, "1.00")
        .beneficiary("utility:light_company")
        .json()
}

/// Effects by intent id among the decisions read so far.
fn effects(ms: &[rdkafka::message::OwnedMessage]) -> BTreeMap<String, (String, String)> {
    ms.iter()
        .map(json)
        .filter(|v| v.get("outcome").is_none())
        .filter_map(|v| {
            let codes: Vec<String> = v["reasons"]
                .as_array()?
                .iter()
                .filter_map(|r| r["code"].as_str().map(String::from))
                .collect();
            Some((
                v["intentId"].as_str()?.to_string(),
                (v["effect"].as_str()?.to_string(), codes.join(",")),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tripping_stops_every_instance() {
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
    } = Rig::with("sg_kill_", "kill", |_| policies_dir()).await;

    let servers: Vec<ServeProcess> = (0..INSTANCES)
        .map(|i| ServeProcess::start(&env, &format!("kill-{i}"), dir.path(), &[]))
        .collect();
    let producer = bus::producer(&brokers).unwrap();

    // Before: the agents' small payments are allowed (so "not allowed after" means something).
    // Many agents spread the load over every partition, hence over every instance.
    let agent = |i: usize| format!("agent-k{}", i % 12);
    for i in 0..INTENTS_PER_PHASE {
        bus::publish(
            &producer,
            &topics.intents,
            agent(i).as_bytes(),
            utility_intent(&format!("before-{i}"), &agent(i)).as_bytes(),
            None,
        )
        .await
        .unwrap();
    }
    let before = read_until(&brokers, &topics.decisions, WAIT_MS, |ms| {
        effects(ms).len() >= INTENTS_PER_PHASE
    })
    .await;
    let before = effects(&before);
    assert!(
        before.values().any(|(e, _)| e == "ALLOW"),
        "the example policy must allow small utility payments for acme-br: {before:?}"
    );

    let status = spendguard(&env)
        .args([
            "kill-switch",
            "on",
            "--scope",
            "entity:acme-br",
            "--reason",
            "test trip",
            "--actor",
            "tester",
        ])
        .status()
        .unwrap();
    assert!(status.success());

    // After: nothing of acme-br is allowed, by any instance.
    for i in 0..INTENTS_PER_PHASE {
        bus::publish(
            &producer,
            &topics.intents,
            agent(i).as_bytes(),
            utility_intent(&format!("after-{i}"), &agent(i)).as_bytes(),
            None,
        )
        .await
        .unwrap();
    }
    let all = read_until(&brokers, &topics.decisions, WAIT_MS, |ms| {
        effects(ms).len() >= 2 * INTENTS_PER_PHASE
    })
    .await;
    let all = effects(&all);
    let after: Vec<_> = all
        .iter()
        .filter(|(id, _)| id.starts_with("after-"))
        .collect();
    assert_eq!(after.len(), INTENTS_PER_PHASE);
    for (id, (effect, codes)) in &after {
        assert_eq!(
            effect, "DENY",
            "{id} decided {effect} ({codes}) after the kill switch was tripped"
        );
        assert!(codes.contains("kill_switch_activated"), "{id}: {codes}");
    }

    // Every instance heard the control message; report the propagation times.
    let mut propagation = Vec::new();
    for s in &servers {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let log = s.log_text();
            if let Some(line) = log.lines().find(|l| l.starts_with("kill-switch applied")) {
                let ms = line
                    .rsplit("propagation_ms=")
                    .next()
                    .unwrap_or("?")
                    .to_string();
                propagation.push((s.instance.clone(), ms));
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} never applied the kill switch:\n{log}",
                s.instance
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    eprintln!("kill-switch propagation (ms) per instance: {propagation:?}");

    for s in servers {
        assert_eq!(s.terminate(), Some(0), "serve exits 0 on SIGTERM");
    }
}
