//! Ledger subcommands: `db migrate`, `ledger submit`, `ledger bench`, `audit verify`,
//! `replay [--verify]`, `privacy forget SUBJECT`.

use crate::intent::parse_intent;
use crate::ledger::settle::SettleResult;
use crate::ledger::{self, Ledger, LedgerError, Origin};
use crate::policy::PolicySet;
use crate::settlement::parse_settlement;
use anyhow::Context as _;
use clap::{Args, Subcommand};
use std::io::{BufRead, Write};
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// PostgreSQL connection URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

/// The key-encryption key of the per-subject keys (SPEC §14): a file, or the
/// `SPENDGUARD_KEK` environment variable (base64 of 32 bytes; never a flag).
#[derive(Debug, Clone, Default, Args)]
pub struct KekArgs {
    /// File holding the KEK (base64 of 32 bytes, from `spendguard privacy kek-gen`).
    #[arg(long, env = "SPENDGUARD_KEK_FILE", value_name = "FILE")]
    pub kek_file: Option<PathBuf>,
    /// During a rotation: the previous KEK's file, to unwrap keys not re-wrapped yet.
    #[arg(long, env = "SPENDGUARD_KEK_PREVIOUS_FILE", value_name = "FILE")]
    pub kek_previous_file: Option<PathBuf>,
}

impl KekArgs {
    /// The configured KEKs, `None` when none is configured.
    pub fn load(&self) -> anyhow::Result<Option<std::sync::Arc<crate::keywrap::KeyRing>>> {
        Ok(crate::keywrap::KeyRing::from_config(
            self.kek_file.as_deref(),
            self.kek_previous_file.as_deref(),
        )?)
    }

    /// The configured KEKs; none configured is an error naming the settings.
    pub fn required(&self) -> anyhow::Result<std::sync::Arc<crate::keywrap::KeyRing>> {
        Ok(crate::keywrap::KeyRing::required(
            self.kek_file.as_deref(),
            self.kek_previous_file.as_deref(),
        )?)
    }
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply the ledger's schema migrations (idempotent).
    Migrate {
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Decide intents read as JSON lines (stdin or --input) through the ledger's decision
    /// path, printing one JSON line per input line (decision, or error with its code).
    /// A line with a top-level `type` field is a settlement message (SPEC §11: CAPTURE,
    /// VOID, REFUND, CANCEL), applied in its place; its line is the outcome, or the
    /// refusal with its stable code.
    Submit(SubmitArgs),
    /// Measure `decide` throughput and latency against the database (see docs/benchmarks.md).
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Directory with the policies and bindings.yaml.
    #[arg(long, env = "SPENDGUARD_POLICIES", default_value = "policies")]
    pub policies: PathBuf,
    /// JSON-lines file of intents and settlements (default: stdin).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Intents decided per transaction.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Name recorded as the origin instance of the events.
    #[arg(long, env = "SPENDGUARD_INSTANCE", default_value = "cli")]
    pub instance: String,
    #[command(flatten)]
    pub kek: KekArgs,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Distinct agents the intents are spread over (1 = single hot agent).
    #[arg(long, default_value_t = 10_000)]
    pub agents: usize,
    /// Intents to decide.
    #[arg(long, default_value_t = 50_000)]
    pub intents: usize,
    /// Intents per transaction.
    #[arg(long, default_value_t = 200)]
    pub batch: usize,
    /// Concurrent deciders (connections).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Keep the scratch database (its URL is printed), e.g. to time `replay` on it.
    #[arg(long)]
    pub keep_database: bool,
    /// Limits in the bench policy: none, two agent-scoped, or one of them entity-scoped
    /// (every bench agent belongs to one entity).
    #[arg(long, value_enum, default_value_t = crate::cli::bench::ledger::BenchLimits::None)]
    pub limits: crate::cli::bench::ledger::BenchLimits,
    /// Bind a stricter candidate in shadow to every bench agent (what shadow mode costs).
    #[arg(long)]
    pub shadow: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute every hash chain; exit 0 with a summary, or 1 naming the first broken event.
    /// (Vote signatures are re-checked by `audit verify-votes`.)
    Verify {
        #[command(flatten)]
        db: DbArgs,
        /// Also check the signed checkpoints in this directory (every file
        /// `checkpoint-*.json`): detects a rewrite whose hashes were recomputed.
        #[arg(long, value_name = "DIR", requires = "checkpoint_public_key")]
        checkpoints: Option<PathBuf>,
        /// The public key the checkpoints must be signed with (base64, as `audit keygen`
        /// printed it). Take it from where you keep it, not from a checkpoint file.
        #[arg(long, value_name = "BASE64")]
        checkpoint_public_key: Option<String>,
    },
    /// Re-verify the signature of every accepted vote against the approver registry
    /// version in force when it was accepted, from the ledger alone; exit 1 naming every
    /// vote that does not verify.
    VerifyVotes {
        #[command(flatten)]
        db: DbArgs,
        /// Only votes recorded at or after this instant (RFC 3339).
        #[arg(long, value_name = "RFC3339")]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// Only votes recorded before this instant (RFC 3339).
        #[arg(long, value_name = "RFC3339")]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write one signed checkpoint of every chain head into DIR (`serve` writes them
    /// periodically when `checkpoint_key_file` and `checkpoint_dir` are set).
    Checkpoint {
        #[command(flatten)]
        db: DbArgs,
        /// The checkpoint secret key (from `audit keygen`); keep it off the database host.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Name recorded in the checkpoint and its file name.
        #[arg(long, default_value = "cli")]
        instance: String,
    },
    /// Create a checkpoint signing key: writes the secret key to FILE (refuses to
    /// overwrite) and prints the public key auditors verify with.
    Keygen {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Also re-evaluate every decision with the policy version recorded for it.
    #[arg(long)]
    pub verify: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// With --verify, decisions are re-evaluated with their clear beneficiary account
    /// when a KEK is given; without one, with the masked account (and counted).
    #[command(flatten)]
    pub kek: KekArgs,
}

#[derive(Debug, Subcommand)]
pub enum PrivacyCommand {
    /// Erase a data subject's personal data (destroys the subject's key; audited).
    Forget {
        /// The data subject: the beneficiary id.
        subject: String,
        #[command(flatten)]
        db: DbArgs,
        /// Who asked (recorded in the audit trail).
        #[arg(long, env = "USER", default_value = "operator")]
        actor: String,
    },
    /// Create a key-encryption key (KEK) for the per-subject keys: writes it to FILE
    /// (base64, mode 0600; refuses to overwrite) and prints its kek_id. Keep it off the
    /// database host and out of its backups.
    KekGen {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Re-wrap every subject key under a new KEK, in batches, each recorded as a
    /// `subject_keys_rewrapped` event; run again if interrupted (done rows are skipped).
    /// The current KEK comes from --kek-file / SPENDGUARD_KEK_FILE / SPENDGUARD_KEK (and
    /// --kek-previous-file). Keys still stored in clear are wrapped too.
    RotateKek {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        kek: KekArgs,
        /// The new KEK's file (from `privacy kek-gen`).
        #[arg(long, value_name = "FILE")]
        new_kek_file: PathBuf,
        /// Keys re-wrapped per transaction.
        #[arg(long, default_value_t = ledger::subject_keys::REWRAP_BATCH)]
        batch: usize,
        /// Who rotates (recorded in the audit trail).
        #[arg(long, env = "USER", default_value = "operator")]
        actor: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum FxCommand {
    /// Record an exchange rate (audited ledger event): intents in BASE accepted after
    /// it are converted into QUOTE at this rate (SPEC §12.3).
    Set {
        /// `BASE/QUOTE`, e.g. `USD/BRL` (QUOTE per one BASE).
        pair: String,
        /// Decimal rate, e.g. `5.4321` (never a float: read exactly).
        rate: String,
        #[command(flatten)]
        db: DbArgs,
        /// Why (recorded in the audit trail), e.g. the source of the fixing.
        #[arg(long)]
        reason: String,
        /// Who (recorded in the audit trail).
        #[arg(long, env = "USER", default_value = "operator")]
        actor: String,
    },
}

pub fn run_fx(cmd: FxCommand) -> anyhow::Result<i32> {
    match cmd {
        FxCommand::Set {
            pair,
            rate,
            db,
            reason,
            actor,
        } => {
            let fx = crate::money::parse_fx_rate(&pair, &rate)?;
            let (base, quote, rate) = (fx.base.code, fx.quote.code, fx.rate);
            crate::money::check_fx_reason(&reason).context("--reason")?;
            runtime()?.block_on(async {
                let ledger = connect(&db, "fx").await?;
                let seq = ledger
                    .set_fx_rate(base, quote, rate, &actor, &reason, &Origin::cli("fx"))
                    .await?;
                println!("{base}/{quote} = {rate}: recorded as ledgerSeq {seq}");
                Ok(0)
            })
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

async fn connect(db: &DbArgs, instance: &str) -> anyhow::Result<Ledger> {
    Ok(Ledger::connect(&db.database_url, instance).await?)
}

/// [`connect`] with the key-encryption key of the subject keys.
async fn connect_with_kek(
    db: &DbArgs,
    instance: &str,
    key_wrap: Option<std::sync::Arc<crate::keywrap::KeyRing>>,
) -> anyhow::Result<Ledger> {
    let opts = ledger::ConnectOptions {
        key_wrap: key_wrap.map(|k| k as std::sync::Arc<dyn crate::keywrap::KeyWrap>),
        ..Default::default()
    };
    Ok(Ledger::connect_with(&db.database_url, instance, opts).await?)
}

pub fn run_db(cmd: DbCommand) -> anyhow::Result<i32> {
    match cmd {
        DbCommand::Migrate { db } => runtime()?.block_on(async {
            let pool = sqlx::PgPool::connect(&db.database_url).await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot connect to PostgreSQL ({e}); check --database-url / DATABASE_URL"
                )
            })?;
            ledger::migrate(&pool).await?;
            println!("migrations applied");
            Ok(0)
        }),
    }
}

pub fn run_ledger(cmd: LedgerCommand) -> anyhow::Result<i32> {
    match cmd {
        LedgerCommand::Submit(args) => runtime()?.block_on(submit(args)),
        LedgerCommand::Bench(args) => runtime()?.block_on(crate::cli::bench::ledger::run(
            &args.db.database_url,
            args.agents,
            args.intents,
            args.batch,
            args.concurrency,
            args.keep_database,
            crate::cli::bench::ledger::BenchPolicy {
                limits: args.limits,
                shadow: args.shadow,
            },
        )),
    }
}

async fn submit(args: SubmitArgs) -> anyhow::Result<i32> {
    let set = PolicySet::load_dir(&args.policies).map_err(|e| {
        anyhow::anyhow!("cannot load policies from {}: {e}", args.policies.display())
    })?;
    // Required even if no line carries personal data: finding out on line 10,000 that
    // the run cannot seal an account is worse than refusing now.
    let kek = args.kek.required()?;
    let ledger = connect_with_kek(&args.db, &args.instance, Some(kek)).await?;
    ledger.activate_policies(&set, "ledger-submit").await?;
    let reader: Box<dyn BufRead> = match &args.input {
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p)
                .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", p.display()))?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    let batch = args.batch.clamp(1, ledger::decide::MAX_BATCH);
    let mut out = std::io::stdout().lock();
    let mut pending: Vec<(crate::intent::SpendIntent, Origin)> = Vec::new();
    let mut failures = 0;
    for (n, line) in reader.split(b'\n').enumerate() {
        let line = line?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let origin = Origin {
            instance: args.instance.clone(),
            source: "cli".into(),
            partition: None,
            offset: Some(i64::try_from(n + 1).unwrap_or(i64::MAX)),
        };
        if is_settlement(line) {
            failures += flush(&ledger, &set, &mut pending, &mut out).await?;
            failures += settle_line(&ledger, &set, line, n + 1, &origin, &mut out).await?;
            continue;
        }
        match parse_intent(line) {
            Ok(intent) => {
                pending.push((intent, origin));
                if pending.len() >= batch {
                    failures += flush(&ledger, &set, &mut pending, &mut out).await?;
                }
            }
            Err(err) => {
                failures += flush(&ledger, &set, &mut pending, &mut out).await?;
                let seq = ledger.record_invalid_intent(line, &err, &origin).await?;
                failures += 1;
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"line": n + 1, "error": err, "ledgerSeq": seq})
                )?;
            }
        }
    }
    failures += flush(&ledger, &set, &mut pending, &mut out).await?;
    out.flush()?;
    Ok(if failures == 0 { 0 } else { 2 })
}

/// Whether a line is a settlement message: intents have no `type` field.
fn is_settlement(line: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(line)
        .is_ok_and(|m| m.contains_key("type"))
}

/// Applies one settlement line and prints its outcome (applied now or before) or its
/// refusal; returns the number of failures (0 or 1).
async fn settle_line(
    ledger: &Ledger,
    set: &PolicySet,
    line: &[u8],
    n: usize,
    origin: &Origin,
    out: &mut impl Write,
) -> anyhow::Result<usize> {
    let settlement = match parse_settlement(line) {
        Ok(s) => s,
        Err(err) => {
            let seq = ledger.record_invalid_settlement(line, &err, origin).await?;
            writeln!(
                out,
                "{}",
                serde_json::json!({"line": n, "error": err, "ledgerSeq": seq})
            )?;
            return Ok(1);
        }
    };
    match ledger.settle(set, &settlement, origin).await? {
        SettleResult::Applied { outcome, .. } | SettleResult::Redelivered { outcome } => {
            writeln!(out, "{}", serde_json::to_string(&outcome)?)?;
            Ok(0)
        }
        SettleResult::Refused { seq, code, detail } => {
            writeln!(
                out,
                "{}",
                serde_json::json!({"line": n, "settlementId": settlement.settlement_id,
                    "intentId": settlement.intent_id,
                    "error": {"code": code, "message": detail}, "ledgerSeq": seq})
            )?;
            Ok(1)
        }
    }
}

async fn flush(
    ledger: &Ledger,
    set: &PolicySet,
    pending: &mut Vec<(crate::intent::SpendIntent, Origin)>,
    out: &mut impl Write,
) -> anyhow::Result<usize> {
    if pending.is_empty() {
        return Ok(0);
    }
    let results = ledger.decide_batch(set, pending).await?;
    pending.clear();
    let mut failures = 0;
    for r in results {
        match r {
            Ok(d) => writeln!(out, "{}", serde_json::to_string(&d.message)?)?,
            Err(e) if e.code() == "idempotency_conflict" => {
                failures += 1;
                let (intent_id, existing_seq, audit_seq) = match &e {
                    LedgerError::IdempotencyConflict {
                        intent_id,
                        existing_seq,
                        audit_seq,
                    } => (intent_id.clone(), *existing_seq, *audit_seq),
                    _ => (String::new(), 0, 0),
                };
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"intentId": intent_id, "error": {"code": e.code(), "message": e.to_string()},
                        "existingLedgerSeq": existing_seq, "ledgerSeq": audit_seq})
                )?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    out.flush()?;
    Ok(failures)
}

pub fn run_audit(cmd: AuditCommand) -> anyhow::Result<i32> {
    match cmd {
        AuditCommand::Keygen { out } => {
            let public = super::service::write_new_key(
                &out,
                "spendguard checkpoint signing key: keep it away from the database host",
            )?;
            println!("checkpoint secret key written to {}", out.display());
            println!("public key (give it to auditors: audit verify --checkpoint-public-key ...):\n{public}");
            Ok(0)
        }
        AuditCommand::Checkpoint { db, key, dir, instance } => runtime()?.block_on(async {
            let key = crate::approvals::read_signing_key(&key).map_err(anyhow::Error::msg)?;
            let ledger = connect(&db, "audit").await?;
            let (max_seq, heads) = ledger.chain_heads().await?;
            let c = ledger::checkpoint::Checkpoint::sign(&instance, chrono::Utc::now(), max_seq, &heads, &key);
            let path = c.write_to(&dir)?;
            println!("checkpoint of {} chain heads (up to seq {max_seq}) written to {}", heads.len(), path.display());
            Ok(0)
        }),
        AuditCommand::VerifyVotes { db, from, to, json } => runtime()?.block_on(async {
            let ledger = connect(&db, "audit").await?;
            let a = ledger.audit_votes(from, to).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&a)?);
            } else {
                let status = if a.ok() { "OK" } else { "FAILED" };
                println!(
                    "audit verify-votes: {status} — {} accepted vote(s): {} signature(s) verified against the registry version in force, {} failed, {} recorded without a signature, {} without a registry version before them",
                    a.votes,
                    a.verified,
                    a.failures.len(),
                    a.without_proof,
                    a.without_registry.len()
                );
                for p in a.failures.iter().take(ledger::replay::MAX_LISTED) {
                    println!("  FAILED seq {}: intent {} approver {}: {}", p.seq, p.intent_id, p.approver_id, p.problem);
                }
                for p in a.without_registry.iter().take(ledger::replay::MAX_LISTED) {
                    println!("  unchecked seq {}: intent {} approver {}: {}", p.seq, p.intent_id, p.approver_id, p.problem);
                }
            }
            Ok(if a.ok() { 0 } else { 1 })
        }),
        AuditCommand::Verify { db, checkpoints, checkpoint_public_key } => runtime()?.block_on(async {
            let ledger = connect(&db, "audit").await?;
            let mut expected = match (&checkpoints, &checkpoint_public_key) {
                (Some(dir), Some(key)) => {
                    let key = ledger::checkpoint::parse_public_key(key).map_err(anyhow::Error::msg)?;
                    let read = ledger::checkpoint::read_dir(dir, &key)?;
                    if read.is_empty() {
                        anyhow::bail!("no checkpoint-*.json in {}: nothing to check against", dir.display());
                    }
                    Some(ledger::checkpoint::Expectations::new(&read)?)
                }
                _ => None,
            };
            let v = match expected.as_mut() {
                Some(e) => ledger.audit_verify_against(e).await?,
                None => ledger.audit_verify().await?,
            };
            if v.problems.is_empty() {
                let signed = expected
                    .map(|e| format!(", every position of {} signed checkpoint(s) matches", e.checkpoints))
                    .unwrap_or_default();
                println!("audit verify: OK — {} events, every hash chain intact, every chain head matches{signed} (vote signatures: audit verify-votes)", v.events);
                Ok(0)
            } else {
                let first = &v.problems[0];
                println!(
                    "audit verify: FAILED — first broken event: seq {} (chain {}, position {}): {}",
                    first.seq, first.chain_id, first.chain_pos, first.problem
                );
                for p in v.problems.iter().skip(1).take(ledger::replay::MAX_LISTED) {
                    println!("  also: seq {} (chain {}, position {}): {}", p.seq, p.chain_id, p.chain_pos, p.problem);
                }
                println!("{} problem(s) in {} events", v.problems.len(), v.events);
                Ok(1)
            }
        }),
    }
}

/// Blocks of 128 KiB and more (replay's hash tables) are mapped apart and unmapped
/// when freed, so the tables a growing map leaves behind do not stay resident. glibc
/// raises this threshold as large blocks are freed; kept fixed, replay's peak RSS on
/// 150,000 events fell by ~5 MB at the same heap (SPEC §10's memory target).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn map_large_blocks_apart() {
    unsafe extern "C" {
        fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    }
    const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
    // SAFETY: mallopt only sets glibc's allocation policy; it is called before the
    // runtime starts any thread.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn map_large_blocks_apart() {}

pub fn run_replay(args: ReplayArgs) -> anyhow::Result<i32> {
    map_large_blocks_apart();
    runtime()?.block_on(async {
        let ledger = connect_with_kek(&args.db, "replay", args.kek.load()?).await?;
        let report = ledger.replay(args.verify).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!(
                "replay: {} events, {} decisions{}; {} projection difference(s), {} chain problem(s){}",
                report.events,
                report.decisions,
                if args.verify {
                    format!(
                        ", {} re-evaluated, {} did not reproduce ({} with erased personal data{})",
                        report.decisions_reevaluated, report.decision_mismatch_count, report.erased_personal_data,
                        if report.personal_data_not_opened > 0 {
                            format!(", {} with personal data not opened: no KEK given", report.personal_data_not_opened)
                        } else {
                            String::new()
                        }
                    )
                } else {
                    String::new()
                },
                report.projection_difference_count,
                report.chain_problems.len(),
                if report.ok() { " — OK" } else { " — FAILED" }
            );
            for m in &report.decision_mismatches {
                println!("  decision: {m}");
            }
            for d in &report.projection_differences {
                println!("  projection: {d}");
            }
            for p in &report.chain_problems {
                println!("  chain: seq {} ({} pos {}): {}", p.seq, p.chain_id, p.chain_pos, p.problem);
            }
        }
        Ok(if report.ok() { 0 } else { 1 })
    })
}

pub fn run_privacy(cmd: PrivacyCommand) -> anyhow::Result<i32> {
    match cmd {
        PrivacyCommand::Forget { subject, db, actor } => runtime()?.block_on(async {
            let ledger = connect(&db, "privacy").await?;
            let (seq, keys) = ledger
                .forget_subject(&subject, &actor, &Origin::cli("privacy"))
                .await?;
            println!("subject {subject:?}: {keys} key(s) destroyed; recorded as ledgerSeq {seq}");
            Ok(0)
        }),
        PrivacyCommand::KekGen { out } => {
            let kek = crate::keywrap::LocalKek::generate();
            write_kek_file(&out, &kek)?;
            println!("KEK {} written to {}", crate::keywrap::KeyWrap::kek_id(&kek), out.display());
            println!("configure it as kek_file / SPENDGUARD_KEK_FILE; keep it off the database host and out of its backups");
            Ok(0)
        }
        PrivacyCommand::RotateKek { db, kek, new_kek_file, batch, actor } => runtime()?.block_on(async {
            use crate::keywrap::KeyWrap as _;
            let from = kek.required()?;
            let to = crate::keywrap::LocalKek::from_file(&new_kek_file)?;
            // No key wrap on the connection: the rotation itself wraps legacy clear
            // keys, straight under the new KEK.
            let ledger = connect(&db, "privacy").await?;
            let done = ledger
                .rewrap_subject_keys(from.as_ref(), &to, batch, &actor, &Origin::cli("privacy"))
                .await?;
            println!(
                "{} subject key(s) re-wrapped under {} in {} batch(es){}",
                done.keys,
                to.kek_id(),
                done.batches,
                match (done.seqs.first(), done.seqs.last()) {
                    (Some(a), Some(b)) => format!(", recorded as ledgerSeq {a}..{b}"),
                    _ => String::new(),
                }
            );
            if done.remaining > 0 {
                println!(
                    "{} key(s) are still wrapped by another KEK (written meanwhile by an instance whose kek_file is not {}): configure every instance with the new KEK and run this again",
                    done.remaining,
                    new_kek_file.display()
                );
                return Ok(1);
            }
            println!(
                "every subject key is wrapped by {}: configure kek_file = {} everywhere, then destroy the old KEK",
                to.kek_id(),
                new_kek_file.display()
            );
            Ok(0)
        }),
    }
}

/// Writes a new KEK file readable by its owner only; refuses to overwrite (a lost KEK
/// is every subject's personal data lost).
fn write_kek_file(path: &std::path::Path, kek: &crate::keywrap::LocalKek) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| {
        format!(
            "cannot create KEK file {} (it must not exist yet)",
            path.display()
        )
    })?;
    writeln!(
        file,
        "# spendguard key-encryption key {}: keep it off the database host\n{}",
        crate::keywrap::KeyWrap::kek_id(kek),
        kek.to_base64()
    )?;
    file.sync_all()?;
    Ok(())
}
