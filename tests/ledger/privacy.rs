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
