//! Operators' and auditors' commands: `spendguard report` and `spendguard policy impact`
//! (the latter is mounted under the policy engineer's `policy` subcommand), plus the HTTP
//! API flags `serve` flattens in.

use std::net::SocketAddr;
use std::path::PathBuf;

use chrono::{NaiveDate, Utc};
use clap::Args;

use crate::api::TokenStore;
use crate::ledger::LedgerError;
use crate::ledger::query::LedgerReader;
use crate::report::compliance::{self, ChainCheck, ComplianceReport, Period};
use crate::report::events::load_events;
use crate::report::impact::{self, ImpactReport, Scope};
use crate::report::render::{self, Format};

/// Longest period a report or impact analysis covers (10 years).
pub const MAX_PERIOD_DAYS: i64 = 3_660;

/// HTTP API settings (`serve` flattens these).
#[derive(Debug, Clone, Default, Args)]
pub struct ApiArgs {
    /// Address of the operators' HTTP API (`/healthz`, `/metrics`, `/v1/...`); off when unset.
    #[arg(long, env = "SPENDGUARD_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// YAML/JSON file of API bearer tokens (`tokens: [{name, role, sha256}]`), hashes only.
    #[arg(long, env = "SPENDGUARD_API_TOKENS")]
    pub api_tokens: Option<PathBuf>,
    /// PEM certificate chain (leaf first) of the API: with --tls-key-file, the API speaks
    /// HTTPS only. Without them it is plain HTTP (loopback, or behind a TLS proxy).
    #[arg(long, env = "SPENDGUARD_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file (keep it readable by the service user only).
    #[arg(long, env = "SPENDGUARD_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
}

impl ApiArgs {
    /// The API's certificate and key files, both or neither.
    pub fn tls_files(&self) -> anyhow::Result<Option<crate::api::tls::TlsFiles>> {
        Ok(crate::api::tls::TlsFiles::from_pair(
            self.tls_cert_file.clone(),
            self.tls_key_file.clone(),
        )?)
    }

    /// The configured tokens; none configured means every protected route answers 401.
    pub fn load_tokens(&self) -> anyhow::Result<TokenStore> {
        match &self.api_tokens {
            Some(path) => Ok(TokenStore::from_file(path)?),
            None => {
                tracing::warn!(
                    "no API tokens configured (--api-tokens / SPENDGUARD_API_TOKENS): every /v1 route and /metrics will answer 401"
                );
                Ok(TokenStore::default())
            }
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct PeriodArgs {
    /// First day of the period (UTC, inclusive), YYYY-MM-DD.
    #[arg(long)]
    pub from: NaiveDate,
    /// Last day of the period (UTC, inclusive), YYYY-MM-DD.
    #[arg(long)]
    pub to: NaiveDate,
    /// Only this entity's intents.
    #[arg(long)]
    pub entity: Option<String>,
}

impl PeriodArgs {
    pub fn period(&self) -> anyhow::Result<Period> {
        if self.to < self.from {
            anyhow::bail!(
                "--to {} is before --from {}: give the first day, then the last",
                self.to,
                self.from
            );
        }
        if (self.to - self.from).num_days() >= MAX_PERIOD_DAYS {
            anyhow::bail!("the period is longer than {MAX_PERIOD_DAYS} days: split it");
        }
        Ok(Period {
            from: self.from,
            to: self.to,
            entity: self.entity.clone(),
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// PostgreSQL URL of the ledger.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    #[command(flatten)]
    pub period: PeriodArgs,
    #[arg(long, value_enum, default_value = "html")]
    pub format: Format,
    /// Output file (default: stdout).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImpactFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ImpactArgs {
    /// PostgreSQL URL of the ledger.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// The candidate policy file (JSON or YAML, bare or envelope).
    #[arg(long)]
    pub candidate: PathBuf,
    #[command(flatten)]
    pub period: PeriodArgs,
    /// Replay every recorded intent, not only those decided under a policy with the
    /// candidate's name.
    #[arg(long)]
    pub all_intents: bool,
    #[arg(long, value_enum, default_value = "text")]
    pub format: ImpactFormat,
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub(crate) async fn connect(url: &str) -> anyhow::Result<LedgerReader> {
    LedgerReader::connect(url, 2).await.map_err(|e| {
        let e: &dyn std::fmt::Display = match &e {
            LedgerError::Database(e) => e,
            e => e,
        };
        anyhow::anyhow!(
            "cannot connect to the ledger database: {e} (check --database-url / DATABASE_URL)"
        )
    })
}

/// Recomputes the hash chain for the report.
pub async fn chain_check(ledger: &LedgerReader) -> anyhow::Result<ChainCheck> {
    let v = ledger.verify_chains().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot read the ledger's events ({e}): is --database-url / DATABASE_URL the ledger database, migrated with `spendguard db migrate`?"
        )
    })?;
    Ok(ChainCheck {
        ok: v.problems.is_empty(),
        events_checked: v.events,
        first_problem: v.problems.first().map(|p| {
            format!(
                "event seq {} (chain {} position {}): {}",
                p.seq, p.chain_id, p.chain_pos, p.problem
            )
        }),
    })
}

/// Builds the compliance report of a period from the ledger `ledger` reads.
pub async fn compliance_report(
    ledger: &LedgerReader,
    period: Period,
) -> anyhow::Result<ComplianceReport> {
    let chain = chain_check(ledger).await?;
    let events = load_events(ledger, period.end()).await?;
    Ok(compliance::build(&events, period, chain, Utc::now()))
}

/// `spendguard report`: exit 0, or 1 when the audit chain does not verify (the report is
/// still written, and says so).
pub fn run_report(args: ReportArgs) -> anyhow::Result<i32> {
    let period = args.period.period()?;
    let report = runtime()?.block_on(async {
        let ledger = connect(&args.database_url).await?;
        compliance_report(&ledger, period).await
    })?;
    let text = render::render(&report, args.format);
    match &args.out {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| anyhow::anyhow!("cannot write the report to {}: {e}", path.display()))?,
        None => print!("{text}"),
    }
    if !report.audit_chain.ok {
        eprintln!(
            "audit chain verification FAILED: {}",
            report
                .audit_chain
                .first_problem
                .as_deref()
                .unwrap_or("unknown problem")
        );
        return Ok(1);
    }
    Ok(0)
}

/// Replays the period under the candidate policy read from `args.candidate`.
pub async fn impact_report(
    ledger: &LedgerReader,
    args: &ImpactArgs,
) -> anyhow::Result<ImpactReport> {
    let period = args.period.period()?;
    let text = crate::policy::read_text(&args.candidate).map_err(|e| anyhow::anyhow!("{e}"))?;
    let origin = args.candidate.display().to_string();
    let policy =
        crate::policy::CompiledPolicy::parse(&text, &origin).map_err(|e| anyhow::anyhow!("{e}"))?;
    let scope = if args.all_intents {
        Scope::All
    } else {
        Scope::PolicyName(policy.identity.name.clone())
    };
    let events = load_events(ledger, period.end()).await?;
    Ok(impact::analyse(&events, period, &scope, &policy))
}

/// `spendguard policy impact`: exit 3 when the candidate would ALLOW an intent the
/// recorded policy denied, 0 otherwise.
pub fn run_impact(args: ImpactArgs) -> anyhow::Result<i32> {
    let report = runtime()?.block_on(async {
        let ledger = connect(&args.database_url).await?;
        impact_report(&ledger, &args).await
    })?;
    match args.format {
        ImpactFormat::Text => print!("{}", impact::render_text(&report)),
        ImpactFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    if report.intents_replayed == 0 && !args.all_intents {
        eprintln!(
            "note: no recorded intent in the period was decided under a policy named {:?}; use --all-intents to replay every intent",
            report.candidate.name
        );
    }
    Ok(report.exit_code())
}

#[derive(Debug, Clone, Args)]
pub struct UsageArgs {
    /// The agent whose limits to show.
    pub agent: String,
    /// Entity to resolve the policy binding for (default: the entity of the agent's last
    /// recorded intent).
    #[arg(long)]
    pub entity: Option<String>,
    /// PostgreSQL URL of the ledger.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Policy directory (policies + bindings.yaml), as `serve` loads it.
    #[arg(long, env = "SPENDGUARD_POLICIES")]
    pub policies: PathBuf,
    /// JSON (the `limits` of `GET /v1/agents/{id}/usage`) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `spendguard usage`: every limit of the agent's policy, as `GET /v1/agents/{id}/usage`
/// reports it (same ledger read, at the ledger's clock). Exit 0; 1 when nothing is bound.
pub fn run_usage(args: UsageArgs) -> anyhow::Result<i32> {
    let set =
        crate::policy::PolicySet::load_dir(&args.policies).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (entity, policy, report) = runtime()?.block_on(async {
        let ledger = connect(&args.database_url).await?;
        let entity = match &args.entity {
            Some(e) => e.clone(),
            None => ledger.latest_entity_of(&args.agent).await?.ok_or_else(|| {
                anyhow::anyhow!(
                    "agent {:?} has no recorded intents; pass --entity ID",
                    args.agent
                )
            })?,
        };
        let Some(policy) = set.resolve(&args.agent, &entity) else {
            return Ok::<_, anyhow::Error>((entity, None, None));
        };
        let report = ledger
            .limit_usage(&policy, Some(&args.agent), &entity)
            .await?;
        Ok((entity, Some(policy), Some(report)))
    })?;
    let (Some(policy), Some(report)) = (policy, report) else {
        eprintln!(
            "no policy is bound to agent {:?} of entity {entity:?} in {}",
            args.agent,
            args.policies.display()
        );
        return Ok(1);
    };
    let limits: Vec<crate::api::views::LimitUsageView> = report
        .limits
        .iter()
        .map(|l| crate::api::limit_usage_view(l, policy.currency.minor_units))
        .collect();
    if args.json {
        let out = serde_json::json!({
            "agentId": args.agent,
            "entityId": entity,
            "policy": policy.identity,
            "currency": policy.currency.code,
            "timezone": policy.tz.name(),
            "asOf": report.as_of,
            "limits": limits,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!(
            "{}",
            usage_table(&args.agent, &entity, &policy, report.as_of, &limits)
        );
    }
    Ok(0)
}

/// The readable form of [`run_usage`]: one line per limit.
pub fn usage_table(
    agent: &str,
    entity: &str,
    policy: &crate::policy::CompiledPolicy,
    as_of: chrono::DateTime<Utc>,
    limits: &[crate::api::views::LimitUsageView],
) -> String {
    let currency = policy.currency.code;
    let mut out = format!(
        "agent {agent} of entity {entity}: policy {} {} ({currency}, {}), as of {}\n",
        policy.identity.name,
        policy.identity.version,
        policy.tz.name(),
        as_of.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    );
    if limits.is_empty() {
        out.push_str("no limits\n");
        return out;
    }
    let at = |t: &chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    let mut rows: Vec<[String; 6]> = vec![[
        "LIMIT".into(),
        "SCOPE".into(),
        "WINDOW".into(),
        format!("AMOUNT used/limit (left) {currency}"),
        "COUNT used/limit (left)".into(),
        "NEXT".into(),
    ]];
    for l in limits {
        let amount = match (&l.amount, &l.amount_used, &l.amount_remaining) {
            (Some(max), Some(used), Some(left)) => format!("{used} / {max} ({left})"),
            _ => "-".into(),
        };
        let count = match (l.count, l.count_used, l.count_remaining) {
            (Some(max), Some(used), Some(left)) => format!("{used} / {max} ({left})"),
            _ => "-".into(),
        };
        let next = match (&l.resets_at, &l.frees_next_at) {
            (Some(t), _) => format!("resets {}", at(t)),
            (_, Some(t)) => format!("frees {}", at(t)),
            _ => "-".into(),
        };
        rows.push([
            l.name.clone(),
            l.scope.clone(),
            l.window.clone(),
            amount,
            count,
            next,
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
