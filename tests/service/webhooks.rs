//! Webhooks (SPEC §13.2, issue 12 item 4) from the real `spendguard serve` over
//! PostgreSQL (no broker: `--no-kafka`) to a receiver in this test: the receiver is down
//! while intents are decided over HTTP and while serve is stopped and started again
//! (and while a serve without webhooks decides);
//! when it comes back every notification arrives, signed as docs/api.md says.

use crate::harness::http::{exchange, request};
use crate::harness::intent::svc_intent_json;
use crate::harness::serve::DEMO_API_TOKENS;
use crate::harness::serve::{Rig, ServeProcess, free_addr, webhook_yaml};
use crate::harness::{self, policies::test_policies, serial};
use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PAYMENTS: &str = "demo-payment-token";
const OPERATOR: &str = "demo-operator-token";
const AUDITOR: &str = "demo-auditor-token";
const READER: &str = "demo-reader-token";
const SECRET: &str = "whsec-test-0123456789abcdef";
const WAIT_MS: u64 = 90_000;

type Received = Arc<Mutex<Vec<(HeaderMap, String)>>>;

/// Accepts every POST on `addr` (answers 204) and keeps headers and body.
async fn receiver(addr: SocketAddr, got: Received) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind the receiver again on its port");
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let got = got.clone();
            async move {
                got.lock().unwrap().push((headers, body));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

/// The documented check, written independently of spendguard's code:
/// v1 = hex(HMAC-SHA256(secret, "<t>.<body>")).
fn signature_verifies(header: &str, body: &str) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = Some(v.to_string()),
            Some(("v1", v)) => v1 = Some(v.to_string()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    hex::encode(mac.finalize().into_bytes()) == v1
}

async fn deliveries(addr: SocketAddr, token: &str, query: &str) -> Vec<Value> {
    let (status, body) = request(
        addr,
        "GET",
        &format!("/v1/notifications{query}"),
        Some(token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["deliveries"].as_array().cloned().unwrap_or_default()
}

async fn decide(addr: SocketAddr, id: &str, amount: &str) -> Value {
    let body = svc_intent_json(id, "agent-wh1", amount, "vendor:known");
    let (status, _, answer) =
        exchange(addr, "POST", "/v1/intents", Some(PAYMENTS), Some(&body)).await;
    assert_eq!(status, 200, "decided while the receiver is down: {answer}");
    serde_json::from_str(&answer).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_survive_a_dead_receiver_and_a_serve_restart_and_are_signed() {
    if !harness::require_postgres() {
        return;
    }
    let _serial = serial::exclusive().await;
    let mut rig = Rig::with("sg_webhooks_", "webhooks", |dir| {
        // Approvals wait 2 s: the MSIG intent below expires, an `outcome`.
        test_policies(dir, "1", "100000", "2s")
    })
    .await;
    rig.set_env("SPENDGUARD_BROKERS", "127.0.0.1:1");
    rig.set_env("SPENDGUARD_TEST_HOOK_SECRET", SECRET);
    // A port nobody listens on until the receiver "comes back".
    let hook_addr = free_addr();
    rig.webhook(
        "test-receiver",
        hook_addr,
        "decision, approval_requested, outcome, kill_switch",
        "SPENDGUARD_TEST_HOOK_SECRET",
    );
    let args = [
        "--no-kafka",
        "--http-addr",
        "127.0.0.1:0",
        "--api-tokens",
        DEMO_API_TOKENS,
    ];

    // Receiver down: decisions are still answered, deliveries fail and are retried.
    let serve = ServeProcess::start(&rig.env, "webhooks-1", rig.dir.path(), &args);
    let addr = serve.api_addr();
    let mut expected: BTreeSet<(String, String)> = BTreeSet::new();
    for i in 0..5 {
        let id = format!("wh-a{i}");
        let d = decide(addr, &id, "10.00").await;
        assert_eq!(d["effect"], "ALLOW", "{d}");
        expected.insert(("decision".into(), id));
    }
    // Above the MSIG threshold: announced to approvers too.
    let d = decide(addr, "wh-msig", "2000.00").await;
    assert_eq!(d["effect"], "REQUIRE_MSIG", "{d}");
    expected.insert(("decision".into(), "wh-msig".into()));
    expected.insert(("approval_requested".into(), "wh-msig".into()));
    expected.insert(("outcome".into(), "wh-msig".into()));

    // Failed attempts are visible to operators and auditors, not to readers.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    let failing = loop {
        let list = deliveries(addr, AUDITOR, "?state=pending").await;
        let tried: Vec<Value> = list
            .into_iter()
            .filter(|d| d["attempts"].as_i64().unwrap_or(0) >= 1)
            .collect();
        if tried.len() >= 2 {
            break tried;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed attempt recorded:\n{}",
            serve.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for d in &failing {
        assert_eq!(d["state"], "pending", "{d}");
        assert_eq!(d["webhookId"], "test-receiver", "{d}");
        let err = d["lastError"].as_str().unwrap_or_default();
        assert!(
            err.contains("connect"),
            "last error names the refused connection: {d}"
        );
    }
    // Each event once per subscribed kind (the enqueuer may still be a round behind).
    loop {
        let n = deliveries(addr, OPERATOR, "").await.len();
        assert!(n <= expected.len(), "{n} deliveries for {expected:?}");
        if n == expected.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} deliveries for {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = request(addr, "GET", "/v1/notifications", Some(READER), None).await;
    assert_eq!(status, 403);
    let (status, _) = request(
        addr,
        "GET",
        "/v1/notifications?state=lost",
        Some(OPERATOR),
        None,
    )
    .await;
    assert_eq!(status, 400);

    // Stopped with every delivery pending. Meanwhile a serve without webhooks decides
    // more: nothing enqueues them until a notifier runs again, from the cursor kept in
    // PostgreSQL (a cursor lost or reset on start would skip them).
    assert_eq!(serve.terminate(), Some(0));
    let mut without = rig.env.clone();
    without.retain(|(k, _)| k != "SPENDGUARD_NOTIFICATIONS");
    without.push((
        "SPENDGUARD_NOTIFICATIONS".into(),
        rig.dir.path().join("absent.yaml").display().to_string(),
    ));
    let quiet = ServeProcess::start(&without, "webhooks-none", rig.dir.path(), &args);
    let quiet_addr = quiet.api_addr();
    for i in 0..2 {
        let id = format!("wh-c{i}");
        decide(quiet_addr, &id, "11.00").await;
        expected.insert(("decision".into(), id));
    }
    assert_eq!(quiet.terminate(), Some(0));
    let serve = ServeProcess::start(&rig.env, "webhooks-2", rig.dir.path(), &args);
    let addr = serve.api_addr();
    for i in 0..3 {
        let id = format!("wh-b{i}");
        decide(addr, &id, "12.00").await;
        expected.insert(("decision".into(), id));
    }
    let body = r#"{"scope":"agent:agent-wh-other","on":true,"reason":"webhook test"}"#;
    let (status, _, answer) =
        exchange(addr, "POST", "/v1/kill-switch", Some(OPERATOR), Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    expected.insert(("kill_switch".into(), "agent:agent-wh-other".into()));

    // The receiver comes back: everything arrives (at least once), signed.
    let got: Received = Arc::default();
    let _receiver = receiver(hook_addr, got.clone()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    let seen = loop {
        let mut seen: BTreeMap<String, (String, String)> = BTreeMap::new();
        for (headers, body) in got.lock().unwrap().iter() {
            let h = |n: &str| {
                headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string()
            };
            assert!(
                signature_verifies(&h("spendguard-signature"), body),
                "bad signature: {headers:?} {body}"
            );
            let v: Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["deliveryId"], h("spendguard-delivery-id"), "{body}");
            assert_eq!(v["event"], h("spendguard-event"), "{body}");
            let subject = match v["event"].as_str() {
                Some("kill_switch") => v["data"]["scope"].as_str(),
                _ => v["data"]["intentId"].as_str(),
            }
            .unwrap_or_default()
            .to_string();
            // Receivers dedupe by delivery id.
            seen.insert(
                h("spendguard-delivery-id"),
                (h("spendguard-event"), subject),
            );
        }
        let kinds: BTreeSet<(String, String)> = seen.values().cloned().collect();
        if kinds == expected {
            break seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivered {kinds:?}\nexpected {expected:?}\n{}",
            serve.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        seen.len(),
        expected.len(),
        "one delivery per event and webhook: {seen:?}"
    );

    // The queue agrees: all delivered, after at least one failure for the early ones.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    loop {
        let list = deliveries(addr, OPERATOR, "").await;
        if list.iter().all(|d| d["state"] == "delivered") {
            assert_eq!(list.len(), expected.len());
            assert!(
                list.iter()
                    .any(|d| d["attempts"].as_i64().unwrap_or(0) >= 2),
                "{list:?}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{list:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, metrics) = request(addr, "GET", "/metrics", Some(OPERATOR), None).await;
    for name in [
        "spendguard_webhook_delivered_total",
        "spendguard_webhook_backlog",
    ] {
        assert!(metrics.contains(name), "{name}: {metrics}");
    }
    assert_eq!(serve.terminate(), Some(0));
}

/// A receiver that accepts connections and never answers: each POST is abandoned at the
/// 5 s request timeout and recorded as a failed attempt, while intents keep being
/// decided (the elapsed time is printed, not asserted: the machine is shared).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_times_out_and_decisions_go_on() {
    if !harness::require_postgres() {
        return;
    }
    let _serial = serial::exclusive().await;
    let mut rig = Rig::new("sg_webhooks_hang_", "webhookshang").await;
    rig.set_env("SPENDGUARD_BROKERS", "127.0.0.1:1");
    rig.set_env("SPENDGUARD_TEST_HOOK_SECRET", SECRET);
    // Accepts and holds every connection, reads nothing, answers nothing.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = black_hole.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = black_hole.accept().await {
            open.push(socket);
        }
    });
    rig.webhook(
        "silent",
        hook_addr,
        "decision",
        "SPENDGUARD_TEST_HOOK_SECRET",
    );
    let serve = ServeProcess::start(
        &rig.env,
        "webhooks-hang",
        rig.dir.path(),
        &[
            "--no-kafka",
            "--http-addr",
            "127.0.0.1:0",
            "--api-tokens",
            DEMO_API_TOKENS,
        ],
    );
    let addr = serve.api_addr();
    let started = std::time::Instant::now();
    let decided = 40;
    for i in 0..decided {
        decide(addr, &format!("wh-h{i}"), "1.00").await;
    }
    eprintln!(
        "{decided} intents decided in {:?} while the receiver held every POST",
        started.elapsed()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    let timed_out = loop {
        let list = deliveries(addr, OPERATOR, "?state=pending").await;
        let timed_out: Vec<Value> = list
            .into_iter()
            .filter(|d| {
                d["lastError"]
                    .as_str()
                    .is_some_and(|e| e.contains("no answer within 5000 ms"))
            })
            .collect();
        if !timed_out.is_empty() {
            break timed_out;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no timed-out attempt recorded:\n{}",
            serve.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for d in &timed_out {
        assert!(d["attempts"].as_i64().unwrap_or(0) >= 1, "{d}");
        assert!(d["lastStatus"].is_null(), "no HTTP answer, no status: {d}");
    }
    // Every intent got its delivery queued, none delivered.
    let all = deliveries(addr, AUDITOR, "").await;
    assert_eq!(all.len(), decided, "{all:?}");
    assert!(all.iter().all(|d| d["state"] == "pending"), "{all:?}");
    assert_eq!(serve.terminate(), Some(0));
    held.abort();
}

/// Webhooks over HTTPS (issue 12): a receiver whose certificate comes from a CA made in
/// this test, trusted through `ca_file` in notifications.yaml, gets the decision signed
/// as over HTTP; a second webhook to the same receiver by its IP address (the
/// certificate names only `localhost`) is refused by certificate verification: its
/// attempt is recorded with the reason and nothing reaches the receiver through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_over_https_check_the_receiver_certificate() {
    if !harness::require_postgres() {
        return;
    }
    let _serial = serial::exclusive().await;
    let mut rig = Rig::new("sg_webhooks_tls_", "webhookstls").await;
    rig.set_env("SPENDGUARD_BROKERS", "127.0.0.1:1");
    rig.set_env("SPENDGUARD_TEST_HOOK_SECRET", SECRET);
    let dir = rig.dir.path().to_path_buf();
    let ca = harness::tls::TestCa::new("spendguard webhook test CA");
    let ca_file = ca.write(&dir, "hooks-ca.pem");
    let (cert, key) = ca.server(&["localhost"]).write(&dir, "receiver");
    let tls = spendguard::api::tls::server_config(&cert, &key).expect("receiver TLS");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Received = Arc::default();
    let handshakes_refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = tokio::spawn(https_receiver(
        listener,
        tls,
        got.clone(),
        handshakes_refused.clone(),
    ));
    let file = dir.join("notifications.yaml");
    std::fs::write(
        &file,
        format!(
            "ca_file: {}\nwebhooks:\n  - id: tls-ok\n    url: https://localhost:{port}/hook\n    events: [decision]\n    secret_env: SPENDGUARD_TEST_HOOK_SECRET\n  - id: tls-wrong-name\n    url: https://127.0.0.1:{port}/hook\n    events: [decision]\n    secret_env: SPENDGUARD_TEST_HOOK_SECRET\n",
            ca_file.display()
        ),
    )
    .unwrap();
    rig.set_env("SPENDGUARD_NOTIFICATIONS", &file.display().to_string());
    let serve = ServeProcess::start(
        &rig.env,
        "webhooks-tls",
        &dir,
        &[
            "--no-kafka",
            "--http-addr",
            "127.0.0.1:0",
            "--api-tokens",
            DEMO_API_TOKENS,
        ],
    );
    let addr = serve.api_addr();
    decide(addr, "wh-tls-1", "1.00").await;

    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    let (ok, wrong) = loop {
        let list = deliveries(addr, OPERATOR, "").await;
        let of = |id: &str| list.iter().find(|d| d["webhookId"] == id).cloned();
        if let (Some(ok), Some(wrong)) = (of("tls-ok"), of("tls-wrong-name"))
            && ok["state"] == "delivered"
            && wrong["lastError"].is_string()
        {
            break (ok, wrong);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{list:?}\n{}",
            serve.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ok["lastStatus"], 204, "{ok}");
    let error = wrong["lastError"].as_str().unwrap();
    assert!(
        error.contains("TLS with 127.0.0.1") && error.contains("certificate"),
        "{wrong}"
    );
    assert!(wrong["lastStatus"].is_null(), "{wrong}");
    assert_eq!(wrong["state"], "pending", "{wrong}");
    assert!(handshakes_refused.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    let got = got.lock().unwrap().clone();
    assert_eq!(
        got.len(),
        1,
        "only the verified receiver gets a POST: {got:?}"
    );
    let (headers, body) = &got[0];
    let signature = headers["spendguard-signature"].to_str().unwrap();
    assert!(signature_verifies(signature, body), "{signature}");
    assert!(body.contains("wh-tls-1"), "{body}");
    assert_eq!(serve.terminate(), Some(0));
    server.abort();
}

/// An HTTPS receiver: TLS with `tls`, then one HTTP/1.1 POST per connection (headers and
/// body kept, answered 204). Handshakes that fail are counted, not kept.
async fn https_receiver(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    got: Received,
    refused: Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    while let Ok((socket, _)) = listener.accept().await {
        let acceptor = acceptor.clone();
        let got = got.clone();
        let refused = refused.clone();
        tokio::spawn(async move {
            let Ok(mut stream) = acceptor.accept(socket).await else {
                refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let mut headers = HeaderMap::new();
            for line in head.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
                if let Some((name, value)) = line.split_once(':')
                    && let (Ok(name), Ok(value)) = (
                        axum::http::HeaderName::from_bytes(name.trim().as_bytes()),
                        axum::http::HeaderValue::from_str(value.trim()),
                    )
                {
                    headers.insert(name, value);
                }
            }
            let length: usize = headers
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + length {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
            got.lock().unwrap().push((headers, body));
            let _ = stream
                .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                .await;
            let _ = stream.shutdown().await;
        });
    }
}

/// `notifications.yaml` is re-read while serve runs, like the policies directory: a
/// valid change applies without a restart (a new receiver gets what is decided after it,
/// the removed one nothing more), an invalid one is refused and the last good webhooks
/// stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_yaml_is_reloaded_and_a_bad_change_refused() {
    if !harness::require_postgres() {
        return;
    }
    let _serial = serial::exclusive().await;
    let mut rig = Rig::new("sg_webhooks_reload_", "webhooksreload").await;
    rig.set_env("SPENDGUARD_BROKERS", "127.0.0.1:1");
    rig.set_env("SPENDGUARD_TEST_HOOK_SECRET", SECRET);
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let got_a: Received = Arc::default();
    let got_b: Received = Arc::default();
    let ra = receiver(a_addr, got_a.clone()).await;
    let rb = receiver(b_addr, got_b.clone()).await;
    let secret_env = "SPENDGUARD_TEST_HOOK_SECRET";
    let hook =
        |id: &str, addr: SocketAddr, events: &str| webhook_yaml(id, addr, events, secret_env);
    let file = rig.webhook("first", a_addr, "decision", secret_env);
    let serve = ServeProcess::start(
        &rig.env,
        "webhooks-reload",
        rig.dir.path(),
        &[
            "--no-kafka",
            "--http-addr",
            "127.0.0.1:0",
            "--api-tokens",
            DEMO_API_TOKENS,
        ],
    );
    let addr = serve.api_addr();
    let has = |got: &Received, id: &str| {
        got.lock()
            .unwrap()
            .iter()
            .any(|(_, body)| body.contains(&format!("\"{id}\"")))
    };
    let wait = |what: String, ok: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_millis(WAIT_MS);
        while !ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}:\n{}",
                serve.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    decide(addr, "wh-r1", "1.00").await;
    wait("wh-r1 delivered to first".into(), &|| has(&got_a, "wh-r1"));

    // Replaced by another webhook: applied once serve has seen the change.
    std::fs::write(&file, hook("second", b_addr, "decision")).unwrap();
    wait("the reload applied".into(), &|| {
        serve.log_text().contains("notifications.yaml reloaded")
    });
    decide(addr, "wh-r2", "1.00").await;
    wait("wh-r2 delivered to second".into(), &|| has(&got_b, "wh-r2"));
    assert!(!has(&got_a, "wh-r2"), "the removed webhook got a new event");
    assert!(!has(&got_b, "wh-r1"), "decided before the webhook existed");

    // An invalid change (an unknown event) is refused; "second" keeps working.
    std::fs::write(&file, hook("third", a_addr, "decided")).unwrap();
    wait("the bad change refused".into(), &|| {
        serve
            .log_text()
            .contains("notifications.yaml change refused")
    });
    assert!(
        serve.log_text().contains("unknown event"),
        "{}",
        serve.log_text()
    );
    decide(addr, "wh-r3", "1.00").await;
    wait("wh-r3 delivered to second".into(), &|| has(&got_b, "wh-r3"));
    assert!(!has(&got_a, "wh-r3"));
    let list = deliveries(addr, OPERATOR, "").await;
    assert!(list.iter().all(|d| d["webhookId"] != "third"), "{list:?}");
    assert_eq!(serve.terminate(), Some(0));
    ra.abort();
    rb.abort();
}
