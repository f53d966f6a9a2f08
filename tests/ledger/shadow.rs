//! Shadow mode and the promotion gate (SPEC §16): a candidate bound under `shadow:` is
//! decided beside the enforced policy and recorded, never enforced or published; the
//! shadow report counts what a direct replay of the shadow semantics counts; `policy
//! promote` refuses a loosening candidate and records the evidence of a passing one.

use crate::harness::db::{fresh_db, origin};
use crate::harness::intent::intent;
use crate::harness::policies::{load, policy_dir, policy_text};
use crate::harness::serve::run;
use spendguard::decision::Effect;
use spendguard::report::compliance::Period;
use spendguard::report::impact::{self, Scope};

const TZ: &str = "America/Sao_Paulo";

fn policies() -> Vec<(&'static str, String)> {
    vec![
        // Enforced: perTxn 1000, daily 500, MSIG above 800.
        (
            "p.yaml",
            policy_text("p", TZ, "1000.00", "500.00", "2000.00", "800.00", "3600s"),
        ),
        // Stricter: perTxn 100, daily 150.
        (
            "strict.yaml",
            policy_text(
                "strict", TZ, "100.00", "150.00", "2000.00", "800.00", "3600s",
            ),
        ),
        // Looser: perTxn 5000, daily 50000, MSIG above 4000.
        (
            "loose.yaml",
            policy_text(
                "loose", TZ, "5000.00", "50000.00", "90000.00", "4000.00", "3600s",
            ),
        ),
    ]
}

const BINDINGS: &str =
    "default: p\nshadow:\n  entities:\n    acme-br: strict\n  agents:\n    \"agent-l*\": loose\n";

#[tokio::test]
async fn shadow_decisions_are_recorded_never_enforced_and_the_report_matches_a_replay() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let texts = policies();
    let files: Vec<(&str, &str)> = texts.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let (_d, dir) = policy_dir(&files, BINDINGS);
    let set = load(&dir);
    let ledger = db.ledger().await;
    let o = origin();
    // agent-s*: strict in shadow; agent-l*: loose in shadow.
    let amounts = ["10.00", "50.00", "120.00", "90.00", "300.00", "900.00"];
    let mut enforced = Vec::new();
    for (i, a) in amounts.iter().enumerate() {
        for agent in ["agent-s1", "agent-s2", "agent-l1"] {
            let d = ledger
                .decide(&set, &intent(&format!("{agent}-{i}"), agent, a), &o)
                .await
                .unwrap();
            enforced.push(d.message.effect);
        }
    }
    let denied = ledger
        .decide(&set, &intent("agent-l1-big", "agent-l1", "1500.00"), &o)
        .await
        .unwrap();
    assert_eq!(denied.message.effect, Effect::Deny);

    // Enforced as `p`: the first two small intents of each agent are allowed.
    assert_eq!(enforced[0], Effect::Allow);
    let mut su = db.superuser().await;
    // Never published, never in the decision rows: only in the events.
    for sql in [
        "SELECT count(*) FROM outbox WHERE payload LIKE '%shadow%' OR payload LIKE '%strict%'",
        "SELECT count(*) FROM decision WHERE message LIKE '%shadow%' OR message LIKE '%strict%'",
    ] {
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut su).await.unwrap();
        assert_eq!(n, 0, "{sql}");
    }
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ledger_event WHERE event_type = 'intent_decided' AND payload LIKE '%\"shadow\":%'",
    )
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(recorded, 19, "every intent has a shadow candidate");
    // The candidates' versions are recorded like enforced ones (replay can find them).
    let versions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM policy_version WHERE name IN ('strict', 'loose')")
            .fetch_one(&mut su)
            .await
            .unwrap();
    assert_eq!(versions, 2);
    let report = ledger.replay(true).await.unwrap();
    assert!(report.ok(), "{report:#?}");

    let reader = spendguard::ledger::query::LedgerReader::connect(&db.url, 2)
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
    for (name, policy) in [("strict", "strict"), ("loose", "loose")] {
        let shadow = impact::shadow_report(&events, period.clone(), name);
        let candidate = set.get(policy).unwrap();
        let direct = impact::analyse_on_recorded(
            &events,
            period.clone(),
            &Scope::Shadowed(name.into()),
            candidate,
        );
        assert_eq!(shadow.intents_replayed, direct.intents_replayed, "{name}");
        assert_eq!(shadow.transitions, direct.transitions, "{name}");
        assert_eq!(
            shadow.newly_allowed_spend, direct.newly_allowed_spend,
            "{name}"
        );
        assert_eq!(
            shadow.newly_blocked_spend, direct.newly_blocked_spend,
            "{name}"
        );
        assert_eq!(shadow.candidate.sha256, candidate.identity.sha256);
        assert!(!shadow.transitions.is_empty(), "{name}: {shadow:#?}");
    }
    let strict = impact::shadow_report(&events, period.clone(), "strict");
    assert_eq!(strict.intents_replayed, 12);
    assert!(
        strict.transitions.keys().any(|k| k.starts_with("ALLOW->")),
        "{strict:#?}"
    );
    assert_eq!(strict.denied_now_allowed, 0);
    let loose = impact::shadow_report(&events, period, "loose");
    assert_eq!(loose.intents_replayed, 7);
    assert!(loose.denied_now_allowed >= 1, "{loose:#?}");

    // The promotion gate, through the CLI.
    let day = today.to_string();
    let promote = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "policy",
            "promote",
            name,
            "--policies",
            dir.to_str().unwrap(),
            "--database-url",
            &db.url,
            "--from",
            &day,
            "--to",
            &day,
            "--actor",
            "alice",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    // Loosening: refused whatever the tightening allowance; nothing recorded or changed.
    let (code, out) = promote("loose", &["--max-tightening", "100%"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("recorded as DENY would be ALLOWed"), "{out}");
    assert!(out.contains("not auto-allowed"), "{out}");
    // Tightening beyond the default 1%: refused too.
    let (code, out) = promote("strict", &[]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("lose their ALLOW"), "{out}");
    let promoted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ledger_event WHERE event_type = 'policy_promoted'",
    )
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(promoted, 0);
    assert_eq!(
        std::fs::read_to_string(dir.join("bindings.yaml")).unwrap(),
        BINDINGS
    );

    // Accepted with the operator's allowance: evidence recorded, then bindings rewritten.
    let (code, out) = promote("strict", &["--max-tightening", "100%"]);
    assert_eq!(code, 0, "{out}");
    let (actor, payload): (String, String) = sqlx::query_as(
        "SELECT actor, payload FROM ledger_event WHERE event_type = 'policy_promoted'",
    )
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(actor, "alice");
    let evidence: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(evidence["thresholds"]["maxDenyToAllow"], 0);
    assert_eq!(evidence["shadow"]["intents"], 12);
    assert_eq!(evidence["patterns"][0], "entities[\"acme-br\"]");
    assert!(evidence["impact"]["tightened"].as_u64().unwrap() >= 1);
    let after = load(&dir);
    assert_eq!(
        after.resolve("agent-s1", "acme-br").unwrap().identity.name,
        "strict"
    );
    assert_eq!(after.bindings().resolve_shadow("agent-s1", "acme-br"), None);
    assert_eq!(
        after.bindings().resolve_shadow("agent-l1", "acme-br"),
        Some("loose")
    );
    let v = ledger.audit_verify().await.unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
}
