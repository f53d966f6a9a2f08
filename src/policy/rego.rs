//! The Rego escape hatch (SPEC §2.3): a policy's optional module, evaluated by regorus.
//! Its query yields `{effect, reason, approvals?, detail?}` (one more finding) or nothing.
//! Time and usage come only from the input, so a replay gives the same answer.
//! Any error fails closed: DENY `rego_error`.

use super::error::PolicyError;
use crate::decision::{Effect, Finding, Usage};
use crate::intent::SpendIntent;
use rust_decimal::Decimal;
use std::borrow::Cow;
use std::sync::Mutex;

/// Longest error message copied into a `rego_error` finding.
const MAX_REGO_ERROR_CHARS: usize = 300;

/// A compiled module plus its query. The engine is kept as a prepared template and cloned
/// per evaluation: evaluation mutates the engine (input), and decisions run concurrently.
#[derive(Debug)]
pub struct RegoProgram {
    template: Mutex<regorus::Engine>,
    query: String,
}

impl RegoProgram {
    pub fn compile(module: &str, query: &str, origin: &str) -> Result<RegoProgram, PolicyError> {
        let mut engine = regorus::Engine::new();
        engine
            .add_policy(format!("{origin}#rego"), module.to_string())
            .map_err(|e| {
                PolicyError::at(
                    origin,
                    1,
                    1,
                    "rego_compile_error",
                    format!("rego module does not compile: {e}"),
                    "fix the Rego source in rego.module (the position above is inside the module)",
                )
            })?;
        Ok(RegoProgram {
            template: Mutex::new(engine),
            query: query.to_string(),
        })
    }

    /// Runs the query for one intent. `None` when the module has nothing to say.
    pub fn evaluate(
        &self,
        intent: &SpendIntent,
        usage: Usage,
        accepted_at: chrono::DateTime<chrono::Utc>,
        minor_units: u32,
    ) -> Option<Finding> {
        match self.run(intent, usage, accepted_at, minor_units) {
            Ok(f) => f,
            Err(message) => Some(Finding {
                effect: Effect::Deny,
                code: Cow::Borrowed("rego_error"),
                detail: Cow::Owned(message.chars().take(MAX_REGO_ERROR_CHARS).collect()),
                approvals: 0,
            }),
        }
    }

    fn run(
        &self,
        intent: &SpendIntent,
        usage: Usage,
        accepted_at: chrono::DateTime<chrono::Utc>,
        minor_units: u32,
    ) -> Result<Option<Finding>, String> {
        let input = rego_input(intent, usage, accepted_at, minor_units);
        let mut engine = match self.template.lock() {
            Ok(t) => t.clone(),
            // A panic elsewhere while cloning cannot corrupt a template we never mutate.
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        engine
            .set_input_json(&input.to_string())
            .map_err(|e| format!("rego input rejected: {e}"))?;
        let results = engine
            .eval_query(self.query.clone(), false)
            .map_err(|e| format!("rego evaluation failed: {e}"))?;
        let Some(value) = results
            .result
            .first()
            .and_then(|r| r.expressions.first())
            .map(|e| &e.value)
        else {
            return Ok(None);
        };
        if *value == regorus::Value::Undefined || *value == regorus::Value::Null {
            return Ok(None);
        }
        let json =
            serde_json::to_value(value).map_err(|e| format!("rego result is not JSON: {e}"))?;
        finding_from_json(&json).map(Some)
    }
}

/// The input document a module sees. Amounts are exact decimal strings plus integer minor
/// units (`amountMinor`), because Rego numbers are floats.
pub fn rego_input(
    intent: &SpendIntent,
    usage: Usage,
    accepted_at: chrono::DateTime<chrono::Utc>,
    minor_units: u32,
) -> serde_json::Value {
    let mut intent_json = serde_json::to_value(intent).unwrap_or(serde_json::Value::Null);
    if let Some(obj) = intent_json.as_object_mut() {
        obj.insert(
            "amountMinor".into(),
            minor(intent.amount, minor_units).into(),
        );
    }
    serde_json::json!({
        "intent": intent_json,
        "usage": {
            "dailySoFar": usage.daily_so_far.to_string(),
            "monthlySoFar": usage.monthly_so_far.to_string(),
            "dailySoFarMinor": minor(usage.daily_so_far, minor_units),
            "monthlySoFarMinor": minor(usage.monthly_so_far, minor_units),
        },
        "acceptedAt": accepted_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "acceptedAtNs": accepted_at.timestamp_nanos_opt().unwrap_or(i64::MAX),
    })
}

/// Amount in minor units (`12.34` BRL -> 1234). Amounts are bounded (1e12), so this fits.
pub fn minor(amount: Decimal, minor_units: u32) -> i64 {
    let scaled = amount * Decimal::from(10i64.pow(minor_units));
    i64::try_from(scaled.trunc()).unwrap_or(i64::MAX)
}

fn finding_from_json(v: &serde_json::Value) -> Result<Finding, String> {
    let obj = v.as_object().ok_or_else(|| {
        format!("rego query must yield an object {{effect, reason, approvals?}}, got {v}")
    })?;
    let effect_s = obj
        .get("effect")
        .and_then(|e| e.as_str())
        .ok_or("rego result lacks a string `effect`")?;
    let effect = Effect::parse(effect_s).ok_or_else(|| {
        format!("rego result effect {effect_s:?} is not ALLOW, REQUIRE_HITL, REQUIRE_MSIG or DENY")
    })?;
    let reason = obj
        .get("reason")
        .and_then(|e| e.as_str())
        .ok_or("rego result lacks a string `reason`")?;
    if !super::model::is_reason_code(reason) {
        return Err(format!(
            "rego result reason {reason:?} is not a lower_snake_case code"
        ));
    }
    let approvals = match (effect, obj.get("approvals")) {
        (Effect::RequireMsig, Some(a)) => a
            .as_u64()
            .and_then(|a| u32::try_from(a).ok())
            .filter(|a| (1..=super::model::MAX_APPROVALS).contains(a))
            .ok_or_else(|| {
                format!(
                    "rego result approvals {a} must be an integer 1..={}",
                    super::model::MAX_APPROVALS
                )
            })?,
        (Effect::RequireMsig, None) => {
            return Err("rego result REQUIRE_MSIG lacks `approvals`".into());
        }
        (Effect::RequireHitl, _) => 1,
        _ => 0,
    };
    let detail = obj.get("detail").and_then(|d| d.as_str()).map_or_else(
        || "rego module finding".to_string(),
        |d| d.chars().take(MAX_REGO_ERROR_CHARS).collect(),
    );
    Ok(Finding {
        effect,
        code: Cow::Owned(reason.to_string()),
        detail: Cow::Owned(detail),
        approvals,
    })
}
