//! Policy history, diff and rollback (SPEC §16, issue 14 item 4) on the real PostgreSQL:
//! every activation is a numbered revision; `policy rollback` records the earlier
//! content as a new revision with its actor and reason and writes it into the policies
//! directory; files coming back to an earlier content are a revision too; replay
//! --verify still passes.

use crate::harness::db::{fresh_db, origin};
use crate::harness::intent::intent;
use crate::harness::policies::{load, policy_dir};
use crate::harness::serve::run;
use spendguard::decision::Effect;

const V1: &str = "name: p\nversion: \"1.0.0\"\ncurrency: BRL\ntimezone: America/Sao_Paulo\ncaps: { perTxn: \"500.00\", daily: \"1000.00\", monthly: \"5000.00\" }\n";

fn v2() -> String {
    V1.replace("1.0.0", "2.0.0")
        .replace("perTxn: \"500.00\"", "perTxn: \"50.00\"")
}

#[tokio::test]
async fn rollback_restores_earlier_content_as_a_new_audited_revision() {
    let Some(db) = fresh_db("sg_ledger_phist_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_dir, path) = policy_dir(&[("p.yaml", V1)], "default: p\n");
    let file = path.join("p.yaml");
    let set1 = load(&path);
    ledger.activate_policies(&set1, "serve-a").await.unwrap();
    std::fs::write(&file, v2()).unwrap();
    let set2 = load(&path);
    ledger.activate_policies(&set2, "serve-a").await.unwrap();
    // Activating the same set again records nothing.
    ledger.activate_policies(&set2, "serve-b").await.unwrap();
    let sha1 = set1.get("p").unwrap().identity.sha256.clone();
    let sha2 = set2.get("p").unwrap().identity.sha256.clone();
    let d = ledger
        .decide(&set2, &intent("i-1", "agent-1", "100.00"), &origin())
        .await
        .unwrap();
    assert_eq!(d.message.effect, Effect::Deny, "v2 caps perTxn at 50.00");

    let h = ledger.policy_history("p").await.unwrap();
    let revs: Vec<(i64, &str, &str)> = h
        .iter()
        .map(|(r, _)| (r.revision, r.version.as_str(), r.actor.as_str()))
        .collect();
    assert_eq!(revs, [(1, "1.0.0", "serve-a"), (2, "2.0.0", "serve-a")]);
    assert!(ledger.policy_history("nope").await.is_err());

    let db_url = db.url.as_str();
    let (code, out) = run(&["policy", "history", "p", "--database-url", db_url]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2.0.0") && out.contains("<- latest"), "{out}");

    // The diff names the field that changed, on canonical content.
    let (code, out) = run(&[
        "policy",
        "diff",
        "p",
        "1",
        "2.0.0",
        "--database-url",
        db_url,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("--- revision 1 (version 1.0.0, sha256 {sha1})")),
        "{out}"
    );
    assert!(out.contains("-     \"perTxn\": \"500\""), "{out}");
    assert!(out.contains("+     \"perTxn\": \"50\""), "{out}");
    let changed = out.lines().filter(|l| l.starts_with(['-', '+'])).count();
    assert_eq!(changed, 2 + 4, "headers and two changed fields only: {out}");

    // Refused: an unknown revision, no reason, the content already in force.
    let (code, out) = run(&[
        "policy",
        "rollback",
        "p",
        "7",
        "--policies",
        path.to_str().unwrap(),
        "--reason",
        "x",
        "--actor",
        "alice",
        "--database-url",
        db_url,
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("revisions 1 to 2"), "{out}");
    let (code, out) = run(&[
        "policy",
        "rollback",
        "p",
        "2",
        "--policies",
        path.to_str().unwrap(),
        "--reason",
        "x",
        "--actor",
        "alice",
        "--database-url",
        db_url,
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("already in force"), "{out}");

    let (code, out) = run(&[
        "policy",
        "rollback",
        "p",
        "1",
        "--policies",
        path.to_str().unwrap(),
        "--reason",
        "v2 denies legitimate payments",
        "--actor",
        "alice",
        "--database-url",
        db_url,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("recorded as revision 3"), "{out}");
    let h = ledger.policy_history("p").await.unwrap();
    assert_eq!(h.len(), 3);
    let (r3, c3) = &h[2];
    assert_eq!(
        (r3.revision, r3.sha256.as_str(), r3.version.as_str()),
        (3, sha1.as_str(), "1.0.0")
    );
    assert_eq!(r3.actor, "alice");
    assert_eq!(r3.rollback_to, Some(1));
    assert_eq!(r3.reason.as_deref(), Some("v2 denies legitimate payments"));
    assert_eq!(c3, &h[0].1, "the old content, byte for byte");

    // The directory now holds revision 1's content; the service loading it records
    // nothing more (it is the latest revision) and decides under it.
    let set3 = load(&path);
    assert_eq!(set3.get("p").unwrap().identity.sha256, sha1);
    ledger.activate_policies(&set3, "serve-a").await.unwrap();
    assert_eq!(ledger.policy_history("p").await.unwrap().len(), 3);
    let d = ledger
        .decide(&set3, &intent("i-2", "agent-1", "100.00"), &origin())
        .await
        .unwrap();
    assert_eq!(d.message.effect, Effect::Allow);
    assert_eq!(
        d.message.policy.as_ref().map(|p| p.sha256.clone()),
        Some(sha1.clone())
    );

    // Files coming back to v2's content: a revision of its own, so history says what
    // is in force.
    ledger.activate_policies(&set2, "serve-a").await.unwrap();
    let h = ledger.policy_history("p").await.unwrap();
    assert_eq!(h.len(), 4);
    assert_eq!(
        (h[3].0.sha256.as_str(), h[3].0.rollback_to),
        (sha2.as_str(), None)
    );

    let report = ledger.replay(true).await.unwrap();
    assert!(report.ok(), "{report:#?}");
    let (code, out) = run(&["audit", "verify", "--database-url", db_url]);
    assert_eq!(code, 0, "{out}");
}
