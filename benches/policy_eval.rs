//! The conservative origin policy three ways — spendguard's evaluator, the same logic in
//! Rego (regorus) and in Cedar (cedar-policy) — over the same intents, in one run.
//!
//! Setup asserts the three engines agree on every benched intent. Besides criterion's
//! estimates, it prints median and p99 of single evaluations (per-call `Instant` timing,
//! which includes ~20-40 ns of clock overhead) and the ratios, for docs/benchmarks.md.
//!
//! Run: `cargo bench --bench policy_eval -- --warm-up-time 1 --measurement-time 3`

use cedar_policy::{
    Authorizer, Context, Entities, EntityUid, Policy, PolicyId, PolicySet, Request,
    RestrictedExpression,
};
use criterion::{Criterion, criterion_group, criterion_main};
use spendguard::decision::{Effect, KillState, Usage};
use spendguard::intent::{SpendIntent, parse_intent};
use spendguard::policy::{CompiledPolicy, EvalInput, evaluate, rego::minor};
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

criterion_group!(benches, bench);
criterion_main!(benches);
