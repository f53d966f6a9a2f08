//! `spendguard loadgen`: offers intents at a fixed rate, waits for their decisions, and
//! reports throughput and produce→decision latency (HDR histogram) next to a bare-broker
//! baseline (produce→consume of the same kind of messages, no spendguard) measured in the
//! same run, so the ratio means something on a noisy machine.
//!
//! With the lifecycle mix (on unless `--no-lifecycle`, SPEC §11), the pipeline phase acts
//! like a payment service: after each ALLOW decision arrives it publishes settlements for
//! the intent on `spend.settlements` (key = agentId) following [`DEFAULT_LIFECYCLE_MIX`],
//! and reports settlement→outcome latency, settlements/s, and every settlement that did
//! not yield exactly one outcome (CAPTURED / VOIDED / REFUNDED with its settlementId):
//! lost, duplicated or refused (dead-lettered) settlements make loadgen exit with 1.

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::webhook_sink::{WebhookReport, WebhookSink};
use crate::bus::{self, Topics};
use crate::config::{ServiceArgs, Settings};
use crate::settlement::SettlementType;

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
    /// Do not settle ALLOWed intents (intents and decisions only, as before issue 10).
    #[arg(long)]
    pub no_lifecycle: bool,
    /// Percent of ALLOWs per settlement plan: full capture, partial capture then final,
    /// void, capture then refund (four numbers summing to 100).
    #[arg(long, default_value = DEFAULT_LIFECYCLE_MIX_ARG, value_parser = LifecycleMix::parse)]
    pub lifecycle_mix: LifecycleMix,
    /// Offer the intents to `POST /v1/intents` at this base URL (`http://127.0.0.1:8080`)
    /// instead of Kafka, and report request latency (SPEC §13.4); no broker needed.
    #[arg(long, value_name = "URL")]
    pub http: Option<String>,
    /// Bearer token of a `payment_service` API token, for `--http`.
    #[arg(long, env = "SPENDGUARD_LOADGEN_TOKEN", requires = "http")]
    pub http_token: Option<String>,
    /// Most HTTP connections open at once (`--http`; keep-alive, reused).
    #[arg(long, default_value_t = 64)]
    pub http_connections: usize,
    /// Also receive serve's webhooks on this address (`127.0.0.1:18090`; a webhook of
    /// notifications.yaml must point at it): verifies each signature, counts deliveries
    /// by event, and reports decision delivery latency (intent sent → delivery received).
    #[arg(long, value_name = "ADDR", requires = "webhook_secret_env", conflicts_with_all = ["http", "baseline_only"])]
    pub webhook_sink: Option<String>,
    /// Name of the environment variable holding the webhook's secret (its `secret_env`).
    #[arg(long, value_name = "VAR", requires = "webhook_sink")]
    pub webhook_secret_env: Option<String>,
}

/// What one phase measured.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseReport {
    pub phase: String,
    pub offered_rate: u64,
    pub sent: u64,
    pub send_errors: u64,
    /// Answers the live consumer received (the latency percentiles are theirs).
    pub received: u64,
    /// Answers the live consumer missed but that are on the topic: found when loadgen
    /// re-read the topic after the drain, from the offsets the phase started at. Delivered
    /// by the pipeline; not in the percentiles. A count above zero points at the broker or
    /// the consumer, not at serve.
    pub recovered: u64,
    /// Messages sent with no answer on the topic at all (after the re-read).
    pub lost: u64,
    /// Answers for a message that already had one (live, or copies on the topic).
    pub duplicated: u64,
    pub achieved_per_s: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub sustained: bool,
    /// Decisions received live, by effect (pipeline phase only; `recovered` ones are not
    /// in it, and started no settlement plan).
    pub effects: BTreeMap<String, u64>,
    /// Errors the answer consumer reported (a fetch error can make the client skip
    /// messages), by error text.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub consumer_errors: BTreeMap<String, u64>,
    /// Settlements and their outcomes (pipeline phase with the lifecycle mix only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<LifecycleReport>,
    /// Webhooks received (pipeline phase with `--webhook-sink` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<WebhookReport>,
}

/// What the lifecycle mix measured: settlement produced → its outcome consumed.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleReport {
    /// The mix used, percent per plan.
    pub mix: BTreeMap<String, u32>,
    /// ALLOWed intents that were given a plan, by plan.
    pub plans: BTreeMap<String, u64>,
    pub settlements_sent: u64,
    pub send_errors: u64,
    /// Outcome messages the live consumer matched to a settlement of this run, by outcome.
    pub outcomes: BTreeMap<String, u64>,
    /// Outcomes the live consumer missed but found on the topic by the re-read after the
    /// drain (see [`PhaseReport::recovered`]); the plan's next step was then never sent.
    pub recovered: u64,
    /// Settlements with no outcome (and no dead letter) on the topic at all when the
    /// drain ended, after the re-read.
    pub lost: u64,
    /// Outcome messages for a settlement that already had one.
    pub duplicated: u64,
    /// Settlements dead-lettered instead of answered, by code (none expected: the mix
    /// only sends valid settlements).
    pub refused: BTreeMap<String, u64>,
    /// Outcomes per second, from the first settlement sent to the last outcome.
    pub settlements_per_s: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LifecycleReport {
    /// Settlements that did not yield exactly one outcome.
    pub fn errors(&self) -> u64 {
        self.lost + self.duplicated + self.refused.values().sum::<u64>() + self.send_errors
    }
}

/// What a payment service does with an ALLOWed intent in the lifecycle mix (SPEC §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Plan {
    /// One CAPTURE of the whole amount, `final: true`.
    FullCapture,
    /// A CAPTURE of 60 % (not final), then a final CAPTURE of 30 % (the last 10 % is
    /// released by the final flag).
    PartialThenFinal,
    /// A VOID without amount: the whole authorization released.
    Void,
    /// A final CAPTURE of the whole amount, then a REFUND of half of it.
    CaptureThenRefund,
}

impl Plan {
    pub const ALL: [Plan; 4] = [
        Plan::FullCapture,
        Plan::PartialThenFinal,
        Plan::Void,
        Plan::CaptureThenRefund,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Plan::FullCapture => "fullCapture",
            Plan::PartialThenFinal => "partialThenFinal",
            Plan::Void => "void",
            Plan::CaptureThenRefund => "captureThenRefund",
        }
    }

    /// The settlements of this plan for an intent of `amount_minor` (in the currency's
    /// minor unit, two decimals), in the order they are sent: each one after the
    /// outcome of the one before has arrived.
    pub fn steps(self, amount_minor: i64) -> Vec<Step> {
        let part = |pct: i64| Some((amount_minor * pct / 100).max(1));
        let capture = |amount_minor, is_final| Step {
            kind: SettlementType::Capture,
            amount_minor,
            is_final,
        };
        match self {
            Plan::FullCapture => vec![capture(Some(amount_minor), true)],
            Plan::PartialThenFinal => vec![capture(part(60), false), capture(part(30), true)],
            Plan::Void => vec![Step {
                kind: SettlementType::Void,
                amount_minor: None,
                is_final: false,
            }],
            Plan::CaptureThenRefund => vec![
                capture(Some(amount_minor), true),
                Step {
                    kind: SettlementType::Refund,
                    amount_minor: part(50),
                    is_final: false,
                },
            ],
        }
    }
}

/// One settlement message of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub kind: SettlementType,
    /// Minor units (two decimals); `None` only for a VOID of the whole remainder.
    pub amount_minor: Option<i64>,
    /// CAPTURE only.
    pub is_final: bool,
}

/// The default lifecycle mix: percent of ALLOWs per plan, in [`Plan::ALL`]'s order —
/// 70 % captured in full, 15 % captured partially then final, 10 % voided, 5 % captured
/// then refunded.
pub const DEFAULT_LIFECYCLE_MIX: [u32; 4] = [70, 15, 10, 5];
/// [`DEFAULT_LIFECYCLE_MIX`] as `--lifecycle-mix` spells it.
pub const DEFAULT_LIFECYCLE_MIX_ARG: &str = "70,15,10,5";

/// Percent of ALLOWs per plan, in [`Plan::ALL`]'s order; sums to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifecycleMix(pub [u32; 4]);

impl Default for LifecycleMix {
    fn default() -> Self {
        LifecycleMix(DEFAULT_LIFECYCLE_MIX)
    }
}

impl LifecycleMix {
    /// `"70,15,10,5"`: four whole percentages summing to 100.
    pub fn parse(text: &str) -> Result<LifecycleMix, String> {
        let parts: Vec<u32> = text
            .split(',')
            .map(|p| p.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{text:?}: four whole percentages expected: {e}"))?;
        let mix: [u32; 4] = parts.try_into().map_err(|p: Vec<u32>| {
            format!(
                "{text:?} has {} numbers; four expected (full capture, partial then final, void, capture then refund)",
                p.len()
            )
        })?;
        let sum: u32 = mix.iter().sum();
        if sum != 100 {
            return Err(format!("{text:?} sums to {sum}, not 100"));
        }
        Ok(LifecycleMix(mix))
    }

    /// The plan for a roll in `0..100`.
    pub fn pick(&self, roll: u32) -> Plan {
        let mut upto = 0;
        for (plan, pct) in Plan::ALL.into_iter().zip(self.0) {
            upto += pct;
            if roll < upto {
                return plan;
            }
        }
        Plan::FullCapture
    }

    fn as_map(&self) -> BTreeMap<String, u32> {
        Plan::ALL
            .into_iter()
            .zip(self.0)
            .map(|(p, pct)| (p.as_str().to_string(), pct))
            .collect()
    }
}

/// A settlement message as a payment service sends it (SPEC §11).
pub fn settlement_message(
    settlement_id: &str,
    intent_id: &str,
    step: &Step,
    currency: &str,
) -> Vec<u8> {
    let mut body = serde_json::json!({
        "settlementId": settlement_id,
        "intentId": intent_id,
        "type": step.kind.as_str(),
    });
    if let Some(minor) = step.amount_minor {
        body["amount"] = format!("{}.{:02}", minor / 100, minor % 100).into();
        body["currency"] = currency.into();
    }
    if step.kind == SettlementType::Capture {
        body["final"] = step.is_final.into();
    }
    body.to_string().into_bytes()
}

/// Beneficiaries on the example policies' allow-list (`policies/`): payments to them can
/// be allowed outright; any other beneficiary needs a human.
const KNOWN_BENEFICIARIES: [&str; 4] = [
    "utility:light_company",
    "utility:water_company",
    "tax:receita_federal",
    "bank:itau",
];

/// One generated intent.
#[derive(Debug, Clone)]
pub struct Generated {
    pub intent_id: String,
    pub agent: String,
    /// In the currency's minor unit (two decimals).
    pub amount_minor: i64,
    pub payload: Vec<u8>,
}

/// The realistic mix, against the example policies: mostly small payments to known
/// beneficiaries (allowed until the agent's daily cap, then held for a human), some to
/// new beneficiaries (a human verifies), some large ones (two approvers, or over the
/// per-transaction cap), blocked categories and foreign beneficiaries (denied).
pub fn make_intent(rng: &mut StdRng, agents: usize, entity: &str, currency: &str) -> Generated {
    let intent_id = uuid::Uuid::now_v7().to_string();
    let agent = format!("lg-agent-{}", rng.gen_range(0..agents.max(1)));
    let roll: u32 = rng.gen_range(0..100);
    let known = KNOWN_BENEFICIARIES[rng.gen_range(0..KNOWN_BENEFICIARIES.len())];
    let new_vendor =
        |rng: &mut StdRng, category: &str| format!("{category}:vendor-{}", rng.gen_range(0..50));
    let (amount_minor, category, beneficiary, country): (i64, _, _, _) = match roll {
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
    Generated {
        intent_id,
        agent,
        amount_minor,
        payload: body.to_string().into_bytes(),
    }
}

pub async fn run(settings: &Settings, args: &LoadgenArgs) -> anyhow::Result<i32> {
    if let Some(base) = &args.http {
        let token = args.http_token.as_deref().ok_or_else(|| {
            anyhow::anyhow!(
                "--http needs --http-token (or SPENDGUARD_LOADGEN_TOKEN): a payment_service token"
            )
        })?;
        return super::http_load::run(base, token, args).await;
    }
    let topics = Topics::with_prefix(&settings.topic_prefix);
    let baseline_topic = format!("{}loadgen.baseline", settings.topic_prefix);
    let mut layout = topics.layout(settings);
    layout.push((baseline_topic.clone(), settings.intent_partitions));
    bus::ensure_topics(&settings.brokers, &layout).await?;
    // Listening before any phase, so a taken port fails the run at once.
    let sink = match (&args.webhook_sink, &args.webhook_secret_env) {
        (Some(addr), Some(var)) => {
            let secret = std::env::var_os(var)
                .with_context(|| format!("--webhook-secret-env {var}: the variable is not set"))?;
            Some(WebhookSink::start(addr, secret.into_encoded_bytes()).await?)
        }
        _ => None,
    };

    let mut reports = Vec::new();
    if !args.no_baseline {
        let route = Route {
            produce_to: &baseline_topic,
            consume_from: &baseline_topic,
            lifecycle: None,
        };
        reports.push(phase("baseline", settings, args, route, None).await?);
    }
    if !args.baseline_only {
        let route = Route {
            produce_to: &topics.intents,
            consume_from: &topics.decisions,
            lifecycle: (!args.no_lifecycle).then_some(LifecycleRoute {
                settlements: &topics.settlements,
                dlq: &topics.dlq,
            }),
        };
        reports.push(phase("pipeline", settings, args, route, sink.as_ref()).await?);
    }
    print_reports(&reports, args)?;
    let errors: u64 = reports
        .iter()
        .filter_map(|r| r.lifecycle.as_ref())
        .map(LifecycleReport::errors)
        .sum();
    let webhook_errors: u64 = reports
        .iter()
        .filter_map(|r| r.webhooks.as_ref())
        .map(WebhookReport::errors)
        .sum();
    if errors > 0 {
        eprintln!(
            "loadgen: {errors} settlement(s) did not yield exactly one outcome (lost, duplicated, refused or not sent; see the report)"
        );
    }
    if webhook_errors > 0 {
        eprintln!(
            "loadgen: {webhook_errors} webhook error(s): bad signatures, decisions not notified within the drain, or a decision notified under two delivery ids (see the report)"
        );
    }
    Ok(if errors + webhook_errors > 0 { 1 } else { 0 })
}

pub(crate) fn print_reports(reports: &[PhaseReport], args: &LoadgenArgs) -> anyhow::Result<()> {
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
        if r.recovered + r.lost + r.duplicated > 0 {
            println!(
                "          recovered {} (on the topic, missed by loadgen's live consumer: broker or consumer, not serve), lost {} (not on the topic), duplicated {}",
                r.recovered, r.lost, r.duplicated
            );
        }
        if !r.effects.is_empty() {
            println!("          effects: {:?}", r.effects);
        }
        if r.send_errors > 0 {
            println!("          send errors: {}", r.send_errors);
        }
        if !r.consumer_errors.is_empty() {
            println!("          consumer errors: {:?}", r.consumer_errors);
        }
        if let Some(l) = &r.lifecycle {
            let answered: u64 = l.outcomes.values().sum();
            println!(
                "{:<9} {:>8} {:>8} {:>11.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                "settle",
                l.settlements_sent,
                answered,
                l.settlements_per_s,
                l.p50_ms,
                l.p95_ms,
                l.p99_ms,
                l.max_ms
            );
            println!("          mix: {:?}; plans: {:?}", l.mix, l.plans);
            println!("          outcomes: {:?}", l.outcomes);
            println!(
                "          recovered {} (outcome on the topic, missed by the live consumer), lost (no outcome on the topic when the drain ended) {}, duplicated {}, refused {:?}, send errors {}",
                l.recovered, l.lost, l.duplicated, l.refused, l.send_errors
            );
        }
        if let Some(w) = &r.webhooks {
            println!(
                "{:<9} {:>8} {:>8} {:>11.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                "webhooks",
                w.decisions_received,
                w.intents_notified,
                w.per_s,
                w.p50_ms,
                w.p95_ms,
                w.p99_ms,
                w.max_ms
            );
            println!(
                "          (decisions received, intents notified, deliveries/s, decision delivery latency = intent sent -> webhook received, on {})",
                w.addr
            );
            println!(
                "          deliveries {} by event {:?}; not notified {}, duplicates {}, repeated intents {}, foreign {}, bad signatures {}, malformed {}, refused {}, untracked {}",
                w.deliveries,
                w.by_event,
                w.not_notified,
                w.duplicates,
                w.repeated_intents,
                w.foreign,
                w.bad_signatures,
                w.malformed,
                w.refused,
                w.untracked
            );
        }
    }
    if let Some(ratio) = ratio {
        println!("pipeline/baseline throughput: {:.0}%", ratio * 100.0);
    }
    Ok(())
}

/// Where a phase sends and reads.
struct Route<'a> {
    produce_to: &'a str,
    consume_from: &'a str,
    lifecycle: Option<LifecycleRoute<'a>>,
}

#[derive(Clone, Copy)]
struct LifecycleRoute<'a> {
    settlements: &'a str,
    dlq: &'a str,
}

/// An intent sent and not yet answered.
struct Sent {
    at: Instant,
    agent: String,
    amount_minor: i64,
}

type Pending = Arc<Mutex<HashMap<String, Sent>>>;

/// A settlement sent and not yet answered, with what follows it in its plan.
struct Open {
    at: Instant,
    intent_id: String,
    agent: String,
    rest: Vec<Step>,
}

/// What the lifecycle side saw.
struct Settling {
    hist: Histogram<u64>,
    open: HashMap<String, Open>,
    answered: HashSet<String>,
    first_sent: Option<Instant>,
    last_outcome: Option<Instant>,
    report: LifecycleReport,
}

/// What the collector saw, shared with the phase that reads it after the drain.
struct Collected {
    hist: Histogram<u64>,
    /// Messages of this run answered (live or recovered), to tell a duplicate answer from
    /// foreign traffic.
    answered: HashSet<String>,
    duplicated: u64,
    last_receive: Option<Instant>,
    effects: BTreeMap<String, u64>,
    consumer_errors: BTreeMap<String, u64>,
    settling: Settling,
}

/// Settles ALLOWed intents: produces each plan step and tracks it until its outcome.
struct Settler {
    producer: FutureProducer,
    topic: String,
    currency: String,
    mix: LifecycleMix,
    rng: Mutex<StdRng>,
}

impl Settler {
    fn plan(&self) -> Plan {
        let roll = lock(&self.rng).gen_range(0..100);
        self.mix.pick(roll)
    }

    /// Registers `step` as open (under the caller's lock on `collected`, so the drain
    /// never sees a moment with nothing outstanding) and returns what to produce.
    fn open(
        &self,
        s: &mut Settling,
        intent_id: &str,
        agent: &str,
        mut steps: Vec<Step>,
    ) -> Option<(String, String, Vec<u8>)> {
        if steps.is_empty() {
            return None;
        }
        let step = steps.remove(0);
        let settlement_id = uuid::Uuid::now_v7().to_string();
        let payload = settlement_message(&settlement_id, intent_id, &step, &self.currency);
        let now = Instant::now();
        s.first_sent.get_or_insert(now);
        s.report.settlements_sent += 1;
        s.open.insert(
            settlement_id.clone(),
            Open {
                at: now,
                intent_id: intent_id.to_string(),
                agent: agent.to_string(),
                rest: steps,
            },
        );
        Some((settlement_id, agent.to_string(), payload))
    }

    /// Produces a settlement registered by [`Settler::open`]; its clock starts now. A
    /// settlement the broker does not acknowledge is closed as a send error.
    async fn send(
        &self,
        collected: &Arc<Mutex<Collected>>,
        (id, agent, payload): (String, String, Vec<u8>),
    ) {
        loop {
            let record = FutureRecord::to(&self.topic)
                .key(agent.as_bytes())
                .payload(&payload);
            let at = Instant::now();
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    if let Some(o) = lock(collected).settling.open.get_mut(&id) {
                        o.at = at;
                    }
                    let collected = collected.clone();
                    tokio::spawn(async move {
                        if !matches!(delivery.await, Ok(Ok(_))) {
                            let mut c = lock(&collected);
                            if c.settling.open.remove(&id).is_some() {
                                c.settling.report.send_errors += 1;
                            }
                        }
                    });
                    return;
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => tokio::time::sleep(Duration::from_millis(QUEUE_FULL_BACKOFF_MS)).await,
                Err(_) => {
                    let mut c = lock(collected);
                    c.settling.open.remove(&id);
                    c.settling.report.send_errors += 1;
                    return;
                }
            }
        }
    }
}

async fn phase(
    name: &str,
    settings: &Settings,
    args: &LoadgenArgs,
    route: Route<'_>,
    sink: Option<&WebhookSink>,
) -> anyhow::Result<PhaseReport> {
    let consumer = bus::standalone_consumer(&settings.brokers)?;
    // Start exactly at the current end of the topic so nothing produced from now on is
    // missed; the offsets are kept for the re-read after the drain.
    let answer_starts = assign_at_ends(&consumer, &settings.brokers, route.consume_from)?;
    let producer = bus::client_producer(&settings.brokers)?;
    let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
    let histogram = || Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).context("histogram bounds");
    let collected = Arc::new(Mutex::new(Collected {
        hist: histogram()?,
        answered: HashSet::new(),
        duplicated: 0,
        last_receive: None,
        effects: Default::default(),
        consumer_errors: Default::default(),
        settling: Settling {
            hist: histogram()?,
            open: HashMap::new(),
            answered: HashSet::new(),
            first_sent: None,
            last_outcome: None,
            report: LifecycleReport {
                mix: args.lifecycle_mix.as_map(),
                ..Default::default()
            },
        },
    }));

    let mut tasks = Vec::new();
    let mut dlq_starts = Vec::new();
    let settler = match route.lifecycle {
        Some(l) => {
            let dlq = bus::standalone_consumer(&settings.brokers)?;
            dlq_starts = assign_at_ends(&dlq, &settings.brokers, l.dlq)?;
            tasks.push(tokio::spawn(collect_dead_letters(dlq, collected.clone())));
            Some(Arc::new(Settler {
                producer: producer.clone(),
                topic: l.settlements.to_string(),
                currency: args.currency.clone(),
                mix: args.lifecycle_mix,
                rng: Mutex::new(StdRng::seed_from_u64(args.seed.wrapping_add(1))),
            }))
        }
        None => None,
    };
    tasks.push(tokio::spawn(collect(
        consumer,
        pending.clone(),
        collected.clone(),
        settler.clone(),
    )));
    let started = Instant::now();
    let (sent, send_errors) = offer(&producer, route.produce_to, args, &pending, sink).await;

    // Wait until every answer arrived (decisions, then every step of every settlement
    // plan) or the drain timeout passed.
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_timeout);
    while (!lock(&pending).is_empty() || !lock(&collected).settling.open.is_empty())
        && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A late duplicate outcome would land here: give one more moment before stopping.
    if settler.is_some() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }

    // The live consumer may have missed answers that are on the topic (measured on tansu:
    // 0.3-1 % of decisions that `decisions tail --from-beginning` reads). Before calling
    // anything lost, re-read what the topic received since the phase started.
    let outstanding = !lock(&pending).is_empty() || !lock(&collected).settling.open.is_empty();
    let (recovered, topic_duplicates) = if outstanding {
        reconcile(
            &settings.brokers,
            &route,
            &answer_starts,
            &dlq_starts,
            &pending,
            &collected,
        )
        .await?
    } else {
        (Recovered::default(), 0)
    };
    let lost = lock(&pending).len() as u64;
    // The webhooks follow the ledger on their own: wait for the decision delivery of
    // every intent sent, up to another drain timeout.
    let webhooks = match sink {
        Some(sink) => {
            sink.wait_for_all(Instant::now() + Duration::from_secs(args.drain_timeout))
                .await;
            Some(sink.report(lock(&collected).hist.len() + recovered.answers))
        }
        None => None,
    };
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
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let lifecycle = route.lifecycle.map(|_| {
        let s = &c.settling;
        let answered = s.hist.len();
        let span = match (s.first_sent, s.last_outcome) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        LifecycleReport {
            recovered: recovered.outcomes,
            lost: s.open.len() as u64,
            settlements_per_s: if span > 0.0 {
                answered as f64 / span
            } else {
                0.0
            },
            p50_ms: ms(&s.hist, 0.50),
            p95_ms: ms(&s.hist, 0.95),
            p99_ms: ms(&s.hist, 0.99),
            max_ms: s.hist.max() as f64 / 1000.0,
            ..s.report.clone()
        }
    });
    Ok(PhaseReport {
        phase: name.to_string(),
        offered_rate: args.rate,
        sent,
        send_errors,
        received,
        recovered: recovered.answers,
        lost,
        duplicated: c.duplicated.max(topic_duplicates),
        achieved_per_s: achieved,
        p50_ms: ms(&c.hist, 0.50),
        p95_ms: ms(&c.hist, 0.95),
        p99_ms: ms(&c.hist, 0.99),
        max_ms: c.hist.max() as f64 / 1000.0,
        sustained: lost == 0 && send_errors == 0 && achieved >= args.rate as f64 * SUSTAINED_SHARE,
        effects: c.effects.clone(),
        consumer_errors: c.consumer_errors.clone(),
        lifecycle,
        webhooks,
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
    sink: Option<&WebhookSink>,
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
            let g = make_intent(&mut rng, args.agents, &args.entity, &args.currency);
            let at = Instant::now();
            if let Some(sink) = sink {
                sink.register(&g.intent_id, at);
            }
            lock(pending).insert(
                g.intent_id.clone(),
                Sent {
                    at,
                    agent: g.agent.clone(),
                    amount_minor: g.amount_minor,
                },
            );
            loop {
                let record = FutureRecord::to(topic)
                    .key(g.agent.as_bytes())
                    .payload(&g.payload);
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
                        lock(pending).remove(&g.intent_id);
                        if let Some(sink) = sink {
                            sink.forget(&g.intent_id);
                        }
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

/// What loadgen reads on the answer topic: a decision (effect), an outcome (outcome and
/// settlementId), or the baseline's own intent.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    intent_id: String,
    #[serde(default)]
    effect: Option<String>,
    #[serde(default)]
    outcome: Option<String>,
    #[serde(default)]
    settlement_id: Option<String>,
}

/// Reads answers (decisions, or the baseline's own messages) and records the latency of
/// the ones this run is waiting for. With a settler, an ALLOW starts a settlement plan and
/// an outcome naming one of this run's settlements closes it (and sends the plan's next
/// step). Foreign traffic is ignored.
async fn collect(
    consumer: StreamConsumer,
    pending: Pending,
    collected: Arc<Mutex<Collected>>,
    settler: Option<Arc<Settler>>,
) {
    let mut stream = consumer.stream();
    while let Some(msg) = stream.next().await {
        let msg = match msg {
            Ok(msg) => msg,
            Err(e) => {
                *lock(&collected)
                    .consumer_errors
                    .entry(e.to_string())
                    .or_insert(0) += 1;
                continue;
            }
        };
        let now = Instant::now();
        let Some(answer) = msg
            .payload()
            .and_then(|p| serde_json::from_slice::<Answer>(p).ok())
        else {
            continue;
        };
        let to_send = if let Some(outcome) = answer.outcome {
            let (Some(settler), Some(id)) = (&settler, answer.settlement_id) else {
                continue;
            };
            let mut c = lock(&collected);
            let s = &mut c.settling;
            let Some(open) = s.open.remove(&id) else {
                if s.answered.contains(&id) {
                    s.report.duplicated += 1;
                }
                continue;
            };
            let _ = s.hist.record(latency_us(now, open.at));
            s.last_outcome = Some(now);
            *s.report.outcomes.entry(outcome).or_insert(0) += 1;
            s.answered.insert(id);
            settler.open(s, &open.intent_id, &open.agent, open.rest)
        } else {
            // Hold `pending` until the first settlement is open, so the drain never sees
            // the decision answered and its settlement not yet started.
            let mut p = lock(&pending);
            let Some(sent) = p.remove(&answer.intent_id) else {
                let mut c = lock(&collected);
                if c.answered.contains(&answer.intent_id) {
                    c.duplicated += 1;
                }
                continue;
            };
            let mut c = lock(&collected);
            c.answered.insert(answer.intent_id.clone());
            let _ = c.hist.record(latency_us(now, sent.at));
            c.last_receive = Some(now);
            let allowed = answer.effect.as_deref() == Some("ALLOW");
            if let Some(effect) = answer.effect {
                *c.effects.entry(effect).or_insert(0) += 1;
            }
            match &settler {
                Some(settler) if allowed => {
                    let plan = settler.plan();
                    let s = &mut c.settling;
                    *s.report.plans.entry(plan.as_str().to_string()).or_insert(0) += 1;
                    settler.open(
                        s,
                        &answer.intent_id,
                        &sent.agent,
                        plan.steps(sent.amount_minor),
                    )
                }
                _ => None,
            }
        };
        if let (Some(settler), Some(next)) = (&settler, to_send) {
            settler.send(&collected, next).await;
        }
    }
}

/// Reads the dead-letter topic: a settlement of this run found there was refused
/// instead of answered (its code from the `spendguard-error-code` header).
async fn collect_dead_letters(consumer: StreamConsumer, collected: Arc<Mutex<Collected>>) {
    let mut stream = consumer.stream();
    while let Some(msg) = stream.next().await {
        let Ok(msg) = msg else { continue };
        let Some((id, code)) = dead_letter(&msg) else {
            continue;
        };
        let mut c = lock(&collected);
        let s = &mut c.settling;
        if s.open.remove(&id).is_some() {
            *s.report.refused.entry(code).or_insert(0) += 1;
        }
    }
}

/// The settlementId of a dead letter and its code (the `spendguard-error-code` header).
fn dead_letter(msg: &impl Message) -> Option<(String, String)> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Letter {
        settlement_id: String,
    }
    let letter = serde_json::from_slice::<Letter>(msg.payload()?).ok()?;
    let code = msg
        .headers()
        .and_then(|h| {
            h.iter()
                .find(|h| h.key == bus::dlq::HEADER_ERROR_CODE)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    Some((letter.settlement_id, code))
}

/// Per partition, the offset a phase's consumer started at.
type Starts = Vec<(i32, i64)>;

/// Assigns every partition of `topic` at its current high watermark (read from the broker
/// now, as [`bus::assign_at_high_watermarks`]) and returns those offsets.
fn assign_at_ends(consumer: &StreamConsumer, brokers: &str, topic: &str) -> anyhow::Result<Starts> {
    let count = bus::partition_count(brokers, topic)?
        .with_context(|| format!("topic {topic} does not exist"))?;
    let mut starts = Vec::with_capacity(count);
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..i32::try_from(count)? {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_millis(bus::ADMIN_TIMEOUT_MS))
            .with_context(|| format!("high watermark of {topic} [{p}]"))?;
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(high))?;
        starts.push((p, high));
    }
    consumer.assign(&tpl)?;
    Ok(starts)
}

/// How long the re-read after the drain may take before what it did not reach is lost.
const REREAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads `topic` with a fresh consumer from `starts` up to the high watermarks it finds
/// now. Returns the messages and whether it reached those ends within [`REREAD_TIMEOUT`].
async fn reread(
    brokers: &str,
    topic: &str,
    starts: &[(i32, i64)],
) -> anyhow::Result<(Vec<OwnedMessage>, bool)> {
    let consumer = bus::standalone_consumer(brokers)?;
    let mut ends = HashMap::new();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for &(p, start) in starts {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_millis(bus::ADMIN_TIMEOUT_MS))
            .with_context(|| format!("high watermark of {topic} [{p}]"))?;
        if high > start {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(start))?;
            ends.insert(p, high);
        }
    }
    let mut messages = Vec::new();
    if ends.is_empty() {
        return Ok((messages, true));
    }
    consumer.assign(&tpl)?;
    let deadline = tokio::time::Instant::now() + REREAD_TIMEOUT;
    while !ends.is_empty() {
        let msg = match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) => return Ok((messages, false)),
            Ok(Err(_)) => continue,
            Ok(Ok(msg)) => msg.detach(),
        };
        if ends
            .get(&msg.partition())
            .is_some_and(|&end| msg.offset() + 1 >= end)
        {
            ends.remove(&msg.partition());
        }
        messages.push(msg);
    }
    Ok((messages, true))
}

/// What the re-read found that the live consumer had missed.
#[derive(Debug, Default)]
struct Recovered {
    /// Decisions (or the baseline's own messages).
    answers: u64,
    /// Settlement outcomes.
    outcomes: u64,
}

/// After the drain: re-reads the answer topic (and, with the lifecycle mix, the
/// dead-letter topic) from the offsets the phase started at up to the current high
/// watermarks, and closes every outstanding message whose answer is there as recovered
/// (not in the percentiles; a recovered ALLOW starts no plan, a recovered outcome sends
/// no next step), or as refused when its settlement was dead-lettered. Also counts the
/// copies on the topic of this run's answers: returns the decision duplicates found there
/// and raises the lifecycle report's `duplicated` to the outcome duplicates found there.
async fn reconcile(
    brokers: &str,
    route: &Route<'_>,
    answer_starts: &[(i32, i64)],
    dlq_starts: &[(i32, i64)],
    pending: &Pending,
    collected: &Arc<Mutex<Collected>>,
) -> anyhow::Result<(Recovered, u64)> {
    let (answers, complete) = reread(brokers, route.consume_from, answer_starts).await?;
    if !complete {
        eprintln!(
            "loadgen: the re-read of {} did not reach the high watermarks within {} s; what it did not reach counts as lost",
            route.consume_from,
            REREAD_TIMEOUT.as_secs()
        );
    }
    let mut recovered = Recovered::default();
    let mut copies: HashMap<String, u64> = HashMap::new();
    let mut outcome_copies: HashMap<String, u64> = HashMap::new();
    let extra = |m: &HashMap<String, u64>| m.values().map(|n| n - 1).sum::<u64>();
    let settlements_open = {
        let mut p = lock(pending);
        let mut c = lock(collected);
        for msg in &answers {
            let Some(answer) = msg
                .payload()
                .and_then(|p| serde_json::from_slice::<Answer>(p).ok())
            else {
                continue;
            };
            if answer.outcome.is_some() {
                let Some(id) = answer.settlement_id else {
                    continue;
                };
                let s = &mut c.settling;
                if s.open.remove(&id).is_some() {
                    recovered.outcomes += 1;
                    s.answered.insert(id.clone());
                }
                if s.answered.contains(&id) {
                    *outcome_copies.entry(id).or_insert(0) += 1;
                }
            } else {
                if p.remove(&answer.intent_id).is_some() {
                    recovered.answers += 1;
                    c.answered.insert(answer.intent_id.clone());
                }
                if c.answered.contains(&answer.intent_id) {
                    *copies.entry(answer.intent_id).or_insert(0) += 1;
                }
            }
        }
        let s = &mut c.settling;
        s.report.duplicated = s.report.duplicated.max(extra(&outcome_copies));
        !s.open.is_empty()
    };
    // Settlements still open may have been refused, the live reader of the dead-letter
    // topic having missed the letter.
    if let Some(l) = route.lifecycle
        && settlements_open
    {
        let (letters, _) = reread(brokers, l.dlq, dlq_starts).await?;
        let mut c = lock(collected);
        let s = &mut c.settling;
        for msg in &letters {
            if let Some((id, code)) = dead_letter(msg)
                && s.open.remove(&id).is_some()
            {
                *s.report.refused.entry(code).or_insert(0) += 1;
            }
        }
    }
    Ok((recovered, extra(&copies)))
}

fn latency_us(now: Instant, sent_at: Instant) -> u64 {
    now.duration_since(sent_at)
        .as_micros()
        .clamp(1, u128::from(MAX_LATENCY_US)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_valid_intents_and_deterministic() {
        let mut a = StdRng::seed_from_u64(7);
        let mut categories = std::collections::BTreeSet::new();
        for _ in 0..500 {
            let g = make_intent(&mut a, 10, "acme-br", "BRL");
            let intent =
                crate::intent::parse_intent(&g.payload).expect("loadgen makes valid intents");
            assert_eq!(intent.intent_id, g.intent_id);
            assert_eq!(intent.agent_id, g.agent);
            assert_eq!(intent.amount, rust_decimal::Decimal::new(g.amount_minor, 2));
            categories.insert(intent.category);
        }
        assert!(
            categories.contains("gambling") && categories.contains("utility"),
            "{categories:?}"
        );
        let g1 = make_intent(&mut StdRng::seed_from_u64(9), 1000, "e", "BRL");
        let g2 = make_intent(&mut StdRng::seed_from_u64(9), 1000, "e", "BRL");
        assert_eq!(g1.agent, g2.agent);
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
            let g = make_intent(&mut rng, 10, "acme-br", "BRL");
            let intent = crate::intent::parse_intent(&g.payload).unwrap();
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

    /// Every plan's steps are valid settlement messages that never ask for more than the
    /// authorization holds: captured ≤ authorized, refunded ≤ captured, a final or a void
    /// ends the authorization last.
    #[test]
    fn every_plan_sends_valid_settlements_within_the_authorization() {
        use crate::settlement::parse_settlement;
        use rust_decimal::Decimal;
        for amount_minor in [1_000, 1_001, 19_999, 1_999_999] {
            for plan in Plan::ALL {
                let steps = plan.steps(amount_minor);
                let (mut captured, mut refunded) = (0, 0);
                for (i, step) in steps.iter().enumerate() {
                    let bytes = settlement_message(&format!("s-{i}"), "i-1", step, "BRL");
                    let s = parse_settlement(&bytes).unwrap_or_else(|e| {
                        panic!(
                            "{plan:?} step {i}: {e:?}: {}",
                            String::from_utf8_lossy(&bytes)
                        )
                    });
                    assert_eq!(s.kind, step.kind);
                    assert_eq!(s.amount, step.amount_minor.map(|m| Decimal::new(m, 2)));
                    assert_eq!(s.is_final, step.is_final);
                    match step.kind {
                        SettlementType::Capture => captured += step.amount_minor.unwrap(),
                        SettlementType::Refund => refunded += step.amount_minor.unwrap(),
                        SettlementType::Void => assert!(step.amount_minor.is_none()),
                        SettlementType::Cancel => panic!("no plan cancels an ALLOW"),
                    }
                    assert!(0 < captured || step.kind == SettlementType::Void);
                    assert!(captured <= amount_minor && refunded <= captured, "{plan:?}");
                    let closes = step.is_final || step.kind == SettlementType::Void;
                    let after_close = steps[..i]
                        .iter()
                        .any(|s| s.is_final || s.kind == SettlementType::Void);
                    assert!(
                        !(closes && after_close),
                        "{plan:?}: closed twice at step {i}"
                    );
                }
            }
        }
        let void = settlement_message("s", "i", &Plan::Void.steps(100)[0], "BRL");
        assert_eq!(
            String::from_utf8(void).unwrap(),
            r#"{"settlementId":"s","intentId":"i","type":"VOID"}"#
        );
    }

    #[test]
    fn the_lifecycle_mix_parses_and_picks_in_proportion() {
        assert_eq!(
            LifecycleMix::parse(DEFAULT_LIFECYCLE_MIX_ARG),
            Ok(LifecycleMix::default())
        );
        assert_eq!(
            LifecycleMix::parse(" 100, 0,0 ,0"),
            Ok(LifecycleMix([100, 0, 0, 0]))
        );
        for bad in ["70,15,10", "70,15,10,6", "70,15,10,x", "", "50,50,0,0,0"] {
            assert!(LifecycleMix::parse(bad).is_err(), "{bad}");
        }
        let mix = LifecycleMix::default();
        let mut counts: BTreeMap<Plan, u32> = BTreeMap::new();
        for roll in 0..100 {
            *counts.entry(mix.pick(roll)).or_default() += 1;
        }
        assert_eq!(
            Plan::ALL.map(|p| counts.get(&p).copied().unwrap_or(0)),
            DEFAULT_LIFECYCLE_MIX
        );
        assert_eq!(
            LifecycleMix([0, 0, 0, 100]).pick(0),
            Plan::CaptureThenRefund
        );
    }
}
