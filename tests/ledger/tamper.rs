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

/// Rewrites the payload of event `seq` and recomputes the hashes of its chain from there
/// and the chain's head, as a database superuser could: the chains verify again.
async fn rewrite_with_recomputed_hashes(su: &mut sqlx::PgConnection, seq: i64) {
    use spendguard::ledger::chain::EventRow;
    sqlx::raw_sql("SET session_replication_role = replica")
        .execute(&mut *su)
        .await
        .unwrap();
    let chain: String = sqlx::query_scalar("SELECT chain_id FROM ledger_event WHERE seq = $1")
        .bind(seq)
        .fetch_one(&mut *su)
        .await
        .unwrap();
    type Row = (
        i64,
        String,
        i64,
        String,
        chrono::DateTime<chrono::Utc>,
        String,
        String,
        String,
        String,
        Vec<u8>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT seq, chain_id, chain_pos, event_type, recorded_at, actor, resource, origin, payload, prev_hash
         FROM ledger_event WHERE chain_id = $1 ORDER BY chain_pos",
    )
    .bind(&chain)
    .fetch_all(&mut *su)
    .await
    .unwrap();
    let mut prev: Option<[u8; 32]> = None;
    for (
        s,
        chain_id,
        chain_pos,
        event_type,
        recorded_at,
        actor,
        resource,
        origin,
        payload,
        prev_hash,
    ) in rows
    {
        let payload = if s == seq {
            payload.replace("\"10.00\"", "\"1.00\"")
        } else {
            payload
        };
        let mut e = EventRow {
            seq: s,
            chain_id,
            chain_pos,
            event_type,
            recorded_at,
            actor,
            resource,
            origin,
            payload,
            prev_hash: prev.unwrap_or_else(|| prev_hash.try_into().unwrap()),
            hash: [0; 32],
        };
        e.hash = e.compute_hash();
        sqlx::query(
            "UPDATE ledger_event SET payload = $2, prev_hash = $3, hash = $4 WHERE seq = $1",
        )
        .bind(s)
        .bind(&e.payload)
        .bind(e.prev_hash.to_vec())
        .bind(e.hash.to_vec())
        .execute(&mut *su)
        .await
        .unwrap();
        sqlx::query("UPDATE chain_head SET hash = $2 WHERE chain_id = $1 AND chain_pos = $3")
            .bind(&e.chain_id)
            .bind(e.hash.to_vec())
            .bind(e.chain_pos)
            .execute(&mut *su)
            .await
            .unwrap();
        prev = Some(e.hash);
    }
}

#[tokio::test]
async fn a_rewrite_with_recomputed_hashes_passes_audit_verify_but_not_the_signed_checkpoints() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_d, set) = standard_set();
    let o = origin();
    let mut seqs = Vec::new();
    for i in 0..3 {
        seqs.push(
            ledger
                .decide(&set, &intent(&format!("c{i}"), "agent-c", "10.00"), &o)
                .await
                .unwrap()
                .message
                .ledger_seq
                .unwrap(),
        );
    }
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("checkpoint.key");
    let (code, text) = run(&["audit", "keygen", "--out", key_file.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    let public = text.lines().last().unwrap().trim().to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the secret key is readable by its owner only"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap();
    let (code, text) = run(&[
        "audit",
        "checkpoint",
        "--database-url",
        &db.url,
        "--key",
        key_file.to_str().unwrap(),
        "--dir",
        dir_s,
    ]);
    assert_eq!(code, 0, "{text}");
    // Events after the checkpoint are not covered by it (and are not touched here).
    ledger
        .decide(&set, &intent("c3", "agent-c", "10.00"), &o)
        .await
        .unwrap();
    let with_checkpoints = |db: &str| {
        run(&[
            "audit",
            "verify",
            "--database-url",
            db,
            "--checkpoints",
            dir_s,
            "--checkpoint-public-key",
            &public,
        ])
    };
    let (code, text) = with_checkpoints(&db.url);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("1 signed checkpoint(s)"), "{text}");

    let mut su = db.superuser().await;
    rewrite_with_recomputed_hashes(&mut su, seqs[1]).await;
    let (code, text) = audit_verify(&db.url);
    assert_eq!(
        code, 0,
        "the recomputed chain fools the hashes alone: {text}"
    );
    let (code, text) = with_checkpoints(&db.url);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("signed checkpoint") && text.contains("rewritten"),
        "{text}"
    );

    // Another key's checkpoint is refused, not trusted.
    let (_, other_public) = spendguard::approvals::keygen();
    let (code, text) = run(&[
        "audit",
        "verify",
        "--database-url",
        &db.url,
        "--checkpoints",
        dir_s,
        "--checkpoint-public-key",
        &other_public,
    ]);
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("another key"), "{text}");
}

/// SPEC §14 "Projections protected": the service role's direct DML on every table that
/// decisions act on is refused, and the ledger's own write functions refuse a change
/// whose event this transaction did not append (replaying an old event's seq).
#[tokio::test]
async fn the_service_role_changes_projections_only_through_the_ledger() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    // The owner migrates; the service then runs as its own role.
    let _owner = db.ledger().await;
    let svc = spendguard::ledger::Ledger::connect(&db.url_as("spendguard_service"), "svc")
        .await
        .unwrap();
    let (_d, set) = standard_set();
    let o = origin();
    // Every protected table gets rows, written by the service role through the ledger.
    svc.decide(&set, &intent("small", "ag", "10.00"), &o)
        .await
        .unwrap();
    let msig = svc
        .decide(&set, &intent("big", "ag", "900.00"), &o)
        .await
        .unwrap();
    assert!(msig.message.approvals_required >= 2, "{msig:?}");
    let kill_seq = svc
        .set_kill_switch(
            &spendguard::kill_switch::Scope::Agent("ag".into()),
            true,
            "ops",
            "incident",
            &o,
        )
        .await
        .unwrap();

    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url_as("spendguard_service"))
        .await
        .unwrap();
    let tampering = [
        "UPDATE usage_window SET committed = 0",
        "DELETE FROM usage_window",
        "DELETE FROM kill_switch",
        "UPDATE kill_switch SET active = false",
        "INSERT INTO approval_vote (intent_id, approver_id, vote, signed_at, seq) VALUES ('big', 'mallory', 'APPROVE', now(), 1)",
        "DELETE FROM pending_approval",
        "UPDATE pending_approval SET approvals_required = 1",
        "UPDATE decision SET effect = 'ALLOW'",
        "DELETE FROM decision",
        "UPDATE spend_record SET amount = 0",
        "DELETE FROM spend_record",
        "UPDATE authorization_state SET voided = authorized",
        "DELETE FROM agent_entity",
        "UPDATE chain_head SET chain_pos = 0",
        "DELETE FROM policy_version",
        "DELETE FROM intent_outcome",
        "DELETE FROM fx_rate",
        "TRUNCATE usage_window",
    ];
    for sql in tampering {
        let e = sqlx::query(sql).execute(&mut c).await.unwrap_err();
        assert!(e.to_string().contains("permission denied"), "{sql}: {e}");
    }
    // Through the ledger's function, but with the seq of an event appended earlier: refused.
    let e =
        sqlx::query("SELECT ledger_set_kill_switch('agent:ag', false, 'mallory', 'x', now(), $1)")
            .bind(kill_seq)
            .execute(&mut c)
            .await
            .unwrap_err();
    assert!(
        e.to_string()
            .contains("was not appended by this transaction"),
        "{e}"
    );
    let e = sqlx::query(
        "SELECT ledger_grow_usage(ARRAY['ag'], ARRAY['day'], ARRAY['America/Sao_Paulo'], ARRAY['BRL'], ARRAY[current_date], ARRAY[-100::numeric], ARRAY[0::numeric], ARRAY[$1::bigint])",
    )
    .bind(kill_seq)
    .execute(&mut c)
    .await
    .unwrap_err();
    assert!(e.to_string().contains("not appended"), "{e}");

    // Nothing changed: the switch is still on, the usage still counts, the chain verifies.
    let state = svc.kill_switch_state().await.unwrap();
    assert!(state.iter().any(|k| k.active), "{state:?}");
    let committed: rust_decimal::Decimal =
        sqlx::query_scalar("SELECT coalesce(sum(committed), 0) FROM usage_window")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert!(committed > rust_decimal::Decimal::ZERO);
    let v = svc.audit_verify().await.unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    let report = svc.replay(true).await.unwrap();
    assert!(report.ok(), "{report:#?}");
}
