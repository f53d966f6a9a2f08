//! Tamper evidence: a superuser bypasses the append-only triggers, alters one event and
//! deletes another; `spendguard audit verify` exits 1 and names the first affected event.

use crate::harness::db::{fresh_db, origin};
use crate::harness::intent::intent;
use crate::harness::policies::standard_set;
use crate::harness::serve::run;

fn audit_verify(url: &str) -> (i32, String) {
    run(&["audit", "verify", "--database-url", url])
}

#[tokio::test]
async fn altered_and_deleted_events_are_detected_and_the_first_is_named() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_d, set) = standard_set();
    let o = origin();
    let mut seqs_a = Vec::new();
    let mut seqs_b = Vec::new();
    for i in 0..4 {
        seqs_a.push(
            ledger
                .decide(&set, &intent(&format!("a{i}"), "agent-a", "10.00"), &o)
                .await
                .unwrap()
                .message
                .ledger_seq
                .unwrap(),
        );
        seqs_b.push(
            ledger
                .decide(&set, &intent(&format!("b{i}"), "agent-b", "10.00"), &o)
                .await
                .unwrap()
                .message
                .ledger_seq
                .unwrap(),
        );
    }
    let (code, text) = audit_verify(&db.url);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("OK"), "{text}");

    let altered = seqs_a[1];
    let deleted = seqs_b[2];
    assert!(altered < deleted);
    let mut su = db.superuser().await;
    sqlx::raw_sql("SET session_replication_role = replica")
        .execute(&mut su)
        .await
        .unwrap();
    sqlx::query("UPDATE ledger_event SET payload = replace(payload, '\"10.00\"', '\"1.00\"') WHERE seq = $1")
        .bind(altered)
        .execute(&mut su)
        .await
        .unwrap();
    sqlx::query("DELETE FROM ledger_event WHERE seq = $1")
        .bind(deleted)
        .execute(&mut su)
        .await
        .unwrap();

    let (code, text) = audit_verify(&db.url);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!("first broken event: seq {altered} ")),
        "{text}"
    );
    assert!(text.contains("altered"), "{text}");
    // The deletion is reported too, at the event that follows the hole.
    assert!(
        text.contains(&format!("seq {} ", seqs_b[3])) && text.contains("missing"),
        "{text}"
    );
}

#[tokio::test]
async fn deleting_the_last_event_of_a_chain_is_detected() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_d, set) = standard_set();
    let o = origin();
    ledger
        .decide(&set, &intent("a0", "agent-a", "10.00"), &o)
        .await
        .unwrap();
    let last = ledger
        .decide(&set, &intent("a1", "agent-a", "10.00"), &o)
        .await
        .unwrap()
        .message
        .ledger_seq
        .unwrap();
    let mut su = db.superuser().await;
    sqlx::raw_sql("SET session_replication_role = replica")
        .execute(&mut su)
        .await
        .unwrap();
    sqlx::query("DELETE FROM ledger_event WHERE seq = $1")
        .bind(last)
        .execute(&mut su)
        .await
        .unwrap();
    let (code, text) = audit_verify(&db.url);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!("seq {last} ")) && text.contains("tail"),
        "{text}"
    );
}
