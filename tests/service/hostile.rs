//! Card data nowhere in clear (SPEC §14, issue 13): intents, settlements, votes and API
//! bodies carrying card numbers in every field, with every separator, go through the
//! real pipeline (`serve` over tansu and PostgreSQL); afterwards a `pg_dump` of the
//! database, every message on every topic spendguard writes (payload, key, headers),
//! every API answer and the service log hold no Luhn-valid run of 13-19 digits. The
//! checker here is written apart from the masker and is shown to find planted numbers.
//! Also: `serve` refuses the repository's demo credentials without `--demo`.

use crate::harness::serve::{Rig, ServeProcess, spendguard};
use crate::harness::{self, serial};
use rdkafka::Message;
use rdkafka::message::Headers;
use rdkafka::producer::FutureRecord;
use std::time::Duration;

const WAIT_MS: u64 = 90_000;

/// Test card numbers of several lengths and brands (all Luhn-valid).
const PANS: [&str; 6] = [
    "4111111111111111",
    "5555555555554444",
    "378282246310005",
    "6011111111111117",
    "4222222222222",
    "6304000000000000000",
];

/// `pan` spelled the ways people, systems and attackers write card numbers.
fn spellings(pan: &str) -> Vec<String> {
    let grouped = |sep: &str, n: usize| -> String {
        let mut out = String::new();
        for (i, c) in pan.chars().enumerate() {
            if i > 0 && i % n == 0 {
                out.push_str(sep);
            }
            out.push(c);
        }
        out
    };
    let mixed = {
        let seps = ["-", ".", "/", " ", "_"];
        let mut out = String::new();
        for (i, c) in pan.chars().enumerate() {
            if i > 0 && i % 4 == 0 {
                out.push_str(seps[(i / 4) % seps.len()]);
            }
            out.push(c);
        }
        out
    };
    let full_width: String = pan
        .chars()
        .map(|c| char::from_u32(0xFF10 + c.to_digit(10).unwrap()).unwrap())
        .collect();
    vec![
        pan.to_string(),
        grouped(" ", 4),
        grouped("-", 4),
        grouped(".", 4),
        grouped("/", 4),
        grouped("_", 4),
        grouped("  ", 4),
        grouped(" - ", 4),
        grouped("--", 2),
        grouped(" ", 1),
        grouped("\t", 4),
        grouped("\u{A0}", 4),
        grouped("\u{3000}", 4),
        grouped("\u{2013}", 4),
        mixed,
        full_width,
        format!("card{pan}x"),
    ]
}

// ---- the checker: independent of `spendguard::privacy` ----

/// Digit value of a character a card number may be written with.
fn digit(c: char) -> Option<u32> {
    c.to_digit(10).or_else(|| {
        let u = u32::from(c);
        (0xFF10..=0xFF19).contains(&u).then(|| u - 0xFF10)
    })
}

fn separator(c: char) -> bool {
    matches!(
        c,
        ' ' | '-' | '.' | '/' | '_' | '\\' | '\u{A0}' | '\u{3000}' | '\u{2010}'
            ..='\u{2015}' | '\u{2212}' | '\u{FF0D}' | '\u{FF0E}' | '\u{FF0F}'
    )
}

fn luhn(d: &[u32]) -> bool {
    d.iter()
        .rev()
        .enumerate()
        .map(|(i, &v)| {
            if i % 2 == 1 {
                let w = v * 2;
                if w > 9 { w - 9 } else { w }
            } else {
                v
            }
        })
        .sum::<u32>()
        % 10
        == 0
}

/// Text as a reader would see it: COPY's `\\` undone, JSON `\uXXXX` decoded, JSON and
/// COPY escapes of whitespace turned into spaces. Raw tabs and newlines stay: in a dump
/// they separate columns and rows, not the digits of one number.
fn normalize(text: &str) -> String {
    let text = text.replace("\\\\", "\\");
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\\' && i + 1 < chars.len() {
            match chars[i + 1] {
                'u' if i + 5 < chars.len() => {
                    let hex: String = chars[i + 2..i + 6].iter().collect();
                    if let Some(c) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                        out.push(if c == '\t' || c == '\n' { ' ' } else { c });
                        i += 6;
                        continue;
                    }
                }
                't' | 'n' | 'r' | '/' => {
                    out.push(' ');
                    i += 2;
                    continue;
                }
                _ => {}
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Every Luhn-valid window of 13-19 digits of `text` that does not start with 0, read
/// across up to three separators; hexadecimal blobs of 32+ characters and UUIDs are
/// skipped (hashes and ids), and a number with one lone `.` is read as an amount.
fn luhn_runs(text: &str) -> Vec<String> {
    luhn_runs_in(text, false)
}

fn dump_runs(text: &str) -> Vec<String> {
    luhn_runs_in(text, true)
}

/// With `dump`, raw tabs and line breaks end a number (they separate a dump's columns
/// and rows); otherwise they are separators like any other whitespace.
fn luhn_runs_in(text: &str, dump: bool) -> Vec<String> {
    let mut normal = normalize(text);
    if !dump {
        normal = normal.replace(['\t', '\n', '\r'], " ");
    }
    let chars: Vec<char> = normal.chars().collect();
    let hex = |c: char| c.is_ascii_hexdigit();
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if hex(chars[i]) && (i == 0 || !hex(chars[i - 1])) {
            let end = (i..chars.len())
                .find(|&k| !hex(chars[k]))
                .unwrap_or(chars.len());
            if end - i >= 32 && chars[i..end].iter().any(|c| c.is_ascii_alphabetic()) {
                i = end;
                continue;
            }
            if i + 36 <= chars.len()
                && chars[i..i + 36].iter().enumerate().all(|(k, &c)| match k {
                    8 | 13 | 18 | 23 => c == '-',
                    _ => hex(c),
                })
                && chars.get(i + 36).is_none_or(|&c| !hex(c))
            {
                i += 36;
                continue;
            }
        }
        let Some(first) = digit(chars[i]) else {
            i += 1;
            continue;
        };
        let mut digits = vec![first];
        let mut gaps: Vec<(usize, bool)> = Vec::new();
        let mut j = i + 1;
        loop {
            let mut k = j;
            while k < chars.len() && k - j < 3 && separator(chars[k]) {
                k += 1;
            }
            match chars.get(k).and_then(|&c| digit(c)) {
                Some(d) => {
                    if k > j {
                        gaps.push((digits.len(), k == j + 1 && chars[j] == '.'));
                    }
                    digits.push(d);
                    j = k + 1;
                }
                None => break,
            }
        }
        let parts: Vec<&[u32]> = match gaps.as_slice() {
            [(at, true)] => vec![&digits[..*at], &digits[*at..]],
            _ => vec![&digits[..]],
        };
        for part in parts {
            for s in 0..part.len() {
                for len in 13..=19 {
                    if s + len <= part.len() && part[s] != 0 && luhn(&part[s..s + len]) {
                        found.push(part[s..s + len].iter().map(|d| d.to_string()).collect());
                    }
                }
            }
        }
        i = j;
    }
    found
}

fn assert_clean(what: &str, text: &str) {
    let runs = if what == "pg_dump" {
        dump_runs(text)
    } else {
        luhn_runs(text)
    };
    if let Some(run) = runs.first() {
        let at = text.find(&run[..6]).unwrap_or(0);
        let near: String = text[at..].chars().take(300).collect();
        panic!(
            "{what}: {} Luhn-valid digit run(s) in clear, first {run}, near:\n{near}",
            runs.len()
        );
    }
}

#[test]
fn the_checker_finds_every_spelling_and_spares_ordinary_numbers() {
    for pan in PANS {
        for s in spellings(pan) {
            let json = serde_json::json!({ "note": format!("x {s} y") }).to_string();
            for text in [s.clone(), json.clone()] {
                assert!(
                    luhn_runs(&text).iter().any(|r| r == pan),
                    "checker misses {pan} in {text:?}"
                );
            }
            // In a dump, where COPY escapes backslashes again.
            let copied = json.replace('\\', "\\\\");
            assert!(
                dump_runs(&copied).iter().any(|r| r == pan),
                "checker misses {pan} in {copied:?}"
            );
        }
    }
    // JSON unicode escapes, as a raw message can carry them.
    assert!(!luhn_runs(r#"{"a":"\u0034\u0031\u0031\u0031111111111111"}"#).is_empty());
    for ordinary in [
        "2026-11-30 19:00:16.123456+00\t250.00\t0.00\t12\t\\x6b1f2a3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8",
        "7c0e1234-5678-4123-8123-123456789012",
        "{\"amount\":\"999999999999.99\",\"seq\":1234567}",
        "411111******1111",
    ] {
        assert_eq!(dump_runs(ordinary), Vec::<String>::new(), "{ordinary}");
    }
}

/// A valid intent of `agent` with `field` (a JSON pointer) set to `value`.
fn intent_with(id: &str, agent: &str, field: &str, value: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::json!({
        "intentId": id, "agentId": agent, "entityId": "acme-br", "amount": "10.00",
        "currency": "BRL", "category": "utility",
        "beneficiary": {"id": "vendor:known", "account": "0001-23456-7", "country": "BR"},
        "purpose": "PIX", "metadata": {"ref": "r"}
    });
    if let Some(slot) = v.pointer_mut(field) {
        *slot = value;
    }
    v
}

/// Every message of `topic` up to its high watermarks now.
async fn read_all(brokers: &str, topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    let Some(partitions) = spendguard::bus::partition_count(brokers, topic).unwrap() else {
        return Vec::new();
    };
    let consumer = spendguard::bus::standalone_consumer(brokers).unwrap();
    let mut total = 0i64;
    for p in 0..partitions {
        let (low, high) = rdkafka::consumer::Consumer::fetch_watermarks(
            &consumer,
            topic,
            i32::try_from(p).unwrap(),
            Duration::from_secs(10),
        )
        .unwrap();
        total += high - low;
    }
    let want = usize::try_from(total).unwrap();
    crate::harness::serve::read_until(brokers, topic, WAIT_MS, |m| m.len() >= want).await
}

async fn scalar(db: &str, sql: &'static str) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(db).await.unwrap();
    sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_numbers_in_every_field_reach_no_table_topic_answer_or_log() {
    let Some(_serial) = serial::service_test().await else {
        return;
    };
    if std::process::Command::new("pg_dump")
        .arg("--version")
        .output()
        .is_err()
    {
        harness::skip_or_fail("pg_dump is not installed");
        return;
    }
    let brokers = harness::brokers();
    let mut rig = Rig::new("sg_hostile_", "hostile").await;
    rig.set_env("SPENDGUARD_LOG", "info");
    let token = "hostile-payments-token";
    let operator = "hostile-operator-token";
    let tokens = rig.dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "tokens:\n  - {{name: payments, role: payment_service, sha256: {}}}\n  - {{name: ops, role: operator, sha256: {}}}\n",
            spendguard::api::auth::hash_token(token),
            spendguard::api::auth::hash_token(operator)
        ),
    )
    .unwrap();
    let serve = ServeProcess::start(
        &rig.env,
        "hostile-1",
        rig.dir.path(),
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--api-tokens",
            &tokens.display().to_string(),
        ],
    );
    let addr = serve.api_addr();
    let producer = spendguard::bus::client_producer(&brokers).unwrap();
    let send = |topic: String, key: String, payload: Vec<u8>, partition: Option<i32>| {
        let producer = producer.clone();
        async move {
            let mut record = FutureRecord::to(&topic).key(&key).payload(&payload);
            if let Some(p) = partition {
                record = record.partition(p);
            }
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    };

    // Intents: each spelling of each card number in each field, over Kafka; a sample of
    // them over the API too.
    let fields = [
        "/intentId",
        "/agentId",
        "/entityId",
        "/category",
        "/beneficiary/id",
        "/beneficiary/account",
        "/beneficiary/country",
        "/purpose",
        "/currency",
        "/amount",
        "/metadata/ref",
    ];
    let mut n = 0usize;
    let mut answers = Vec::new();
    for pan in PANS {
        for (k, s) in spellings(pan).into_iter().enumerate() {
            let field = fields[(n + k) % fields.len()];
            n += 1;
            let id = format!("h-{n}");
            let agent = format!("agent-h{}", n % 5);
            let v = intent_with(&id, &agent, field, serde_json::Value::String(s.clone()));
            let key = v["agentId"].as_str().unwrap_or(&agent).to_string();
            send(
                rig.topics.intents.clone(),
                key,
                v.to_string().into_bytes(),
                None,
            )
            .await;
            // The card number in a metadata key, as a bare number, and in an unknown field.
            let mut w = intent_with(
                &format!("{id}-k"),
                &agent,
                "/metadata",
                serde_json::json!({}),
            );
            w["metadata"][s.as_str()] = serde_json::json!(1);
            send(
                rig.topics.intents.clone(),
                agent.clone(),
                w.to_string().into_bytes(),
                None,
            )
            .await;
            let bare = intent_with(
                &format!("{id}-n"),
                &agent,
                "/metadata/ref",
                serde_json::json!(0),
            )
            .to_string()
            .replace("\"ref\":0", &format!("\"ref\":{pan}"));
            send(
                rig.topics.intents.clone(),
                agent.clone(),
                bare.into_bytes(),
                None,
            )
            .await;
            let mut unknown = intent_with(
                &format!("{id}-u"),
                &agent,
                "/category",
                serde_json::json!("utility"),
            );
            unknown[s.as_str()] = serde_json::json!(true);
            send(
                rig.topics.intents.clone(),
                agent.clone(),
                unknown.to_string().into_bytes(),
                None,
            )
            .await;
            if k % 4 == 0 {
                let api = intent_with(
                    &format!("{id}-api"),
                    &agent,
                    field,
                    serde_json::Value::String(s.clone()),
                );
                answers.push(
                    crate::harness::http::request(
                        addr,
                        "POST",
                        "/v1/intents",
                        Some(token),
                        Some(&api.to_string()),
                    )
                    .await,
                );
            }
        }
    }
    // JSON escapes, invalid JSON, and a card number straddling the 16 KiB audit cut of an
    // oversized message.
    let escaped = r#"{"intentId":"h-esc","agentId":"agent-h0","entityId":"acme-br","amount":"10.00","currency":"BRL","category":"\u0034111 1111 1111 1111","beneficiary":{"id":"vendor:known"},"purpose":"PIX"}"#;
    send(
        rig.topics.intents.clone(),
        "agent-h0".into(),
        escaped.as_bytes().to_vec(),
        None,
    )
    .await;
    send(
        rig.topics.intents.clone(),
        "agent-h0".into(),
        format!("{{\"intentId\": \"{}", PANS[1]).into_bytes(),
        None,
    )
    .await;
    let mut big = format!(
        "{{\"intentId\":\"h-big\",\"metadata\":\"{}",
        "x".repeat(16 * 1024 - 30)
    );
    big.push_str("4111 1111 1111 1111 and more\"}");
    send(
        rig.topics.intents.clone(),
        "agent-h0".into(),
        big.into_bytes(),
        None,
    )
    .await;

    // Settlements: card numbers in every field, for a decided intent and for unknown ones.
    for (k, s) in spellings(PANS[0])
        .into_iter()
        .chain(spellings(PANS[2]))
        .enumerate()
    {
        let field = [
            "/settlementId",
            "/intentId",
            "/currency",
            "/amount",
            "/type",
            "/occurredAt",
            "/metadata/ref",
        ][k % 7];
        let mut v = serde_json::json!({
            "settlementId": format!("s-{k}"), "intentId": "h-1", "type": "CAPTURE",
            "amount": "1.00", "currency": "BRL", "metadata": {"ref": "r"}
        });
        if let Some(slot) = v.pointer_mut(field) {
            *slot = serde_json::Value::String(s.clone());
        }
        send(
            rig.topics.settlements.clone(),
            "agent-h1".into(),
            v.to_string().into_bytes(),
            None,
        )
        .await;
        if k % 5 == 0 {
            answers.push(
                crate::harness::http::request(
                    addr,
                    "POST",
                    "/v1/settlements",
                    Some(token),
                    Some(&v.to_string()),
                )
                .await,
            );
        }
    }
    // Votes: card numbers in every field (none verifies: each is refused and audited).
    for (k, s) in spellings(PANS[3]).into_iter().enumerate() {
        let field = [
            "/intentId",
            "/approverId",
            "/vote",
            "/signature",
            "/signedAt",
        ][k % 5];
        let mut v = serde_json::json!({
            "intentId": "h-2", "approverId": "alice", "vote": "APPROVE",
            "signature": "c2lnbmF0dXJl", "signedAt": "2026-11-30T12:00:00Z"
        });
        if let Some(slot) = v.pointer_mut(field) {
            *slot = serde_json::Value::String(s.clone());
        }
        send(
            rig.topics.approvals.clone(),
            "h-2".into(),
            v.to_string().into_bytes(),
            None,
        )
        .await;
    }

    // The kill switch through the API: a card number in the scope's id and the reason
    // (recorded, projected into kill_switch, announced on spend.control), then cleared.
    // The last one names the first scope spelled another way: same masked id, cleared.
    for (on, s) in [
        (true, "4111 1111 1111 1111"),
        (false, "5555.5555.5555.4444"),
        (false, "4111-1111-1111-1111"),
    ] {
        let body = serde_json::json!({
            "scope": format!("agent:agent-{s}"), "on": on,
            "reason": format!("fraud on card {s}")
        });
        answers.push(
            crate::harness::http::request(
                addr,
                "POST",
                "/v1/kill-switch",
                Some(operator),
                Some(&body.to_string()),
            )
            .await,
        );
    }
    assert!(
        answers
            .iter()
            .rev()
            .take(3)
            .all(|(status, _)| *status == 200),
        "{answers:?}"
    );
    assert!(
        answers.last().unwrap().1.contains("\"on\":false"),
        "{answers:?}"
    );

    // One clean sentinel per partition of each input topic, published last: a partition
    // is handled in order, so once the ledger holds every sentinel it holds everything.
    let mut sentinels = 0i64;
    for (topic, kind) in [
        (rig.topics.intents.clone(), "intent"),
        (rig.topics.settlements.clone(), "settlement"),
        (rig.topics.approvals.clone(), "vote"),
    ] {
        let parts = spendguard::bus::partition_count(&brokers, &topic)
            .unwrap()
            .unwrap();
        for p in 0..parts {
            let p = i32::try_from(p).unwrap();
            let id = format!("sentinel-{kind}-{p}");
            let body = match kind {
                "intent" => intent_with(&id, &id, "/metadata/ref", serde_json::json!("end")),
                "settlement" => {
                    serde_json::json!({"settlementId": id, "intentId": id, "type": "VOID"})
                }
                _ => {
                    serde_json::json!({"intentId": id, "approverId": "nobody", "vote": "APPROVE", "signedAt": "2026-11-30T12:00:00Z"})
                }
            };
            send(topic.clone(), id, body.to_string().into_bytes(), Some(p)).await;
            sentinels += 1;
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    loop {
        let seen = scalar(
            &rig.db,
            "SELECT count(DISTINCT resource) FROM ledger_event WHERE resource LIKE 'sentinel-%'",
        )
        .await;
        let outbox = scalar(&rig.db, "SELECT count(*) FROM outbox").await;
        if seen >= sentinels && outbox == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{seen} of {sentinels} sentinels recorded, outbox {outbox}:\n{}",
            serve.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Something of every kind was recorded (the corpus did reach the sinks).
    for (what, sql) in [
        (
            "decisions",
            "SELECT count(*) FROM decision WHERE intent_id LIKE 'h-%'",
        ),
        (
            "invalid intents",
            "SELECT count(*) FROM ledger_event WHERE event_type = 'intent_invalid'",
        ),
        (
            "refused votes",
            "SELECT count(*) FROM ledger_event WHERE event_type = 'vote_refused'",
        ),
        (
            "settlement events",
            "SELECT count(*) FROM ledger_event WHERE event_type LIKE 'settlement%'",
        ),
        ("kill-switch rows", "SELECT count(*) FROM kill_switch"),
    ] {
        assert!(scalar(&rig.db, sql).await > 0, "no {what} recorded");
    }

    let dump = crate::harness::db::pg_dump(&rig.db);
    assert!(
        dump.contains("411111******1111"),
        "the masked form is stored"
    );

    let mut published = 0;
    for topic in [&rig.topics.decisions, &rig.topics.dlq, &rig.topics.control] {
        for m in read_all(&brokers, topic).await {
            published += 1;
            let what = format!("{topic} offset {}", m.offset());
            assert_clean(
                &what,
                &String::from_utf8_lossy(m.payload().unwrap_or_default()),
            );
            assert_clean(&what, &String::from_utf8_lossy(m.key().unwrap_or_default()));
            if let Some(h) = m.headers() {
                for h in h.iter() {
                    assert_clean(
                        &format!("{what} header {}", h.key),
                        &String::from_utf8_lossy(h.value.unwrap_or_default()),
                    );
                }
            }
        }
    }
    assert!(published > 0);
    for (status, body) in &answers {
        assert_clean(&format!("API answer {status}"), body);
    }
    assert_clean("pg_dump", &dump);
    let log = serve.log_text();
    assert_eq!(serve.terminate(), Some(0));
    assert_clean("service log", &log);

    // Positive control: the same checker on the same texts finds a planted number.
    for planted in [
        "4111 1111 1111 1111",
        "5555.5555.5555.4444",
        "3782-822463-10005",
    ] {
        assert!(
            !dump_runs(&format!("{dump}\nx {planted} y\n")).is_empty(),
            "{planted}"
        );
        assert!(
            !luhn_runs(&format!("{log} {planted}")).is_empty(),
            "{planted}"
        );
    }
}

#[test]
fn serve_refuses_the_demo_credentials_unless_told_demo() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let env = vec![
        (
            "SPENDGUARD_POLICIES".to_string(),
            root.join("policies").display().to_string(),
        ),
        // Nothing is reachable here: the refusal comes before any connection.
        (
            "DATABASE_URL".to_string(),
            "postgres://nobody@127.0.0.1:1/none".to_string(),
        ),
        ("SPENDGUARD_BROKERS".to_string(), "127.0.0.1:1".to_string()),
    ];
    let out = spendguard(&env)
        .args(["serve", "--instance", "demo-refusal"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("demo credentials") && err.contains("--demo"),
        "{err}"
    );
    assert!(err.contains("approver \"alice\""), "{err}");
    // Tokens too, with a registry of fresh keys.
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = spendguard::approvals::keygen();
    let approvers = dir.path().join("approvers.yaml");
    std::fs::write(
        &approvers,
        format!("approvers:\n  - {{id: alice, publicKey: {public}, entities: ['*']}}\n"),
    )
    .unwrap();
    let out = spendguard(&env)
        .args(["serve", "--instance", "demo-refusal", "--approvers"])
        .arg(&approvers)
        .args(["--http-addr", "127.0.0.1:0", "--api-tokens"])
        .arg(root.join("examples/api-tokens.yaml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("API token \"demo-payments\"") && !err.contains("demo-payment-token"),
        "{err}"
    );
    assert!(!err.contains("approver \"alice\""), "{err}");
    // With --demo the same start gets past the check (and then fails on the database).
    let out = spendguard(&env)
        .args(["serve", "--demo", "--instance", "demo-refusal"])
        .env("SPENDGUARD_DB_STATEMENT_TIMEOUT_MS", "100")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = out;
    std::thread::sleep(Duration::from_millis(1500));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("demo credentials"), "{err}");
}
