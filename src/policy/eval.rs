//! The evaluator (SPEC §2.1): a pure function of (compiled policy, intent, usage,
//! kill-switch state, acceptance time). Every check runs and contributes findings; the
//! decision is the most severe one (deny overrides).

use super::compile::{CompiledPolicy, CompiledRule, Cond, purpose_bit};
use crate::decision::{Effect, Evaluation, Finding, KillState, Usage};
use crate::intent::SpendIntent;
use crate::money::format_amount;
use rust_decimal::Decimal;
use std::borrow::Cow;

/// Everything a decision depends on. `accepted_at` is the ledger's acceptance time (never
/// the agent's clock, never read here from the wall clock).
#[derive(Debug, Clone, Copy)]
pub struct EvalInput<'a> {
    pub intent: &'a SpendIntent,
    pub usage: Usage,
    pub kill: &'a KillState,
    pub accepted_at: chrono::DateTime<chrono::Utc>,
}

/// Stable reason codes of the built-in checks.
pub mod codes {
    pub const KILL_SWITCH_ACTIVATED: &str = "kill_switch_activated";
    /// Decided by the ledger before the policy: the agent is bound to another entity.
    pub const ENTITY_MISMATCH: &str = "entity_mismatch";
    pub const CURRENCY_NOT_SUPPORTED: &str = "currency_not_supported";
    pub const EXCEEDS_PER_TRANSACTION_LIMIT: &str = "exceeds_per_transaction_limit";
    pub const CATEGORY_BLOCKED: &str = "category_blocked";
    pub const BENEFICIARY_BLOCKED: &str = "beneficiary_blocked";
    pub const COUNTRY_NOT_ALLOWED: &str = "country_not_allowed";
    pub const WOULD_EXCEED_DAILY_LIMIT: &str = "would_exceed_daily_limit";
    pub const WOULD_EXCEED_MONTHLY_LIMIT: &str = "would_exceed_monthly_limit";
    pub const BENEFICIARY_REQUIRES_APPROVAL: &str = "beneficiary_requires_approval";
    pub const AMOUNT_REQUIRES_MULTIPLE_APPROVALS: &str = "amount_requires_multiple_approvals";
    pub const POLICY_COMPLIANT: &str = "policy_compliant_all_checks_passed";
    pub const NO_POLICY_BOUND: &str = "no_policy_bound";
    pub const REGO_ERROR: &str = "rego_error";

    /// Every built-in code, in check order.
    pub const ALL: [&str; 14] = [
        KILL_SWITCH_ACTIVATED,
        ENTITY_MISMATCH,
        CURRENCY_NOT_SUPPORTED,
        EXCEEDS_PER_TRANSACTION_LIMIT,
        CATEGORY_BLOCKED,
        BENEFICIARY_BLOCKED,
        COUNTRY_NOT_ALLOWED,
        WOULD_EXCEED_DAILY_LIMIT,
        WOULD_EXCEED_MONTHLY_LIMIT,
        BENEFICIARY_REQUIRES_APPROVAL,
        AMOUNT_REQUIRES_MULTIPLE_APPROVALS,
        POLICY_COMPLIANT,
        NO_POLICY_BOUND,
        REGO_ERROR,
    ];
}

/// Typical worst case of simultaneous findings; sized so the deny paths rarely regrow.
const FINDINGS_CAPACITY: usize = 4;

fn finding(effect: Effect, code: &'static str, detail: String, approvals: u32) -> Finding {
    Finding {
        effect,
        code: Cow::Borrowed(code),
        detail: Cow::Owned(detail),
        approvals,
    }
}

/// Evaluates one intent against one policy with nothing counted toward its `limits`
/// before it (offline evaluation of a single intent, policies without limits). Pure;
/// never panics on any intent.
pub fn evaluate(policy: &CompiledPolicy, input: &EvalInput<'_>) -> Evaluation {
    evaluate_limited(policy, input, &[])
}

/// Evaluates one intent; `so_far[i]` is what counted toward `policy.limits()[i]` in its
/// window and scope before this intent (missing entries count from zero).
pub fn evaluate_limited(
    policy: &CompiledPolicy,
    input: &EvalInput<'_>,
    so_far: &[super::limits::SoFar],
) -> Evaluation {
    let intent = input.intent;
    // 1. The kill switch answers alone: nothing else is looked at while it is on.
    if let KillState::On { scope } = input.kill {
        return Evaluation {
            effect: Effect::Deny,
            approvals_required: 0,
            reasons: vec![finding(
                Effect::Deny,
                codes::KILL_SWITCH_ACTIVATED,
                format!(
                    "kill switch is on for scope {scope}; no spending until an operator clears it"
                ),
                0,
            )],
        };
    }

    let minor = policy.currency.minor_units;
    let cur = policy.currency.code;
    let amt = |d: Decimal| format_amount(d, minor);
    let mut findings: Vec<Finding> = Vec::new();

    // 2. Caps are money in the policy currency: an amount in another currency is not
    // comparable, so the money checks (3, 7, 8, 11 and amount conditions) are skipped
    // and the intent is denied.
    let same_currency = intent.currency == cur;
    if !same_currency {
        findings.reserve(FINDINGS_CAPACITY);
        findings.push(finding(
            Effect::Deny,
            codes::CURRENCY_NOT_SUPPORTED,
            format!(
                "intent currency {} but policy {} caps are in {cur}",
                intent.currency, policy.identity.name
            ),
            0,
        ));
    }
    let amount = intent.amount;

    // 3. Per-transaction cap (equality passes).
    if same_currency && amount > policy.per_txn {
        findings.push(finding(
            Effect::Deny,
            codes::EXCEEDS_PER_TRANSACTION_LIMIT,
            format!("{} > {} {cur}", amt(amount), amt(policy.per_txn)),
            0,
        ));
    }
    // 4. Blocked category.
    if let Some(p) = policy.block_categories.find(&intent.category) {
        findings.push(finding(
            Effect::Deny,
            codes::CATEGORY_BLOCKED,
            blocked_detail("category", &intent.category, p),
            0,
        ));
    }
    // 5. Blocked beneficiary (globs).
    if let Some(p) = policy.block_beneficiaries.find(&intent.beneficiary.id) {
        findings.push(finding(
            Effect::Deny,
            codes::BENEFICIARY_BLOCKED,
            blocked_detail("beneficiary", &intent.beneficiary.id, p),
            0,
        ));
    }
    // 6. Country allow list: a missing country is not in the list.
    if let Some(countries) = &policy.allow_countries {
        match intent.beneficiary.country.as_deref() {
            Some(c) if countries.contains(c) => {}
            Some(c) => findings.push(finding(
                Effect::Deny,
                codes::COUNTRY_NOT_ALLOWED,
                format!(
                    "beneficiary country {c} is not in the allowed countries [{}]",
                    countries.describe()
                ),
                0,
            )),
            None => findings.push(finding(
                Effect::Deny,
                codes::COUNTRY_NOT_ALLOWED,
                format!(
                    "beneficiary country is missing; the policy allows only [{}]",
                    countries.describe()
                ),
                0,
            )),
        }
    }
    if same_currency {
        // 7, 8. Windows: usage so far (committed + reserved) plus this amount.
        window_check(
            &mut findings,
            "daily",
            codes::WOULD_EXCEED_DAILY_LIMIT,
            input.usage.daily_so_far,
            amount,
            policy.daily,
            minor,
            cur,
        );
        window_check(
            &mut findings,
            "monthly",
            codes::WOULD_EXCEED_MONTHLY_LIMIT,
            input.usage.monthly_so_far,
            amount,
            policy.monthly,
            minor,
            cur,
        );
        // 8b. Limits (SPEC §12), in the order the policy lists them.
        super::limits::check(
            &policy.limits,
            so_far,
            intent,
            input.accepted_at,
            policy.tz,
            minor,
            cur,
            &mut findings,
        );
    }
    // 9. Beneficiary allow list.
    let beneficiary_not_allowed = policy
        .allow_beneficiaries
        .as_ref()
        .is_some_and(|m| !m.matches(&intent.beneficiary.id));
    if beneficiary_not_allowed {
        findings.push(finding(
            Effect::RequireHitl,
            codes::BENEFICIARY_REQUIRES_APPROVAL,
            format!(
                "beneficiary {} is not in the allow list",
                intent.beneficiary.id
            ),
            1,
        ));
    }
    // 10. Rules: the first match gives its own finding. An ALLOW rule ends the list and
    // lowers nothing (it is one more finding, at the lowest severity).
    for rule in &policy.rules {
        if rule_matches(rule, intent, same_currency, beneficiary_not_allowed) {
            findings.push(Finding {
                effect: rule.effect,
                code: Cow::Owned(rule.reason.clone()),
                detail: Cow::Owned(describe_rule(rule, intent, policy)),
                approvals: rule.approvals,
            });
            break;
        }
    }
    // 11. Multi-signature threshold.
    if same_currency
        && let Some((higher_than, approvals)) = policy.msig
        && amount > higher_than
    {
        findings.push(finding(
            Effect::RequireMsig,
            codes::AMOUNT_REQUIRES_MULTIPLE_APPROVALS,
            format!(
                "{} > {} {cur}: {approvals} approvals required",
                amt(amount),
                amt(higher_than)
            ),
            approvals,
        ));
    }
    // 12. Rego module.
    if let Some(rego) = &policy.rego
        && let Some(f) = rego.evaluate(intent, input.usage, input.accepted_at, minor)
    {
        findings.push(f);
    }
    conclude(findings)
}

#[allow(clippy::too_many_arguments)]
fn window_check(
    findings: &mut Vec<Finding>,
    window: &str,
    code: &'static str,
    so_far: Decimal,
    amount: Decimal,
    cap: Decimal,
    minor: u32,
    cur: &str,
) {
    // Sums are bounded (amounts <= 1e12), but never trust that: overflow counts as over.
    let total = so_far.checked_add(amount);
    if total.is_none_or(|t| t > cap) {
        let total_s = total.map_or_else(|| "overflow".to_string(), |t| format_amount(t, minor));
        findings.push(finding(
            Effect::RequireHitl,
            code,
            format!(
                "{window} so far {} + {} = {total_s} > {} {cur}",
                format_amount(so_far, minor),
                format_amount(amount, minor),
                format_amount(cap, minor)
            ),
            1,
        ));
    }
}

fn blocked_detail(what: &str, value: &str, pattern: &str) -> String {
    if pattern == value {
        format!("{what} {value} is on the block list")
    } else {
        format!("{what} {value} matches blocked pattern {pattern}")
    }
}

fn rule_matches(
    rule: &CompiledRule,
    intent: &SpendIntent,
    same_currency: bool,
    not_in_allow: bool,
) -> bool {
    rule.conds.iter().all(|c| match c {
        Cond::CategoryIn(m) => m.matches(&intent.category),
        Cond::AmountGt(a) => same_currency && intent.amount > *a,
        Cond::AmountGte(a) => same_currency && intent.amount >= *a,
        Cond::BeneficiaryNotInAllow => not_in_allow,
        Cond::BeneficiaryIn(m) => m.matches(&intent.beneficiary.id),
        Cond::CountryIn(s) => intent
            .beneficiary
            .country
            .as_deref()
            .is_some_and(|c| s.contains(c)),
        Cond::CountryNotIn(s) => !intent
            .beneficiary
            .country
            .as_deref()
            .is_some_and(|c| s.contains(c)),
        Cond::PurposeIn(bits) => bits & purpose_bit(intent.purpose) != 0,
    })
}

/// "rule 2 matched: amount 450.00 > 300.00 BRL"
fn describe_rule(rule: &CompiledRule, intent: &SpendIntent, policy: &CompiledPolicy) -> String {
    let minor = policy.currency.minor_units;
    let cur = policy.currency.code;
    let parts: Vec<String> = rule
        .conds
        .iter()
        .map(|c| match c {
            Cond::CategoryIn(m) => format!(
                "category {} in {}",
                intent.category,
                m.find(&intent.category).unwrap_or("?")
            ),
            Cond::AmountGt(a) => {
                format!(
                    "amount {} > {} {cur}",
                    format_amount(intent.amount, minor),
                    format_amount(*a, minor)
                )
            }
            Cond::AmountGte(a) => {
                format!(
                    "amount {} >= {} {cur}",
                    format_amount(intent.amount, minor),
                    format_amount(*a, minor)
                )
            }
            Cond::BeneficiaryNotInAllow => {
                format!("beneficiary {} not in allow list", intent.beneficiary.id)
            }
            Cond::BeneficiaryIn(m) => {
                format!(
                    "beneficiary {} in {}",
                    intent.beneficiary.id,
                    m.find(&intent.beneficiary.id).unwrap_or("?")
                )
            }
            Cond::CountryIn(s) => format!(
                "country {} in [{}]",
                intent.beneficiary.country.as_deref().unwrap_or("-"),
                s.describe()
            ),
            Cond::CountryNotIn(s) => {
                format!(
                    "country {} not in [{}]",
                    intent.beneficiary.country.as_deref().unwrap_or("(missing)"),
                    s.describe()
                )
            }
            Cond::PurposeIn(_) => format!("purpose {}", intent.purpose.as_str()),
        })
        .collect();
    if parts.is_empty() {
        format!("rule {} matched (no conditions)", rule.number)
    } else {
        format!("rule {} matched: {}", rule.number, parts.join("; "))
    }
}

/// Most severe first, stable within a severity (check order); the summary finding when
/// nothing is above ALLOW.
fn conclude(mut findings: Vec<Finding>) -> Evaluation {
    let effect = findings
        .iter()
        .map(|f| f.effect)
        .max()
        .unwrap_or(Effect::Allow);
    if effect == Effect::Allow {
        findings.push(Finding {
            effect: Effect::Allow,
            code: Cow::Borrowed(codes::POLICY_COMPLIANT),
            detail: Cow::Borrowed("every check passed"),
            approvals: 0,
        });
    }
    // `sort_by_key` is stable, so equal severities keep check order.
    findings.sort_by_key(|f| std::cmp::Reverse(f.effect));
    let approvals_required = if effect.needs_approval() {
        findings
            .iter()
            .filter(|f| f.effect.needs_approval())
            .map(|f| f.approvals)
            .max()
            .unwrap_or(1)
    } else {
        0
    };
    Evaluation {
        effect,
        approvals_required,
        reasons: findings,
    }
}

/// The decision for an agent no binding covers: the agent never chooses its policy.
pub fn no_policy_bound(intent: &SpendIntent) -> Evaluation {
    Evaluation {
        effect: Effect::Deny,
        approvals_required: 0,
        reasons: vec![finding(
            Effect::Deny,
            codes::NO_POLICY_BOUND,
            format!(
                "no policy is bound to agent {} (entity {}); an operator must add a binding in policies/bindings.yaml",
                intent.agent_id, intent.entity_id
            ),
            0,
        )],
    }
}
