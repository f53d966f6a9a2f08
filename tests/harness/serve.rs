//! The built `spendguard` binary and the service under test: one [`Rig`] per test (a
//! database, topics, a policy directory of its own and the environment that points
//! `serve` at them), then `serve` as a process ([`ServeProcess`]) or in this process
//! ([`InProcess`]); and reading what the service published ([`read_until`]).

use super::db::TestDb;
use super::policies::test_policies;
use super::{brokers, unique};
use spendguard::bus::Topics;
use spendguard::config::ServiceArgs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Path of the built `spendguard` binary (integration tests get it from Cargo).
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_spendguard"))
}

/// The binary with `env` set, and the caller's `SPENDGUARD_CONFIG` and
/// `SPENDGUARD_APPROVERS` removed (the test says what the command reads).
pub fn spendguard(env: &[(String, String)]) -> std::process::Command {
    let mut cmd = std::process::Command::new(binary());
    cmd.env_remove("SPENDGUARD_CONFIG")
        .env_remove("SPENDGUARD_APPROVERS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs the binary with `args` (in the test's own environment, plus the test KEK of the
/// `--database-url` database in `SPENDGUARD_KEK` unless `--kek-file` is given); returns
/// the exit code (-1 when killed by a signal) and stdout followed by stderr.
pub fn run(args: &[&str]) -> (i32, String) {
    let mut cmd = std::process::Command::new(binary());
    cmd.args(args);
    let db = args
        .windows(2)
        .find(|w| w[0] == "--database-url")
        .map(|w| w[1]);
    if let Some(db) = db
        && !args.contains(&"--kek-file")
    {
        cmd.env("SPENDGUARD_KEK", super::db::kek_for(db))
            .env_remove("SPENDGUARD_KEK_FILE");
    }
    let out = cmd.output().expect("run spendguard");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Environment that points a spendguard command at one test's database and topics.
pub fn service_env(db: &str, prefix: &str, group: &str, policies: &Path) -> Vec<(String, String)> {
    vec![
        ("DATABASE_URL".into(), db.into()),
        ("SPENDGUARD_BROKERS".into(), brokers()),
        ("SPENDGUARD_TOPIC_PREFIX".into(), prefix.into()),
        ("SPENDGUARD_GROUP_ID".into(), group.into()),
        ("SPENDGUARD_POLICIES".into(), policies.display().to_string()),
        ("SPENDGUARD_LOG".into(), "warn".into()),
        ("SPENDGUARD_KEK".into(), super::db::kek_for(db)),
    ]
}

/// What a service test starts from: a fresh database, a topic prefix and a consumer
/// group of its own, a temp dir (logs, policies), and [`service_env`] over them. The
/// caller has required the servers and taken its turn first
/// ([`super::serial::service_test`]).
pub struct Rig {
    /// Dropped with the rig when the test passed ([`TestDb`]).
    pub db: TestDb,
    pub dir: tempfile::TempDir,
    /// Topic prefix, `…` followed by a dot.
    pub prefix: String,
    pub group: String,
    pub policies: PathBuf,
    pub env: Vec<(String, String)>,
    pub topics: Topics,
}

impl Rig {
    /// With policy `svc-test` ([`test_policies`]): version 1, no cap reached (daily
    /// 100000), approvals wait 1 h.
    pub async fn new(db_prefix: &str, topic_prefix: &str) -> Rig {
        Rig::with(db_prefix, topic_prefix, |dir| {
            test_policies(dir, "1", "100000", "1h")
        })
        .await
    }

    /// With the policy directory `policies(temp dir)` returns.
    pub async fn with(
        db_prefix: &str,
        topic_prefix: &str,
        policies: impl FnOnce(&Path) -> PathBuf,
    ) -> Rig {
        let db = TestDb::create(db_prefix).await;
        let prefix = format!("{}.", unique(topic_prefix));
        let group = unique("g-");
        let dir = tempfile::tempdir().expect("tempdir");
        let policies = policies(dir.path());
        let env = service_env(&db, &prefix, &group, &policies);
        // `serve` in this process reads the KEK from a file (the process environment
        // is shared by every test).
        std::fs::write(dir.path().join("kek"), super::db::kek_for(&db)).expect("write test KEK");
        let topics = Topics::with_prefix(&prefix);
        Rig {
            db,
            dir,
            prefix,
            group,
            policies,
            env,
            topics,
        }
    }

    /// Replaces (or adds) one variable of `env`.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
    }

    /// Gives `serve` one webhook (SPEC §13.2): writes `notifications.yaml` in the rig's
    /// directory ([`webhook_yaml`]) and points `SPENDGUARD_NOTIFICATIONS` at it. Returns
    /// the file, for a test that rewrites it.
    pub fn webhook(
        &mut self,
        id: &str,
        addr: std::net::SocketAddr,
        events: &str,
        secret_env: &str,
    ) -> PathBuf {
        let file = self.dir.path().join("notifications.yaml");
        std::fs::write(&file, webhook_yaml(id, addr, events, secret_env)).unwrap();
        self.set_env("SPENDGUARD_NOTIFICATIONS", &file.display().to_string());
        file
    }

    /// The settings of `serve` in this process over this rig (add what else is needed
    /// with `ServiceArgs { approvers: …, ..rig.service_args(…) }`).
    pub fn service_args(&self, instance: &str) -> ServiceArgs {
        ServiceArgs {
            database_url: Some(self.db.url.clone()),
            brokers: Some(brokers()),
            policies: Some(self.policies.clone()),
            topic_prefix: Some(self.prefix.clone()),
            group_id: Some(self.group.clone()),
            instance: Some(instance.into()),
            kek_file: Some(self.dir.path().join("kek")),
            ..Default::default()
        }
    }
}

/// `spendguard::serve::run` on this test's runtime, until [`InProcess::stop`].
pub struct InProcess {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), spendguard::serve::ServeError>>,
}

impl InProcess {
    /// Resolves `args` (panics when they do not) and starts the service.
    pub fn start(args: ServiceArgs) -> InProcess {
        let mut settings = args.resolve().unwrap();
        // As `serve --demo` when it reads the repository's example approvers (see
        // [`demo_flag`]).
        let approvers = settings.approvers_file.display().to_string();
        settings.demo = demo_flag(&[("SPENDGUARD_APPROVERS".into(), approvers)], &[]).is_some();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(spendguard::serve::run(settings, None, async {
            let _ = stopped.await;
        }));
        InProcess { stop, task }
    }

    /// Asks the service to stop and asserts that it stopped cleanly.
    pub async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().expect("serve stops cleanly");
    }
}

/// A notifications file with one webhook `id` posting `events` (a YAML list's items,
/// e.g. `decision, outcome`) to `http://{addr}/hook`, signed with the secret in
/// `secret_env`.
pub fn webhook_yaml(
    id: &str,
    addr: std::net::SocketAddr,
    events: &str,
    secret_env: &str,
) -> String {
    format!(
        "webhooks:\n  - id: {id}\n    url: http://{addr}/hook\n    events: [{events}]\n    secret_env: {secret_env}\n"
    )
}

/// An address on 127.0.0.1 nobody listens on (free when this returns).
pub fn free_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], super::tls::free_port()))
}

/// `--demo` when `serve` would read the repository's demo credentials: the example
/// policies directory (its `approvers.yaml` holds the demo keys) or the example token
/// file. Without them it refuses to start (SPEC §14); tests of that refusal spawn
/// `serve` themselves.
pub fn demo_flag(env: &[(String, String)], extra: &[&str]) -> Option<&'static str> {
    let examples = [
        super::policies::repository_policies(),
        super::policies::repository_policies().join("approvers.yaml"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/api-tokens.yaml"),
    ];
    let same = |p: &str| {
        let p = std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p));
        examples
            .iter()
            .any(|e| std::fs::canonicalize(e).is_ok_and(|e| e == p))
    };
    let reads_examples = env
        .iter()
        .any(|(k, v)| (k == "SPENDGUARD_POLICIES" || k == "SPENDGUARD_APPROVERS") && same(v))
        || extra.iter().any(|a| same(a));
    (reads_examples && !extra.contains(&"--demo")).then_some("--demo")
}

/// The repository's example API tokens (`demo-payment-token`, ...), for `--api-tokens`.
pub const DEMO_API_TOKENS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/api-tokens.yaml");

/// A `spendguard serve` process started from the built binary, its stderr in a file.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub log: PathBuf,
    pub instance: String,
}

impl ServeProcess {
    /// Starts `serve` with its HTTP API on a free local port and the example tokens
    /// ([`DEMO_API_TOKENS`]); [`ServeProcess::api_addr`] says where it listens.
    pub fn start_with_api(env: &[(String, String)], instance: &str, dir: &Path) -> ServeProcess {
        ServeProcess::start(
            env,
            instance,
            dir,
            &[
                "--http-addr",
                "127.0.0.1:0",
                "--api-tokens",
                DEMO_API_TOKENS,
            ],
        )
    }

    /// Where the HTTP API listens, from the line serve prints at start.
    pub fn api_addr(&self) -> std::net::SocketAddr {
        let log = self.log_text();
        log.lines()
            .find_map(|l| l.split_once("HTTP API on http://").map(|x| x.1.trim()))
            .unwrap_or_else(|| panic!("serve did not print its API address:\n{log}"))
            .parse()
            .expect("API address")
    }

    /// Starts `serve` and waits until it reports ready.
    pub fn start(
        env: &[(String, String)],
        instance: &str,
        dir: &Path,
        extra: &[&str],
    ) -> ServeProcess {
        let log = dir.join(format!("{instance}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = spendguard(env)
            .arg("serve")
            .args(["--instance", instance])
            .args(extra)
            .args(demo_flag(env, extra))
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn spendguard serve");
        let mut p = ServeProcess {
            child,
            log,
            instance: instance.to_string(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        // The exact line serve prints once it consumes ("ready" alone also matches log
        // lines such as a lint warning saying "already").
        let ready = format!("spendguard serve: instance {instance} ready");
        while !p.log_text().contains(&ready) {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("serve {instance} exited with {status}:\n{}", p.log_text());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "serve {instance} not ready:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "serve {} did not stop after SIGTERM:\n{}",
                    self.instance,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        // A test that failed midway must not leave servers behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads `topic` from the beginning until `done(messages so far)` is true or `timeout_ms`
/// passed; returns what was read. A topic that does not exist yet is waited for (within
/// the same `timeout_ms`): the service under test creates its topics when it starts,
/// after migrating its fresh database, and a test can publish its input and start
/// reading before that (on a loaded machine `pipeline` did, in the old layout too).
pub async fn read_until(
    brokers: &str,
    topic: &str,
    timeout_ms: u64,
    done: impl Fn(&[rdkafka::message::OwnedMessage]) -> bool,
) -> Vec<rdkafka::message::OwnedMessage> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    while spendguard::bus::partition_count(brokers, topic)
        .expect("topic metadata")
        .is_none()
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let consumer = spendguard::bus::standalone_consumer(brokers).expect("consumer");
    spendguard::bus::assign_all(&consumer, brokers, topic, rdkafka::Offset::Beginning)
        .expect("assign");
    let mut out = Vec::new();
    while !done(&out) {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => out.push(m.detach()),
            Ok(Err(e)) => eprintln!("read error on {topic}: {e}"),
            Err(_) => break,
        }
    }
    out
}

/// Payload of a message as JSON (panics with the text when it is not JSON: test output).
pub fn json(msg: &rdkafka::message::OwnedMessage) -> serde_json::Value {
    use rdkafka::Message;
    let bytes = msg.payload().unwrap_or_default();
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}
