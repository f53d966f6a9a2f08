//! Privacy: PANs never stored in clear (pg_dump of the whole database), beneficiary data
//! sealed per subject, and after `privacy forget` the data reads as erased while
//! `audit verify` and `replay --verify` still pass.

use crate::harness::db::{fresh_db, origin};
use crate::harness::intent::intent;
use crate::harness::policies::standard_set;
use crate::harness::serve::run;
use spendguard::intent::IntentError;
use spendguard::ledger::PersonalData;
use std::process::Command;

const PANS: [&str; 3] = ["4111111111111111", "5555555555554444", "378282246310005"];

#[tokio::test]
async fn no_pan_in_a_dump_and_erasure_keeps_the_ledger_verifiable() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_d, set) = standard_set();
    let o = origin();

    let mut with_card = intent("c1", "ag", "10.00");
    with_card.beneficiary.id = "person:maria".into();
    with_card.beneficiary.account = Some(PANS[0].into());
    ledger.decide(&set, &with_card, &o).await.unwrap();
    let mut spaced = intent("c2", "ag", "10.00");
    spaced.beneficiary.id = "person:joao".into();
    spaced.beneficiary.account = Some("5555 5555 5555 4444".into());
    let mut meta = serde_json::Map::new();
    meta.insert(
        "note".into(),
        serde_json::Value::String(format!("card {} backup", PANS[2])),
    );
    spaced.metadata = Some(meta);
    ledger.decide(&set, &spaced, &o).await.unwrap();
    // A PAN inside input that is not a valid intent, and in a refused vote.
    let bad = format!(
        r#"{{"intentId":"x","beneficiary":{{"account":"{}"}}}}"#,
        PANS[1]
    );
    let err = IntentError {
        code: "missing_field",
        message: format!("missing field near {}", PANS[1]),
        field: None,
    };
    ledger
        .record_invalid_intent(bad.as_bytes(), &err, &o)
        .await
        .unwrap();
    ledger
        .refuse_vote(
            format!(r#"{{"intentId":"c1","approverId":"{}"}}"#, PANS[0]).as_bytes(),
            "unknown_approver",
            "no such approver",
            &o,
        )
        .await
        .unwrap();
    // Redelivery with the same PAN is recognised (keyed fingerprint), a changed one is not.
    assert_eq!(
        ledger.decide(&set, &with_card, &o).await.unwrap().status,
        spendguard::ledger::DecideStatus::Redelivered
    );
    let mut other_card = with_card.clone();
    other_card.beneficiary.account = Some("4012888888881881".into());
    assert!(ledger.decide(&set, &other_card, &o).await.is_err());

    assert_eq!(
        ledger.beneficiary_account("c1").await.unwrap(),
        Some(PersonalData::Clear(PANS[0].into()))
    );

    let dump = Command::new("pg_dump")
        .args(["--no-owner", &db.url])
        .output()
        .expect("pg_dump");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(text.contains("411111******1111"), "the masked form is kept");
    for pan in PANS.iter().chain(["4012888888881881"].iter()) {
        assert!(!text.contains(pan), "PAN {pan} found in clear in pg_dump");
    }

    // Erase maria: her data reads as erased; joao's does not; the ledger still verifies.
    let (code, out) = run(&[
        "privacy",
        "forget",
        "person:maria",
        "--database-url",
        &db.url,
        "--actor",
        "dpo",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        ledger.beneficiary_account("c1").await.unwrap(),
        Some(PersonalData::Erased)
    );
    assert_eq!(
        ledger.beneficiary_account("c2").await.unwrap(),
        Some(PersonalData::Clear("5555 5555 5555 4444".into()))
    );
    let (code, out) = run(&["audit", "verify", "--database-url", &db.url]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(&["replay", "--verify", "--database-url", &db.url]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 with erased personal data"), "{out}");
    // The erasure itself is audited.
    let mut su = db.superuser().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_event WHERE event_type = 'subject_erased' AND resource = 'subject:person:maria'")
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

/// SPEC §14 strict input through `ledger submit`: a NUL in an id (as a JSON escape or as
/// a raw byte), `2_50.00` and a 30-decimal amount are each refused with their code and
/// recorded; none aborts the run with a database error, and a card number in the same
/// lines is stored masked.
#[tokio::test]
async fn ledger_submit_refuses_nul_ids_and_inexact_amounts_without_aborting() {
    let Some(db) = fresh_db("sg_strict_").await else {
        return;
    };
    let (_d, dir) = crate::harness::policies::standard_dir();
    let base = serde_json::json!({
        "intentId": "ok-1", "agentId": "ag", "entityId": "acme-br", "amount": "10.00",
        "currency": "BRL", "category": "utility",
        "beneficiary": {"id": "b", "account": "4111 1111 1111 1111"}, "purpose": "PIX"
    });
    let with = |k: &str, v: &str| {
        let mut x = base.clone();
        x[k] = v.into();
        x["intentId"] = format!("{k}-{}", v.len()).into();
        x.to_string()
    };
    let thirty = format!("1.{}1", "0".repeat(29));
    let mut lines = vec![
        with("agentId", "a\u{0}b"),
        with("amount", "2_50.00"),
        with("amount", &thirty),
        base.to_string(),
    ];
    // A raw NUL byte inside the JSON text (invalid JSON, recorded as refused input).
    lines.push(base.to_string().replace("\"ag\"", "\"a\u{0}g\""));
    let input = _d.path().join("strict.jsonl");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let (code, out) = run(&[
        "ledger",
        "submit",
        "--database-url",
        &db.url,
        "--policies",
        &dir.display().to_string(),
        "--input",
        &input.display().to_string(),
    ]);
    assert_eq!(code, 2, "refusals, not an abort:\n{out}");
    for want in [
        "invalid_field",
        "invalid_amount",
        "amount_scale_exceeds_currency",
        "invalid_json",
    ] {
        assert!(out.contains(want), "{want}:\n{out}");
    }
    assert!(!out.contains("database"), "{out}");
    let mut su = db.superuser().await;
    let refused: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ledger_event WHERE event_type = 'intent_invalid'")
            .fetch_one(&mut su)
            .await
            .unwrap();
    assert_eq!(refused, 4);
    let decided: i64 = sqlx::query_scalar("SELECT count(*) FROM decision")
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert_eq!(decided, 1);
    let dump = crate::harness::db::pg_dump(&db.url);
    assert!(!dump.contains("4111111111111111") && !dump.contains("4111 1111 1111 1111"));
    assert!(dump.contains("411111******1111"));
}
