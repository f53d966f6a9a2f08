//! Subject keys wrapped by a key-encryption key kept outside PostgreSQL (SPEC §14 "Keys
//! apart from data"): a dump alone opens no account, the KEK does, `privacy forget` is
//! final even with the KEK; rotation; keys stored in clear before the upgrade; the
//! errors an operator sees without the KEK or with the wrong one.

use crate::harness::db::{TestDb, fresh_db, origin};
use crate::harness::intent::{IntentExt, intent};
use crate::harness::policies::standard_set;
use crate::harness::serve::{run, spendguard};
use spendguard::keywrap::{KeyRing, KeyWrap, LocalKek, Wrapped};
use spendguard::ledger::{ConnectOptions, Ledger, LedgerError, PersonalData};
use spendguard::privacy::{self, Sealed};
use std::sync::Arc;

/// Beneficiary subjects and the accounts their intents carry (a bank account is sealed
/// whole; a card number only as its masked form).
const ACCOUNTS: [(&str, &str); 4] = [
    ("person:maria", "0001-23456-7 agencia 12"),
    ("person:joao", "conta 1093-2840 ag 0814"),
    ("person:ana", "itau 3391/0045521-8"),
    ("person:bia", "bb 1234 conta 99881-2"),
];

/// Decides one intent per subject of `subjects` (ids `{prefix}{n}`).
async fn decide_accounts(ledger: &Ledger, prefix: &str, subjects: &[(&str, &str)]) {
    let (_d, set) = standard_set();
    for (n, (subject, account)) in subjects.iter().enumerate() {
        let i = intent(&format!("{prefix}{n}"), "ag", "10.00")
            .beneficiary(subject)
            .account(account);
        ledger.decide(&set, &i, &origin()).await.expect("decide");
    }
}

async fn ledger_with(url: &str, key_wrap: Option<Arc<dyn KeyWrap>>) -> Ledger {
    Ledger::connect_with(
        url,
        "kek-test",
        ConnectOptions {
            key_wrap,
            ..Default::default()
        },
    )
    .await
    .expect("connect ledger")
}

/// A plain SQL dump of `db`, restored into a database of its own: all an attacker with
/// the dump has. Returns the restored database (dropped with the test, as `db` is).
async fn dump_and_restore(db: &TestDb) -> TestDb {
    let out = std::process::Command::new("pg_dump")
        .args(["--no-owner", "--no-privileges", &db.url])
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = TestDb::create("sg_kek_dump_").await;
    let mut psql = std::process::Command::new("psql")
        .args(["-q", "-v", "ON_ERROR_STOP=1", &restored])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run psql");
    {
        use std::io::Write;
        let mut stdin = psql.stdin.take().expect("psql stdin");
        stdin.write_all(&out.stdout).expect("feed the dump to psql");
    }
    let done = psql.wait_with_output().expect("psql");
    assert!(
        done.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    restored
}

/// A `subject_key` row: subject, key id, wrapped key, kek id, legacy clear key.
type KeyRow = (
    String,
    uuid::Uuid,
    Option<Vec<u8>>,
    Option<String>,
    Option<Vec<u8>>,
);

/// What the dump holds: every sealed personal datum (with its intent id), and every
/// byte string stored in `subject_key` and `ledger_secret`.
struct DumpContents {
    sealed: Vec<(String, Sealed)>,
    key_rows: Vec<KeyRow>,
    secrets: Vec<Vec<u8>>,
}

async fn read_dump(url: &str) -> DumpContents {
    let pool = sqlx::PgPool::connect(url).await.expect("connect restored");
    let payloads: Vec<String> = sqlx::query_scalar(
        "SELECT payload FROM ledger_event WHERE event_type = 'intent_decided' ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut sealed = Vec::new();
    for p in payloads {
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        if let Some(s) = v.get("personal").filter(|s| !s.is_null()) {
            let intent_id = v["intent"]["intentId"].as_str().unwrap().to_string();
            sealed.push((intent_id, serde_json::from_value(s.clone()).unwrap()));
        }
    }
    let key_rows = sqlx::query_as(
        "SELECT subject_id, key_id, wrapped_key, kek_id, legacy_key FROM subject_key ORDER BY subject_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let secrets = sqlx::query_scalar("SELECT key FROM ledger_secret")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    DumpContents {
        sealed,
        key_rows,
        secrets,
    }
}

/// Every 32-byte string in the dump's key tables (each window of each stored value),
/// used as an AES-256 key on `sealed`: true if any opens it.
fn any_dump_bytes_open(d: &DumpContents, intent_id: &str, sealed: &Sealed) -> bool {
    let mut candidates: Vec<&[u8]> = Vec::new();
    for (_, _, wrapped, _, legacy) in &d.key_rows {
        for v in [wrapped, legacy].into_iter().flatten() {
            candidates.extend(v.windows(privacy::KEY_BYTES));
        }
    }
    for s in &d.secrets {
        candidates.extend(s.windows(privacy::KEY_BYTES));
    }
    assert!(!candidates.is_empty(), "the dump holds key rows to try");
    candidates.into_iter().any(|bytes| {
        let key = privacy::SubjectKey::from_bytes(sealed.key_id, bytes).expect("32 bytes");
        privacy::open(&key, sealed, intent_id).is_ok()
    })
}

/// Every key row of the dump unwrapped with `kek`, and each tried on `sealed`.
fn kek_opens(d: &DumpContents, kek: &LocalKek, intent_id: &str, sealed: &Sealed) -> bool {
    d.key_rows
        .iter()
        .any(|(subject, key_id, wrapped, kek_id, _)| {
            let (Some(bytes), Some(kek_id)) = (wrapped, kek_id) else {
                return false;
            };
            let w = Wrapped {
                kek_id: kek_id.clone(),
                bytes: bytes.clone(),
            };
            let Ok(key) = kek.unwrap(subject, *key_id, &w) else {
                return false;
            };
            let key = privacy::SubjectKey::from_bytes(sealed.key_id, &key.key).expect("32 bytes");
            privacy::open(&key, sealed, intent_id).is_ok()
        })
}

#[tokio::test]
async fn a_dump_alone_opens_no_account_the_kek_does_and_forget_is_final() {
    let Some(db) = fresh_db("sg_kek_").await else {
        return;
    };
    let ledger = db.ledger().await;
    decide_accounts(&ledger, "d", &ACCOUNTS).await;
    let kek = LocalKek::parse(&db.kek(), "test").unwrap();

    let restored = dump_and_restore(&db).await;
    let dump = read_dump(&restored).await;
    assert_eq!(dump.sealed.len(), ACCOUNTS.len());
    assert_eq!(dump.key_rows.len(), ACCOUNTS.len());
    for (_, _, wrapped, kek_id, legacy) in &dump.key_rows {
        assert!(legacy.is_none(), "no key is stored in clear");
        assert_eq!(wrapped.as_ref().map(Vec::len), Some(60));
        assert_eq!(kek_id.as_deref(), Some(kek.kek_id()));
    }
    // The dump alone: no byte string it stores opens any account.
    for (intent_id, sealed) in &dump.sealed {
        assert!(
            !any_dump_bytes_open(&dump, intent_id, sealed),
            "intent {intent_id}: the dump alone opened its personal data"
        );
        // The check can find a key: with the KEK, the same rows open it.
        assert!(
            kek_opens(&dump, &kek, intent_id, sealed),
            "intent {intent_id}: the KEK does not open it"
        );
    }
    // A ledger on the restored dump: without the KEK it refuses to open, with it the
    // accounts read back in clear.
    let blind = ledger_with(&restored, None).await;
    let err = blind.beneficiary_account("d0").await.unwrap_err();
    assert!(matches!(err, LedgerError::SubjectKey(_)), "{err}");
    assert!(err.to_string().contains("SPENDGUARD_KEK_FILE"), "{err}");
    blind.close().await;
    let with_kek = ledger_with(&restored, Some(db.key_wrap())).await;
    for (n, (_, account)) in ACCOUNTS.iter().enumerate() {
        assert_eq!(
            with_kek
                .beneficiary_account(&format!("d{n}"))
                .await
                .unwrap(),
            Some(PersonalData::Clear(account.to_string()))
        );
    }
    with_kek.close().await;

    // Erase maria; a new dump opens nothing of hers, even with the KEK.
    let (code, out) = run(&[
        "privacy",
        "forget",
        ACCOUNTS[0].0,
        "--database-url",
        &db.url,
        "--actor",
        "dpo",
    ]);
    assert_eq!(code, 0, "{out}");
    let restored = dump_and_restore(&db).await;
    let dump = read_dump(&restored).await;
    assert_eq!(dump.key_rows.len(), ACCOUNTS.len() - 1);
    for (intent_id, sealed) in &dump.sealed {
        let maria = sealed.subject == ACCOUNTS[0].0;
        assert!(!any_dump_bytes_open(&dump, intent_id, sealed));
        assert_eq!(
            kek_opens(&dump, &kek, intent_id, sealed),
            !maria,
            "intent {intent_id} ({})",
            sealed.subject
        );
    }
    let with_kek = ledger_with(&restored, Some(db.key_wrap())).await;
    assert_eq!(
        with_kek.beneficiary_account("d0").await.unwrap(),
        Some(PersonalData::Erased)
    );
    assert_eq!(
        with_kek.beneficiary_account("d1").await.unwrap(),
        Some(PersonalData::Clear(ACCOUNTS[1].1.to_string()))
    );
    with_kek.close().await;
}

fn write_kek(dir: &std::path::Path, name: &str, kek_b64: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{kek_b64}\n")).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn rotate_kek_rewraps_every_key_the_old_kek_stops_working_nothing_is_lost() {
    let Some(db) = fresh_db("sg_kek_rot_").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let old_file = write_kek(dir.path(), "old.kek", &db.kek());
    let old = LocalKek::parse(&db.kek(), "old").unwrap();
    let new_file = dir.path().join("new.kek").display().to_string();
    let (code, out) = run(&["privacy", "kek-gen", "--out", &new_file]);
    assert_eq!(code, 0, "{out}");
    let new = LocalKek::from_file(std::path::Path::new(&new_file)).unwrap();
    assert!(out.contains(new.kek_id()), "{out}");
    // kek-gen never overwrites a KEK.
    let (code, out) = run(&["privacy", "kek-gen", "--out", &new_file]);
    assert_ne!(code, 0, "{out}");
    assert_eq!(
        LocalKek::from_file(std::path::Path::new(&new_file))
            .unwrap()
            .kek_id(),
        new.kek_id()
    );

    // Four subjects under the old KEK; then the fleet runs with the new KEK as current
    // and the old one as previous: it reads the old rows and wraps new subjects under
    // the new KEK (a rotation half done).
    decide_accounts(&db.ledger().await, "o", &ACCOUNTS).await;
    let ring: Arc<dyn KeyWrap> = Arc::new(KeyRing::new(
        LocalKek::from_file(std::path::Path::new(&new_file)).unwrap(),
        Some(LocalKek::parse(&db.kek(), "old").unwrap()),
    ));
    let mixed = ledger_with(&db.url, Some(ring)).await;
    assert_eq!(
        mixed.beneficiary_account("o0").await.unwrap(),
        Some(PersonalData::Clear(ACCOUNTS[0].1.to_string()))
    );
    let later = [
        ("person:caio", "caixa 0001 445566-0"),
        ("person:duda", "nubank 0260 778899-1"),
    ];
    decide_accounts(&mixed, "n", &later).await;
    mixed.close().await;
    let mut su = db.superuser().await;
    let by_kek: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kek_id, count(*) FROM subject_key GROUP BY kek_id ORDER BY count(*) DESC",
    )
    .fetch_all(&mut su)
    .await
    .unwrap();
    assert_eq!(
        by_kek,
        vec![(old.kek_id().to_string(), 4), (new.kek_id().to_string(), 2)]
    );

    // The rotation re-wraps only the old KEK's rows, 3 per transaction, each batch an
    // event; rows already under the new KEK are skipped (what an interrupted run finds).
    let (code, out) = run(&[
        "privacy",
        "rotate-kek",
        "--database-url",
        &db.url,
        "--kek-file",
        &old_file,
        "--new-kek-file",
        &new_file,
        "--batch",
        "3",
        "--actor",
        "sec-officer",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "4 subject key(s) re-wrapped under {} in 2 batch(es)",
            new.kek_id()
        )),
        "{out}"
    );
    let kek_ids: Vec<String> = sqlx::query_scalar("SELECT DISTINCT kek_id FROM subject_key")
        .fetch_all(&mut su)
        .await
        .unwrap();
    assert_eq!(kek_ids, vec![new.kek_id().to_string()]);
    let events: Vec<(String, String)> = sqlx::query_as(
        "SELECT actor, payload FROM ledger_event WHERE event_type = 'subject_keys_rewrapped' ORDER BY seq",
    )
    .fetch_all(&mut su)
    .await
    .unwrap();
    assert_eq!(events.len(), 2);
    let mut rewrapped: Vec<String> = Vec::new();
    for (actor, payload) in &events {
        assert_eq!(actor, "sec-officer");
        let v: serde_json::Value = serde_json::from_str(payload).unwrap();
        assert_eq!(v["fromKekIds"], serde_json::json!([old.kek_id()]));
        assert_eq!(v["toKekId"], new.kek_id());
        rewrapped.extend(
            v["keyIds"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap().to_string()),
        );
    }
    rewrapped.sort();
    let mut old_ids: Vec<String> =
        sqlx::query_scalar("SELECT key_id::text FROM subject_key WHERE subject_id = ANY($1)")
            .bind(ACCOUNTS.iter().map(|a| a.0.to_string()).collect::<Vec<_>>())
            .fetch_all(&mut su)
            .await
            .unwrap();
    old_ids.sort();
    assert_eq!(rewrapped, old_ids, "every old key, once");
    // Run again: nothing to do, nothing recorded.
    let (code, out) = run(&[
        "privacy",
        "rotate-kek",
        "--database-url",
        &db.url,
        "--kek-file",
        &old_file,
        "--new-kek-file",
        &new_file,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 subject key(s) re-wrapped"), "{out}");

    // The old KEK no longer opens anything, and says why.
    let stale = ledger_with(&db.url, Some(Arc::new(old))).await;
    let err = stale
        .beneficiary_account("o1")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "subject keys were wrapped by kek_id {}, the configured KEK is {}",
            new.kek_id(),
            LocalKek::parse(&db.kek(), "old").unwrap().kek_id()
        )),
        "{err}"
    );
    let (_d, set) = standard_set();
    let again = intent("o-after", "ag", "10.00")
        .beneficiary(ACCOUNTS[2].0)
        .account(ACCOUNTS[2].1);
    let err = stale.decide(&set, &again, &origin()).await.unwrap_err();
    assert!(matches!(err, LedgerError::SubjectKey(_)), "{err}");
    assert!(!err.is_transient());
    stale.close().await;
    let (code, out) = run(&[
        "replay",
        "--verify",
        "--database-url",
        &db.url,
        "--kek-file",
        &old_file,
    ]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("subject keys were wrapped by kek_id"), "{out}");

    // The new KEK opens every account, old and new: nothing lost.
    let fresh = ledger_with(&db.url, Some(Arc::new(new))).await;
    for (prefix, subjects) in [("o", &ACCOUNTS[..]), ("n", &later[..])] {
        for (n, (_, account)) in subjects.iter().enumerate() {
            assert_eq!(
                fresh
                    .beneficiary_account(&format!("{prefix}{n}"))
                    .await
                    .unwrap(),
                Some(PersonalData::Clear(account.to_string()))
            );
        }
    }
    fresh.close().await;
    for args in [
        vec!["replay", "--verify", "--kek-file", &new_file],
        vec!["audit", "verify"],
    ] {
        let mut all = args.clone();
        all.extend(["--database-url", &db.url]);
        let (code, out) = run(&all);
        assert_eq!(code, 0, "{args:?}: {out}");
    }
}

#[tokio::test]
async fn keys_stored_in_clear_before_the_upgrade_are_wrapped_at_start_and_audited() {
    let Some(db) = fresh_db("sg_kek_legacy_").await else {
        return;
    };
    decide_accounts(&db.ledger().await, "l", &ACCOUNTS[..3]).await;
    // What the migration leaves of a pre-upgrade ledger: the clear key in legacy_key.
    let mut su = db.superuser().await;
    let rows: Vec<(String, uuid::Uuid, Vec<u8>, String)> =
        sqlx::query_as("SELECT subject_id, key_id, wrapped_key, kek_id FROM subject_key")
            .fetch_all(&mut su)
            .await
            .unwrap();
    let kw = db.key_wrap();
    for (subject, key_id, bytes, kek_id) in &rows {
        let clear = kw
            .unwrap(
                subject,
                *key_id,
                &Wrapped {
                    kek_id: kek_id.clone(),
                    bytes: bytes.clone(),
                },
            )
            .unwrap();
        sqlx::query(
            "UPDATE subject_key SET legacy_key = $2, wrapped_key = NULL, kek_id = NULL WHERE subject_id = $1",
        )
        .bind(subject)
        .bind(clear.key.to_vec())
        .execute(&mut su)
        .await
        .unwrap();
    }
    // The dump check of the first test finds clear keys when there are some.
    let before = read_dump(&db.url).await;
    for (intent_id, sealed) in &before.sealed {
        assert!(
            any_dump_bytes_open(&before, intent_id, sealed),
            "{intent_id}"
        );
    }
    // Until a ledger with the KEK starts, a legacy row is named as such.
    let blind = ledger_with(&db.url, None).await;
    assert!(blind.beneficiary_account("l0").await.is_err());
    blind.close().await;

    let ledger = db.ledger().await;
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM subject_key WHERE legacy_key IS NOT NULL")
            .fetch_one(&mut su)
            .await
            .unwrap();
    assert_eq!(left, 0, "every clear key was wrapped at start");
    let payload: String = sqlx::query_scalar(
        "SELECT payload FROM ledger_event WHERE event_type = 'subject_keys_rewrapped'",
    )
    .fetch_one(&mut su)
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(v["fromKekIds"], serde_json::json!(["clear"]));
    assert_eq!(v["keyIds"].as_array().unwrap().len(), 3);
    for (n, (_, account)) in ACCOUNTS[..3].iter().enumerate() {
        assert_eq!(
            ledger.beneficiary_account(&format!("l{n}")).await.unwrap(),
            Some(PersonalData::Clear(account.to_string()))
        );
    }
    // An older binary inserting a clear key into the old column now fails.
    let old_insert = sqlx::query(
        "INSERT INTO subject_key (subject_id, key_id, key) VALUES ('x', gen_random_uuid(), '\\x00')",
    )
    .execute(&mut su)
    .await;
    assert!(old_insert.is_err());
    let (code, out) = run(&["replay", "--verify", "--database-url", &db.url]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn without_a_kek_serve_and_ledger_submit_refuse_and_name_the_settings() {
    let Some(db) = fresh_db("sg_kek_none_").await else {
        return;
    };
    // A library ledger without a KEK decides what carries no personal data and refuses
    // what does.
    let blind = ledger_with(&db.url, None).await;
    let (_d, set) = standard_set();
    blind
        .decide(&set, &intent("plain", "ag", "10.00"), &origin())
        .await
        .expect("no personal data, no key needed");
    let err = blind
        .decide(
            &set,
            &intent("p", "ag", "10.00")
                .beneficiary("person:maria")
                .account("0001-23456-7"),
            &origin(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::SubjectKey(_)), "{err}");
    assert!(!err.is_transient());
    blind.close().await;

    let (_pd, policies) = crate::harness::policies::standard_dir();
    let input = _pd.path().join("one.jsonl");
    std::fs::write(&input, intent("s1", "ag", "10.00").json()).unwrap();
    let env = vec![("DATABASE_URL".to_string(), db.url.clone())];
    let out = spendguard(&env)
        .env_remove("SPENDGUARD_KEK")
        .env_remove("SPENDGUARD_KEK_FILE")
        .args(["ledger", "submit", "--policies"])
        .arg(&policies)
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    for name in ["kek_file", "SPENDGUARD_KEK_FILE", "SPENDGUARD_KEK"] {
        assert!(err.contains(name), "{name}: {err}");
    }

    // serve: refused before it connects to anything (nothing listens on port 1).
    let env = vec![
        (
            "DATABASE_URL".to_string(),
            "postgres://nobody@127.0.0.1:1/none".to_string(),
        ),
        ("SPENDGUARD_BROKERS".to_string(), "127.0.0.1:1".to_string()),
        (
            "SPENDGUARD_POLICIES".to_string(),
            policies.display().to_string(),
        ),
    ];
    let out = spendguard(&env)
        .env_remove("SPENDGUARD_KEK")
        .env_remove("SPENDGUARD_KEK_FILE")
        .args(["serve", "--demo", "--instance", "no-kek"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("refusing to start"), "{err}");
    assert!(err.contains("SPENDGUARD_KEK_FILE"), "{err}");
    // A KEK given twice (file and variable) is refused rather than guessed.
    let dir = tempfile::tempdir().unwrap();
    let file = write_kek(dir.path(), "k", &LocalKek::generate().to_base64());
    let out = spendguard(&env)
        .env("SPENDGUARD_KEK", LocalKek::generate().to_base64())
        .env("SPENDGUARD_KEK_FILE", &file)
        .args(["serve", "--demo", "--instance", "two-keks"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("configure one of them"), "{err}");
}
