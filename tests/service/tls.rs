//! In transit (SPEC §14, issue 13 item 9): the API inside `serve` speaks HTTPS with the
//! certificate it is given (a CA made at test time); the Kafka security properties of
//! the settings reach librdkafka (TLS: a CA file it cannot read stops the client with
//! librdkafka's own error; SASL SCRAM-SHA-512 against a tansu that requires it: the
//! right password gets in, a wrong one and none do not); secrets never appear in output.
//!
//! Not tested here: Kafka over TLS end to end. tansu 0.6 accepts `--cert`/`--key` but
//! does not use them (its listener is plain TCP), and no other broker runs on these
//! machines; docs/operations.md says so.

use crate::harness::serve::DEMO_API_TOKENS;
use crate::harness::serve::{Rig, ServeProcess, spendguard};
use crate::harness::tls::{SaslTansu, TestCa, https_get, tls_client};
use crate::harness::{self, serial};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const OPERATOR: &str = "demo-operator-token";

fn https_addr(p: &ServeProcess) -> SocketAddr {
    let log = p.log_text();
    log.lines()
        .find_map(|l| l.split_once("HTTP API on https://").map(|x| x.1.trim()))
        .unwrap_or_else(|| panic!("serve did not print an https address:\n{log}"))
        .parse()
        .expect("API address")
}

/// Runs the binary with `env`; returns (exit code, stdout + stderr).
fn run(env: &[(String, String)], args: &[&str]) -> (i32, String) {
    let out = spendguard(env).args(args).output().expect("run spendguard");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_speaks_https_with_its_certificate_and_nothing_else_and_picks_up_a_renewed_one() {
    if !harness::require_postgres() {
        return;
    }
    let _serial = serial::exclusive().await;
    let mut rig = Rig::new("sg_tls_", "tls").await;
    rig.set_env("SPENDGUARD_BROKERS", "127.0.0.1:1");
    let ca = TestCa::new("spendguard test CA");
    let (cert, key) = ca
        .server(&["localhost", "127.0.0.1"])
        .write(rig.dir.path(), "api");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let args = [
        "--no-kafka",
        "--http-addr",
        "127.0.0.1:0",
        "--api-tokens",
        DEMO_API_TOKENS,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
    ];
    let serve = ServeProcess::start(&rig.env, "tls-1", rig.dir.path(), &args);
    let addr = https_addr(&serve);

    let trusting = tls_client(&ca.cert_pem);
    let (status, body) = https_get(&trusting, addr, "localhost", "/healthz", None)
        .await
        .unwrap_or_else(|e| panic!("HTTPS with the test CA: {e}\n{}", serve.log_text()));
    assert_eq!(status, 200, "{body}");
    let (status, body) = https_get(&trusting, addr, "localhost", "/v1/policies", Some(OPERATOR))
        .await
        .expect("HTTPS request with a token");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("svc-test"), "{body}");

    // A client that trusts another CA does not get through the handshake.
    let other = tls_client(&TestCa::new("some other CA").cert_pem);
    let err = https_get(&other, addr, "localhost", "/healthz", None)
        .await
        .expect_err("a certificate from another CA must be refused");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    // Plain HTTP on the same port gets no HTTP answer.
    let plain = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw).await;
        String::from_utf8_lossy(&raw).into_owned()
    })
    .await
    .expect("the server closes a plain HTTP connection");
    assert!(!plain.starts_with("HTTP/1.1 200"), "{plain}");

    // A renewed certificate (here from another CA) replaces the files: new connections
    // get it without a restart.
    let renewed_ca = TestCa::new("renewed CA");
    renewed_ca
        .server(&["localhost"])
        .write(rig.dir.path(), "api");
    let renewed = tls_client(&renewed_ca.cert_pem);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match https_get(&renewed, addr, "localhost", "/healthz", None).await {
            Ok((200, _)) => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "renewed certificate not served: {other:?}\n{}",
                serve.log_text()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        https_get(&trusting, addr, "localhost", "/healthz", None)
            .await
            .is_err(),
        "the old certificate is no longer served"
    );
    assert_eq!(serve.terminate(), Some(0));

    // Half a configuration is refused before anything starts.
    let (code, out) = run(
        &rig.env,
        &[
            "serve",
            "--demo",
            "--no-kafka",
            "--http-addr",
            "127.0.0.1:0",
            "--tls-cert-file",
            &cert,
        ],
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("--tls-key-file"), "{out}");
}

/// A one-intent input file for `intents publish`.
fn intent_file(dir: &Path) -> PathBuf {
    let path = dir.join("intent.json");
    std::fs::write(
        &path,
        crate::harness::intent::svc_intent_json("tls-1", "agent-tls", "1.00", "vendor:known")
            + "\n",
    )
    .expect("write intent");
    path
}

#[test]
fn kafka_security_properties_reach_librdkafka_and_secrets_stay_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let input = intent_file(dir.path());
    let input = input.display().to_string();
    let missing_ca = dir.path().join("no-such-ca.pem");
    let secret = "hunter2-do-not-print-me";
    let env = |props: &str| -> Vec<(String, String)> {
        vec![
            ("SPENDGUARD_BROKERS".into(), "127.0.0.1:1".into()),
            ("SPENDGUARD_KAFKA_PROPERTIES".into(), props.into()),
            ("SPENDGUARD_KAFKA_SASL_PASSWORD".into(), secret.into()),
            ("SPENDGUARD_LOG".into(), "debug".into()),
        ]
    };
    // TLS with a CA file librdkafka cannot read: its own error, at once (not retried).
    let (code, out) = run(
        &env(&format!(
            "security.protocol=SASL_SSL,sasl.mechanisms=SCRAM-SHA-512,sasl.username=svc,ssl.ca.location={}",
            missing_ca.display()
        )),
        &["intents", "publish", "--input", &input],
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("ssl.ca.location"), "{out}");
    assert!(
        !out.contains(secret),
        "the SASL password was printed:\n{out}"
    );

    // A secret in clear, or a delivery setting, is refused by name; the value is not
    // repeated.
    let (code, out) = run(
        &env("sasl.password=clear-text-secret-42"),
        &["intents", "publish", "--input", &input],
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("\"sasl.password\" is a secret"), "{out}");
    assert!(!out.contains("clear-text-secret-42"), "{out}");
    let (code, out) = run(&env("acks=0"), &["intents", "publish", "--input", &input]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("\"acks\" is not passed through"), "{out}");
    // librdkafka checks values before any connection.
    let (code, out) = run(
        &env("security.protocol=TLS_PLEASE"),
        &["intents", "publish", "--input", &input],
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("librdkafka refuses Kafka property \"security.protocol\""),
        "{out}"
    );

    // `spendguard approve` (no config file) takes the same properties for its broker.
    let alice_key = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/keys/alice.key");
    let (code, out) = run(
        &env("security.protocol=TLS_PLEASE"),
        &[
            "approve",
            "--from-topic",
            "--intent",
            "i-1",
            "--approver",
            "alice",
            "--key",
            alice_key,
            "--yes",
        ],
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("librdkafka refuses Kafka property \"security.protocol\""),
        "{out}"
    );
    assert!(!out.contains(secret), "{out}");

    // --help shows the environment's values, but not the database URL (it may hold a
    // password).
    for command in [
        &["serve", "--help"][..],
        &["ledger", "submit", "--help"][..],
    ] {
        let (_, out) = run(
            &[(
                "DATABASE_URL".into(),
                "postgres://svc:db-password-in-url@db/ledger".into(),
            )],
            command,
        );
        assert!(out.contains("DATABASE_URL"), "{out}");
        assert!(!out.contains("db-password-in-url"), "{command:?}:\n{out}");
    }
}

#[tokio::test]
async fn sasl_scram_gets_in_with_the_right_password_only() {
    let _serial = serial::shared().await;
    let Some(broker) = SaslTansu::start() else {
        return;
    };
    let input = intent_file(broker.dir.path());
    let input = input.display().to_string();
    let password_file = broker.dir.path().join("kafka-password");
    let publish = |props: &str, password: Option<&str>| {
        let mut env: Vec<(String, String)> = vec![
            ("SPENDGUARD_BROKERS".into(), broker.brokers.clone()),
            (
                "SPENDGUARD_TOPIC_PREFIX".into(),
                format!("{}.", harness::unique("sasl")),
            ),
            ("SPENDGUARD_KAFKA_PROPERTIES".into(), props.into()),
        ];
        if let Some(p) = password {
            std::fs::write(&password_file, format!("{p}\n")).unwrap();
            env.push((
                "SPENDGUARD_KAFKA_SASL_PASSWORD_FILE".into(),
                password_file.display().to_string(),
            ));
        }
        run(&env, &["intents", "publish", "--input", &input])
    };
    let scram = format!(
        "security.protocol=SASL_PLAINTEXT,sasl.mechanisms=SCRAM-SHA-512,sasl.username={}",
        SaslTansu::USER
    );
    let (code, out) = publish(&scram, Some(SaslTansu::PASSWORD));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("published 1 intent(s)"), "{out}");

    let wrong = "wrong-password-0000";
    let (code, out) = publish(&scram, Some(wrong));
    assert_ne!(code, 0, "a wrong SCRAM password got in:\n{out}");
    assert!(!out.contains(wrong), "{out}");

    // Without SASL the broker answers nothing but the handshake.
    let (code, out) = publish("security.protocol=PLAINTEXT", None);
    assert_ne!(code, 0, "an unauthenticated client got in:\n{out}");
}

/// `serve` itself over SASL: its admin client, group consumer, control consumer and
/// producer all authenticate (SCRAM-SHA-512, the password from a file), and an intent
/// published by a payment service over SASL comes back decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_decides_over_sasl_scram() {
    if !harness::require_postgres() {
        return;
    }
    let _serial = serial::exclusive().await;
    let Some(broker) = SaslTansu::start() else {
        return;
    };
    let mut rig = Rig::new("sg_tls_sasl_", "sasl").await;
    let password_file = rig.dir.path().join("kafka-password");
    std::fs::write(&password_file, SaslTansu::PASSWORD).unwrap();
    rig.set_env("SPENDGUARD_BROKERS", &broker.brokers);
    rig.set_env(
        "SPENDGUARD_KAFKA_PROPERTIES",
        &format!(
            "security.protocol=SASL_PLAINTEXT,sasl.mechanisms=SCRAM-SHA-512,sasl.username={}",
            SaslTansu::USER
        ),
    );
    rig.set_env(
        "SPENDGUARD_KAFKA_SASL_PASSWORD_FILE",
        &password_file.display().to_string(),
    );
    let serve = ServeProcess::start(&rig.env, "sasl-1", rig.dir.path(), &[]);
    let input = rig.dir.path().join("intent.json");
    std::fs::write(
        &input,
        crate::harness::intent::svc_intent_json("sasl-i1", "agent-sasl", "12.00", "vendor:known")
            + "\n",
    )
    .unwrap();
    let (code, out) = run(
        &rig.env,
        &[
            "intents",
            "publish",
            "--input",
            &input.display().to_string(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(
        &rig.env,
        &["decisions", "tail", "--from-beginning", "--count", "1"],
    );
    assert_eq!(code, 0, "{out}\n{}", serve.log_text());
    assert!(
        out.contains("sasl-i1") && out.contains("ALLOW"),
        "{out}\n{}",
        serve.log_text()
    );
    assert!(!serve.log_text().contains(SaslTansu::PASSWORD));
    assert_eq!(serve.terminate(), Some(0));
}
