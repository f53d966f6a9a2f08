//! Service-side subcommands: `serve`, approvals, the kill switch, and the tools a payment
//! developer uses to try spendguard without other Kafka tooling.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use futures::StreamExt;
use rdkafka::Message;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use crate::approvals;
use crate::bus::{self, Topics};
use crate::cli::bench::loadgen;
use crate::config::ServiceArgs;
use crate::kill_switch::{Announcer, Change, Scope, record_then_announce};
use crate::ledger::{Ledger, Origin};

/// Longest line `intents publish` accepts (anything longer is certainly not an intent,
/// but it is still published so the service dead-letters it visibly).
const MAX_PUBLISH_LINE_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KillAction {
    On,
    Off,
    Status,
}

#[derive(Debug, Args)]
pub struct KillSwitchArgs {
    /// `on` trips, `off` clears, `status` lists the tripped scopes.
    #[arg(value_enum)]
    pub action: KillAction,
    #[command(flatten)]
    pub service: ServiceArgs,
    /// `global`, `entity:ID` or `agent:ID` (required for on/off).
    #[arg(long)]
    pub scope: Option<Scope>,
    /// Why (required for on/off; recorded in the audit trail).
    #[arg(long)]
    pub reason: Option<String>,
    /// Who (default: $USER).
    #[arg(long, env = "USER")]
    pub actor: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ApproversCommand {
    /// Make an Ed25519 key pair: writes the secret key file and prints the registry entry.
    Keygen {
        /// Approver id (as it will appear in approvers.yaml and the audit trail).
        #[arg(long)]
        id: String,
        /// Entities (glob patterns) this approver may approve for.
        #[arg(long, default_value = "*")]
        entities: Vec<String>,
        /// Where to write the secret key (default: ./<id>.key). Refuses to overwrite.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum IntentsCommand {
    /// Publish intents (JSON lines) to spend.intents, keyed by agentId.
    Publish {
        #[command(flatten)]
        service: ServiceArgs,
        /// Input file (default: standard input).
        #[arg(long)]
        input: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SettlementsCommand {
    /// Publish settlement messages (JSON lines: CAPTURE, VOID, REFUND, CANCEL) to
    /// spend.settlements.
    ///
    /// SPEC §11 keys settlements by agentId, but a settlement message carries no
    /// agentId (its format admits no extra field). Each message is therefore keyed by
    /// `--key` when given (pass the agentId when every line is for one agent), else by
    /// its intentId: all settlements of one intent then share a partition and are
    /// applied in order, which is what their outcome depends on (the ledger serializes
    /// one agent's settlements and intents on the agent's chain lock whatever the
    /// partition).
    Publish {
        #[command(flatten)]
        service: ServiceArgs,
        /// Input file (default: standard input).
        #[arg(long)]
        input: Option<PathBuf>,
        /// Kafka key of every message (e.g. the agentId); default: each line's intentId.
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DecisionsCommand {
    /// Follow decisions and outcomes on spend.decisions.
    Tail(TailArgs),
}

#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Start from the oldest retained message instead of new ones only.
    #[arg(long)]
    pub from_beginning: bool,
    /// `text` (one readable line per message) or `json` (the messages as JSON lines).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
    /// Stop after this many messages.
    #[arg(long)]
    pub count: Option<usize>,
    /// Stop when no message arrived for this many seconds.
    #[arg(long)]
    pub idle_timeout: Option<u64>,
    /// Follow the dead-letter topic (spend.dlq) instead: each refused message with the
    /// error code and message from its headers.
    #[arg(long)]
    pub dead_letters: bool,
}

pub fn approvers(cmd: ApproversCommand) -> anyhow::Result<i32> {
    match cmd {
        ApproversCommand::Keygen { id, entities, out } => {
            let path = out.unwrap_or_else(|| PathBuf::from(format!("{id}.key")));
            let public = write_new_key(
                &path,
                &format!("spendguard approver secret key for {id}. Keep it private."),
            )?;
            println!("# secret key written to {}", path.display());
            println!("# add this entry under `approvers:` in policies/approvers.yaml:");
            println!("  - id: {id}");
            println!("    publicKey: {public}");
            println!("    entities: {}", serde_json::to_string(&entities)?);
            Ok(0)
        }
    }
}

/// Generates an Ed25519 key, writes the secret to a new file readable by its owner only
/// (refusing to overwrite), and returns the base64 public key.
pub(crate) fn write_new_key(path: &std::path::Path, comment: &str) -> anyhow::Result<String> {
    let (secret, public) = approvals::keygen();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create key file {} (it must not exist yet)",
                path.display()
            )
        })?;
    restrict_permissions(path)?;
    writeln!(file, "# {comment}\n{secret}")?;
    Ok(public)
}

#[cfg(unix)]
fn restrict_permissions(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict permissions of {}", path.display()))
}

#[cfg(not(unix))]
fn restrict_permissions(_path: &std::path::Path) -> anyhow::Result<()> {
    Ok(())
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub fn intents(cmd: IntentsCommand) -> anyhow::Result<i32> {
    let IntentsCommand::Publish { service, input } = cmd;
    publish_lines(
        service,
        input,
        |t| &t.intents,
        "intent",
        |line| {
            let key = agent_key(line);
            (!key.is_empty()).then_some(key)
        },
    )
}

pub fn settlements(cmd: SettlementsCommand) -> anyhow::Result<i32> {
    let SettlementsCommand::Publish {
        service,
        input,
        key,
    } = cmd;
    publish_lines(
        service,
        input,
        |t| &t.settlements,
        "settlement",
        |line| {
            key.clone().or_else(|| {
                let id = json_str_field(line, "intentId");
                (!id.is_empty()).then_some(id)
            })
        },
    )
}

/// Publishes the non-blank lines of `input` (default stdin) to one topic, each keyed by
/// `key_of(line)`. Malformed lines are published too: the service dead-letters them,
/// which is what a developer trying the DLQ wants to see.
fn publish_lines(
    service: ServiceArgs,
    input: Option<PathBuf>,
    topic_of: impl Fn(&Topics) -> &String,
    what: &str,
    key_of: impl Fn(&[u8]) -> Option<String>,
) -> anyhow::Result<i32> {
    let settings = service.resolve()?;
    crate::bus::properties::install(&settings.kafka_client);
    let topics = Topics::with_prefix(&settings.topic_prefix);
    let topic = topic_of(&topics).clone();
    let reader: Box<dyn BufRead> = match &input {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    runtime()?.block_on(async move {
        bus::ensure_topics(&settings.brokers, &topics.layout(&settings)).await?;
        let producer = bus::client_producer(&settings.brokers)?;
        let mut published = 0usize;
        for (n, line) in reader.split(b'\n').enumerate() {
            let line = line.with_context(|| format!("cannot read input line {}", n + 1))?;
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if line.len() > MAX_PUBLISH_LINE_BYTES {
                bail!(
                    "line {} is {} bytes; refusing to publish more than {MAX_PUBLISH_LINE_BYTES}",
                    n + 1,
                    line.len()
                );
            }
            let key = key_of(line).unwrap_or_else(|| {
                eprintln!("line {}: no key found; published without a key", n + 1);
                String::new()
            });
            bus::publish(&producer, &topic, key.as_bytes(), line, None).await?;
            published += 1;
        }
        eprintln!("published {published} {what}(s) to {topic}");
        Ok(0)
    })
}

/// A top-level string field of a JSON object, or "" when there is none.
fn json_str_field(bytes: &[u8], field: &str) -> String {
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(bytes)
        .ok()
        .and_then(|m| m.get(field).and_then(|v| v.as_str()).map(String::from))
        .unwrap_or_default()
}

/// The agentId of a JSON intent, used as the message key (same agent, same partition).
pub fn agent_key(bytes: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct KeyOnly {
        #[serde(rename = "agentId")]
        agent_id: String,
    }
    serde_json::from_slice::<KeyOnly>(bytes)
        .map(|k| k.agent_id)
        .unwrap_or_default()
}

pub fn decisions(cmd: DecisionsCommand) -> anyhow::Result<i32> {
    let DecisionsCommand::Tail(args) = cmd;
    let settings = args.service.resolve()?;
    crate::bus::properties::install(&settings.kafka_client);
    let topics = Topics::with_prefix(&settings.topic_prefix);
    runtime()?.block_on(async move {
        bus::ensure_topics(&settings.brokers, &topics.layout(&settings)).await?;
        let consumer = bus::standalone_consumer(&settings.brokers)?;
        let start = if args.from_beginning {
            rdkafka::Offset::Beginning
        } else {
            rdkafka::Offset::End
        };
        let topic = if args.dead_letters {
            &topics.dlq
        } else {
            &topics.decisions
        };
        bus::assign_all(&consumer, &settings.brokers, topic, start)?;
        let mut stream = consumer.stream();
        let mut seen = 0usize;
        let stdout = std::io::stdout();
        loop {
            if args.count.is_some_and(|c| seen >= c) {
                return Ok(0);
            }
            let next = match args.idle_timeout {
                Some(s) => {
                    match tokio::time::timeout(Duration::from_secs(s), stream.next()).await {
                        Ok(m) => m,
                        Err(_) => return Ok(0),
                    }
                }
                None => stream.next().await,
            };
            let Some(msg) = next else { return Ok(0) };
            let msg = msg.with_context(|| format!("reading {topic}"))?;
            let payload = msg.payload().unwrap_or_default();
            let mut out = stdout.lock();
            if args.dead_letters {
                writeln!(out, "{}", describe_dead_letter(&msg, &args.format))?;
            } else if args.format == "json" {
                out.write_all(payload)?;
                out.write_all(b"\n")?;
            } else {
                writeln!(out, "{}", describe(payload))?;
            }
            out.flush()?;
            seen += 1;
        }
    })
}

/// One line for a dead letter: its error headers and the original bytes (as text when
/// they are UTF-8). `json` gives `{"error": {header: value}, "original": text}`.
fn describe_dead_letter(msg: &rdkafka::message::BorrowedMessage<'_>, format: &str) -> String {
    use rdkafka::message::Headers;
    let mut headers = serde_json::Map::new();
    if let Some(h) = msg.headers() {
        for header in h.iter() {
            let value = header
                .value
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            let name = header.key.strip_prefix("spendguard-").unwrap_or(header.key);
            headers.insert(name.to_string(), serde_json::Value::String(value));
        }
    }
    let original = String::from_utf8_lossy(msg.payload().unwrap_or_default()).into_owned();
    if format == "json" {
        return serde_json::json!({"error": headers, "original": original}).to_string();
    }
    let h = |k: &str| headers.get(k).and_then(|v| v.as_str()).unwrap_or("-");
    format!(
        "DEAD LETTER {} ({}) from {}[{}]@{}: {}",
        h("error-code"),
        h("error-message"),
        h("source-topic"),
        h("source-partition"),
        h("source-offset"),
        original.trim_end()
    )
}

/// One readable line for a decision or outcome message.
pub fn describe(payload: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return format!("(unreadable message: {})", String::from_utf8_lossy(payload));
    };
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_string();
    if let Some(outcome) = v.get("outcome").and_then(|x| x.as_str()) {
        let approvers = v
            .get("approvers")
            .map(|a| a.to_string())
            .unwrap_or_default();
        return format!("{} OUTCOME {outcome} approvers={approvers}", s("intentId"));
    }
    let codes: Vec<String> = v
        .get("reasons")
        .and_then(|r| r.as_array())
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    let code = r.get("code").and_then(|c| c.as_str()).unwrap_or("?");
                    let detail = r.get("detail").and_then(|c| c.as_str()).unwrap_or("");
                    if detail.is_empty() {
                        code.to_string()
                    } else {
                        format!("{code} ({detail})")
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let approvals = v
        .get("approvalsRequired")
        .and_then(|a| a.as_u64())
        .unwrap_or(0);
    let approvals = if approvals > 0 {
        format!(" approvals={approvals}")
    } else {
        String::new()
    };
    format!(
        "{} agent={} entity={} {}{approvals} reasons: {}",
        s("intentId"),
        s("agentId"),
        s("entityId"),
        s("effect"),
        codes.join("; ")
    )
}

/// `spendguard serve`: the service settings plus the operators' HTTP API.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub api: crate::cli::ops::ApiArgs,
    /// Run without a broker: only PostgreSQL. Intents and settlements come in over the
    /// HTTP API (`POST /v1/intents`, `/v1/settlements`); their decisions and outcomes wait
    /// in the ledger's outbox until a serve with Kafka publishes them.
    #[arg(long, env = "SPENDGUARD_NO_KAFKA")]
    pub no_kafka: bool,
    /// Accept the repository's demo approver keys (examples/keys/) and API tokens
    /// (examples/api-tokens.yaml), whose secrets are public. Without it serve refuses
    /// to start with them.
    #[arg(long)]
    pub demo: bool,
}

pub fn serve(args: ServeArgs) -> anyhow::Result<i32> {
    let mut settings = args.service.resolve()?;
    crate::bus::properties::install(&settings.kafka_client);
    if args.no_kafka {
        settings.kafka = false;
    }
    settings.demo = args.demo;
    if !settings.kafka && args.api.http_addr.is_none() {
        anyhow::bail!(
            "without Kafka the HTTP API is the only way in: give --http-addr (and --api-tokens with a payment_service token)"
        );
    }
    let api = match args.api.http_addr {
        Some(addr) => Some(crate::serve::ApiMount {
            addr,
            tokens: args.api.load_tokens()?,
            tls: args.api.tls_files()?,
        }),
        None => None,
    };
    runtime()?.block_on(crate::serve::run(
        settings,
        api,
        crate::serve::termination(),
    ))?;
    Ok(0)
}

pub fn kill_switch(args: KillSwitchArgs) -> anyhow::Result<i32> {
    let settings = args.service.resolve()?;
    crate::bus::properties::install(&settings.kafka_client);
    runtime()?.block_on(async move {
        let ledger = Ledger::connect(&settings.database_url, &settings.instance).await?;
        if args.action == KillAction::Status {
            let entries = ledger.kill_switch_state().await?;
            let active: Vec<_> = entries.iter().filter(|e| e.active).collect();
            if active.is_empty() {
                println!("kill switch: off (no scope tripped)");
            }
            for e in active {
                println!(
                    "kill switch: ON for {} since {} by {}: {}",
                    e.scope, e.changed_at, e.actor, e.reason
                );
            }
            return Ok(0);
        }
        let on = args.action == KillAction::On;
        let scope = args
            .scope
            .context("--scope is required: global, entity:ID or agent:ID")?;
        let reason = args
            .reason
            .context("--reason is required: it is recorded in the audit trail")?;
        let actor = args.actor.unwrap_or_else(|| "unknown-operator".into());
        let change = Change {
            scope,
            on,
            actor,
            reason,
        };
        // The ledger first (the audited event is the truth and is in force at once), then
        // the message on spend.control (instances re-read the ledger if it is lost).
        record_then_announce(
            &ledger,
            &change,
            &Origin::cli(&settings.instance),
            Some(&Announcer::on_demand(&settings)),
        )
        .await?;
        let state = if on { "ON" } else { "OFF" };
        eprintln!("kill switch {state} for {}", change.scope);
        Ok(0)
    })
}

pub fn run_loadgen(args: loadgen::LoadgenArgs) -> anyhow::Result<i32> {
    let settings = args.service.resolve()?;
    crate::bus::properties::install(&settings.kafka_client);
    runtime()?.block_on(loadgen::run(&settings, &args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_agent_id_or_are_empty() {
        assert_eq!(agent_key(br#"{"agentId":"a-1","x":1}"#), "a-1");
        assert_eq!(agent_key(b"not json"), "");
        assert_eq!(agent_key(br#"{"agentId":42}"#), "");
    }

    #[test]
    fn describe_is_readable_for_decisions_outcomes_and_garbage() {
        let d = br#"{"intentId":"i1","agentId":"a","entityId":"e","effect":"REQUIRE_MSIG","approvalsRequired":2,"reasons":[{"effect":"REQUIRE_MSIG","code":"x","detail":"600 > 500"}]}"#;
        assert_eq!(
            describe(d),
            "i1 agent=a entity=e REQUIRE_MSIG approvals=2 reasons: x (600 > 500)"
        );
        let o = br#"{"intentId":"i1","outcome":"APPROVED","approvers":["alice"]}"#;
        assert_eq!(describe(o), r#"i1 OUTCOME APPROVED approvers=["alice"]"#);
        assert!(describe(b"\xff").starts_with("(unreadable"));
    }
}
