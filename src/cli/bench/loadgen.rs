//! `spendguard loadgen`: offers intents at a fixed rate, waits for their decisions, and
//! reports throughput and produce→decision latency (HDR histogram) next to a bare-broker
//! baseline (produce→consume of the same kind of messages, no spendguard) measured in the
//! same run, so the ratio means something on a noisy machine.

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::Message;
use rdkafka::consumer::StreamConsumer;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bus::{self, Topics};
use crate::config::{ServiceArgs, Settings};

/// Highest latency the histogram records (longer ones are clamped), in microseconds.
const MAX_LATENCY_US: u64 = 120_000_000;
/// How often the rate loop wakes to send what is due.
const TICK_MS: u64 = 1;
/// Back-off when the client's local queue is full.
const QUEUE_FULL_BACKOFF_MS: u64 = 2;
/// A phase counts as sustained when it received everything it sent and its achieved
/// rate is at least this share of the offered rate.
const SUSTAINED_SHARE: f64 = 0.95;

#[derive(Debug, Clone, Args)]
pub struct LoadgenArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Offered intents per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds of load per phase.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Distinct agents the intents are spread over.
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// Entity of every generated intent (must be bound to a policy).
    #[arg(long, default_value = "acme-br")]
    pub entity: String,
    /// Currency of every generated intent.
    #[arg(long, default_value = "BRL")]
    pub currency: String,
    /// Seconds to wait for the last answers after the load stops.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout: u64,
    /// Skip the bare-broker baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Only measure the bare broker (no spendguard needed).
    #[arg(long, conflicts_with = "no_baseline")]
    pub baseline_only: bool,
    /// `text` or `json` (one JSON object with both phases).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
    /// Seed of the intent mix (same seed, same amounts and categories).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// What one phase measured.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseReport {
    pub phase: String,
    pub offered_rate: u64,
    pub sent: u64,
    pub send_errors: u64,
    pub received: u64,
    pub achieved_per_s: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub sustained: bool,
    /// Decisions by effect (pipeline phase only).
    pub effects: std::collections::BTreeMap<String, u64>,
}

/// Beneficiaries on the example policies' allow-list (`policies/`): payments to them can
/// be allowed outright; any other beneficiary needs a human.
const KNOWN_BENEFICIARIES: [&str; 4] = [
    "utility:light_company",
    "utility:water_company",
    "tax:receita_federal",
    "bank:itau",
];

/// The realistic mix, against the example policies: mostly small payments to known
/// beneficiaries (allowed until the agent's daily cap, then held for a human), some to
/// new beneficiaries (a human verifies), some large ones (two approvers, or over the
/// per-transaction cap), blocked categories and foreign beneficiaries (denied).
pub fn make_intent(
    rng: &mut StdRng,
    agents: usize,
    entity: &str,
    currency: &str,
) -> (String, String, Vec<u8>) {
    let intent_id = uuid::Uuid::now_v7().to_string();
    let agent = format!("lg-agent-{}", rng.gen_range(0..agents.max(1)));
    let roll: u32 = rng.gen_range(0..100);
    let known = KNOWN_BENEFICIARIES[rng.gen_range(0..KNOWN_BENEFICIARIES.len())];
    let new_vendor =
        |rng: &mut StdRng, category: &str| format!("{category}:vendor-{}", rng.gen_range(0..50));
    let (amount_minor, category, beneficiary, country) = match roll {
        0..70 => (
            rng.gen_range(1_000..20_000),
            "utility",
            known.to_string(),
            "BR",
        ),
        70..78 => (
            rng.gen_range(1_000..20_000),
            "supplies",
            new_vendor(rng, "supplies"),
            "BR",
        ),
        78..86 => (
            rng.gen_range(30_100..49_000),
            "services",
            known.to_string(),
            "BR",
        ),
        86..90 => (
            rng.gen_range(60_000..2_000_000),
            "services",
            known.to_string(),
            "BR",
        ),
        90..95 => (
            rng.gen_range(1_000..20_000),
            "gambling",
            new_vendor(rng, "gambling"),
            "BR",
        ),
        _ => (
            rng.gen_range(1_000..20_000),
            "utility",
            known.to_string(),
            "US",
        ),
    };
    let amount = format!("{}.{:02}", amount_minor / 100, amount_minor % 100);
    let body = serde_json::json!({
        "intentId": intent_id,
        "agentId": agent,
        "entityId": entity,
        "amount": amount,
        "currency": currency,
        "category": category,
        "beneficiary": {"id": beneficiary, "country": country},
        "purpose": "PIX",
    });
    (intent_id, agent, body.to_string().into_bytes())
}

pub async fn run(settings: &Settings, args: &LoadgenArgs) -> anyhow::Result<i32> {
    let topics = Topics::with_prefix(&settings.topic_prefix);
    let baseline_topic = format!("{}loadgen.baseline", settings.topic_prefix);
    let mut layout = topics.layout(settings);
    layout.push((baseline_topic.clone(), settings.intent_partitions));
    bus::ensure_topics(&settings.brokers, &layout).await?;

    let mut reports = Vec::new();
    if !args.no_baseline {
        reports.push(phase("baseline", settings, args, &baseline_topic, &baseline_topic).await?);
    }
    if !args.baseline_only {
        reports.push(
            phase(
                "pipeline",
                settings,
                args,
                &topics.intents,
                &topics.decisions,
            )
            .await?,
        );
    }
    print_reports(&reports, args)?;
    Ok(0)
}

fn print_reports(reports: &[PhaseReport], args: &LoadgenArgs) -> anyhow::Result<()> {
    let ratio = match (
        reports.iter().find(|r| r.phase == "baseline"),
        reports.iter().find(|r| r.phase == "pipeline"),
    ) {
        (Some(b), Some(p)) if b.achieved_per_s > 0.0 => Some(p.achieved_per_s / b.achieved_per_s),
        _ => None,
    };
    if args.format == "json" {
        let out = serde_json::json!({
            "rate": args.rate, "durationS": args.duration, "agents": args.agents,
            "phases": reports, "pipelineToBaselineThroughput": ratio,
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "offered {}/s for {} s over {} agents",
        args.rate, args.duration, args.agents
    );
    println!(
        "{:<9} {:>8} {:>8} {:>11} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "phase",
        "sent",
        "received",
        "achieved/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "sustained"
    );
    for r in reports {
        println!(
            "{:<9} {:>8} {:>8} {:>11.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9}",
            r.phase,
            r.sent,
            r.received,
            r.achieved_per_s,
            r.p50_ms,
            r.p95_ms,
            r.p99_ms,
            r.max_ms,
            r.sustained
        );
        if !r.effects.is_empty() {
            println!("          effects: {:?}", r.effects);
        }
        if r.send_errors > 0 {
            println!("          send errors: {}", r.send_errors);
        }
    }
    if let Some(ratio) = ratio {
        println!("pipeline/baseline throughput: {:.0}%", ratio * 100.0);
    }
    Ok(())
}

type Pending = Arc<Mutex<HashMap<String, Instant>>>;

/// What the collector saw, shared with the phase that reads it after the drain.
struct Collected {
    hist: Histogram<u64>,
    last_receive: Option<Instant>,
    effects: std::collections::BTreeMap<String, u64>,
}

async fn phase(
    name: &str,
    settings: &Settings,
    args: &LoadgenArgs,
    produce_to: &str,
    consume_from: &str,
) -> anyhow::Result<PhaseReport> {
    let consumer = bus::standalone_consumer(&settings.brokers)?;
    // Start exactly at the current end of the topic so nothing produced from now on is missed.
    bus::assign_at_high_watermarks(&consumer, &settings.brokers, consume_from)?;
    let producer = bus::client_producer(&settings.brokers)?;
    let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
    let hist = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).context("histogram bounds")?;
    let collected = Arc::new(Mutex::new(Collected {
        hist,
        last_receive: None,
        effects: Default::default(),
    }));

    let collector = tokio::spawn(collect(consumer, pending.clone(), collected.clone()));
    let started = Instant::now();
    let (sent, send_errors) = offer(&producer, produce_to, args, &pending).await;

    // Wait until every answer arrived or the drain timeout passed.
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_timeout);
    while !lock(&pending).is_empty() && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    collector.abort();
    let c = lock(&collected);
    let elapsed = c
        .last_receive
        .map_or(started.elapsed(), |t| t.duration_since(started));
    let received = c.hist.len();
    let achieved = if elapsed.as_secs_f64() > 0.0 {
        received as f64 / elapsed.as_secs_f64()
    } else {
        0.0
    };
    let ms = |q: f64| c.hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(PhaseReport {
        phase: name.to_string(),
        offered_rate: args.rate,
        sent,
        send_errors,
        received,
        achieved_per_s: achieved,
        p50_ms: ms(0.50),
        p95_ms: ms(0.95),
        p99_ms: ms(0.99),
        max_ms: c.hist.max() as f64 / 1000.0,
        sustained: received == sent
            && send_errors == 0
            && achieved >= args.rate as f64 * SUSTAINED_SHARE,
        effects: c.effects.clone(),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends `rate` messages per second for `duration` seconds; returns (sent, failed).
async fn offer(
    producer: &FutureProducer,
    topic: &str,
    args: &LoadgenArgs,
    pending: &Pending,
) -> (u64, u64) {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let total = args.rate.saturating_mul(args.duration);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Deliveries are awaited off the rate loop so a slow acknowledgement never slows
    // the offered rate.
    let deliveries = tokio::spawn(async move {
        let mut failed = 0u64;
        let mut in_flight = futures::stream::FuturesUnordered::new();
        loop {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(f) => in_flight.push(f),
                    None => break,
                },
                Some(result) = in_flight.next(), if !in_flight.is_empty() => {
                    if !matches!(result, Ok(Ok(_))) { failed += 1; }
                }
            }
        }
        while let Some(result) = in_flight.next().await {
            if !matches!(result, Ok(Ok(_))) {
                failed += 1;
            }
        }
        failed
    });
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(TICK_MS));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0u64;
    while sent < total {
        ticker.tick().await;
        let due = ((started.elapsed().as_secs_f64() * args.rate as f64) as u64).min(total);
        while sent < due {
            let (intent_id, agent, payload) =
                make_intent(&mut rng, args.agents, &args.entity, &args.currency);
            lock(pending).insert(intent_id.clone(), Instant::now());
            loop {
                let record = FutureRecord::to(topic)
                    .key(agent.as_bytes())
                    .payload(&payload);
                match producer.send_result(record) {
                    Ok(delivery) => {
                        let _ = tx.send(delivery);
                        break;
                    }
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull,
                        ),
                        _,
                    )) => {
                        tokio::time::sleep(Duration::from_millis(QUEUE_FULL_BACKOFF_MS)).await;
                    }
                    Err(_) => {
                        lock(pending).remove(&intent_id);
                        break;
                    }
                }
            }
            sent += 1;
        }
    }
    drop(tx);
    let failed = deliveries.await.unwrap_or(0);
    (sent, failed)
}

/// Reads answers (decisions, or the baseline's own messages) and records the latency of
/// the ones this run is waiting for. Outcome messages and foreign traffic are ignored.
async fn collect(consumer: StreamConsumer, pending: Pending, collected: Arc<Mutex<Collected>>) {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "intentId")]
        intent_id: String,
        #[serde(default)]
        effect: Option<String>,
        #[serde(default)]
        outcome: Option<String>,
    }
    let mut stream = consumer.stream();
    while let Some(msg) = stream.next().await {
        let Ok(msg) = msg else { continue };
        let now = Instant::now();
        let Some(answer) = msg
            .payload()
            .and_then(|p| serde_json::from_slice::<Answer>(p).ok())
        else {
            continue;
        };
        if answer.outcome.is_some() {
            continue;
        }
        let Some(sent_at) = lock(&pending).remove(&answer.intent_id) else {
            continue;
        };
        let latency_us = now
            .duration_since(sent_at)
            .as_micros()
            .clamp(1, u128::from(MAX_LATENCY_US)) as u64;
        let mut c = lock(&collected);
        let _ = c.hist.record(latency_us);
        c.last_receive = Some(now);
        if let Some(effect) = answer.effect {
            *c.effects.entry(effect).or_insert(0) += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_valid_intents_and_deterministic() {
        let mut a = StdRng::seed_from_u64(7);
        let mut categories = std::collections::BTreeSet::new();
        for _ in 0..500 {
            let (id, agent, bytes) = make_intent(&mut a, 10, "acme-br", "BRL");
            let intent = crate::intent::parse_intent(&bytes).expect("loadgen makes valid intents");
            assert_eq!(intent.intent_id, id);
            assert_eq!(intent.agent_id, agent);
            categories.insert(intent.category);
        }
        assert!(
            categories.contains("gambling") && categories.contains("utility"),
            "{categories:?}"
        );
        let (_, agent1, _) = make_intent(&mut StdRng::seed_from_u64(9), 1000, "e", "BRL");
        let (_, agent2, _) = make_intent(&mut StdRng::seed_from_u64(9), 1000, "e", "BRL");
        assert_eq!(agent1, agent2);
    }

    /// Against the example policy an agent starts from zero usage: the mix must then
    /// produce every effect, with ALLOW the most common (a mix that is all approvals or
    /// all denials measures a different product).
    #[test]
    fn the_mix_exercises_every_effect_of_the_example_policy_and_mostly_allows() {
        use crate::decision::{Effect, KillState, Usage};
        use crate::policy::{CompiledPolicy, EvalInput, evaluate};
        let path = "policies/conservative-brazilian-agent.json";
        let text = std::fs::read_to_string(path).unwrap();
        let policy = CompiledPolicy::parse(&text, path).unwrap();
        let mut counts: std::collections::BTreeMap<Effect, u32> = Default::default();
        let mut rng = StdRng::seed_from_u64(42);
        for _ in 0..1000 {
            let (_, _, bytes) = make_intent(&mut rng, 10, "acme-br", "BRL");
            let intent = crate::intent::parse_intent(&bytes).unwrap();
            let e = evaluate(
                &policy,
                &EvalInput {
                    intent: &intent,
                    usage: Usage::default(),
                    kill: &KillState::Off,
                    accepted_at: chrono::Utc::now(),
                },
            );
            *counts.entry(e.effect).or_default() += 1;
        }
        for effect in [
            Effect::Allow,
            Effect::RequireHitl,
            Effect::RequireMsig,
            Effect::Deny,
        ] {
            assert!(counts.get(&effect).copied().unwrap_or(0) > 20, "{counts:?}");
        }
        let allow = counts[&Effect::Allow];
        assert!(counts.values().all(|&n| n <= allow), "{counts:?}");
    }
}
