//! Shadow mode over Kafka with the real broker (SPEC §16): a stricter candidate bound in
//! shadow beside the enforced policy; every decision on `spend.decisions` is the enforced
//! one and carries nothing of the candidate; the shadow report over the ledger counts
//! exactly what a direct replay of the shadow semantics counts.

use crate::harness::intent::svc_intent_json;
use crate::harness::policies::test_policies;
use crate::harness::serve::{Rig, ServeProcess, json, read_until};
use crate::harness::{self, serial};
use spendguard::bus;
use spendguard::report::compliance::Period;
use spendguard::report::impact::{self, Scope};

const WAIT_MS: u64 = 60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_candidate_is_recorded_on_live_traffic_and_never_published() {
    let Some(_serial) = serial::service_test().await else {
        return;
    };
    let brokers = harness::brokers();
    let Rig {
        db,
        dir,
        policies,
        env,
        topics,
        ..
    } = Rig::with("sg_shadow_", "shadow", |dir| {
        let policies = test_policies(dir, "1", "1000000", "1h");
        // The candidate: svc-test with a 200 BRL per-transaction cap.
        let enforced = std::fs::read_to_string(policies.join("svc-test.yaml")).unwrap();
        let candidate = enforced
            .replace("name: svc-test", "name: svc-candidate")
            .replace("perTxn: 10000", "perTxn: 200");
        assert_ne!(enforced, candidate);
        std::fs::write(policies.join("svc-candidate.yaml"), candidate).unwrap();
        let bindings = std::fs::read_to_string(policies.join("bindings.yaml")).unwrap();
        std::fs::write(
            policies.join("bindings.yaml"),
            format!("{bindings}shadow:\n  entities:\n    \"acme-*\": svc-candidate\n"),
        )
        .unwrap();
        policies
    })
    .await;
    let server = ServeProcess::start(&env, "shadow-0", dir.path(), &[]);
    let producer = bus::producer(&brokers).unwrap();
    let amounts = ["50.00", "150.00", "250.00", "700.00", "90.00", "400.00"];
    let mut ids = Vec::new();
    for (i, amount) in amounts.iter().enumerate() {
        let agent = format!("agent-sh-{}", i % 2);
        let id = format!("sh-{i}");
        let body = svc_intent_json(&id, &agent, amount, "vendor:known");
        bus::publish(
            &producer,
            &topics.intents,
            agent.as_bytes(),
            body.as_bytes(),
            None,
        )
        .await
        .unwrap();
        ids.push(id);
    }
    let ms = read_until(&brokers, &topics.decisions, WAIT_MS, |ms| {
        ids.iter()
            .all(|id| ms.iter().map(json).any(|v| v["intentId"] == id.as_str()))
    })
    .await;
    let decisions: Vec<serde_json::Value> = ms.iter().map(json).collect();
    for id in &ids {
        let d: Vec<_> = decisions
            .iter()
            .filter(|v| v["intentId"] == id.as_str())
            .collect();
        assert_eq!(d.len(), 1, "{id}: {d:?}\n{}", server.log_text());
        // The enforced policy decided (perTxn 10000): all ALLOW, nothing of the candidate.
        assert_eq!(d[0]["effect"], "ALLOW", "{id}: {}", d[0]);
        assert_eq!(d[0]["policy"]["name"], "svc-test");
        let text = d[0].to_string();
        assert!(
            !text.contains("\"shadow\"") && !text.contains("svc-candidate"),
            "{text}"
        );
    }

    let reader = spendguard::ledger::query::LedgerReader::connect(&db, 2)
        .await
        .unwrap();
    let today = chrono::Utc::now().date_naive();
    let period = Period {
        from: today - chrono::Duration::days(1),
        to: today + chrono::Duration::days(1),
        entity: None,
    };
    let events = spendguard::report::events::load_events(&reader, period.end())
        .await
        .unwrap();
    let shadow = impact::shadow_report(&events, period.clone(), "svc-candidate");
    let set = spendguard::policy::PolicySet::load_dir(&policies).unwrap();
    let direct = impact::analyse_on_recorded(
        &events,
        period,
        &Scope::Shadowed("svc-candidate".into()),
        set.get("svc-candidate").unwrap(),
    );
    assert_eq!(shadow.intents_replayed, 6, "{shadow:#?}");
    // 250, 700 and 400 are over the candidate's 200 cap.
    assert_eq!(
        shadow.transitions.get("ALLOW->DENY"),
        Some(&3),
        "{shadow:#?}"
    );
    assert_eq!(shadow.transitions, direct.transitions);
    assert_eq!(shadow.newly_blocked_spend, direct.newly_blocked_spend);
    assert_eq!(
        shadow.newly_blocked_spend.get("BRL").map(|d| d.to_string()),
        Some("1350.00".to_string())
    );
    assert_eq!(server.terminate(), Some(0));
}
