//! `spendguard ledger bench`: decide throughput and latency against a real PostgreSQL.
//! Creates a scratch database next to the one in the URL, decides N synthetic intents
//! (spread over A agents) in batches from C concurrent deciders, and reports
//! decisions/s and per-batch latency percentiles. Then it settles ALLOWed intents
//! (SPEC §11, through `Ledger::settle`, the path `serve` takes, from C concurrent
//! settlers) with loadgen's lifecycle mix until lifecycle events are a third of the
//! ledger (one settlement per two decisions; fewer when fewer intents were allowed),
//! reporting settlements/s, so the audit and replay that follow run on a ledger like
//! SPEC §10's replay target describes. Results go in docs/benchmarks.md.

use super::loadgen::{LifecycleMix, Step};
use crate::decision::Effect;
use crate::intent::{Beneficiary, Purpose, SpendIntent};
use crate::ledger::settle::SettleResult;
use crate::ledger::{self, Ledger, Origin};
use crate::policy::PolicySet;
use crate::settlement::Settlement;
use rust_decimal::Decimal;
use std::sync::Arc;
use std::time::Instant;

/// Policy used by the benchmark: caps high enough that most intents are allowed, with
/// some needing approval (realistic write mix: commits, reservations, pending rows).
pub const BENCH_POLICY: &str = r#"
name: bench
description: ledger benchmark
currency: BRL
timezone: America/Sao_Paulo
caps: { perTxn: "5000.00", daily: "100000.00", monthly: "1000000.00" }
msig: { threshold: { higherThan: "4000.00", approvals: 2 } }
"#;

pub const BENCH_BINDINGS: &str = "default: bench\n";

/// Limits added to the bench policy (`--limits`, issue 11): what limits cost a decision,
/// and what entity scope costs on top (an entity-scoped limit takes the entity's lock,
/// so the entity's agents decide one transaction at a time, and loads the entity's
/// records). Both variants have two limits, set so high that no decision changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BenchLimits {
    /// The bench policy as it was: caps only.
    #[default]
    None,
    /// A calendar-day amount limit and a trailing-24h count limit, both per agent.
    Agent,
    /// The same two limits, the trailing-24h count summed over the entity.
    Entity,
}

impl BenchLimits {
    fn yaml(self) -> &'static str {
        match self {
            BenchLimits::None => "",
            BenchLimits::Agent => {
                "limits:\n  - { name: day, window: { calendar: day }, amount: \"1000000000.00\" }\n  - { name: burst, window: { trailing: 24h }, count: 100000000 }\n"
            }
            BenchLimits::Entity => {
                "limits:\n  - { name: day, window: { calendar: day }, amount: \"1000000000.00\" }\n  - { name: burst, window: { trailing: 24h }, count: 100000000, scope: entity }\n"
            }
        }
    }
}

/// A stricter candidate bound in shadow to every bench agent (`--shadow`, SPEC §16): what
/// shadow evaluation costs a decision. Its lower caps change some would-be decisions, so
/// the recorded shadow results are not all equal to the enforced ones.
const SHADOW_CANDIDATE: &str = r#"
name: bench-candidate
description: ledger benchmark, shadow candidate
currency: BRL
timezone: America/Sao_Paulo
caps: { perTxn: "2500.00", daily: "50000.00", monthly: "1000000.00" }
msig: { threshold: { higherThan: "2000.00", approvals: 2 } }
"#;

/// What the bench policy set holds besides the caps: limits, and a shadow candidate.
#[derive(Debug, Clone, Copy, Default)]
pub struct BenchPolicy {
    pub limits: BenchLimits,
    pub shadow: bool,
}

/// The bench set with [`SHADOW_CANDIDATE`] in shadow beside the enforced policy.
pub fn bench_policies_shadowed(
    dir: &std::path::Path,
    limits: BenchLimits,
) -> anyhow::Result<PolicySet> {
    bench_policies_with(dir, limits)?;
    std::fs::write(dir.join("bench-candidate.yaml"), SHADOW_CANDIDATE)?;
    std::fs::write(
        dir.join("bindings.yaml"),
        format!("{BENCH_BINDINGS}shadow:\n  entities:\n    \"acme-*\": bench-candidate\n"),
    )?;
    PolicySet::load_dir(dir).map_err(|e| anyhow::anyhow!("bench policy does not load: {e}"))
}

/// Writes the bench policy set into `dir` and loads it.
pub fn bench_policies(dir: &std::path::Path) -> anyhow::Result<PolicySet> {
    bench_policies_with(dir, BenchLimits::None)
}

/// The bench policy set with `limits` added.
pub fn bench_policies_with(
    dir: &std::path::Path,
    limits: BenchLimits,
) -> anyhow::Result<PolicySet> {
    std::fs::write(
        dir.join("bench.yaml"),
        format!("{BENCH_POLICY}{}", limits.yaml()),
    )?;
    std::fs::write(dir.join("bindings.yaml"), BENCH_BINDINGS)?;
    PolicySet::load_dir(dir).map_err(|e| anyhow::anyhow!("bench policy does not load: {e}"))
}

/// The amount of synthetic intent `i`, in centavos: 1.00 to 4,500.99 BRL.
pub fn synthetic_amount_minor(i: usize) -> i64 {
    i64::try_from(100 + (i * 7919) % 450_000).unwrap_or(100)
}

pub fn synthetic_intent(run: &str, i: usize, agents: usize) -> SpendIntent {
    let amount = Decimal::new(synthetic_amount_minor(i), 2);
    SpendIntent {
        intent_id: format!("{run}-{i}"),
        agent_id: format!("agent-{}", i % agents.max(1)),
        entity_id: "acme-br".into(),
        amount,
        currency: "BRL".into(),
        category: "utility".into(),
        beneficiary: Beneficiary {
            id: format!("ben-{}", i % 97),
            account: i.is_multiple_of(4).then(|| "4111111111111111".to_string()),
            country: Some("BR".into()),
        },
        purpose: Purpose::Pix,
        metadata: None,
    }
}

pub async fn run(
    database_url: &str,
    agents: usize,
    intents: usize,
    batch: usize,
    concurrency: usize,
    keep_database: bool,
    policy: BenchPolicy,
) -> anyhow::Result<i32> {
    let BenchPolicy { limits, shadow } = policy;
    let dir = std::env::temp_dir().join(format!("spendguard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let set = Arc::new(if shadow {
        bench_policies_shadowed(&dir, limits)?
    } else {
        bench_policies_with(&dir, limits)?
    });
    // A scratch database so the numbers do not depend on what else is in the ledger.
    let admin = sqlx::PgPool::connect(database_url).await?;
    let db_name = format!("spendguard_bench_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
        .execute(&admin)
        .await?;
    let url = replace_db(database_url, &db_name);
    // A KEK for this scratch database only: its subject keys are never read again.
    let opts = ledger::ConnectOptions {
        max_connections: u32::try_from(concurrency.max(1)).unwrap_or(8),
        migrate: true,
        key_wrap: Some(std::sync::Arc::new(crate::keywrap::LocalKek::generate())),
        ..Default::default()
    };
    let ledger = Arc::new(Ledger::connect_with(&url, "bench", opts).await?);
    ledger.activate_policies(&set, "bench").await?;

    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let batch = batch.clamp(1, ledger::decide::MAX_BATCH);
    let all: Vec<SpendIntent> = (0..intents)
        .map(|i| synthetic_intent(&run_id, i, agents))
        .collect();
    let chunks: Vec<Vec<(SpendIntent, Origin)>> = all
        .chunks(batch)
        .map(|c| {
            c.iter()
                .map(|i| (i.clone(), Origin::cli("bench")))
                .collect()
        })
        .collect();
    let queue = Arc::new(std::sync::Mutex::new(chunks.into_iter()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (ledger, set, queue) = (ledger.clone(), set.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies_us = Vec::new();
            let mut allowed = Vec::new();
            loop {
                let next = queue.lock().ok().and_then(|mut q| q.next());
                let Some(chunk) = next else { break };
                let t = Instant::now();
                let decided = ledger.decide_batch(&set, &chunk).await?;
                latencies_us.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                for d in decided.into_iter().flatten() {
                    if d.message.effect == Effect::Allow {
                        allowed.push(d.message.intent_id);
                    }
                }
            }
            anyhow::Ok((latencies_us, allowed))
        }));
    }
    let mut lat = Vec::new();
    let mut allowed = Vec::new();
    for t in tasks {
        let (l, a) = t.await??;
        lat.extend(l);
        allowed.extend(a);
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "decide bench: {intents} intents, {agents} agents of one entity, limits {limits:?}, shadow {shadow}, batch {batch}, concurrency {concurrency}: {:.0} decisions/s; batch latency ms p50 {:.2} p95 {:.2} p99 {:.2} max {:.2}",
        intents as f64 / secs,
        pct(0.50),
        pct(0.95),
        pct(0.99),
        pct(1.0)
    );
    settle_phase(&ledger, &set, &run_id, allowed, intents, concurrency).await?;
    let verify = ledger.audit_verify().await?;
    println!(
        "audit verify of the bench ledger: {} events, {} problems",
        verify.events,
        verify.problems.len()
    );
    // Replay of what was just written: re-evaluates every decision, rebuilds every
    // projection and re-hashes every chain (SPEC §10: >= 100,000 events/s).
    let t = Instant::now();
    let replayed = ledger.replay(true).await?;
    let replay_secs = t.elapsed().as_secs_f64();
    println!(
        "replay --verify of the bench ledger: {} events ({} lifecycle) in {:.2} s = {:.0} events/s; {}",
        replayed.events,
        lifecycle_events(&url).await?,
        replay_secs,
        replayed.events as f64 / replay_secs.max(f64::EPSILON),
        if replayed.ok() {
            "reproduced exactly".to_string()
        } else {
            format!(
                "{} mismatches, {} projection differences, {} chain problems",
                replayed.decision_mismatch_count,
                replayed.projection_difference_count,
                replayed.chain_problems.len()
            )
        }
    );
    if let Some(kib) = peak_rss_kib() {
        println!(
            "peak RSS of this process (bench data + ledger client + replay): {} MiB",
            kib / 1024
        );
    }
    ledger.close().await;
    if keep_database {
        println!("bench database kept: {url}");
    } else {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {db_name}")))
            .execute(&admin)
            .await?;
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(0)
}

/// Settles ALLOWed intents with loadgen's default lifecycle mix (each intent's steps in
/// order, intents spread over `concurrency` settlers) until there is one settlement per
/// two intents decided, and prints settlements/s and per-settlement latency.
async fn settle_phase(
    ledger: &Arc<Ledger>,
    set: &Arc<PolicySet>,
    run_id: &str,
    mut allowed: Vec<String>,
    intents: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    // The intent ids are `{run}-{i}`: sort by i so the plans do not depend on which
    // decider finished first.
    let index = |id: &str| {
        id.rsplit('-')
            .next()
            .and_then(|i| i.parse::<usize>().ok())
            .unwrap_or(0)
    };
    allowed.sort_by_key(|id| index(id));
    let mix = LifecycleMix::default();
    let target = intents / 2;
    let mut jobs: Vec<(String, Vec<Step>)> = Vec::new();
    let mut planned = 0;
    for id in allowed {
        if planned >= target {
            break;
        }
        let i = index(&id);
        // A spread-out roll, so consecutive intents get different plans.
        let roll = u32::try_from(i.wrapping_mul(37) % 100).unwrap_or(0);
        let steps = mix.pick(roll).steps(synthetic_amount_minor(i));
        planned += steps.len();
        jobs.push((id, steps));
    }
    let queue = Arc::new(std::sync::Mutex::new(jobs.into_iter()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (ledger, set, queue) = (ledger.clone(), set.clone(), queue.clone());
        let run_id = run_id.to_string();
        tasks.push(tokio::spawn(async move {
            let mut latencies_us = Vec::new();
            let mut refused = 0u64;
            loop {
                let next = queue.lock().ok().and_then(|mut q| q.next());
                let Some((intent_id, steps)) = next else {
                    break;
                };
                for (n, step) in steps.iter().enumerate() {
                    let settlement = Settlement {
                        settlement_id: format!("{run_id}-s-{intent_id}-{n}"),
                        intent_id: intent_id.clone(),
                        kind: step.kind,
                        amount: step.amount_minor.map(|m| Decimal::new(m, 2)),
                        currency: step.amount_minor.map(|_| "BRL".to_string()),
                        is_final: step.is_final,
                        occurred_at: None,
                        metadata: None,
                    };
                    let t = Instant::now();
                    let result = ledger
                        .settle(&set, &settlement, &Origin::cli("bench"))
                        .await?;
                    latencies_us.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                    if matches!(result, SettleResult::Refused { .. }) {
                        refused += 1;
                    }
                }
            }
            anyhow::Ok((latencies_us, refused))
        }));
    }
    let mut lat = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let (l, r) = t.await??;
        lat.extend(l);
        refused += r;
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "settle bench: {} settlements ({refused} refused), concurrency {concurrency}: {:.0} settlements/s; latency ms p50 {:.2} p95 {:.2} p99 {:.2} max {:.2}",
        lat.len(),
        lat.len() as f64 / secs.max(f64::EPSILON),
        pct(0.50),
        pct(0.95),
        pct(0.99),
        pct(1.0)
    );
    if refused > 0 {
        anyhow::bail!("{refused} settlements of the bench's own mix were refused");
    }
    Ok(())
}

/// Lifecycle events in the ledger at `url` (settlements applied or refused, expiries).
async fn lifecycle_events(url: &str) -> anyhow::Result<i64> {
    use crate::ledger::events::EventKind;
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let kinds = [
        EventKind::SettlementApplied,
        EventKind::SettlementRefused,
        EventKind::AuthorizationExpired,
    ]
    .map(|k| k.as_str().to_string());
    let n = sqlx::query_scalar("SELECT count(*) FROM ledger_event WHERE event_type = ANY($1)")
        .bind(&kinds[..])
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    Ok(n)
}

/// The process's peak resident set (`VmHWM` of /proc/self/status), Linux only.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The URL with its database name replaced.
pub fn replace_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    match base.rsplit_once('/') {
        Some((host, _)) if host.contains("://") && !host.ends_with('/') => {
            format!("{host}/{db}{query}")
        }
        _ => format!("{base}/{db}{query}"),
    }
}
