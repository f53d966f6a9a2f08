//! The conservative origin policy three ways — spendguard's evaluator, the same logic in
//! Rego (regorus) and in Cedar (cedar-policy) — over the same intents, in one run.
//!
//! Setup asserts the three engines agree on every benched intent. Besides criterion's
//! estimates, it prints median and p99 of single evaluations (per-call `Instant` timing,
//! which includes ~20-40 ns of clock overhead) and the ratios, for docs/benchmarks.md.
//!
//! A second part (issue 11) times a policy with limits of every kind (SPEC §12): the
//! evaluator with precomputed so-far values (`evaluate_limited`), and the ledger's whole
//! decision rule (`machine::verdict`) on a snapshot holding spend records, which sums
//! them per limit. SPEC §10: still median ≤ 2 µs with limits.
//!
//! A third part times the card-data masking every message goes through at intake
//! (group `masking`).
//!
//! Run: `cargo bench --bench policy_eval -- --warm-up-time 1 --measurement-time 3`

use cedar_policy::{
    Authorizer, Context, Entities, EntityUid, Policy, PolicyId, PolicySet, Request,
    RestrictedExpression,
};
use criterion::{Criterion, criterion_group, criterion_main};
use rust_decimal::Decimal;
use spendguard::decision::{Effect, KillState, Usage};
use spendguard::intent::{SpendIntent, parse_intent};
use spendguard::ledger::machine::{self, Projections};
use spendguard::ledger::store::SpendRecordRow;
use spendguard::policy::limits::SoFar;
use spendguard::policy::{CompiledPolicy, EvalInput, evaluate, evaluate_limited, rego::minor};
use std::hint::black_box;
use std::str::FromStr;
use std::time::Instant;

/// Single evaluations timed per engine for the median/p99 table.
const SAMPLES_PER_ENGINE: usize = 20_000;

const REGO: &str = r#"
package bench
import rego.v1

allow_beneficiaries := {"tax:receita_federal", "utility:light_company", "utility:water_company", "bank:itau", "bank:nubank"}
blocked_categories := {"crypto", "gambling", "adult_content", "weapons"}

deny if input.intent.currency != "BRL"
deny if input.intent.amountMinor > 50000
deny if blocked_categories[input.intent.category]
deny if startswith(input.intent.beneficiary.id, "sanctioned:")
deny if startswith(input.intent.beneficiary.id, "high_risk:")
deny if input.intent.beneficiary.country != "BR"
deny if not input.intent.beneficiary.country

msig if input.intent.amountMinor > 30000

hitl if input.usage.dailySoFarMinor + input.intent.amountMinor > 100000
hitl if input.usage.monthlySoFarMinor + input.intent.amountMinor > 500000
hitl if not allow_beneficiaries[input.intent.beneficiary.id]

effect := "DENY" if {
  deny
} else := "REQUIRE_MSIG" if {
  msig
} else := "REQUIRE_HITL" if {
  hitl
} else := "ALLOW"
"#;

/// Cedar has only permit/forbid; each policy here is one finding, named by its severity,
/// and the decision is the most severe satisfied policy (deny overrides).
const CEDAR: &[(&str, &str)] = &[
    (
        "deny_currency",
        r#"permit(principal, action, resource) when { context.currency != "BRL" };"#,
    ),
    (
        "deny_per_txn",
        "permit(principal, action, resource) when { context.amountMinor > 50000 };",
    ),
    (
        "deny_category",
        r#"permit(principal, action, resource) when { ["crypto", "gambling", "adult_content", "weapons"].contains(context.category) };"#,
    ),
    (
        "deny_beneficiary",
        r#"permit(principal, action, resource) when { context.beneficiary like "sanctioned:*" || context.beneficiary like "high_risk:*" };"#,
    ),
    (
        "deny_country",
        r#"permit(principal, action, resource) when { context.country != "BR" };"#,
    ),
    (
        "hitl_daily",
        "permit(principal, action, resource) when { context.dailySoFarMinor + context.amountMinor > 100000 };",
    ),
    (
        "hitl_monthly",
        "permit(principal, action, resource) when { context.monthlySoFarMinor + context.amountMinor > 500000 };",
    ),
    (
        "hitl_beneficiary",
        r#"permit(principal, action, resource) when { !["tax:receita_federal", "utility:light_company", "utility:water_company", "bank:itau", "bank:nubank"].contains(context.beneficiary) };"#,
    ),
    (
        "msig_amount",
        "permit(principal, action, resource) when { context.amountMinor > 30000 };",
    ),
];

fn intents() -> Vec<SpendIntent> {
    let cases: &[(&str, &str, &str, &str, Option<&str>)] = &[
        (
            "250.00",
            "BRL",
            "utility",
            "utility:light_company",
            Some("BR"),
        ),
        (
            "120.00",
            "BRL",
            "utility",
            "utility:new_gas_company",
            Some("BR"),
        ),
        ("450.00", "BRL", "tax", "tax:receita_federal", Some("BR")),
        (
            "600.00",
            "BRL",
            "utility",
            "utility:water_company",
            Some("BR"),
        ),
        ("50.00", "BRL", "gambling", "bank:itau", Some("BR")),
        (
            "75.00",
            "BRL",
            "supplier",
            "sanctioned:offshore_trading_ltd",
            Some("BR"),
        ),
        ("100.00", "USD", "software", "bank:itau", Some("BR")),
        ("80.00", "BRL", "supplier", "bank:nubank", Some("AR")),
        ("89.90", "BRL", "subscription", "bank:nubank", Some("BR")),
        ("300.00", "BRL", "utility", "bank:itau", Some("BR")),
    ];
    cases
        .iter()
        .map(|(amount, cur, cat, ben, country)| {
            let mut v = serde_json::json!({
                "intentId": "3f2b8c1e-9a4d-4e7b-8c2a-1d5e6f7a8b90", "agentId": "agent-ops-01", "entityId": "acme-br",
                "amount": amount, "currency": cur, "category": cat, "beneficiary": {"id": ben}, "purpose": "PIX"
            });
            if let Some(c) = country {
                v["beneficiary"]["country"] = (*c).into();
            }
            parse_intent(v.to_string().as_bytes()).expect("bench intents are valid")
        })
        .collect()
}

fn usage() -> Usage {
    Usage {
        daily_so_far: "650.00".parse().unwrap(),
        monthly_so_far: "1200.00".parse().unwrap(),
    }
}

fn at() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339("2026-11-25T15:00:00Z")
        .unwrap()
        .into()
}

fn rego_inputs(intents: &[SpendIntent]) -> Vec<regorus::Value> {
    intents
        .iter()
        .map(|i| {
            let json = spendguard::policy::rego::rego_input(i, usage(), at(), 2);
            regorus::Value::from_json_str(&json.to_string()).unwrap()
        })
        .collect()
}

fn cedar_requests(intents: &[SpendIntent]) -> Vec<Request> {
    let u = usage();
    intents
        .iter()
        .map(|i| {
            let ctx = Context::from_pairs([
                (
                    "currency".to_string(),
                    RestrictedExpression::new_string(i.currency.clone()),
                ),
                (
                    "amountMinor".to_string(),
                    RestrictedExpression::new_long(minor(i.amount, 2)),
                ),
                (
                    "category".to_string(),
                    RestrictedExpression::new_string(i.category.clone()),
                ),
                (
                    "beneficiary".to_string(),
                    RestrictedExpression::new_string(i.beneficiary.id.clone()),
                ),
                (
                    "country".to_string(),
                    RestrictedExpression::new_string(
                        i.beneficiary.country.clone().unwrap_or_default(),
                    ),
                ),
                (
                    "dailySoFarMinor".to_string(),
                    RestrictedExpression::new_long(minor(u.daily_so_far, 2)),
                ),
                (
                    "monthlySoFarMinor".to_string(),
                    RestrictedExpression::new_long(minor(u.monthly_so_far, 2)),
                ),
            ])
            .unwrap();
            Request::new(
                EntityUid::from_str(r#"Agent::"agent-ops-01""#).unwrap(),
                EntityUid::from_str(r#"Action::"spend""#).unwrap(),
                EntityUid::from_str(r#"Beneficiary::"b""#).unwrap(),
                ctx,
                None,
            )
            .unwrap()
        })
        .collect()
}

fn cedar_effect(
    authorizer: &Authorizer,
    policies: &PolicySet,
    entities: &Entities,
    r: &Request,
) -> Effect {
    let resp = authorizer.is_authorized(r, policies, entities);
    resp.diagnostics()
        .reason()
        .map(|id| match AsRef::<str>::as_ref(id).split('_').next() {
            Some("deny") => Effect::Deny,
            Some("msig") => Effect::RequireMsig,
            Some("hitl") => Effect::RequireHitl,
            _ => Effect::Allow,
        })
        .max()
        .unwrap_or(Effect::Allow)
}

fn rego_effect(engine: &mut regorus::Engine, input: &regorus::Value) -> Effect {
    engine.set_input(input.clone());
    let v = engine
        .eval_rule("data.bench.effect".to_string())
        .expect("rego evaluates");
    Effect::parse(v.as_string().expect("effect is a string")).expect("known effect")
}

fn percentile(sorted_ns: &[u64], p: f64) -> u64 {
    let idx = ((sorted_ns.len() as f64 - 1.0) * p).round() as usize;
    sorted_ns[idx]
}

fn time_each(mut f: impl FnMut(usize)) -> (u64, u64) {
    let mut ns = Vec::with_capacity(SAMPLES_PER_ENGINE);
    for k in 0..SAMPLES_PER_ENGINE {
        let t = Instant::now();
        f(k);
        ns.push(t.elapsed().as_nanos() as u64);
    }
    ns.sort_unstable();
    (percentile(&ns, 0.5), percentile(&ns, 0.99))
}

fn bench(c: &mut Criterion) {
    let text = std::fs::read_to_string("policies/conservative-brazilian-agent.json").unwrap();
    let policy = CompiledPolicy::parse(&text, "conservative").unwrap();
    let intents = intents();
    let kill = KillState::Off;
    let sg = |i: &SpendIntent| {
        evaluate(
            &policy,
            &EvalInput {
                intent: i,
                usage: usage(),
                kill: &kill,
                accepted_at: at(),
            },
        )
    };

    let mut engine = regorus::Engine::new();
    engine.add_policy("bench.rego".into(), REGO.into()).unwrap();
    let inputs = rego_inputs(&intents);

    let mut cedar_policies = PolicySet::new();
    for (id, src) in CEDAR {
        cedar_policies
            .add(Policy::parse(Some(PolicyId::new(id)), src).unwrap())
            .unwrap();
    }
    let authorizer = Authorizer::new();
    let entities = Entities::empty();
    let requests = cedar_requests(&intents);

    // The three engines must agree on every benched intent, or the comparison is void.
    let mut effects = Vec::new();
    for (k, i) in intents.iter().enumerate() {
        let a = sg(i).effect;
        let b = rego_effect(&mut engine, &inputs[k]);
        let c = cedar_effect(&authorizer, &cedar_policies, &entities, &requests[k]);
        assert!(
            a == b && b == c,
            "engines disagree on intent {k} ({i:?}): spendguard {a}, rego {b}, cedar {c}"
        );
        effects.push(a);
    }
    for e in [
        Effect::Allow,
        Effect::RequireHitl,
        Effect::RequireMsig,
        Effect::Deny,
    ] {
        assert!(effects.contains(&e), "benched intents must cover {e}");
    }

    let n = intents.len();
    let (sg_med, sg_p99) = time_each(|k| {
        black_box(sg(black_box(&intents[k % n])));
    });
    let (rg_med, rg_p99) = time_each(|k| {
        black_box(rego_effect(&mut engine, black_box(&inputs[k % n])));
    });
    let (cd_med, cd_p99) = time_each(|k| {
        black_box(cedar_effect(
            &authorizer,
            &cedar_policies,
            &entities,
            black_box(&requests[k % n]),
        ));
    });
    println!("\n| engine | median (ns) | p99 (ns) | median ratio vs spendguard |");
    println!("|---|---:|---:|---:|");
    println!("| spendguard | {sg_med} | {sg_p99} | 1.0x |");
    println!(
        "| regorus (Rego) | {rg_med} | {rg_p99} | {:.1}x |",
        rg_med as f64 / sg_med.max(1) as f64
    );
    println!(
        "| cedar-policy | {cd_med} | {cd_p99} | {:.1}x |",
        cd_med as f64 / sg_med.max(1) as f64
    );
    println!(
        "(per single evaluation over {n} intents covering ALLOW/HITL/MSIG/DENY, {SAMPLES_PER_ENGINE} samples each)\n"
    );

    let mut g = c.benchmark_group("conservative_policy_all_intents");
    g.bench_function("spendguard", |b| {
        b.iter(|| {
            for i in &intents {
                black_box(sg(black_box(i)));
            }
        })
    });
    g.bench_function("regorus", |b| {
        b.iter(|| {
            for input in &inputs {
                black_box(rego_effect(&mut engine, black_box(input)));
            }
        })
    });
    g.bench_function("cedar", |b| {
        b.iter(|| {
            for r in &requests {
                black_box(cedar_effect(
                    &authorizer,
                    &cedar_policies,
                    &entities,
                    black_box(r),
                ));
            }
        })
    });
    g.finish();
}

/// Limits of every kind (SPEC §12): calendar day/week/month/year/all_time, trailing 24h
/// and 7d, amount and count, agent and entity scope, filtered and not.
const LIMITS_POLICY: &str = r#"
name: limits-bench
description: every kind of limit
currency: BRL
timezone: America/Sao_Paulo
caps: { perTxn: "5000.00", daily: "20000.00", monthly: "200000.00" }
msig: { threshold: { higherThan: "4000.00", approvals: 2 } }
limits:
  - name: agent-day
    window: { calendar: day }
    amount: "3000.00"
  - name: agent-week-count
    window: { calendar: week }
    count: 60
  - name: agent-month
    window: { calendar: month }
    amount: "40000.00"
    count: 200
  - name: agent-year
    window: { calendar: year }
    amount: "300000.00"
    effect: DENY
  - name: agent-all-time
    window: { calendar: all_time }
    amount: "1000000.00"
    effect: DENY
  - name: agent-burst
    window: { trailing: 24h }
    count: 25
    effect: DENY
  - name: agent-travel-weekly
    window: { trailing: 7d }
    amount: "2000.00"
    filter: { categoryIn: [travel], beneficiaryIn: ["airline:*", "hotel:*"] }
  - name: entity-day
    window: { calendar: day }
    amount: "15000.00"
    count: 120
    scope: entity
  - name: entity-week
    window: { calendar: week }
    amount: "60000.00"
    scope: entity
  - name: entity-month
    window: { calendar: month }
    amount: "150000.00"
    scope: entity
    effect: REQUIRE_MSIG
    approvals: 2
  - name: entity-year
    window: { calendar: year }
    count: 5000
    scope: entity
  - name: entity-all-time
    window: { calendar: all_time }
    amount: "5000000.00"
    scope: entity
    effect: DENY
  - name: entity-trailing-24h
    window: { trailing: 24h }
    amount: "20000.00"
    scope: entity
  - name: entity-foreign-wires
    window: { trailing: 7d }
    amount: "10000.00"
    scope: entity
    filter: { purposeIn: [WIRE], countryIn: [US, PT] }
    effect: REQUIRE_MSIG
"#;

/// Intents for the limits policy: plain utility payments, travel, a foreign wire, one
/// over the msig threshold.
fn limit_intents() -> Vec<SpendIntent> {
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        ("250.00", "utility", "utility:light_company", "BR", "PIX"),
        ("89.90", "subscription", "bank:nubank", "BR", "PIX"),
        ("600.00", "travel", "airline:latam", "BR", "CARD"),
        ("1200.00", "travel", "hotel:ibis", "PT", "CARD"),
        ("3000.00", "supplier", "supplier:acme_us", "US", "WIRE"),
        ("4500.00", "tax", "tax:receita_federal", "BR", "OTHER"),
    ];
    cases
        .iter()
        .map(|(amount, cat, ben, country, purpose)| {
            let v = serde_json::json!({
                "intentId": "3f2b8c1e-9a4d-4e7b-8c2a-1d5e6f7a8b90", "agentId": "agent-ops-01", "entityId": "acme-br",
                "amount": amount, "currency": "BRL", "category": cat,
                "beneficiary": {"id": ben, "country": country}, "purpose": purpose
            });
            parse_intent(v.to_string().as_bytes()).expect("bench intents are valid")
        })
        .collect()
}

/// Agent records of the snapshot (the benched agent's); the entity holds
/// `ENTITY_RECORDS` in all, the rest from other agents.
const AGENT_RECORDS: usize = 50;
const ENTITY_RECORDS: usize = 200;

/// A snapshot as deciding loads it for `agent-ops-01` of `acme-br`: its spend records
/// and its entity's, spread over the past 60 days (some in the trailing windows, some in
/// this week/month, some only in the year), a mix of categories and purposes.
fn limit_snapshot() -> Projections {
    let mut s = Projections::default();
    let kinds: &[(&str, &str, &str, &str)] = &[
        ("utility", "utility:light_company", "BR", "PIX"),
        ("travel", "airline:latam", "BR", "CARD"),
        ("supplier", "supplier:acme_us", "US", "WIRE"),
        ("subscription", "bank:nubank", "BR", "PIX"),
        ("travel", "hotel:ibis", "PT", "CARD"),
    ];
    for k in 0..ENTITY_RECORDS {
        let agent = if k < AGENT_RECORDS {
            "agent-ops-01".to_string()
        } else {
            format!("agent-{}", k % 17)
        };
        let (cat, ben, country, purpose) = kinds[k % kinds.len()];
        // Minutes before `at()`: from 7 minutes to ~60 days back.
        let ago = chrono::Duration::minutes(7 + (k as i64 * 433) % (60 * 24 * 60));
        s.insert_record(&SpendRecordRow {
            intent_id: format!("0000{k:04}-9a4d-4e7b-8c2a-1d5e6f7a8b90"),
            agent_id: agent,
            entity_id: "acme-br".into(),
            accepted_at: at() - ago,
            category: cat.into(),
            beneficiary_id: ben.into(),
            country: Some(country.into()),
            purpose: purpose.into(),
            currency: "BRL".into(),
            amount: Decimal::new(1_000 + (k as i64 * 7919) % 40_000, 2),
            counts: true,
            seq: k as i64 + 1,
        });
    }
    s
}

fn bench_limits(c: &mut Criterion) {
    let policy = CompiledPolicy::parse(LIMITS_POLICY, "limits-bench").unwrap();
    assert_eq!(policy.limits().len(), 14, "every kind of limit");
    let intents = limit_intents();
    let snapshot = limit_snapshot();
    let now = at();
    let kill = KillState::Off;
    // What the snapshot sums to, computed once: (a) times the evaluator alone with these.
    let so_far: Vec<Vec<SoFar>> = intents
        .iter()
        .map(|i| {
            policy
                .limits()
                .iter()
                .map(|l| {
                    snapshot.limit_so_far(
                        l,
                        &l.span(now, policy.tz),
                        &i.agent_id,
                        &i.entity_id,
                        policy.currency.code,
                    )
                })
                .collect()
        })
        .collect();
    let eval = |k: usize| {
        evaluate_limited(
            &policy,
            &EvalInput {
                intent: &intents[k],
                usage: usage(),
                kill: &kill,
                accepted_at: now,
            },
            &so_far[k],
        )
    };
    // The two paths agree (the verdict adds nothing to a BRL intent's findings).
    let mut effects = Vec::new();
    for (k, intent) in intents.iter().enumerate() {
        let a = eval(k);
        let v = machine::verdict(&snapshot, intent, Some(&policy), now);
        assert_eq!(a.effect, v.evaluation.effect, "intent {k}");
        effects.push(a.effect);
    }
    let empty = Projections::default();
    let n = intents.len();
    let (ev_med, ev_p99) = time_each(|k| {
        black_box(eval(black_box(k % n)));
    });
    let (v_med, v_p99) = time_each(|k| {
        black_box(machine::verdict(
            black_box(&snapshot),
            black_box(&intents[k % n]),
            Some(&policy),
            now,
        ));
    });
    let (v0_med, v0_p99) = time_each(|k| {
        black_box(machine::verdict(
            black_box(&empty),
            black_box(&intents[k % n]),
            Some(&policy),
            now,
        ));
    });
    // The parts of the verdict that depend on limits, alone.
    let (sum_med, sum_p99) = time_each(|k| {
        let i = &intents[k % n];
        for l in policy.limits() {
            let span = l.span(now, policy.tz);
            black_box(snapshot.limit_so_far(
                l,
                black_box(&span),
                &i.agent_id,
                &i.entity_id,
                policy.currency.code,
            ));
        }
    });
    let (span_med, span_p99) = time_each(|_| {
        for l in policy.limits() {
            black_box(l.span(black_box(now), policy.tz));
        }
    });
    println!(
        "\n| limits policy ({} limits; effects {:?}) | median (ns) | p99 (ns) |",
        policy.limits().len(),
        effects
    );
    println!("|---|---:|---:|");
    println!("| (a) evaluate_limited, so-far precomputed | {ev_med} | {ev_p99} |");
    println!(
        "| (b) machine::verdict, {AGENT_RECORDS} agent / {ENTITY_RECORDS} entity records | {v_med} | {v_p99} |"
    );
    println!("| machine::verdict, empty snapshot | {v0_med} | {v0_p99} |");
    println!("| limit_so_far of every limit (incl. span) | {sum_med} | {sum_p99} |");
    println!("| span of every limit | {span_med} | {span_p99} |");
    println!("({n} intents cycled, {SAMPLES_PER_ENGINE} samples each)\n");

    let mut g = c.benchmark_group("limits_policy_all_intents");
    g.bench_function("evaluate_limited", |b| {
        b.iter(|| {
            for k in 0..n {
                black_box(eval(black_box(k)));
            }
        })
    });
    g.bench_function("verdict_250_records", |b| {
        b.iter(|| {
            for i in &intents {
                black_box(machine::verdict(
                    &snapshot,
                    black_box(i),
                    Some(&policy),
                    now,
                ));
            }
        })
    });
    g.finish();
}

/// Intake with card-data masking (SPEC §14, issue 13): every message is scanned once as
/// raw bytes before it is parsed, so the scan is on the path of every intent. Times the
/// scan alone (a clean intent, one with a card number in three fields) and the whole
/// parse of each.
fn bench_masking(c: &mut Criterion) {
    let clean = br#"{"intentId":"7c0e1234-5678-4abc-9def-0123456789ab","agentId":"agent-42","entityId":"acme-br","amount":"250.00","currency":"BRL","category":"utility","beneficiary":{"id":"utility:light_company","account":"0001-23456-7","country":"BR"},"purpose":"PIX","metadata":{"invoice":"2026-11-30/000123","requestedAt":"2026-11-30T19:00:16.123Z"}}"#;
    let with_pan = br#"{"intentId":"7c0e1234-5678-4abc-9def-0123456789ab","agentId":"agent-42","entityId":"acme-br","amount":"250.00","currency":"BRL","category":"utility","beneficiary":{"id":"card:4111.1111.1111.1111","account":"4111 1111 1111 1111","country":"BR"},"purpose":"CARD","metadata":{"note":"card 4111-1111-1111-1111","requestedAt":"2026-11-30T19:00:16.123Z"}}"#;
    assert!(parse_intent(clean).is_ok() && parse_intent(with_pan).is_ok());
    let mut g = c.benchmark_group("masking");
    g.bench_function("mask_json_bytes/clean_intent", |b| {
        b.iter(|| spendguard::privacy::mask_json_bytes(black_box(clean)).len())
    });
    g.bench_function("mask_json_bytes/intent_with_3_pans", |b| {
        b.iter(|| spendguard::privacy::mask_json_bytes(black_box(with_pan)).len())
    });
    g.bench_function("parse_intent/clean_intent", |b| {
        b.iter(|| parse_intent(black_box(clean)).is_ok())
    });
    g.bench_function("parse_intent/intent_with_3_pans", |b| {
        b.iter(|| parse_intent(black_box(with_pan)).is_ok())
    });
    g.finish();
}

criterion_group!(benches, bench, bench_limits, bench_masking);
criterion_main!(benches);
