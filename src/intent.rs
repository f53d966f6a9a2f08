//! Spend intents (SPEC §1): parsing and validation of the bytes a payment service sends.
//!
//! Parsing never panics and never loses input: every failure is an [`IntentError`]
//! with a stable machine-readable `code`, and the caller keeps the original bytes
//! (dead-letter topic, audit event).

use crate::money::{self, Currency};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Largest intent message accepted, in bytes. A spend intent is a few hundred bytes;
/// 16 KiB leaves room for metadata while bounding what one message can cost us.
pub const MAX_INTENT_BYTES: usize = 16 * 1024;
/// Largest serialized `metadata` object, in bytes.
pub const MAX_METADATA_BYTES: usize = 4 * 1024;
/// Longest identifier (intentId, agentId, entityId, category, beneficiary.id).
pub const MAX_ID_LEN: usize = 128;
/// Longest `beneficiary.account`.
pub const MAX_ACCOUNT_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Purpose {
    Pix,
    Card,
    Wire,
    Fee,
    Other,
}

impl Purpose {
    pub const ALL: [Purpose; 5] = [
        Purpose::Pix,
        Purpose::Card,
        Purpose::Wire,
        Purpose::Fee,
        Purpose::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Pix => "PIX",
            Purpose::Card => "CARD",
            Purpose::Wire => "WIRE",
            Purpose::Fee => "FEE",
            Purpose::Other => "OTHER",
        }
    }

    pub fn parse(s: &str) -> Option<Purpose> {
        Purpose::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Beneficiary {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

/// A validated spend intent. Construct it with [`parse_intent`] (or [`SpendIntent::validate`]
/// after building one in code); the fields then satisfy every rule of SPEC §1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpendIntent {
    pub intent_id: String,
    pub agent_id: String,
    pub entity_id: String,
    /// Serialized as a string so it round-trips exactly.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    pub category: String,
    pub beneficiary: Beneficiary,
    pub purpose: Purpose,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct IntentError {
    /// Stable code: `message_too_large`, `invalid_utf8`, `invalid_json`,
    /// `missing_field`, `invalid_field`, `unknown_field`, `invalid_amount`,
    /// `non_positive_amount`, `amount_scale_exceeds_currency`, `amount_too_large`,
    /// `unknown_currency`, `unknown_purpose`, `metadata_too_large`.
    pub code: &'static str,
    pub message: String,
    /// JSON path of the offending field, when there is one (`beneficiary.country`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
}

impl IntentError {
    pub(crate) fn new(
        code: &'static str,
        field: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        IntentError {
            code,
            message: message.into(),
            field,
        }
    }
}

/// Wire shape: `amount` and `purpose` are taken raw so we can give specific errors
/// (and never read a JSON number through f64).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WireIntent<'a> {
    intent_id: String,
    agent_id: String,
    entity_id: String,
    #[serde(borrow)]
    amount: &'a RawValue,
    currency: String,
    category: String,
    beneficiary: WireBeneficiary,
    purpose: String,
    #[serde(default)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireBeneficiary {
    id: String,
    #[serde(default)]
    account: Option<String>,
    #[serde(default)]
    country: Option<String>,
}

/// Parses and validates one intent message.
pub fn parse_intent(bytes: &[u8]) -> Result<SpendIntent, IntentError> {
    if bytes.len() > MAX_INTENT_BYTES {
        return Err(IntentError::new(
            "message_too_large",
            None,
            format!(
                "message is {} bytes; the limit is {MAX_INTENT_BYTES}",
                bytes.len()
            ),
        ));
    }
    // Card numbers are masked in the bytes, before any field exists: whatever field or
    // error message holds one later holds only its masked form (SPEC §14).
    let bytes = crate::privacy::mask_json_bytes(bytes);
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        IntentError::new(
            "invalid_utf8",
            None,
            format!("message is not valid UTF-8: {e}"),
        )
    })?;
    refuse_nul(text)?;
    let wire: WireIntent<'_> = serde_json::from_str(text).map_err(classify_json_error)?;

    let amount = parse_raw_amount(wire.amount)?;

    let purpose = Purpose::parse(&wire.purpose).ok_or_else(|| {
        IntentError::new(
            "unknown_purpose",
            Some("purpose"),
            format!(
                "purpose {:?} is not one of PIX, CARD, WIRE, FEE, OTHER",
                short(&wire.purpose)
            ),
        )
    })?;

    let intent = SpendIntent {
        intent_id: wire.intent_id,
        agent_id: wire.agent_id,
        entity_id: wire.entity_id,
        amount,
        currency: wire.currency,
        category: wire.category,
        beneficiary: Beneficiary {
            id: wire.beneficiary.id,
            account: wire.beneficiary.account,
            country: wire.beneficiary.country,
        },
        purpose,
        metadata: wire.metadata,
    };
    intent.validate()?;
    Ok(intent)
}

impl SpendIntent {
    /// The currency of this intent (validated to exist).
    pub fn currency_info(&self) -> Option<Currency> {
        money::currency(&self.currency)
    }

    /// Checks every field rule; `parse_intent` calls this, code that builds intents should too.
    pub fn validate(&self) -> Result<(), IntentError> {
        check_id("intentId", &self.intent_id)?;
        check_id("agentId", &self.agent_id)?;
        check_id("entityId", &self.entity_id)?;
        check_id("category", &self.category)?;
        check_id("beneficiary.id", &self.beneficiary.id)?;
        let cur = money::currency(&self.currency).ok_or_else(|| {
            IntentError::new(
                "unknown_currency",
                Some("currency"),
                format!(
                    "currency {:?} is not a supported ISO 4217 code",
                    short(&self.currency)
                ),
            )
        })?;
        money::validate_amount(self.amount, cur)
            .map_err(|e| IntentError::new(e.code(), Some("amount"), e.to_string()))?;
        if let Some(account) = &self.beneficiary.account
            && (account.is_empty() || account.len() > MAX_ACCOUNT_LEN)
        {
            return Err(IntentError::new(
                "invalid_field",
                Some("beneficiary.account"),
                format!("beneficiary.account must be 1..={MAX_ACCOUNT_LEN} characters"),
            ));
        }
        if let Some(country) = &self.beneficiary.country
            && !(country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(IntentError::new(
                "invalid_field",
                Some("beneficiary.country"),
                format!(
                    "beneficiary.country must be an ISO 3166-1 alpha-2 code like \"BR\", got {:?}",
                    short(country)
                ),
            ));
        }
        check_metadata(self.metadata.as_ref())
    }

    /// The canonical bytes of this intent, used for idempotency comparison and hashing:
    /// a redelivery with reordered keys or `250` vs `"250.00"` is the same intent.
    pub fn canonical_json(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "amount".into(),
                serde_json::Value::String(self.amount.normalize().to_string()),
            );
        }
        // serde_json's Map is a BTreeMap (no preserve_order feature): keys come out sorted.
        v.to_string()
    }
}

/// An `amount` as sent: a JSON string or number, read as an exact decimal (never
/// through a float). Shared by intents and settlements.
pub(crate) fn parse_raw_amount(raw: &RawValue) -> Result<Decimal, IntentError> {
    let text = raw.get();
    let text = if let Some(s) = text.strip_prefix('"') {
        s.strip_suffix('"').unwrap_or(s)
    } else if text.starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9']) {
        text
    } else {
        return Err(IntentError::new(
            "invalid_field",
            Some("amount"),
            format!(
                "amount must be a decimal string or number, got {}",
                short(text)
            ),
        ));
    };
    money::parse_decimal(text)
        .map_err(|e| IntentError::new(e.code(), Some("amount"), e.to_string()))
}

/// `metadata` within [`MAX_METADATA_BYTES`] serialized. Shared by intents and settlements.
pub(crate) fn check_metadata(
    metadata: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<(), IntentError> {
    let Some(meta) = metadata else {
        return Ok(());
    };
    let size = serde_json::to_vec(meta)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_METADATA_BYTES {
        return Err(IntentError::new(
            "metadata_too_large",
            Some("metadata"),
            format!("metadata is {size} bytes serialized; the limit is {MAX_METADATA_BYTES}"),
        ));
    }
    Ok(())
}

/// Refuses a NUL written as a JSON escape anywhere in a message (a raw control byte is
/// already invalid JSON): PostgreSQL can store it neither in text nor in jsonb, so it
/// would abort the ledger write instead of being refused (SPEC §14).
pub(crate) fn refuse_nul(text: &str) -> Result<(), IntentError> {
    let has_nul = text
        .as_bytes()
        .windows(6)
        .any(|w| w[0] == b'\\' && w[1] == b'u' && w[2..].eq_ignore_ascii_case(b"0000"));
    if has_nul {
        return Err(IntentError::new(
            "invalid_field",
            None,
            "the message holds a NUL character (\\u0000), which is accepted in no field",
        ));
    }
    Ok(())
}

pub(crate) fn check_id(field: &'static str, value: &str) -> Result<(), IntentError> {
    if value.is_empty() || value.len() > MAX_ID_LEN || value.chars().any(char::is_control) {
        return Err(IntentError::new(
            "invalid_field",
            Some(field),
            format!("{field} must be 1..={MAX_ID_LEN} characters without control characters"),
        ));
    }
    Ok(())
}

pub(crate) fn classify_json_error(e: serde_json::Error) -> IntentError {
    let msg = e.to_string();
    let field = None;
    if msg.starts_with("missing field") {
        IntentError::new("missing_field", field, msg)
    } else if msg.starts_with("unknown field") {
        IntentError::new("unknown_field", field, msg)
    } else if e.is_data() {
        IntentError::new("invalid_field", field, msg)
    } else {
        IntentError::new(
            "invalid_json",
            field,
            format!("message is not valid JSON: {msg}"),
        )
    }
}

pub(crate) fn short(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"intentId":"i-1","agentId":"agent-42","entityId":"acme-br","amount":"250.00","currency":"BRL","category":"utility","beneficiary":{"id":"utility:light_company","country":"BR"},"purpose":"PIX"}"#;

    fn with(field: &str, value: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        v.to_string()
    }

    fn code(text: &str) -> &'static str {
        parse_intent(text.as_bytes()).unwrap_err().code
    }

    #[test]
    fn parses_string_and_number_amounts_exactly() {
        let a = parse_intent(GOOD.as_bytes()).unwrap();
        assert_eq!(a.amount, Decimal::new(25000, 2));
        let b = parse_intent(with("amount", "0.1").as_bytes()).unwrap();
        assert_eq!(b.amount, Decimal::new(1, 1));
        assert_eq!(
            a.canonical_json(),
            parse_intent(with("amount", "250").as_bytes())
                .unwrap()
                .canonical_json()
        );
    }

    #[test]
    fn each_invalid_input_has_its_code() {
        assert_eq!(code("{not json"), "invalid_json");
        assert_eq!(
            parse_intent(&[0xff, 0xfe]).unwrap_err().code,
            "invalid_utf8"
        );
        assert_eq!(code(&with("amount", "\"-5\"")), "non_positive_amount");
        assert_eq!(code(&with("amount", "0")), "non_positive_amount");
        assert_eq!(
            code(&with("amount", "\"1.001\"")),
            "amount_scale_exceeds_currency"
        );
        assert_eq!(code(&with("amount", "1e15")), "amount_too_large");
        assert_eq!(code(&with("amount", "\"abc\"")), "invalid_amount");
        assert_eq!(code(&with("amount", "true")), "invalid_field");
        assert_eq!(code(&with("currency", "\"XYZ\"")), "unknown_currency");
        assert_eq!(code(&with("purpose", "\"BITCOIN\"")), "unknown_purpose");
        assert_eq!(code(&with("agentId", "42")), "invalid_field");
        assert_eq!(code(&with("extra", "1")), "unknown_field");
        assert_eq!(code(r#"{"intentId":"x"}"#), "missing_field");
        let big = with(
            "metadata",
            &format!("{{\"x\":\"{}\"}}", "a".repeat(MAX_INTENT_BYTES)),
        );
        assert_eq!(code(&big), "message_too_large");
        let meta = with(
            "metadata",
            &format!("{{\"x\":\"{}\"}}", "a".repeat(MAX_METADATA_BYTES)),
        );
        assert_eq!(code(&meta), "metadata_too_large");
    }

    #[test]
    fn strict_amounts_and_ids() {
        assert_eq!(code(&with("amount", "\"2_50.00\"")), "invalid_amount");
        let thirty = format!("\"1.{}1\"", "0".repeat(29));
        assert_eq!(
            code(&with("amount", &thirty)),
            "amount_scale_exceeds_currency"
        );
        // As a JSON number (spliced in as text: a serde_json Value would round it).
        let thirty_number = GOOD.replace("\"250.00\"", &format!("1.{}1", "0".repeat(29)));
        assert_eq!(code(&thirty_number), "amount_scale_exceeds_currency");
        for field in ["intentId", "agentId", "entityId", "category"] {
            for bad in [
                "\"a\\u0000b\"",
                "\"a\\u0007b\"",
                "\"a\\nb\"",
                "\"a\\u001Bb\"",
            ] {
                assert_eq!(code(&with(field, bad)), "invalid_field", "{field} {bad}");
            }
        }
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        v["beneficiary"]["id"] = "b\u{0}".into();
        assert_eq!(code(&v.to_string()), "invalid_field");
        v["beneficiary"]["id"] = "b\u{85}".into();
        assert_eq!(code(&v.to_string()), "invalid_field");
        let meta = with("metadata", "{\"note\":\"a\\u0000\"}");
        assert_eq!(code(&meta), "invalid_field");
    }

    #[test]
    fn card_numbers_are_masked_before_any_field_exists() {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        v["beneficiary"]["id"] = "card:4111.1111.1111.1111".into();
        v["beneficiary"]["account"] = "5555 5555 5555 4444".into();
        v["category"] = "x_4111_1111_1111_1111".into();
        v["metadata"] = serde_json::json!({"n": "4111/1111/1111/1111", "4111111111111111": 4111111111111111u64});
        let i = parse_intent(v.to_string().as_bytes()).unwrap();
        let text = serde_json::to_string(&i).unwrap();
        assert!(crate::privacy::find_pans(&text).is_empty(), "{text}");
        assert_eq!(i.beneficiary.id, "card:411111******1111");
        // An error message never quotes a card number either.
        let bad = r#"{"intentId":4111111111111111}"#;
        let err = parse_intent(bad.as_bytes()).unwrap_err();
        assert!(crate::privacy::find_pans(&err.message).is_empty(), "{err}");
    }
}
