//! `spendguard approve` (SPEC §13.1): sign a vote given only the decision and a key, no
//! database. The decision comes from a file (`--decision`, e.g. a line of `decisions
//! tail --format json`), the API (`--api`, the approver's inbox) or `spend.decisions`
//! (`--brokers`); the vote goes to the API when `--api` is given, else to
//! `spend.approvals`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use rdkafka::Message;

use crate::approvals::{self, Vote, VoteMessage};
use crate::bus::{self, Topics};
use crate::decision::{ApprovalRequest, DecisionMessage};

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The decision message to vote on, as JSON (`-` reads stdin): a line of
    /// `spendguard decisions tail --format json`, or an entry of `GET /v1/approvals`.
    #[arg(long, conflicts_with = "brokers_source")]
    pub decision: Option<PathBuf>,
    /// The API of `spendguard serve` (`http://host:port` or `https://host:port`): the
    /// decision is fetched from the approver's inbox (unless --decision) and the vote
    /// POSTed there.
    #[arg(long, env = "SPENDGUARD_API", requires = "token_file")]
    pub api: Option<String>,
    /// PEM file of CAs trusted for an `https://` --api besides the public roots (an API
    /// certificate from a private CA).
    #[arg(long, env = "SPENDGUARD_API_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// File holding the approver's API bearer token (role `approver`).
    #[arg(long, env = "SPENDGUARD_API_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Read the decision from `spend.decisions` on --brokers (needs --intent).
    #[arg(long = "from-topic", id = "brokers_source")]
    pub from_topic: bool,
    /// Kafka brokers: where `spend.decisions` is read (--from-topic) and the vote is
    /// published (without --api).
    #[arg(long, env = "SPENDGUARD_BROKERS", default_value = "localhost:9092")]
    pub brokers: String,
    /// Prefix of the topic names, as `serve` was given it.
    #[arg(long, env = "SPENDGUARD_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
    /// librdkafka security properties for --brokers, `key=value,...` (TLS / SASL, as for
    /// `serve`; e.g. `security.protocol=SASL_SSL,sasl.mechanisms=SCRAM-SHA-512,sasl.username=alice`).
    #[arg(long, env = "SPENDGUARD_KAFKA_PROPERTIES")]
    pub kafka_properties: Option<String>,
    /// File holding the SASL password (or SPENDGUARD_KAFKA_SASL_PASSWORD; never a flag).
    #[arg(long, env = "SPENDGUARD_KAFKA_SASL_PASSWORD_FILE")]
    pub kafka_sasl_password_file: Option<PathBuf>,
    /// The waiting intent (required with --api without --decision, and --from-topic;
    /// checked against the decision otherwise).
    #[arg(long)]
    pub intent: Option<String>,
    /// Your approver id (as registered in approvers.yaml).
    #[arg(long)]
    pub approver: String,
    /// Your secret key file (from `spendguard approvers keygen`).
    #[arg(long)]
    pub key: PathBuf,
    /// Vote REJECT instead of APPROVE.
    #[arg(long)]
    pub reject: bool,
    /// Sign without asking (scripts). Without it, approve asks on the terminal and
    /// refuses to sign when there is none.
    #[arg(long)]
    pub yes: bool,
    /// How long to wait for the API or the broker.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
}

/// Where the decision is read from.
enum Source<'a> {
    File(&'a Path),
    Api { base: &'a str, intent: &'a str },
    Topic { intent: &'a str },
}

pub fn run(args: ApproveArgs) -> anyhow::Result<i32> {
    let key = approvals::read_signing_key(&args.key).map_err(anyhow::Error::msg)?;
    // The broker of a secured deployment needs its TLS / SASL settings here too.
    let security = crate::config::kafka_client_flags(
        Default::default(),
        args.kafka_properties.as_deref(),
        args.kafka_sasl_password_file.as_deref(),
    )?;
    crate::bus::properties::install(&security);
    let token = args.token_file.as_deref().map(read_token).transpose()?;
    let timeout = Duration::from_secs(args.timeout_secs.max(1));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let decision = load(&args, source(&args)?, token.as_deref(), timeout).await?;
        let approval = waiting(&decision, args.intent.as_deref())?;
        let vote = if args.reject {
            Vote::Reject
        } else {
            Vote::Approve
        };
        eprintln!("{}", show(&decision, approval));
        if !args.yes && !confirm(vote, &decision.intent_id)? {
            eprintln!("not signed");
            return Ok(1);
        }
        let msg = approvals::sign_vote(
            &key,
            &decision.intent_id,
            &args.approver,
            &approval.terms.decision_hash,
            vote,
        );
        send(&args, &msg, token.as_deref(), timeout).await?;
        Ok(0)
    })
}

fn source(args: &ApproveArgs) -> anyhow::Result<Source<'_>> {
    if let Some(path) = &args.decision {
        return Ok(Source::File(path));
    }
    let intent = args.intent.as_deref().context(
        "which decision? give --decision FILE, or --intent ID with --api URL or --from-topic",
    )?;
    match (&args.api, args.from_topic) {
        (Some(base), false) => Ok(Source::Api { base, intent }),
        (None, true) => Ok(Source::Topic { intent }),
        _ => bail!("read the decision from one place: --decision FILE, --api URL or --from-topic"),
    }
}

async fn load(
    args: &ApproveArgs,
    source: Source<'_>,
    token: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<DecisionMessage> {
    match source {
        Source::File(path) => parse_decision(&read_input(path)?),
        Source::Api { base, intent } => {
            let token = token.context("--api needs --token-file")?;
            let path = format!(
                "/v1/approvals?status=pending&limit={}",
                crate::api::MAX_PENDING_APPROVALS_PAGE
            );
            let ca = args.ca_file.as_deref();
            let (status, body) = http(base, ca, "GET", &path, token, None, timeout).await?;
            if status != 200 {
                bail!("GET {path} answered {status}: {body}");
            }
            from_inbox(&body, intent)
        }
        Source::Topic { intent } => {
            let topics = Topics::with_prefix(&args.topic_prefix);
            from_topic(&args.brokers, &topics.decisions, intent, timeout).await
        }
    }
}

fn read_input(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text)?;
        return Ok(text);
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read token file {}", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .with_context(|| format!("token file {} holds no token", path.display()))
}

/// A decision message, or an inbox entry holding one under `decision`.
pub fn parse_decision(text: &str) -> anyhow::Result<DecisionMessage> {
    let value: serde_json::Value =
        serde_json::from_str(text.trim()).context("the decision is not JSON")?;
    let inner = value.get("decision").cloned().unwrap_or(value);
    serde_json::from_value(inner).context("not a decision message of spend.decisions")
}

fn from_inbox(body: &str, intent: &str) -> anyhow::Result<DecisionMessage> {
    let inbox: serde_json::Value =
        serde_json::from_str(body).context("the API answer is not JSON")?;
    let entry = inbox["approvals"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["intentId"] == intent))
        .with_context(|| {
            format!("intent {intent} is not in your inbox: not waiting, not for your entities, or already voted on")
        })?;
    parse_decision(&entry.to_string())
}

async fn from_topic(
    brokers: &str,
    topic: &str,
    intent: &str,
    timeout: Duration,
) -> anyhow::Result<DecisionMessage> {
    let consumer = bus::standalone_consumer(brokers)?;
    bus::assign_all(&consumer, brokers, topic, rdkafka::Offset::Beginning)?;
    let mut stream = consumer.stream();
    loop {
        let next = tokio::time::timeout(timeout, stream.next()).await;
        let Ok(Some(msg)) = next else {
            bail!("no decision of intent {intent} on {topic} within {timeout:?}");
        };
        let msg = msg?;
        let payload = msg.payload().unwrap_or_default();
        if let Ok(d) = serde_json::from_slice::<DecisionMessage>(payload)
            && d.intent_id == intent
        {
            return Ok(d);
        }
    }
}

/// The approval part of a decision that waits for votes.
fn waiting<'a>(
    decision: &'a DecisionMessage,
    intent: Option<&str>,
) -> anyhow::Result<&'a ApprovalRequest> {
    if let Some(intent) = intent
        && intent != decision.intent_id
    {
        bail!(
            "the decision is of intent {}, not {intent}",
            decision.intent_id
        );
    }
    decision.approval.as_ref().with_context(|| {
        format!(
            "intent {} was decided {} without a decisionHash: nothing to sign (only REQUIRE_HITL / REQUIRE_MSIG decisions wait for votes)",
            decision.intent_id, decision.effect
        )
    })
}

/// What the approver vouches for, shown before signing.
pub fn show(d: &DecisionMessage, a: &ApprovalRequest) -> String {
    let mut out = format!(
        "intent {} of agent {} (entity {}): {} {} {} via {}\n{} needs {} approval(s); {} so far; expires {}\n",
        d.intent_id,
        d.agent_id,
        d.entity_id,
        a.amount,
        a.currency,
        a.category,
        a.purpose,
        d.effect,
        d.approvals_required.max(1),
        a.approvals.len(),
        a.terms
            .expires_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    for r in &d.reasons {
        out.push_str(&format!("  reason {} {}: {}\n", r.effect, r.code, r.detail));
    }
    if let Some(u) = &d.usage {
        out.push_str(&format!(
            "  usage before it: {} today, {} this month ({} {})\n",
            u.daily_so_far, u.monthly_so_far, u.window.day, u.window.tz
        ));
    }
    for v in &a.approvals {
        out.push_str(&format!("  voted: {} {}\n", v.approver_id, v.vote.as_str()));
    }
    out.push_str(&format!("  decisionHash {}", a.terms.decision_hash));
    out
}

fn confirm(vote: Vote, intent: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("not on a terminal, so nothing was signed: check the decision above and pass --yes");
    }
    eprint!("sign {} on {intent}? [y/N] ", vote.as_str());
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

async fn send(
    args: &ApproveArgs,
    msg: &VoteMessage,
    token: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let body = serde_json::to_string(msg)?;
    let Some(base) = &args.api else {
        let topics = Topics::with_prefix(&args.topic_prefix);
        let producer = bus::producer(&args.brokers)?;
        let publish = bus::publish(
            &producer,
            &topics.approvals,
            msg.intent_id.as_bytes(),
            body.as_bytes(),
            None,
        );
        tokio::time::timeout(timeout, publish)
            .await
            .with_context(|| format!("the broker did not acknowledge within {timeout:?}"))??;
        eprintln!(
            "{} by {} on {} published to {}",
            msg.vote.as_str(),
            msg.approver_id,
            msg.intent_id,
            topics.approvals
        );
        return Ok(());
    };
    let token = token.context("--api needs --token-file")?;
    let path = format!("/v1/approvals/{}/votes", msg.intent_id);
    let ca = args.ca_file.as_deref();
    let (status, answer) = http(base, ca, "POST", &path, token, Some(&body), timeout).await?;
    if status != 200 {
        bail!("the vote was refused ({status}): {answer}");
    }
    eprintln!("{answer}");
    Ok(())
}

/// One HTTP/1.1 exchange with the API at `base` (`http://` or `https://`, TLS checked
/// against the public roots and `ca_file`). Returns (status, body).
async fn http(
    base: &str,
    ca_file: Option<&Path>,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let exchange = http_exchange(base, ca_file, method, path, token, body);
    tokio::time::timeout(timeout, exchange)
        .await
        .with_context(|| format!("{base} did not answer within {timeout:?}"))?
}

async fn http_exchange(
    base: &str,
    ca_file: Option<&Path>,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let (tls, rest) = if let Some(rest) = base.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = base.strip_prefix("http://") {
        (false, rest)
    } else {
        bail!("--api {base}: the URL must start with http:// or https://");
    };
    let (host, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_end_matches('/');
    let target = if prefix.is_empty() {
        path.to_string()
    } else {
        format!("/{prefix}{path}")
    };
    let uri_authority: axum::http::uri::Authority = host
        .parse()
        .with_context(|| format!("--api {base}: no host:port in the URL"))?;
    let port = uri_authority
        .port_u16()
        .unwrap_or(if tls { 443 } else { 80 });
    let connect_to = format!("{}:{port}", uri_authority.host());
    let stream = tokio::net::TcpStream::connect(&connect_to)
        .await
        .with_context(|| format!("cannot connect to {connect_to}"))?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let raw = if tls {
        let config = crate::tls_client::client_config(ca_file)?;
        let name = crate::tls_client::server_name(uri_authority.host())?;
        let stream = crate::tls_client::connect(config, name, stream)
            .await
            .with_context(|| format!("TLS with {connect_to}"))?;
        round_trip(stream, request.as_bytes()).await?
    } else {
        round_trip(stream, request.as_bytes()).await?
    };
    parse_response(&raw)
}

/// Writes `request` and reads the answer until the server closes the connection.
async fn round_trip<IO>(mut io: IO, request: &[u8]) -> anyhow::Result<Vec<u8>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    io.write_all(request).await?;
    let mut raw = Vec::new();
    match io.read_to_end(&mut raw).await {
        Ok(_) => {}
        // A TLS server that closes without close_notify after a complete answer
        // (`Connection: close`): the answer is whole, only the goodbye is missing.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    Ok(raw)
}

/// Status and body of an HTTP/1.1 response (sized or chunked).
fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .context("the API's answer has no header end")?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("the API's answer has no status line")?;
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok((status, rest.to_string()));
    }
    let mut body = String::new();
    let mut left = rest;
    while let Some((size, tail)) = left.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).context("bad chunk size")?;
        if n == 0 || tail.len() < n {
            break;
        }
        body.push_str(
            tail.get(..n)
                .context("chunk is not on a character boundary")?,
        );
        left = tail.get(n..).unwrap_or("").trim_start_matches("\r\n");
    }
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_sized_and_chunked() {
        let sized = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(sized).unwrap(), (200, "{}".into()));
        let chunked =
            b"HTTP/1.1 422 X\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"a\r\n3\r\n\":1\r\n1\r\n}\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (422, "{\"a\":1}".into()));
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn decisions_are_read_plain_or_from_an_inbox_entry() {
        let plain = r#"{"intentId":"i","agentId":"a","entityId":"e","effect":"REQUIRE_HITL","approvalsRequired":1,"reasons":[],"decidedAt":"2026-11-30T12:00:00Z","amount":"10.00","currency":"BRL","category":"c","purpose":"PIX","decisionHash":"ab","expiresAt":"2026-11-30T13:00:00Z","approvals":[]}"#;
        let d = parse_decision(plain).unwrap();
        assert_eq!(waiting(&d, Some("i")).unwrap().terms.decision_hash, "ab");
        assert!(waiting(&d, Some("other")).is_err());
        let inbox = format!(r#"{{"approvals":[{{"intentId":"i","decision":{plain}}}]}}"#);
        assert_eq!(from_inbox(&inbox, "i").unwrap(), d);
        assert!(from_inbox(&inbox, "j").is_err());
        let allow = r#"{"intentId":"i","agentId":"a","entityId":"e","effect":"ALLOW","approvalsRequired":0,"reasons":[],"decidedAt":"2026-11-30T12:00:00Z"}"#;
        let d = parse_decision(allow).unwrap();
        assert!(
            waiting(&d, None)
                .unwrap_err()
                .to_string()
                .contains("nothing to sign")
        );
    }
}
