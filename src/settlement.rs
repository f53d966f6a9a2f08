//! Settlement messages (SPEC §11, topic `spend.settlements`): what a payment service
//! says became of the money an intent authorized. Parsing follows the intents' rules:
//! never panics, never loses input, every failure a stable `code` (the same error
//! type as intents, so dead letters and audit events carry the same fields).

use crate::intent::{self, IntentError};
use crate::money;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Largest settlement message accepted, in bytes (a settlement is ~200 bytes; the rest
/// is room for metadata).
pub const MAX_SETTLEMENT_BYTES: usize = 8 * 1024;

/// A settlement's parse error: the intents' error type, with codes `message_too_large`,
/// `invalid_utf8`, `invalid_json`, `missing_field`, `invalid_field`, `unknown_field`,
/// `unknown_type`, `invalid_amount`, `non_positive_amount`,
/// `amount_scale_exceeds_currency`, `amount_too_large`, `unknown_currency`,
/// `amount_required`, `amount_not_allowed`, `currency_required`, `metadata_too_large`.
pub type SettlementError = IntentError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SettlementType {
    Capture,
    Void,
    Refund,
    Cancel,
}

impl SettlementType {
    pub const ALL: [SettlementType; 4] = [
        SettlementType::Capture,
        SettlementType::Void,
        SettlementType::Refund,
        SettlementType::Cancel,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SettlementType::Capture => "CAPTURE",
            SettlementType::Void => "VOID",
            SettlementType::Refund => "REFUND",
            SettlementType::Cancel => "CANCEL",
        }
    }

    pub fn parse(s: &str) -> Option<SettlementType> {
        SettlementType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// A validated settlement message. `amount` and `currency` are present together: always
/// for CAPTURE and REFUND, optionally for VOID (absent = the whole remainder), never
/// for CANCEL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settlement {
    pub settlement_id: String,
    pub intent_id: String,
    #[serde(rename = "type")]
    pub kind: SettlementType,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub amount: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// CAPTURE only: no further capture follows; the uncaptured remainder is released.
    #[serde(default, rename = "final")]
    pub is_final: bool,
    /// When the payment service saw it happen (informational: windows use the original
    /// acceptance time, expiry the ledger's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WireSettlement<'a> {
    settlement_id: String,
    intent_id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, borrow)]
    amount: Option<&'a RawValue>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default, rename = "final")]
    is_final: Option<bool>,
    #[serde(default)]
    occurred_at: Option<String>,
    #[serde(default)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Parses and validates one settlement message.
pub fn parse_settlement(bytes: &[u8]) -> Result<Settlement, SettlementError> {
    if bytes.len() > MAX_SETTLEMENT_BYTES {
        return Err(IntentError::new(
            "message_too_large",
            None,
            format!(
                "message is {} bytes; the limit is {MAX_SETTLEMENT_BYTES}",
                bytes.len()
            ),
        ));
    }
    // Card numbers masked before any field exists, as for intents (SPEC §14).
    let bytes = crate::privacy::mask_json_bytes(bytes);
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        IntentError::new(
            "invalid_utf8",
            None,
            format!("message is not valid UTF-8: {e}"),
        )
    })?;
    intent::refuse_nul(text)?;
    let wire: WireSettlement<'_> =
        serde_json::from_str(text).map_err(intent::classify_json_error)?;
    let kind = SettlementType::parse(&wire.kind).ok_or_else(|| {
        IntentError::new(
            "unknown_type",
            Some("type"),
            format!(
                "type {:?} is not one of CAPTURE, VOID, REFUND, CANCEL",
                intent::short(&wire.kind)
            ),
        )
    })?;
    let amount = match wire.amount {
        None => None,
        Some(raw) => Some(intent::parse_raw_amount(raw)?),
    };
    let occurred_at = match &wire.occurred_at {
        None => None,
        Some(t) => Some(
            DateTime::parse_from_rfc3339(t)
                .map_err(|e| {
                    IntentError::new(
                        "invalid_field",
                        Some("occurredAt"),
                        format!(
                            "occurredAt must be an RFC 3339 time like \"2026-11-30T12:00:00Z\": {e}"
                        ),
                    )
                })?
                .with_timezone(&Utc),
        ),
    };
    let s = Settlement {
        settlement_id: wire.settlement_id,
        intent_id: wire.intent_id,
        kind,
        amount,
        currency: wire.currency,
        is_final: wire.is_final.unwrap_or(false),
        occurred_at,
        metadata: wire.metadata,
    };
    s.validate()?;
    Ok(s)
}

impl Settlement {
    /// Checks every field rule; `parse_settlement` calls this.
    pub fn validate(&self) -> Result<(), SettlementError> {
        intent::check_id("settlementId", &self.settlement_id)?;
        intent::check_id("intentId", &self.intent_id)?;
        let needs_amount = matches!(self.kind, SettlementType::Capture | SettlementType::Refund);
        match (self.amount, &self.currency) {
            (None, None) if needs_amount => {
                return Err(IntentError::new(
                    "amount_required",
                    Some("amount"),
                    format!("a {} needs an amount and its currency", self.kind.as_str()),
                ));
            }
            (None, None) => {}
            (Some(_), _) if self.kind == SettlementType::Cancel => {
                return Err(IntentError::new(
                    "amount_not_allowed",
                    Some("amount"),
                    "a CANCEL closes a waiting intent; it takes no amount",
                ));
            }
            (Some(_), None) => {
                return Err(IntentError::new(
                    "currency_required",
                    Some("currency"),
                    "an amount needs its currency (the intent's ISO 4217 code)",
                ));
            }
            (None, Some(_)) => {
                return Err(IntentError::new(
                    "amount_required",
                    Some("amount"),
                    "a currency was given without an amount",
                ));
            }
            (Some(amount), Some(code)) => {
                let cur = money::currency(code).ok_or_else(|| {
                    IntentError::new(
                        "unknown_currency",
                        Some("currency"),
                        format!(
                            "currency {:?} is not a supported ISO 4217 code",
                            intent::short(code)
                        ),
                    )
                })?;
                money::validate_amount(amount, cur)
                    .map_err(|e| IntentError::new(e.code(), Some("amount"), e.to_string()))?;
            }
        }
        if self.is_final && self.kind != SettlementType::Capture {
            return Err(IntentError::new(
                "invalid_field",
                Some("final"),
                "`final` applies to CAPTURE only (a VOID without amount releases everything)",
            ));
        }
        intent::check_metadata(self.metadata.as_ref())
    }

    /// The canonical bytes for idempotency: a redelivery with reordered keys or `80` vs
    /// `"80.00"` is the same settlement.
    pub fn canonical_json(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let (Some(obj), Some(a)) = (v.as_object_mut(), self.amount) {
            obj.insert(
                "amount".into(),
                serde_json::Value::String(a.normalize().to_string()),
            );
        }
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPTURE: &str = r#"{"settlementId":"s-1","intentId":"i-1","type":"CAPTURE","amount":"80.00","currency":"BRL","final":true,"occurredAt":"2026-11-30T12:00:00Z"}"#;

    fn with(field: &str, value: Option<&str>) -> String {
        let mut v: serde_json::Value = serde_json::from_str(CAPTURE).unwrap();
        match value {
            Some(x) => v[field] = serde_json::from_str(x).unwrap(),
            None => {
                v.as_object_mut().unwrap().remove(field);
            }
        }
        v.to_string()
    }

    fn code(text: &str) -> &'static str {
        parse_settlement(text.as_bytes()).unwrap_err().code
    }

    #[test]
    fn a_capture_parses_exactly() {
        let s = parse_settlement(CAPTURE.as_bytes()).unwrap();
        assert_eq!(s.kind, SettlementType::Capture);
        assert_eq!(s.amount, Some(Decimal::new(8000, 2)));
        assert!(s.is_final);
        let n = parse_settlement(with("amount", Some("80")).as_bytes()).unwrap();
        assert_eq!(n.canonical_json(), s.canonical_json());
    }

    #[test]
    fn a_void_may_omit_the_amount_and_a_cancel_must() {
        let void = r#"{"settlementId":"s-2","intentId":"i-1","type":"VOID"}"#;
        assert_eq!(parse_settlement(void.as_bytes()).unwrap().amount, None);
        let cancel = r#"{"settlementId":"s-3","intentId":"i-1","type":"CANCEL","amount":"1.00","currency":"BRL"}"#;
        assert_eq!(code(cancel), "amount_not_allowed");
    }

    #[test]
    fn each_invalid_input_has_its_code() {
        assert_eq!(code("{"), "invalid_json");
        assert_eq!(code(&with("type", Some("\"REVERSE\""))), "unknown_type");
        assert_eq!(code(&with("amount", None)), "amount_required");
        assert_eq!(code(&with("currency", None)), "currency_required");
        assert_eq!(code(&with("amount", Some("\"-1\""))), "non_positive_amount");
        assert_eq!(
            code(&with("amount", Some("\"1.001\""))),
            "amount_scale_exceeds_currency"
        );
        assert_eq!(code(&with("currency", Some("\"XXX\""))), "unknown_currency");
        assert_eq!(code(&with("surprise", Some("1"))), "unknown_field");
        assert_eq!(code(&with("settlementId", None)), "missing_field");
        assert_eq!(
            code(&with("occurredAt", Some("\"yesterday\""))),
            "invalid_field"
        );
        assert_eq!(code(&with("amount", Some("true"))), "invalid_field");
        let big = format!("{{\"x\":\"{}\"}}", "a".repeat(MAX_SETTLEMENT_BYTES));
        assert_eq!(code(&big), "message_too_large");
        assert_eq!(
            parse_settlement(&[0xff, 0xfe]).unwrap_err().code,
            "invalid_utf8"
        );
        let refund_final = r#"{"settlementId":"s","intentId":"i","type":"REFUND","amount":"1","currency":"BRL","final":true}"#;
        assert_eq!(code(refund_final), "invalid_field");
        // Strict amounts and ids (SPEC §14).
        assert_eq!(code(&with("amount", Some("\"8_0.00\""))), "invalid_amount");
        let thirty = format!("\"1.{}1\"", "0".repeat(29));
        assert_eq!(
            code(&with("amount", Some(&thirty))),
            "amount_scale_exceeds_currency"
        );
        for field in ["settlementId", "intentId"] {
            for bad in ["\"s\\u0000\"", "\"s\\u0007\"", "\"s\\t\""] {
                assert_eq!(
                    code(&with(field, Some(bad))),
                    "invalid_field",
                    "{field} {bad}"
                );
            }
        }
        // Card numbers masked before any field exists.
        let s =
            parse_settlement(with("settlementId", Some("\"s-4111-1111-1111-1111\"")).as_bytes())
                .unwrap();
        assert_eq!(s.settlement_id, "s-411111******1111");
    }
}
