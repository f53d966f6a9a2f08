//! Properties of the evaluator and the canonical form (proptest).
//!
//! Monotonicity holds for every built-in check. With first-match rules it holds when rules
//! are ordered from most to least severe (a rule that starts matching is then never less
//! severe than the one it displaces); the generator orders them so, and the linter warns
//! about orders that break it (`rule_order_can_lower_severity`).
//!
//! The parser fuzz targets (`fuzz_*`, SPEC §15) live in `parser_fuzz/`, in the same
//! binary: `SPENDGUARD_FUZZ_CASES=200000 cargo test --release --test policy fuzz_`.

use proptest::prelude::*;
use rust_decimal::Decimal;
use spendguard::decision::{Effect, KillState, Usage};
use spendguard::intent::{Beneficiary, Purpose, SpendIntent};
use spendguard::policy::model::*;
use spendguard::policy::{CompiledPolicy, EvalInput, evaluate};

const CATEGORIES: [&str; 6] = [
    "utility",
    "gambling",
    "travel",
    "investment",
    "crypto",
    "food",
];
const BENEFICIARIES: [&str; 6] = [
    "bank:itau",
    "bank:nubank",
    "sanctioned:x",
    "shop:a",
    "shop:b",
    "tax:rf",
];
const BENEFICIARY_PATTERNS: [&str; 7] = [
    "bank:itau",
    "bank:*",
    "sanctioned:*",
    "shop:?",
    "shop:a",
    "tax:rf",
    "*:x",
];
const COUNTRIES: [&str; 3] = ["BR", "US", "AR"];

fn money(max_minor: i64) -> impl Strategy<Value = Decimal> {
    (1..=max_minor).prop_map(|m| Decimal::new(m, 2))
}

fn pick<T: Clone + std::fmt::Debug + 'static>(
    items: &'static [T],
) -> impl Strategy<Value = Vec<T>> {
    proptest::sample::subsequence(items.to_vec(), 0..=items.len())
}

fn pats(items: &'static [&'static str]) -> impl Strategy<Value = Vec<Pattern>> {
    pick(items).prop_map(|v| v.into_iter().map(|s| Pattern(s.to_string())).collect())
}

/// Short lists, so that most intents are not denied outright and rules get a say.
fn few(items: &'static [&'static str]) -> impl Strategy<Value = Vec<Pattern>> {
    proptest::sample::subsequence(items.to_vec(), 0..=2)
        .prop_map(|v| v.into_iter().map(|s| Pattern(s.to_string())).collect())
}

fn countries() -> impl Strategy<Value = Vec<CountryCode>> {
    pick(&COUNTRIES).prop_map(|v| v.into_iter().map(|s| CountryCode(s.to_string())).collect())
}

fn conditions() -> impl Strategy<Value = Conditions> {
    (
        proptest::option::weighted(0.3, pats(&CATEGORIES)),
        proptest::option::weighted(0.3, money(100_000).prop_map(Amount)),
        proptest::option::weighted(0.3, money(100_000).prop_map(Amount)),
        proptest::bool::weighted(0.2),
        proptest::option::weighted(0.2, pats(&BENEFICIARY_PATTERNS)),
        proptest::option::weighted(0.2, countries()),
        proptest::option::weighted(0.2, countries()),
        proptest::option::weighted(0.2, pick(&Purpose::ALL)),
    )
        .prop_map(|(c, gt, gte, nia, b, ci, cni, p)| Conditions {
            category_in: c,
            amount_gt: gt,
            amount_gte: gte,
            beneficiary_not_in_allow: nia.then_some(true),
            beneficiary_in: b,
            country_in: ci,
            country_not_in: cni,
            purpose_in: p,
        })
}

fn rule() -> impl Strategy<Value = Rule> {
    (conditions(), 0..4u8, 1..4u32).prop_map(|(when, e, n)| {
        let effect = [
            Effect::Allow,
            Effect::RequireHitl,
            Effect::RequireMsig,
            Effect::Deny,
        ][e as usize];
        Rule {
            when,
            then: Then {
                effect,
                reason: ReasonCode(format!("rule_{}", effect.as_str().to_lowercase())),
                approvals: (effect == Effect::RequireMsig).then_some(n),
            },
        }
    })
}

prop_compose! {
    fn policy()(
        per_txn in money(100_000), daily_extra in money(200_000), monthly_extra in money(500_000),
        msig in proptest::option::of((money(100_000), 1..4u32)),
        allow_b in proptest::option::of(pats(&BENEFICIARY_PATTERNS)),
        allow_c in proptest::option::of(countries()),
        block_c in few(&CATEGORIES), block_b in few(&BENEFICIARY_PATTERNS),
        mut rules in proptest::collection::vec(rule(), 0..5),
    ) -> PolicySpec {
        // Most severe first: the order under which first-match rules are monotone.
        rules.sort_by_key(|r| std::cmp::Reverse(r.then.effect));
        PolicySpec {
            name: Some("prop".into()), version: Some("1".into()), tags: vec![], description: None,
            currency: CurrencyCode("BRL".into()), timezone: None,
            caps: Caps { per_txn: Amount(per_txn), daily: Amount(per_txn + daily_extra), monthly: Amount(per_txn + daily_extra + monthly_extra) },
            msig: msig.map(|(h, n)| Msig { threshold: MsigThreshold { higher_than: Amount(h), approvals: n } }),
            allow_lists: Some(AllowLists { beneficiaries: allow_b, countries: allow_c }),
            block_lists: Some(BlockLists { categories: block_c, beneficiaries: block_b }),
            rules, approval_ttl: None, rego: None, authorization_ttl: None, refunds: None, limits: vec![], fx: None,
        }
    }
}

prop_compose! {
    fn intent()(
        amount in money(120_000), cat in 0..CATEGORIES.len(), ben in 0..BENEFICIARIES.len(),
        country in proptest::option::of(0..COUNTRIES.len()), purpose in 0..Purpose::ALL.len(),
    ) -> SpendIntent {
        SpendIntent {
            intent_id: "8e7a6b1c-3d2f-4e5a-9b8c-7d6e5f4a3b2c".into(), agent_id: "agent-1".into(), entity_id: "acme-br".into(),
            amount, currency: "BRL".into(), category: CATEGORIES[cat].into(),
            beneficiary: Beneficiary { id: BENEFICIARIES[ben].into(), account: None, country: country.map(|c| COUNTRIES[c].into()) },
            purpose: Purpose::ALL[purpose], metadata: None,
        }
    }
}

fn compile(spec: &PolicySpec) -> CompiledPolicy {
    CompiledPolicy::parse(&serde_json::to_string(spec).unwrap(), "prop.json").unwrap()
}

fn severity(p: &CompiledPolicy, i: &SpendIntent, usage: Usage) -> Effect {
    let at = chrono::DateTime::parse_from_rfc3339("2026-11-25T15:00:00Z")
        .unwrap()
        .into();
    evaluate(
        p,
        &EvalInput {
            intent: i,
            usage,
            kill: &KillState::Off,
            accepted_at: at,
        },
    )
    .effect
}

fn usage() -> impl Strategy<Value = Usage> {
    (money(500_000), money(2_000_000)).prop_map(|(d, m)| Usage {
        daily_so_far: d,
        monthly_so_far: d + m,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn raising_amount_never_lowers_severity(spec in policy(), i in intent(), u in usage(), extra in money(50_000)) {
        let p = compile(&spec);
        let mut more = i.clone();
        more.amount += extra;
        prop_assert!(severity(&p, &more, u) >= severity(&p, &i, u));
    }

    #[test]
    fn raising_usage_never_lowers_severity(spec in policy(), i in intent(), u in usage(), d in money(100_000), m in money(100_000)) {
        let p = compile(&spec);
        let more = Usage { daily_so_far: u.daily_so_far + d, monthly_so_far: u.monthly_so_far + m };
        prop_assert!(severity(&p, &i, more) >= severity(&p, &i, u));
    }

    #[test]
    fn adding_a_block_entry_never_lowers_severity(spec in policy(), i in intent(), u in usage(), which in any::<bool>(), entry in 0..BENEFICIARY_PATTERNS.len()) {
        let p = compile(&spec);
        let mut stricter = spec.clone();
        let block = stricter.block_lists.get_or_insert_with(Default::default);
        if which {
            block.categories.push(Pattern(CATEGORIES[entry % CATEGORIES.len()].into()));
        } else {
            block.beneficiaries.push(Pattern(BENEFICIARY_PATTERNS[entry].into()));
        }
        prop_assert!(severity(&compile(&stricter), &i, u) >= severity(&p, &i, u));
    }

    #[test]
    fn removing_an_allow_entry_never_lowers_severity(spec in policy(), i in intent(), u in usage(), which in any::<bool>(), idx in 0..8usize) {
        let p = compile(&spec);
        let mut stricter = spec.clone();
        let allow = stricter.allow_lists.get_or_insert_with(Default::default);
        if which {
            if let Some(b) = allow.beneficiaries.as_mut().filter(|b| !b.is_empty()) {
                b.remove(idx % b.len());
            }
        } else if let Some(c) = allow.countries.as_mut().filter(|c| !c.is_empty()) {
            c.remove(idx % c.len());
        }
        prop_assert!(severity(&compile(&stricter), &i, u) >= severity(&p, &i, u));
    }

    /// SPEC §12: a limit only adds findings. Whatever it says and whatever counted
    /// before, the policy with it is never milder, and a non-ALLOW never becomes ALLOW.
    #[test]
    fn adding_a_limit_never_lowers_severity(
        spec in policy(), i in intent(), u in usage(),
        amount in proptest::option::of(money(200_000)), count in proptest::option::of(0u32..5),
        used_amount in money(200_000), used_count in 0u32..6,
        effect in 0..3usize, calendar in 0..5usize, entity in any::<bool>(),
        filtered in any::<bool>(), cat in 0..CATEGORIES.len(),
    ) {
        use spendguard::policy::model::{CalendarWindow, LimitFilter, LimitScope, LimitSpec, LimitWindow};
        let count = if amount.is_none() && count.is_none() { Some(1) } else { count };
        let p = compile(&spec);
        let mut stricter = spec.clone();
        stricter.limits.push(LimitSpec {
            name: "prop-limit".into(),
            window: LimitWindow::calendar([CalendarWindow::Day, CalendarWindow::Week, CalendarWindow::Month, CalendarWindow::Year, CalendarWindow::AllTime][calendar]),
            amount: amount.map(Amount),
            count,
            scope: Some(if entity { LimitScope::Entity } else { LimitScope::Agent }),
            filter: filtered.then(|| LimitFilter { category_in: Some(vec![Pattern(CATEGORIES[cat].into())]), ..LimitFilter::default() }),
            effect: Some([Effect::RequireHitl, Effect::RequireMsig, Effect::Deny][effect]),
            approvals: (effect == 1).then_some(3),
        });
        let q = compile(&stricter);
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-25T15:00:00Z").unwrap().into();
        let input = EvalInput { intent: &i, usage: u, kill: &KillState::Off, accepted_at: at };
        let so_far = [spendguard::policy::limits::SoFar { amount: used_amount, count: used_count }];
        let before = evaluate(&p, &input);
        let after = spendguard::policy::evaluate_limited(&q, &input, &so_far);
        prop_assert!(after.effect >= before.effect);
        prop_assert!(before.effect == Effect::Allow || after.effect != Effect::Allow);
        // Same effect: at least as many approvals (a DENY needs none).
        prop_assert!(after.effect != before.effect || after.approvals_required >= before.approvals_required);
    }

    #[test]
    fn evaluation_is_deterministic(spec in policy(), i in intent(), u in usage()) {
        let p = compile(&spec);
        let q = compile(&spec);
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-25T15:00:00Z").unwrap().into();
        let input = EvalInput { intent: &i, usage: u, kill: &KillState::Off, accepted_at: at };
        prop_assert_eq!(evaluate(&p, &input), evaluate(&q, &input));
    }

    #[test]
    fn serialize_then_parse_keeps_the_hash(spec in policy()) {
        let p = compile(&spec);
        let yaml = serde_yaml::to_string(&spec).unwrap();
        let pretty = serde_json::to_string_pretty(&spec).unwrap();
        for text in [yaml.as_str(), pretty.as_str(), p.canonical_json()] {
            let q = CompiledPolicy::parse(text, "again").unwrap();
            prop_assert_eq!(&q.identity, &p.identity);
            prop_assert_eq!(q.canonical_json(), p.canonical_json());
        }
        // Set-like lists in another order: same policy, same hash.
        let mut shuffled = spec.clone();
        if let Some(b) = shuffled.block_lists.as_mut() { b.categories.reverse(); b.beneficiaries.reverse(); }
        if let Some(c) = shuffled.allow_lists.as_mut().and_then(|a| a.countries.as_mut()) { c.reverse(); }
        prop_assert_eq!(&compile(&shuffled).identity, &p.identity);
    }
}

/// Why the generator orders rules: first-match semantics (SPEC §2.1) let a milder rule
/// that starts matching at a higher amount displace a stricter one. The linter flags it.
#[test]
fn rule_order_matters_for_monotonicity() {
    let text = r#"{"name":"order","currency":"BRL","caps":{"perTxn":1000,"daily":5000,"monthly":9000},
      "rules":[{"if":{"amountGt":100},"then":{"effect":"REQUIRE_HITL","reason":"big"}},
               {"if":{"categoryIn":["travel"]},"then":{"effect":"DENY","reason":"no_travel"}}]}"#;
    let p = CompiledPolicy::parse(text, "order.json").unwrap();
    let mut i = SpendIntent {
        intent_id: "8e7a6b1c-3d2f-4e5a-9b8c-7d6e5f4a3b2c".into(),
        agent_id: "a".into(),
        entity_id: "e".into(),
        amount: Decimal::new(5000, 2),
        currency: "BRL".into(),
        category: "travel".into(),
        beneficiary: Beneficiary {
            id: "x".into(),
            account: None,
            country: None,
        },
        purpose: Purpose::Pix,
        metadata: None,
    };
    assert_eq!(severity(&p, &i, Usage::default()), Effect::Deny);
    i.amount = Decimal::new(15000, 2);
    assert_eq!(severity(&p, &i, Usage::default()), Effect::RequireHitl);
}
